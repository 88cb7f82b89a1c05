"""How fresh a read is, and read-your-writes: wait until a write has been projected.

Every read model follows the event store's log; its position is the last log entry it
has applied, in the same transaction as its rows. A read answers the position it
reflects (read just before its rows, in the same read, so the rows are at least that new),
the log's head and the lag between them. A caller that has just written can ask a read
to wait (up to a timeout) until the read model has reached

* ``min_position``: a log position an earlier answer of this API gave it, or
* ``wait_for_event``: the ``event_id`` of an event it published on the bus: the read
  waits until ingestion has stored it, then until the read model has passed the log's
  head as it was at that moment. If ingestion dead-lettered it instead, the read says so
  (``services.api.dead_lettered``).
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import msgspec

from contracts.events import EVENT_ID_PATTERN
from projections.db import ViewDatabase
from services.api.bus import Bus
from services.api.dead_lettered import DeadLetterWatch, dead_lettered
from services.api.errors import ApiError
from services.store.contact_store import ContactStore

MAX_WAIT_S = 30.0
_POLL_S = 0.02


class Freshness(msgspec.Struct):
    projection: str
    position: int
    head: int
    lag: int


@dataclass(frozen=True)
class Consistency:
    """What a caller asked for: how fresh the read must be, and how long to wait."""

    min_position: int | None = None
    wait_for_event: str | None = None
    wait_timeout: float = 5.0
    # The event loop serving the request: a wait runs in a worker thread, and looks for a
    # dead-lettered event with the API's NATS connection, which lives on this loop.
    loop: asyncio.AbstractEventLoop | None = field(default=None, compare=False)


def awaited_event(text: str | None) -> str | None:
    """The ``wait_for_event`` a caller gave, or 400 naming the field if it cannot be an
    event id (an event with such an id is never stored, so the wait could never end)."""
    if text is None or re.fullmatch(EVENT_ID_PATTERN, text):
        return text
    raise ApiError(400, "invalid_request",
                   f"wait_for_event: give the event_id of an event published on the bus "
                   f"(1-128 of A-Z a-z 0-9 . _ : -); got {text!r}", field="wait_for_event")


def projection_position(views: ViewDatabase, projection: str) -> int:
    with views.reading() as cur:
        return views.position(cur, projection)


@dataclass
class FreshReads:
    """Reads of the read models that know, and can wait for, their freshness."""

    views: ViewDatabase
    store: ContactStore
    bus: Bus | None = None  # to tell a dead-lettered awaited event (None: no NATS)

    def __post_init__(self) -> None:
        # On PostgreSQL the event store's table sits in the read models' schema: its
        # head is read in the same round trip as the position.
        table = self.store.recorder.events_table_name  # type: ignore[attr-defined]
        self._both_sql = (
            "SELECT (SELECT position FROM ficha_projection_tracking WHERE name = ?) "
            f"AS position, (SELECT MAX(notification_id) FROM {table}) AS head"
        )

    def _position_and_head(self, cur: Any, projection: str) -> tuple[int, int]:
        if not self.views.is_postgres:
            return self.views.position(cur, projection), self.store.max_notification_id()
        cur.execute(self._both_sql, (projection,))
        row = cur.fetchone()
        return int(row["position"] or 0), int(row["head"] or 0)

    def _await_ingestion(self, tenant: str, event_id: str, deadline: float,
                         loop: asyncio.AbstractEventLoop | None) -> None:
        """Until ingestion has stored the event; 422 if it was dead-lettered instead
        (services.api.dead_lettered), 503 if neither happened in time."""
        watch = (None if self.bus is None or loop is None
                 else DeadLetterWatch(self.bus, loop, tenant, event_id))
        while not self.store.already_received(tenant, [event_id]):
            timed_out = time.monotonic() >= deadline
            letter = None if watch is None else watch.check(deadline, force=timed_out)
            # Received meanwhile (e.g. published again, corrected): not dead after all.
            if letter is not None and not self.store.already_received(tenant, [event_id]):
                raise dead_lettered(tenant, event_id, letter)
            if timed_out:
                unchecked = watch is None or not watch.usable
                raise ApiError(
                    503, "not_yet_ingested",
                    f"event {event_id!r} of tenant {tenant} has not been ingested yet"
                    + (" (whether it was dead-lettered could not be checked)" if unchecked
                       else ", nor is it among the tenant's recent dead letters")
                    + "; retry, or wait longer with wait_timeout",
                    field="wait_for_event", headers={"Retry-After": "1"})
            time.sleep(_POLL_S)

    def wait(self, projection: str, tenant: str, wanted: Consistency) -> None:
        """Until the read model has reached what the caller asked for, or 503."""
        if wanted.min_position is None and wanted.wait_for_event is None:
            return
        deadline = time.monotonic() + min(max(wanted.wait_timeout, 0.0), MAX_WAIT_S)
        target = wanted.min_position or 0
        if wanted.wait_for_event is not None:
            self._await_ingestion(tenant, wanted.wait_for_event, deadline, wanted.loop)
            target = max(target, self.store.max_notification_id())
        position = projection_position(self.views, projection)
        while position < target:
            if time.monotonic() >= deadline:
                raise ApiError(
                    503, "not_yet_projected",
                    f"the {projection} read model is at position {position}, not yet at "
                    f"{target}; retry, or wait longer with wait_timeout",
                    field="min_position" if target == wanted.min_position else "wait_for_event",
                    headers={"Retry-After": "1"})
            time.sleep(_POLL_S)
            position = projection_position(self.views, projection)

    @contextmanager
    def read(self, projection: str, tenant: str, wanted: Consistency) -> Iterator[Freshness]:
        """Wait as asked, then open one read for the route's queries (see
        ``ViewDatabase.reading``) and give the freshness it reflects."""
        self.wait(projection, tenant, wanted)
        with self.views.reading() as cur:
            position, head = self._position_and_head(cur, projection)
            head = max(head, position)
            yield Freshness(projection, position, head, head - position)
