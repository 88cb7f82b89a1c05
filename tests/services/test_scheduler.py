"""The scheduler on an injected clock: ticks when an instant has come, asks for RFM."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from projections.audience import AudienceProjection
from projections.audience_queries import rfm_stats
from projections.db import ViewDatabase
from projections.runner import ProjectionRunner
from services.catalog import SegmentCommands
from services.config import Settings
from services.domain.identity import ContactIdentity
from services.domain.stamps import parse_utc_iso
from services.ingest.cache import ContactCache
from services.ingest.folding import BatchFolder
from services.scheduler import Scheduler
from services.store.contact_store import ContactStore
from tests.factories import make_event


class ManualClock:
    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now


def test_the_scheduler_ticks_exactly_when_something_is_due(settings: Settings) -> None:
    store = ContactStore(settings)
    db = ViewDatabase(settings)
    runner = ProjectionRunner(store, db, AudienceProjection())
    runner.setup()
    folder = BatchFolder(store, ContactIdentity(settings.id_key), ContactCache(100), "p0")
    start = datetime.now(UTC)
    clock = ManualClock(start)
    scheduler = Scheduler(store, db, clock=clock)
    SegmentCommands(store).define("acme", "fresh", "Fresh", {
        "field": "last_interaction_at", "op": "within_last", "value": {"days": 7}})
    folder.fold_and_commit([make_event(
        "product_viewed", event_id="v1", email="ana@example.com",
        occurred_at=(start - timedelta(days=6)).isoformat(), product_id="x")], 1)
    runner.catch_up()
    due = scheduler.next_due()
    assert due is not None and abs(due - (start + timedelta(days=1))) < timedelta(seconds=1)
    clock.now = due - timedelta(seconds=1)
    assert scheduler.tick_if_due() is None  # not yet
    assert 1 <= scheduler.seconds_to_wait() <= scheduler.idle
    clock.now = due + timedelta(milliseconds=10)
    assert scheduler.tick_if_due() is not None
    runner.catch_up()
    with db.reading() as cur:
        cur.execute("SELECT exited_at, exit_cause FROM segment_history")
        (row,) = cur.fetchall()
    assert parse_utc_iso(row["exited_at"]) == due and row["exit_cause"] == "clock"
    db.close()
    store.close()


def test_first_buyers_get_rfm_quintiles_without_waiting_for_midnight(
    settings: Settings,
) -> None:
    store = ContactStore(settings)
    db = ViewDatabase(settings)
    runner = ProjectionRunner(store, db, AudienceProjection())
    runner.setup()
    folder = BatchFolder(store, ContactIdentity(settings.id_key), ContactCache(100), "p0")
    now = datetime.now(UTC)
    events = [
        make_event("purchase_completed", event_id=f"p{i}-{k}", email=f"b{i}@example.com",
                   occurred_at=(now - timedelta(days=10 * i + k)).isoformat(),
                   order_id=f"o{i}-{k}", total=f"{10 * (i + 1)}.00", currency="EUR")
        for i in range(10) for k in range(i % 4 + 1)
    ]
    folder.fold_and_commit(events, 1)
    runner.catch_up()
    assert rfm_stats(db, "acme")["cuts"] is None
    scheduler = Scheduler(store, db, clock=ManualClock(now + timedelta(seconds=5)))
    assert scheduler.rescore_wanted()
    scheduler.tick_if_due()
    runner.catch_up()
    assert not scheduler.rescore_wanted()
    stats = rfm_stats(db, "acme")
    assert stats["cuts"] is not None
    assert sum(stats["groups"].values()) == 10
    assert stats["groups"]["champions"] >= 1 and stats["groups"]["never_bought"] == 0
    with db.reading() as cur:
        cur.execute("SELECT email, rfm FROM audience_facts ORDER BY email")
        scores = {r["email"]: json.loads(r["rfm"]) for r in cur.fetchall()}
    # b0 bought most recently; b9 bought longest ago.
    assert scores["b0@example.com"]["r"] == 5 and scores["b9@example.com"]["r"] == 1
    db.close()
    store.close()
