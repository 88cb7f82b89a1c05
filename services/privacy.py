"""GDPR for callers (the CLI, the HTTP API): ask for an erasure, read its receipts, and
export everything ficha holds about one person.

* ``request_erasure`` publishes ``contact_erasure_requested`` on the bus, as any producer
  would: the erasure itself happens in the ingest worker, the projections and the
  erasure completer (``services.erasures``), in that order, each confirming.
* ``erasure_receipts`` / ``erasure_receipt``: when it was asked and done, which
  projections confirmed, whether ``contact_erased`` went out, which stream messages were
  deleted. No personal data: receipts name the contact by its id only.
* ``subject_access``: the card, timeline, lists, consent ledger, segment memberships and
  history, audience facts, the decrypted event stream and the dead letters naming the
  person, as one JSON-ready dict.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from nats.js import JetStreamContext

from contracts.emails import email_problem
from contracts.publisher import publish
from projections.db import ViewDatabase
from projections.registry import all_projections
from services.domain.identity import ContactIdentity, normalise_email
from services.domain.stamps import parse_utc_iso, utc_iso
from services.store.contact_store import ContactStore

ERASURE_SOURCE = "ficha-privacy"


class NotHeld(Exception):
    """ficha holds no personal data about this person (never known, or erased)."""


# ------------------------------------------------------------------------------ erasure


def erasure_request(tenant: str, email: str, *, source: str = ERASURE_SOURCE,
                    now: datetime | None = None) -> dict[str, Any]:
    """The ``contact_erasure_requested`` event for this person, ready to publish."""
    problem = email_problem(normalise_email(email))
    if problem is not None:
        raise ValueError(f"{email!r} is not an email address: it {problem}")
    moment = (now or datetime.now(UTC)).astimezone(UTC)
    return {
        "event_id": f"erase-{uuid.uuid4().hex}",
        "type": "contact_erasure_requested",
        "tenant": tenant,
        "occurred_at": moment.isoformat(timespec="microseconds"),
        "source": source,
        "contact": {"email": email},
    }


async def request_erasure(js: JetStreamContext, tenant: str, email: str, *,
                          source: str = ERASURE_SOURCE) -> str:
    """Publish an erasure request through the bus; returns its event id."""
    event = erasure_request(tenant, email, source=source)
    await publish(js, event)
    return str(event["event_id"])


def erasure_receipts(store: ContactStore, views: ViewDatabase, *, tenant: str | None = None,
                     contact_id: UUID | None = None) -> list[dict[str, Any]]:
    """Every erasure receipt (optionally one tenant's or one contact's), oldest first."""
    rows = store.erasures(tenant=tenant, contact_id=contact_id)
    return [_receipt(views, row) for row in rows]


def erasure_receipt(store: ContactStore, views: ViewDatabase, reference: str
                    ) -> dict[str, Any] | None:
    """One receipt, by the request's event id or the contact id (its latest erasure)."""
    try:
        contact_id: UUID | None = UUID(reference)
    except ValueError:
        contact_id = None
    if contact_id is not None:
        found = store.erasures(contact_id=contact_id)
    else:
        found = [r for r in store.erasures() if r["event_id"] == reference]
    return _receipt(views, found[-1]) if found else None


def confirmations(views: ViewDatabase, contact_id: str, version: int) -> dict[str, str | None]:
    """Each projection holding personal data: when it applied this erasure, or None."""
    out: dict[str, str | None] = {}
    with views.reading() as cur:
        for projection in all_projections():
            table = getattr(projection, "erasures_table", None)
            if table is None:
                continue
            try:
                cur.execute(f"SELECT confirmed_at FROM {table} "
                            "WHERE contact_id = ? AND version = ?", (contact_id, version))
                row = cur.fetchone()
            except Exception:  # noqa: BLE001 - the projection has not made its tables yet
                row = None
            out[projection.name] = None if row is None else instant_text(row["confirmed_at"])
    return out


def outbound_state(views: ViewDatabase, contact_id: str, version: int) -> dict[str, Any]:
    """The receipt's ``contact_erased`` event: its outbox number and whether it went out."""
    event_id = f"{contact_id}:erased:{version}"
    with views.reading() as cur:
        try:
            cur.execute("SELECT seq FROM ficha_outbox WHERE event_id = ?", (event_id,))
            row = cur.fetchone()
            cur.execute("SELECT position FROM ficha_outbox_relay WHERE name = 'out'")
            relay = cur.fetchone()
        except Exception:  # noqa: BLE001 - tables not made yet
            row = relay = None
    seq = None if row is None else int(row["seq"])
    published = seq is not None and relay is not None and int(relay["position"]) >= seq
    return {"event_id": event_id, "outbox_seq": seq, "published": published}


