"""Finding and deleting an erased person's messages in ficha's own streams.

The raw events in FICHA_IN and the dead letters in FICHA_DLQ carry the email; the
segment events in FICHA_OUT carry the email and the contact id. After an erasure the
email is gone from ficha, so messages are matched by the keyed hash instead: every
email-like string in a message's body is turned into a contact id under the erased
contact's tenant (``ContactIdentity``), and the message is the person's when one of them
is the erased contact's id. FICHA_OUT bodies name the contact id itself.

What is deleted (each with JetStream's message delete, which overwrites the message in
the stream's files unless told not to):

* FICHA_IN, on the tenant's partition subjects and the unrouted ones: the person's
  messages stamped at or before the erasure (a later one is a fresh start, kept);
  messages without a readable stamp too;
* FICHA_DLQ, whole: the person's dead letters, on the same rule;
* FICHA_OUT, on the tenant's subjects: the contact's events that happened at or before
  the erasure, except ``contact_erased`` itself (it holds no personal data).

One scan of each stream serves every erasure of a batch. The ingest stream's ``max_age``
(``FICHA_INGEST_MAX_AGE``) is the backstop for anything a scan cannot tell.
"""

from __future__ import annotations

import contextlib
import re
import uuid
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

import nats.errors
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from contracts.decode import read_json
from services.domain.identity import ContactIdentity, normalise_email
from services.domain.stamps import Stamp, utc_iso
from services.streams import (
    DLQ_STREAM,
    DLQ_SUBJECT,
    INGEST_STREAM,
    INGEST_SUBJECT,
    OUT_STREAM,
    PARTITION_PREFIX,
)

# The characters the contract allows before and after the @ (contracts.emails), any case.
EMAIL_LIKE = re.compile(rb"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.\-]+@[A-Za-z0-9.\-]+[A-Za-z0-9]")


@dataclass(frozen=True)
class ErasedContact:
    """One erasure to purge: whose, and up to which stamp and instant."""

    tenant: str
    contact_id: UUID
    stamp: Stamp  # (requested_at, request event_id): inbound facts at or before it go
    erased_at: str  # when ficha erased the keys: outbound events at or before it go


@dataclass
class Purged:
    """Stream sequences deleted for one erasure, per stream."""

    sequences: dict[str, list[int]] = field(default_factory=dict)

    def add(self, stream: str, seq: int) -> None:
        self.sequences.setdefault(stream, []).append(seq)

    def to_json(self) -> dict[str, Any]:
        return {name: sorted(seqs) for name, seqs in sorted(self.sequences.items())}


def contact_ids_in(body: bytes, tenant: str, identity: ContactIdentity) -> set[UUID]:
    """The contact ids of every email-like string in ``body``, under ``tenant``."""
    found = set()
    for match in EMAIL_LIKE.finditer(body):
        email = normalise_email(match.group().decode("ascii", "replace"))
        found.add(identity.contact_id(tenant, email))
    return found


def inbound_stamp(body: bytes) -> Stamp | None:
    """(occurred_at in UTC, event_id) of an inbound body, if it has readable ones."""
    from datetime import datetime

    try:
        data = read_json(body)
        moment = datetime.fromisoformat(data["occurred_at"])
        event_id = data["event_id"]
    except (ValueError, KeyError, TypeError):
        return None
    if not isinstance(event_id, str) or moment.tzinfo is None:
        return None
    return (utc_iso(moment), event_id)


def whose_inbound(body: bytes, erased: Sequence[ErasedContact],
                  identity: ContactIdentity) -> ErasedContact | None:
    """The erasure this inbound body (raw event or dead letter) falls under, if any."""
    for target in erased:
        if target.contact_id in contact_ids_in(body, target.tenant, identity):
            stamp = inbound_stamp(body)
            if stamp is None or stamp <= target.stamp:
                return target
    return None


