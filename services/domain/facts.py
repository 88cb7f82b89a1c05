"""What segment rules, engagement and RFM are evaluated against: one contact's facts.

``ContactFacts`` is folded from the contact's recorded domain events, in stream order,
the same way the client list is: the aggregate already decided which values win, so the
fold only applies effective changes. Besides the card it keeps what time-relative rules
need: the moments of interactions and a compact activity log (purchases, refunds,
bookings, forms, surveys) for counts and sums within a window.

Timestamps are the domain's fixed-width UTC ISO strings (``stamps.utc_iso``): they compare
as instants, so rules compare strings.

No I/O: the audience projection loads and stores facts; tests build them directly.
"""

from __future__ import annotations

import bisect
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Any

import msgspec

from services.domain.contact import Contact
from services.domain.stamps import parse_utc_iso, utc_iso
from services.domain.timeline import ACTIVITY_TYPES

LIST_SUPPRESSED = "suppressed"

# Events that show interest, for engagement (issue: opens that are not machine opens,
# clicks, and the store and the site). Sends, bounces, list and consent changes are not.
INTERACTION_TYPES = frozenset(
    {
        "email_opened",
        "email_clicked",
        "product_viewed",
        "cart_updated",
        "purchase_completed",
        "form_submitted",
        "survey_completed",
        "booking_made",
    }
)

# Activity kept with its moment, for counts and sums within a window.
ACTIVITY_KINDS = {
    "purchase_completed": "purchase",
    "purchase_refunded": "refund",
    "booking_made": "booking",
    "booking_cancelled": "cancellation",
    "booking_no_show": "no_show",
    "form_submitted": "form",
    "survey_completed": "survey",
    "email_opened": "open",
    "email_clicked": "click",
}

# A contact's hard bounces or complaints suppress every list; soft bounces only once
# this many have been counted (tenant-configurable later; the default of common ESPs).
DEFAULT_SOFT_BOUNCE_LIMIT = 3


