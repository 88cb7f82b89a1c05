"""What ficha publishes on ``ficha.out.<tenant>.<type>``: the outbound contract, v1.

Automation services subscribe to FICHA_OUT (or to ``ficha.out.<tenant>.>``). Every event
has a stable ``event_id`` (also its ``Nats-Msg-Id``): unique per transition, and the same
after a rebuild, so a consumer can de-duplicate on it. Events of one contact and segment
are published in the order they happened.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import Meta

OUT_PREFIX = "ficha.out"
UTC_INSTANT_PATTERN = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{6}Z$"

# ficha's instants are fixed-width, so that they sort as text in time order.
UtcInstant = Annotated[str, Meta(pattern=UTC_INSTANT_PATTERN, description=(
    "RFC 3339 timestamp in UTC with microseconds, e.g. 2026-11-23T10:15:00.123456Z"))]
# Outbound value formats, named in the field descriptions like contracts.events.FORMATS.
OUT_FORMATS = (UtcInstant,)


def out_subject(tenant: str, type_: str) -> str:
    """Where ficha publishes an outbound event of ``type_`` for ``tenant``."""
    return f"{OUT_PREFIX}.{tenant}.{type_}"


class OutContact(msgspec.Struct, forbid_unknown_fields=True):
    """The contact a segment event is about."""

    contact_id: Annotated[str, Meta(description=(
        "the contact's id: a keyed hash that does not reveal the email"))]
    email: Annotated[str, Meta(description="the contact's email address, as ficha holds it")]


class TransitionCause(msgspec.Struct, forbid_unknown_fields=True):
    """Why the contact entered or left the segment."""

    kind: Annotated[Literal["event", "clock", "definition"], Meta(description=(
        "event: an inbound event changed the contact; clock: a time-relative condition "
        "passed its instant; definition: the segment was created, edited or deleted"))]
    ref: Annotated[str, Meta(description=(
        "for event, the inbound event's event_id; for clock, clock (or rfm when the tenant's "
        "RFM cuts were taken again); for definition, `<segment>@v<version>`"))]
    clauses: Annotated[list[str], Meta(description=(
        "paths of the rule's conditions whose value flipped, like rule.all[1]; empty for "
        "definition"))]


class SegmentTransition(msgspec.Struct, forbid_unknown_fields=True):
    event_id: Annotated[str, Meta(description=(
        "`<segment>:<contact_id>:<entry_no>:entered` (or `:exited`): one per transition, "
        "the same after a rebuild; also the Nats-Msg-Id"))]
    tenant: Annotated[str, Meta(description="the tenant the segment belongs to")]
    occurred_at: Annotated[UtcInstant, Meta(description="the exact instant of the transition")]
    segment_id: Annotated[str, Meta(description="the segment's id")]
    segment_version: Annotated[int, Meta(description=(
        "the version of the segment's definition that decided it"))]
    contact: Annotated[OutContact, Meta(description="who entered or left the segment")]
    cause: Annotated[TransitionCause, Meta(description="why")]
    entry_no: Annotated[int, Meta(description=(
        "1 for the contact's first entry into this segment, then 2, ...; an exit carries "
        "its entry's number"))]


class SegmentEntered(SegmentTransition, tag_field="type", tag="segment_entered"):
    """The contact now matches the segment."""


class SegmentExited(SegmentTransition, tag_field="type", tag="segment_exited"):
    """The contact no longer matches the segment (or the segment was deleted)."""


class ContactErased(msgspec.Struct, forbid_unknown_fields=True, tag_field="type",
                    tag="contact_erased"):
    """ficha erased this contact's personal data at their request: forget them too.

    Carries the contact id only (the email is gone). The contact leaves every segment
    with it; no ``segment_exited`` follows."""

    event_id: Annotated[str, Meta(description=(
        "`<contact_id>:erased:<n>`: one per erasure, the same after a rebuild"))]
    tenant: Annotated[str, Meta(description="the tenant the contact belonged to")]
    occurred_at: Annotated[UtcInstant, Meta(description=(
        "when ficha erased the data, by deleting the contact's keys"))]
    requested_at: Annotated[UtcInstant, Meta(description=(
        "the erasure request's occurred_at"))]
    contact_id: Annotated[str, Meta(description=(
        "the contact's id, as in its earlier segment events"))]


OutboundEvent = SegmentEntered | SegmentExited | ContactErased
OUT_TYPES: dict[str, type[msgspec.Struct]] = {
    "segment_entered": SegmentEntered,
    "segment_exited": SegmentExited,
    "contact_erased": ContactErased,
}


def decode_outbound(data: bytes) -> OutboundEvent:
    return msgspec.json.decode(data, type=OutboundEvent)
