"""History entries: what a contact did or what happened to them, in words and data.

Every inbound event becomes one entry on the contact's timeline. ``ACTIVITY_TYPES`` are
the events that show the person acting (they move ``last_activity_at``); sends, bounces,
no-shows, refunds and edits by staff do not, and neither does an automatic email open by
a mail privacy proxy (``machine_open``), which is no sign of interest.
"""

from __future__ import annotations

from typing import Any

import msgspec

from contracts.events import InboundEvent

ENVELOPE_KEYS = frozenset(
    {"event_id", "type", "tenant", "occurred_at", "source", "schema_version", "contact"}
)

ACTIVITY_TYPES = frozenset(
    {
        "form_submitted",
        "survey_completed",
        "booking_made",
        "booking_cancelled",
        "purchase_completed",
        "member_signed_up",
        "list_subscribed",
        "list_confirmed",
        "list_unsubscribed",
        "email_opened",
        "email_clicked",
        "product_viewed",
        "cart_updated",
        "consent_changed",
    }
)

# The timeline's kinds group event types the way a CRM card shows them.
KIND_BY_TYPE = {
    "form_submitted": "form",
    "survey_completed": "survey",
    "booking_made": "booking",
    "booking_cancelled": "booking",
    "booking_no_show": "booking",
    "purchase_completed": "purchase",
    "purchase_refunded": "purchase",
    "member_signed_up": "membership",
    "member_approved": "membership",
    "list_subscribed": "list",
    "list_confirmed": "list",
    "list_unsubscribed": "list",
    "email_sent": "message",
    "email_opened": "message",
    "email_clicked": "message",
    "email_bounced": "message",
    "email_complained": "message",
    "product_viewed": "store",
    "cart_updated": "store",
    "consent_changed": "consent",
    "contact_updated": "profile",
    "contact_erasure_requested": "privacy",
}


def _summary(kind: str, d: dict[str, Any]) -> str:
    if kind == "form_submitted":
        return f"Submitted form {d.get('form_name') or d['form_id']}"
    if kind == "survey_completed":
        score = f" (score {d['score']})" if d.get("score") is not None else ""
        return f"Completed survey {d.get('survey_name') or d['survey_id']}{score}"
    if kind == "booking_made":
        service = f" for {d['service']}" if d.get("service") else ""
        party = f", party of {d['party_size']}" if d.get("party_size") else ""
        return f"Booked {d['booking_id']}{service} at {d['starts_at']}{party}"
    if kind == "booking_cancelled":
        reason = f": {d['reason']}" if d.get("reason") else ""
        return f"Cancelled booking {d['booking_id']}{reason}"
    if kind == "booking_no_show":
        return f"Did not show up for booking {d['booking_id']}"
    if kind == "purchase_completed":
        return f"Paid order {d['order_id']}: {d['total']['amount']} {d['total']['currency']}"
    if kind == "purchase_refunded":
        return f"Refunded {d['amount']} {d['currency']} on order {d['order_id']}"
    if kind == "member_signed_up":
        approval = " (awaiting approval)" if d.get("requires_approval") else ""
        return f"Signed up as member {d['member_id']}{approval}"
    if kind == "member_approved":
        return f"Membership {d['member_id']} approved"
    if kind == "list_subscribed":
        pending = " (awaiting confirmation)" if d.get("double_opt_in") else ""
        return f"Subscribed to list {d['list_id']}{pending}"
    if kind == "list_confirmed":
        return f"Confirmed subscription to list {d['list_id']}"
    if kind == "list_unsubscribed":
        which = "every list" if d["list_id"] == "*" else f"list {d['list_id']}"
        return f"Unsubscribed from {which}"
    if kind == "email_sent":
        return f"Was sent email {d['message_id']}"
    if kind == "email_opened":
        auto = " (automatic open by a privacy proxy)" if d.get("machine_open") else ""
        return f"Opened email {d['message_id']}{auto}"
    if kind == "email_clicked":
        url = f": {d['url']}" if d.get("url") else ""
        return f"Clicked in email {d['message_id']}{url}"
    if kind == "email_bounced":
        return f"Email {d['message_id']} bounced ({d['bounce']})"
    if kind == "email_complained":
        return f"Marked email {d['message_id']} as spam"
    if kind == "product_viewed":
        return f"Viewed product {d.get('product_name') or d['product_id']}"
    if kind == "cart_updated":
        value = f", {d['value']} {d.get('currency') or ''}".rstrip() if d.get("value") else ""
        items = d.get("items_count")
        count = f": {items} items" if items is not None else ""
        return f"Updated cart {d['cart_id']}{count}{value}"
    if kind == "consent_changed":
        verb = "Granted" if d["granted"] else "Withdrew"
        return f"{verb} consent for {d['channel']}"
    if kind == "contact_updated":
        return "Card updated"
    if kind == "contact_erasure_requested":
        return "Asked for their personal data to be erased"
    return kind.replace("_", " ").capitalize()


def timeline_entry(event: InboundEvent) -> dict[str, Any]:
    """A JSON-ready history entry for one inbound event."""
    data = {
        key: value
        for key, value in msgspec.to_builtins(event).items()
        if key not in ENVELOPE_KEYS and value is not None and value != [] and value != {}
    }
    entry: dict[str, Any] = {
        "kind": KIND_BY_TYPE.get(event.type, "other"),
        "summary": _summary(event.type, data),
        "data": data,
    }
    if event.type == "email_opened" and data.get("machine_open"):
        entry["automatic"] = True
    return entry
