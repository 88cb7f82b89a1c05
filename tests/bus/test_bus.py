"""The embedded nats-server and ficha's JetStream topology, on a real server."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import nats
import pytest
from nats.js.api import ConsumerConfig

from services.natsserver import EmbeddedNatsServer, NatsServerError
from services.streams import (
    INGEST_STREAM,
    UNROUTED_CONSUMER,
    PartitionCountMismatch,
    TopologySettings,
    consumer_name,
    ensure_topology,
    original_subject,
    partition_of,
)


def test_a_taken_port_is_a_clear_error(nats_server: EmbeddedNatsServer, tmp_path: Path) -> None:
    assert nats_server.alive
    second = EmbeddedNatsServer(tmp_path, port=nats_server.port)
    with pytest.raises(NatsServerError, match="address already in use|exited"):
        second.start()
    assert nats_server.alive


async def test_topology_is_idempotent_and_partitions_by_tenant(
    nats_server: EmbeddedNatsServer, fresh_topology: None
) -> None:
    nc = await nats.connect(nats_server.url)
    js = nc.jetstream()
    await ensure_topology(js, TopologySettings(partitions=4))
    await ensure_topology(js, TopologySettings(partitions=4, duplicate_window_s=30))
    info = await js.stream_info(INGEST_STREAM)
    assert info.config.duplicate_window == 30
    with pytest.raises(PartitionCountMismatch, match="FICHA_PARTITIONS=4"):
        await ensure_topology(js, TopologySettings(partitions=5))

    tenants = [f"t{i}" for i in range(40)]
    for tenant in tenants:
        for kind in ("form_submitted", "email_sent"):
            await js.publish(f"ficha.in.{tenant}.{kind}", b"{}")
    await js.publish("ficha.in.acme", b"{}")
    await js.publish("ficha.in.a.b.c", b"{}")
    with pytest.raises(nats.js.errors.NoStreamResponseError):
        await js.publish("ficha.part.1.x.y", b"{}", timeout=1)

    where: dict[str, set[int]] = defaultdict(set)
    last_seq = {}
    for k in range(4):
        sub = await js.pull_subscribe_bind(durable=consumer_name(k), stream=INGEST_STREAM)
        msgs = await sub.fetch(100, timeout=2)
        sequences = [m.metadata.sequence.stream for m in msgs]
        assert sequences == sorted(sequences)
        for msg in msgs:
            assert partition_of(msg.subject) == k
            tenant = original_subject(msg.subject).split(".")[2]
            where[tenant].add(k)
            last_seq[k] = msg.metadata.sequence.stream
            await msg.ack()
    assert set(where) == set(tenants)
    assert all(len(parts) == 1 for parts in where.values()), "a tenant stays in one partition"
    assert len({next(iter(p)) for p in where.values()}) == 4, "tenants spread over partitions"
    unrouted = await js.pull_subscribe_bind(durable=UNROUTED_CONSUMER, stream=INGEST_STREAM)
    assert sorted(m.subject for m in await unrouted.fetch(10, timeout=2)) == [
        "ficha.in.a.b.c",
        "ficha.in.acme",
    ]
    await nc.close()


async def test_msg_id_dedup_inside_the_window(
    nats_server: EmbeddedNatsServer, fresh_topology: None
) -> None:
    nc = await nats.connect(nats_server.url)
    js = nc.jetstream()
    await ensure_topology(js, TopologySettings(partitions=2))
    acks = [await js.publish("ficha.in.acme.form_submitted", b"{}",
                             headers={"Nats-Msg-Id": "same"}) for _ in range(3)]
    assert [a.duplicate for a in acks] == [None, True, True] or [
        bool(a.duplicate) for a in acks] == [False, True, True]
    assert (await js.stream_info(INGEST_STREAM)).state.messages == 1
    await nc.close()


async def test_restart_keeps_durable_positions(tmp_path: Path) -> None:
    server = EmbeddedNatsServer(tmp_path / "n")
    server.start()
    nc = await nats.connect(server.url)
    js = nc.jetstream()
    await ensure_topology(js, TopologySettings(partitions=1))
    for i in range(5):
        await js.publish("ficha.in.acme.form_submitted", str(i).encode())
    sub = await js.pull_subscribe_bind(durable=consumer_name(0), stream=INGEST_STREAM)
    for msg in await sub.fetch(2, timeout=2):
        await msg.ack()
    await nc.flush()
    await nc.close()
    server.stop()
    server.start()
    nc = await nats.connect(server.url)
    js = nc.jetstream()
    info = await js.consumer_info(INGEST_STREAM, consumer_name(0))
    assert info.num_pending == 3
    assert isinstance(info.config, ConsumerConfig)
    await nc.close()
    server.stop()
