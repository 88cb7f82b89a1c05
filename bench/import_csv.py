"""CSV import benchmark: a generated file of N rows through `import_csv`, next to raw
JetStream publishing of as many messages of similar size, measured in the same run.

Prints one table:
  * raw baseline 1: the importer's own transport alone (``WindowedPublisher``: plain
    publishes with a reply inbox, PubAck checked), the same number of messages as the
    import publishes, bodies of the import's mean size, the same in-flight window;
  * raw baseline 2: nats-py's ``js.publish_async`` with the same window (the library path);
  * the import: read and hash the file, map and validate every row through the decoder,
    publish every event and wait for every acknowledgement (what `ficha import` does).

The target is the time to publish; the ingest workers' folding follows separately
(bench/pipeline.py measures that).

Usage:  python -m bench.import_csv --rows 1000000 [--window 2000] [--no-library-baseline]
Not a test: figures depend on the machine; RESULTS.md keeps the latest with its context.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import itertools
import os
import platform
import random
import shutil
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import nats
from nats.js import JetStreamContext

from contracts.publisher import WindowedPublisher, connection_of
from services.importing.files import open_csv
from services.importing.importer import ImportOptions, ImportReport, import_csv
from services.importing.mapping import plan_columns
from services.importing.rows import RowMapper
from services.natsserver import EmbeddedNatsServer
from services.streams import INGEST_STREAM, TopologySettings, ensure_topology

TOPOLOGY = TopologySettings(partitions=8, duplicate_window_s=0.1, ingest_max_age_s=604800,
                            ack_wait_s=30, replicas=1)
HEADER = ["email", "first_name", "last_name", "phone", "language", "country", "city", "tags",
          "property:plan", "property:score", "list:newsletter", "consent:email", "lead_status"]
FIRST = ["Ana", "Bo", "Carla", "Diego", "Elena", "Félix", "Gloria", "Hugo", "Inés", "Jon"]
LAST = ["García", "Ruiz", "López", "Martín", "Sánchez", "Pérez", "Gómez", "Díaz"]
PLACES = [("es", "ES", "Madrid"), ("es-MX", "MX", "Guadalajara"), ("fr", "FR", "Lyon"),
          ("en", "GB", "Leeds"), ("pt", "PT", "Porto"), ("de", "DE", "Köln")]
TAGS = ["vip", "lead", "newsletter", "b2b", "event-2026", "wholesale"]


def generate(path: Path, rows: int, seed: int = 11) -> dict[str, int]:
    """A realistic contact export; returns how many events each type should get."""
    rng = random.Random(seed)
    expected = {"contact_updated": rows, "list_subscribed": 0, "list_unsubscribed": 0,
                "consent_changed": 0}
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(HEADER)
        for i in range(rows):
            language, country, city = PLACES[i % len(PLACES)]
            newsletter = rng.choice(["yes", "yes", "", "", "", "no"])
            consent = rng.choice(["yes", "no", "", ""])
            if newsletter == "yes":
                expected["list_subscribed"] += 1
            elif newsletter == "no":
                expected["list_unsubscribed"] += 1
            if consent:
                expected["consent_changed"] += 1
            writer.writerow([
                f"person{i}@example{i % 97}.com", FIRST[i % len(FIRST)], LAST[i % len(LAST)],
                f"+346{i:08d}", language, country, city,
                ", ".join(rng.sample(TAGS, rng.randint(0, 3))),
                rng.choice(["basic", "pro", "team"]), str(rng.randint(0, 100)),
                newsletter, consent, rng.choice(["", "new", "qualified", "customer"]),
            ])
    return expected


def mean_event_size(path: Path, rows: int = 20_000) -> int:
    """The mean body size of the events the import makes of the file's first rows."""
    csvfile = open_csv(path)
    mapper = RowMapper(plan_columns(csvfile.header), tenant="bench",
                       file_sha256=csvfile.sha256, occurred_at=datetime.now(UTC))
    sizes = [len(event.body) for _, cells in itertools.islice(csvfile.records(), rows)
             if isinstance(cells, list) for event in mapper.map_row(0, cells).events]
    return round(sum(sizes) / len(sizes))


