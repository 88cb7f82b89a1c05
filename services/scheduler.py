"""The scheduler: ticks the clock when a contact's scheduled instant has come.

The audience projection keeps, per contact, the next instant at which a segment
membership or the engagement status may change (``audience_segments.due_at``). The
scheduler reads the earliest one, sleeps until then (on an injected clock), and appends a
tick to the event store; the projection then fires every change due by the tick, each at
its exact instant. Ticks are at least ``resolution`` seconds apart, so a million instants
spread over a day cost at most one tick a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import datetime

from projections.audience import rescore_requests
from projections.db import ViewDatabase
from services.catalog import Clock, ClockCommands, system_clock
from services.domain.stamps import parse_utc_iso
from services.store.contact_store import ContactStore

log = logging.getLogger("ficha.scheduler")


class Scheduler:
    def __init__(
        self,
        store: ContactStore,
        views: ViewDatabase,
        clock: Clock = system_clock,
        resolution: float = 1.0,
        idle: float = 5.0,
    ) -> None:
        self.clock = clock
        self.views = views
        self.ticks = ClockCommands(store)
        self.resolution = resolution
        self.idle = idle
        self._asked_at = -1e9

    def next_due(self) -> datetime | None:
        with self.views.reading() as cur:
            try:
                cur.execute(
                    "SELECT MIN(due_at) AS due FROM audience_segments WHERE due_at IS NOT NULL"
                )
            except Exception:  # noqa: BLE001 - the projection has not created its tables yet
                return None
            row = cur.fetchone()
        due = row["due"] if row else None
        return None if due is None else parse_utc_iso(due)

    def rescore_wanted(self) -> bool:
        """Does some tenant ask the audience projection for new RFM cuts?"""
        with self.views.reading() as cur:
            try:
                return bool(rescore_requests(cur))
            except Exception:  # noqa: BLE001 - the projection has not created its tables yet
                return False

    def tick_if_due(self) -> str | None:
        """Append a tick if some instant has come; returns the tick's time or None.

        Also asks for an RFM rescoring when some tenant asks for one: the projection has
        seen its first buyers and has no quintiles for them yet, or one of its contacts was
        erased. The request rescores those tenants only.
        """
        if self.rescore_wanted() and time.monotonic() - self._asked_at > 30:
            # Once in a while at most: the projection may take a moment to get to it.
            self.ticks.request_rescore(self.clock())
            self._asked_at = time.monotonic()
        due = self.next_due()
        now = self.clock()
        if due is None or due > now:
            return None
        return self.ticks.tick(now)

    def seconds_to_wait(self) -> float:
        due = self.next_due()
        if due is None:
            return self.idle
        wait = (due - self.clock()).total_seconds()
        return min(self.idle, max(self.resolution, wait))

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await asyncio.to_thread(self.tick_if_due)
                wait = await asyncio.to_thread(self.seconds_to_wait)
            except Exception as error:  # noqa: BLE001 - a database outage: try again later
                log.warning("scheduler could not tick, retrying: %s", error)
                wait = self.idle
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=wait)



