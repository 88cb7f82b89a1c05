"""Read-side queries on the client list and the timeline (plain SQL, both backends)."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from projections.contacts import CONSENT_CHANNELS
from projections.db import ViewDatabase
from services.domain.contact import tag_key
from services.domain.stamps import utc_iso


class QueryError(ValueError):
    """A filter or cursor the caller gave is malformed; the message says how."""


@dataclass(frozen=True)
class ContactFilter:
    tenant: str
    language: str | None = None
    country: str | None = None
    tag: str | None = None
    consent: str | None = None  # a channel that must be granted
    no_consent: str | None = None  # a channel that must not be granted
    first_seen_from: datetime | None = None
    first_seen_to: datetime | None = None
    email_prefix: str | None = None


LIST_COLUMNS = (
    "contact_id, email, first_name, last_name, phone, language, country, city, "
    "contact_type, lead_status, member_status, consent_email, tags, first_seen_at, "
    "last_activity_at, forms_count, bookings_count, purchases_count"
)


def _ts(db: ViewDatabase, value: datetime) -> Any:
    return value if db.is_postgres else utc_iso(value)


def contact_where(db: ViewDatabase, f: ContactFilter) -> tuple[list[str], list[Any]]:
    """The filter as SQL conditions on ``contacts c`` (``?`` placeholders) and their
    parameters: the same WHERE for the client list, its count and the exports.

    Raises QueryError for a filter that cannot be answered (an unknown consent channel).
    """
    return _where(db, f)


def _where(db: ViewDatabase, f: ContactFilter) -> tuple[list[str], list[Any]]:
    clauses = ["c.tenant = ?"]
    params: list[Any] = [f.tenant]
    if f.language:
        if "-" in f.language:
            clauses.append("LOWER(c.language) = ?")
            params.append(f.language.lower())
        else:
            clauses.append("c.language_base = ?")
            params.append(f.language.lower())
    if f.country:
        clauses.append("c.country = ?")
        params.append(f.country.upper())
    for channel, granted in ((f.consent, True), (f.no_consent, False)):
        if channel is None:
            continue
        if channel not in CONSENT_CHANNELS:
            raise QueryError(
                f"unknown consent channel {channel!r}: use one of {', '.join(CONSENT_CHANNELS)}"
            )
        column = f"c.consent_{channel}"
        if granted:
            clauses.append(f"{column} = ?")
            params.append(True if db.is_postgres else 1)
        else:
            clauses.append(f"({column} IS NULL OR {column} = ?)")
            params.append(False if db.is_postgres else 0)
    if f.tag:
        clauses.append(
            "EXISTS (SELECT 1 FROM contact_tags t WHERE t.tenant = c.tenant "
            "AND t.tag = ? AND t.contact_id = c.contact_id)"
        )
        params.append(tag_key(f.tag))
    if f.first_seen_from:
        clauses.append("c.first_seen_at >= ?")
        params.append(_ts(db, f.first_seen_from))
    if f.first_seen_to:
        clauses.append("c.first_seen_at < ?")
        params.append(_ts(db, f.first_seen_to))
    if f.email_prefix:
        clauses.append("c.email >= ? AND c.email < ?")
        prefix = f.email_prefix.strip().lower()
        params.extend([prefix, prefix + "\uffff"])
    return clauses, params


def encode_cursor(first_seen_at: Any, contact_id: str) -> str:
    at = first_seen_at if isinstance(first_seen_at, str) else utc_iso(first_seen_at)
    raw = json.dumps([at, contact_id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[str, str]:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        at, cid = json.loads(base64.urlsafe_b64decode(padded))
        return str(at), str(cid)
    except Exception:  # noqa: BLE001
        raise QueryError("the cursor is not one this server gave out; start without it") from None


def list_contacts(
    db: ViewDatabase, f: ContactFilter, *, limit: int = 50, cursor: str | None = None
) -> tuple[list[dict[str, Any]], str | None]:
    """Newest first (by first contact), keyset-paginated; returns rows and the next cursor."""
    if not 1 <= limit <= 1000:
        raise QueryError("limit must be between 1 and 1000")
    clauses, params = _where(db, f)
    if cursor:
        at, cid = decode_cursor(cursor)
        at_param: Any = at
        if db.is_postgres:
            at_param = datetime.fromisoformat(at.replace("Z", "+00:00"))
        clauses.append("(c.first_seen_at < ? OR (c.first_seen_at = ? AND c.contact_id < ?))")
        params.extend([at_param, at_param, cid])
    statement = (
        f"SELECT {', '.join('c.' + c.strip() for c in LIST_COLUMNS.split(','))} "
        f"FROM contacts c WHERE {' AND '.join(clauses)} "
        "ORDER BY c.first_seen_at DESC, c.contact_id DESC LIMIT ?"
    )
    params.append(limit + 1)
    with db.reading() as cur:
        cur.execute(statement, params)
        rows = [_clean(row) for row in cur.fetchall()]
    next_cursor = None
    if len(rows) > limit:
        rows = rows[:limit]
        last = rows[-1]
        next_cursor = encode_cursor(last["first_seen_at"], last["contact_id"])
    return rows, next_cursor


def count_contacts(db: ViewDatabase, f: ContactFilter) -> int:
    clauses, params = _where(db, f)
    with db.reading() as cur:
        cur.execute(f"SELECT COUNT(*) AS n FROM contacts c WHERE {' AND '.join(clauses)}", params)
        row = cur.fetchone()
    return int(row["n"]) if row else 0


def get_card(db: ViewDatabase, tenant: str, email: str) -> dict[str, Any] | None:
    """The whole card of one contact and its timeline, or None if unknown."""
    with db.reading() as cur:
        cur.execute("SELECT * FROM contacts WHERE tenant = ? AND email = ?",
                    (tenant, email.strip().lower()))
        row = cur.fetchone()
        if row is None:
            return None
        card = _clean(row)
        cur.execute(
            "SELECT list_id, state, changed_at FROM contact_lists "
            "WHERE tenant = ? AND contact_id = ? ORDER BY list_id",
            (tenant, card["contact_id"]),
        )
        card["lists"] = [_clean(r) for r in cur.fetchall()]
        cur.execute(
            "SELECT occurred_at, event_id, type, kind, source, summary, data FROM timeline "
            "WHERE tenant = ? AND contact_id = ? ORDER BY occurred_at, event_id",
            (tenant, card["contact_id"]),
        )
        card["timeline"] = [_clean(r) for r in cur.fetchall()]
    return card


def tenant_exists(db: ViewDatabase, tenant: str) -> bool:
    with db.reading() as cur:
        cur.execute("SELECT 1 AS one FROM contacts WHERE tenant = ? LIMIT 1", (tenant,))
        return cur.fetchone() is not None


def _clean(row: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in row.items():
        if key in ("tags", "properties", "data") and isinstance(value, str | bytes):
            value = json.loads(value)
        elif isinstance(value, datetime):
            value = utc_iso(value)
        elif key.startswith("consent_") and isinstance(value, int) and not isinstance(value, bool):
            value = bool(value)
        out[key] = value
    return out


def tag_counts(db: ViewDatabase, tenant: str) -> list[dict[str, Any]]:
    """Each tag with how many contacts have it (the label as most recently written)."""
    with db.reading() as cur:
        cur.execute(
            "SELECT tag, MAX(label) AS label, COUNT(*) AS contacts FROM contact_tags "
            "WHERE tenant = ? GROUP BY tag ORDER BY contacts DESC, tag",
            (tenant,),
        )
        return [{"tag": r["tag"], "label": r["label"], "contacts": int(r["contacts"])}
                for r in cur.fetchall()]
