"""The Contact aggregate: one event stream per (tenant, email).

Inbound facts arrive in any order and may repeat. The aggregate turns each one into a
``Recorded`` domain event that carries only the *effective* changes: the values that win
under the contract's rule (latest ``occurred_at``, ties to the greater ``event_id``). Each
winning value is kept with its stamp, so a late, older fact never overwrites a newer one,
and replaying the stored events in version order rebuilds the same state. Read models
then apply the recorded changes in order without needing stamps of their own.

Erasure (GDPR): ``contact_erasure_requested`` turns into ``Erased``, which carries no
personal data and empties the contact. The store keeps each contact's personal events
encrypted with a key of its own and deletes that key in the same transaction as
``Erased`` (docs/decisions/0006): read back, those events are ``Redacted``, and the
contact loads as erased. Facts stamped at or before the erasure that arrive later are
refused (they are part of what the person asked to forget); a later fact about the same
email starts the contact afresh (``Reopened``), under a new key.

No I/O here: the aggregate is pure and fast, and the ingest worker owns persistence.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

import msgspec
from eventsourcing.domain import Aggregate

from contracts.events import InboundEvent
from services.domain.stamps import NO_STAMP, Stamp, utc_iso
from services.domain.timeline import ACTIVITY_TYPES, timeline_entry

PROFILE_FIELDS: tuple[str, ...] = (
    "phone",
    "first_name",
    "last_name",
    "language",
    "country",
    "city",
    "postal_code",
)
CARD_FIELDS: tuple[str, ...] = (*PROFILE_FIELDS, "contact_type", "lead_status")

LIST_PENDING = "pending"
LIST_SUBSCRIBED = "subscribed"
LIST_UNSUBSCRIBED = "unsubscribed"

MEMBER_PENDING = "pending_approval"
MEMBER_ACTIVE = "active"


def tag_key(label: str) -> str:
    """Tags compare case-insensitively after trimming."""
    return label.strip().casefold()


class Contact(Aggregate):
    """A person known to one tenant by their email address."""

    class Registered(Aggregate.Created):
        tenant: str
        email: str

    class Recorded(Aggregate.Event):
        """One inbound event applied to this contact, with its effective changes.

        Version 2: a purchase's timeline data holds its total as one money object
        (contract version 2 of purchase_completed); stored version-1 events are read
        through ``upcast_v1_v2``, so the log is never rewritten.
        """

        class_version = 2

        @staticmethod
        def upcast_v1_v2(state: dict[str, Any]) -> None:
            if state.get("event_type") != "purchase_completed":
                return
            data = state.get("entry", {}).get("data", {})
            if "currency" in data and not isinstance(data.get("total"), dict):
                data["total"] = {"amount": data.pop("total", None),
                                 "currency": data.pop("currency")}

        event_id: str
        event_type: str
        occurred_at: str
        source: str
        changes: dict[str, Any]
        entry: dict[str, Any]

        def apply(self, aggregate: Any) -> None:
            aggregate.apply_recorded(self)

    class Erased(Aggregate.Event):
        """The person's data was erased at their request. Holds no personal data: the
        request's event id and time, so that older facts arriving later are refused."""

        tenant: str
        event_id: str
        requested_at: str
        source: str

        def apply(self, aggregate: Any) -> None:
            aggregate.apply_erased(self)

    class Reopened(Aggregate.Event):
        """A fact newer than the erasure arrived for the same email: a fresh start."""

        tenant: str
        email: str

        def apply(self, aggregate: Any) -> None:
            aggregate.apply_reopened(self)

    class Redacted(Aggregate.Event):
        """What the store reads back for a personal event whose key was erased: which kind
        of event it was (its topic) and when it was recorded, nothing else. Not written:
        only read."""

        redacted_topic: str

        def mutate(self, aggregate: Any) -> Any:
            if aggregate is None:  # the stream's first event: a shell of an erased contact
                aggregate = Contact.__new__(Contact)
                aggregate.__base_init__(self.originator_id, self.originator_version,
                                        self.timestamp)
                aggregate.__init__("", None)
                return aggregate
            return super().mutate(aggregate)

        def apply(self, aggregate: Any) -> None:
            aggregate.redacted_events += 1

    def __init__(self, tenant: str, email: str | None) -> None:
        self.tenant = tenant
        self.email = email
        # The stamp of the latest erasure: facts at or before it are refused.
        self.erased: Stamp | None = None
        self.redacted_events = 0
        self._blank()

    def _blank(self) -> None:
        self.fields: dict[str, tuple[Any, Stamp]] = {}
        self.properties: dict[str, tuple[Any, Stamp]] = {}
        self.tags: dict[str, tuple[str, bool, Stamp]] = {}
        self.consent: dict[str, tuple[bool, Stamp]] = {}
        self.lists: dict[str, tuple[str, Stamp]] = {}
        self.unsubscribed_all: Stamp = NO_STAMP
        self.member: tuple[str, str, Stamp] | None = None
        self.first_seen_at: str | None = None
        self.last_activity_at: str | None = None
        self.event_count = 0

    @property
    def is_erased(self) -> bool:
        """Erased and not started afresh since: the contact holds no personal data."""
        return self.email is None

    @classmethod
    def register(cls, contact_id: UUID, tenant: str, email: str) -> Contact:
        return cls._create(cls.Registered, id=contact_id, tenant=tenant, email=email)

    # ----------------------------------------------------------------- commands

    def record(self, event: InboundEvent) -> bool:
        """Fold one inbound event into this contact; False if it was refused because the
        contact was erased after it happened (or the erasure changes nothing)."""
        occurred_at = utc_iso(event.occurred_at)
        stamp: Stamp = (occurred_at, event.event_id)
        if self.erased is not None and stamp <= self.erased:
            return False
        if event.type == "contact_erasure_requested":
            return self.erase(event, stamp)
        if self.is_erased:
            self.trigger_event(self.Reopened, tenant=event.tenant, email=event.contact.email)
        self.trigger_event(
            self.Recorded,
            event_id=event.event_id,
            event_type=event.type,
            occurred_at=occurred_at,
            source=event.source,
            changes=decide_changes(self, event, stamp),
            entry=timeline_entry(event),
        )
        return True

    def erase(self, event: InboundEvent, stamp: Stamp) -> bool:
        """Erase everything this contact holds, whatever its stamps; remember the request's
        stamp. A second request for a contact already erased (holding nothing since) only
        moves that stamp forward."""
        self.trigger_event(
            self.Erased,
            tenant=event.tenant,
            event_id=event.event_id,
            requested_at=stamp[0],
            source=event.source,
        )
        return True

    # ------------------------------------------------------------------ queries

    def card(self) -> dict[str, Any]:
        """The current card as plain values (no stamps)."""
        return {
            "tenant": self.tenant,
            "email": self.email,
            **{name: value for name, (value, _) in sorted(self.fields.items())},
            "properties": {
                name: value
                for name, (value, _) in sorted(self.properties.items())
                if value is not None
            },
            "tags": sorted(label for label, present, _ in self.tags.values() if present),
            "consent": {ch: granted for ch, (granted, _) in sorted(self.consent.items())},
            "lists": {lid: self.list_state(lid) for lid in sorted(self.lists)},
            "unsubscribed_all": self.unsubscribed_all != NO_STAMP,
            "member": None if self.member is None else {
                "member_id": self.member[0],
                "status": self.member[1],
            },
            "first_seen_at": self.first_seen_at,
            "last_activity_at": self.last_activity_at,
        }

    def list_state(self, list_id: str) -> str | None:
        """Effective state: the list's own latest fact, unless a later `*` unsubscribe."""
        register = self.lists.get(list_id)
        if register is None:
            return None
        state, stamp = register
        if self.unsubscribed_all > stamp:
            return LIST_UNSUBSCRIBED
        return state

    # ------------------------------------------------------------------ mutation

    def apply_erased(self, event: Contact.Erased) -> None:
        self.tenant = event.tenant
        self.email = None
        self.erased = (event.requested_at, event.event_id)
        self._blank()

    def apply_reopened(self, event: Contact.Reopened) -> None:
        self.tenant = event.tenant
        self.email = event.email
        self._blank()

    def apply_recorded(self, event: Contact.Recorded) -> None:
        stamp: Stamp = (event.occurred_at, event.event_id)
        changes = event.changes
        for name, value in changes.get("fields", {}).items():
            self.fields[name] = (value, stamp)
        for name, value in changes.get("properties", {}).items():
            self.properties[name] = (value, stamp)
        for key, (label, present) in changes.get("tags", {}).items():
            self.tags[key] = (label, present, stamp)
        for channel, granted in changes.get("consent", {}).items():
            self.consent[channel] = (granted, stamp)
        if changes.get("unsubscribe_all"):
            self.unsubscribed_all = stamp
        for list_id, state in changes.get("list_registers", {}).items():
            self.lists[list_id] = (state, stamp)
        member = changes.get("member")
        if member is not None:
            self.member = (member["member_id"], member["status"], stamp)
        if self.first_seen_at is None or event.occurred_at < self.first_seen_at:
            self.first_seen_at = event.occurred_at
        is_activity = event.event_type in ACTIVITY_TYPES and not event.entry.get("automatic")
        if is_activity and (
            self.last_activity_at is None or event.occurred_at > self.last_activity_at
        ):
            self.last_activity_at = event.occurred_at
        self.event_count += 1


