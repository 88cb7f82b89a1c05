"""The client list and the timeline: one row per contact, one row per interaction.

Tables (same names and columns on both backends):

* ``contacts``: the card: every profile field, consent per channel, member status,
  properties and tags (JSON), first_seen_at, last_activity_at, and interaction counts;
* ``contact_tags``: one row per (contact, tag), for fast tag filters and counts;
* ``contact_lists``: one row per (contact, list) with its effective state;
* ``timeline``: every inbound event of a contact, ordered by occurred_at then event_id;
* ``contacts_erasures``: this projection's confirmation of each erasure it applied (the
  contact's rows in the four tables above deleted), without personal data.

The fold applies the aggregate's recorded *effective* changes in stream order, so it
needs no stamps; it is a pure function of the events, and a rebuild gives the same rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import msgspec

from contracts.events import CONSENT_CHANNELS
from projections.db import Cursor, ViewDatabase, any_of, bulk_insert
from services.domain.contact import Contact, tag_key
from services.domain.stamps import utc_iso
from services.domain.timeline import ACTIVITY_TYPES

NAME = "contacts"

COUNTED_TYPES = {
    "form_submitted": "forms_count",
    "survey_completed": "surveys_count",
    "booking_made": "bookings_count",
    "purchase_completed": "purchases_count",
}


CARD_COLUMNS = (
    "first_name",
    "last_name",
    "phone",
    "language",
    "country",
    "city",
    "postal_code",
    "contact_type",
    "lead_status",
)

COLUMNS = (
    "tenant",
    "contact_id",
    "email",
    *CARD_COLUMNS,
    "language_base",
    "member_id",
    "member_status",
    *(f"consent_{c}" for c in CONSENT_CHANNELS),
    "properties",
    "tags",
    "first_seen_at",
    "last_activity_at",
    "forms_count",
    "surveys_count",
    "bookings_count",
    "purchases_count",
    "events_count",
    "version",
)


def ddl(is_postgres: bool) -> list[str]:
    ts = "TIMESTAMPTZ" if is_postgres else "TEXT"
    boolean = "BOOLEAN" if is_postgres else "INTEGER"
    json_type = "JSONB" if is_postgres else "TEXT"
    card = ", ".join(f"{c} TEXT" for c in CARD_COLUMNS)
    consent = ", ".join(f"consent_{c} {boolean}" for c in CONSENT_CHANNELS)
    return [
        "CREATE TABLE IF NOT EXISTS contacts ("
        "tenant TEXT NOT NULL, contact_id TEXT NOT NULL, email TEXT NOT NULL, "
        f"{card}, language_base TEXT, member_id TEXT, member_status TEXT, {consent}, "
        f"properties {json_type} NOT NULL, tags {json_type} NOT NULL, "
        f"first_seen_at {ts}, last_activity_at {ts}, "
        "forms_count INTEGER NOT NULL DEFAULT 0, surveys_count INTEGER NOT NULL DEFAULT 0, "
        "bookings_count INTEGER NOT NULL DEFAULT 0, purchases_count INTEGER NOT NULL DEFAULT 0, "
        "events_count INTEGER NOT NULL DEFAULT 0, version INTEGER NOT NULL, "
        # contact_id alone is unique (a keyed hash of tenant and email), and the log's
        # events carry only it: the key must serve a lookup by contact_id alone.
        "PRIMARY KEY (contact_id))",
        "CREATE UNIQUE INDEX IF NOT EXISTS contacts_email ON contacts (tenant, email)",
        "CREATE INDEX IF NOT EXISTS contacts_first_seen "
        "ON contacts (tenant, first_seen_at, contact_id)",
        "CREATE INDEX IF NOT EXISTS contacts_language "
        "ON contacts (tenant, language_base, first_seen_at)",
        "CREATE INDEX IF NOT EXISTS contacts_country ON contacts (tenant, country, first_seen_at)",
        "CREATE INDEX IF NOT EXISTS contacts_consent_email "
        "ON contacts (tenant, consent_email, first_seen_at)",
        # No index on last_activity_at alone: nothing filters by it, and a changed indexed
        # column rules out HOT updates (nearly every event moves it; the sort index below
        # is the one it needs). Dropped where an earlier version made it.
        "DROP INDEX IF EXISTS contacts_last_activity",
        # The client list's other sort keys and its name search (projections/queries.py).
        "CREATE INDEX IF NOT EXISTS contacts_activity_sort ON contacts "
        "(tenant, (COALESCE(last_activity_at, first_seen_at)), contact_id)",
        "CREATE INDEX IF NOT EXISTS contacts_name_sort ON contacts (tenant, "
        "(LOWER(COALESCE(last_name, '') || ' ' || COALESCE(first_name, ''))), contact_id)",
        "CREATE INDEX IF NOT EXISTS contacts_first_name ON contacts (tenant, (LOWER(first_name)))",
        "CREATE INDEX IF NOT EXISTS contacts_last_name ON contacts (tenant, (LOWER(last_name)))",
        "CREATE TABLE IF NOT EXISTS contact_tags ("
        "tenant TEXT NOT NULL, tag TEXT NOT NULL, contact_id TEXT NOT NULL, label TEXT NOT NULL, "
        "PRIMARY KEY (tenant, tag, contact_id))",
        "CREATE INDEX IF NOT EXISTS contact_tags_contact ON contact_tags (tenant, contact_id)",
        "CREATE TABLE IF NOT EXISTS contact_lists ("
        "tenant TEXT NOT NULL, contact_id TEXT NOT NULL, list_id TEXT NOT NULL, "
        f"state TEXT NOT NULL, changed_at {ts} NOT NULL, "
        "PRIMARY KEY (tenant, contact_id, list_id))",
        "CREATE INDEX IF NOT EXISTS contact_lists_list ON contact_lists (tenant, list_id, state)",
        "CREATE TABLE IF NOT EXISTS timeline ("
        "tenant TEXT NOT NULL, contact_id TEXT NOT NULL, "
        f"occurred_at {ts} NOT NULL, event_id TEXT NOT NULL, "
        "type TEXT NOT NULL, kind TEXT NOT NULL, source TEXT NOT NULL, summary TEXT NOT NULL, "
        f"data {json_type} NOT NULL, "
        "PRIMARY KEY (tenant, contact_id, occurred_at, event_id))",
        ERASURES_DDL.format(table=ERASURES_TABLE),
    ]


ERASURES_TABLE = "contacts_erasures"
# The same shape for every projection that holds personal data: its confirmations.
ERASURES_DDL = (
    "CREATE TABLE IF NOT EXISTS {table} (tenant TEXT NOT NULL, contact_id TEXT NOT NULL, "
    "version INTEGER NOT NULL, event_id TEXT NOT NULL, confirmed_at TEXT NOT NULL, "
    "PRIMARY KEY (contact_id, version))"
)
PERSONAL_TABLES = ("timeline", "contact_lists", "contact_tags", "contacts")
TABLES = (*PERSONAL_TABLES, ERASURES_TABLE)


def _pg_type(column: str) -> str:
    """Each contacts column's PostgreSQL type, for bulk writes of arrays."""
    if column.startswith("consent_"):
        return "boolean"
    if column in ("properties", "tags"):
        return "jsonb"
    if column in ("first_seen_at", "last_activity_at"):
        return "timestamptz"
    if column.endswith("_count") or column == "version":
        return "integer"
    return "text"


