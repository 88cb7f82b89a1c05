"""Exports at scale: the client list of N contacts to CSV and Parquet, next to raw reads.

Fills the ``contacts`` and ``contact_tags`` read models the way ``bench.client_list`` does
(COPY on PostgreSQL), with a few properties on every contact, then measures, each in a
fresh child process so that its peak RSS is its own:

* raw baselines: the same rows and columns read with nothing done to them: ``COPY
  (SELECT ...) TO STDOUT`` through psycopg into nowhere (PostgreSQL), and a plain cursor
  fetch (server-side on PostgreSQL, fetchmany on SQLite);
* ``export_to_file`` (the code behind ``ficha export contacts``) to CSV and to Parquet,
  for every contact and for a filter that keeps about a quarter of them, to show that
  memory does not follow the row count.

Usage:  python -m bench.export --contacts 1000000 [--backend postgres|sqlite]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.client_list import fill
from bench.common import scratch_settings
from projections.contacts import ContactsProjection
from projections.db import ViewDatabase
from projections.export import ExportQuery, contacts_query, count_rows, export_to_file
from projections.queries import ContactFilter
from services.config import load_settings

TENANT = "big"
FILTERS = {
    "all": ContactFilter(tenant=TENANT),
    # First contact from mid-2025 on: about a quarter of the three years bench.client_list
    # spreads first contacts over.
    "quarter": ContactFilter(tenant=TENANT, first_seen_from=datetime(2025, 4, 1, tzinfo=UTC)),
}
MEASURES = ("copy-baseline", "fetch-baseline", "csv", "parquet")
# Every contact's properties: JSON (quoted in CSV), a comma and non-ASCII text.
PROPERTIES = '{"club": "Año Nuevo", "interest": "running, trail", "shoe_size": 38}'


def raw_select(query: ExportQuery) -> str:
    """The export's rows and columns as stored, with nothing rendered."""
    columns = ", ".join(c.expression for c in query.columns)
    return f"SELECT {columns} FROM {query.source} ORDER BY {query.order_by}"


def baseline(db: ViewDatabase, query: ExportQuery, kind: str) -> tuple[int, int]:
    """Read the rows raw; (rows, bytes) where bytes is only known for COPY."""
    rows = size = 0
    with db.snapshot() as conn:
        if kind == "copy-baseline":
            statement = f"COPY ({raw_select(query)}) TO STDOUT (FORMAT csv)"
            with conn.cursor() as cur, cur.copy(statement.replace("?", "%s"),
                                                query.params) as copy:
                for data in copy:
                    rows += 1
                    size += len(data)
        elif db.is_postgres:
            with conn.cursor(name="bench_fetch") as cur:
                cur.execute(raw_select(query).replace("?", "%s"), query.params)
                while batch := cur.fetchmany(5000):
                    rows += len(batch)
        else:
            cur = conn.execute(raw_select(query), query.params)
            while batch := cur.fetchmany(5000):
                rows += len(batch)
    return rows, size


def measure(kind: str, which: str) -> dict[str, Any]:
    """One measure in this (child) process; its figures and this process's peak RSS."""
    db = ViewDatabase(load_settings())
    query = contacts_query(db, FILTERS[which])
    started = time.perf_counter()
    if kind.endswith("baseline"):
        rows, size = baseline(db, query, kind)
    else:
        with tempfile.TemporaryDirectory() as folder:
            result = export_to_file(db, query, kind, Path(folder) / f"export.{kind}")  # type: ignore[arg-type]
            rows, size = result.rows, result.bytes
    seconds = time.perf_counter() - started
    db.close()
    return {"rows": rows, "bytes": size, "seconds": seconds, "peak_rss_mib": peak_rss_mib()}


def peak_rss_mib() -> float:
    """This process's peak resident set size. Linux's VmHWM belongs to the process image
    (ru_maxrss would carry the parent's peak over fork and exec)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def in_child(env: dict[str, str], kind: str, which: str) -> dict[str, Any]:
    done = subprocess.run([sys.executable, "-m", "bench.export", "--measure", kind,
                           "--which", which], env={**os.environ, **env},
                          capture_output=True, text=True, check=True)
    return dict(json.loads(done.stdout))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contacts", type=int, default=1_000_000)
    parser.add_argument("--backend", default="postgres", choices=["postgres", "sqlite"])
    parser.add_argument("--measure", choices=MEASURES, help=argparse.SUPPRESS)
    parser.add_argument("--which", choices=sorted(FILTERS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure, args.which)))
        return
    with scratch_settings(args.backend, "export") as settings:
        db = ViewDatabase(settings)
        ContactsProjection().create_tables(db)
        loaded = fill(db, args.contacts, TENANT, properties=PROPERTIES)
        counts = {which: count_rows(db, contacts_query(db, f)) for which, f in FILTERS.items()}
        db.close()
        env = settings.to_env()
        print(f"\n{args.backend}: {args.contacts:,} contacts loaded in {loaded:.1f}s; "
              f"'quarter' = {counts['quarter']:,} of them\n")
        print(f"{'measure':40} {'rows':>10} {'seconds':>8} {'rows/s':>10} {'MB out':>8} "
              f"{'peak RSS MiB':>12}")
        kinds = [k for k in MEASURES if args.backend == "postgres" or k != "copy-baseline"]
        for which in ("all", "quarter"):
            for kind in kinds:
                if which == "quarter" and kind.endswith("baseline"):
                    continue
                got = in_child(env, kind, which)
                assert got["rows"] == counts[which], (kind, which, got)
                label = {"copy-baseline": "COPY raw rows (raw baseline)",
                         "fetch-baseline": "cursor fetch raw rows (baseline)",
                         "csv": "ficha export CSV", "parquet": "ficha export Parquet"}[kind]
                out = f"{got['bytes'] / 1e6:8.1f}" if got["bytes"] else f"{'-':>8}"
                print(f"{label + ' (' + which + ')':40} {got['rows']:>10,} "
                      f"{got['seconds']:8.2f} {got['rows'] / got['seconds']:>10,.0f} "
                      f"{out} {got['peak_rss_mib']:>12.1f}")


if __name__ == "__main__":
    main()
