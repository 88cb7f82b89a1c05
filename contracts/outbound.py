"""What ficha publishes on ``ficha.out.<tenant>.<type>``: the outbound contract, v1.

Automation services subscribe to FICHA_OUT (or to ``ficha.out.<tenant>.>``). Every event
has a stable ``event_id`` (also its ``Nats-Msg-Id``): unique per transition, and the same
after a rebuild, so a consumer can de-duplicate on it. Events of one contact and segment
are published in the order they happened.
"""

from __future__ import annotations

from typing import Literal

import msgspec


class OutContact(msgspec.Struct, forbid_unknown_fields=True):
    contact_id: str
    email: str


class TransitionCause(msgspec.Struct, forbid_unknown_fields=True):
    # "event": an inbound event changed the contact (ref = its event_id);
    # "clock": a relative-time condition passed its instant (ref = "clock");
    # "definition": the segment was created, edited or deleted (ref = "<segment>@v<version>").
    kind: Literal["event", "clock", "definition"]
    ref: str
    # The rule's clauses whose value flipped, by path ("rule.all[1]"); empty for definitions.
    clauses: list[str]


class SegmentTransition(msgspec.Struct, forbid_unknown_fields=True):
    event_id: str
    tenant: str
    occurred_at: str  # the exact instant of the transition, UTC, RFC 3339
    segment_id: str
    segment_version: int
    contact: OutContact
    cause: TransitionCause
    entry_no: int  # 1 for the contact's first entry into this segment, then 2, ...


class SegmentEntered(SegmentTransition, tag_field="type", tag="segment_entered"):
    """The contact now matches the segment."""


class SegmentExited(SegmentTransition, tag_field="type", tag="segment_exited"):
    """The contact no longer matches the segment (or the segment was deleted)."""


class ContactErased(msgspec.Struct, forbid_unknown_fields=True, tag_field="type",
                    tag="contact_erased"):
    """ficha erased this contact's personal data at their request: forget them too.

    Carries the contact id only (the email is gone). The contact leaves every segment
    with it; no ``segment_exited`` follows."""

    event_id: str  # "<contact_id>:erased:<n>", stable across rebuilds
    tenant: str
    occurred_at: str  # when ficha erased the data (its keys), UTC, RFC 3339
    requested_at: str  # the erasure request's occurred_at, UTC
    contact_id: str


OutboundEvent = SegmentEntered | SegmentExited | ContactErased
OUT_TYPES: dict[str, type[msgspec.Struct]] = {
    "segment_entered": SegmentEntered,
    "segment_exited": SegmentExited,
    "contact_erased": ContactErased,
}


def decode_outbound(data: bytes) -> OutboundEvent:
    return msgspec.json.decode(data, type=OutboundEvent)
