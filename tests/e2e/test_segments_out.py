"""Segment transitions reach ficha.out exactly once, on both backends, real servers."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from nats.js import JetStreamContext

from contracts.outbound import SegmentEntered, SegmentExited, decode_outbound
from contracts.publisher import publish
from projections.db import ViewDatabase
from services.catalog import SegmentCommands
from services.domain.stamps import parse_utc_iso, utc_iso
from services.outbox import SEQ_HEADER, OutboxRelay
from services.runtime import Runtime, connect_nats
from services.store.contact_store import ContactStore
from services.streams import OUT_STREAM
from tests.e2e.test_erasure import relay_done
from tests.e2e.test_pipeline import drain_applied
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
        # Every event stored (the retries too: 30 distinct) and projected, and the relay
        # past every outbox row: whatever would be published has been.
        await drain_applied(runtime, 30)
        deadline = asyncio.get_running_loop().time() + 20
        while not await relay_done(runtime):
            assert asyncio.get_running_loop().time() < deadline, "the relay did not finish"
            await asyncio.sleep(0.05)
        messages = await out_events(js, 30)
    finally:
        await nc.close()
    assert runtime.store.received_count() == 30  # the retries were not applied again
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
        store = ContactStore(runtime.settings)  # the runtime's is closed
        relay_position = OutboxRelay(js, views, store.max_notification_id).recorded_position()
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

        crashing = OutboxRelay(js, views, store.max_notification_id, fault=crash)
        crashing.position = await crashing.start_position()
        with pytest.raises(Crash):
            await crashing.publish_pending()
        assert crashing.recorded_position() == 5  # published, but not recorded

        restarted = OutboxRelay(js, views, store.max_notification_id)
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
        assert await OutboxRelay(js, views, store.max_notification_id).start_position() == 11
    finally:
        await nc.close()


# ---------------------------------------------------------------- rebuilds and the anchor

OUTBOX_ROW = "INSERT INTO ficha_outbox (seq, subject, event_id, payload) VALUES (?,?,?,?)"


def outbound(event_id: str, at: str) -> str:
    return json.dumps({"event_id": event_id, "type": "segment_entered", "tenant": "acme",
                       "occurred_at": at, "segment_id": "all", "segment_version": 1,
                       "contact": {"contact_id": event_id, "email": "z@example.com"},
                       "cause": {"kind": "event", "ref": event_id, "clauses": []},
                       "entry_no": 1})


def later(at: str, minutes: int) -> str:
    return utc_iso(parse_utc_iso(at) + timedelta(minutes=minutes))


class Published:
    """Three transitions published by a runtime, which is then stopped: the tests stand
    in for a rebuild by rewriting the outbox and the audience projection's position."""

    def __init__(self, runtime: Runtime, js: JetStreamContext, store: ContactStore) -> None:
        assert runtime.views is not None
        self.views: ViewDatabase = runtime.views
        self.js = js
        self.store = store
        with self.views.reading() as cur:
            cur.execute("SELECT seq, subject, event_id, payload FROM ficha_outbox ORDER BY seq")
            self.rows = cur.fetchall()
        assert [r["seq"] for r in self.rows] == [1, 2, 3]
        self.anchor_at = json.loads(self.rows[2]["payload"])["occurred_at"]

    def relay(self) -> OutboxRelay:
        return OutboxRelay(self.js, self.views, self.store.max_notification_id)

    def rebuild_outbox(self, rows: list[tuple[str, str]]) -> None:
        """The outbox as a rebuild left it: (event_id, payload) numbered from 1."""
        with self.views.transaction() as cur:
            cur.execute("DELETE FROM ficha_outbox")
            for seq, (event_id, payload) in enumerate(rows, start=1):
                cur.execute(OUTBOX_ROW, (seq, "ficha.out.acme.segment_entered", event_id,
                                         payload))

    def project_to(self, behind_head: int) -> None:
        """The audience projection's position: ``behind_head`` events short of the store's."""
        head = self.store.max_notification_id()
        with self.views.transaction() as cur:
            cur.execute("UPDATE ficha_projection_tracking SET position = ? WHERE name = ?",
                        (head - behind_head, "audience"))

    def kept(self, *indexes: int) -> list[tuple[str, str]]:
        return [(self.rows[i]["event_id"], self.rows[i]["payload"]) for i in indexes]

    async def run_relay(self, until: float,
                        meanwhile: Callable[[], None] | None = None) -> None:
        """A relay as the runtime runs it, for ``until`` seconds at most or until FICHA_OUT
        holds five messages; ``meanwhile`` is done once it has started and gone idle."""
        stop = asyncio.Event()
        relay = self.relay()
        task = asyncio.create_task(relay.run(stop))
        loop = asyncio.get_running_loop()
        if meanwhile is not None:
            started = loop.time() + 10
            while relay.position != 3 and loop.time() < started and not task.done():
                await asyncio.sleep(0.05)
            assert relay.position == 3 and not task.done()
            await asyncio.sleep(0.2)  # idle, its next rounds under way
            await asyncio.to_thread(meanwhile)
        deadline = loop.time() + until
        while loop.time() < deadline and not task.done():
            if (await self.js.stream_info(OUT_STREAM)).state.messages >= 5:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)  # a moment for anything extra
        stop.set()
        await asyncio.wait_for(task, 10)


