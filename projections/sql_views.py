"""Create and drop the analytics views of a projection, on both backends.

``install`` runs whenever a projection's tables are created, reset or replaced (the
runner's set-up, a layout-version reset, ``ficha projections rebuild`` and ``replay``),
inside the transaction that changed them where there is one, so that readers never see
a view missing or pointing at old tables. It changes only what differs: each view's
statement is recorded in ``ficha_sql_views`` and a view is recreated only when its
statement changed or its tables were dropped (``drop`` forgets them). On PostgreSQL it
then applies ``sql_access.secure``: row-level security on the tables, and the views'
owner and readers' grants, which a recreated view has lost.

Views live only next to the live tables: a side-by-side copy being built for a replay
(a ViewDatabase with a namespace) gets none.
"""

from __future__ import annotations

from collections.abc import Sequence

from projections import sql_access
from projections.db import Cursor, ViewDatabase
from projections.sql_catalog import View, views_of

VIEWS_TABLE = "ficha_sql_views"


def _ensure_table(cur: Cursor) -> None:
    cur.execute(f"CREATE TABLE IF NOT EXISTS {VIEWS_TABLE} ("
                "name TEXT PRIMARY KEY, statement TEXT NOT NULL)")


def _exists(cur: Cursor, db: ViewDatabase, name: str) -> bool:
    if db.is_postgres:
        cur.execute("SELECT 1 FROM pg_catalog.pg_class WHERE relname = ? AND relkind = 'v' "
                    "AND relnamespace = CAST(current_schema() AS regnamespace)", (name,))
    else:
        cur.execute("SELECT 1 FROM sqlite_master WHERE type = 'view' AND name = ?", (name,))
    return cur.fetchone() is not None


def drop(cur: Cursor, db: ViewDatabase, projection: str) -> None:
    """Drop a projection's views (before its tables are dropped or replaced)."""
    views = views_of(projection)
    if db.namespace or not views:
        return
    _ensure_table(cur)
    for view in views:
        cur.execute(f"DROP VIEW IF EXISTS {view.name}")
        cur.execute(f"DELETE FROM {VIEWS_TABLE} WHERE name = ?", (view.name,))


def install(cur: Cursor, db: ViewDatabase, projection: str, tables: Sequence[str]) -> None:
    """Create or refresh a projection's views (and on PostgreSQL their security)."""
    views = views_of(projection)
    if db.namespace:
        return
    if db.is_postgres:
        sql_access.lock(cur)
    _ensure_table(cur)
    for view in views:
        _create(cur, db, view)
    if db.is_postgres:
        sql_access.secure(cur, db.schema, tables, [v.name for v in views])


def _create(cur: Cursor, db: ViewDatabase, view: View) -> None:
    statement = view.create_statement(db.is_postgres)
    cur.execute(f"SELECT statement FROM {VIEWS_TABLE} WHERE name = ?", (view.name,))
    row = cur.fetchone()
    if row is not None and row["statement"] == statement and _exists(cur, db, view.name):
        return
    cur.execute(f"DROP VIEW IF EXISTS {view.name}")
    cur.execute(statement)
    if db.is_postgres:
        cur.execute(f"COMMENT ON VIEW {view.name} IS {_literal(view.description)}")
        for column in view.columns:
            cur.execute(f"COMMENT ON COLUMN {view.name}.{column.name} IS "
                        f"{_literal(f'{column.type.name}: {column.meaning}')}")
    cur.execute(
        f"INSERT INTO {VIEWS_TABLE} (name, statement) VALUES (?, ?) "
        "ON CONFLICT (name) DO UPDATE SET statement = excluded.statement",
        (view.name, statement),
    )


def _literal(text: str) -> str:
    """Our own fixed prose as an SQL string (COMMENT takes no parameters)."""
    if "?" in text or "%" in text:
        raise ValueError(f"view documentation cannot contain ? or %: {text!r}")
    return "'" + text.replace("'", "''") + "'"

