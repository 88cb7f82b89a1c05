"""`ficha dlq` as an operator runs it against `ficha up`: group, show, re-drive after a
fix (applied once), purge."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import nats
import pytest
from typer.testing import CliRunner

from services.cli import app
from services.streams import dlq_stream_config
from tests.e2e.test_cli import ficha, start_up, stop, wait_received, wait_status
from tests.factories import event_dict


async def publish_raw(url: str, items: list[tuple[str, bytes]]) -> None:
    nc = await nats.connect(url)
    js = nc.jetstream()
    for subject, body in items:
        await js.publish(subject, body)
    await nc.close()


def wait_dead(data_dir: Path, n: int) -> None:
    wait_status(data_dir, lambda report: report["bus"].get("dead_letters", 0) >= n)


@pytest.mark.slow
def test_list_show_redrive_purge(tmp_path: Path) -> None:
    data_dir = tmp_path / "var"
    proc = start_up(data_dir, tmp_path / "up.log")
    try:
        url = (data_dir / "nats.url").read_text().strip()
        ficha(data_dir, "properties", "define", "--tenant", "acme", "shoe_size", "number")
        time.sleep(2.5)  # definitions reach the ingest workers within about two seconds
        mismatch = event_dict("form_submitted", event_id="f-1", email="ana@example.com",
                              form_id="f", properties={"shoe_size": "big"})
        asyncio.run(publish_raw(url, [
            ("ficha.in.acme.form_submitted", json.dumps(mismatch).encode()),
            ("ficha.in.acme.form_submitted", b"not json"),
            ("ficha.in.globex.form_submitted", b"{}"),
        ]))
        wait_dead(data_dir, 3)
        listed = json.loads(ficha(data_dir, "dlq", "list", "--json").stdout)
        assert listed["total"] == 3
        # The process's log is JSON lines; the one about the event names it and its tenant.
        records = [json.loads(line) for line in (tmp_path / "up.log").read_text().splitlines()
                   if line.startswith("{")]
        (about,) = [r for r in records if r.get("event_id") == "f-1"]
        assert about["tenant"] == "acme" and about["code"] == "property_type_mismatch"
        assert about["level"] == "INFO" and about["logger"] == "ficha.ingest"
        assert {(g["tenant"], g["code"]) for g in listed["groups"]} == {
            ("acme", "property_type_mismatch"), ("acme", "not_json"),
            ("globex", "missing_field")}
        seq = next(d["seq"] for d in listed["latest"] if d["event_id"] == "f-1")
        shown = json.loads(ficha(data_dir, "dlq", "show", str(seq), "--json").stdout)
        assert shown["body"]["properties"] == {"shoe_size": "big"}
        assert "defined as a number" in shown["detail"]
        # A body that is not JSON names no event id: said in words, not as Python's None.
        unreadable = next(d["seq"] for d in listed["latest"] if d["code"] == "not_json")
        text = ficha(data_dir, "dlq", "show", str(unreadable)).stdout
        assert "event_id: (none: the body names no event id)" in text and "None" not in text
        for missing in ("0", "-1", str(2**64)):  # outside any stream: not there, not a crash
            absent = ficha(data_dir, "dlq", "show", "--", missing, check=False)
            assert absent.returncode == 2 and "Traceback" not in absent.stderr, absent.stderr
            assert f"no dead letter {missing}" in absent.stderr

        # The operator widens the definition, then re-drives: the event is applied once.
        ficha(data_dir, "properties", "remove", "--tenant", "acme", "shoe_size")
        time.sleep(2.5)
        done = ficha(data_dir, "dlq", "redrive", "--code", "property_type_mismatch", "--yes")
        assert "re-drove 1" in done.stdout
        wait_received(data_dir, 1)
        card = json.loads(ficha(data_dir, "contacts", "get", "--tenant", "acme", "--email",
                                "ana@example.com", "--json").stdout)
        assert card["properties"] == {"shoe_size": "big"}
        again = ficha(data_dir, "dlq", "redrive", str(seq), "--yes", check=False)
        assert again.returncode == 2 and f"no dead letter has the sequence {seq}" in (
            again.stderr), again.stderr
        unknown = ficha(data_dir, "dlq", "list", "--code", "nosuch_code", check=False)
        assert unknown.returncode == 0 and "is no dead-letter code" in unknown.stderr
        assert "property_type_mismatch" in unknown.stderr  # the codes are listed

        refused = ficha(data_dir, "dlq", "purge", check=False)
        assert refused.returncode == 2 and "--all" in refused.stderr
        ficha(data_dir, "dlq", "purge", "--tenant", "globex", "--yes")
        left = json.loads(ficha(data_dir, "dlq", "list", "--json").stdout)
        assert [(g["tenant"], g["code"]) for g in left["groups"]] == [("acme", "not_json")]
    finally:
        assert stop(proc) == 0


async def test_purging_nothing_is_not_an_error(nats_server: Any, fresh_topology: None,
                                               js: Any, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    await js.add_stream(dlq_stream_config())
    monkeypatch.setenv("FICHA_DATA_DIR", str(tmp_path / "var"))
    monkeypatch.setenv("FICHA_NATS_URL", nats_server.url)
    done = await asyncio.to_thread(CliRunner().invoke, app,
                                   ["dlq", "purge", "--tenant", "globex", "--yes"])
    assert done.exit_code == 0, done.stderr
    assert done.stdout.strip() == "no dead letters match: nothing purged"
    assert done.stderr == ""
    redriven = await asyncio.to_thread(CliRunner().invoke, app,
                                       ["dlq", "redrive", "--tenant", "globex", "--yes"])
    assert redriven.exit_code == 0, redriven.stderr
    assert redriven.stdout.strip() == "no dead letters match: nothing re-driven"
