"""Which column means what: header conventions, mapping files, and the refusals that come
before anything is published."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from services.importing.files import load_mapping
from services.importing.mapping import MappingError, Target, mapping_from, plan_columns


def targets(headers: list[str], **kwargs: object) -> dict[str, str]:
    plan = plan_columns(headers, **kwargs)  # type: ignore[arg-type]
    return {c.header: c.target.describe() for c in plan.columns}


def problems(headers: list[str], **kwargs: object) -> str:
    with pytest.raises(MappingError) as caught:
        plan_columns(headers, **kwargs)  # type: ignore[arg-type]
    return " | ".join(caught.value.problems)


def test_headers_map_by_name_in_any_case_and_spacing() -> None:
    assert targets(["E-mail", "First Name", "LAST_NAME", "Zip", "country", "Tags",
                    "tags_removed", "Lead Status", "contact-type", "occurred_at"]) == {
        "E-mail": "email", "First Name": "first_name", "LAST_NAME": "last_name",
        "Zip": "postal_code", "country": "country", "Tags": "tags",
        "tags_removed": "tags_removed", "Lead Status": "lead_status",
        "contact-type": "contact_type", "occurred_at": "occurred_at"}


def test_prefixed_headers_name_properties_lists_and_consent() -> None:
    assert targets(["email", "property:shoe_size", "Prop:plan.tier", "list:newsletter",
                    "CONSENT:sms"]) == {
        "email": "email", "property:shoe_size": "property:shoe_size",
        "Prop:plan.tier": "property:plan.tier", "list:newsletter": "list:newsletter",
        "CONSENT:sms": "consent:sms"}


def test_unknown_columns_are_named_before_anything_is_published() -> None:
    text = problems(["email", "Shoe size", "notes", "first_name"])
    assert "'Shoe size', 'notes'" in text
    assert "--ignore-unknown-columns" in text


def test_unknown_columns_are_left_out_only_when_asked() -> None:
    plan = plan_columns(["email", "notes", ""], ignore_unknown=True)
    assert [c.target for c in plan.columns] == [
        Target("field", "email"), Target("ignore"), Target("ignore")]
    assert plan.warnings == ("ignored columns: 'notes', '(column 3, no name)'",)


@pytest.mark.parametrize(("headers", "expected"), [
    (["first_name", "city"], "no email column: the file's columns are 'first_name', 'city'"),
    (["email", "Email"], "columns 'email' and 'Email' both map to email"),
    (["email", "email"], "the header names 'email' twice (columns 1 and 2)"),
    (["email", "property:shoe size"], "property name 'shoe size' must be 1-64"),
    (["email", "consent:pigeon"], "consent channel 'pigeon' is not one of email, sms"),
    (["email", "list:"], "a list id of 1-128 characters is needed after list:"),
    (["email", "list:*"], "a list id of 1-128 characters is needed after list:"),
])
def test_header_problems_are_sentences(headers: list[str], expected: str) -> None:
    assert expected in problems(headers)


def test_a_mapping_file_maps_odd_headers_with_options(tmp_path: Path) -> None:
    path = tmp_path / "mapping.yaml"
    path.write_text(
        "columns:\n"
        "  Correo: email\n"
        "  Nombre: first_name\n"
        "  Talla: {to: 'property:shoe_size', type: number}\n"
        "  Boletín: {to: 'list:newsletter', double_opt_in: true}\n"
        "  RGPD: consent:email\n"
        "  Notas: ignore\n"
        "  Etiquetas: tags\n"
        "  Missing: city\n"
        "tag_separator: '|'\n"
        "truthy: [sí, si, yes]\n"
        "falsy: [no]\n"
        "source: crm-migration\n", encoding="utf-8")
    spec = load_mapping(path)
    plan = plan_columns(["Correo", "Nombre", "Talla", "Boletín", "RGPD", "Notas",
                         "Etiquetas"], spec)
    assert {c.header: c.target.describe() for c in plan.columns} == {
        "Correo": "email", "Nombre": "first_name", "Talla": "property:shoe_size (number)",
        "Boletín": "list:newsletter (double opt-in)", "RGPD": "consent:email",
        "Notas": "ignore", "Etiquetas": "tags"}
    assert plan.tag_separator == "|"
    assert plan.truthy == {"sí", "si", "yes"} and plan.falsy == {"no"}
    assert spec.source == "crm-migration"
    assert plan.warnings == ("the mapping names columns the file does not have: 'Missing'",)


def test_json_mapping_files_and_their_errors(tmp_path: Path) -> None:
    path = tmp_path / "mapping.json"
    path.write_text(json.dumps({"columns": {"Mail": "email", "X": "property:x"}}))
    assert targets(["Mail", "X"], spec=load_mapping(path)) == {
        "Mail": "email", "X": "property:x"}
    path.write_text('{"columns": {"Mail": "emial"}}')
    assert "sends column 'Mail' to 'emial', which is not a target" in problems(
        ["Mail"], spec=load_mapping(path))
    path.write_text('{"columns": {"Mail": {"to": "email", "kind": 1}}}')
    with pytest.raises(MappingError, match="unknown field `kind`"):
        load_mapping(path)
    path.write_text('{"columns": ')
    with pytest.raises(MappingError, match="is not valid JSON"):
        load_mapping(path)
    with pytest.raises(MappingError, match="must be an object"):
        mapping_from(["email"])
    path.write_text('{"columns": {"Talla": {"to": "first_name", "type": "number"}}}')
    assert "a type applies to property columns only" in problems(
        ["Talla", "email"], spec=load_mapping(path))


def test_the_fingerprint_follows_what_columns_mean() -> None:
    first = plan_columns(["email", "property:size"]).fingerprint()
    assert plan_columns(["email", "property:size"]).fingerprint() == first
    assert plan_columns(["email", "property:size"], tag_separator="|").fingerprint() != first
    assert plan_columns(["email", "list:size"]).fingerprint() != first
