"""Checks that depend on the tenant: defined property types, contact types, lead statuses.

The decoder checks the contract; these check an event against what its tenant defined
(``services.domain.tenant``). Definitions are read from the event store and kept for a
couple of seconds, so a new definition applies to events ingested a moment later.
An event that fails is dead-lettered whole, with a code and a sentence, and can be
re-driven once the producer or the definition is fixed.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from eventsourcing.application import AggregateNotFoundError

from contracts.events import InboundEvent
from services.domain.tenant import TenantSettings, tenant_settings_id
from services.store.contact_store import ContactStore


class TenantChecks:
    def __init__(self, store: ContactStore, ttl: float = 2.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.ttl = ttl
        self.clock = clock
        self._cache: dict[str, tuple[float, TenantSettings | None]] = {}

    def _is_stale(self, tenant: str, now: float) -> bool:
        cached = self._cache.get(tenant)
        return cached is None or now - cached[0] >= self.ttl

    def stale(self, tenants: Iterable[str]) -> bool:
        """Whether any of these tenants' definitions is older than ``ttl`` (or unread)."""
        now = self.clock()
        return any(self._is_stale(tenant, now) for tenant in tenants)

    def refresh(self, tenants: Iterable[str]) -> None:
        """Load the definitions of these tenants if not read in the last ``ttl`` seconds."""
        now = self.clock()
        for tenant in tenants:
            if not self._is_stale(tenant, now):
                continue
            try:
                settings: TenantSettings | None = self.store.repository.get(
                    tenant_settings_id(tenant))
            except AggregateNotFoundError:
                settings = None
            self._cache[tenant] = (now, settings)
            if len(self._cache) > 100_000:
                self._cache.clear()

    def problem(self, event: InboundEvent) -> tuple[str, str] | None:
        """(code, sentence) if the event breaks its tenant's definitions, else None."""
        cached = self._cache.get(event.tenant)
        settings = None if cached is None else cached[1]
        if settings is None:
            return None
        return settings.event_problem(event)
