"""The publisher outruns the consumers: the backlog grows, then drains; memory stays flat;
nothing is lost and nothing is applied twice.

`ficha up` runs as a child process (SQLite, the test's nats-server); the test publishes a
demo history for four tenants: first a burst as fast as JetStream takes it, which shows how
fast ficha drains; then the events of FICHA_BACKLOG_SECONDS (default 120) at one and a
half times that rate, faster whenever ficha keeps up, so that the publisher stays ahead for
minutes. It samples the backlog (messages
pending in the partitions' consumers) and the resident memory of every process of
`ficha up` until the backlog is gone and the read models have caught up.
"""

from __future__ import annotations

import asyncio
import itertools
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
from services.natsserver import EmbeddedNatsServer
from services.store.contact_store import ContactStore
from services.streams import INGEST_STREAM, consumer_name
from tests.backends import make_settings

pytestmark = [pytest.mark.faults, pytest.mark.slow]

TENANTS = ("north", "south", "east", "west")
BURST_SEEDS = (10, 11, 12, 13)
MAIN_SEEDS = (0, 1, 2, 3)
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
        tmp_path: Path) -> None:
    # A server of its own: its streams grow to hundreds of MB, which the shared test
    # server would still be deleting when the next tests create their streams.
    nats_server = EmbeddedNatsServer(store_dir=tmp_path / "nats")
    nats_server.start()
    try:
        await _run(tmp_path, nats_server)
    finally:
        nats_server.stop()


async def _run(tmp_path: Path, nats_server: EmbeddedNatsServer) -> None:
    seconds = float(os.environ.get("FICHA_BACKLOG_SECONDS", "120"))
    burst = 24_000
    # Small batches slow ficha's ingest down (a commit per 50 messages), so that this one
    # test process, which builds every event as it publishes it, can outrun it on the
    # two cores it shares with it: the test is about a backlog, not about speed.
    settings = make_settings(tmp_path / "data", nats_url=nats_server.url,
                             FICHA_PARTITIONS=str(PARTITIONS), FICHA_BATCH_SIZE="50")
    # Its log goes to a file: a pipe nobody reads would stop it once 64 KiB were written.
    log_path = tmp_path / "up.log"
    log = log_path.open("wb")
    up = subprocess.Popen([sys.executable, "-m", "services", "up"],
                          env={**os.environ, **settings.to_env()},
                          stdout=subprocess.DEVNULL, stderr=log)
    log.close()  # (the child has its own copy)
    nc = await nats.connect(nats_server.url)
    samples: list[tuple[float, int, float]] = []  # (seconds, backlog, RSS MB)
    try:
        js = nc.jetstream()
        deadline = time.monotonic() + 60
        while not await _streams_ready(js):
            assert up.poll() is None, log_path.read_text(errors="replace")[-3000:]
            assert time.monotonic() < deadline, "ficha up did not create its streams"
            await asyncio.sleep(0.2)
        store = ContactStore(settings)
        views = ViewDatabase(settings)
        started = time.monotonic()

        async def sample() -> None:
            samples.append((time.monotonic() - started, await backlog(js), tree_rss_mb(up.pid)))

        # The burst, then how fast ficha drains it (events stored per second).
        async for _ in publish_many(js, history(burst // len(TENANTS), BURST_SEEDS),
                                    window=2000):
            pass
        before, at = store.received_count(), time.monotonic()
        await asyncio.sleep(5)
        drain_rate = (store.received_count() - before) / (time.monotonic() - at)
        assert drain_rate > 0, "ficha applied nothing in five seconds"
        rate = 1.5 * drain_rate
        per_tenant = int(rate * seconds) // len(TENANTS)
        published = burst
        events = history(per_tenant, MAIN_SEEDS)
        # Five seconds at a time; whenever ficha kept up (the backlog did not grow), the
        # next five go faster: the drain rate measured after the burst can be too low (the
        # burst may be gone before the five seconds are), and the test is about a backlog.
        while chunk := list(itertools.islice(events, int(rate * 5))):
            async for _ in publish_many(js, chunk, rate=rate, window=2000):
                pass
            published += len(chunk)
            await sample()
            if len(samples) > 1 and samples[-1][1] <= samples[-2][1]:
                rate *= 1.5
        while_publishing = len(samples)
        publish_seconds = time.monotonic() - started
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

    expected = {t: len(emails(t, burst // len(TENANTS), BURST_SEEDS[n])
                       | emails(t, per_tenant, MAIN_SEEDS[n])) for n, t in enumerate(TENANTS)}
    print(f"\nficha drained the {burst:,}-event burst at {drain_rate:,.0f} events/s; then "
          f"{1.5 * drain_rate:,.0f}/s and faster (finally {rate:,.0f}/s) were published")
    peak_backlog = max(b for _, b, _ in samples)
    drained_at = samples[-1][0]
    rss = [m for _, _, m in samples]
    warm = rss[len(rss) // 4:]
    print(f"\npublished {published:,} events in {publish_seconds:.1f}s; peak backlog "
          f"{peak_backlog:,}; drained and projected after {drained_at:.1f}s; RSS of "
          f"ficha up: first {rss[0]:.0f} MB, after warm-up {min(warm):.0f}-{max(warm):.0f} MB, "
          f"last {rss[-1]:.0f} MB; {len(samples)} samples")
    assert published == burst + per_tenant * len(TENANTS)
    assert received == published, "every accepted event stored once"
    assert folded == published, "every event folded exactly once"
    assert contacts == expected
    # The publisher stayed ahead the whole time it published: the backlog never emptied,
    # and it was larger at the end than at the start.
    publishing = [b for _, b, _ in samples[:while_publishing]]
    assert all(b > 0 for b in publishing) and publishing[-1] > publishing[0], samples
    # Memory does not follow the backlog: after warm-up (caches filled) it stays within
    # a band, and ends no higher than that band.
    assert max(warm) - min(warm) < 200, samples
    assert rss[-1] <= max(warm) + 1


def history(per_tenant: int, seeds: tuple[int, ...]) -> Any:
    """The four tenants' demo histories, interleaved (event ids differ by seed)."""
    histories = [generate_history(t, per_tenant, seed=seeds[n])
                 for n, t in enumerate(TENANTS)]
    for group in zip(*histories, strict=True):
        yield from group


def emails(tenant: str, per_tenant: int, seed: int) -> set[str]:
    return {e["contact"]["email"].strip().lower()
            for e in generate_history(tenant, per_tenant, seed=seed)}


async def _streams_ready(js: Any) -> bool:
    try:
        await js.stream_info(INGEST_STREAM)
    except Exception:  # noqa: BLE001
        return False
    return True
