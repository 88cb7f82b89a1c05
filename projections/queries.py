"""Read-side queries on the client list and the timeline (plain SQL, both backends)."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from typing import Any

from projections.contacts import CONSENT_CHANNELS, CONTACT_TYPES, TIMELINE_TYPES
from projections.db import ViewDatabase
from projections.json_rows import AnswerColumns, plain
from projections.sql_catalog import Dialect, tag_spellings
from services.domain.contact import tag_key
from services.domain.stamps import parse_utc_iso, utc_iso
from services.limits import PAGE_LIMIT_MAX


class QueryError(ValueError):
    """A filter or cursor the caller gave is malformed; the message says how, and
    ``field`` names the parameter to blame (as the API and the CLI call it)."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


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
    search: str | None = None  # a prefix of the email, the first name or the last name


LIST_COLUMNS = (
    "contact_id, email, first_name, last_name, phone, language, country, city, "
    "contact_type, lead_status, member_status, consent_email, tags, first_seen_at, "
    "last_activity_at, forms_count, bookings_count, purchases_count"
)
_TYPES = dict(CONTACT_TYPES)
LIST_TYPES_OF_CONTACT = tuple((c.strip(), _TYPES[c.strip()]) for c in LIST_COLUMNS.split(","))
LIST_TYPES = (("list_id", "text"), ("state", "text"), ("changed_at", "timestamptz"))
TIMELINE_ENTRY_TYPES = tuple((c, t) for c, t in TIMELINE_TYPES
                             if c not in ("tenant", "contact_id"))


@cache
def _columns(pg: bool, alias: str, columns: tuple[tuple[str, str], ...]) -> AnswerColumns:
    return AnswerColumns(pg, alias, columns)


def _ts(db: ViewDatabase, value: datetime) -> Any:
    """An instant as the read models store it: timestamptz, or utc_iso text on SQLite."""
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
    # Text filters are trimmed, as the search is: " es" is "es".
    language = (f.language or "").strip().lower()
    if language:
        clauses.append("LOWER(c.language) = ?" if "-" in language else "c.language_base = ?")
        params.append(language)
    country = (f.country or "").strip().upper()
    if country:
        clauses.append("c.country = ?")
        params.append(country)
    for channel, granted in ((f.consent, True), (f.no_consent, False)):
        if channel is None:
            continue
        if channel not in CONSENT_CHANNELS:
            raise QueryError(
                f"unknown consent channel {channel!r}: use one of {', '.join(CONSENT_CHANNELS)}",
                "consent" if granted else "no_consent")
        column = f"c.consent_{channel}"
        if granted:
            clauses.append(f"{column} = ?")
            params.append(True if db.is_postgres else 1)
        else:
            clauses.append(f"({column} IS NULL OR {column} = ?)")
            params.append(False if db.is_postgres else 0)
    if f.tag and f.tag.strip():
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
    if f.search and f.search.strip():
        prefix = f.search.strip().lower()
        ranges = [f"{column} >= ? AND {column} < ?" for column in
                  ("c.email", "LOWER(c.first_name)", "LOWER(c.last_name)")]
        clauses.append("((" + ") OR (".join(ranges) + "))")
        params.extend([prefix, prefix + "\uffff"] * 3)
    return clauses, params


# Sort keys of the client list: never NULL, so that a (key, contact_id) cursor is total.
# Each has an index (projections/contacts.py) that serves it with the tenant.
SORT_KEYS = {
    "first_seen_at": "c.first_seen_at",
    "last_activity_at": "COALESCE(c.last_activity_at, c.first_seen_at)",
    "email": "c.email",
    "name": "LOWER(COALESCE(c.last_name, '') || ' ' || COALESCE(c.first_name, ''))",
}
TIME_SORTS = ("first_seen_at", "last_activity_at")


def parse_sort(text: str) -> tuple[str, bool]:
    """``first_seen_at`` (ascending) or ``-first_seen_at`` (descending) → (key, descending)."""
    descending = text.startswith("-")
    key = text[1:] if descending else text
    if key not in SORT_KEYS:
        choices = ", ".join(sorted(SORT_KEYS))
        raise QueryError(f"cannot sort by {key!r}: sort by one of {choices}, "
                         "with a leading - for descending", "sort")
    return key, descending


