"""`ficha segments|engagement|lists|consent` as a user runs them, against `ficha up`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from projections.registry import all_projections
from tests.e2e.test_cli import ficha, start_up, stop, wait_received, wait_status


def wait_projected(data_dir: Path) -> None:
    wait_status(data_dir, lambda report: all(p["lag"] == 0 for p in report["projections"]))


@pytest.mark.slow
def test_define_preview_members_why_and_statistics(tmp_path: Path) -> None:
    data_dir = tmp_path / "var"
    proc = start_up(data_dir, tmp_path / "up.log")
    try:
        ficha(data_dir, "demo", "--tenant", "acme", "--events", "1500", "--seed", "2")
        wait_received(data_dir, 1500)
        rule = tmp_path / "es.json"
        rule.write_text(json.dumps({"name": "Spanish speakers", "rule": {
            "field": "language", "op": "equals", "value": "es"}}))
        ficha(data_dir, "segments", "create", "--tenant", "acme", "es", str(rule))
        wait_projected(data_dir)
        listed = json.loads(ficha(data_dir, "segments", "list", "--tenant", "acme",
                                  "--json").stdout)
        assert [(s["segment_id"], s["name"], s["version"]) for s in listed] == [
            ("es", "Spanish speakers", 1)]
        size = listed[0]["members"]
        assert size > 0

        narrower = tmp_path / "es-buyers.json"
        narrower.write_text(json.dumps({"all": [
            {"field": "language", "op": "equals", "value": "es"},
            {"count": "purchases", "op": "gte", "value": 1}]}))
        seen = json.loads(ficha(data_dir, "segments", "preview", "--tenant", "acme", "es",
                                str(narrower), "--json").stdout)
        assert seen["would_enter"] == 0 and seen["would_leave"] > 0
        assert seen["would_leave"] + seen["would_stay"] == size
        ficha(data_dir, "segments", "edit", "--tenant", "acme", "es", str(narrower))
        wait_projected(data_dir)
        members = json.loads(ficha(data_dir, "segments", "members", "--tenant", "acme", "es",
                                   "--json", "--limit", "1000").stdout)
        assert members["total"] == seen["would_stay"]

        someone = members["members"][0]["email"]
        why = json.loads(ficha(data_dir, "segments", "why", "--tenant", "acme", "--email",
                               someone, "es", "--json").stdout)
        assert why["segments"][0]["member"] is True
        assert all(c["holds"] for c in why["segments"][0]["clauses"])

        # Errors are one line, name the clause, and exit 2.
        bad = tmp_path / "bad.json"
        bad.write_text(json.dumps({"any": [{"field": "tags", "op": "has"}]}))
        done = ficha(data_dir, "segments", "create", "--tenant", "acme", "x", str(bad),
                     check=False)
        assert done.returncode == 2
        assert "rule.any[0]: op has needs a value" in done.stderr
        assert "Traceback" not in done.stderr
        done = ficha(data_dir, "segments", "members", "--tenant", "acme", "nope", check=False)
        assert done.returncode == 2 and "does not exist" in done.stderr

        stats = json.loads(ficha(data_dir, "engagement", "stats", "--tenant", "acme",
                                 "--json").stdout)
        counts = [v["count"] for v in stats["statuses"].values()]
        assert sum(counts) == stats["total"] > 0
        lists = json.loads(ficha(data_dir, "lists", "stats", "--tenant", "acme",
                                 "--json").stdout)
        assert set(lists["lists"]) == {"newsletter", "offers", "events"}
        answer = json.loads(ficha(data_dir, "consent", "at", "--tenant", "acme", "--email",
                                  someone, "--json").stdout)
        # The consent ledger (audience) and the card (contacts) follow the same events:
        # now, they agree.
        card = json.loads(ficha(data_dir, "contacts", "get", "--tenant", "acme", "--email",
                                someone, "--json").stdout)
        assert answer["channel"] == "email"
        assert answer["consented"] is bool(card["consent_email"]), (answer, card)

        # A side-by-side replay while `ficha up` keeps running: same answers after it.
        before = json.loads(ficha(data_dir, "segments", "members", "--tenant", "acme", "es",
                                  "--json", "--limit", "1000").stdout)
        done = ficha(data_dir, "projections", "replay")
        assert "readers switched" in done.stdout
        wait_projected(data_dir)
        after = json.loads(ficha(data_dir, "segments", "members", "--tenant", "acme", "es",
                                 "--json", "--limit", "1000").stdout)
        assert after == before
        versions = {p["name"]: p["version"] for p in
                    json.loads(ficha(data_dir, "status", "--json").stdout)["projections"]}
        assert versions == {p.name: p.version for p in all_projections()}
    finally:
        assert stop(proc) == 0
