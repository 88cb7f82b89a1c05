"""End-to-end benchmark: publish → contacts read model caught up, per backend.

Prints one table with, from the same run:
  * raw baseline 1: JetStream async publish alone (same bodies, a throwaway stream);
  * raw baseline 2: the event store's batched save alone (eventsourcing, 500 events a
    transaction, one aggregate event each, no decoding or folding);
  * ficha end to end: N demo events published as fast as possible (plain NATS publishes,
    as from producers elsewhere: see publish_unacked), until every one is in the contacts
    read model (throughput), with the CPU time per event of every process involved;
  * latency at a steady rate: publish → timeline row visible, p50/p95/p99.

Usage:  python -m bench.pipeline --events 50000 [--backends sqlite,postgres] [--rate 1000]
Not a test: figures depend on the machine; RESULTS.md keeps the latest with its context.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import nats
from eventsourcing.application import Application
from eventsourcing.domain import Aggregate
from nats.js.api import StreamConfig

from bench.common import (
    PG_DSN,
    CpuAccount,
    ProcessCpu,
    command_line,
    descendants,
    postgres_clients,
)
from projections.db import ViewDatabase
from services.catalog import SegmentCommands
from services.config import load_settings
from services.demo import generate_history
from services.natsserver import EmbeddedNatsServer
from services.store.contact_store import ContactStore
from services.streams import INGEST_STREAM

KEY = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"


def bodies(n: int, tenant: str = "bench", seed: int = 7) -> list[tuple[str, bytes, str]]:
    out = []
    for event in generate_history(tenant, n, seed=seed):
        out.append((f"ficha.in.{tenant}.{event['type']}", json.dumps(event).encode(),
                    event["event_id"]))
    return out


async def publish_all(js: Any, items: list[tuple[str, bytes, str]], window: int = 2000,
                      subject_prefix: str | None = None) -> None:
    pending: list[Any] = []
    for subject, body, event_id in items:
        if subject_prefix:
            subject = subject_prefix + subject
        pending.append(await js.publish_async(subject, body,
                                              headers={"Nats-Msg-Id": event_id}))
        if len(pending) >= window:
            await asyncio.gather(*pending)
            pending.clear()
    await asyncio.gather(*pending)


async def publish_unacked(nc: Any, items: list[tuple[str, bytes, str]], stream: str) -> None:
    """Publish as producers on other machines would, at no CPU cost to this one: plain
    NATS publishes with the Nats-Msg-Id header (the stream stores and de-duplicates them
    all the same), without a future and a PubAck per message, which cost this process
    about 65 µs a message on a machine whose two cores ficha needs. Returns once the
    stream holds them all, and says so if it does not."""
    for subject, body, event_id in items:
        await nc.publish(subject, body, headers={"Nats-Msg-Id": event_id})
    await nc.flush()
    js = nc.jetstream()
    deadline = time.perf_counter() + 60
    while (stored := (await js.stream_info(stream)).state.messages) < len(items):
        if time.perf_counter() > deadline:
            raise RuntimeError(f"the {stream} stream holds {stored} of the {len(items)} "
                               "events published")
        await asyncio.sleep(0.05)


async def baseline_publish(url: str, items: list[tuple[str, bytes, str]]) -> float:
    nc = await nats.connect(url)
    js = nc.jetstream()
    name = "BENCH_RAW"
    with contextlib.suppress(Exception):
        await js.delete_stream(name)
    await js.add_stream(StreamConfig(name=name, subjects=["raw.>"]))
    start = time.perf_counter()
    await publish_all(js, items, subject_prefix="raw.")
    elapsed = time.perf_counter() - start
    await js.delete_stream(name)
    await nc.drain()
    return len(items) / elapsed


class Thing(Aggregate):
    class Noted(Aggregate.Event):
        payload: str

    def note(self, payload: str) -> None:
        self.trigger_event(self.Noted, payload=payload)


def baseline_store(env: dict[str, str], n: int) -> float:
    app = Application[uuid.UUID](env=env)
    things = [Thing() for _ in range(500)]
    app.save(*things)
    payload = "x" * 300
    start = time.perf_counter()
    written = 0
    while written < n:
        for thing in things:
            thing.note(payload)
        app.save(*things)
        written += len(things)
    elapsed = time.perf_counter() - start
    app.close()
    return written / elapsed


def backend_env(backend: str, data_dir: Path, schema: str) -> dict[str, str]:
    env = {"FICHA_DATA_DIR": str(data_dir), "FICHA_ID_KEY": KEY, "FICHA_PARTITIONS": "8"}
    if backend == "postgres":
        env["FICHA_DATABASE_URL"] = PG_DSN
        env["FICHA_DATABASE_SCHEMA"] = schema
    return env


def store_env(backend: str, data_dir: Path, schema: str) -> dict[str, str]:
    if backend == "sqlite":
        data_dir.mkdir(parents=True, exist_ok=True)
        return {"PERSISTENCE_MODULE": "eventsourcing.sqlite",
                "SQLITE_DBNAME": str(data_dir / "baseline.sqlite")}
    import psycopg

    with psycopg.connect(PG_DSN, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}_raw")
    return {"PERSISTENCE_MODULE": "eventsourcing.postgres", "POSTGRES_DBNAME": "test",
            "POSTGRES_HOST": "127.0.0.1", "POSTGRES_PORT": "5432", "POSTGRES_USER": "postgres",
            "POSTGRES_PASSWORD": "", "POSTGRES_SCHEMA": f"{schema}_raw"}


def drop_schemas(schema: str) -> None:
    import psycopg

    with psycopg.connect(PG_DSN, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        conn.execute(f"DROP SCHEMA IF EXISTS {schema}_raw CASCADE")


async def fresh_streams(url: str) -> None:
    """Each run starts from empty streams (the same event ids are published per backend,
    and JetStream would drop them as duplicates inside its window)."""
    nc = await nats.connect(url)
    js = nc.jetstream()
    for name in ("FICHA_IN", "FICHA_DLQ", "FICHA_OUT"):
        with contextlib.suppress(Exception):
            await js.delete_stream(name)
    await nc.close()


class FichaUp:
    """`ficha up` in its own process tree, as deployed: producers are other processes."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.env = env
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> FichaUp:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        handle = self.log.open("wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "services", "up"],
                                     env={**os.environ, **self.env}, stdout=handle,
                                     stderr=subprocess.STDOUT)
        deadline = time.time() + 60
        while b"ficha is up" not in self.log.read_bytes():
            if self.proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"ficha up failed: {self.log.read_text()}")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(60)


