"""The outbox relay: publishes what projections decided to ``ficha.out``, exactly once.

The audience projection writes ``segment_entered`` / ``segment_exited`` events into
``ficha_outbox`` in the same transaction as the membership change, numbered in order
(``seq``). The relay publishes them in that order to the FICHA_OUT stream, with
``Nats-Msg-Id`` = the event id and a ``Ficha-Out-Seq`` header, waits for the acks, then
records how far it got (``ficha_outbox_relay``, a table rebuilds do not touch).

A crash between a publish and the record is the only gap. Two things close it:

* a retry soon after is de-duplicated by JetStream (FICHA_OUT's window is 120 s);
* at start-up, the relay reads back the tail of FICHA_OUT and skips what is already
  there, so a restart after a longer outage publishes nothing twice either. Only a
  contiguous run after the recorded position counts, so a message that failed while a
  later one succeeded is still published.

Automation services should still treat ``event_id`` as the idempotency key: it is unique
per transition and stable across rebuilds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from projections.db import ViewDatabase
from services import metrics
from services.streams import OUT_STREAM

log = logging.getLogger("ficha.outbox")

SEQ_HEADER = "Ficha-Out-Seq"
RELAY = "out"


class OutboxRelay:
    def __init__(self, js: JetStreamContext, views: ViewDatabase, batch: int = 500,
                 idle: float = 0.05, fault: Callable[[str], None] | None = None) -> None:
        self.js = js
        # Fault injection for crash tests: called with "before_record" once a batch is
        # published and acknowledged; raising there is what a kill at that instant is.
        self.fault = fault
        self.views = views
        self.batch = batch
        self.idle = idle
        self.position = 0
        self.published = 0

    def ensure_table(self) -> None:
        with self.views.transaction() as cur:
            cur.execute(
                "CREATE TABLE IF NOT EXISTS ficha_outbox_relay ("
                "name TEXT PRIMARY KEY, position BIGINT NOT NULL)"
            )

    def recorded_position(self) -> int:
        with self.views.reading() as cur:
            cur.execute("SELECT position FROM ficha_outbox_relay WHERE name = ?", (RELAY,))
            row = cur.fetchone()
        return int(row["position"]) if row else 0

    def _record(self, position: int) -> None:
        with self.views.transaction() as cur:
            cur.execute(
                "INSERT INTO ficha_outbox_relay (name, position) VALUES (?, ?) "
                "ON CONFLICT (name) DO UPDATE SET position = excluded.position",
                (RELAY, position),
            )

    def _pending(self, after: int) -> list[dict[str, Any]]:
        with self.views.reading() as cur:
            try:
                cur.execute(
                    "SELECT seq, subject, event_id, payload FROM ficha_outbox WHERE seq > ? "
                    "ORDER BY seq LIMIT ?",
                    (after, self.batch),
                )
            except Exception:  # noqa: BLE001 - the projection has not created its tables yet
                return []
            return cur.fetchall()

    async def start_position(self) -> int:
        """The recorded position, moved past what the stream already holds after it."""
        recorded = await asyncio.to_thread(self.recorded_position)
        present = await self._tail_sequences(recorded)
        position = recorded
        while position + 1 in present:
            position += 1
        if position != recorded:
            log.info("outbox: %d events were published before the last stop; skipping them",
                     position - recorded)
            await asyncio.to_thread(self._record, position)
        return position

    async def _tail_sequences(self, recorded: int) -> set[int]:
        """Ficha-Out-Seq values in FICHA_OUT above ``recorded``, read from the end back."""
        info = await self.js.stream_info(OUT_STREAM)
        seen: set[int] = set()
        stream_seq = info.state.last_seq
        first = info.state.first_seq
        while stream_seq and stream_seq >= first:
            try:
                msg = await self.js.get_msg(OUT_STREAM, seq=stream_seq)
            except NotFoundError:
                stream_seq -= 1
                continue
            value = (msg.headers or {}).get(SEQ_HEADER)
            if value is None or int(value) <= recorded:
                break
            seen.add(int(value))
            stream_seq -= 1
        return seen

    async def publish_pending(self) -> int:
        """Publish one batch; returns how many were published (0: nothing pending)."""
        rows = await asyncio.to_thread(self._pending, self.position)
        if not rows:
            return 0
        futures = [
            await self.js.publish_async(
                row["subject"],
                row["payload"].encode() if isinstance(row["payload"], str) else row["payload"],
                headers={"Nats-Msg-Id": row["event_id"], SEQ_HEADER: str(row["seq"])},
            )
            for row in rows
        ]
        done = self.position
        failure: BaseException | None = None
        for row, future in zip(rows, futures, strict=True):
            try:
                await future
            except Exception as error:  # noqa: BLE001 - stop at the first failure, retry
                failure = error
                break
            done = int(row["seq"])
        if done > self.position:
            if self.fault is not None:
                self.fault("before_record")
            await asyncio.to_thread(self._record, done)
            self.published += done - self.position
            metrics.OUT_PUBLISHED.inc(done - self.position)
            self.position = done
        if failure is not None:
            raise failure
        return len(rows)

    async def run(self, stop: asyncio.Event) -> None:
        await asyncio.to_thread(self.ensure_table)
        self.position = await self.start_position()
        delay = 0.2
        while not stop.is_set():
            try:
                published = await self.publish_pending()
                delay = 0.2
            except Exception as error:  # noqa: BLE001 - bus or database down: retry
                log.warning("outbox: publish failed, retrying in %.1fs: %s", delay, error)
                published = 0
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
            if published == 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=self.idle)