def instant_text(value: Any) -> str:
    """An instant of a receipt as every instant ficha answers: UTC, microseconds, Z
    (older receipts were completed as ``…+00:00``; PostgreSQL gives datetimes)."""
    moment = value if isinstance(value, datetime) else parse_utc_iso(str(value))
    return utc_iso(moment)


def _receipt(views: ViewDatabase, row: dict[str, Any]) -> dict[str, Any]:
    receipt = dict(row)
    for key in ("requested_at", "erased_at", "completed_at"):
        if receipt.get(key) is not None:
            receipt[key] = instant_text(receipt[key])
    receipt["version"] = int(receipt["version"])
    receipt["purged"] = json.loads(row["purged"]) if row.get("purged") else None
    receipt["projections"] = confirmations(views, row["contact_id"], receipt["version"])
    receipt["contact_erased"] = outbound_state(views, row["contact_id"], receipt["version"])
    receipt["complete"] = row.get("completed_at") is not None
    return receipt


# ------------------------------------------------------------------------ subject access


async def subject_access(store: ContactStore, views: ViewDatabase, identity: ContactIdentity,
                         tenant: str, email: str, js: JetStreamContext | None = None
                         ) -> dict[str, Any]:
    """Everything ficha holds about one person, as JSON-ready data.

    Raises NotHeld if ficha holds nothing about them (unknown, or erased and not heard of
    since). ``js`` adds the dead letters that name them (a scan of FICHA_DLQ)."""
    import asyncio

    from projections.audience_queries import NotFound, explain
    from projections.queries import get_card
    from services.stream_purge import dead_letters_of

    address = normalise_email(email)
    contact_id = identity.contact_id(tenant, address)
    events = await asyncio.to_thread(store.select_events, contact_id)
    contact: Any = None
    for event in events:
        contact = event.mutate(contact)
    if contact is None or contact.is_erased:
        erased = "" if contact is None else " (erased)"
        raise NotHeld(f"ficha holds no personal data about {address} in tenant "
                      f"{tenant}{erased}")
    card = await asyncio.to_thread(get_card, views, tenant, address)
    try:
        segments = await asyncio.to_thread(explain, views, tenant, address)
    except NotFound:
        segments = None
    ledger, facts = await asyncio.to_thread(_audience_rows, views, contact_id)
    letters = [] if js is None else await dead_letters_of(js, identity, tenant, contact_id)
    return {
        "tenant": tenant,
        "email": address,
        "contact_id": contact_id.hex,
        "exported_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "card": card,
        "aggregate": _plain(contact.card()),
        "consent_ledger": ledger,
        "segments": None if segments is None else segments["segments"],
        "audience": None if facts is None else {
            "engagement": facts["engagement"], "engagement_since": facts["engagement_since"],
            "rfm": None if facts["rfm"] is None else json.loads(facts["rfm"]),
            "facts": json.loads(facts["doc"])},
        "events": [_event(e) for e in events],
        "dead_letters": letters,
        "erasures": await asyncio.to_thread(erasure_receipts, store, views,
                                            contact_id=contact_id),
    }


def _audience_rows(views: ViewDatabase, contact_id: UUID
                   ) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """The contact's consent ledger and audience facts row."""
    with views.reading() as cur:
        cur.execute("SELECT channel, occurred_at, event_id, granted, source, recorded_at "
                    "FROM consent_ledger WHERE contact_id = ? ORDER BY channel, occurred_at, "
                    "event_id", (contact_id.hex,))
        ledger = [{**r, "granted": bool(r["granted"])} for r in cur.fetchall()]
        cur.execute("SELECT engagement, engagement_since, rfm, doc FROM audience_facts "
                    "WHERE contact_id = ?", (contact_id.hex,))
        return ledger, cur.fetchone()


def _event(event: Any) -> dict[str, Any]:
    data = {key: value for key, value in vars(event).items() if key != "originator_id"}
    data["type"] = type(event).__qualname__
    return _plain(data)


def _plain(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


__all__ = ["NotHeld", "erasure_receipt", "erasure_receipts", "request_erasure",
           "subject_access"]
