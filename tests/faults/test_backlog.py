"""The publisher outruns the consumers: the backlog grows, then drains; memory stays flat;
nothing is lost and nothing is applied twice.

`ficha up` runs as a child process (SQLite, the test's nats-server); the test publishes a
demo history for four tenants as fast as JetStream takes it, far faster than ficha can
fold and project it, and samples the backlog (messages pending in the partitions'
consumers) and the resident memory of every process of `ficha up` until the backlog is
gone and the read models have caught up. FICHA_BACKLOG_EVENTS makes the run longer (the
default keeps CI short; 1,000,000 keeps the publisher ahead for minutes).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import nats
import pytest

from contracts.publisher import publish_many
from projections.db import ViewDatabase
from services.demo import generate_history
from services.store.contact_store import ContactStore
from services.streams import INGEST_STREAM, consumer_name
from tests.backends import make_settings

pytestmark = [pytest.mark.faults, pytest.mark.slow]

TENANTS = ("north", "south", "east", "west")
PARTITIONS = 8


def tree_rss_mb(root: int) -> float:
    """Resident memory of a process and all its descendants, in MB (from /proc)."""
    total, stack = 0, [root]
    while stack:
        pid = stack.pop()
        try:
            status = Path(f"/proc/{pid}/status").read_text()
            for task in Path(f"/proc/{pid}/task").iterdir():
                children = (task / "children").read_text().split()
                stack.extend(int(c) for c in children)
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    return total / 1024


async def backlog(js: Any) -> int:
    pending = 0
    for k in range(PARTITIONS):
        try:
            info = await js.consumer_info(INGEST_STREAM, consumer_name(k))
        except Exception:  # noqa: BLE001 - not created yet
            continue
        pending += info.num_pending + info.num_ack_pending
    return pending


async def test_a_backlog_grows_and_drains_with_flat_memory(
        tmp_path: Path, nats_server: Any, fresh_topology: Any) -> None:
    per_tenant = int(os.environ.get("FICHA_BACKLOG_EVENTS", "120000")) // len(TENANTS)
    settings = make_settings(tmp_path / "data", nats_url=nats_server.url,
                             FICHA_PARTITIONS=str(PARTITIONS))
    up = subprocess.Popen([sys.executable, "-m", "services", "up"],
                          env={**os.environ, **settings.to_env()},
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    nc = await nats.connect(nats_server.url)
    samples: list[tuple[float, int, float]] = []  # (seconds, backlog, RSS MB)
    try:
        js = nc.jetstream()
        deadline = time.monotonic() + 60
        while not await _streams_ready(js):
            assert up.poll() is None, up.stderr.read().decode() if up.stderr else ""
            assert time.monotonic() < deadline, "ficha up did not create its streams"
            await asyncio.sleep(0.2)
        histories = [generate_history(t, per_tenant, seed=n) for n, t in enumerate(TENANTS)]
        interleaved = (event for group in zip(*histories, strict=True) for event in group)
        started = time.monotonic()

        async def sample() -> None:
            samples.append((time.monotonic() - started, await backlog(js), tree_rss_mb(up.pid)))

        published = 0
        async for published in publish_many(js, interleaved, window=2000):
            if published % 20_000 < 2000:
                await sample()
        publish_seconds = time.monotonic() - started
        store = ContactStore(settings)
        views = ViewDatabase(settings)
        try:
            drain_deadline = time.monotonic() + 900
            while True:
                await sample()
                received = store.received_count()
                head = store.max_notification_id()
                with views.reading() as cur:
                    cur.execute("SELECT MIN(position) AS p FROM ficha_projection_tracking")
                    row = cur.fetchone()
                projected = int(row["p"] or 0) if row else 0
                if received == published and samples[-1][1] == 0 and projected >= head:
                    break
                assert up.poll() is None, "ficha up died while draining"
                assert time.monotonic() < drain_deadline, f"not drained: {samples[-3:]}"
                await asyncio.sleep(1)
            with views.reading() as cur:
                cur.execute("SELECT tenant, COUNT(*) AS n FROM contacts GROUP BY tenant")
                contacts = {r["tenant"]: int(r["n"]) for r in cur.fetchall()}
                cur.execute("SELECT SUM(events_count) AS n FROM contacts")
                folded = int(cur.fetchone()["n"])  # type: ignore[index]
        finally:
            views.close()
            store.close()
    finally:
        await nc.close()
        up.terminate()
        up.wait(60)

    expected = {t: len({e["contact"]["email"].strip().lower() for e in generate_history(
        t, per_tenant, seed=n)}) for n, t in enumerate(TENANTS)}
    peak_backlog = max(b for _, b, _ in samples)
    drained_at = samples[-1][0]
    rss = [m for _, _, m in samples]
    warm = rss[len(rss) // 4:]
    print(f"\npublished {published:,} events in {publish_seconds:.1f}s; peak backlog "
          f"{peak_backlog:,}; drained and projected after {drained_at:.1f}s; RSS of "
          f"ficha up: first {rss[0]:.0f} MB, after warm-up {min(warm):.0f}-{max(warm):.0f} MB, "
          f"last {rss[-1]:.0f} MB; {len(samples)} samples")
    assert published == per_tenant * len(TENANTS)
    assert received == published, "every accepted event stored once"
    assert folded == published, "every event folded exactly once"
    assert contacts == expected
    # The publisher really outran ficha: at some point a fifth of everything waited.
    assert peak_backlog > published // 5, samples
    # Memory does not follow the backlog: after warm-up (caches filled) it stays within
    # a band, and ends no higher than that band.
    assert max(warm) - min(warm) < 200, samples
    assert rss[-1] <= max(warm) + 1


async def _streams_ready(js: Any) -> bool:
    try:
        await js.stream_info(INGEST_STREAM)
    except Exception:  # noqa: BLE001
        return False
    return True
