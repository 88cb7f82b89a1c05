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
from typing import Any

from eventsourcing.application import AggregateNotFoundError

from contracts.events import InboundEvent
from services.domain.tenant import TenantSettings, tenant_settings_id
from services.store.contact_store import ContactStore

PROPERTY_TYPE_MISMATCH = "property_type_mismatch"
UNKNOWN_CONTACT_TYPE = "unknown_contact_type"
UNKNOWN_LEAD_STATUS = "unknown_lead_status"


class TenantChecks:
    def __init__(self, store: ContactStore, ttl: float = 2.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.ttl = ttl
        self.clock = clock
        self._cache: dict[str, tuple[float, TenantSettings | None]] = {}

    def refresh(self, tenants: Iterable[str]) -> None:
        """Load the definitions of these tenants if not read in the last ``ttl`` seconds."""
        now = self.clock()
        for tenant in tenants:
            cached = self._cache.get(tenant)
            if cached is not None and now - cached[0] < self.ttl:
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
        properties: dict[str, Any] = getattr(event, "properties", None) or {}
        for name, value in sorted(properties.items()):
            definition = settings.properties.get(name)
            if definition is None:
                continue
            wrong = definition.check(_plain(value))
            if wrong is not None:
                return PROPERTY_TYPE_MISMATCH, f"{wrong}; fix the value or the definition"
        for field, code, key in (("contact_type", UNKNOWN_CONTACT_TYPE, "contact_types"),
                                 ("lead_status", UNKNOWN_LEAD_STATUS, "lead_statuses")):
            value = getattr(event, field, None)
            allowed = settings.values.get(key) or []
            if value is not None and allowed and value not in allowed:
                return code, (f"{field} {value!r} is not one of tenant {event.tenant}'s "
                              f"{key.replace('_', ' ')}: {', '.join(allowed)}")
        return None


def _plain(value: Any) -> Any:
    import msgspec

    return msgspec.to_builtins(value)
