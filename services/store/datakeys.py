"""Per-contact data keys: what makes a contact's personal events erasable.

Every contact has at most one live data key (AES-256-GCM), stored in the event store's
own database (``ficha_contact_keys``), created in the same transaction as the contact's
first personal event and deleted in the same transaction as its erasure. A sealed event
state is::

    0x01 | key id (8 bytes) | recorded at (8 bytes) | nonce (12 bytes) | ciphertext + tag

with the event's originator id, version, topic and the header as associated data, so a
sealed state cannot be moved to another event or contact. "Recorded at" is when ficha
recorded the event (microseconds since 1970, UTC): it stays readable after an erasure so
that read models replay the log's clock exactly as before (it says when, not what). The
first byte tells a sealed state from a plain one (msgspec JSON starts with ``{``): events
that hold no personal data stay plain.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cached_property
from uuid import UUID

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

SEALED = 1
KEY_ID_SIZE = 8
MOMENT_SIZE = 8
NONCE_SIZE = 12
HEADER_SIZE = 1 + KEY_ID_SIZE + MOMENT_SIZE + NONCE_SIZE
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class WrongKey(Exception):
    """A sealed state did not open with the key given for it: corrupt data or a bug."""


@dataclass(frozen=True)
class DataKey:
    key_id: bytes
    secret: bytes

    @classmethod
    def new(cls) -> DataKey:
        return cls(os.urandom(KEY_ID_SIZE), AESGCM.generate_key(bit_length=256))

    @cached_property
    def cipher(self) -> AESGCM:
        """Made once per key: the writer's cache reuses it batch after batch."""
        return AESGCM(self.secret)

    def __repr__(self) -> str:  # never print the secret
        return f"DataKey({self.key_id.hex()})"


def associated_data(originator_id: UUID, originator_version: int, topic: str) -> bytes:
    return originator_id.bytes + originator_version.to_bytes(8, "big") + topic.encode()


def is_sealed(state: bytes) -> bool:
    return len(state) > HEADER_SIZE and state[0] == SEALED


def sealed_key_id(state: bytes) -> bytes:
    return bytes(state[1 : 1 + KEY_ID_SIZE])


def sealed_moment(state: bytes) -> datetime:
    """When the sealed event was recorded (readable without its key)."""
    start = 1 + KEY_ID_SIZE
    micros = int.from_bytes(state[start : start + MOMENT_SIZE], "big", signed=True)
    return EPOCH + timedelta(microseconds=micros)


class _Nonces(threading.local):
    """Random 96-bit nonces drawn from the OS in blocks: one system call per 256 seals."""

    def __init__(self) -> None:
        self.block = b""
        self.at = 0

    def next(self) -> bytes:
        if self.at >= len(self.block):
            self.block, self.at = os.urandom(NONCE_SIZE * 256), 0
        self.at += NONCE_SIZE
        return self.block[self.at - NONCE_SIZE : self.at]


_nonces = _Nonces()


def seal(key: DataKey, plain: bytes, aad: bytes, moment: datetime | None = None) -> bytes:
    if moment is None:
        micros = 0
    else:
        since = moment - EPOCH
        micros = (since.days * 86_400 + since.seconds) * 1_000_000 + since.microseconds
    header = bytes([SEALED]) + key.key_id + micros.to_bytes(MOMENT_SIZE, "big", signed=True)
    nonce = _nonces.next()
    return header + nonce + key.cipher.encrypt(nonce, plain, aad + header)


def unseal(key: DataKey, state: bytes, aad: bytes) -> bytes:
    if sealed_key_id(state) != key.key_id:
        raise WrongKey(f"sealed with key {sealed_key_id(state).hex()}, not {key.key_id.hex()}")
    header = state[: 1 + KEY_ID_SIZE + MOMENT_SIZE]
    nonce = state[len(header) : HEADER_SIZE]
    try:
        return key.cipher.decrypt(nonce, state[HEADER_SIZE:], aad + header)
    except InvalidTag as error:
        raise WrongKey("the sealed state does not open with its key (tampered or corrupt)") \
            from error


class KeyCache:
    """The live keys of hot contacts, kept by the one owner of their ingest partition.

    Only the writer may keep keys between batches: it is the one that deletes them, so its
    cache is never stale. Readers look keys up for each page and forget them.
    """

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self._items: OrderedDict[UUID, DataKey] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, contact_id: UUID) -> DataKey | None:
        key = self._items.get(contact_id)
        if key is not None:
            self._items.move_to_end(contact_id)
        return key

    def put(self, contact_id: UUID, key: DataKey) -> None:
        self._items[contact_id] = key
        self._items.move_to_end(contact_id)
        while len(self._items) > self.maxsize:
            self._items.popitem(last=False)

    def evict(self, contact_ids: Iterable[UUID]) -> None:
        for contact_id in contact_ids:
            self._items.pop(contact_id, None)

    def clear(self) -> None:
        self._items.clear()
