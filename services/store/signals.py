"""Waking readers of the notification log when new events are committed.

PostgreSQL: the event store NOTIFYs a channel named after its events table in every write
transaction (the eventsourcing recorder does it, delivered at commit); a reader LISTENs on
its own connection and wakes at once. SQLite cannot be subscribed to: the reader polls
the log's end, a single index lookup, at a short interval.
"""

from __future__ import annotations

import contextlib
import threading
import time

import psycopg
from psycopg import sql

from services.config import Settings


class NewEvents:
    """Wait until the event store may have new events, or a timeout passes."""

    def wait(self, timeout: float) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Release what the signal holds."""


class PollingNewEvents(NewEvents):
    """SQLite: no subscription; the caller re-reads after a short sleep (or a wake())."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._wake = threading.Event()

    def wake(self) -> None:
        self._wake.set()

    def wait(self, timeout: float) -> None:
        self._wake.wait(min(timeout, self.interval))
        self._wake.clear()


class ListeningNewEvents(NewEvents):
    """PostgreSQL: LISTEN on the events table's channel; reconnects after an outage."""

    def __init__(self, settings: Settings, channel: str) -> None:
        assert settings.postgres is not None
        self.conninfo = settings.postgres.conninfo
        self.channel = channel
        self._conn: psycopg.Connection[tuple[object, ...]] | None = None

    def _listening(self) -> psycopg.Connection[tuple[object, ...]]:
        if self._conn is None or self._conn.closed or self._conn.broken:
            conn = psycopg.connect(self.conninfo, autocommit=True, connect_timeout=5)
            conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self.channel)))
            self._conn = conn
        return self._conn

    def wait(self, timeout: float) -> None:
        try:
            conn = self._listening()
            # One notification is enough; others queued meanwhile are drained below, so
            # one wake-up serves every commit that happened before it.
            for _ in conn.notifies(timeout=timeout, stop_after=1):
                break
            for _ in conn.notifies(timeout=0):
                pass
        except psycopg.Error:
            # The database is away: behave like a poll, and reconnect next time.
            self.close()
            time.sleep(min(timeout, 0.5))

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()
