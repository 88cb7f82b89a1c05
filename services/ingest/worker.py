"""One owner per ingest partition: fetch a batch, decode, fold, commit, then ack.

Messages come from the partition's durable pull consumer through a PullFeed (``feed``),
which keeps a pull request outstanding so that the next batch arrives while one commits.

Exactly-once: the contacts' new events, the received (tenant, event_id) pairs and the
partition's stream position are committed in one transaction (BatchFolder), and messages
are acked only after that commit. A message redelivered after a crash between commit and
ack, or a producer's retry long after JetStream's de-dup window, is found among the
received ids and applied no second time. No message is skipped because of its stream
position: JetStream redelivers an unacked message *after* newer ones, so a position alone
cannot tell "applied" from "delivered but lost". The position is progress, not proof.

Transient failures (the database down or locked) are retried in place with backoff, the
batch held with in_progress() so that JetStream does not redeliver it meanwhile. An event
that cannot be folded is dead-lettered as processing_failed and the batch goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import nats.errors
import nats.js.errors
import psycopg
from eventsourcing.persistence import IntegrityError as StoreIntegrityError
from eventsourcing.persistence import InterfaceError as StoreInterfaceError
from eventsourcing.persistence import OperationalError as StoreOperationalError
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from psycopg_pool import PoolTimeout

from contracts.decode import Rejection, decode, read_json, subject_tokens
from contracts.events import InboundEvent
from services import metrics
from services.ingest.deadletter import PROCESSING_FAILED, dead_letter
from services.ingest.feed import PullFeed
from services.ingest.folding import BatchFolder, FoldError
from services.ingest.tenant_checks import TenantChecks
from services.streams import INGEST_STREAM, original_subject, stream_sequence

log = logging.getLogger("ficha.ingest")

TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    StoreOperationalError,
    StoreInterfaceError,
    psycopg.OperationalError,
    psycopg.InterfaceError,
    sqlite3.OperationalError,
    PoolTimeout,
    ConnectionError,
    TimeoutError,
)


@dataclass
class PartitionStats:
    applied: int = 0
    duplicates: int = 0
    dead_lettered: int = 0
    batches: int = 0
    retries: int = 0
    dead_letters_by_code: dict[str, int] = field(default_factory=dict)
    last_commit_at: float | None = None


class PartitionWorker:
    def __init__(
        self,
        *,
        js: JetStreamContext,
        durable: str,
        folder: BatchFolder | None,
        batch_size: int,
        on_commit: Callable[[], None] | None = None,
        fetch_timeout: float = 1.0,
        max_backoff: float = 5.0,
        fault: Callable[[str], None] | None = None,
        checks: TenantChecks | None = None,
    ) -> None:
        self.js = js
        self.durable = durable
        self.folder = folder
        self.batch_size = batch_size
        self.on_commit = on_commit
        self.fetch_timeout = fetch_timeout
        self.max_backoff = max_backoff
        self.position = 0
        self.stats = PartitionStats()
        # Fault injection for crash tests: called with "before_commit" and "after_commit";
        # raising there is what a kill at that instant looks like to everything else.
        self.fault = fault
        self.checks = checks

    async def run(self, stop: asyncio.Event) -> None:
        feed = await self._bind()
        if self.folder is not None:
            self.position = await self._retry_transient(
                lambda: asyncio.to_thread(
                    self.folder.store.tracked_position,  # type: ignore[union-attr]
                    self.folder.tracking_name,  # type: ignore[union-attr]
                ),
                [],
                stop,
            )
        feeds = [feed]
        try:
            await self._consume(feeds, stop)
        finally:
            with contextlib.suppress(Exception):
                await feeds[0].stop()

    async def _bind(self) -> PullFeed:
        """A feed of this worker's durable consumer (which must exist: NotFoundError)."""
        await self.js.consumer_info(INGEST_STREAM, self.durable)
        connection = self.js._nc  # the JetStream context's own NATS connection
        feed = PullFeed(connection, INGEST_STREAM, self.durable, self.batch_size)
        await feed.start()
        return feed

    async def _consume(self, feeds: list[PullFeed], stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                msgs = await feeds[0].next_batch(self.fetch_timeout)
            except (TimeoutError, nats.errors.TimeoutError):
                continue
            except nats.js.errors.APIError as error:
                # The consumer was deleted or replaced: bind again (it is re-created by
                # whoever manages the topology) and go on; nothing unacked is lost.
                log.warning("partition consumer %s answered %s; binding again",
                            self.durable, error)
                await asyncio.sleep(0.5)
                with contextlib.suppress(Exception):
                    await feeds[0].stop()
                feeds[0] = await self._bind()
                continue
            except (nats.errors.ConnectionClosedError, nats.errors.DrainTimeoutError):
                if stop.is_set():
                    return
                raise
            await self.process(msgs, stop)

    # ------------------------------------------------------------------ one batch

    async def process(self, msgs: list[Msg], stop: asyncio.Event) -> None:
        if not msgs:
            return
        started = time.perf_counter()
        accepted: list[tuple[Msg, InboundEvent]] = []
        rejected: list[Msg] = []
        top = max(stream_sequence(msg.reply) for msg in msgs)
        for msg in msgs:
            # No message is skipped by its position: JetStream redelivers an unacked
            # message after newer ones (a crash, a dropped fetch), so "at or below the
            # committed position" does not mean "applied". The received ids decide.
            subject = original_subject(msg.subject)
            result = decode(subject, msg.data)
            if isinstance(result, Rejection):
                await self._dead_letter(msg, subject, result.code, result.detail)
                rejected.append(msg)
            else:
                accepted.append((msg, result))

        if self.checks is not None and accepted:
            accepted = await self._check_tenant_rules(accepted, rejected, msgs, stop)
        if self.fault is not None:
            self.fault("before_commit")
        decoded = time.perf_counter()
        if self.folder is not None:
            position = top if top > self.position else None
            with metrics.FOLD_SECONDS.time():
                await self._fold(accepted, position, stop)
        committed = time.perf_counter()
        metrics.BATCH_SIZE.observe(len(msgs))
        for kind, count in Counter(event.type for _, event in accepted).items():
            metrics.INGESTED.labels(kind, "accepted").inc(count)
        self.position = max(self.position, top)
        if self.fault is not None:
            self.fault("after_commit")
        for msg in rejected:
            await msg.ack()
        for msg, _ in accepted:
            await msg.ack()
        self.stats.batches += 1
        if self.on_commit is not None:
            self.on_commit()
        if log.isEnabledFor(logging.DEBUG):
            done = time.perf_counter()
            log.debug("batch of %d: %d accepted, decoded in %.1f ms, committed in %.1f ms, "
                      "acked in %.1f ms", len(msgs), len(accepted),
                      1000 * (decoded - started), 1000 * (committed - decoded),
                      1000 * (done - committed), extra={
                          "partition": self.durable, "messages": len(msgs),
                          "position": self.position})

    async def _fold(
        self,
        accepted: list[tuple[Msg, InboundEvent]],
        position: int | None,
        stop: asyncio.Event,
    ) -> None:
        folder = self.folder
        assert folder is not None
        pending = list(accepted)
        while True:
            events = [event for _, event in pending]
            try:
                outcome = await self._retry_transient(
                    lambda events=events, position=position: asyncio.to_thread(  # type: ignore[misc]
                        folder.fold_and_commit, events, position
                    ),
                    [m for m, _ in pending],
                    stop,
                )
            except FoldError as error:
                msg, event = pending.pop(error.index)
                log.error(
                    "event could not be folded; dead-lettered",
                    extra={"tenant": event.tenant, "event_id": event.event_id},
                )
                await self._dead_letter(
                    msg,
                    original_subject(msg.subject),
                    PROCESSING_FAILED,
                    f"ficha could not apply this event ({type(error.cause).__name__}: "
                    f"{error.cause}); it was set aside so that later events keep flowing: "
                    "report it, and re-drive it once fixed",
                )
                continue
            except StoreIntegrityError:
                # Another writer got there first (a second owner, or this position was
                # committed before a restart): reload and fold again; the received ids
                # then drop what was applied, and the position is only moved forward.
                folder.forget()
                committed = await asyncio.to_thread(
                    folder.store.tracked_position, folder.tracking_name
                )
                self.position = max(self.position, committed)
                if position is not None and position <= committed:
                    position = None
                self.stats.retries += 1
                await asyncio.sleep(0.1)
                continue
            self.stats.applied += outcome.applied
            self.stats.duplicates += outcome.duplicates
            metrics.DUPLICATES.inc(outcome.duplicates)
            self.stats.last_commit_at = time.time()
            return

    async def _check_tenant_rules(
        self, accepted: list[tuple[Msg, InboundEvent]], rejected: list[Msg], msgs: list[Msg],
        stop: asyncio.Event,
    ) -> list[tuple[Msg, InboundEvent]]:
        """Dead-letter the events that break their tenant's definitions; keep the rest."""
        checks = self.checks
        assert checks is not None
        tenants = {event.tenant for _, event in accepted}
        if checks.stale(tenants):  # read at most every couple of seconds per tenant
            await self._retry_transient(
                lambda: asyncio.to_thread(checks.refresh, tenants), msgs, stop
            )
        kept = []
        for msg, event in accepted:
            problem = checks.problem(event)
            if problem is None:
                kept.append((msg, event))
            else:
                await self._dead_letter(msg, original_subject(msg.subject), *problem)
                rejected.append(msg)
        return kept

    async def _retry_transient(self, attempt, msgs: list[Msg], stop: asyncio.Event):  # type: ignore[no-untyped-def]
        delay = 0.2
        last_progress = time.monotonic()
        while True:
            try:
                return await attempt()
            except TRANSIENT_ERRORS as error:
                self.stats.retries += 1
                metrics.STORE_RETRIES.inc()
                log.warning("store unavailable, retrying in %.1fs: %s", delay, error)
                if stop.is_set():
                    raise
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.max_backoff)
                if time.monotonic() - last_progress > 5.0:
                    # Keep the held messages ours while we wait: no redelivery, no reorder.
                    for msg in msgs:
                        await msg.in_progress()
                    last_progress = time.monotonic()

    async def _dead_letter(self, msg: Msg, subject: str, code: str, detail: str) -> None:
        tenant, kind, _ = subject_tokens(subject)
        log.info("dead-lettered %s: %s", code, detail, extra={
            "tenant": tenant, "type": kind, "code": code, "event_id": _event_id(msg.data),
            "stream_sequence": msg.metadata.sequence.stream,
        })
        await dead_letter(
            self.js,
            msg,
            original_subject=subject,
            code=code,
            detail=detail,
            tenant_token=tenant,
            type_token=kind,
        )
        self.stats.dead_lettered += 1
        self.stats.dead_letters_by_code[code] = self.stats.dead_letters_by_code.get(code, 0) + 1
        metrics.DEAD_LETTERS.labels(code).inc()
        metrics.INGESTED.labels(kind, "dead_lettered").inc()


def _event_id(data: bytes) -> str | None:
    """The event_id of a rejected body, if it has a readable one (for the log line)."""
    try:
        value = read_json(data).get("event_id")
    except (ValueError, AttributeError):
        return None
    return value if isinstance(value, str) else None
