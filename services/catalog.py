"""Commands on segment definitions and the clock: written to the event store as events.

These run wherever an operator acts (the CLI, later the API), against the same store the
ingest worker writes: definitions and ticks enter the same log as contact events, so the
audience projection sees every change in one order, live and on rebuild.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

from eventsourcing.application import AggregateNotFoundError
from eventsourcing.persistence import IntegrityError

from services.domain.api_keys import KeyInfo, TenantApiKeys, api_keys_id
from services.domain.clock import ClockDay, clock_day_id
from services.domain.rules import Node
from services.domain.segments import SegmentCatalog, SegmentDefinition, catalog_id
from services.domain.stamps import utc_iso
from services.domain.tenant import PropertyDefinition, TenantSettings, tenant_settings_id
from services.store.contact_store import ContactStore

T = TypeVar("T")
Clock = Callable[[], datetime]


def system_clock() -> datetime:
    return datetime.now(UTC)


class SegmentCommands:
    def __init__(self, store: ContactStore) -> None:
        self.store = store

    def catalog(self, tenant: str) -> SegmentCatalog | None:
        try:
            catalog: SegmentCatalog = self.store.repository.get(catalog_id(tenant))
        except AggregateNotFoundError:
            return None
        return catalog

    def check(self, tenant: str, segment_id: str, rule: Any) -> Node:
        """The rule parsed, if ``define`` would take it (a preview checks it so), changing
        nothing; else RuleError or InvalidSegment."""
        _, node = (self.catalog(tenant) or SegmentCatalog.open(tenant)).check(segment_id, "",
                                                                              rule)
        return node

    def define(self, tenant: str, segment_id: str, name: str, rule: Any) -> SegmentDefinition:
        """Create or edit a segment. Raises RuleError or SegmentError on bad input."""
        return decide(self.store, lambda: self.catalog(tenant) or SegmentCatalog.open(tenant),
                      lambda c: c.define(segment_id, name, rule))

    def delete(self, tenant: str, segment_id: str) -> SegmentDefinition:
        return decide(self.store, lambda: self.catalog(tenant) or SegmentCatalog.open(tenant),
                      lambda c: c.delete(segment_id))


class TenantCommands:
    """Settings and property definitions of a tenant."""

    def __init__(self, store: ContactStore) -> None:
        self.store = store

    def settings(self, tenant: str) -> TenantSettings:
        try:
            current: TenantSettings = self.store.repository.get(tenant_settings_id(tenant))
        except AggregateNotFoundError:
            return TenantSettings.open(tenant)
        return current

    def change(self, tenant: str, **values: Any) -> dict[str, Any]:
        return decide(self.store, lambda: self.settings(tenant), lambda t: t.change(**values))

    def define_property(self, tenant: str, name: str, type_: str,
                        options: list[str] | None = None, label: str = "") -> PropertyDefinition:
        return decide(self.store, lambda: self.settings(tenant),
                      lambda t: t.define_property(name, type_, options, label))

    def remove_property(self, tenant: str, name: str) -> None:
        decide(self.store, lambda: self.settings(tenant), lambda t: t.remove_property(name))


class ApiKeyCommands:
    """Issue and revoke a tenant's API keys (see ``services.domain.api_keys``)."""

    def __init__(self, store: ContactStore) -> None:
        self.store = store

    def keys(self, tenant: str) -> TenantApiKeys:
        try:
            current: TenantApiKeys = self.store.repository.get(api_keys_id(tenant))
        except AggregateNotFoundError:
            return TenantApiKeys.open(tenant)
        return current

    def issue(self, tenant: str, scopes: list[str], label: str = "") -> str:
        return decide(self.store, lambda: self.keys(tenant), lambda k: k.issue(scopes, label))

    def revoke(self, tenant: str, key_id: str) -> KeyInfo:
        return decide(self.store, lambda: self.keys(tenant), lambda k: k.revoke(key_id))


A = TypeVar("A")


def decide(store: ContactStore, load: Callable[[], A], command: Callable[[A], T]) -> T:
    """Load an aggregate, run a command on it, save it; again on a concurrent change.

    Optimistic concurrency: a concurrent change of the same aggregate makes the insert
    conflict, and the command is decided again on the new state.
    """
    for _ in range(5):
        aggregate = load()
        result = command(aggregate)
        try:
            store.save(aggregate)  # type: ignore[arg-type]
        except IntegrityError:
            continue
        return result
    raise RuntimeError("this tenant's definitions are being changed too often; try again")


class ClockCommands:
    """Appends clock ticks: ``tick(at)`` records that time has reached ``at``."""

    def __init__(self, store: ContactStore) -> None:
        self.store = store

    def tick(self, moment: datetime) -> str | None:
        """Record that time has reached ``moment``; None if a later tick exists already."""
        return self._on_day(moment, lambda clock, at: clock.tick(at))

    def request_rescore(self, moment: datetime) -> str | None:
        """Ask the audience projection to score RFM at ``moment`` for the tenants that
        asked for it (``projections.audience.rescore_requests``)."""
        def rescore(clock: ClockDay, at: str) -> bool:
            clock.request_rescore(at)
            return True

        return self._on_day(moment, rescore)

    def _on_day(self, moment: datetime, command: Callable[[ClockDay, str], bool]) -> str | None:
        at = utc_iso(moment)

        def load() -> ClockDay:
            try:
                clock: ClockDay = self.store.repository.get(clock_day_id(at[:10]))
            except AggregateNotFoundError:
                clock = ClockDay.start(at[:10])
            return clock

        return at if decide(self.store, load, lambda clock: command(clock, at)) else None
