"""Read-your-writes: whether an awaited event was dead-lettered rather than stored.

A read that waits for ``wait_for_event`` cannot tell from the event store alone an event
not ingested *yet* from one that never will be: ingestion refused it and put it in
FICHA_DLQ. While it waits, the read looks among the tenant's dead letters too, and
answers ``422 dead_lettered`` with the dead letter's sequence, code and reason if it
finds the event there.

Dead letters carry no event id that NATS can look up (their subject is
``ficha.dlq.<tenant>.<type>``, their Nats-Msg-Id the original sequence), so the look is
a bounded scan: at the start of a wait, the tenant's letters among the newest
``RECENT_WINDOW`` of FICHA_DLQ (an event just published and refused is among them);
then, every ``CHECK_EVERY_S`` while the wait lasts, only the letters stored since. If
NATS cannot be reached, the read waits as before, without the look.

The routes run in worker threads (``sync_to_thread``); the look runs on the request's
event loop, where the API's NATS connection lives.
"""

from __future__ import annotations

import asyncio
import logging
import time

from services.api.bus import Bus
from services.api.errors import ApiError, DeadLetterRef
from services.dlq import DeadLetter, find_event, recent_start

log = logging.getLogger("ficha.api")

RECENT_WINDOW = 1000  # FICHA_DLQ sequences looked at when a wait starts
CHECK_EVERY_S = 0.2
# Most awaited events are stored within milliseconds: the dead letters are looked at only
# once a wait has lasted this long, not by every read that waits a moment.
FIRST_CHECK_AFTER_S = 0.5


class DeadLetterWatch:
    """One wait's look for its event among the tenant's dead letters."""

    def __init__(self, bus: Bus, loop: asyncio.AbstractEventLoop, tenant: str,
                 event_id: str) -> None:
        self.bus = bus
        self.loop = loop
        self.tenant = tenant
        self.event_id = event_id
        self._next_seq: int | None = None
        self._next_check = time.monotonic() + FIRST_CHECK_AFTER_S
        self._usable = True

    @property
    def usable(self) -> bool:
        """False once a look has failed (NATS away): the wait goes on without it."""
        return self._usable

    def check(self, deadline: float, force: bool = False) -> DeadLetter | None:
        """The event's dead letter, if it is among the tenant's (looked for at most every
        ``CHECK_EVERY_S`` unless ``force``)."""
        now = time.monotonic()
        if not self._usable or (now < self._next_check and not force):
            return None
        self._next_check = now + CHECK_EVERY_S
        budget = max(deadline - now, 0.5)
        try:
            letter = asyncio.run_coroutine_threadsafe(
                asyncio.wait_for(self._scan(), budget), self.loop).result(budget + 1)
        except Exception as error:  # noqa: BLE001 - NATS away: wait without the look
            log.warning("cannot look for event %r among tenant %s's dead letters: %s",
                        self.event_id, self.tenant, error or type(error).__name__)
            self._usable = False
            return None
        return letter

    async def _scan(self) -> DeadLetter | None:
        js = await self.bus.js()
        if self._next_seq is None:
            self._next_seq = await recent_start(js, RECENT_WINDOW)
            if self._next_seq is None:
                return None
        letter, self._next_seq = await find_event(js, self.tenant, self.event_id,
                                                  self._next_seq)
        return letter


def dead_lettered(tenant: str, event_id: str, letter: DeadLetter) -> ApiError:
    return ApiError(
        422, "dead_lettered",
        f"event {event_id!r} of tenant {tenant} was dead-lettered, so it will never be "
        f"stored: {letter.code}: {letter.detail} (dead letter {letter.seq}, see "
        "/dead-letters); correct and re-drive it, or publish it corrected, then read again",
        field="wait_for_event", dead_letter=DeadLetterRef(letter.seq, letter.code, letter.detail))
