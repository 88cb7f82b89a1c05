"""How fresh a read is, and read-your-writes: wait until a write has been projected.

Every read model follows the event store's log; its position is the last log entry it
has applied, in the same transaction as its rows. A read answers the position it
reflects (read just before its rows, in the same read, so the rows are at least that new),
the log's head and the lag between them. A caller that has just written can ask a read
to wait (up to a timeout) until the read model has reached

* ``min_position``: a log position an earlier answer of this API gave it, or
* ``wait_for_event``: the ``event_id`` of an event it published on the bus: the read
  waits until ingestion has stored it, then until the read model has passed the log's
  head as it was at that moment.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import msgspec

from projections.db import ViewDatabase
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


def projection_position(views: ViewDatabase, projection: str) -> int:
    with views.reading() as cur:
        return views.position(cur, projection)


@dataclass
class FreshReads:
    """Reads of the read models that know, and can wait for, their freshness."""

    views: ViewDatabase
    store: ContactStore

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

    def wait(self, projection: str, tenant: str, wanted: Consistency) -> None:
        """Until the read model has reached what the caller asked for, or 503."""
        if wanted.min_position is None and wanted.wait_for_event is None:
            return
        deadline = time.monotonic() + min(max(wanted.wait_timeout, 0.0), MAX_WAIT_S)
        target = wanted.min_position or 0
        if wanted.wait_for_event is not None:
            while not self.store.already_received(tenant, [wanted.wait_for_event]):
                if time.monotonic() >= deadline:
                    raise ApiError(
                        503, "not_yet_ingested",
                        f"event {wanted.wait_for_event!r} of tenant {tenant} has not been "
                        "ingested yet (or was dead-lettered: see the dead-letter routes); "
                        "retry, or wait longer with wait_timeout",
                        field="wait_for_event", headers={"Retry-After": "1"})
                time.sleep(_POLL_S)
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
