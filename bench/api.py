"""The HTTP API under load: client-list pages with two filters and a contact card with a
200-entry timeline, at 50 concurrent connections, p50/p90/p99 as `wrk` measures them.

Fills the contacts read model with N synthetic contacts (``bench.client_list.fill``),
gives one contact a 200-entry timeline, starts `ficha api` as its own process(es), and
drives it with wrk (Debian's package: ``apt-get install wrk``). Raw baselines in the
same run: the same queries called in-process without HTTP (one at a time), and wrk
against the API's trivial ``/healthz`` (the HTTP stack's floor at this concurrency).
Each wrk case also prints the CPU milliseconds per request spent by the API's processes
and by PostgreSQL (from /proc), which tells which of the two a change should target.

Usage:  python -m bench.api --contacts 1000000 [--workers 2] [--duration 20]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx

from bench.client_list import COUNTRIES, fill, pct
from bench.common import descendants, processes, scratch_settings
from projections.contacts import ContactsProjection
from projections.db import ViewDatabase
from projections.queries import ContactFilter, get_card, list_contacts
from services.catalog import ApiKeyCommands
from services.store.contact_store import ContactStore
from tests.api.conftest import free_port

TENANT = "big"
LANGS = ["es", "en", "fr", "de", "pt", "it", "ca"]
LIST_SCRIPT = """
local langs = {%s}
local countries = {%s}
request = function()
  local path = string.format("/v1/tenants/big/contacts?language=%%s&country=%%s",
    langs[math.random(#langs)], countries[math.random(#countries)])
  return wrk.format("GET", path)
end
"""


def give_timeline(db: ViewDatabase, entries: int) -> str:
    """200 timeline entries for the first contact; returns its email."""
    with db.reading() as cur:
        cur.execute("SELECT contact_id, email FROM contacts WHERE tenant = ? "
                    "ORDER BY contact_id LIMIT 1", (TENANT,))
        row = cur.fetchone()
    assert row is not None
    start = datetime(2025, 1, 1, tzinfo=UTC)
    with db.transaction() as cur:
        cur.executemany(
            "INSERT INTO timeline VALUES (?,?,?,?,?,?,?,?,?)",
            [(TENANT, row["contact_id"], start + timedelta(hours=i), f"ev-{i}",
              "email_opened", "email", "bench", f"opened message m-{i}",
              json.dumps({"message_id": f"m-{i}"})) for i in range(entries)],
        )
    return str(row["email"])


def cpu_seconds(api_pid: int) -> dict[str, float]:
    """CPU seconds used so far by the API's process tree and by PostgreSQL's processes,
    to tell where a request's time goes."""
    procs = processes()
    tree = descendants(procs, api_pid)
    return {"api": sum(procs[p].seconds for p in tree),
            "postgres": sum(p.seconds for p in procs.values() if p.name == "postgres")}


def wrk(url: str, key: str, seconds: int, script: str | None = None,
        api_pid: int | None = None) -> dict[str, float]:
    """Run wrk with 50 connections; its latency percentiles (ms), requests/s and, given
    the API's pid, the CPU milliseconds per request of the API and of PostgreSQL."""
    before = cpu_seconds(api_pid) if api_pid else {}
    command = ["wrk", "-t2", "-c50", f"-d{seconds}s", "--latency",
               "-H", f"Authorization: Bearer {key}"]
    if script:
        path = Path(tempfile.mkdtemp()) / "script.lua"
        path.write_text(script)
        command += ["-s", str(path)]
    out = subprocess.run([*command, url], capture_output=True, text=True, check=True).stdout
    figures: dict[str, float] = {}
    for label in ("50%", "90%", "99%"):
        match = re.search(rf"^\s+{label}\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        assert match, out
        scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[match[2]]
        figures[label] = float(match[1]) * scale
    figures["req/s"] = float(re.search(r"Requests/sec:\s+([\d.]+)", out)[1])  # type: ignore[index]
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    figures["errors"] = float(non2xx[1]) if non2xx else 0.0
    if api_pid:
        after = cpu_seconds(api_pid)
        requests = figures["req/s"] * seconds
        for part in ("api", "postgres"):
            figures[f"{part} ms"] = (after[part] - before[part]) * 1000 / requests
    return figures


def in_process(db: ViewDatabase, email: str, runs: int = 300) -> dict[str, list[float]]:
    rnd = random.Random(5)
    countries = [c for c, _ in COUNTRIES]
    lists, cards = [], []
    for i in range(runs + 20):
        f = ContactFilter(tenant=TENANT, language=rnd.choice(LANGS),
                          country=rnd.choice(countries))
        t = time.perf_counter()
        list_contacts(db, f, limit=50)
        if i >= 20:
            lists.append((time.perf_counter() - t) * 1000)
        t = time.perf_counter()
        get_card(db, TENANT, email, timeline_limit=200)
        if i >= 20:
            cards.append((time.perf_counter() - t) * 1000)
    return {"list": sorted(lists), "card": sorted(cards)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contacts", type=int, default=1_000_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--duration", type=int, default=20)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed: apt-get install wrk")
    with scratch_settings("postgres", "api") as base:
        port = free_port()
        env = {**base.to_env(), "FICHA_API_PORT": str(port)}
        db = ViewDatabase(base)
        ContactsProjection().create_tables(db)
        seconds = fill(db, args.contacts, TENANT)
        email = give_timeline(db, 200)
        store = ContactStore(base)
        key = ApiKeyCommands(store).issue(TENANT, ["read"], "bench")
        store.close()
        print(f"\npostgres: {args.contacts:,} contacts loaded in {seconds:.0f}s; "
              f"API with {args.workers} worker process(es); wrk: 2 threads, 50 connections, "
              f"{args.duration}s per case\n")
        direct = in_process(db, email)
        server = subprocess.Popen(
            [sys.executable, "-m", "services", "api", "--workers", str(args.workers)],
            env={**os.environ, **env}, stdout=subprocess.DEVNULL)
        try:
            url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 60
            while True:
                try:
                    if httpx.get(f"{url}/healthz").status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    sys.exit("the API did not start")
                time.sleep(0.2)
            card_url = f"{url}/v1/tenants/{TENANT}/contacts/{email}?timeline_limit=200"
            answer = httpx.get(card_url, headers={"Authorization": f"Bearer {key}"}).json()
            if len(answer.get("data", {}).get("timeline", [])) != 200:
                sys.exit(f"the card is not as set up: {str(answer)[:300]}")
            floor = wrk(f"{url}/healthz", key, args.duration, api_pid=server.pid)
            script = LIST_SCRIPT % (", ".join(f'"{x}"' for x in LANGS),
                                    ", ".join(f'"{c}"' for c, _ in COUNTRIES))
            listed = wrk(url, key, args.duration, script, api_pid=server.pid)
            card = wrk(card_url, key, args.duration, api_pid=server.pid)
        finally:
            server.terminate()
            server.wait(30)
        db.close()
    print(f"{'case':52} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'req/s':>8}"
          f" {'CPU ms/request: API':>20} {'PostgreSQL':>10}")
    for name, values in (("raw: list page, in-process, one at a time", direct["list"]),
                         ("raw: card + 200 timeline, in-process", direct["card"])):
        print(f"{name:52} {pct(values, 50):8.2f} {pct(values, 90):8.2f} "
              f"{pct(values, 99):8.2f} {'':>8}")
    for name, f in (("raw: HTTP floor, GET /healthz, 50 conns", floor),
                    ("API: list page, two filters, 50 conns (target p99<50)", listed),
                    ("API: card + 200 timeline, 50 conns (target p99<30)", card)):
        print(f"{name:52} {f['50%']:8.2f} {f['90%']:8.2f} {f['99%']:8.2f} "
              f"{f['req/s']:8.0f} {f['api ms']:20.2f} {f['postgres ms']:10.2f}"
              + (f"  ({f['errors']:.0f} errors)" if f["errors"] else ""))


if __name__ == "__main__":
    main()