def encode_cursor(sort: str, value: Any, contact_id: str) -> str:
    shown = utc_iso(value) if isinstance(value, datetime) else value
    raw = json.dumps([sort, shown, contact_id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


_FOREIGN_CURSOR = ("the cursor is not one this server gave out for this sort; start "
                   "without it, then pass back the next_cursor of the answer before")


def _cursor_text(value: Any) -> str:
    """A text of a cursor as the database can take it (no NUL, valid UTF-8), else
    ValueError."""
    if not isinstance(value, str) or "\x00" in value:
        raise ValueError
    value.encode()  # a lone surrogate cannot be sent to the database
    return value


def _cursor_instant(value: Any) -> datetime:
    """The instant a cursor holds (as ``encode_cursor`` writes it), else ValueError."""
    moment = parse_utc_iso(_cursor_text(value))
    if moment.tzinfo is None:
        raise ValueError
    utc_iso(moment)  # an instant out of range once in UTC raises OverflowError
    return moment


def decode_cursor(cursor: str, sort: str, *, instant: bool = False,
                  contact: bool = True) -> tuple[Any, str]:
    """The (value, id) a cursor of this sort holds, checked: the value is a datetime if
    ``instant`` (a time sort or the timeline), else a text; the id a contact id if
    ``contact`` (else any text: the timeline's event id). Anything else, however it was
    made, is a QueryError: a cursor is the server's, never the caller's to write."""
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        decoded = json.loads(base64.urlsafe_b64decode(padded))
        if not isinstance(decoded, list) or len(decoded) != 3 or decoded[0] != sort:
            raise ValueError
        _, value, cid = decoded
        checked = _cursor_instant(value) if instant else _cursor_text(value)
        if contact and not is_contact_id(_cursor_text(cid)):
            raise ValueError
        return checked, _cursor_text(cid)
    except (ValueError, TypeError, OverflowError, UnicodeError, RecursionError):
        raise QueryError(_FOREIGN_CURSOR, "cursor") from None


def member_cursor(cursor: str | None) -> str:
    """The contact id a segment members' cursor is (the last member of the page before;
    "" for the first page), checked like every cursor."""
    if cursor and not is_contact_id(cursor):
        raise QueryError(_FOREIGN_CURSOR, "cursor")
    return cursor or ""


def _check_limit(limit: int) -> None:
    if not 1 <= limit <= PAGE_LIMIT_MAX:
        raise QueryError(f"limit must be between 1 and {PAGE_LIMIT_MAX}", "limit")


def list_page(
    db: ViewDatabase, f: ContactFilter, *, limit: int = 50, cursor: str | None = None,
    sort: str = "-first_seen_at",
) -> tuple[list[dict[str, Any]], str | None]:
    """One page of the client list, keyset-paginated: rows ready to encode (their JSON
    columns embedded as selected: ``projections.json_rows``) and the next page's cursor.

    ``sort`` is a key of SORT_KEYS, descending with a leading ``-`` (default: newest
    first contact first); ties are broken by contact id in the same direction.
    """
    _check_limit(limit)
    key, descending = parse_sort(sort)
    expression = SORT_KEYS[key]
    clauses, params = _where(db, f)
    if cursor:
        value, cid = decode_cursor(cursor, sort, instant=key in TIME_SORTS)
        value_param = _ts(db, value) if key in TIME_SORTS else value
        beyond = "<" if descending else ">"
        clauses.append(f"({expression} {beyond} ? OR ({expression} = ? "
                       f"AND c.contact_id {beyond} ?))")
        params.extend([value_param, value_param, cid])
    direction = "DESC" if descending else "ASC"
    columns = _columns(db.is_postgres, "c", LIST_TYPES_OF_CONTACT)
    statement = (
        f"SELECT {columns.sql}, {expression} AS sort_key "
        f"FROM contacts c WHERE {' AND '.join(clauses)} "
        f"ORDER BY {expression} {direction}, c.contact_id {direction} LIMIT ?"
    )
    params.append(limit + 1)
    with db.reading() as cur:
        cur.execute(statement, params)
        rows = cur.fetchall()
    next_cursor = None
    if len(rows) > limit:
        rows = rows[:limit]
        next_cursor = encode_cursor(sort, rows[-1]["sort_key"], rows[-1]["contact_id"])
    for row in rows:
        del row["sort_key"]
        columns.finish(row)
    return rows, next_cursor


def list_contacts(
    db: ViewDatabase, f: ContactFilter, *, limit: int = 50, cursor: str | None = None,
    sort: str = "-first_seen_at",
) -> tuple[list[dict[str, Any]], str | None]:
    """``list_page`` with its embedded JSON read."""
    rows, next_cursor = list_page(db, f, limit=limit, cursor=cursor, sort=sort)
    return plain(rows), next_cursor


def count_contacts(db: ViewDatabase, f: ContactFilter) -> int:
    clauses, params = _where(db, f)
    with db.reading() as cur:
        cur.execute(f"SELECT COUNT(*) AS n FROM contacts c WHERE {' AND '.join(clauses)}", params)
        row = cur.fetchone()
    return int(row["n"]) if row else 0


def is_contact_id(ref: str) -> bool:
    """A contact id is 32 hex digits; anything with an @ is an email."""
    return len(ref) == 32 and all(ch in "0123456789abcdef" for ch in ref)


def card(db: ViewDatabase, tenant: str, ref: str, *, timeline_limit: int | None = None
         ) -> dict[str, Any] | None:
    """The whole card of one contact, by email or contact id, with its lists and
    timeline (the newest ``timeline_limit`` entries, oldest first), ready to encode (see
    ``list_page``); None if unknown."""
    column, value = ("contact_id", ref) if is_contact_id(ref) else ("email", ref.strip().lower())
    pg = db.is_postgres
    columns = _columns(pg, "c", CONTACT_TYPES)
    lists = _columns(pg, "l", LIST_TYPES)
    with db.reading() as cur:
        cur.execute(f"SELECT {columns.sql} FROM contacts c "
                    f"WHERE tenant = ? AND {column} = ?", (tenant, value))
        row = cur.fetchone()
        if row is None:
            return None
        found = columns.finish(row)
        cur.execute(
            f"SELECT {lists.sql} FROM contact_lists l "
            "WHERE tenant = ? AND contact_id = ? ORDER BY list_id",
            (tenant, found["contact_id"]),
        )
        found["lists"] = cur.fetchall()
        found["timeline"] = _timeline(cur, pg, tenant, found["contact_id"], timeline_limit)
    return found


def get_card(db: ViewDatabase, tenant: str, ref: str, *, timeline_limit: int | None = None
             ) -> dict[str, Any] | None:
    """``card`` with its embedded JSON read."""
    found = card(db, tenant, ref, timeline_limit=timeline_limit)
    return None if found is None else dict(plain(found))


def _timeline(cur: Any, pg: bool, tenant: str, contact_id: str, limit: int | None,
              before: tuple[Any, str] | None = None) -> list[dict[str, Any]]:
    """Timeline entries oldest first, ready to encode."""
    params: list[Any] = [tenant, contact_id]
    page = ""
    if before is not None:
        page = "AND (occurred_at < ? OR (occurred_at = ? AND event_id < ?)) "
        params += [before[0], before[0], before[1]]
    columns = _columns(pg, "t", TIMELINE_ENTRY_TYPES)
    cur.execute(
        f"SELECT {columns.sql} FROM timeline t WHERE tenant = ? AND contact_id = ? {page}"
        "ORDER BY t.occurred_at DESC, t.event_id DESC"
        + (" LIMIT ?" if limit is not None else ""),
        params + ([limit] if limit is not None else []),
    )
    rows: list[dict[str, Any]] = cur.fetchall()
    rows.reverse()
    return [columns.finish(row) for row in rows]


def timeline_page(db: ViewDatabase, tenant: str, contact_id: str, *, limit: int = 100,
                  before: str | None = None) -> tuple[list[dict[str, Any]], str | None]:
    """Newest first in pages: the entries before the cursor ``before`` (oldest first in
    the page, ready to encode) and the cursor of the next, older page."""
    _check_limit(limit)
    bound_param = None
    if before:
        moment, event_id = decode_cursor(before, "timeline", instant=True,
                                        contact=False)
        bound_param = (_ts(db, moment), event_id)
    with db.reading() as cur:
        entries = _timeline(cur, db.is_postgres, tenant, contact_id, limit + 1, bound_param)
    cursor = None
    if len(entries) > limit:
        entries = entries[1:]
        cursor = encode_cursor("timeline", entries[0]["occurred_at"], entries[0]["event_id"])
    return entries, cursor


def tag_counts(db: ViewDatabase, tenant: str) -> list[dict[str, Any]]:
    """Each tag with how many contacts have it, most used first (then by tag in code-point
    order).

    Tags compare without case, so contacts may carry a tag in different spellings; the
    label shown is the one the view analytics_tags shows, by the same statement
    (``sql_catalog.tag_spellings``): the spelling most contacts carry.
    """
    dialect = Dialect(db.is_postgres)
    with db.reading() as cur:
        cur.execute(
            f"SELECT tag, label, tag_contacts FROM ({tag_spellings(dialect, one_tenant=True)})"
            f" s WHERE choice = 1 ORDER BY tag_contacts DESC, {dialect.codepoints('tag')}",
            (tenant,),
        )
        return [{"tag": r["tag"], "label": r["label"], "contacts": int(r["tag_contacts"])}
                for r in cur.fetchall()]
