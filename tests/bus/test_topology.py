"""ensure_topology: the streams and consumers ficha owns, created or updated in place."""

from __future__ import annotations

import json

import pytest
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.api import StorageType, StreamConfig, SubjectTransform

from services.streams import (
    DLQ_STREAM,
    INGEST_MAX_MSG_SIZE,
    INGEST_STREAM,
    OUT_STREAM,
    UNROUTED_CONSUMER,
    PartitionCountMismatch,
    TopologySettings,
    consumer_name,
    ensure_topology,
    transform_dest,
)

pytestmark = pytest.mark.usefixtures("fresh_topology")


async def _snapshot(js: JetStreamContext, partitions: int) -> dict[str, object]:
    streams = {
        name: (await js.stream_info(name)).config.as_dict()
        for name in (INGEST_STREAM, DLQ_STREAM, OUT_STREAM)
    }
    durables = [consumer_name(k) for k in range(partitions)] + [UNROUTED_CONSUMER]
    consumers = {
        name: (await js.consumer_info(INGEST_STREAM, name)).config.as_dict() for name in durables
    }
    return {"streams": streams, "consumers": consumers}


async def test_the_topology_is_created_as_designed(js: JetStreamContext) -> None:
    await ensure_topology(js, TopologySettings())
    ingest = (await js.stream_info(INGEST_STREAM)).config
    assert ingest.subjects == ["ficha.in.>"]
    assert ingest.storage == StorageType.FILE
    assert ingest.duplicate_window == 0.1  # the server's minimum: decision 0004
    assert ingest.max_age == 7 * 24 * 3600
    assert ingest.max_msg_size == INGEST_MAX_MSG_SIZE
    assert 64 * 1024 < INGEST_MAX_MSG_SIZE < 1024 * 1024
    assert ingest.subject_transform == SubjectTransform(
        src="ficha.in.*.*",
        dest="ficha.part.{{partition(8,1)}}.{{wildcard(1)}}.{{wildcard(2)}}",
    )
    assert (ingest.metadata or {})["ficha_partitions"] == "8"

    dlq = (await js.stream_info(DLQ_STREAM)).config
    assert (dlq.subjects, dlq.max_age, dlq.duplicate_window) == (["ficha.dlq.>"], 0, 120)
    out = (await js.stream_info(OUT_STREAM)).config
    assert (out.subjects, out.max_age) == (["ficha.out.>"], 30 * 24 * 3600)

    for k in range(8):
        config = (await js.consumer_info(INGEST_STREAM, consumer_name(k))).config
        assert config.durable_name == f"ficha-agg-p{k}"
        assert config.filter_subject == f"ficha.part.{k}.>"
        assert (config.ack_wait, config.max_ack_pending, config.max_deliver) == (30, 10_000, -1)
    unrouted = (await js.consumer_info(INGEST_STREAM, UNROUTED_CONSUMER)).config
    assert unrouted.filter_subject == "ficha.in.>"
    consumers = sorted(c.name for c in await js.consumers_info(INGEST_STREAM))
    assert consumers == sorted([*(consumer_name(k) for k in range(8)), UNROUTED_CONSUMER])


async def _created(nc: NATS) -> str:
    """When FICHA_IN was created (nats-py 2.14's StreamInfo does not expose it)."""
    reply = await nc.request(f"$JS.API.STREAM.INFO.{INGEST_STREAM}", b"", timeout=2)
    created: str = json.loads(reply.data)["created"]
    return created


async def test_running_it_twice_changes_nothing(js: JetStreamContext, nc: NATS) -> None:
    settings = TopologySettings(partitions=4)
    await ensure_topology(js, settings)
    first = await _snapshot(js, 4)
    created = await _created(nc)
    await ensure_topology(js, settings)
    assert await _snapshot(js, 4) == first
    assert await _created(nc) == created


async def test_the_duplicate_window_and_max_age_are_updated_in_place(
    js: JetStreamContext, nc: NATS
) -> None:
    await ensure_topology(js, TopologySettings(partitions=2))
    await js.publish("ficha.in.acme.form_submitted", b"{}", headers={"Nats-Msg-Id": "e1"})
    created = await _created(nc)

    await ensure_topology(
        js, TopologySettings(partitions=2, duplicate_window_s=30, ingest_max_age_s=0)
    )
    info = await js.stream_info(INGEST_STREAM)
    assert (info.config.duplicate_window, info.config.max_age) == (30, 0)
    assert await _created(nc) == created, "updated, not recreated"
    assert info.state.messages == 1, "stored events survive the update"


async def test_consumer_settings_are_updated_in_place(js: JetStreamContext) -> None:
    await ensure_topology(js, TopologySettings(partitions=2))
    await ensure_topology(js, TopologySettings(partitions=2, ack_wait_s=5, max_ack_pending=1))
    for name in (consumer_name(0), consumer_name(1), UNROUTED_CONSUMER):
        config = (await js.consumer_info(INGEST_STREAM, name)).config
        assert (config.ack_wait, config.max_ack_pending) == (5, 1)


async def test_another_partition_count_is_refused(js: JetStreamContext) -> None:
    await ensure_topology(js, TopologySettings(partitions=4))
    before = await _snapshot(js, 4)
    with pytest.raises(PartitionCountMismatch) as raised:
        await ensure_topology(js, TopologySettings(partitions=5))
    message = str(raised.value)
    assert "created with 4 partitions" in message
    assert "remaps tenants" in message
    assert "FICHA_PARTITIONS=4" in message
    assert await _snapshot(js, 4) == before, "nothing was changed"


async def test_the_partition_count_is_read_from_the_transform_without_metadata(
    js: JetStreamContext,
) -> None:
    """A FICHA_IN created without ficha's metadata still tells its partition count."""
    await js.add_stream(
        StreamConfig(
            name=INGEST_STREAM,
            subjects=["ficha.in.>"],
            storage=StorageType.FILE,
            subject_transform=SubjectTransform(src="ficha.in.*.*", dest=transform_dest(3)),
        )
    )
    with pytest.raises(PartitionCountMismatch, match="created with 3 partitions"):
        await ensure_topology(js, TopologySettings(partitions=8))
    await ensure_topology(js, TopologySettings(partitions=3))
    info = await js.stream_info(INGEST_STREAM)
    assert (info.config.metadata or {})["ficha_partitions"] == "3"


def test_a_partition_count_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        TopologySettings(partitions=0)
