"""Rebuild a projection side by side, then switch readers over atomically.

``replay(...)`` replays the whole event log into a fresh copy of the projection's tables
(the schema ``<schema>_next_<name>`` on PostgreSQL, the file ``views-next-<name>.sqlite``
on SQLite) while the live tables keep serving readers and the live runner keeps them
current. When the copy has caught up, one transaction on the live database:

1. takes the projection's writer lock (which every page of the live runner takes first),
   so it waits for the page in flight and holds off the next one, then locks the live
   tables against readers' schema changes (SQLite: the database write lock does both);
2. brings the copy up to the log's head (a few pages at most);
3. replaces the live tables with the copy (PostgreSQL moves the tables between schemas;
   SQLite copies the rows into tables recreated from the projection's DDL), recreates the
   projection's analytics views over them (``sql_views``: with their row-level security
   and readers' grants on PostgreSQL) and sets the projection's position and layout
   version to the copy's.

Readers see the old rows until the commit and the new ones after it; the live runner's
next page starts from the copy's position. Nothing is applied twice: a page the live
runner had read before the switch fails its position check and is read again.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from psycopg import sql

from projections import sql_access, sql_views
from projections.db import ViewDatabase
from projections.runner import Projection, ProjectionRunner
from services.store.contact_store import ContactStore


@dataclass
class ReplayResult:
    name: str
    events: int
    position: int


def replay(
    store: ContactStore,
    live: ViewDatabase,
    make: Callable[[], Projection],
    on_page: Callable[[int], None] | None = None,
    tenant: str | None = None,
) -> ReplayResult:
    """Replay a projection side by side and switch readers over; with ``tenant``, only
    that tenant's rows are replaced (see ``_switch_tenant``)."""
    projection = make()
    name = projection.name
    staging = ViewDatabase(live.settings, namespace=f"next_{name}")
    try:
        runner = ProjectionRunner(store, staging, make(), page_size=2000)
        live.ensure_tracking_table()
        if tenant is not None:
            # Never past the live model: the copy must stop where the live one is.
            with live.reading() as cur:
                start = live.position(cur, name)
            runner.rebuild(on_page, until=start)
            position = _switch_tenant(live, staging, runner, projection, tenant)
            return ReplayResult(name, runner.stats.applied, position)
        runner.rebuild(on_page)
        projection.create_tables(live)  # if missing, so that there is something to replace
        if live.is_postgres:
            position = _switch_postgres(live, staging, runner, projection)
        else:
            position = _switch_sqlite(live, staging, runner, projection)
        return ReplayResult(name, runner.stats.applied, position)
    finally:
        staging.close()
        _drop_staging(live, staging)


def tenant_scope(projection: Projection, table: str, tenant: str
                 ) -> tuple[str, list[Any]] | None:
    """Which rows of ``table`` are ``tenant``'s: a WHERE clause and its parameters, or
    None for a table a tenant replay leaves alone (the outbox: what it held was
    published; global state such as the clock)."""
    scope = getattr(projection, "tenant_scope", None)
    if scope is not None:
        found: tuple[str, list[Any]] | None = scope(table, tenant)
        return found
    return "tenant = ?", [tenant]


def _switch_tenant(live: ViewDatabase, staging: ViewDatabase, runner: ProjectionRunner,
                   projection: Projection, tenant: str) -> int:
    """Replace one tenant's rows of the live tables with the copy's, in one transaction
    holding the projection's writer lock, with the copy brought to exactly the live
    model's position: the other tenants' rows, the position and the outbox stay."""
    conn = None
    source = sql.Identifier(staging.schema).as_string(None) if live.is_postgres else "staging"
    if not live.is_postgres:
        conn = live._connect()  # noqa: SLF001 - ATTACH needs the raw connection
        conn.execute("ATTACH DATABASE ? AS staging", (str(staging.path),))
    try:
        with live.transaction() as cur:
            live.lock_projection(cur, projection.name)  # waits for the live runner's page
            position = live.position(cur, projection.name)
            runner.catch_up(until=position)
            assert runner.position() == position or runner.stats.applied == 0
            for table in projection.tables:
                scope = tenant_scope(projection, table, tenant)
                if scope is None:
                    continue
                where, params = scope
                cur.execute(f"DELETE FROM {table} WHERE {where}", params)
                cur.execute(f"INSERT INTO {table} SELECT * FROM {source}.{table} "
                            f"WHERE {where}", params)
    finally:
        if conn is not None:
            conn.execute("DETACH DATABASE staging")
    return position


def _switch_postgres(live: ViewDatabase, staging: ViewDatabase, runner: ProjectionRunner,
                     projection: Projection) -> int:
    with live.transaction() as cur:
        live.lock_projection(cur, projection.name)  # waits for the live runner's page
        sql_access.lock(cur)  # before the tables, in the order set-up takes them
        cur.execute(f"LOCK TABLE {', '.join(projection.tables)} IN ACCESS EXCLUSIVE MODE")
        cur.execute("SELECT position FROM ficha_projection_tracking WHERE name = ? FOR UPDATE",
                    (projection.name,))
        runner.catch_up()
        position = runner.position()
        sql_views.drop(cur, live, projection.name)
        for table in projection.tables:
            cur.execute(f"DROP TABLE {table}")
            cur.execute(sql.SQL("ALTER TABLE {}.{} SET SCHEMA {}").format(
                sql.Identifier(staging.schema), sql.Identifier(table),
                sql.Identifier(live.schema)).as_string(None))
        # The views over the new tables, their row-level security and the readers' grants.
        sql_views.install(cur, live, projection.name, projection.tables)
        _set_position(live, cur, projection, position)
    return position


def _switch_sqlite(live: ViewDatabase, staging: ViewDatabase, runner: ProjectionRunner,
                   projection: Projection) -> int:
    conn = live._connect()  # noqa: SLF001 - ATTACH needs the raw connection
    conn.execute("ATTACH DATABASE ? AS staging", (str(staging.path),))
    try:
        with live.transaction() as cur:  # BEGIN IMMEDIATE: the live runner waits
            runner.catch_up()
            position = runner.position()
            sql_views.drop(cur, live, projection.name)
            for table in projection.tables:
                cur.execute(f"DROP TABLE main.{table}")
            for statement in projection.statements(False):
                cur.execute(statement)
            for table in projection.tables:
                cur.execute(f"INSERT INTO main.{table} SELECT * FROM staging.{table}")
            sql_views.install(cur, live, projection.name, projection.tables)
            _set_position(live, cur, projection, position)
    finally:
        conn.execute("DETACH DATABASE staging")
    return position


def _set_position(live: ViewDatabase, cur: object, projection: Projection,
                  position: int) -> None:
    cur.execute(  # type: ignore[attr-defined]
        "INSERT INTO ficha_projection_tracking (name, position) VALUES (?, ?) "
        "ON CONFLICT (name) DO UPDATE SET position = excluded.position",
        (projection.name, position),
    )
    live.set_layout_version(cur, projection.name, projection.version)  # type: ignore[arg-type]


def _drop_staging(live: ViewDatabase, staging: ViewDatabase) -> None:
    if live.is_postgres:
        with live.transaction() as cur:
            cur.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(
                sql.Identifier(staging.schema)).as_string(None))
    else:
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                staging.path.with_name(staging.path.name + suffix).unlink()
