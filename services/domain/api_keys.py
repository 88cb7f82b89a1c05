"""A tenant's API keys: one aggregate per tenant, issuing and revoking as events.

A key reads ``ficha.<tenant>.<key_id>.<secret>``. The tenant and the key id are not
secret (they say whose key it is, in logs and in ``ficha keys list``); the secret is 32
random bytes, and only its SHA-256 is stored. A slow password hash would add nothing:
the secret is random, not chosen by a person, so it cannot be guessed from a word list.

Scopes: ``read`` (every GET route) and ``admin`` (also changes: segments, property
definitions, imports, erasure). ``admin`` includes ``read``.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import datetime
from uuid import NAMESPACE_URL, UUID, uuid5

from eventsourcing.domain import Aggregate

from services.domain.text import NUL_PROBLEM, has_nul

SCOPES = ("read", "admin")
PREFIX = "ficha"
_KEY = re.compile(r"^ficha\.([a-z0-9][a-z0-9_-]{0,62})\.([0-9a-f]{12})\.([A-Za-z0-9_-]{43})$")
_LABEL_MAX = 200


class ApiKeyError(ValueError):
    """A key command that cannot be carried out, in words to act on."""


def api_keys_id(tenant: str) -> UUID:
    return uuid5(NAMESPACE_URL, f"ficha:api-keys:{tenant}")


def secret_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass(frozen=True)
class PresentedKey:
    """A key as a caller presented it, split into its parts."""

    tenant: str
    key_id: str
    secret: str


def parse_key(text: str) -> PresentedKey | None:
    """The parts of a well-formed key, or None."""
    match = _KEY.match(text.strip())
    if match is None:
        return None
    return PresentedKey(match[1], match[2], match[3])


@dataclass(frozen=True)
class KeyInfo:
    key_id: str
    label: str
    scopes: tuple[str, ...]
    issued_at: datetime
    revoked_at: datetime | None
    secret_sha256: str

    @property
    def active(self) -> bool:
        return self.revoked_at is None

    def grants(self, scope: str) -> bool:
        return self.active and (scope in self.scopes or "admin" in self.scopes)


class TenantApiKeys(Aggregate):
    class Opened(Aggregate.Created):
        tenant: str

    class Issued(Aggregate.Event):
        key_id: str
        label: str
        scopes: list[str]
        secret_sha256: str

        def apply(self, aggregate: TenantApiKeys) -> None:
            aggregate.keys[self.key_id] = KeyInfo(
                self.key_id, self.label, tuple(self.scopes), self.timestamp, None,
                self.secret_sha256,
            )

    class Revoked(Aggregate.Event):
        key_id: str

        def apply(self, aggregate: TenantApiKeys) -> None:
            key = aggregate.keys[self.key_id]
            aggregate.keys[self.key_id] = KeyInfo(
                key.key_id, key.label, key.scopes, key.issued_at, self.timestamp,
                key.secret_sha256,
            )

    def __init__(self, tenant: str) -> None:
        self.tenant = tenant
        self.keys: dict[str, KeyInfo] = {}

    @classmethod
    def open(cls, tenant: str) -> TenantApiKeys:
        return cls._create(cls.Opened, id=api_keys_id(tenant), tenant=tenant)

    # ------------------------------------------------------------------ commands

    def issue(self, scopes: list[str], label: str = "") -> str:
        """Issue a key; returns the whole key, which is shown once and never stored."""
        chosen = sorted(set(scopes))
        if not chosen or not set(chosen) <= set(SCOPES):
            raise ApiKeyError(f"scopes must be some of {', '.join(SCOPES)}")
        if len(label) > _LABEL_MAX:
            raise ApiKeyError(f"a key's label is at most {_LABEL_MAX} characters")
        if has_nul(label):
            raise ApiKeyError(f"a key's label {NUL_PROBLEM}")
        key_id = secrets.token_hex(6)
        while key_id in self.keys:
            key_id = secrets.token_hex(6)
        secret = secrets.token_urlsafe(32)
        self.trigger_event(self.Issued, key_id=key_id, label=label.strip(), scopes=chosen,
                           secret_sha256=secret_hash(secret))
        return f"{PREFIX}.{self.tenant}.{key_id}.{secret}"

    def revoke(self, key_id: str) -> KeyInfo:
        key = self.keys.get(key_id)
        if key is None:
            raise ApiKeyError(f"tenant {self.tenant} has no key {key_id!r}; "
                              "`ficha keys list` shows its keys")
        if key.active:
            self.trigger_event(self.Revoked, key_id=key_id)
        return self.keys[key_id]

    # ------------------------------------------------------------------ queries

    def check(self, presented: PresentedKey) -> KeyInfo | None:
        """The key's record if ``presented`` is one of this tenant's active keys."""
        key = self.keys.get(presented.key_id)
        if key is None or not key.active or presented.tenant != self.tenant:
            return None
        if not hmac.compare_digest(key.secret_sha256, secret_hash(presented.secret)):
            return None
        return key