CONTACT_TYPES = tuple((c, _pg_type(c)) for c in COLUMNS)
TIMELINE_TYPES = (("tenant", "text"), ("contact_id", "text"), ("occurred_at", "timestamptz"),
                  ("event_id", "text"), ("type", "text"), ("kind", "text"),
                  ("source", "text"), ("summary", "text"), ("data", "jsonb"))


class ContactsProjection:
    name = NAME
    # Bumped whenever the tables' layout changes: a read model of another version is
    # dropped and rebuilt from the event store at start-up.
    # 3: indexes for sorting and name search; 4: purchases' totals as money objects;
    # 5: erasure confirmations (decision 0006)
    version = 5
    tables: tuple[str, ...] = TABLES
    erasures_table = ERASURES_TABLE

    def statements(self, is_postgres: bool) -> list[str]:
        """The DDL of this projection's tables and indexes."""
        return ddl(is_postgres)

    def create_tables(self, db: ViewDatabase) -> None:
        with db.transaction() as cur:
            for statement in self.statements(db.is_postgres):
                cur.execute(statement)

    def apply(self, cur: Cursor, events: Sequence[Any], is_postgres: bool) -> None:
        ids = sorted({e.originator_id.hex for e in events})
        rows = self._load(cur, ids, is_postgres)
        tag_changes: dict[tuple[str, str, str], str | None] = {}
        list_changes: dict[tuple[str, str, str], tuple[str, str]] = {}
        timeline: list[tuple[Any, ...]] = []
        erased: list[tuple[str, str, int, str]] = []
        for event in events:
            cid = event.originator_id.hex
            if isinstance(event, Contact.Registered | Contact.Reopened):
                rows[cid] = _new_row(event.tenant, cid, event.email)
                rows[cid]["version"] = event.originator_version
                continue
            if isinstance(event, Contact.Erased):
                # Forget what this page holds of the contact; its stored rows go below.
                rows.pop(cid, None)
                timeline = [t for t in timeline if t[1] != cid]
                for changes in (tag_changes, list_changes):
                    for key in [k for k in changes if k[1] == cid]:
                        del changes[key]
                erased.append((event.tenant, cid, event.originator_version, event.event_id))
                continue
            if not isinstance(event, Contact.Recorded):
                continue  # Redacted (erased before this was read) and other streams' events
            row = rows[cid]
            _apply_recorded(row, event, tag_changes, list_changes)
            entry = event.entry
            timeline.append(
                (
                    row["tenant"],
                    cid,
                    event.occurred_at,
                    event.event_id,
                    event.event_type,
                    entry.get("kind", "other"),
                    event.source,
                    entry.get("summary", ""),
                    _json_text(entry.get("data", {})),
                )
            )
        if erased:
            erase_rows(cur, PERSONAL_TABLES, ERASURES_TABLE, erased, is_postgres)
        self._write_rows(cur, rows, is_postgres)
        removed = [(t, key, c) for (t, c, key), label in sorted(tag_changes.items())
                   if label is None]
        added = [(t, key, c, label) for (t, c, key), label in sorted(tag_changes.items())
                 if label is not None]
        if removed:
            cur.executemany(
                "DELETE FROM contact_tags WHERE tenant = ? AND tag = ? AND contact_id = ?",
                removed,
            )
        bulk_insert(cur, "contact_tags", (("tenant", "text"), ("tag", "text"),
                                          ("contact_id", "text"), ("label", "text")),
                    added, is_postgres,
                    conflict="ON CONFLICT (tenant, tag, contact_id) "
                    "DO UPDATE SET label = excluded.label")
        bulk_insert(cur, "contact_lists", (("tenant", "text"), ("contact_id", "text"),
                                           ("list_id", "text"), ("state", "text"),
                                           ("changed_at", "timestamptz")),
                    [(t, c, lid, s, at) for (t, c, lid), (s, at) in sorted(list_changes.items())],
                    is_postgres,
                    conflict="ON CONFLICT (tenant, contact_id, list_id) DO UPDATE SET "
                    "state = excluded.state, changed_at = excluded.changed_at")
        bulk_insert(cur, "timeline", TIMELINE_TYPES, timeline, is_postgres,
                    conflict="ON CONFLICT (tenant, contact_id, occurred_at, event_id) "
                    "DO NOTHING")

    def _load(self, cur: Cursor, ids: list[str], is_postgres: bool) -> dict[str, dict[str, Any]]:
        rows: dict[str, dict[str, Any]] = {}
        for condition, params in any_of("contact_id", ids, is_postgres):
            cur.execute(f"SELECT {', '.join(COLUMNS)} FROM contacts WHERE {condition}", params)
            for row in cur.fetchall():
                row["properties"] = _json(row["properties"])
                row["tags"] = {tag_key(label): label for label in _json(row["tags"])}
                for column in ("first_seen_at", "last_activity_at"):
                    row[column] = _iso(row[column])
                rows[row["contact_id"]] = row
        return rows

    def _write_rows(self, cur: Cursor, rows: dict[str, dict[str, Any]], is_postgres: bool) -> None:
        if not rows:
            return
        updates = ", ".join(f"{c} = excluded.{c}" for c in COLUMNS[2:])
        params = []
        for cid in sorted(rows):
            row = rows[cid]
            values: list[Any] = []
            for column in COLUMNS:
                value: Any = row.get(column)
                if column == "tags":
                    value = _json_text(sorted(value.values()))
                elif column == "properties":
                    value = _json_text(value)
                elif column.startswith("consent_") and value is not None and not is_postgres:
                    value = int(value)
                values.append(value)
            params.append(values)
        bulk_insert(cur, "contacts", CONTACT_TYPES, params, is_postgres,
                    conflict=f"ON CONFLICT (contact_id) DO UPDATE SET {updates}")