class ContactFacts(msgspec.Struct):
    """Stored as one JSON document per contact (``to_json``), decoded straight into this
    Struct: loading a contact costs about a microsecond."""

    tenant: str
    contact_id: str
    email: str
    fields: dict[str, Any] = msgspec.field(default_factory=dict)
    properties: dict[str, Any] = msgspec.field(default_factory=dict)
    tags: set[str] = msgspec.field(default_factory=set)
    consent: dict[str, bool] = msgspec.field(default_factory=dict)
    # list id -> [register state, the moment that decides it]
    lists: dict[str, list[str]] = msgspec.field(default_factory=dict)
    member_status: str | None = None
    first_seen_at: str | None = None
    last_activity_at: str | None = None
    last_interaction_at: str | None = None
    last_purchase_at: str | None = None
    # kind -> [[occurred_at, amount or None, currency or None], ...] sorted by time: a
    # window's items are found by bisection, and a kind's list is read alone.
    activity: dict[str, list[list[Any]]] = msgspec.field(default_factory=dict)
    soft_bounces: int = 0
    last_soft_bounce_at: str | None = None
    suppressed_at: str | None = None  # the latest hard bounce or complaint
    version: int = 0

    # -------------------------------------------------------------------- folding

    def apply(self, event: Any) -> None:
        """Fold one of the contact's domain events (Registered or Recorded)."""
        if isinstance(event, Contact.Recorded):
            self._apply_recorded(event)
        self.version = event.originator_version

    def touched_by(self, event: Contact.Recorded) -> frozenset[str]:
        """What applying ``event`` may change, before it is applied: card field names,
        ``property.<name>``, ``consent.<channel>``, ``tags``, ``lists``, ``member_status``,
        the date fields and ``activity.<kind>`` (the names ``Node.reads`` uses). A
        superset is safe, a missing name is not: a test holds it to ``_apply_recorded``."""
        changes = event.changes
        out: set[str] = set(changes.get("fields", ()))
        out.update(f"property.{name}" for name in changes.get("properties", ()))
        out.update(f"consent.{channel}" for channel in changes.get("consent", ()))
        if changes.get("tags"):
            out.add("tags")
        kind = event.event_type
        if changes.get("lists") or kind in ("email_bounced", "email_complained"):
            out.add("lists")
        if changes.get("member") is not None:
            out.add("member_status")
        at = event.occurred_at
        if self.first_seen_at is None or at < self.first_seen_at:
            out.add("first_seen_at")
        if not event.entry.get("automatic"):
            if kind in ACTIVITY_TYPES and _moves_later(self.last_activity_at, at):
                out.add("last_activity_at")
            if kind in INTERACTION_TYPES and _moves_later(self.last_interaction_at, at):
                out.add("last_interaction_at")
            if kind in ACTIVITY_KINDS:
                out.add(f"activity.{ACTIVITY_KINDS[kind]}")
        if kind == "purchase_completed" and _moves_later(self.last_purchase_at, at):
            out.add("last_purchase_at")
        return frozenset(out)

    def copy_before(self, touched: frozenset[str]) -> ContactFacts:
        """These facts as they are now, left as they are when an event that touches
        ``touched`` (``touched_by``) is applied to the original: what such an event changes
        in place is copied, everything else shared."""
        activity = {kind: items.copy() if f"activity.{kind}" in touched else items
                    for kind, items in self.activity.items()}
        return msgspec.structs.replace(
            self, fields=self.fields.copy(), properties=self.properties.copy(),
            tags=self.tags.copy(), consent=self.consent.copy(), lists=self.lists.copy(),
            activity=activity)

    def _apply_recorded(self, event: Contact.Recorded) -> None:
        changes = event.changes
        at = event.occurred_at
        for name, value in changes.get("fields", {}).items():
            if value is None:
                self.fields.pop(name, None)
            else:
                self.fields[name] = value
        for name, value in changes.get("properties", {}).items():
            if value is None:
                self.properties.pop(name, None)
            else:
                self.properties[name] = value
        for key, (_, present) in changes.get("tags", {}).items():
            if present:
                self.tags.add(key)
            else:
                self.tags.discard(key)
        for channel, granted in changes.get("consent", {}).items():
            self.consent[channel] = bool(granted)
        for list_id, (state, since) in changes.get("lists", {}).items():
            self.lists[list_id] = [state, since]
        member = changes.get("member")
        if member is not None:
            self.member_status = member["status"]
        if self.first_seen_at is None or at < self.first_seen_at:
            self.first_seen_at = at
        kind = event.event_type
        automatic = bool(event.entry.get("automatic"))
        if kind in ACTIVITY_TYPES and not automatic:
            self.last_activity_at = _later(self.last_activity_at, at)
        if kind in INTERACTION_TYPES and not automatic:
            self.last_interaction_at = _later(self.last_interaction_at, at)
        if kind == "purchase_completed":
            self.last_purchase_at = _later(self.last_purchase_at, at)
        data = event.entry.get("data", {})
        activity = ACTIVITY_KINDS.get(kind)
        if activity is not None and not automatic:
            money = data.get("total") if kind == "purchase_completed" else data
            money = money if isinstance(money, dict) else {}
            self.add_activity(activity, at, money.get("amount"), money.get("currency"))
        if kind == "email_bounced":
            if data.get("bounce") == "hard":
                self.suppressed_at = _later(self.suppressed_at, at)
            else:
                self.soft_bounces += 1
                self.last_soft_bounce_at = _later(self.last_soft_bounce_at, at)
        elif kind == "email_complained":
            self.suppressed_at = _later(self.suppressed_at, at)

    # -------------------------------------------------------------------- reading

    def suppression(self, soft_limit: int = DEFAULT_SOFT_BOUNCE_LIMIT) -> str | None:
        """Since when email to this contact is suppressed: the latest hard bounce or
        complaint, or, once ``soft_limit`` soft bounces are counted, the latest of those.
        A function of the set of bounces, not of their arrival order."""
        soft = self.last_soft_bounce_at if self.soft_bounces >= soft_limit else None
        if soft is None:
            return self.suppressed_at
        return _later(self.suppressed_at, soft)

    def list_state(self, list_id: str,
                   soft_limit: int = DEFAULT_SOFT_BOUNCE_LIMIT) -> str | None:
        """The list's effective state; a later suppression suppresses a live subscription."""
        register = self.lists.get(list_id)
        if register is None:
            return None
        state, since = register
        suppressed = self.suppression(soft_limit)
        if suppressed is not None and state in ("pending", "subscribed") and suppressed >= since:
            return LIST_SUPPRESSED
        return state

    def list_states(self, soft_limit: int = DEFAULT_SOFT_BOUNCE_LIMIT
                    ) -> dict[str, tuple[str, str]]:
        """Every list's effective state with the instant it took effect: the register's
        moment, or for a suppressed subscription the suppressing bounce or complaint."""
        suppressed = self.suppression(soft_limit)
        out = {}
        for list_id, (state, since) in self.lists.items():
            effective = self.list_state(list_id, soft_limit) or state
            if effective != state and suppressed is not None:
                since = suppressed
            out[list_id] = (effective, since)
        return out

    def add_activity(self, kind: str, at: str, amount: str | None, currency: str | None) -> None:
        """Keep each kind's items in time order, ties in a fixed order, so that any
        arrival order gives the same document."""
        items = self.activity.setdefault(kind, [])
        item = [at, amount, currency]
        if not items or _item_key(items[-1]) <= _item_key(item):  # None is not comparable
            items.append(item)
        else:
            bisect.insort(items, item, key=_item_key)

    def since(self, kind: str, moment: str | None) -> list[list[Any]]:
        """``kind``'s items after ``moment`` (all of them if None), oldest first."""
        items = self.activity.get(kind, [])
        if moment is None or not items or items[0][0] > moment:
            return items
        if items[-1][0] <= moment:
            return []
        # Instants are fixed-width, so an item at or before ``moment`` sorts before the
        # list [moment + "~"] and one after it sorts after (decided by the first element):
        # no key function to call per step of the search.
        return items[bisect.bisect_right(items, [moment + "~"]):]

    # -------------------------------------------------------------------- storage

    def to_json(self) -> bytes:
        """Deterministic JSON (sets and maps sorted): the same bytes on every rebuild."""
        return _ENCODER.encode(self)

    @staticmethod
    def from_json(data: bytes | str) -> ContactFacts:
        return _DECODER.decode(data)


