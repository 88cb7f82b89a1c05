"""Rows selected for answers (``projections.json_rows``) read back as the values that were
stored, on both backends: text of any kind, nulls, booleans, stored JSON and timestamps."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from projections.contacts import CONTACT_TYPES, TIMELINE_TYPES, ContactsProjection
from projections.db import ViewDatabase, bulk_insert
from projections.json_rows import plain
from projections.queries import LIST_COLUMNS, ContactFilter, get_card, list_contacts, timeline_page
from services.config import Settings
from services.domain.stamps import utc_iso

TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
               max_size=20)
MAYBE_TEXT = st.none() | TEXT
INSTANT = st.datetimes(min_value=datetime(1900, 1, 1), max_value=datetime(2200, 1, 1),
                       timezones=st.just(UTC))
# (-0.0 made 0.0: PostgreSQL's numbers have no negative zero.)
SCALAR = st.none() | st.booleans() | st.integers(-(2**53), 2**53) | TEXT | st.floats(
    -1e6, 1e6, allow_nan=False).map(lambda x: x + 0.0)
JSON = st.recursive(SCALAR, lambda inner: st.lists(inner, max_size=3)
                    | st.dictionaries(TEXT, inner, max_size=3), max_leaves=8)

ids = itertools.count()


def contact_values(data: st.DataObject) -> dict[str, Any]:
    """A value for every column of a contacts row, as the read model holds them."""
    n = next(ids)
    values: dict[str, Any] = {"tenant": "t", "contact_id": f"{n:032x}",
                              "email": f"c{n}@example.com"}
    for column, pg_type in CONTACT_TYPES[3:]:
        if pg_type == "boolean":
            values[column] = data.draw(st.none() | st.booleans(), column)
        elif column == "tags":
            values[column] = data.draw(st.lists(TEXT, max_size=4), column)
        elif pg_type == "jsonb":
            values[column] = data.draw(st.dictionaries(TEXT, JSON, max_size=4), column)
        elif pg_type == "timestamptz":
            values[column] = data.draw(st.none() | INSTANT, column)
        elif pg_type == "integer":
            values[column] = data.draw(st.integers(0, 2**31 - 1), column)
        else:
            values[column] = data.draw(MAYBE_TEXT, column)
    values["first_seen_at"] = data.draw(INSTANT, "first_seen_at")  # the list's sort key
    return values


def stored(value: Any, pg_type: str, is_postgres: bool) -> Any:
    """A value as a column of ``pg_type`` takes it (see ContactsProjection._write_rows)."""
    if value is None:
        return None
    if pg_type == "timestamptz":
        return utc_iso(value)
    if pg_type == "jsonb":
        return msgspec.json.encode(value).decode()
    if pg_type == "boolean" and not is_postgres:
        return int(value)
    return value


def same(a: Any, b: Any) -> bool:
    """Equal as JSON: true is not 1."""
    return msgspec.json.encode(a, order="sorted") == msgspec.json.encode(b, order="sorted")


def shown(value: Any, pg_type: str) -> Any:
    """A value as an answer shows it."""
    return utc_iso(value) if pg_type == "timestamptz" and value is not None else value


@pytest.fixture
def db(settings: Settings) -> ViewDatabase:
    views = ViewDatabase(settings)
    ContactsProjection().create_tables(views)
    return views


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_cards_lists_and_timelines_read_back_what_was_stored(db: ViewDatabase,
                                                             data: st.DataObject) -> None:
    pg = db.is_postgres
    contact = contact_values(data)
    entries = [{"occurred_at": data.draw(INSTANT), "event_id": f"e{i}", "type": "note",
                "kind": data.draw(TEXT), "source": "test", "summary": data.draw(TEXT),
                "data": data.draw(st.dictionaries(TEXT, JSON, max_size=3))}
               for i in range(data.draw(st.integers(0, 4)))]
    changed_at = data.draw(INSTANT)
    with db.transaction() as cur:
        bulk_insert(cur, "contacts", CONTACT_TYPES,
                    [[stored(contact[c], t, pg) for c, t in CONTACT_TYPES]], pg)
        bulk_insert(cur, "timeline", TIMELINE_TYPES,
                    [[stored({**contact, **e}[c], t, pg) for c, t in TIMELINE_TYPES]
                     for e in entries], pg)
        bulk_insert(cur, "contact_lists", (("tenant", "text"), ("contact_id", "text"),
                                           ("list_id", "text"), ("state", "text"),
                                           ("changed_at", "timestamptz")),
                    [["t", contact["contact_id"], "news", "subscribed", utc_iso(changed_at)]],
                    pg)

    types = dict(CONTACT_TYPES)
    timeline = [{c: shown(e[c], t) for c, t in TIMELINE_TYPES if c in e}
                for e in sorted(entries, key=lambda e: (e["occurred_at"], e["event_id"]))]
    card = get_card(db, "t", contact["contact_id"])
    assert same(card, {**{c: shown(v, types[c]) for c, v in contact.items()},
                    "lists": [{"list_id": "news", "state": "subscribed",
                               "changed_at": utc_iso(changed_at)}],
                    "timeline": timeline})

    rows, _ = list_contacts(db, ContactFilter(tenant="t", email_prefix=contact["email"]))
    columns = [c.strip() for c in LIST_COLUMNS.split(",")]
    assert same(rows, [{c: shown(contact[c], types[c]) for c in columns}])

    page, _ = timeline_page(db, "t", contact["contact_id"], limit=10)
    assert same(plain(page), timeline)
