"""Segment transitions reach ficha.out exactly once, on both backends, real servers."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from nats.js import JetStreamContext

from contracts.outbound import SegmentEntered, SegmentExited, decode_outbound
from contracts.publisher import publish
from services.catalog import SegmentCommands
from services.outbox import SEQ_HEADER, OutboxRelay
from services.runtime import Runtime, connect_nats
from services.streams import OUT_STREAM
from tests.factories import event_dict


class Crash(Exception):
    pass


async def out_events(js: JetStreamContext, expected: int, timeout: float = 20.0
                     ) -> list[tuple[dict[str, str], Any]]:
    """Every message in FICHA_OUT once there are `expected` (and a moment for extras)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        info = await js.stream_info(OUT_STREAM)
        if info.state.messages >= expected or asyncio.get_running_loop().time() > deadline:
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.3)
    info = await js.stream_info(OUT_STREAM)
    out = []
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        msg = await js.get_msg(OUT_STREAM, seq=seq)
        out.append((msg.headers or {}, decode_outbound(msg.data or b"")))
    return out


def ago(days: float) -> str:
    return (datetime.now(UTC) - timedelta(days=days)).isoformat()


async def test_publish_to_segment_entered_and_exited_exactly_once(runtime: Runtime) -> None:
    assert runtime.store is not None
    commands = SegmentCommands(runtime.store)
    await asyncio.to_thread(commands.define, "acme", "vip", "VIP", {
        "field": "tags", "op": "has", "value": "vip"})
    nc = await connect_nats(runtime.nats_url)
    js = nc.jetstream()
    try:
        for i in range(20):
            await publish(js, event_dict("contact_updated", event_id=f"on-{i}",
                                         email=f"p{i}@example.com", occurred_at=ago(2),
                                         tags_added=["VIP"]))
        for i in range(0, 20, 2):  # half of them lose the tag again
            await publish(js, event_dict("contact_updated", event_id=f"off-{i}",
                                         email=f"p{i}@example.com", occurred_at=ago(1),
                                         tags_removed=["vip"]))
        # The producer retries some events: nothing changes, nothing is published again.
        for i in range(5):
            await publish(js, event_dict("contact_updated", event_id=f"on-{i}",
                                         email=f"p{i}@example.com", occurred_at=ago(2),
                                         tags_added=["VIP"]))
        messages = await out_events(js, 30)
    finally:
        await nc.close()
    events = [event for _, event in messages]
    assert len(events) == 30
    assert len({e.event_id for e in events}) == 30
    entered = {e.contact.email for e in events if isinstance(e, SegmentEntered)}
    exited = {e.contact.email for e in events if isinstance(e, SegmentExited)}
    assert entered == {f"p{i}@example.com" for i in range(20)}
    assert exited == {f"p{i}@example.com" for i in range(0, 20, 2)}
    for headers, event in messages:
        assert headers["Nats-Msg-Id"] == event.event_id
        assert event.cause.kind == "event"
    # Per contact, entered comes before exited on the stream.
    order = [(e.contact.email, type(e).__name__) for e in events]
    for i in range(0, 20, 2):
        email = f"p{i}@example.com"
        assert order.index((email, "SegmentEntered")) < order.index((email, "SegmentExited"))


async def test_a_relay_killed_after_publishing_does_not_publish_again(
    runtime: Runtime,
) -> None:
    assert runtime.store is not None and runtime.views is not None and runtime.outbox
    # Stop the runtime's own relay so that this test drives relays by hand.
    commands = SegmentCommands(runtime.store)
    nc = await connect_nats(runtime.nats_url)
    js = nc.jetstream()
    try:
        # Let the runtime publish the first transitions, then take over with a crashing relay.
        await asyncio.to_thread(commands.define, "acme", "all", "All", {
            "field": "email", "op": "contains", "value": "@"})
        for i in range(5):
            await publish(js, event_dict("form_submitted", event_id=f"f-{i}",
                                         email=f"q{i}@example.com", occurred_at=ago(1),
                                         form_id="f"))
        await out_events(js, 5)
        await runtime.stop()  # the runtime's relay stops; its position is recorded

        views = runtime.views
        relay_position = OutboxRelay(js, views).recorded_position()
        assert relay_position == 5
        # Five more transitions, written by the projection directly into the outbox.
        with views.transaction() as cur:
            for seq in range(6, 11):
                payload = {"event_id": f"x:{seq}", "type": "segment_entered", "tenant": "acme",
                           "occurred_at": "2026-11-23T00:00:00.000000Z", "segment_id": "all",
                           "segment_version": 1,
                           "contact": {"contact_id": f"c{seq}", "email": f"c{seq}@example.com"},
                           "cause": {"kind": "event", "ref": f"e{seq}", "clauses": []},
                           "entry_no": 1}
                cur.execute("INSERT INTO ficha_outbox (seq, subject, event_id, payload) "
                            "VALUES (?,?,?,?)", (seq, "ficha.out.acme.segment_entered",
                                                 f"x:{seq}", json.dumps(payload)))

        def crash(point: str) -> None:
            raise Crash(point)

        crashing = OutboxRelay(js, views, fault=crash)
        crashing.position = await crashing.start_position()
        with pytest.raises(Crash):
            await crashing.publish_pending()
        assert crashing.recorded_position() == 5  # published, but not recorded

        restarted = OutboxRelay(js, views)
        assert await restarted.start_position() == 10  # read back from the stream
        restarted.position = 10
        assert await restarted.publish_pending() == 0
        info = await js.stream_info(OUT_STREAM)
        assert info.state.messages == 10

        # A hole (seq 12 lost while 13 got through) is not skipped over.
        await js.publish("ficha.out.acme.segment_entered", b"{}",
                         headers={"Nats-Msg-Id": "x:11", SEQ_HEADER: "11"})
        await js.publish("ficha.out.acme.segment_entered", b"{}",
                         headers={"Nats-Msg-Id": "x:13", SEQ_HEADER: "13"})
        assert await OutboxRelay(js, views).start_position() == 11
    finally:
        await nc.close()