def erase_rows(cur: Cursor, tables: Sequence[str], confirmations: str,
               erased: Sequence[tuple[str, str, int, str]], is_postgres: bool) -> None:
    """Delete erased contacts' rows from ``tables`` and confirm each erasure.

    ``erased`` holds (tenant, contact_id, version of the Erased event, request event id);
    the confirmation keeps those and when this projection applied it, nothing personal.
    """
    ids = sorted({cid for _, cid, _, _ in erased})
    for table in tables:
        for condition, params in any_of("contact_id", ids, is_postgres):
            cur.execute(f"DELETE FROM {table} WHERE {condition}", params)
    now = utc_iso(datetime.now(UTC))
    cur.executemany(
        f"INSERT INTO {confirmations} (tenant, contact_id, version, event_id, confirmed_at) "
        "VALUES (?,?,?,?,?) ON CONFLICT (contact_id, version) DO NOTHING",
        [(t, cid, v, eid, now) for t, cid, v, eid in erased],
    )


def _new_row(tenant: str, contact_id: str, email: str) -> dict[str, Any]:
    row: dict[str, Any] = {column: None for column in COLUMNS}
    row.update(
        tenant=tenant,
        contact_id=contact_id,
        email=email,
        properties={},
        tags={},
        forms_count=0,
        surveys_count=0,
        bookings_count=0,
        purchases_count=0,
        events_count=0,
    )
    return row