async def caught_up(settings: Any, expected: int, timeout: float = 900) -> None:
    """Until `expected` events are in the store and the contacts projection has them all."""
    store = ContactStore(settings)
    views = ViewDatabase(settings)
    deadline = time.perf_counter() + timeout
    try:
        while True:
            # The head of the log is an index lookup; counting the received ids scans a
            # table, which polled every 20 ms would load the database being measured. Every
            # accepted demo event stores at least one domain event (only a fact about an
            # erased contact stores none, and the demo erases no one), so the count is only
            # asked once the log is at least that long.
            if (store.max_notification_id() >= expected
                    and store.received_count() >= expected):
                with views.reading() as cur:
                    position = views.position(cur, "contacts")
                if position >= store.max_notification_id():
                    return
            if time.perf_counter() > deadline:
                raise RuntimeError("ficha did not catch up in time")
            await asyncio.sleep(0.02)
    finally:
        views.close()
        store.close()


def pipeline_roles(up_pid: int, nats_pid: int) -> Any:
    """Who is who among the processes of an end-to-end run (see ``CpuAccount``)."""

    def roles(procs: dict[int, ProcessCpu]) -> dict[int, str]:
        found = {up_pid: "ficha up: ingest, scheduler, API", nats_pid: "nats-server",
                 os.getpid(): "this benchmark: publisher, progress checks"}
        for pid in descendants(procs, up_pid) - {up_pid}:
            words = command_line(pid).split()
            projection = (words[words.index("--projection") + 1]
                          if "--projection" in words[:-1] else None)
            found[pid] = f"projector {projection}" if projection else "ficha up, other"
        with contextlib.suppress(Exception):  # no PostgreSQL: the SQLite backend
            for pid, client in postgres_clients().items():
                found[pid] = f"PostgreSQL serving {client}"
        return found

    return roles


