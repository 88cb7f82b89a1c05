"""The JetStream topology ficha owns, created or updated idempotently at start-up.

* FICHA_IN  (``ficha.in.>``): inbound events. A subject transform partitions by tenant:
  ``ficha.in.<tenant>.<type>`` is stored as ``ficha.part.<k>.<tenant>.<type>``, where
  k = FNV-1a(tenant) mod P is computed by the server. Subjects without exactly these two
  tokens (``ficha.in.acme``, ``ficha.in.a.b.c``) are stored unchanged, under ``ficha.in.>``,
  where the "unrouted" consumer finds them so the app can dead-letter them.
* FICHA_DLQ (``ficha.dlq.>``): rejected inbound events, unchanged, with reason headers.
* FICHA_OUT (``ficha.out.>``): what ficha publishes for automation services.

P is fixed once FICHA_IN exists (it is kept in the stream's metadata): changing it would
send a tenant's later events to another partition than its queued ones.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    ConsumerInfo,
    DeliverPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
    StreamInfo,
    SubjectTransform,
)
from nats.js.errors import NotFoundError

INGEST_STREAM = "FICHA_IN"
DLQ_STREAM = "FICHA_DLQ"
OUT_STREAM = "FICHA_OUT"

INGEST_PREFIX = "ficha.in"
PARTITION_PREFIX = "ficha.part"
INGEST_SUBJECT = f"{INGEST_PREFIX}.>"
DLQ_SUBJECT = "ficha.dlq.>"
OUT_SUBJECT = "ficha.out.>"
INGEST_TRANSFORM_SRC = f"{INGEST_PREFIX}.*.*"

PARTITION_CONSUMER_PREFIX = "ficha-agg-p"
UNROUTED_CONSUMER = "ficha-agg-unrouted"
PARTITIONS_METADATA_KEY = "ficha_partitions"

DEFAULT_PARTITIONS = 8
# FICHA_IN keeps JetStream's de-dup window at the server's minimum: the window is
# stream-wide, so a longer one would drop an event of one tenant whose event_id another
# tenant used moments before (event ids are unique per tenant only). ficha de-duplicates
# by (tenant, event_id) itself, for ever. See docs/decisions/0004.
DEFAULT_DUPLICATE_WINDOW_S = 0.1
# FICHA_DLQ and FICHA_OUT carry ids that ficha makes, unique across tenants.
OWN_IDS_DUPLICATE_WINDOW_S = 120.0
DEFAULT_INGEST_MAX_AGE_S = 7 * 24 * 3600.0
DEFAULT_OUT_MAX_AGE_S = 30 * 24 * 3600.0
DEFAULT_ACK_WAIT_S = 30.0
DEFAULT_MAX_ACK_PENDING = 10_000

MIB = 1024 * 1024
# Bodies over the contract's 64 KiB are still stored, so that the app can dead-letter them
# (the app rejects them). The server's max_payload (1 MiB by default) caps headers + body of
# every publish, and nats-py only checks the body: a publish over it makes the server drop
# the connection. So FICHA_IN keeps 16 KiB of that 1 MiB free for the headers the app adds
# when it republishes a message to FICHA_DLQ; a bigger publish gets an error PubAck.
INGEST_MAX_MSG_SIZE = MIB - 16 * 1024
DLQ_MAX_MSG_SIZE = MIB
# The server refuses to update max_waiting on an existing consumer: never change this value.
CONSUMER_MAX_WAITING = 16

_PARTITION_IN_DEST = re.compile(r"\{\{\s*partition\(\s*(\d+)\s*,", re.IGNORECASE)


class PartitionCountMismatch(RuntimeError):
    """FICHA_IN exists with another partition count than the one configured."""


@dataclass(frozen=True)
class TopologySettings:
    partitions: int = DEFAULT_PARTITIONS
    duplicate_window_s: float = DEFAULT_DUPLICATE_WINDOW_S
    ingest_max_age_s: float = DEFAULT_INGEST_MAX_AGE_S  # 0 = unlimited
    out_max_age_s: float = DEFAULT_OUT_MAX_AGE_S  # 0 = unlimited
    ack_wait_s: float = DEFAULT_ACK_WAIT_S
    max_ack_pending: int = DEFAULT_MAX_ACK_PENDING
    replicas: int = 1  # 3 on a JetStream cluster: a stream survives the loss of a node

    def __post_init__(self) -> None:
        if self.partitions < 1:
            raise ValueError(f"partitions must be at least 1, not {self.partitions}")


# ------------------------------------------------------------------------------ subjects


def partition_subject(partition: int) -> str:
    """The filter of one partition: ``ficha.part.<k>.>``."""
    return f"{PARTITION_PREFIX}.{partition}.>"


def consumer_name(partition: int) -> str:
    """The durable pull consumer of one partition: ``ficha-agg-p<k>``."""
    return f"{PARTITION_CONSUMER_PREFIX}{partition}"


def transform_dest(partitions: int) -> str:
    """Where the server stores ``ficha.in.<tenant>.<type>``: partitioned by the tenant."""
    return (
        f"{PARTITION_PREFIX}.{{{{partition({partitions},1)}}}}"
        ".{{wildcard(1)}}.{{wildcard(2)}}"
    )


def original_subject(stored_subject: str) -> str:
    """``ficha.part.3.acme.form_submitted`` -> ``ficha.in.acme.form_submitted``.

    A subject that the transform did not rewrite is returned as it is.
    """
    if partition_of(stored_subject) is None:
        return stored_subject
    rest = stored_subject.split(".", 3)[3]
    return f"{INGEST_PREFIX}.{rest}"


def stream_sequence(reply: str) -> int:
    """The stream sequence of a JetStream message, read from its ack subject.

    ``$JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.<ts>.<pending>``,
    or with ``<domain>.<account hash>`` after ``ACK`` (and a trailing token) in the newer
    form. nats-py's ``Msg.metadata`` parses the same subject into dataclasses and a
    datetime, about 7 µs a message: a tenth of the ingest's own cost per event.
    """
    tokens = reply.split(".")
    if len(tokens) < 9 or tokens[0] != "$JS" or tokens[1] != "ACK":
        raise ValueError(f"not a JetStream ack subject: {reply!r}")
    return int(tokens[5] if len(tokens) == 9 else tokens[7])


def partition_of(stored_subject: str) -> int | None:
    """The k of ``ficha.part.<k>.<tenant>.<type>``; None for any other subject."""
    tokens = stored_subject.split(".")
    if len(tokens) < 4 or ".".join(tokens[:2]) != PARTITION_PREFIX:
        return None
    if not (tokens[2].isascii() and tokens[2].isdigit()):
        return None
    return int(tokens[2])


# ------------------------------------------------------------------------------ streams


def ingest_stream_config(settings: TopologySettings) -> StreamConfig:
    return StreamConfig(
        name=INGEST_STREAM,
        description="ficha inbound events, partitioned by tenant",
        subjects=[INGEST_SUBJECT],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        max_age=settings.ingest_max_age_s,
        duplicate_window=settings.duplicate_window_s,
        max_msg_size=INGEST_MAX_MSG_SIZE,
        num_replicas=settings.replicas,
        subject_transform=SubjectTransform(
            src=INGEST_TRANSFORM_SRC, dest=transform_dest(settings.partitions)
        ),
        metadata={PARTITIONS_METADATA_KEY: str(settings.partitions)},
    )


def dlq_stream_config(settings: TopologySettings | None = None) -> StreamConfig:
    return StreamConfig(
        name=DLQ_STREAM,
        description="ficha dead letters: rejected inbound events, unchanged, with reasons",
        subjects=[DLQ_SUBJECT],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        max_age=0,
        duplicate_window=OWN_IDS_DUPLICATE_WINDOW_S,
        max_msg_size=DLQ_MAX_MSG_SIZE,
        num_replicas=1 if settings is None else settings.replicas,
    )


def out_stream_config(settings: TopologySettings) -> StreamConfig:
    return StreamConfig(
        name=OUT_STREAM,
        description="ficha outbound events for automation services",
        subjects=[OUT_SUBJECT],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        max_age=settings.out_max_age_s,
        duplicate_window=OWN_IDS_DUPLICATE_WINDOW_S,
        num_replicas=settings.replicas,
    )


def partitions_of(config: StreamConfig) -> int | None:
    """The partition count an existing FICHA_IN was created with, if it can be told."""
    recorded = (config.metadata or {}).get(PARTITIONS_METADATA_KEY)
    if recorded is not None and recorded.isascii() and recorded.isdigit():
        return int(recorded)
    transform = config.subject_transform
    found = _PARTITION_IN_DEST.search(transform.dest) if transform else None
    return int(found.group(1)) if found else None


def _mismatch_message(existing: int, wanted: int) -> str:
    return (
        f"stream {INGEST_STREAM} was created with {existing} partitions, but {wanted} are "
        f"configured (FICHA_PARTITIONS={wanted}). The partition count is fixed once the "
        f"stream exists: changing it remaps tenants to other partitions, so a tenant's queued "
        f"events and its new ones would be consumed by different workers, out of order. Keep "
        f"FICHA_PARTITIONS={existing}; or, to change it, stop the producers, let every "
        f"partition consumer drain, delete the {INGEST_STREAM} stream, and start ficha again "
        f"with the new count."
    )


def _differs(existing: StreamConfig, wanted: StreamConfig) -> bool:
    def seconds_differ(a: float | None, b: float | None) -> bool:
        return not math.isclose(a or 0.0, b or 0.0, abs_tol=1e-6)

    def transform(config: StreamConfig) -> tuple[str, str] | None:
        t = config.subject_transform
        return (t.src, t.dest) if t else None

    existing_meta = existing.metadata or {}
    return (
        sorted(existing.subjects or []) != sorted(wanted.subjects or [])
        or seconds_differ(existing.max_age, wanted.max_age)
        or seconds_differ(existing.duplicate_window, wanted.duplicate_window)
        or (existing.max_msg_size or -1) != (wanted.max_msg_size or -1)
        or existing.description != wanted.description
        or transform(existing) != transform(wanted)
        or any(existing_meta.get(k) != v for k, v in (wanted.metadata or {}).items())
        or (existing.num_replicas or 1) != (wanted.num_replicas or 1)
    )


async def ensure_stream(js: JetStreamContext, config: StreamConfig) -> StreamInfo:
    """Create the stream, or update it in place when a setting ficha manages differs."""
    assert config.name is not None
    try:
        info = await js.stream_info(config.name)
    except NotFoundError:
        return await js.add_stream(config)
    if _differs(info.config, config):
        return await js.update_stream(config)
    return info


# ---------------------------------------------------------------------------- consumers


def _pull_consumer_config(
    durable: str, filter_subject: str, ack_wait_s: float, max_ack_pending: int
) -> ConsumerConfig:
    return ConsumerConfig(
        durable_name=durable,
        filter_subject=filter_subject,
        ack_policy=AckPolicy.EXPLICIT,
        deliver_policy=DeliverPolicy.ALL,
        ack_wait=ack_wait_s,
        max_deliver=-1,
        max_ack_pending=max_ack_pending,
        max_waiting=CONSUMER_MAX_WAITING,
    )


async def ensure_partition_consumer(
    js: JetStreamContext,
    partition: int,
    *,
    ack_wait_s: float = DEFAULT_ACK_WAIT_S,
    max_ack_pending: int = DEFAULT_MAX_ACK_PENDING,
) -> ConsumerInfo:
    """Create or update the durable pull consumer ``ficha-agg-p<k>`` of one partition.

    ``js.add_consumer`` creates or updates a durable; ``pull_subscribe`` never updates one.
    """
    config = _pull_consumer_config(
        consumer_name(partition), partition_subject(partition), ack_wait_s, max_ack_pending
    )
    return await js.add_consumer(INGEST_STREAM, config)


async def ensure_unrouted_consumer(
    js: JetStreamContext,
    *,
    ack_wait_s: float = DEFAULT_ACK_WAIT_S,
    max_ack_pending: int = DEFAULT_MAX_ACK_PENDING,
) -> ConsumerInfo:
    """Create or update ``ficha-agg-unrouted``: every message the transform did not route.

    After the transform every well-formed subject is stored under ``ficha.part.>``, so
    whatever is still under ``ficha.in.>`` is malformed and must be dead-lettered.
    """
    config = _pull_consumer_config(UNROUTED_CONSUMER, INGEST_SUBJECT, ack_wait_s, max_ack_pending)
    return await js.add_consumer(INGEST_STREAM, config)


# ----------------------------------------------------------------------------- topology


async def ensure_topology(js: JetStreamContext, settings: TopologySettings) -> None:
    """Create or update the three streams and the ingest consumers; safe to run again.

    Raises PartitionCountMismatch, and changes nothing, when FICHA_IN exists with another
    partition count.
    """
    try:
        existing = await js.stream_info(INGEST_STREAM)
    except NotFoundError:
        existing = None
    if existing is not None:
        recorded = partitions_of(existing.config)
        if recorded is not None and recorded != settings.partitions:
            raise PartitionCountMismatch(_mismatch_message(recorded, settings.partitions))
    await ensure_stream(js, ingest_stream_config(settings))
    await ensure_stream(js, dlq_stream_config(settings))
    await ensure_stream(js, out_stream_config(settings))
    for partition in range(settings.partitions):
        await ensure_partition_consumer(
            js,
            partition,
            ack_wait_s=settings.ack_wait_s,
            max_ack_pending=settings.max_ack_pending,
        )
    await ensure_unrouted_consumer(
        js, ack_wait_s=settings.ack_wait_s, max_ack_pending=settings.max_ack_pending
    )
