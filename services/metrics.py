"""What ficha's processes count and time, for Prometheus (one registry per process).

Every long-running process serves them on ``/metrics`` next to ``/healthz`` (the process
is alive) and ``/readyz`` (it can do its work: its database and bus are reachable), see
``services.health``.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

INGESTED = Counter(
    "ficha_ingest_events_total",
    "Inbound messages by event type and outcome (accepted, dead_lettered).",
    ["type", "outcome"],
)
DUPLICATES = Counter(
    "ficha_ingest_duplicates_total",
    "Accepted events already applied before (a redelivery or a producer's retry).",
)
DEAD_LETTERS = Counter(
    "ficha_dead_letters_total", "Messages sent to the dead-letter stream, by error code.",
    ["code"],
)
FOLD_SECONDS = Histogram(
    "ficha_fold_seconds", "Time to decode, fold and commit one ingest batch.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
BATCH_SIZE = Histogram(
    "ficha_ingest_batch_messages", "Messages per ingest batch.",
    buckets=(1, 5, 10, 25, 50, 100, 250, 500, 1000),
)
DEAD_LETTERS_STORED = Gauge(
    "ficha_dead_letters_stored",
    "Dead letters waiting in FICHA_DLQ (all tenants): what `ficha dlq list` shows.",
)
PARTITION_LAG = Gauge(
    "ficha_partition_lag_messages", "Messages of a partition not yet delivered, in JetStream.",
    ["partition"],
)
STORE_RETRIES = Counter(
    "ficha_store_retries_total", "Batches retried because the database was unavailable.",
)
NATS_RECONNECTS = Counter("ficha_nats_reconnects_total", "Reconnections to NATS.")
PROJECTION_PAGE_SECONDS = Histogram(
    "ficha_projection_page_seconds", "Time to apply one page of the log to a projection.",
    ["projection"], buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
PROJECTION_EVENTS = Counter(
    "ficha_projection_events_total", "Events applied to a projection.", ["projection"],
)
PROJECTION_LAG = Gauge(
    "ficha_projection_lag_events", "Events in the log a projection has not applied yet.",
    ["projection"],
)
PROJECTION_FAILURES = Counter(
    "ficha_projection_failures_total", "Pages that failed and were retried.", ["projection"],
)
OUT_PUBLISHED = Counter(
    "ficha_out_published_total", "Outbound events published to ficha.out.",
)
OUT_ANCHOR_LOST = Counter(
    "ficha_out_anchor_lost_total",
    "Times the relay resumed by instant: a rebuild did not reproduce its last published event.",
)
ERASURES_COMPLETED = Counter(
    "ficha_erasures_completed_total",
    "Erasures completed: every read model confirmed, contact_erased out, streams purged.",
)
ERASURES_PENDING = Gauge(
    "ficha_erasures_pending", "Erasure requests applied by ingestion and not yet complete.",
)