async def end_to_end(url: str, backend: str, data_dir: Path, schema: str,
                     items: list[tuple[str, bytes, str]], nats_pid: int
                     ) -> tuple[float, dict[str, float]]:
    """Events/s from the first publish until the contacts read model holds every event,
    and the CPU seconds each part of the system used meanwhile."""
    await fresh_streams(url)
    env = {**backend_env(backend, data_dir, schema), "FICHA_NATS_URL": url}
    settings = load_settings(env)
    with FichaUp(env, data_dir / "up.log") as up:
        assert up.proc is not None
        cpu = CpuAccount(pipeline_roles(up.proc.pid, nats_pid))
        nc = await nats.connect(url)
        cpu.start()
        start = time.perf_counter()
        await publish_unacked(nc, items, INGEST_STREAM)
        await caught_up(settings, len(items))
        elapsed = time.perf_counter() - start
        used = cpu.stop()
        await nc.drain()
    return len(items) / elapsed, used


async def latency(url: str, backend: str, data_dir: Path, schema: str, rate: float,
                  seconds: float) -> tuple[list[float], list[float]]:
    """Publish → contact row visible, and publish → segment_entered on ficha.out."""
    await fresh_streams(url)
    env = {**backend_env(backend, data_dir, schema), "FICHA_NATS_URL": url}
    with FichaUp(env, data_dir / "up.log"):
        settings = load_settings(env)
        store = ContactStore(settings)
        # Every latency event tags a new contact "Lead": each one enters this segment.
        SegmentCommands(store).define("lat", "leads", "Leads",
                                      {"field": "tags", "op": "has", "value": "lead"})
        store.close()
        return await _latency(url, settings, rate, seconds)


