"""Who is calling: API keys checked against the tenant's key aggregate, kept for a moment.

A tenant's keys are read from the event store and kept for ``ttl`` seconds, so that a
revocation takes effect within that time on every API process without a restart.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from services.catalog import ApiKeyCommands
from services.domain.api_keys import TenantApiKeys, parse_key
from services.store.contact_store import ContactStore


@dataclass(frozen=True)
class Principal:
    """An authenticated caller: the tenant it belongs to, its key and what it may do."""

    tenant: str
    key_id: str
    scopes: tuple[str, ...]

    def may(self, scope: str) -> bool:
        return scope in self.scopes or "admin" in self.scopes


class KeyRing:
    def __init__(self, store: ContactStore, ttl: float = 2.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.commands = ApiKeyCommands(store)
        self.ttl = ttl
        self.clock = clock
        self._cache: dict[str, tuple[float, TenantApiKeys]] = {}
        self._lock = threading.Lock()

    def _keys(self, tenant: str) -> TenantApiKeys:
        now = self.clock()
        with self._lock:
            cached = self._cache.get(tenant)
        if cached is not None and now - cached[0] < self.ttl:
            return cached[1]
        keys = self.commands.keys(tenant)
        with self._lock:
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[tenant] = (now, keys)
        return keys

    def authenticate(self, presented_text: str) -> Principal | None:
        """The caller a key stands for, or None if it is malformed, unknown or revoked."""
        presented = parse_key(presented_text)
        if presented is None:
            return None
        key = self._keys(presented.tenant).check(presented)
        if key is None:
            return None
        return Principal(presented.tenant, key.key_id, key.scopes)
