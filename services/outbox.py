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

Erasure (decision 0006) adds two things:

* an erased contact's rows stay in the outbox as tombstones (empty payload): the relay
  publishes none of them but moves past them, so numbers are never reused live;
* a rebuild after an erasure numbers the outbox without the erased contact's rows, so
  the same rows can get lower numbers. The relay therefore also records the event id of
  the last row it published (its anchor, ``ficha_outbox_anchor``). When the row at the
  anchor's number is no longer that event, it finds the anchor's new number and goes on
  from there; while the anchor is not there yet (a rebuild in progress) it waits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
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
TOMBSTONE = ""  # the payload of an erased contact's row (projections.audience)


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
        # The last row published: (seq, event_id) when it was published.
        self.anchor: tuple[int, str] | None = None
        self._warned_at = 0.0

    def ensure_table(self) -> None:
        with self.views.transaction() as cur:
            cur.execute(
                "CREATE TABLE IF NOT EXISTS ficha_outbox_relay ("
                "name TEXT PRIMARY KEY, position BIGINT NOT NULL)"
            )
            cur.execute(
                "CREATE TABLE IF NOT EXISTS ficha_outbox_anchor ("
                "name TEXT PRIMARY KEY, seq BIGINT NOT NULL, event_id TEXT NOT NULL)"
            )

    def recorded_position(self) -> int:
        with self.views.reading() as cur:
            cur.execute("SELECT position FROM ficha_outbox_relay WHERE name = ?", (RELAY,))
            row = cur.fetchone()
        return int(row["position"]) if row else 0

    def recorded_anchor(self) -> tuple[int, str] | None:
        with self.views.reading() as cur:
            try:
                cur.execute("SELECT seq, event_id FROM ficha_outbox_anchor WHERE name = ?",
                            (RELAY,))
            except Exception:  # noqa: BLE001 - a relay table from before anchors: none
                return None
            row = cur.fetchone()
        return (int(row["seq"]), str(row["event_id"])) if row else None

    def _record(self, position: int, anchor: tuple[int, str] | None = None) -> None:
        with self.views.transaction() as cur:
            cur.execute(
                "INSERT INTO ficha_outbox_relay (name, position) VALUES (?, ?) "
                "ON CONFLICT (name) DO UPDATE SET position = excluded.position",
                (RELAY, position),
            )
            if anchor is not None:
                cur.execute(
                    "INSERT INTO ficha_outbox_anchor (name, seq, event_id) VALUES (?, ?, ?) "
                    "ON CONFLICT (name) DO UPDATE SET seq = excluded.seq, "
                    "event_id = excluded.event_id",
                    (RELAY, *anchor),
                )

    def _anchor_now(self) -> int | None:
        """Where the anchor is now: its number if the outbox still has it there, its new
        number after a renumbering rebuild, None while it is nowhere (being rebuilt)."""
        if self.anchor is None:
            return self.position
        seq, event_id = self.anchor
        with self.views.reading() as cur:
            try:
                cur.execute("SELECT event_id FROM ficha_outbox WHERE seq = ?", (seq,))
                row = cur.fetchone()
                if row is not None and row["event_id"] == event_id:
                    return self.position
                cur.execute("SELECT seq FROM ficha_outbox WHERE event_id = ?", (event_id,))
                moved = cur.fetchone()
            except Exception:  # noqa: BLE001 - the tables are being replaced
                return None
        return None if moved is None else int(moved["seq"])

    async def _follow_anchor(self) -> bool:
        """True if the relay may publish after ``position`` (moving it if renumbered)."""
        where = await asyncio.to_thread(self._anchor_now)
        if where == self.position:
            return True
        if where is None:
            if time.monotonic() - self._warned_at > 60:
                log.warning("outbox: the last published event %s is not in the outbox "
                            "(being rebuilt?); waiting for it", self.anchor)
                self._warned_at = time.monotonic()
            return False
        assert self.anchor is not None
        log.info("outbox renumbered by a rebuild: %s is now number %d (was %d)",
                 self.anchor[1], where, self.anchor[0])
        self.anchor = (where, self.anchor[1])
        self.position = where
        await asyncio.to_thread(self._record, where, self.anchor)
        return True

    def _tombstones(self, after: int, upto: int) -> set[int]:
        with self.views.reading() as cur:
            try:
                cur.execute("SELECT seq FROM ficha_outbox WHERE seq > ? AND seq <= ? "
                            "AND payload = ?", (after, upto, TOMBSTONE))
            except Exception:  # noqa: BLE001 - the projection has not created its tables yet
                return set()
            return {int(r["seq"]) for r in cur.fetchall()}

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
        """The recorded position, moved past what the stream already holds after it (and
        past tombstones between), or to the anchor's new number after a renumbering."""
        recorded = await asyncio.to_thread(self.recorded_position)
        self.position = recorded
        self.anchor = await asyncio.to_thread(self.recorded_anchor)
        where = await asyncio.to_thread(self._anchor_now)
        if where is not None and where != recorded:
            await self._follow_anchor()
            return self.position
        present = await self._tail_sequences(recorded)
        if present:
            present |= await asyncio.to_thread(self._tombstones, recorded, max(present))
        position = recorded
        while position + 1 in present:
            position += 1
        if position != recorded:
            log.info("outbox: %d events were published before the last stop; skipping them",
                     position - recorded)
            await asyncio.to_thread(self._record, position, await asyncio.to_thread(
                self._last_published, position))
        return position

    def _last_published(self, upto: int) -> tuple[int, str] | None:
        with self.views.reading() as cur:
            cur.execute("SELECT seq, event_id FROM ficha_outbox WHERE seq <= ? AND payload <> ? "
                        "ORDER BY seq DESC LIMIT 1", (upto, TOMBSTONE))
            row = cur.fetchone()
        return None if row is None else (int(row["seq"]), str(row["event_id"]))

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
        if not await self._follow_anchor():
            return 0
        if rows[0]["seq"] <= self.position:  # moved back by a renumbering: read again
            return await self.publish_pending()
        futures = [
            None if row["payload"] == TOMBSTONE else await self.js.publish_async(
                row["subject"],
                row["payload"].encode() if isinstance(row["payload"], str) else row["payload"],
                headers={"Nats-Msg-Id": row["event_id"], SEQ_HEADER: str(row["seq"])},
            )
            for row in rows
        ]
        done = self.position
        anchor = self.anchor
        published = 0
        failure: BaseException | None = None
        for row, future in zip(rows, futures, strict=True):
            if future is not None:
                try:
                    await future
                except Exception as error:  # noqa: BLE001 - stop at the first failure, retry
                    failure = error
                    break
                anchor = (int(row["seq"]), str(row["event_id"]))
                published += 1
            done = int(row["seq"])
        if done > self.position:
            if self.fault is not None:
                self.fault("before_record")
            await asyncio.to_thread(self._record, done, anchor)
            self.published += published
            metrics.OUT_PUBLISHED.inc(published)
            self.position = done
            self.anchor = anchor
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