def sample_body(i: int, size: int) -> bytes:
    """A contact_updated-like body of ``size`` bytes (the baselines' messages)."""
    head = (f'{{"event_id":"raw-{i:08x}","type":"contact_updated","tenant":"raw",'
            f'"occurred_at":"2026-11-23T10:00:00.000+00:00","source":"import",'
            f'"contact":{{"email":"person{i}@example{i % 97}.com"}},"pad":"')
    return (head + "x" * max(0, size - len(head) - 2) + '"}').encode()


async def fresh_stream(js: JetStreamContext) -> None:
    with contextlib.suppress(Exception):
        await js.delete_stream(INGEST_STREAM)
    await ensure_topology(js, TOPOLOGY)


async def baseline_windowed(js: JetStreamContext, n: int, window: int, size: int) -> float:
    await fresh_stream(js)
    start = time.perf_counter()
    async with WindowedPublisher(connection_of(js), window=window) as publisher:
        for i in range(n):
            await publisher.publish("ficha.in.raw.contact_updated", sample_body(i, size),
                                    f"raw-{i}")
        await publisher.flush()
    assert publisher.acked == n
    return time.perf_counter() - start


async def baseline_library(js: JetStreamContext, n: int, window: int, size: int) -> float:
    await fresh_stream(js)
    start = time.perf_counter()
    pending = []
    for i in range(n):
        pending.append(await js.publish_async("ficha.in.raw.contact_updated",
                                              sample_body(i, size),
                                              headers={"Nats-Msg-Id": f"lib-{i}"}))
        if len(pending) >= window:
            await asyncio.gather(*pending)
            pending.clear()
    await asyncio.gather(*pending)
    return time.perf_counter() - start


async def run_import(js: JetStreamContext, path: Path, window: int) -> ImportReport:
    await fresh_stream(js)
    return await import_csv(path, tenant="bench", js=js,
                            options=ImportOptions(window=window),
                            rejects_path=path.with_name("rejects.csv"))


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--window", type=int, default=2000)
    parser.add_argument("--no-library-baseline", action="store_true")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="ficha-bench-import-"))
    load_before = os.getloadavg()
    csv_path = root / "contacts.csv"
    started = time.perf_counter()
    expected = generate(csv_path, args.rows)
    generated_s = time.perf_counter() - started
    events = sum(expected.values())
    size = mean_event_size(csv_path)
    server = EmbeddedNatsServer(store_dir=root / "nats")
    server.start()
    lines: list[tuple[str, str]] = []
    try:
        nc = await nats.connect(server.url)
        js = nc.jetstream()
        raw = await baseline_windowed(js, events, args.window, size)
        lines.append(("raw: WindowedPublisher alone",
                      f"{events:,} msgs in {raw:.1f} s = {events / raw:,.0f} msgs/s"))
        if not args.no_library_baseline:
            lib = await baseline_library(js, events, args.window, size)
            lines.append(("raw: nats-py js.publish_async",
                          f"{events:,} msgs in {lib:.1f} s = {events / lib:,.0f} msgs/s"))
        report = await run_import(js, csv_path, args.window)
        assert report.completed, report.stopped
        assert report.rows_accepted == args.rows, (report.rows_rejected, report.rejections[:3])
        assert report.events_by_type == {k: v for k, v in expected.items() if v}, \
            report.events_by_type
        assert report.events_published == events
        took = report.elapsed_s
        lines.append(("ficha import (file → every event acked)",
                      f"{args.rows:,} rows, {events:,} events in {took:.1f} s = "
                      f"{args.rows / took:,.0f} rows/s, {events / took:,.0f} events/s "
                      f"({events / took / (events / raw):.2f} of the raw transport)"))
        await nc.close()
    finally:
        server.stop()
        file_size = csv_path.stat().st_size if csv_path.exists() else 0
        shutil.rmtree(root, ignore_errors=True)
    print(f"\nmachine: {platform.platform()}, {os.cpu_count()} cores, Python "
          f"{platform.python_version()}; load average before {load_before[0]:.2f}, "
          f"after {os.getloadavg()[0]:.2f}")
    print(f"file: {args.rows:,} rows, {file_size / 1e6:,.0f} MB "
          f"(generated in {generated_s:.0f} s); "
          f"events: {', '.join(f'{k} {v:,}' for k, v in expected.items())}; "
          f"mean body {size} bytes; window {args.window}\n")
    width = max(len(name) for name, _ in lines)
    for name, result in lines:
        print(f"{name.ljust(width)}  {result}")


if __name__ == "__main__":
    asyncio.run(main())
