"""Rebuild speed: replaying the event log into each projection, against reading it alone.

Fills the event store with a demo history (folded by the real ingest path, without the
bus), defines a few segments, then measures in the same run:

* raw baseline: reading the notification log in pages and decoding every domain event
  (what any projection has to do at least);
* each projection rebuilt from the start (``ProjectionRunner.rebuild``), alone;
* all of them: their times added (one after the other), and side by side, a process
  each, as ``ficha projections rebuild`` runs them (process start-up included).

Usage:  python -m bench.rebuild --events 100000 [--backend postgres|sqlite] [--segments 30]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from bench.common import scratch_settings
from projections.db import ViewDatabase
from projections.registry import all_projections
from projections.runner import ProjectionRunner
from services.catalog import SegmentCommands
from services.collector import tune_for_throughput
from services.config import Settings
from services.demo import generate_history
from services.domain.identity import ContactIdentity
from services.ingest.cache import ContactCache
from services.ingest.folding import BatchFolder
from services.projection_jobs import run_side_by_side
from services.store.contact_store import ContactStore
from tests.factories import decode_dict

SEGMENTS: dict[str, dict[str, Any]] = {
    "es-vip": {"all": [{"field": "language", "op": "equals", "value": "es"},
                       {"field": "tags", "op": "has", "value": "vip"}]},
    "active-30d": {"field": "last_interaction_at", "op": "within_last", "value": {"days": 30}},
    "buyers": {"count": "purchases", "op": "gte", "value": 1},
}


def more_segments(count: int) -> dict[str, dict[str, Any]]:
    """``SEGMENTS`` and as many more as make ``count``: countries, languages with consent,
    tags, booking counts, sums spent and recent interactions, in turn (a tenant with many
    segments: each event should cost the segments it can change, not all of them)."""
    countries = ["ES", "PT", "FR", "DE", "IT", "GB", "US", "MX", "AR", "BR"]
    languages = ["es", "pt", "fr", "de", "en", "it"]
    kinds: list[Callable[[int], dict[str, Any]]] = [
        lambda i: {"field": "country", "op": "equals", "value": countries[i % 10]},
        lambda i: {"all": [{"field": "language", "op": "equals", "value": languages[i % 6]},
                           {"field": "consent.email", "op": "equals", "value": True}]},
        lambda i: {"field": "tags", "op": "has",
                   "value": ["vip", "lead", "newsletter", "returning"][i % 4]},
        lambda i: {"count": "bookings", "op": "gte", "value": 1 + i % 3},
        lambda i: {"sum": "spent", "currency": "EUR", "op": "gt", "value": 50 * (1 + i % 4)},
        lambda i: {"field": "last_interaction_at", "op": "within_last",
                   "value": {"days": 15 * (1 + i % 6)}},
    ]
    out = dict(SEGMENTS)
    for i in range(max(0, count - len(SEGMENTS))):
        out[f"extra-{i}"] = kinds[i % len(kinds)](i)
    return out


def read_and_decode(store: ContactStore, page: int = 2000) -> tuple[int, float]:
    started = time.perf_counter()
    position, count = 0, 0
    while True:
        notifications = store.notifications_after(position, page)
        if not notifications:
            break
        store.decode(notifications)  # as the projection runner does: keys looked up per page
        count += len(notifications)
        position = notifications[-1].id
    return count, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--backend", default="postgres", choices=["postgres", "sqlite"])
    parser.add_argument("--segments", type=int, default=len(SEGMENTS),
                        help=f"segments defined (the first {len(SEGMENTS)} fixed, more varied)")
    args = parser.parse_args()
    tune_for_throughput()  # as every `ficha` command does (`ficha projections rebuild`)
    with scratch_settings(args.backend, "rb") as settings:
        run(args, settings)


def run(args: argparse.Namespace, settings: Settings) -> None:
    store = ContactStore(settings)
    db = ViewDatabase(settings)
    try:
        for sid, rule in more_segments(args.segments).items():
            SegmentCommands(store).define("bench", sid, sid, rule)
        start = datetime.now(UTC) - timedelta(days=330)
        folder = BatchFolder(store, ContactIdentity(settings.id_key), ContactCache(200_000), "p0")
        batch: list = []
        position = 0
        for raw in generate_history("bench", args.events, seed=3, start=start):
            batch.append(decode_dict(raw))
            if len(batch) == 500:
                position += 1
                folder.fold_and_commit(batch, position)
                batch = []
        if batch:
            folder.fold_and_commit(batch, position + 1)
        count, seconds = read_and_decode(store)
        baseline = count / seconds
        print(f"\n{args.backend}: {args.events:,} inbound events, {count:,} stored events, "
              f"{args.segments} segments\n")
        print(f"{'measure':44} {'events/s':>10} {'vs baseline':>12}")
        print(f"{'read + decode the log alone (raw baseline)':44} {baseline:10,.0f}")
        one_by_one = 0.0
        for projection in all_projections():
            runner = ProjectionRunner(store, db, projection, page_size=2000)
            runner.setup()
            started = time.perf_counter()
            runner.rebuild()
            took = time.perf_counter() - started
            one_by_one += took
            rate = runner.stats.applied / took
            print(f"{'rebuild ' + projection.name:44} {rate:10,.0f} {rate / baseline:12.2f}")
        # Every projection: the log once through each, in turn or side by side (as
        # `ficha projections rebuild` runs them, a process each).
        rate = count / one_by_one
        print(f"{'rebuild all, one after the other':44} {rate:10,.0f} {rate / baseline:12.2f}")
        names = [p.name for p in all_projections()]
        started = time.perf_counter()
        ends = run_side_by_side("rebuild", settings.to_env(), names, None, lambda *_: None)
        took = time.perf_counter() - started
        assert all(end.ok for end in ends), ends
        rate = count / took
        print(f"{'rebuild all, side by side':44} {rate:10,.0f} {rate / baseline:12.2f}")
    finally:
        db.close()
        store.close()


if __name__ == "__main__":
    main()