@pytest.fixture
async def published(runtime: Runtime) -> AsyncIterator[Published]:
    assert runtime.store is not None
    await asyncio.to_thread(SegmentCommands(runtime.store).define, "acme", "all", "All", {
        "field": "email", "op": "contains", "value": "@"})
    nc = await connect_nats(runtime.nats_url)
    js = nc.jetstream()
    store: ContactStore | None = None
    try:
        for i in range(3):
            await publish(js, event_dict("form_submitted", event_id=f"f-{i}",
                                         email=f"q{i}@example.com", occurred_at=ago(1),
                                         form_id="f"))
        assert len(await out_events(js, 3)) == 3
        await runtime.stop()
        store = ContactStore(runtime.settings)  # the runtime's is closed
        yield Published(runtime, js, store)
    finally:
        if store is not None:
            with contextlib.suppress(Exception):
                store.close()
        await nc.close()


async def out_ids(js: JetStreamContext) -> list[tuple[str, str]]:
    """(Ficha-Out-Seq, event id) of every message in FICHA_OUT."""
    return [(headers[SEQ_HEADER], event.event_id) for headers, event in await out_events(js, 0)]


async def test_a_missing_anchor_is_waited_for_while_the_projection_is_behind(
    published: Published,
) -> None:
    """A rebuild in progress: the last published event may still come back."""
    before = await out_ids(published.js)
    published.rebuild_outbox([
        *published.kept(0, 1), ("other:1", outbound("other:1", published.anchor_at)),
        ("late:1", outbound("late:1", later(published.anchor_at, 1))),
        ("late:2", outbound("late:2", later(published.anchor_at, 2))),
    ])
    published.project_to(behind_head=1)
    await published.run_relay(until=2.0)
    assert await out_ids(published.js) == before
    assert published.relay().recorded_position() == 3


@pytest.mark.parametrize("anchor_kept_instant", [True, False],
                         ids=["anchor", "anchor-from-before-instants"])
async def test_a_rebuild_without_the_anchor_resumes_after_its_instant(
    published: Published, anchor_kept_instant: bool,
) -> None:
    """Caught up and the last published event is not there (the rebuild decided otherwise):
    the rows at or before its instant count as published, the later ones go out once."""
    before = await out_ids(published.js)
    if not anchor_kept_instant:  # an anchor table from before ``occurred_at`` was kept
        with published.views.transaction() as cur:
            cur.execute("DROP TABLE ficha_outbox_anchor")
            cur.execute("CREATE TABLE ficha_outbox_anchor (name TEXT PRIMARY KEY, "
                        "seq BIGINT NOT NULL, event_id TEXT NOT NULL)")
            cur.execute("INSERT INTO ficha_outbox_anchor VALUES (?, ?, ?)",
                        ("out", 3, published.rows[2]["event_id"]))
    published.rebuild_outbox([
        *published.kept(0, 1), ("other:1", outbound("other:1", published.anchor_at)),
        ("late:1", outbound("late:1", later(published.anchor_at, 1))),
        ("late:2", outbound("late:2", later(published.anchor_at, 2))),
    ])
    published.project_to(behind_head=0)
    await published.run_relay(until=10.0)
    assert await out_ids(published.js) == [*before, ("4", "late:1"), ("5", "late:2")]
    relay = published.relay()
    assert relay.recorded_position() == 5
    anchor = relay.recorded_anchor()
    assert anchor is not None and anchor[:2] == (5, "late:2")
    # Once: a restarted relay has nothing left to publish.
    await published.run_relay(until=1.0)
    assert len(await out_ids(published.js)) == 5


@pytest.mark.parametrize("while_running", [False, True], ids=["stopped", "running"])
async def test_a_renumbering_rebuild_goes_on_after_the_anchors_new_number(
    published: Published, while_running: bool,
) -> None:
    """The first row left out (an erased contact's): the anchor is found at its new number,
    even while the projection is behind, and every row after it is published, whether the
    relay was stopped during the rebuild or running."""
    before = await out_ids(published.js)

    def rebuild() -> None:
        published.rebuild_outbox([
            *published.kept(1, 2),
            ("late:1", outbound("late:1", later(published.anchor_at, 1))),
            ("late:2", outbound("late:2", later(published.anchor_at, 2))),
        ])
        published.project_to(behind_head=1)

    if while_running:
        await published.run_relay(until=10.0, meanwhile=rebuild)
    else:
        rebuild()
        await published.run_relay(until=10.0)
    assert await out_ids(published.js) == [*before, ("3", "late:1"), ("4", "late:2")]
    assert published.relay().recorded_position() == 4
