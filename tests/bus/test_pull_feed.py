"""PullFeed against a real nats-server: the consumer's messages in order and in batches,
a quiet consumer times out and still gets what comes later (after its requests expired),
a message that carries a ``Status`` header of its own is a message, not a status, and a
deleted consumer is reported."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, StreamConfig

from services.ingest.feed import ConsumerGone, PullFeed


@pytest.fixture
async def stream(js: JetStreamContext) -> AsyncIterator[str]:
    name = f"FEED_{uuid.uuid4().hex[:8].upper()}"
    await js.add_stream(StreamConfig(name=name, subjects=[f"{name.lower()}.>"]))
    await js.add_consumer(name, ConsumerConfig(durable_name="c", ack_policy=AckPolicy.EXPLICIT))
    yield name
    await js.delete_stream(name)


async def test_messages_come_in_order_and_in_batches(nc: NATS, js: JetStreamContext,
                                                     stream: str) -> None:
    for i in range(25):
        await js.publish(f"{stream.lower()}.x", str(i).encode())
    feed = PullFeed(nc, stream, "c", batch=10)
    await feed.start()
    seen: list[int] = []
    while len(seen) < 25:
        msgs = await feed.next_batch(timeout=5)
        assert 0 < len(msgs) <= 10
        seen += [int(m.data) for m in msgs]
        for m in msgs:
            await m.ack()
    assert seen == list(range(25))
    with pytest.raises(TimeoutError):
        await feed.next_batch(timeout=0.3)
    await feed.stop()


async def test_a_quiet_consumer_still_gets_later_messages(nc: NATS, js: JetStreamContext,
                                                          stream: str) -> None:
    feed = PullFeed(nc, stream, "c", batch=10, expires=0.5)
    await feed.start()
    for _ in range(3):  # its requests expire (408) and are asked again
        with pytest.raises(TimeoutError):
            await feed.next_batch(timeout=0.4)
    # A producer's own "Status" header does not make its message a server status.
    await js.publish(f"{stream.lower()}.x", b"late", headers={"Status": "408"})
    msgs: list = []
    for _ in range(10):
        try:
            msgs = await feed.next_batch(timeout=1)
            break
        except TimeoutError:
            continue
    assert [m.data for m in msgs] == [b"late"]
    await msgs[0].ack()
    await feed.stop()


async def test_a_deleted_consumer_is_reported(nc: NATS, js: JetStreamContext,
                                              stream: str) -> None:
    feed = PullFeed(nc, stream, "c", batch=10)
    await feed.start()
    with pytest.raises(TimeoutError):
        await feed.next_batch(timeout=0.3)  # a request is now waiting on the server
    await js.delete_consumer(stream, "c")
    with pytest.raises(ConsumerGone):
        for _ in range(20):
            try:
                await feed.next_batch(timeout=0.5)
            except TimeoutError:
                continue
    await feed.stop()