def whose_outbound(body: bytes, erased: Sequence[ErasedContact]) -> ErasedContact | None:
    try:
        data = read_json(body)
        kind = data.get("type")
        contact_id = (data.get("contact") or {}).get("contact_id") or data.get("contact_id")
        occurred_at = data.get("occurred_at") or ""
    except (ValueError, AttributeError):
        return None
    if kind == "contact_erased":
        return None
    for target in erased:
        if contact_id == target.contact_id.hex and occurred_at <= target.erased_at:
            return target
    return None


async def scan(js: JetStreamContext, stream: str, subjects: Iterable[str],
               batch: int = 500) -> AsyncIterator[Any]:
    """Every message of ``stream`` on ``subjects`` stored before the scan began."""
    info = await js.stream_info(stream)
    last = info.state.last_seq
    if info.state.messages == 0:
        return
    name = f"ficha-purge-{uuid.uuid4().hex[:12]}"
    await js.add_consumer(stream, ConsumerConfig(
        name=name, filter_subjects=sorted(set(subjects)), ack_policy=AckPolicy.NONE,
        deliver_policy=DeliverPolicy.ALL, inactive_threshold=60.0, max_waiting=1,
    ))
    sub = await js.pull_subscribe_bind(durable=name, stream=stream)
    try:
        while True:
            try:
                msgs = await sub.fetch(batch, timeout=1.0)
            except (TimeoutError, nats.errors.TimeoutError):
                return
            for msg in msgs:
                if msg.metadata.sequence.stream > last:
                    return
                yield msg
            if msgs and msgs[-1].metadata.num_pending == 0:
                return
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
        with contextlib.suppress(Exception):
            await js.delete_consumer(stream, name)


async def purge_streams(js: JetStreamContext, identity: ContactIdentity,
                        erased: Sequence[ErasedContact]) -> dict[ErasedContact, Purged]:
    """Delete the erased contacts' messages from FICHA_IN, FICHA_DLQ and FICHA_OUT."""
    purged = {target: Purged() for target in erased}
    if not erased:
        return purged
    tenants = sorted({t.tenant for t in erased})
    inbound = [f"{PARTITION_PREFIX}.*.{tenant}.>" for tenant in tenants]
    # Subjects the partitioning transform did not route are stored under ficha.in.> as
    # they came; they belong to no partition, and may name any tenant.
    inbound.append(INGEST_SUBJECT)
    for stream, subjects in ((INGEST_STREAM, inbound), (DLQ_STREAM, [DLQ_SUBJECT])):
        async for msg in scan(js, stream, subjects):
            target = whose_inbound(msg.data or b"", erased, identity)
            if target is not None:
                await _delete(js, stream, msg.metadata.sequence.stream, purged[target])
    outbound = [f"ficha.out.{tenant}.>" for tenant in tenants]
    async for msg in scan(js, OUT_STREAM, outbound):
        target = whose_outbound(msg.data or b"", erased)
        if target is not None:
            await _delete(js, OUT_STREAM, msg.metadata.sequence.stream, purged[target])
    return purged


async def _delete(js: JetStreamContext, stream: str, seq: int, purged: Purged) -> None:
    # nats-py asks for the default delete, which overwrites the message's bytes
    # ("no_erase" unset): a secure erase, not only an index change.
    with contextlib.suppress(NotFoundError):  # already gone (max_age, another purge)
        await js.delete_msg(stream, seq)
    purged.add(stream, seq)


async def dead_letters_of(js: JetStreamContext, identity: ContactIdentity, tenant: str,
                          contact_id: UUID) -> list[dict[str, Any]]:
    """For a subject-access export: the dead letters that name this contact's email."""
    from services.dlq import letter_from

    out = []
    async for msg in scan(js, DLQ_STREAM, [DLQ_SUBJECT]):
        body = msg.data or b""
        if contact_id in contact_ids_in(body, tenant, identity):
            letter = letter_from(msg.metadata.sequence.stream, msg.subject or "",
                             msg.headers or {}, body)
            out.append(letter.to_dict(with_body=True))
    return out