async def _latency(url: str, settings: Any, rate: float, seconds: float
                   ) -> tuple[list[float], list[float]]:
    nc = await nats.connect(url)
    js = nc.jetstream()
    views = ViewDatabase(settings)
    sent: dict[str, float] = {}
    seen: dict[str, float] = {}
    entered: dict[str, float] = {}

    async def on_entered(msg: Any) -> None:
        email = json.loads(msg.data)["contact"]["email"]
        entered.setdefault(email.split("@")[0], time.perf_counter())

    await nc.subscribe("ficha.out.lat.segment_entered", cb=on_entered)
    lock = threading.Lock()
    done = threading.Event()

    def watch() -> None:
        # Each latency event is a new contact: "visible" = its row in the contacts read
        # model, found through the (tenant, email) unique index: a cheap probe, so the
        # measurement does not load the machine it measures.
        while not done.is_set():
            with lock:
                waiting = [e for e in sent if e not in seen][:200]
            if waiting:
                emails = [f"{e}@example.com" for e in waiting]
                marks = ",".join("?" * len(emails))
                with views.reading() as cur:
                    cur.execute(f"SELECT email FROM contacts WHERE tenant = 'lat' "
                                f"AND email IN ({marks})", emails)
                    rows = cur.fetchall()
                now = time.perf_counter()
                with lock:
                    for row in rows:
                        seen.setdefault(row["email"].split("@")[0], now)
            time.sleep(0.005)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    n = int(rate * seconds)
    interval = 1.0 / rate
    start = time.perf_counter()
    futures = []
    for i in range(n):
        target = start + i * interval
        delay = target - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        event_id = f"lat-{i}"
        body = json.dumps({
            "event_id": event_id, "type": "form_submitted", "tenant": "lat",
            "occurred_at": "2026-11-02T10:15:00+01:00", "source": "bench",
            "contact": {"email": f"{event_id}@example.com", "first_name": "Ana"},
            "form_id": "contact-us", "tags": ["Lead"],
        }).encode()
        with lock:
            sent[event_id] = time.perf_counter()
        futures.append(await js.publish_async("ficha.in.lat.form_submitted", body,
                                              headers={"Nats-Msg-Id": event_id}))
    await asyncio.gather(*futures)
    deadline = time.perf_counter() + 60
    while (len(seen) < n or len(entered) < n) and time.perf_counter() < deadline:
        await asyncio.sleep(0.05)
    done.set()
    watcher.join()
    await nc.drain()
    views.close()
    return (sorted((seen[e] - sent[e]) * 1000 for e in seen),
            sorted((entered[e] - sent[e]) * 1000 for e in entered))


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--backends", default="sqlite,postgres")
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    items = bodies(args.events)
    root = Path(tempfile.mkdtemp(prefix="ficha-bench-"))
    server = EmbeddedNatsServer(store_dir=root / "nats")
    server.start()
    rows: list[tuple[str, str, str]] = []
    cpu_rows: list[tuple[str, str, float]] = []
    try:
        raw_publish = await baseline_publish(server.url, items)
        rows.append(("JetStream async publish alone", "-", f"{raw_publish:,.0f} msgs/s"))
        for backend in args.backends.split(","):
            schema = f"bench_{uuid.uuid4().hex[:8]}"
            data_dir = root / backend
            raw_store = baseline_store(store_env(backend, data_dir, schema), args.events)
            rows.append(("event store batched save alone", backend, f"{raw_store:,.0f} events/s"))
            e2e, used = await end_to_end(server.url, backend, data_dir, schema, items,
                                         server.pid)
            rows.append(("ficha end to end (publish → contacts)", backend,
                         f"{e2e:,.0f} events/s ({e2e / raw_store:.2f} of store baseline)"))
            cpu_rows.extend((role, backend, seconds * 1e6 / len(items))
                            for role, seconds in sorted(used.items(), key=lambda r: -r[1]))
            shutil.rmtree(data_dir, ignore_errors=True)
            schema2 = f"{schema}l"
            lat, seg = await latency(server.url, backend, root / f"{backend}-lat", schema2,
                                     args.rate, args.seconds)
            rows.append((f"latency at {args.rate:.0f}/s, publish → visible", backend,
                         f"p50 {pct(lat, 50):.1f} ms  p95 {pct(lat, 95):.1f} ms  "
                         f"p99 {pct(lat, 99):.1f} ms  (n={len(lat)})"))
            rows.append((f"latency at {args.rate:.0f}/s, publish → segment_entered", backend,
                         f"p50 {pct(seg, 50):.1f} ms  p95 {pct(seg, 95):.1f} ms  "
                         f"p99 {pct(seg, 99):.1f} ms  (n={len(seg)})"))
            if backend == "postgres":
                drop_schemas(schema)
                drop_schemas(schema2)
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)
    print(f"\nmachine: {platform.platform()}, {os.cpu_count()} cores, Python "
          f"{platform.python_version()}; {args.events:,} demo events\n")
    width = max(len(r[0]) for r in rows)
    print(f"{'measure'.ljust(width)}  {'backend':8}  result")
    for name, backend, result in rows:
        print(f"{name.ljust(width)}  {backend:8}  {result}")
    if cpu_rows:
        # The machine's cores are the budget: on a saturated machine, throughput is the
        # cores divided by the CPU time one event costs, summed over every process.
        print(f"\nCPU time per event, end to end ({os.cpu_count()} cores):")
        width = max(len(r[0]) for r in cpu_rows)
        for backend in dict.fromkeys(b for _, b, _ in cpu_rows):
            part = [r for r in cpu_rows if r[1] == backend]
            total = sum(us for _, _, us in part)
            for role, _, us in part:
                print(f"{role.ljust(width)}  {backend:8}  {us:6.1f} µs  {100 * us / total:3.0f} %")
            print(f"{'all of them'.ljust(width)}  {backend:8}  {total:6.1f} µs")


if __name__ == "__main__":
    asyncio.run(main())
