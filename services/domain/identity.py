"""Contact identity: tenant + normalised email, turned into an aggregate id by a keyed hash.

The id must not reveal the email (ids appear in logs, URLs and analysts' queries), and it
must be stable across processes and machines that share the same key. HMAC-SHA256 over
``tenant NUL email`` with a secret key gives both; the first 16 bytes make a UUID.
"""

from __future__ import annotations

import hashlib
import hmac
from uuid import UUID


def normalise_email(raw: str) -> str:
    """The contract's rule: trim, then lowercase the whole address."""
    return raw.strip().lower()


class ContactIdentity:
    """Derives contact ids from (tenant, email) with a secret key."""

    def __init__(self, key: bytes) -> None:
        if len(key) < 16:
            raise ValueError("the contact id key must be at least 16 bytes long")
        self._key = key
        self._known: dict[tuple[str, str], UUID] = {}

    def key_check(self) -> str:
        """A value that tells this key from another without revealing it (HMAC of a fixed
        text): what the event store records to refuse a process given another key."""
        return hmac.new(self._key, b"ficha id key check", hashlib.sha256).hexdigest()[:16]

    def contact_id(self, tenant: str, email: str) -> UUID:
        key = (tenant, email)
        known = self._known.get(key)
        if known is not None:
            return known
        message = f"{tenant}\x00{normalise_email(email)}".encode()
        digest = hmac.new(self._key, message, hashlib.sha256).digest()
        contact_id = UUID(bytes=digest[:16])
        if len(self._known) >= 200_000:
            self._known.clear()
        self._known[key] = contact_id
        return contact_id