# ---------------------------------------------------------------------- decisions


def decide_changes(contact: Contact, event: InboundEvent, stamp: Stamp) -> dict[str, Any]:
    """The changes that win under last-writer-wins; empty sections are left out."""
    fields: dict[str, Any] = {}
    properties: dict[str, Any] = {}
    tags: dict[str, list[Any]] = {}
    consent: dict[str, bool] = {}
    lists: dict[str, list[str]] = {}
    list_registers: dict[str, str] = {}
    changes: dict[str, Any] = {}

    def set_field(name: str, value: Any) -> None:
        current = contact.fields.get(name)
        if current is None or stamp > current[1]:
            fields[name] = value

    def set_property(name: str, value: Any) -> None:
        current = contact.properties.get(name)
        if current is None or stamp > current[1]:
            properties[name] = value

    def set_tag(label: str, present: bool) -> None:
        key = tag_key(label)
        current = contact.tags.get(key)
        if current is None or stamp > current[2]:
            tags[key] = [label.strip(), present]

    def set_list(list_id: str, state: str) -> None:
        # Each list keeps its own last-writer-wins register; a later `*` unsubscribe
        # overrides it. `lists` carries, for read models, the effective state and the
        # time of the fact that decides it: both functions of the registers alone.
        register = contact.lists.get(list_id)
        if register is not None and stamp <= register[1]:
            return
        list_registers[list_id] = state
        if contact.unsubscribed_all > stamp:
            lists[list_id] = [LIST_UNSUBSCRIBED, contact.unsubscribed_all[0]]
        else:
            lists[list_id] = [state, stamp[0]]

    person = event.contact
    for name in PROFILE_FIELDS:
        value = getattr(person, name, None)
        if value is not None:
            set_field(name, value)

    for label in getattr(event, "tags", None) or ():
        set_tag(label, True)

    kind = event.type
    if kind == "form_submitted":
        for name, value in (getattr(event, "properties", None) or {}).items():
            set_property(name, _plain(value))
    elif kind == "contact_updated":
        for name, value in (getattr(event, "properties", None) or {}).items():
            set_property(name, _plain(value))
        for name in getattr(event, "unset", None) or ():
            if name in CARD_FIELDS:
                set_field(name, None)
            else:
                set_property(name, None)
        for label in getattr(event, "tags_added", None) or ():
            set_tag(label, True)
        for label in getattr(event, "tags_removed", None) or ():
            set_tag(label, False)
        for name in ("contact_type", "lead_status"):
            value = getattr(event, name, None)
            if value is not None:
                set_field(name, value)
    elif kind == "consent_changed":
        current = contact.consent.get(event.channel)  # type: ignore[attr-defined]
        if current is None or stamp > current[1]:
            consent[event.channel] = bool(event.granted)  # type: ignore[attr-defined]
    elif kind == "list_subscribed":
        pending = bool(getattr(event, "double_opt_in", False))
        set_list(event.list_id, LIST_PENDING if pending else LIST_SUBSCRIBED)  # type: ignore[attr-defined]
    elif kind == "list_confirmed":
        set_list(event.list_id, LIST_SUBSCRIBED)  # type: ignore[attr-defined]
    elif kind == "list_unsubscribed":
        list_id = event.list_id  # type: ignore[attr-defined]
        if list_id == "*":
            if stamp > contact.unsubscribed_all:
                changes["unsubscribe_all"] = True
                for known, (_, known_stamp) in contact.lists.items():
                    if stamp > known_stamp:
                        lists[known] = [LIST_UNSUBSCRIBED, stamp[0]]
        else:
            set_list(list_id, LIST_UNSUBSCRIBED)
    elif kind in ("member_signed_up", "member_approved"):
        approval = kind == "member_signed_up" and bool(getattr(event, "requires_approval", False))
        status = MEMBER_PENDING if approval else MEMBER_ACTIVE
        if contact.member is None or stamp > contact.member[2]:
            changes["member"] = {"member_id": event.member_id, "status": status}  # type: ignore[attr-defined]

    for key, section in (
        ("fields", fields),
        ("properties", properties),
        ("tags", tags),
        ("consent", consent),
        ("lists", lists),
        ("list_registers", list_registers),
    ):
        if section:
            changes[key] = section
    return changes


def _plain(value: Any) -> Any:
    """Property values as JSON builtins (lists stay lists)."""
    return msgspec.to_builtins(value)
