"""Reading CSV inputs: BOM, delimiters, encodings, line numbers, empty files, streams;
the rejects report next to the input; a dry run through the whole core without NATS."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from services.importing.files import (
    CsvFileError,
    RejectsWriter,
    delimiter_named,
    load_mapping,
    open_csv,
    read_rejects,
    rejects_path_for,
    sniff_delimiter,
)
from services.importing.importer import ImportOptions, import_csv
from services.importing.mapping import MappingError


def write(tmp_path: Path, text: str | bytes, name: str = "in.csv") -> Path:
    path = tmp_path / name
    if isinstance(text, str):
        path.write_text(text, encoding="utf-8", newline="")
    else:
        path.write_bytes(text)
    return path


def records(path: Path, **kwargs: str) -> list[tuple[int, object]]:
    return list(open_csv(path, **kwargs).records())


def test_a_bom_and_semicolons_are_handled(tmp_path: Path) -> None:
    path = write(tmp_path, "\ufeffemail;first_name;tags\r\nana@example.com;Ana;\"vip, lead\"\r\n")
    csvfile = open_csv(path)
    assert csvfile.header == ["email", "first_name", "tags"]
    assert csvfile.delimiter == ";"
    assert list(csvfile.records()) == [(2, ["ana@example.com", "Ana", "vip, lead"])]


@pytest.mark.parametrize(("line", "expected"), [
    ("email,name,tags", ","), ("email;name;tags", ";"), ("email\tname", "\t"),
    ("email|name", "|"), ("email", ","), ('"a;b",c', ","), ('"e,mail";name;x', ";"),
])
def test_the_delimiter_is_the_headers_commonest(line: str, expected: str) -> None:
    assert sniff_delimiter(line) == expected


def test_records_start_on_their_physical_line(tmp_path: Path) -> None:
    path = write(tmp_path, 'email,note\na@example.com,"two\nlines"\n\nb@example.com,x\n'
                           'c@example.com,"unclosed\n')
    assert records(path) == [
        (2, ["a@example.com", "two\nlines"]), (4, []), (5, ["b@example.com", "x"]),
        (6, ["c@example.com", "unclosed\n"])]


def test_a_wrongly_encoded_file_is_refused_with_its_line(tmp_path: Path) -> None:
    text = "email,first_name\nana@example.com,Ana\nfelix@example.com,Félix\n"
    path = write(tmp_path, text.encode("cp1252"))
    with pytest.raises(CsvFileError) as caught:
        open_csv(path)
    assert str(caught.value) == (
        "line 3 is not valid utf-8 (byte 0xe9 at character 20): save the file as utf-8 (CSV "
        "UTF-8 in Excel), or give its encoding, e.g. cp1252 (`--encoding cp1252`; in the API, "
        "`encoding=cp1252`)")
    assert list(open_csv(path, encoding="cp1252").records())[1] == (
        3, ["felix@example.com", "Félix"])


def test_empty_and_header_only_files(tmp_path: Path) -> None:
    with pytest.raises(CsvFileError, match="is empty: its first line must name the columns"):
        open_csv(write(tmp_path, ""))
    with pytest.raises(CsvFileError, match="is empty"):
        open_csv(write(tmp_path, "\ufeff\n"))
    header_only = open_csv(write(tmp_path, "email,first_name\n"))
    assert header_only.header == ["email", "first_name"] and list(header_only.records()) == []
    with pytest.raises(CsvFileError, match="missing.csv does not exist"):
        open_csv(tmp_path / "missing.csv")
    with pytest.raises(CsvFileError, match="is not a file"):
        open_csv(tmp_path)
    broken = tmp_path / "mapping.yaml"
    broken.write_text("columns:\n  email: [email\n  name: first_name\n")
    with pytest.raises(MappingError, match=r"is not valid YAML: .* at line \d+, column \d+"):
        load_mapping(broken)
    with pytest.raises(CsvFileError, match="unknown encoding 'klingon'"):
        open_csv(write(tmp_path, "email\n"), encoding="klingon")
    # Codecs that are not text encodings, and a file that is not in the one named: a
    # refusal in a sentence (they once raised binascii, zlib or Unicode errors).
    for codec in ("base64", "rot13", "zip"):
        with pytest.raises(CsvFileError, match=f"unknown encoding '{codec}'"):
            open_csv(write(tmp_path, "email\nana@example.com\n"), encoding=codec)
    text = "email,first_name\nana@example.com,Ana\nbo@example.com,Bo\n"
    for wide in ("utf-16", "utf-32"):  # lines counted in the text, not by 0x0A bytes
        readable = open_csv(write(tmp_path, text.encode(wide)), encoding=wide)
        assert readable.lines == 3 and len(list(readable.records())) == 2
    for wide in ("utf-16", "utf-32"):
        with pytest.raises(CsvFileError, match=f"not valid {wide}|cannot be read as {wide}"):
            open_csv(write(tmp_path, "email,first_name\nana@example.com,Ana\n"), encoding=wide)


def test_streams_and_bytes_are_spooled_and_hashed_like_the_file(tmp_path: Path) -> None:
    text = "email,first_name\nana@example.com,Ana\n"
    from_path = open_csv(write(tmp_path, text))
    for source in (text.encode(), io.BytesIO(text.encode()), io.StringIO(text)):
        spooled = open_csv(source)
        assert spooled.sha256 == from_path.sha256
        assert list(spooled.records()) == list(from_path.records())
        spooled.discard()
        assert not spooled.path.exists()
    assert from_path.path.exists()


def test_the_rejects_report_replaces_an_old_one_or_goes_away(tmp_path: Path) -> None:
    target = rejects_path_for(tmp_path / "in.csv")
    assert target.name == "in.csv.rejects.csv"
    target.write_text("stale\n")
    with RejectsWriter(target) as rejects:
        rejects.write(3, "phone", "contact.phone: expected text")
        rejects.write(5, "", "the row has 2 cells, the header 3")
    assert read_rejects(target) == [
        {"line": "3", "column": "phone", "reason": "contact.phone: expected text"},
        {"line": "5", "column": "", "reason": "the row has 2 cells, the header 3"}]
    with RejectsWriter(target):
        pass
    assert not target.exists()
    assert [p.name for p in tmp_path.iterdir()] == []


@pytest.mark.parametrize("processes", [0, 1, 2])
async def test_a_dry_run_validates_every_row_without_nats(tmp_path: Path,
                                                          processes: int) -> None:
    path = write(tmp_path, (
        "email,first_name,country,list:news\n"
        "ana@example.com,Ana,ES,yes\n"
        "bo@example.com,Bo,XX,\n"
        ",,,\n"
        "ana@example.com,Ana,,\n"
        "carla@example.com,Carla,MX,no\n"))
    report = await import_csv(path, tenant="acme", rejects_path=rejects_path_for(path),
                              options=ImportOptions(dry_run=True, mapping_processes=processes))
    assert (report.rows_read, report.rows_empty, report.rows_accepted, report.rows_rejected) \
        == (5, 1, 2, 2)
    assert report.events_by_type == {"contact_updated": 2, "list_subscribed": 1,
                                     "list_unsubscribed": 1}
    assert report.completed and report.dry_run and report.events_published == 0
    assert [(r["line"], r["column"]) for r in read_rejects(rejects_path_for(path))] == [
        ("3", "country"), ("5", "email")]
    assert report.rejects_file == str(rejects_path_for(path))


async def test_the_rejects_report_is_what_docs_import_md_shows(tmp_path: Path) -> None:
    """docs/import.md's example is a real report, byte for byte; a pattern in a reason is
    written as a person writes it (one backslash, not Python's repr of it)."""
    doc = (Path(__file__).parents[2] / "docs" / "import.md").read_text(encoding="utf-8")
    example = doc[doc.index("```csv\nline,column,reason"):].split("```")[1]
    path = write(tmp_path, "Email,Phone,Country\n"
                 "ana@example.com,,ES\n"
                 "bo@example.com,,\n"
                 "carla@example.com,,MX\n"
                 "dan@example.com,12345,XX\n"
                 "ana@example.com,,\n"
                 "fay@example.com,,\n"
                 "eve@example,,\n")
    await import_csv(path, tenant="acme", rejects_path=rejects_path_for(path),
                     options=ImportOptions(dry_run=True))
    written = rejects_path_for(path).read_text(encoding="utf-8")
    assert written.splitlines() == example.strip().splitlines()[1:]
    assert "'^\\+[1-9][0-9]{6,14}$'" in written


async def test_problems_before_the_rows_stop_the_import(tmp_path: Path) -> None:
    with pytest.raises(MappingError, match="no mapping for the column 'shoe'"):
        await import_csv(write(tmp_path, "email,shoe\na@example.com,38\n"), tenant="acme",
                         options=ImportOptions(dry_run=True))
    with pytest.raises(ValueError, match="tenant 'Acme Inc' is not valid"):
        await import_csv(write(tmp_path, "email\n"), tenant="Acme Inc",
                         options=ImportOptions(dry_run=True))
    with pytest.raises(ValueError, match="publishing needs a JetStream context"):
        await import_csv(write(tmp_path, "email\n"), tenant="acme")


async def test_a_header_only_file_imports_nothing_and_says_so(tmp_path: Path) -> None:
    report = await import_csv(write(tmp_path, "email,first_name\r\n"), tenant="acme",
                              options=ImportOptions(dry_run=True))
    assert report.completed and (report.rows_read, report.rows_accepted) == (0, 0)
    assert report.warnings == ["the file has no rows after its header: nothing to import"]


def test_a_delimiter_is_named_the_same_way_by_the_cli_and_the_api() -> None:
    assert [delimiter_named(d) for d in (None, ",", ";", "|", "tab", "TAB", "\t")] == [
        None, ",", ";", "|", "\t", "\t", "\t"]
    for odd in ("x", ";;", "", "space"):
        with pytest.raises(CsvFileError, match="must be one of , ; | or tab"):
            delimiter_named(odd)
