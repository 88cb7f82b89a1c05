"""`ficha export contacts|segment` as a user runs it, on both backends: the files hold what
the read models hold, the summary is right, and mistakes get one line and no file."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from projections.audience_queries import segment_members
from projections.export import contacts_query, segment_query
from projections.queries import ContactFilter
from services.catalog import SegmentCommands
from services.cli import app
from services.config import Settings
from services.demo import generate_history
from tests.factories import decode_dict
from tests.projections.test_export import (
    ReadModels,
    card_row,
    from_csv,
    from_parquet,
    read_models,
    whole_list,
)


@pytest.fixture
def seeded(settings: Settings, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
           ) -> Iterator[ReadModels]:
    """Read models with a demo history and a segment; the CLI's environment points at them."""
    with read_models(settings) as models:
        yield seed(models, settings, monkeypatch, tmp_path)


def seed(models: ReadModels, settings: Settings, monkeypatch: pytest.MonkeyPatch,
         tmp_path: Path) -> ReadModels:
    SegmentCommands(models.store).define("acme", "spanish", "Spanish speakers",
                                         {"field": "language", "op": "equals", "value": "es"})
    start = datetime.now(UTC) - timedelta(days=200)
    models.ingest([decode_dict(d) for d in generate_history("acme", 1200, seed=7, start=start,
                                                            days=200)])
    for name, value in settings.to_env().items():
        monkeypatch.setenv(name, value)
    (tmp_path / "out").mkdir()
    return models


def ficha(*args: str) -> Any:
    return CliRunner().invoke(app, list(args))


def test_export_contacts_with_filters_to_csv_and_parquet(seeded: ReadModels,
                                                         tmp_path: Path) -> None:
    db = seeded.db
    since = datetime.now(UTC) - timedelta(days=150)
    f = ContactFilter(tenant="acme", language="es", no_consent="sms", first_seen_from=since)
    query = contacts_query(db, f)
    expected = [card_row(db, "acme", r["email"], query) for r in whole_list(db, f)]
    assert len(expected) > 10
    target = tmp_path / "out" / "es.csv"
    done = ficha("export", "contacts", "--tenant", "acme", "--language", "es", "--no-consent",
                 "sms", "--first-seen-from", since.isoformat(), "--out", str(target), "--json")
    assert done.exit_code == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary == {"what": "contacts", "path": str(target), "format": "csv",
                       "rows": len(expected), "bytes": target.stat().st_size,
                       "seconds": summary["seconds"]}
    assert from_csv(target.read_bytes(), query) == expected

    target = tmp_path / "out" / "es.parquet"  # the format from the extension
    done = ficha("export", "contacts", "--tenant", "acme", "--language", "es", "--no-consent",
                 "sms", "--since", since.isoformat(), "--out", str(target))
    assert done.exit_code == 0, done.stderr
    assert f"exported {len(expected):,} rows (contacts)" in done.stdout
    assert from_parquet(target.read_bytes(), query) == expected
    assert sorted(p.name for p in target.parent.iterdir()) == ["es.csv", "es.parquet"]


def test_export_a_segment_now_and_as_of(seeded: ReadModels, tmp_path: Path) -> None:
    db = seeded.db
    with db.reading() as cur:
        cur.execute("SELECT entered_at FROM segment_history WHERE segment_id = 'spanish' "
                    "ORDER BY entered_at")
        entered = [r["entered_at"] for r in cur.fetchall()]
    middle = entered[len(entered) // 2]
    sizes = []
    for as_of in (None, middle):
        moment = None if as_of is None else datetime.fromisoformat(as_of.replace("Z", "+00:00"))
        members = segment_members(db, "acme", "spanish", as_of=moment, limit=100_000)
        query = segment_query(db, "acme", "spanish", moment)
        target = tmp_path / "out" / "spanish.data"
        extra = [] if as_of is None else ["--as-of", as_of]
        done = ficha("export", "segment", "spanish", "--tenant", "acme", "--format", "parquet",
                     "--out", str(target), "--json", *extra)
        assert done.exit_code == 0, done.stderr
        assert json.loads(done.stdout)["rows"] == len(members)
        sizes.append(len(members))
        rows = from_parquet(target.read_bytes(), query)
        assert [(r["contact_id"], r["email"], r["entered_at"], r["exited_at"]) for r in rows] == [
            (m["contact_id"], m["email"], m["entered_at"], m["exited_at"]) for m in members]
        assert all(r["language"].lower().split("-")[0] == "es" for r in rows)
    assert json.loads(pq.read_schema(target).metadata[b"ficha.export"]) == {
        "export": "segment", "tenant": "acme", "segment_id": "spanish", "as_of": middle}
    assert 0 < sizes[1] < sizes[0]  # fewer had entered by the middle entry


MISTAKES = [
    (["contacts", "--tenant", "globex"], 2, "no tenant 'globex' is known here (known: acme)"),
    (["segment", "nope", "--tenant", "acme"], 2, "segment 'nope' does not exist"),
    (["contacts", "--tenant", "acme", "--since", "2026-13-01"], 2,
     "--since (--first-seen-from) must be a date"),
    (["segment", "spanish", "--tenant", "acme", "--as-of", "yesterday"], 2,
     "--as-of must be a date"),
    # as the API and imports read it: a time without its offset is not guessed to be UTC
    (["segment", "spanish", "--tenant", "acme", "--as-of", "2026-11-02T10:15:00"], 2,
     "'2026-11-02T10:15:00' has no timezone offset"),
    (["contacts", "--tenant", "acme", "--consent", "fax"], 2, "unknown consent channel 'fax'"),
    (["contacts", "--tenant", "acme", "--format", "xlsx"], 2, "unknown format 'xlsx'"),
]


def test_mistakes_get_one_line_and_no_file(seeded: ReadModels, tmp_path: Path) -> None:
    out = tmp_path / "out"
    for args, code, says in MISTAKES:
        done = ficha("export", *args, "--out", str(out / "x.csv"))
        assert done.exit_code == code, (args, done.stderr)
        assert says in done.stderr and "Traceback" not in done.stderr
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr
        assert list(out.iterdir()) == []


def test_a_target_that_cannot_be_written_is_refused_before_reading(seeded: ReadModels,
                                                                   tmp_path: Path) -> None:
    out = tmp_path / "out"
    cases = [(out / "missing" / "x.csv", "the folder"), (out, "is a folder"),
             (out / "x.txt", "cannot tell the format")]
    for target, says in cases:
        done = ficha("export", "contacts", "--tenant", "acme", "--out", str(target))
        assert done.exit_code == 2 and says in done.stderr, done.stderr
        assert "Traceback" not in done.stderr
    assert list(out.iterdir()) == []
