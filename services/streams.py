"""The JetStream topology ficha owns, created or updated idempotently at start-up.

* FICHA_IN  (ficha.in.>): inbound events. A subject transform partitions by tenant:
  ficha.in.<tenant>.<type> is stored as ficha.part.<k>.<tenant>.<type>, k in [0, P).
  Subjects that do not have exactly these tokens stay as they are, under ficha.in.>,
  where the "unrouted" consumer dead-letters them.
* FICHA_DLQ (ficha.dlq.>): rejected inbound events, unchanged, with reason headers.
* FICHA_OUT (ficha.out.>): what ficha publishes for automation services.

P is fixed once the stream exists (it is kept in the stream's metadata): changing it
would send a tenant's later events to another partition than its queued ones.
"""

from __future__ import annotations

from dataclasses import dataclass

from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
    SubjectTransform,
)
from nats.js.errors import NotFoundError

INGEST_STREAM = "FICHA_IN"
DLQ_STREAM = "FICHA_DLQ"
OUT_STREAM = "FICHA_OUT"
INGEST_SUBJECTS = "ficha.in.>"
PARTITIONED_PREFIX = "ficha.part"
UNROUTED_CONSUMER = "ficha-agg-unrouted"
PARTITIONS_KEY = "ficha_partitions"
MAX_STORED_MSG = 1024 * 1024  # store oversized bodies so they can be dead-lettered


class PartitionCountMismatch(RuntimeError):
    pass


@dataclass(frozen=True)
class TopologySettings:
    partitions: int = 8
    duplicate_window_s: float = 120.0
    ingest_max_age_s: float = 7 * 24 * 3600.0
    out_max_age_s: float = 30 * 24 * 3600.0
    ack_wait_s: float = 30.0
    max_ack_pending: int = 10_000


def partition_subject(partition: int) -> str:
    return f"{PARTITIONED_PREFIX}.{partition}.>"


def consumer_name(partition: int) -> str:
    return f"ficha-agg-p{partition}"


def original_subject(stored_subject: str) -> str:
    """ficha.part.3.acme.form_submitted → ficha.in.acme.form_submitted; others unchanged."""
    if stored_subject.startswith(PARTITIONED_PREFIX + "."):
        parts = stored_subject.split(".", 3)
        if len(parts) == 4:
            return f"ficha.in.{parts[3]}"
    return stored_subject


def partition_of(stored_subject: str) -> int | None:
    parts = stored_subject.split(".")
    if len(parts) > 2 and f"{parts[0]}.{parts[1]}" == PARTITIONED_PREFIX:
        try:
            return int(parts[2])
        except ValueError:
            return None
    return None


def _ingest_config(s: TopologySettings) -> StreamConfig:
    return StreamConfig(
        name=INGEST_STREAM,
        description="ficha inbound events, partitioned by tenant",
        subjects=[INGEST_SUBJECTS],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        max_age=s.ingest_max_age_s,
        duplicate_window=s.duplicate_window_s,
        max_msg_size=MAX_STORED_MSG,
        subject_transform=SubjectTransform(
            src="ficha.in.*.*",
            dest=f"{PARTITIONED_PREFIX}.{{{{partition({s.partitions},1)}}}}"
            ".{{wildcard(1)}}.{{wildcard(2)}}",
        ),
        metadata={PARTITIONS_KEY: str(s.partitions)},
    )


async def _create_or_update(js: JetStreamContext, config: StreamConfig) -> None:
    try:
        await js.stream_info(config.name)  # type: ignore[arg-type]
    except NotFoundError:
        await js.add_stream(config)
        return
    await js.update_stream(config)


async def ensure_topology(js: JetStreamContext, settings: TopologySettings) -> None:
    try:
        info = await js.stream_info(INGEST_STREAM)
    except NotFoundError:
        info = None
    if info is not None:
        existing = (info.config.metadata or {}).get(PARTITIONS_KEY)
        if existing is not None and int(existing) != settings.partitions:
            raise PartitionCountMismatch(
                f"the ingest stream was created with {existing} partitions but "
                f"FICHA_PARTITIONS={settings.partitions}: changing it would send a tenant's "
                f"new events to another partition than its queued ones. Set "
                f"FICHA_PARTITIONS={existing}, or drain the stream and recreate it."
            )
    await _create_or_update(js, _ingest_config(settings))
    await _create_or_update(
        js,
        StreamConfig(
            name=DLQ_STREAM,
            description="ficha dead letters: rejected inbound events with reasons",
            subjects=["ficha.dlq.>"],
            storage=StorageType.FILE,
            duplicate_window=settings.duplicate_window_s,
            max_msg_size=MAX_STORED_MSG,
        ),
    )
    await _create_or_update(
        js,
        StreamConfig(
            name=OUT_STREAM,
            description="ficha outbound events for automation services",
            subjects=["ficha.out.>"],
            storage=StorageType.FILE,
            max_age=settings.out_max_age_s,
            duplicate_window=settings.duplicate_window_s,
        ),
    )
    for partition in range(settings.partitions):
        await _ensure_consumer(js, consumer_name(partition), partition_subject(partition),
                               settings)
    await _ensure_consumer(js, UNROUTED_CONSUMER, INGEST_SUBJECTS, settings)


async def _ensure_consumer(
    js: JetStreamContext, durable: str, filter_subject: str, s: TopologySettings
) -> None:
    # add_consumer creates or updates a durable; pull_subscribe never updates one.
    await js.add_consumer(
        INGEST_STREAM,
        ConsumerConfig(
            durable_name=durable,
            filter_subject=filter_subject,
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL,
            ack_wait=s.ack_wait_s,
            max_deliver=-1,
            max_ack_pending=s.max_ack_pending,
            max_waiting=16,
        ),
    )
