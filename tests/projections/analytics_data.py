"""A small two-tenant history that puts rows in every analytics view, fed through the real
fold and both projections (no NATS), for the SQL view and access tests."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from contracts.events import InboundEvent
from projections.db import ViewDatabase
from projections.registry import all_projections
from projections.runner import ProjectionRunner
from services.catalog import ClockCommands, SegmentCommands
from services.config import Settings
from services.domain.identity import ContactIdentity
from services.ingest.cache import ContactCache
from services.ingest.folding import BatchFolder
from services.store.contact_store import ContactStore
from tests.factories import make_event

TENANTS = ("acme", "globex")
SEGMENTS = {
    "vip": {"field": "tags", "op": "has", "value": "vip"},
    "spain": {"field": "country", "op": "equals", "value": "ES"},
}


@dataclass
class Pipeline:
    """The event store, the read-model database and a runner per projection."""

    store: ContactStore
    db: ViewDatabase
    runners: list[ProjectionRunner]
    folder: BatchFolder
    position: int = 0
    started: datetime = field(default_factory=lambda: datetime.now(UTC))

    def ingest(self, events: list[InboundEvent]) -> None:
        self.position += 1
        self.folder.fold_and_commit(events, self.position)
        self.catch_up()

    def catch_up(self) -> None:
        for runner in self.runners:
            runner.catch_up()

    def define(self, tenant: str, segment_id: str, rule: dict[str, Any]) -> None:
        SegmentCommands(self.store).define(tenant, segment_id, segment_id, rule)
        self.catch_up()

    def tick(self, moment: datetime) -> None:
        ClockCommands(self.store).tick(moment)
        self.catch_up()

    def ago(self, days: float) -> str:
        return (self.started - timedelta(days=days)).isoformat()

    def close(self) -> None:
        self.db.close()
        self.store.close()


def pipeline(settings: Settings) -> Pipeline:
    store = ContactStore(settings)
    db = ViewDatabase(settings)
    runners = [ProjectionRunner(store, db, p, page_size=200) for p in all_projections()]
    for runner in runners:
        runner.setup()
    folder = BatchFolder(store, ContactIdentity(settings.id_key), ContactCache(10_000), "p0")
    return Pipeline(store, db, runners, folder)


def history(p: Pipeline, tenant: str) -> list[InboundEvent]:
    """Per tenant: a buyer who keeps interacting, and a lapsed contact whose address
    hard-bounced. Emails and event ids repeat across tenants on purpose."""
    ana, bea = f"ana.{tenant}@example.com", "bea@example.com"
    return [
        make_event("form_submitted", tenant=tenant, event_id="f1", email=ana,
                   occurred_at=p.ago(5), form_id="contact",
                   contact={"first_name": "Ana", "country": "ES", "language": "es-ES"},
                   properties={"shoe_size": 38, "plan": "pro", "vip_since": "2026-01-31",
                               "newsletter_ok": True},
                   tags=["VIP", "Lead"]),
        make_event("consent_changed", tenant=tenant, event_id="c1", email=ana,
                   occurred_at=p.ago(5), channel="email", granted=True),
        make_event("consent_changed", tenant=tenant, event_id="c2", email=ana,
                   occurred_at=p.ago(4), channel="email", granted=False),
        make_event("list_subscribed", tenant=tenant, event_id="l1", email=ana,
                   occurred_at=p.ago(5), list_id="newsletter"),
        make_event("purchase_completed", tenant=tenant, event_id="p1", email=ana,
                   occurred_at=p.ago(3), order_id="o1", total="120.50", currency="EUR"),
        make_event("email_opened", tenant=tenant, event_id="o1", email=ana,
                   occurred_at=p.ago(2), message_id="m1"),
        make_event("form_submitted", tenant=tenant, event_id="f2", email=bea,
                   occurred_at=p.ago(200), form_id="contact", contact={"country": "PT"}),
        make_event("list_subscribed", tenant=tenant, event_id="l2", email=bea,
                   occurred_at=p.ago(200), list_id="newsletter"),
        make_event("email_bounced", tenant=tenant, event_id="b1", email=bea,
                   occurred_at=p.ago(100), message_id="m0", bounce="hard"),
    ]


def seed(settings: Settings) -> Pipeline:
    """Both tenants' histories, two segments each (same ids), and ana leaving "vip"."""
    p = pipeline(settings)
    for tenant in TENANTS:
        for segment_id, rule in SEGMENTS.items():
            p.define(tenant, segment_id, rule)
    p.ingest([e for tenant in TENANTS for e in history(p, tenant)])
    p.ingest([make_event("contact_updated", tenant=tenant, event_id="t1",
                         email=f"ana.{tenant}@example.com", occurred_at=p.ago(1),
                         tags_removed=["vip"]) for tenant in TENANTS])
    return p
