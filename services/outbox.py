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
  from there (before reading the rows to publish: a rebuild can move the position back
  while the relay runs); while the anchor is not there yet (a rebuild in progress) it
  waits.

A rebuild does not always reproduce every outbound event: erasing a buyer changed the RFM
cuts live in a way a rebuild, reading the erased events redacted, cannot reproduce, and a
layout-version rebuild after an upgrade applies the new rules to the whole history. So the
anchor also keeps its event's ``occurred_at``. When the anchor is nowhere in the outbox
and the audience projection has caught up with the event store (its tracking position at
the store's head: the rebuild is over, so the anchor will not come back), the relay logs
a warning and resumes after the last row whose ``occurred_at`` is at or before the
anchor's (``ficha_out_anchor_lost_total`` counts these). Outbound rows are numbered in the
projection's clock order, which never goes back, so the rows at or before the anchor's
instant are those the relay had already gone past: they are treated as published and are
not published again, even where they differ from what was published (an automation
consumer de-duplicates on ``event_id`` in any case). The rows after it are published.
An anchor recorded before its ``occurred_at`` was kept (the column came later) takes it
from its message in FICHA_OUT when it is needed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, NamedTuple

from nats.js import JetStreamContext
from nats.js.api import RawStreamMsg
from nats.js.errors import NotFoundError

from projections.audience import NAME as AUDIENCE
from projections.db import ViewDatabase
from services import metrics
from services.streams import OUT_STREAM

log = logging.getLogger("ficha.outbox")

SEQ_HEADER = "Ficha-Out-Seq"
RELAY = "out"
TOMBSTONE = ""  # the payload of an erased contact's row (projections.audience)


class Anchor(NamedTuple):
    """The last row published: its number then, its event id and its ``occurred_at``
    (None for an anchor recorded before the relay kept it, until it is looked up)."""

    seq: int
    event_id: str
    occurred_at: str | None


def occurred_at(payload: str | bytes) -> str:
    """An outbound event's ``occurred_at`` (fixed-width UTC ISO 8601: sorts as instants)."""
    return str(json.loads(payload)["occurred_at"])


def anchor_of(row: dict[str, Any]) -> Anchor:
    """The anchor for an outbox row (seq, event_id, payload) once it is published."""
    return Anchor(int(row["seq"]), str(row["event_id"]), occurred_at(row["payload"]))


class OutboxRelay:
    def __init__(self, js: JetStreamContext, views: ViewDatabase, store_head: Callable[[], int],
                 batch: int = 500, idle: float = 0.05,
                 fault: Callable[[str], None] | None = None) -> None:
        self.js = js
        # The event store's head (ContactStore.max_notification_id): the audience projection
        # has caught up once its position reaches it.
        self.store_head = store_head
        # Fault injection for crash tests: called with "before_record" once a batch is
        # published and acknowledged; raising there is what a kill at that instant is.
        self.fault = fault
        self.views = views
        self.batch = batch
        self.idle = idle
        self.position = 0
        self.published = 0
        # The last row published, with its number when it was published.
        self.anchor: Anchor | None = None
        self._warned_at = 0.0

    def ensure_table(self) -> None:
        with self.views.transaction() as cur:
            cur.execute(
                "CREATE TABLE IF NOT EXISTS ficha_outbox_relay ("
                "name TEXT PRIMARY KEY, position BIGINT NOT NULL)"
            )
            cur.execute(
                "CREATE TABLE IF NOT EXISTS ficha_outbox_anchor ("
                "name TEXT PRIMARY KEY, seq BIGINT NOT NULL, event_id TEXT NOT NULL, "
                "occurred_at TEXT)"
            )
            # Tables from before the anchor kept its instant.
            if self.views.is_postgres:
                cur.execute("ALTER TABLE ficha_outbox_anchor "
                            "ADD COLUMN IF NOT EXISTS occurred_at TEXT")
            else:
                cur.execute("PRAGMA table_info(ficha_outbox_anchor)")
                if all(column["name"] != "occurred_at" for column in cur.fetchall()):
                    cur.execute("ALTER TABLE ficha_outbox_anchor ADD COLUMN occurred_at TEXT")

    def recorded_position(self) -> int:
        with self.views.reading() as cur:
            cur.execute("SELECT position FROM ficha_outbox_relay WHERE name = ?", (RELAY,))
            row = cur.fetchone()
        return int(row["position"]) if row else 0

    def recorded_anchor(self) -> Anchor | None:
        with self.views.reading() as cur:
            try:
                cur.execute("SELECT seq, event_id, occurred_at FROM ficha_outbox_anchor "
                            "WHERE name = ?", (RELAY,))
            except Exception:  # noqa: BLE001 - a relay table from before anchors: none
                return None
            row = cur.fetchone()
        if row is None:
            return None
        return Anchor(int(row["seq"]), str(row["event_id"]), row["occurred_at"])

    def _record(self, position: int, anchor: Anchor | None = None, *,
                forget_anchor: bool = False) -> None:
        """Record the position, and the anchor if given (``forget_anchor``: delete it,
        for a resumption with no published row left before the position)."""
        with self.views.transaction() as cur:
            cur.execute(
                "INSERT INTO ficha_outbox_relay (name, position) VALUES (?, ?) "
                "ON CONFLICT (name) DO UPDATE SET position = excluded.position",
                (RELAY, position),
            )
            if anchor is not None:
                cur.execute(
                    "INSERT INTO ficha_outbox_anchor (name, seq, event_id, occurred_at) "
                    "VALUES (?, ?, ?, ?) "
                    "ON CONFLICT (name) DO UPDATE SET seq = excluded.seq, "
                    "event_id = excluded.event_id, occurred_at = excluded.occurred_at",
                    (RELAY, *anchor),
                )
            elif forget_anchor:
                cur.execute("DELETE FROM ficha_outbox_anchor WHERE name = ?", (RELAY,))

    def _anchor_now(self) -> int | None:
        """Where the anchor is now: its number if the outbox still has it there, its new
        number after a renumbering rebuild, None while it is nowhere (being rebuilt)."""
        if self.anchor is None:
            return self.position
        seq, event_id, _ = self.anchor
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
        """True if the relay may publish after ``position`` (moving it if renumbered, or
        past the anchor's instant once a rebuild is over without it)."""
        where = await asyncio.to_thread(self._anchor_now)
        if where is None and await asyncio.to_thread(self._projection_caught_up):
            # Looked for again once caught up: a rebuild finishing meanwhile may have
            # brought it back.
            where = await asyncio.to_thread(self._anchor_now)
            if where is None:
                return await self._resume_without_anchor()
        if where == self.position:
            return True
        assert self.anchor is not None
        if where is None:
            if time.monotonic() - self._warned_at > 60:
                log.warning("outbox: the last published event %s is not in the outbox and "
                            "the audience projection is behind the event store (being "
                            "rebuilt?); waiting for it", self.anchor.event_id)
                self._warned_at = time.monotonic()
            return False
        log.info("outbox renumbered by a rebuild: %s is now number %d (was %d)",
                 self.anchor.event_id, where, self.anchor.seq)
        self.anchor = self.anchor._replace(seq=where)
        self.position = where
        await asyncio.to_thread(self._record, where, self.anchor)
        return True

    def _projection_caught_up(self) -> bool:
        """The audience projection has applied every event the store had a moment ago."""
        head = self.store_head()
        with self.views.reading() as cur:
            return self.views.position(cur, AUDIENCE) >= head

    async def _resume_without_anchor(self) -> bool:
        """The rebuild is over and did not reproduce the anchor's event: go on after the
        rows at or before its instant (module docstring)."""
        assert self.anchor is not None
        if self.anchor.occurred_at is None:
            self.anchor = self.anchor._replace(
                occurred_at=await self._published_instant(self.anchor))
        if self.anchor.occurred_at is None:
            if time.monotonic() - self._warned_at > 60:
                log.warning("outbox: the last published event %s was not reproduced by the "
                            "rebuild and its instant is unknown (recorded before ficha kept "
                            "it, and no longer in FICHA_OUT); set ficha_outbox_anchor's "
                            "occurred_at to resume", self.anchor.event_id)
                self._warned_at = time.monotonic()
            return False
        position = await asyncio.to_thread(self._last_at_or_before, self.anchor.occurred_at)
        anchor = await asyncio.to_thread(self._last_published, position)
        log.warning("outbox: the last published event %s (at %s) was not reproduced by the "
                    "rebuild; resuming after number %d, the last row at or before its instant "
                    "(treated as published)", self.anchor.event_id, self.anchor.occurred_at,
                    position)
        metrics.OUT_ANCHOR_LOST.inc()
        await asyncio.to_thread(self._record, position, anchor, forget_anchor=anchor is None)
        self.position = position
        self.anchor = anchor
        return True

    def _last_at_or_before(self, instant: str) -> int:
        """The number of the last row at or before ``instant``: the row before the first
        one after it (tombstones, which have no instant, go with the rows around them)."""
        at = ("(payload::json ->> 'occurred_at')" if self.views.is_postgres
              else "json_extract(payload, '$.occurred_at')")
        with self.views.reading() as cur:
            cur.execute(f"SELECT MIN(seq) AS seq FROM ficha_outbox WHERE payload <> ? "
                        f"AND (CASE WHEN payload = ? THEN NULL ELSE {at} END) > ?",
                        (TOMBSTONE, TOMBSTONE, instant))
            later = cur.fetchone()
            if later is not None and later["seq"] is not None:
                return int(later["seq"]) - 1
            cur.execute("SELECT COALESCE(MAX(seq), 0) AS seq FROM ficha_outbox")
            last = cur.fetchone()
        return int(last["seq"]) if last else 0

    async def _published_instant(self, anchor: Anchor) -> str | None:
        """An anchor's ``occurred_at`` read from its message in FICHA_OUT, for an anchor
        recorded before the relay kept it (None if the message is gone)."""
        async for msg in self._messages_backwards():
            headers = msg.headers or {}
            if headers.get("Nats-Msg-Id") == anchor.event_id and msg.data:
                return occurred_at(msg.data)
            value = headers.get(SEQ_HEADER)
            if value is not None and int(value) < anchor.seq:
                return None  # published before the anchor: it is not further back
        return None

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

    def _last_published(self, upto: int) -> Anchor | None:
        with self.views.reading() as cur:
            cur.execute("SELECT seq, event_id, payload FROM ficha_outbox "
                        "WHERE seq <= ? AND payload <> ? ORDER BY seq DESC LIMIT 1",
                        (upto, TOMBSTONE))
            row = cur.fetchone()
        return None if row is None else anchor_of(row)

    async def _tail_sequences(self, recorded: int) -> set[int]:
        """Ficha-Out-Seq values in FICHA_OUT above ``recorded``, read from the end back."""
        seen: set[int] = set()
        async for msg in self._messages_backwards():
            value = (msg.headers or {}).get(SEQ_HEADER)
            if value is None or int(value) <= recorded:
                break
            seen.add(int(value))
        return seen

    async def _messages_backwards(self) -> AsyncIterator[RawStreamMsg]:
        """FICHA_OUT's messages from the last one back (the caller stops when it knows)."""
        info = await self.js.stream_info(OUT_STREAM)
        stream_seq, first = info.state.last_seq, info.state.first_seq
        while stream_seq and stream_seq >= first:
            try:
                msg = await self.js.get_msg(OUT_STREAM, seq=stream_seq)
            except NotFoundError:  # deleted (an erased contact's)
                msg = None
            if msg is not None:
                yield msg
            stream_seq -= 1

    async def publish_pending(self) -> int:
        """Publish one batch; returns how many were published (0: nothing pending)."""
        # The anchor first: a renumbering can move the position back, and the rows to
        # publish are those after where it is now.
        if not await self._follow_anchor():
            return 0
        rows = await asyncio.to_thread(self._pending, self.position)
        if not rows:
            return 0
        # Still there once the rows are read: they are numbered as the anchor is (a
        # rebuild switched over in between is followed in the next round).
        if await asyncio.to_thread(self._anchor_now) != self.position:
            return 0
        futures = [
            None if row["payload"] == TOMBSTONE else await self.js.publish_async(
                row["subject"],
                row["payload"].encode() if isinstance(row["payload"], str) else row["payload"],
                headers={"Nats-Msg-Id": row["event_id"], SEQ_HEADER: str(row["seq"])},
            )
            for row in rows
        ]
        done = self.position
        last: dict[str, Any] | None = None
        published = 0
        failure: BaseException | None = None
        for row, future in zip(rows, futures, strict=True):
            if future is not None:
                try:
                    await future
                except Exception as error:  # noqa: BLE001 - stop at the first failure, retry
                    failure = error
                    break
                last = row
                published += 1
            done = int(row["seq"])
        anchor = self.anchor if last is None else anchor_of(last)
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
