"""One CSV row → contract events: every accepted row decodes as the pipeline decodes it,
ids are deterministic, every rejected cell is named with the decoder's sentence."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from contracts.decode import decode
from contracts.emails import normalise_email
from contracts.events import InboundEvent
from services.domain.tenant import TenantSettings
from services.importing.mapping import ColumnSpec, MappingSpec, plan_columns
from services.importing.rows import (
    EventIds,
    FirstRowPerEmail,
    PreparedEvent,
    RowMapper,
    RowProblem,
    import_event_id,
    map_chunks,
)

HEADERS = ["Email", "first_name", "country", "phone", "tags", "property:size",
           "Prop:vip", "list:news", "consent:sms", "occurred_at", "lead_status"]
WHEN = datetime(2026, 11, 2, 10, 0, tzinfo=UTC)
SHA = "ab" * 32


class Rows:
    """A file's rows through the mapper and then the one-row-per-email rule, in order, as
    the importer applies them."""

    def __init__(self, rows: RowMapper) -> None:
        self.rows = rows
        self.first = FirstRowPerEmail(rows.email.header)

    def map(self, line: int, cells: list[str]) -> tuple[list[PreparedEvent], list[RowProblem]]:
        _, _, events, problems = self.first.check(self.rows.map_row(line, cells))
        return events, problems


def mapper(headers: list[str] = HEADERS, sha: str = SHA, tenant: str = "acme",
           definitions: TenantSettings | None = None, **plan: Any) -> Rows:
    return Rows(RowMapper(plan_columns(headers, **plan), tenant=tenant, file_sha256=sha,
                          occurred_at=WHEN, definitions=definitions))


def row(**cells: str) -> list[str]:
    names = {"email": "Email", "vip": "Prop:vip", "size": "property:size", "news": "list:news",
             "sms": "consent:sms"}
    values = dict.fromkeys(HEADERS, "")
    for key, value in cells.items():
        values[names.get(key, key)] = value
    return [values[h] for h in HEADERS]


def bodies(events: list[PreparedEvent]) -> list[dict[str, Any]]:
    return [json.loads(e.body) for e in events]


def test_a_full_row_becomes_its_events() -> None:
    events, problems = mapper().map(2, row(
        email=" Ana@Example.com", first_name="Ana", country="es", phone="+34 600-111 222",
        tags="VIP, lead,,", size="38", vip="yes", news="pending", sms="no",
        lead_status="new"))
    assert problems == []
    update, listed, consent = bodies(events)
    assert update["type"] == "contact_updated" and update["source"] == "import"
    assert update["occurred_at"] == "2026-11-02T10:00:00.000+00:00"
    assert update["contact"] == {"email": " Ana@Example.com", "first_name": "Ana",
                                 "country": "es", "phone": "+34600111222"}
    assert update["tags_added"] == ["VIP", "lead"]
    assert update["properties"] == {"size": "38", "vip": "yes"}
    assert update["lead_status"] == "new"
    assert (listed["type"], listed["list_id"], listed["double_opt_in"]) == (
        "list_subscribed", "news", True)
    assert (consent["type"], consent["channel"], consent["granted"]) == (
        "consent_changed", "sms", False)
    assert all(e.subject == f"ficha.in.acme.{e.type}" for e in events)


def test_a_falsy_list_cell_unsubscribes_and_an_empty_one_does_nothing() -> None:
    events, _ = mapper().map(2, row(email="a@example.com", news="No"))
    assert [e.type for e in events] == ["contact_updated", "list_unsubscribed"]
    events, _ = mapper().map(2, row(email="a@example.com"))
    assert [e.type for e in events] == ["contact_updated"]


def test_every_bad_cell_of_a_row_is_named_with_the_decoders_sentence() -> None:
    events, problems = mapper().map(7, row(
        email="bo@example.com", country="XX", phone="12345", tags="ok," + "t" * 70,
        size="", news="maybe", sms="perhaps", occurred_at="2026-13-01"))
    assert events == []
    found = {(p.column, p.code): p.reason for p in problems}
    assert {p.line for p in problems} == {7}
    assert found[("country", "invalid_field")] == (
        "contact.country 'XX' is not an ISO 3166-1 alpha-2 code (like ES, MX, US)")
    assert found[("phone", "invalid_field")] == (
        "contact.phone: expected text matching '^\\+[1-9][0-9]{6,14}$'")
    assert found[("tags", "invalid_field")] == "tags_added[1]: expected `str` of length <= 64"
    assert "'maybe' is not a subscription value" in found[("list:news", "invalid_field")]
    assert "'perhaps' is not a consent value" in found[("consent:sms", "invalid_field")]
    assert "'2026-13-01' is not a date or time" in found[("occurred_at", "invalid_field")]


def test_email_problems_and_duplicates_within_the_file() -> None:
    rows = mapper()
    assert rows.map(2, row(email="ana@example.com"))[1] == []
    _, empty = rows.map(3, row(email="  ", first_name="Nobody"))
    assert empty == [RowProblem(3, "Email", "the email is empty: every row needs the "
                                "contact's email address", "missing_field")]
    _, bad = rows.map(4, row(email="ana@example"))
    assert bad[0].column == "Email" and "needs a domain with a dot" in bad[0].reason
    _, again = rows.map(5, row(email="ANA@example.com "))
    assert again[0].code == "duplicate_email"
    assert again[0].reason.startswith("ana@example.com is already on line 2")
    _, short = rows.map(6, ["x@example.com", "too few"])
    assert short[0].code == "row_width" and "the row has 2 cells but the header has 11" in (
        short[0].reason)


def test_a_rejected_row_does_not_claim_its_email() -> None:
    rows = mapper()
    assert rows.map(2, row(email="ana@example.com", country="XX"))[1]
    assert rows.map(3, row(email="ana@example.com", country="ES"))[1] == []


def test_instants_from_a_column_and_their_range() -> None:
    events, _ = mapper().map(2, row(email="a@example.com", occurred_at="2025-01-31"))
    assert bodies(events)[0]["occurred_at"] == "2025-01-31T00:00:00+00:00"
    events, _ = mapper().map(2, row(email="a@example.com",
                                        occurred_at="2025-01-31T10:00:00+01:00"))
    assert bodies(events)[0]["occurred_at"] == "2025-01-31T10:00:00+01:00"
    _, naive = mapper().map(2, row(email="a@example.com", occurred_at="2025-01-31 10:00"))
    assert "has no timezone offset" in naive[0].reason
    _, far = mapper().map(2, row(email="a@example.com", occurred_at="9999-12-31"))
    assert far[0].column == "occurred_at" and "outside the instants ficha accepts" in (
        far[0].reason)


def test_property_types_from_the_mapping_or_the_tenants_definitions() -> None:
    typed = mapper(["email", "property:size", "property:vip", "property:langs"],
                   spec=None)
    events, _ = typed.map(2, ["a@example.com", "38", "yes", "es,fr"])
    assert bodies(events)[0]["properties"] == {"size": "38", "vip": "yes", "langs": "es,fr"}

    spec = MappingSpec(columns={
        "size": ColumnSpec(to="property:size", type="number"),
        "vip": ColumnSpec(to="property:vip", type="boolean"),
        "langs": ColumnSpec(to="property:langs", type="list")})
    explicit = mapper(["email", "size", "vip", "langs"], spec=spec)
    events, _ = explicit.map(2, ["a@example.com", "38.5", "No", "es, fr"])
    assert bodies(events)[0]["properties"] == {"size": 38.5, "vip": False,
                                               "langs": ["es", "fr"]}
    _, wrong = explicit.map(3, ["b@example.com", "3,5", "maybe", ""])
    assert [p.column for p in wrong] == ["size", "vip"]
    assert "'3,5' is not a number (use a dot for decimals)" in wrong[0].reason

    tenant = TenantSettings.open("acme")
    tenant.define_property("size", "number")
    tenant.define_property("vip", "boolean")
    tenant.change(contact_types=["client", "supplier"])
    defined = mapper(["email", "property:size", "property:vip", "contact_type"],
                     definitions=tenant)
    events, _ = defined.map(2, ["a@example.com", "41", "x", "client"])
    assert bodies(events)[0]["properties"] == {"size": 41, "vip": True}
    _, refused = defined.map(3, ["b@example.com", "big", "maybe", "alien"])
    assert {(p.column, p.code, p.reason) for p in refused} == {
        ("property:size", "property_type_mismatch",
         "property size is defined as a number; got 'big'; fix the value or the definition"),
        ("property:vip", "property_type_mismatch",
         "property vip is defined as true/false; got 'maybe'; fix the value or the definition"),
        ("contact_type", "unknown_contact_type",
         "contact_type 'alien' is not one of tenant acme's contact types: client, supplier"),
    }


def test_blank_rows_are_skipped_and_malformed_records_rejected() -> None:
    import csv

    records: list[tuple[int, list[str] | csv.Error]] = [
        (2, row(email="a@example.com")), (3, []), (4, ["", " "] + [""] * 9),
        (5, csv.Error("unexpected end of data")), (6, row(email="b@example.com"))]
    chunks = list(map_chunks(records, mapper().rows, size=2))
    assert [c.rows_read for c in chunks] == [2, 2, 1]
    assert sum(c.rows_empty for c in chunks) == 2
    assert [row.line for c in chunks for row in c.rows if row.events] == [2, 6]
    assert [p for c in chunks for row in c.rows for p in row.problems] == [
        RowProblem(5, "", "the CSV is malformed here: unexpected end of data",
                   "malformed_csv")]
    # Shared by two processes: each maps every other chunk, all lines are still counted.
    shares = [list(map_chunks(records, mapper().rows, 2, (k, 2))) for k in (0, 1)]
    assert [[c.rows_read for c in share] for share in shares] == [[2, 1], [2]]
    assert [[row.line for c in share for row in c.rows] for share in shares] == [
        [2, 6], [5]]


# ------------------------------------------------------------------------ properties

# Each column's good values (empty = no change) and values ficha refuses; a row is good
# values with up to two cells spoiled.
GOOD: dict[str, Any] = {
    "Email": st.one_of(
        st.sampled_from(["ana@example.com", "Bo@Example.org", " carla@ex.es ",
                         "dup@example.com", "DUP@example.com"]),
        st.from_regex(r"[a-z]{1,8}@[a-z]{1,8}\.(com|es|org)", fullmatch=True)),
    "first_name": st.text(max_size=8),
    "country": st.sampled_from(["", "ES", "mx"]),
    "phone": st.sampled_from(["", "+34600111222", "+34 600 111 222"]),
    "tags": st.sampled_from(["", "vip", "vip, lead", " , "]),
    "property:size": st.sampled_from(["", "38", "big"]),
    "Prop:vip": st.sampled_from(["", "yes"]),
    "list:news": st.sampled_from(["", "yes", "no", "pending"]),
    "consent:sms": st.sampled_from(["", "granted", "revoked"]),
    "occurred_at": st.sampled_from(["", "2025-03-01", "2025-03-01T10:00:00Z"]),
    "lead_status": st.sampled_from(["", "new"]),
}
BAD: dict[str, list[str]] = {
    "Email": ["", "bad@", "no-at.example.com", "x@y.z"],
    "first_name": ["n" * 201],
    "country": ["XX", "E"],
    "phone": ["600111222"],
    "tags": ["x" * 65],
    "property:size": ["x"],  # any text is a good property value: nothing to spoil
    "Prop:vip": ["no"],
    "list:news": ["maybe"],
    "consent:sms": ["?"],
    "occurred_at": ["0001-01-01", "soon", "2025-03-01 10:00"],
    "lead_status": ["q" * 65],
}


@st.composite
def csv_row(draw: st.DrawFn) -> list[str]:
    cells = [draw(GOOD[header]) for header in HEADERS]
    for index in draw(st.lists(st.integers(0, len(HEADERS) - 1), max_size=2)):
        cells[index] = draw(st.sampled_from(BAD[HEADERS[index]]))
    return cells


ROWS = st.lists(csv_row(), max_size=25)


def mapped(rows: list[list[str]], sha: str = SHA) -> list[tuple[list[PreparedEvent],
                                                                 list[RowProblem]]]:
    rows_mapper = mapper(sha=sha)
    return [rows_mapper.map(line, cells) for line, cells in enumerate(rows, 2)]


@settings(max_examples=150, deadline=None)
@given(ROWS)
def test_every_accepted_row_decodes_and_every_rejection_names_a_column(
        rows: list[list[str]]) -> None:
    ids: set[str] = set()
    emails: set[str] = set()
    for (events, problems), (line, cells) in zip(mapped(rows), enumerate(rows, 2), strict=True):
        assert bool(events) != bool(problems)
        for problem in problems:
            assert problem.line == line
            assert problem.column in ("", *HEADERS)
            assert problem.reason
        if not events:
            continue
        assert events[0].type == "contact_updated"
        expected = 1 + sum(1 for h in ("list:news", "consent:sms")
                           if cells[HEADERS.index(h)].strip())
        assert len(events) == expected
        for event in events:
            decoded = decode(event.subject, event.body)
            assert isinstance(decoded, InboundEvent), decoded
            assert decoded.event_id == event.event_id and decoded.type == event.type
            assert decoded.tenant == "acme"
            assert decoded.contact.email == normalise_email(cells[0])
            ids.add(event.event_id)
        email = normalise_email(cells[0])
        assert email not in emails, "two accepted rows for one email"
        emails.add(email)
    assert len(ids) == sum(len(events) for events, _ in mapped(rows))


@settings(max_examples=60, deadline=None)
@given(ROWS)
def test_the_same_file_maps_to_the_same_events_and_another_file_to_other_ids(
        rows: list[list[str]]) -> None:
    first, again = mapped(rows), mapped(rows)
    assert first == again
    other = mapped(rows, sha="cd" * 32)
    assert [problems for _, problems in other] == [problems for _, problems in first]
    first_ids = {e.event_id for events, _ in first for e in events}
    other_ids = {e.event_id for events, _ in other for e in events}
    assert not first_ids & other_ids
    globex = RowMapper(plan_columns(HEADERS), tenant="globex", file_sha256=SHA,
                       occurred_at=WHEN)
    tenant_ids = {e.event_id for line, cells in enumerate(rows, 2)
                  for e in globex.map_row(line, cells).events}
    assert not first_ids & tenant_ids


@given(st.text(max_size=40), st.integers(0, 10**7), st.sampled_from(
    ["contact_updated", "list_subscribed", "consent_changed"]), st.text(max_size=20))
def test_event_ids_are_uuid5_of_the_key_line_type_and_target(key: str, line: int, kind: str,
                                                            target: str) -> None:
    assert EventIds(key)(line, kind, target) == import_event_id(key, line, kind, target)
