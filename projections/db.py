"""One small interface over the two read-model databases, so each projection's SQL is
written once.

SQL is written with ``?`` placeholders and unqualified table names. On PostgreSQL the
placeholders become ``%s`` and the connection's ``search_path`` is ficha's schema. Column
types that differ (timestamps, booleans, JSON) are chosen per dialect in DDL only.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from services.config import Settings


class Cursor(Protocol):
    def execute(self, statement: str, params: Sequence[Any] = ...) -> Any: ...
    def executemany(self, statement: str, params: Sequence[Sequence[Any]]) -> Any: ...
    def fetchall(self) -> list[dict[str, Any]]: ...
    def fetchone(self) -> dict[str, Any] | None: ...


class _SQLiteCursor:
    def __init__(self, cursor: sqlite3.Cursor) -> None:
        self._c = cursor

    def execute(self, statement: str, params: Sequence[Any] = ()) -> Any:
        return self._c.execute(statement, params)

    def executemany(self, statement: str, params: Sequence[Sequence[Any]]) -> Any:
        return self._c.executemany(statement, params)

    def fetchall(self) -> list[dict[str, Any]]:
        return [dict(row) for row in self._c.fetchall()]

    def fetchone(self) -> dict[str, Any] | None:
        row = self._c.fetchone()
        return None if row is None else dict(row)


class _PostgresCursor:
    def __init__(self, cursor: psycopg.Cursor[dict[str, Any]]) -> None:
        self._c = cursor

    def execute(self, statement: str, params: Sequence[Any] = ()) -> Any:
        return self._c.execute(statement.replace("?", "%s"), params)  # type: ignore[arg-type]

    def executemany(self, statement: str, params: Sequence[Sequence[Any]]) -> Any:
        return self._c.executemany(statement.replace("?", "%s"), params)  # type: ignore[arg-type]

    def fetchall(self) -> list[dict[str, Any]]:
        return list(self._c.fetchall())

    def fetchone(self) -> dict[str, Any] | None:
        return self._c.fetchone()


class DeferredWrites:
    """A ``Cursor`` that keeps the statements it is given, to run them later on a real
    one (``run_on``): work that only writes can be prepared now and sent while the
    caller goes on. Reading through it is a programming error."""

    def __init__(self) -> None:
        self.calls: list[tuple[bool, str, Any]] = []

    def execute(self, statement: str, params: Sequence[Any] = ()) -> None:
        self.calls.append((False, statement, params))

    def executemany(self, statement: str, params: Sequence[Sequence[Any]]) -> None:
        self.calls.append((True, statement, params))

    def fetchall(self) -> list[dict[str, Any]]:
        raise TypeError("deferred writes cannot be read")

    def fetchone(self) -> dict[str, Any] | None:
        raise TypeError("deferred writes cannot be read")

    def run_on(self, cur: Cursor) -> None:
        for many, statement, params in self.calls:
            if many:
                cur.executemany(statement, params)
            else:
                cur.execute(statement, params)


def utc_text(expression: str, is_postgres: bool) -> str:
    """A timestamp column as the fixed-width UTC text of ``services.domain.stamps.utc_iso``
    (2026-11-01T09:30:00.000000Z), in SQL. SQLite stores timestamps as that text."""
    if not is_postgres:
        return expression
    return f"""to_char({expression} AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')"""


def any_of(
    column: str, values: Sequence[Any], is_postgres: bool, chunk: int = 500
) -> Iterator[tuple[str, list[Any]]]:
    """``column`` equal to one of ``values``, as (condition, params) pieces to run in turn.

    PostgreSQL gets one ``= ANY(?)`` with an array: one statement text whatever the
    count, so it is prepared once. SQLite has no arrays: an ``IN (?, ...)`` per chunk.
    """
    if not values:
        return
    if is_postgres:
        yield f"{column} = ANY(?)", [list(values)]
        return
    for start in range(0, len(values), chunk):
        part = list(values[start : start + chunk])
        yield f"{column} IN ({','.join('?' * len(part))})", part


def bulk_insert(cur: Cursor, table: str, columns: Sequence[tuple[str, str]],
                rows: Sequence[Sequence[Any]], is_postgres: bool, *,
                conflict: str = "", chunk: int = 5000) -> None:
    """Insert many rows: ``columns`` are (name, PostgreSQL type) pairs.

    PostgreSQL gets one ``INSERT ... SELECT FROM unnest(arrays)`` per chunk (one round
    trip for thousands of rows, several times faster than executemany); SQLite, which is
    in-process, gets executemany.
    """
    if not rows:
        return
    names = ", ".join(name for name, _ in columns)
    if not is_postgres:
        cur.executemany(
            f"INSERT INTO {table} ({names}) VALUES ({','.join('?' * len(columns))}) {conflict}",
            rows,
        )
        return
    # Binary parameters (%b): text arrays of JSON are dumped several times faster than in
    # text format, which escapes every element with regular expressions.
    arrays = ", ".join(f"%b::{kind}[]" for _, kind in columns)
    statement = f"INSERT INTO {table} ({names}) SELECT * FROM unnest({arrays}) {conflict}"
    for start in range(0, len(rows), chunk):
        part = rows[start : start + chunk]
        cur.execute(statement, [list(values) for values in zip(*part, strict=True)])


def bulk_update(cur: Cursor, table: str, key: tuple[str, str],
                columns: Sequence[tuple[str, str]], rows: Sequence[Sequence[Any]],
                is_postgres: bool, chunk: int = 5000) -> None:
    """Update many rows by key; each row is (*values of columns, key value)."""
    if not rows:
        return
    if not is_postgres:
        sets = ", ".join(f"{name} = ?" for name, _ in columns)
        cur.executemany(f"UPDATE {table} SET {sets} WHERE {key[0]} = ?", rows)
        return
    all_columns = [*columns, key]
    arrays = ", ".join(f"%b::{kind}[]" for _, kind in all_columns)
    names = ", ".join(name for name, _ in all_columns)
    sets = ", ".join(f"{name} = u.{name}" for name, _ in columns)
    statement = (f"UPDATE {table} AS t SET {sets} FROM unnest({arrays}) AS u({names}) "
                 f"WHERE t.{key[0]} = u.{key[0]}")
    for start in range(0, len(rows), chunk):
        part = rows[start : start + chunk]
        cur.execute(statement, [list(values) for values in zip(*part, strict=True)])


class ViewDatabase:
    """A connection per thread to the read-model database of the configured backend."""

    def __init__(self, settings: Settings, namespace: str = "") -> None:
        """``namespace`` puts the tables elsewhere, for a side-by-side rebuild: the schema
        ``<schema>_<namespace>`` on PostgreSQL, the file ``views-<namespace>.sqlite``."""
        self.settings = settings
        self.namespace = namespace
        self.dialect = settings.backend
        self._local = threading.local()
        self._connections: list[Any] = []
        self._lock = threading.Lock()

    @property
    def schema(self) -> str:
        assert self.settings.postgres is not None
        base = self.settings.postgres.schema
        return f"{base}_{self.namespace}" if self.namespace else base

    @property
    def path(self) -> Path:
        main = self.settings.views_db_path
        return main.with_name(f"views-{self.namespace}.sqlite") if self.namespace else main

    @property
    def is_postgres(self) -> bool:
        return self.dialect == "postgres"

    def _connect(self) -> Any:
        conn = getattr(self._local, "conn", None)
        if conn is not None and self._alive(conn):
            self._local.used_at = time.monotonic()
            return conn
        if conn is not None:
            self._drop_connection()
        if self.settings.postgres is not None:
            pg = self.settings.postgres
            conn = psycopg.connect(pg.conninfo, row_factory=dict_row, connect_timeout=5)
            conn.autocommit = True
            # Another process may create it at the same instant: then it exists.
            with contextlib.suppress(psycopg.errors.UniqueViolation):
                conn.execute(
                    sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(self.schema))
                )
            conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(self.schema)))
            # Read models are derived and rebuildable, and each page commits its tracking
            # position with its rows: a commit lost in a database crash is replayed from
            # the event store, never half-applied. So they need not wait for the WAL flush.
            # (The event store keeps synchronous commits: acks follow its commits.)
            conn.execute("SET synchronous_commit TO off")
            conn.autocommit = False
        else:
            path: Path = self.path
            path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(path, timeout=30, isolation_level=None,
                                   check_same_thread=False)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            # Deleted and rewritten rows are overwritten in the file, not left in free
            # space: an erased person's rows must not be readable from the bytes.
            conn.execute("PRAGMA secure_delete=ON")
        self._local.conn = conn
        self._local.used_at = time.monotonic()
        with self._lock:
            self._connections.append(conn)
        return conn

    def _alive(self, conn: Any) -> bool:
        """Pre-ping a PostgreSQL connection that sat idle: the server may have gone away
        meanwhile (a restart, a network cut), and the caller should get a fresh one."""
        if not self.is_postgres:
            return True
        if conn.closed or conn.broken:
            return False
        if time.monotonic() - getattr(self._local, "used_at", 0.0) < 1.0:
            return True
        try:
            conn.execute("SELECT 1")
            conn.rollback()
        except psycopg.Error:
            return False
        return True

    def _drop_connection(self) -> None:
        conn = getattr(self._local, "conn", None)
        self._local.conn = None
        if conn is not None:
            with contextlib.suppress(Exception):  # it is being thrown away anyway
                conn.close()

    @contextmanager
    def transaction(self) -> Iterator[Cursor]:
        """A write transaction: committed on success, rolled back on error."""
        with self._cursor(begin="BEGIN IMMEDIATE") as cur:
            yield cur

    @contextmanager
    def reading(self) -> Iterator[Cursor]:
        """A read. SQLite: one snapshot transaction. PostgreSQL: statements in autocommit
        (READ COMMITTED would give each statement its own snapshot inside a transaction
        too; BEGIN and COMMIT would only add two round trips per read). Either way a
        statement sees at least what an earlier one saw: an API route that reads its
        freshness and then its rows returns rows at least as new as that position.
        Nested in another reading of the same thread, it joins that one."""
        current = getattr(self._local, "reading", None)
        if current is not None:
            yield current
            return
        with self._cursor(begin="BEGIN", read_only=True) as cur:
            self._local.reading = cur
            try:
                yield cur
            finally:
                self._local.reading = None

    @contextmanager
    def _cursor(self, begin: str, read_only: bool = False) -> Iterator[Cursor]:
        conn = self._connect()
        try:
            if self.is_postgres and read_only and (
                    conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE):
                conn.autocommit = True
                try:
                    with conn.cursor() as cur:
                        yield _PostgresCursor(cur)
                finally:
                    conn.autocommit = False
            elif self.is_postgres:
                with conn.transaction(), conn.cursor() as cur:
                    yield _PostgresCursor(cur)
            else:
                cur = conn.cursor()
                cur.execute(begin)  # IMMEDIATE takes the write lock up front
                try:
                    yield _SQLiteCursor(cur)
                except BaseException:
                    cur.execute("ROLLBACK")
                    raise
                cur.execute("COMMIT")
        except (psycopg.OperationalError, psycopg.InterfaceError):
            self._drop_connection()
            raise

    @contextmanager
    def snapshot(self) -> Iterator[Any]:
        """A connection of the caller's own, in one read-only snapshot transaction, for a
        read too long to hold the thread's shared connection (an export streamed to a
        file or an HTTP client): the raw driver connection, rows as tuples.

        PostgreSQL: REPEATABLE READ, READ ONLY, UTF-8, ficha's schema on the search path;
        fit for a server-side cursor or ``COPY ... TO STDOUT``. SQLite: the views file
        opened read-only (never created), one ``BEGIN`` so every fetchmany reads the same
        snapshot. The connection is closed on exit, also when the reader stops half-way.
        """
        conn: Any
        if self.settings.postgres is not None:
            conn = psycopg.connect(self.settings.postgres.conninfo, connect_timeout=5,
                                   client_encoding="utf8", autocommit=True)
            try:
                conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(self.schema)))
                # The first statement opens the snapshot; closing ends it (nothing to
                # commit), which also works half-way through a COPY.
                conn.autocommit = False
                conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
                conn.read_only = True
                yield conn
            finally:
                conn.close()
            return
        conn = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True, timeout=30,
                               isolation_level=None, check_same_thread=False)
        try:
            conn.execute("BEGIN")
            yield conn
        finally:
            conn.close()

    def stream(self, statement: str, params: Sequence[Any], batch_rows: int = 5000,
               name: str = "ficha_stream") -> Iterator[list[tuple[Any, ...]]]:
        """A query's rows as tuples, ``batch_rows`` at a time, from one snapshot
        (``snapshot``): memory is bounded by the batch whatever the row count. PostgreSQL
        reads a server-side cursor; ``statement`` holds no ``?`` but its placeholders."""
        with self.snapshot() as conn:
            if self.is_postgres:
                with conn.cursor(name=name) as cur:  # server-side: one FETCH per batch
                    cur.itersize = batch_rows
                    cur.execute(statement.replace("?", "%s"), params)
                    while rows := cur.fetchmany(batch_rows):
                        yield rows
            else:
                cur = conn.execute(statement, params)
                while rows := cur.fetchmany(batch_rows):
                    yield rows

    def stream_text(self, statement: str, params: Sequence[Any], batch_rows: int = 5000
                    ) -> Iterator[list[tuple[Any, ...]]]:
        """Like ``stream``, faster on PostgreSQL, where the rows come out of ``COPY (...)
        TO STDOUT`` with every value as text (a boolean is ``t`` or ``f``); SQLite's
        values are as stored."""
        if not self.is_postgres:
            yield from self.stream(statement, params, batch_rows)
            return
        with self.snapshot() as conn, conn.cursor() as cur:
            copy_statement = f"COPY ({statement.replace('?', '%s')}) TO STDOUT"
            with cur.copy(copy_statement, params) as copy:
                batch: list[tuple[Any, ...]] = []
                for row in copy.rows():
                    batch.append(row)
                    if len(batch) >= batch_rows:
                        yield batch
                        batch = []
                if batch:
                    yield batch

    def checkpoint(self) -> bool:
        """SQLite: copy the write-ahead log into the file and empty it, so that rows an
        erasure overwrote leave no older copy in the log; False if readers held it back.
        PostgreSQL: nothing to do here (decision 0006)."""
        if self.is_postgres:
            return True
        row = self._connect().execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        return row is None or row[0] == 0

    def close(self) -> None:
        with self._lock:
            for conn in self._connections:
                with contextlib.suppress(Exception):
                    conn.close()
            self._connections.clear()
        self._local = threading.local()

    # ---------------------------------------------------------------- tracking

    def ensure_tracking_table(self) -> None:
        with self.transaction() as cur:
            cur.execute(
                "CREATE TABLE IF NOT EXISTS ficha_projection_tracking ("
                "name TEXT PRIMARY KEY, position BIGINT NOT NULL)"
            )
            cur.execute(
                "CREATE TABLE IF NOT EXISTS ficha_projection_versions ("
                "name TEXT PRIMARY KEY, version INTEGER NOT NULL)"
            )
            cur.execute(
                "CREATE TABLE IF NOT EXISTS ficha_projection_failures ("
                "name TEXT PRIMARY KEY, since TEXT NOT NULL, last_at TEXT NOT NULL, "
                "attempts INTEGER NOT NULL, position BIGINT NOT NULL, error TEXT NOT NULL)"
            )

    def record_failure(self, name: str, error: str, at: str) -> None:
        """A projection's page failed at ``at`` (its changes rolled back): kept, with the
        position it could not get past, until a page succeeds (``clear_failure``), so
        that ``ficha status`` can tell a projection that keeps failing from a slow one."""
        with self.transaction() as cur:
            cur.execute(
                "INSERT INTO ficha_projection_failures (name, since, last_at, attempts, "
                "position, error) VALUES (?, ?, ?, 1, COALESCE((SELECT position FROM "
                "ficha_projection_tracking WHERE name = ?), 0), ?) ON CONFLICT (name) DO "
                "UPDATE SET last_at = excluded.last_at, position = excluded.position, "
                "error = excluded.error, "
                "attempts = ficha_projection_failures.attempts + 1",
                (name, at, at, name, error),
            )

    def clear_failure(self, name: str) -> None:
        with self.transaction() as cur:
            cur.execute("DELETE FROM ficha_projection_failures WHERE name = ?", (name,))

    def failures(self, cur: Cursor) -> dict[str, dict[str, Any]]:
        """The projections failing now (``record_failure``), by name."""
        cur.execute("SELECT name, since, last_at, attempts, position, error "
                    "FROM ficha_projection_failures")
        return {r["name"]: {k: v for k, v in r.items() if k != "name"} for r in cur.fetchall()}

    def existing_tables(self, cur: Cursor, names: Sequence[str]) -> set[str]:
        """Which of ``names`` are tables here (in ficha's schema, on PostgreSQL)."""
        if not names:
            return set()
        if self.is_postgres:
            cur.execute("SELECT tablename AS name FROM pg_catalog.pg_tables "
                        "WHERE schemaname = current_schema() AND tablename = ANY(?)",
                        (list(names),))
        else:
            cur.execute("SELECT name FROM sqlite_master WHERE type = 'table' AND name IN "
                        f"({', '.join('?' * len(names))})", list(names))
        return {r["name"] for r in cur.fetchall()}

    def lock_projection(self, cur: Cursor, name: str) -> None:
        """Serialise writers of one projection for the rest of the transaction.

        Every page takes it first, and so does a side-by-side replay's switch, which can
        then lock the tables without a lock-order deadlock. (SQLite's BEGIN IMMEDIATE
        already serialises all writers.) The lock is the schema's: a replay's copy (another
        schema) applies its last pages while its switch holds the live one's, and ficha
        deployments sharing a database do not wait for each other.
        """
        if self.is_postgres:
            key = zlib.crc32(f"{self.schema}.{name}".encode())
            cur.execute("SELECT pg_advisory_xact_lock(?)", (key,))

    def layout_version(self, cur: Cursor, name: str) -> int | None:
        """The layout version of a projection's tables, None if never recorded."""
        cur.execute("SELECT version FROM ficha_projection_versions WHERE name = ?", (name,))
        row = cur.fetchone()
        return int(row["version"]) if row else None

    def set_layout_version(self, cur: Cursor, name: str, version: int) -> None:
        cur.execute(
            "INSERT INTO ficha_projection_versions (name, version) VALUES (?, ?) "
            "ON CONFLICT (name) DO UPDATE SET version = excluded.version",
            (name, version),
        )

    def position(self, cur: Cursor, name: str) -> int:
        cur.execute("SELECT position FROM ficha_projection_tracking WHERE name = ?", (name,))
        row = cur.fetchone()
        return int(row["position"]) if row else 0

    def set_position(self, cur: Cursor, name: str, expected: int, position: int) -> None:
        """Move the projection's position from ``expected``; fails if someone else moved it
        meanwhile. The row must be the one this statement changed: two workers applying
        the same page would both find the new position in place, so finding it proves
        nothing (the second would apply the page twice)."""
        if expected == 0:
            cur.execute(
                "INSERT INTO ficha_projection_tracking (name, position) VALUES (?, ?) "
                "ON CONFLICT (name) DO UPDATE SET position = excluded.position "
                "WHERE ficha_projection_tracking.position = 0 RETURNING position",
                (name, position),
            )
        else:
            cur.execute(
                "UPDATE ficha_projection_tracking SET position = ? "
                "WHERE name = ? AND position = ? RETURNING position",
                (position, name, expected),
            )
        if cur.fetchone() is None:
            raise ConcurrentProjectionError(
                f"projection {name} was moved by another worker; this batch is abandoned"
            )


class ConcurrentProjectionError(Exception):
    pass