_ENCODER = msgspec.json.Encoder(order="deterministic")
_DECODER = msgspec.json.Decoder(ContactFacts)


def _item_key(item: list[Any]) -> tuple[str, str, str]:
    return (item[0], item[1] or "", item[2] or "")


def _moves_later(current: str | None, candidate: str) -> bool:
    return current is None or candidate > current


def _later(current: str | None, candidate: str) -> str:
    return candidate if current is None or candidate > current else current


_MAX = "9999-12-31T23:59:59.999999Z"
_MIN = "0001-01-01T00:00:00.000000Z"


@lru_cache(maxsize=4096)
def days_before(moment: str, days: float) -> str:
    """``moment`` minus ``days``; cached, as rules ask it for the same "now" over and over."""
    return _shift(moment, -days)


def days_after(moment: str, days: float) -> str:
    return _shift(moment, days)


def _shift(moment: str, days: float) -> str:
    # Domain instants are fixed-width UTC ("...T10:15:00.000000Z"): naive arithmetic on
    # them is exact and several times faster than going through time zones.
    try:
        if len(moment) == 27 and moment[-1] == "Z":
            shifted = datetime.fromisoformat(moment[:-1]) + timedelta(days=days)
            return shifted.isoformat(timespec="microseconds") + "Z"
        return utc_iso(parse_utc_iso(moment) + timedelta(days=days))
    except OverflowError:
        # The decoder keeps instants within 1900-2200; stored history from before that
        # rule must not stop a projection: past the calendar's ends, clamp to them.
        return _MAX if days > 0 else _MIN