def _apply_recorded(
    row: dict[str, Any],
    event: Contact.Recorded,
    tag_changes: dict[tuple[str, str, str], str | None],
    list_changes: dict[tuple[str, str, str], tuple[str, str]],
) -> None:
    changes = event.changes
    tenant, cid = row["tenant"], row["contact_id"]
    for name, value in changes.get("fields", {}).items():
        row[name] = value
        if name == "language":
            row["language_base"] = value.split("-")[0].lower() if value else None
    properties = dict(row["properties"])
    for name, value in changes.get("properties", {}).items():
        if value is None:
            properties.pop(name, None)
        else:
            properties[name] = value
    row["properties"] = properties
    tags = dict(row["tags"])
    for key, (label, present) in changes.get("tags", {}).items():
        if present:
            tags[key] = label
            tag_changes[(tenant, cid, key)] = label
        else:
            tags.pop(key, None)
            tag_changes[(tenant, cid, key)] = None
    row["tags"] = tags
    for channel, granted in changes.get("consent", {}).items():
        row[f"consent_{channel}"] = bool(granted)
    for list_id, (state, since) in changes.get("lists", {}).items():
        list_changes[(tenant, cid, list_id)] = (state, since)
    member = changes.get("member")
    if member is not None:
        row["member_id"] = member["member_id"]
        row["member_status"] = member["status"]
    if row["first_seen_at"] is None or event.occurred_at < row["first_seen_at"]:
        row["first_seen_at"] = event.occurred_at
    is_activity = event.event_type in ACTIVITY_TYPES and not event.entry.get("automatic")
    if is_activity and (
        row["last_activity_at"] is None or event.occurred_at > row["last_activity_at"]
    ):
        row["last_activity_at"] = event.occurred_at
    counter = COUNTED_TYPES.get(event.event_type)
    if counter:
        row[counter] += 1
    row["events_count"] += 1
    row["version"] = event.originator_version


def _json(value: Any) -> Any:
    return msgspec.json.decode(value) if isinstance(value, str | bytes) else value


def _json_text(value: Any) -> str:
    """Compact JSON with sorted keys: the same text for the same value, on rebuild too."""
    return msgspec.json.encode(value, order="sorted").decode()


def _iso(value: Any) -> str | None:
    """Timestamps as the fixed-width UTC strings the domain uses (both backends)."""
    if value is None or isinstance(value, str):
        return value
    return utc_iso(value)
