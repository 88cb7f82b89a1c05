"""What `ficha import` says when an import stops half-way or rejects rows, and its exit
codes (the end-to-end tests drive the real command; these cover the stopped case, which
needs NATS to go away at the right moment)."""

from __future__ import annotations

import pytest
import typer

from services.cli_import import EXIT_REJECTED, EXIT_STOPPED, _show
from services.importing.importer import ImportReport


def report(**fields: object) -> ImportReport:
    base: dict[str, object] = dict(
        file="big.csv", tenant="acme", sha256="0" * 64, encoding="utf-8", delimiter=",",
        source="import", occurred_at="2026-11-23T10:00:00.000+00:00", dry_run=False,
        columns={"email": "email"}, lines=1_000_001)
    base.update(fields)
    return ImportReport(**base)  # type: ignore[arg-type]


def test_a_stopped_import_says_how_far_it_got_and_that_a_rerun_is_safe(
        capsys: pytest.CaptureFixture[str]) -> None:
    stopped = report(rows_read=413_000, rows_accepted=413_000, rows_published=412_000,
                     events_published=824_113, events_by_type={"contact_updated": 413_000},
                     completed=False, stopped="NATS acknowledged nothing for 10 s (2000 "
                     "messages waiting): is it running?")
    with pytest.raises(typer.Exit) as exited:
        _show(stopped, as_json=False)
    assert exited.value.exit_code == EXIT_STOPPED
    said = " ".join(capsys.readouterr().err.split())
    assert "stopped: NATS acknowledged nothing for 10 s" in said
    assert ("412,000 of 413,000 accepted rows were published (824,113 events acknowledged); "
            "1,000 were not, or not wholly; about 587,000 rows were not read.") in said
    assert "Re-running the same command is safe" in said


def test_rejected_rows_exit_with_3_and_name_the_report(
        capsys: pytest.CaptureFixture[str]) -> None:
    done = report(rows_read=10, rows_accepted=8, rows_rejected=2, rows_published=8,
                  completed=True, rejects_file="big.csv.rejects.csv", lines=11)
    with pytest.raises(typer.Exit) as exited:
        _show(done, as_json=True)
    assert exited.value.exit_code == EXIT_REJECTED
    out = capsys.readouterr()
    assert '"rows_rejected":2' in out.out
    assert "2 rows rejected: see big.csv.rejects.csv (line, column, reason)" in out.err


def test_a_complete_import_exits_quietly(capsys: pytest.CaptureFixture[str]) -> None:
    _show(report(rows_read=3, rows_accepted=3, rows_published=3, completed=True, lines=4),
          as_json=False)
    assert "rows published" in capsys.readouterr().out
