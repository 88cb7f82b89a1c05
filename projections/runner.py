"""Feeds projections from the event store's notification log, exactly once.

Each page of notifications (up to ``page_size``) is decoded and applied to the view
tables, and the projection's position moves in the same transaction. Between pages the
runner waits on the store's new-events signal: LISTEN/NOTIFY on PostgreSQL; on SQLite,
which cannot be subscribed to, a short poll (an index lookup), cut short by ``wake()``
when the ingest worker runs in the same process.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from projections import sql_views
from projections.db import ConcurrentProjectionError, Cursor, ViewDatabase
from services import metrics
from services.domain.stamps import utc_iso
from services.store.contact_store import ContactStore
from services.store.signals import NewEvents, PollingNewEvents

log = logging.getLogger("ficha.projections")


class Projection(Protocol):
    name: str
    # The layout of the projection's tables; a read model written by another version is
    # dropped and rebuilt from the event store when the runner is set up.
    version: int
    tables: tuple[str, ...]

    def statements(self, is_postgres: bool) -> list[str]: ...
    def create_tables(self, db: ViewDatabase) -> None: ...
    def apply(self, cur: Cursor, events: list[Any], is_postgres: bool) -> None: ...


@dataclass
class ProjectionStats:
    applied: int = 0
    pages: int = 0
    last_commit_at: float | None = None


class ProjectionRunner:
    def __init__(
        self,
        store: ContactStore,
        db: ViewDatabase,
        projection: Projection,
        *,
        page_size: int = 1000,
        max_page_size: int | None = None,
        poll_interval: float = 0.01,
        idle_timeout: float = 0.5,
    ) -> None:
        self.store = store
        self.db = db
        self.projection = projection
        self.set_page_size(page_size, max_page_size)
        self.poll_interval = poll_interval
        self.idle_timeout = idle_timeout
        self.stats = ProjectionStats()
        self._signal: NewEvents | None = None
        # A failure recorded before (by another run too) is cleared by the first page that
        # succeeds (``ficha status`` reports it until then).
        self._failure_recorded = True

    def set_page_size(self, page_size: int, max_page_size: int | None = None) -> None:
        """Pages of ``page_size`` notifications; far behind (a rebuild, a replay, a
        catch-up after an outage), pages double up to ``max_page_size`` (default eight
        times as many): a contact touched by many events of a page is loaded and written
        once, and a page's fixed costs are shared by more events (bench.rebuild: 15-20 %
        faster). Caught up, pages are back to ``page_size``, which live latency wants."""
        self.page_size = page_size
        self.max_page_size = max(page_size, max_page_size or 8 * page_size)
        self._next_page_size = page_size

    @property
    def name(self) -> str:
        return self.projection.name

    def setup(self) -> None:
        """Create the view tables, or reset them if they were written by another version.

        A reset drops the tables and the position: the runner then replays the whole log,
        so an upgrade never reads rows of an old layout.
        """
        self.db.ensure_tracking_table()
        with self.db.transaction() as cur:
            stored = self.db.layout_version(cur, self.name)
        if stored != self.projection.version:
            if stored is not None:
                log.warning(
                    "projection %s: tables are of version %s, this is version %s; "
                    "dropping them to rebuild from the event store",
                    self.name, stored, self.projection.version,
                )
            self._reset()
        else:
            self.projection.create_tables(self.db)
            self._install_views()

    def _reset(self) -> None:
        with self.db.transaction() as cur:
            sql_views.drop(cur, self.db, self.name)  # PostgreSQL's views hold their tables
            for table in self.projection.tables:
                cur.execute(f"DROP TABLE IF EXISTS {table}")
            cur.execute("DELETE FROM ficha_projection_tracking WHERE name = ?", (self.name,))
            cur.execute("DELETE FROM ficha_projection_failures WHERE name = ?", (self.name,))
        self.projection.create_tables(self.db)
        with self.db.transaction() as cur:
            self.db.set_layout_version(cur, self.name, self.projection.version)
        self._install_views()

    def _install_views(self) -> None:
        """The analytics views over this projection's tables (``projections.sql_views``)."""
        with self.db.transaction() as cur:
            sql_views.install(cur, self.db, self.name, self.projection.tables)

    def wake(self) -> None:
        signal = self._signal
        if isinstance(signal, PollingNewEvents):
            signal.wake()

    def position(self) -> int:
        with self.db.reading() as cur:
            return self.db.position(cur, self.name)

    def run_once(self, until: int | None = None) -> int:
        """Apply one page; returns how many notifications it applied (0 = caught up).
        ``until`` stops at that log position (a tenant replay matches the live one).

        Another worker of the same projection (a second projector started by mistake, an
        in-place rebuild while ``ficha up`` runs) may apply the page first: then nothing of
        this attempt is committed, and the next page is read from where that one left it.
        """
        while True:
            try:
                applied = self._apply_next_page(until)
            except ConcurrentProjectionError as error:
                log.info("%s; going on from its position", error)
                continue
            except BaseException:
                # Retried from a page of the base size: a failure a large page causes
                # (a timeout, memory) is not repeated at that size.
                self._next_page_size = self.page_size
                raise
            if self._failure_recorded:  # (by this process or another, before)
                self.db.clear_failure(self.name)
                self._failure_recorded = False
            return applied

    def _apply_next_page(self, until: int | None) -> int:
        with self.db.reading() as cur:
            position = self.db.position(cur, self.name)
        size = self._next_page_size
        if until is not None:
            size = max(1, min(size, until - position))
        notifications = self.store.notifications_after(position, size)
        if until is not None:
            notifications = [n for n in notifications if n.id <= until]
        if not notifications:
            metrics.PROJECTION_LAG.labels(self.name).set(0)
            return 0
        started = time.perf_counter()
        events = self.store.decode(notifications)
        top = notifications[-1].id
        with self.db.transaction() as cur:
            self.db.lock_projection(cur, self.name)
            self.projection.apply(cur, events, self.db.is_postgres)
            self.db.set_position(cur, self.name, position, top)
        self.stats.applied += len(events)
        self.stats.pages += 1
        elapsed = time.perf_counter() - started
        metrics.PROJECTION_PAGE_SECONDS.labels(self.name).observe(elapsed)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("projection %s: %d events applied in %.1f ms, position %d",
                      self.name, len(events), 1000 * elapsed, top)
        metrics.PROJECTION_EVENTS.labels(self.name).inc(len(events))
        if len(notifications) == size:  # more behind: how much is cheap to ask
            metrics.PROJECTION_LAG.labels(self.name).set(
                max(0, self.store.max_notification_id() - top))
            self._next_page_size = min(2 * size, self.max_page_size)
        else:
            metrics.PROJECTION_LAG.labels(self.name).set(0)
            self._next_page_size = self.page_size
        self.stats.last_commit_at = time.time()
        return len(events)

    def catch_up(self, on_page: Callable[[int], None] | None = None,
                 until: int | None = None) -> int:
        """Apply pages until the projection reaches the log's end (or ``until``); returns
        the count. `on_page` is called with the new position after each page."""
        total = 0
        while True:
            applied = self.run_once(until)
            if applied == 0:
                return total
            total += applied
            if on_page is not None:
                on_page(self.position())

    def rebuild(self, on_page: Callable[[int], None] | None = None,
                until: int | None = None) -> int:
        """Drop the view tables and replay every event from the start."""
        self.db.ensure_tracking_table()
        self._reset()
        return self.catch_up(on_page, until)

    def run_forever(self, stop: threading.Event) -> None:
        """Blocking loop for a worker thread."""
        # Its failures' series exists from the start at 0: an alert on its increase then
        # sees the first failure too.
        metrics.PROJECTION_FAILURES.labels(self.name)
        self._signal = signal = self.store.new_events_signal(self.poll_interval)
        try:
            self._loop(stop, signal)
        finally:
            signal.close()

    def _loop(self, stop: threading.Event, signal: NewEvents) -> None:
        delay = 0.2
        while not stop.is_set():
            try:
                applied = self.run_once()
                delay = 0.2
            except Exception as error:  # noqa: BLE001 - a database outage: wait and retry
                metrics.PROJECTION_FAILURES.labels(self.name).inc()
                log.warning("projection %s failed, retrying in %.1fs: %s", self.name, delay, error)
                self._record_failure(error)
                stop.wait(delay)
                delay = min(delay * 2, 5.0)
                continue
            if applied == 0:
                signal.wait(self.idle_timeout)

    def _record_failure(self, error: Exception) -> None:
        """For ``ficha status`` (``ViewDatabase.record_failure``); when the database is
        what fails, this fails too, and the log says it already."""
        text = str(error).strip().splitlines()[0] if str(error).strip() else ""
        self._failure_recorded = True  # (cleared by the next page that succeeds)
        try:
            self.db.record_failure(self.name, f"{type(error).__name__}: {text}"[:500],
                                   utc_iso(datetime.now(UTC)))
        except Exception:  # noqa: BLE001
            log.debug("projection %s: its failure could not be recorded", self.name,
                      exc_info=True)

    async def run(self, stop: asyncio.Event) -> None:
        """Run the blocking loop in a thread until `stop` is set."""
        thread_stop = threading.Event()

        async def relay() -> None:
            await stop.wait()
            thread_stop.set()
            self.wake()

        relay_task = asyncio.create_task(relay())
        try:
            await asyncio.to_thread(self.run_forever, thread_stop)
        finally:
            relay_task.cancel()
