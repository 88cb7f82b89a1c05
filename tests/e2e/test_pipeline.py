"""Publish → JetStream → contact streams → client list, on both backends, real servers."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from contracts.publisher import publish
from projections.queries import ContactFilter, get_card, list_contacts
from services.config import Settings
from services.runtime import Runtime, connect_nats
from services.streams import DLQ_STREAM
from tests.factories import event_dict


class Crash(Exception):
    """What a kill at a chosen instant looks like to the rest of the process."""


@pytest.fixture
async def started(settings_for: Callable[..., Settings]) -> AsyncIterator[Callable[..., Any]]:
    runtimes: list[Runtime] = []

    async def start(**extra: str) -> Runtime:
        runtime = Runtime(settings_for(**extra))
        await runtime.start()
        runtimes.append(runtime)
        return runtime

    yield start
    for runtime in runtimes:
        await runtime.stop()


async def wait_for(predicate: Callable[[], Any], timeout: float = 20.0) -> Any:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = await asyncio.to_thread(predicate)
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.05)


async def drain_applied(runtime: Runtime, expected: int, timeout: float = 20.0) -> None:
    """Until `expected` events have been received by the store and projected."""
    assert runtime.store is not None
    await wait_for(lambda: runtime.store.received_count() >= expected, timeout)  # type: ignore[union-attr]
    await runtime.wait_until_projected(timeout)


def card(runtime: Runtime, email: str, tenant: str = "acme") -> dict[str, Any] | None:
    assert runtime.views is not None
    return get_card(runtime.views, tenant, email)


async def test_published_events_reach_the_card_and_the_list(started: Any) -> None:
    runtime = await started()
    nc = await connect_nats(runtime.nats_url)
    js = nc.jetstream()
    await publish(js, event_dict(
        "form_submitted", event_id="web-1", email="Ana.Garcia@Example.com",
        occurred_at="2026-11-02T10:15:00+01:00",
        contact={"first_name": "Ana", "language": "es", "country": "ES"},
        form_id="contact-us", form_name="Contact us", properties={"shoe_size": 38},
        tags=["Lead"],
    ))
    await publish(js, event_dict(
        "booking_made", event_id="bk-1", email="ana.garcia@example.com",
        occurred_at="2026-11-03T09:00:00+01:00", booking_id="b1",
        starts_at="2026-11-10T20:00:00+01:00", party_size=2,
    ))
    await publish(js, event_dict(
        "consent_changed", event_id="c-1", email="ana.garcia@example.com",
        occurred_at="2026-11-02T10:16:00+01:00", channel="email", granted=True,
    ))
    await publish(js, event_dict("form_submitted", event_id="web-2", email="bob@example.com",
                                 tenant="other", form_id="x"))
    await nc.drain()
    await drain_applied(runtime, 4)

    got = card(runtime, "ANA.GARCIA@example.com ")
    assert got is not None
    assert got["first_name"] == "Ana" and got["country"] == "ES"
    assert got["properties"] == {"shoe_size": 38}
    assert got["tags"] == ["Lead"]
    assert got["consent_email"] is True
    assert got["forms_count"] == 1 and got["bookings_count"] == 1
    assert [e["type"] for e in got["timeline"]] == [
        "form_submitted", "consent_changed", "booking_made"
    ]
    assert runtime.views is not None
    rows, _ = list_contacts(runtime.views, ContactFilter(tenant="acme", language="es",
                                                         consent="email"))
    assert [r["email"] for r in rows] == ["ana.garcia@example.com"]
    # Tenants never see each other's contacts.
    assert card(runtime, "bob@example.com") is None
    assert card(runtime, "bob@example.com", tenant="other") is not None


BAD_MESSAGES: list[tuple[str, bytes, str]] = [
    ("ficha.in.acme.form_submitted", b"{not json", "not_json"),
    ("ficha.in.acme.form_submitted", b"[1, 2]", "not_object"),
    ("ficha.in.acme.form_submitted", b"\xff\xfe{}", "invalid_utf8"),
    ("ficha.in.acme.party_started", json.dumps(event_dict(
        "party_started", event_id="u1")).encode(), "unknown_type"),
    ("ficha.in.acme.form_submitted", json.dumps({
        k: v for k, v in event_dict("form_submitted", event_id="m1", form_id="f").items()
        if k != "occurred_at"}).encode(), "missing_field"),
    ("ficha.in.acme.form_submitted", json.dumps(event_dict(
        "form_submitted", event_id="e1", email="not-an-email", form_id="f")).encode(),
     "invalid_field"),
    ("ficha.in.acme.form_submitted", json.dumps(event_dict(
        "form_submitted", event_id="t1", tenant="globex", form_id="f")).encode(),
     "tenant_mismatch"),
    ("ficha.in.acme.booking_made", json.dumps(event_dict(
        "form_submitted", event_id="y1", form_id="f")).encode(), "type_mismatch"),
    ("ficha.in.acme.form_submitted", json.dumps(event_dict(
        "form_submitted", event_id="v1", form_id="f", schema_version=9)).encode(),
     "unsupported_schema_version"),
    ("ficha.in.acme.form_submitted", json.dumps(event_dict(
        "form_submitted", event_id="big", form_id="f",
        fields={"essay": "x" * 70_000})).encode(), "too_large"),
    ("ficha.in.acme", json.dumps(event_dict("form_submitted", event_id="s1",
                                            form_id="f")).encode(), "bad_subject"),
]


async def test_each_rejection_is_dead_lettered_with_its_reason(started: Any) -> None:
    runtime = await started()
    nc = await connect_nats(runtime.nats_url)
    js = nc.jetstream()
    for subject, body, _ in BAD_MESSAGES:
        await js.publish(subject, body)
    await publish(js, event_dict("form_submitted", event_id="good-1", form_id="f"))
    await drain_applied(runtime, 1)
    assert card(runtime, "ana@example.com") is not None

    async def dlq_count() -> int:
        return (await js.stream_info(DLQ_STREAM)).state.messages

    deadline = asyncio.get_running_loop().time() + 20
    while await dlq_count() < len(BAD_MESSAGES):
        assert asyncio.get_running_loop().time() < deadline, "dead letters missing"
        await asyncio.sleep(0.1)
    sub = await js.pull_subscribe("ficha.dlq.>", durable=None, stream=DLQ_STREAM)
    msgs = await sub.fetch(len(BAD_MESSAGES), timeout=5)
    seen = {}
    for msg in msgs:
        headers = msg.headers or {}
        seen[headers["Ficha-Original-Subject"], headers["Ficha-Error"]] = msg
        assert headers["Ficha-Error-Detail"].strip()
        assert int(headers["Ficha-Original-Sequence"]) > 0
    for subject, body, code in BAD_MESSAGES:
        msg = seen[(subject, code)]
        assert msg.data == body, "the dead letter carries the original body unchanged"
        tokens = subject.split(".")
        expected = f"ficha.dlq.{tokens[2]}.{tokens[3] if len(tokens) > 3 else '_'}"
        assert msg.subject == expected
    await nc.drain()


async def test_repeats_are_applied_once_even_after_the_dedup_window(started: Any) -> None:
    runtime = await started(FICHA_DUPLICATE_WINDOW="1")
    nc = await connect_nats(runtime.nats_url)
    js = nc.jetstream()
    event = event_dict("purchase_completed", event_id="order-1", order_id="o1",
                       total="10.00", currency="EUR", occurred_at="2026-11-01T10:00:00Z")
    for _ in range(3):  # a producer's retries: JetStream keeps one
        await publish(js, event)
    body = json.dumps(event).encode()
    for _ in range(3):  # no Nats-Msg-Id: JetStream keeps all three, ficha applies one
        await js.publish("ficha.in.acme.purchase_completed", body)
    await drain_applied(runtime, 1)
    await asyncio.sleep(1.5)  # past JetStream's window: a week-later retry looks like this
    late = dict(event, occurred_at="2026-11-08T10:00:00Z")
    await publish(js, late)
    await publish(js, event_dict("form_submitted", event_id="after", form_id="f"))
    await drain_applied(runtime, 2)
    got = card(runtime, "ana@example.com")
    assert got is not None
    assert got["purchases_count"] == 1
    assert [e["event_id"] for e in got["timeline"]].count("order-1") == 1
    assert got["events_count"] == 2
    await nc.drain()


async def test_two_tenants_may_use_the_same_event_id(started: Any) -> None:
    """event_id is unique per tenant only (contract): both events are applied, each to its
    own tenant, and the tenant that repeats its own id still gets it applied once."""
    runtime = await started()
    nc = await connect_nats(runtime.nats_url)
    js = nc.jetstream()
    for tenant in ("acme", "globex"):
        await publish(js, event_dict("purchase_completed", tenant=tenant, event_id="order-1",
                                     order_id="o1", total="10.00", currency="EUR"))
        await asyncio.sleep(0.3)  # past FICHA_IN's 100 ms window (decision 0004)
    await publish(js, event_dict("purchase_completed", tenant="globex", event_id="order-1",
                                 order_id="o1", total="10.00", currency="EUR"))
    # The tenant's partition handles its messages in order: once this one is stored, the
    # repeat before it has been handled too.
    await publish(js, event_dict("form_submitted", tenant="globex", event_id="sentinel",
                                 email="someone@example.com", form_id="f"))
    await drain_applied(runtime, 3)
    for tenant in ("acme", "globex"):
        got = card(runtime, "ana@example.com", tenant=tenant)
        assert got is not None, tenant
        assert got["purchases_count"] == 1, tenant
    assert runtime.store is not None
    assert runtime.store.received_count() == 3
    await nc.drain()


@pytest.mark.parametrize("stage", ["before_commit", "after_commit"])
async def test_a_worker_killed_around_commit_applies_everything_once(
    started: Any, stage: str
) -> None:
    crashed = asyncio.Event()

    def fault(at: str) -> None:
        if at == stage and not crashed.is_set():
            crashed.set()
            raise Crash(at)

    first = await started(FICHA_BATCH_SIZE="50")
    for worker in first.workers:
        worker.fault = fault
    nc = await connect_nats(first.nats_url)
    js = nc.jetstream()
    for i in range(40):
        await publish(js, event_dict("form_submitted", event_id=f"f-{i}", form_id="f",
                                     email=f"p{i % 7}@example.com"))
    await asyncio.wait_for(crashed.wait(), 20)
    await first.stop()  # the dead worker's unacked batch is redelivered to the next owner

    second = await started(FICHA_BATCH_SIZE="50")
    await drain_applied(second, 40, timeout=60)
    assert second.views is not None
    total = 0
    for i in range(7):
        got = card(second, f"p{i}@example.com")
        assert got is not None
        total += got["forms_count"]
        assert len(got["timeline"]) == got["forms_count"]
    assert total == 40
    await nc.drain()


async def test_an_event_that_cannot_be_folded_is_dead_lettered_and_the_rest_flow(
    started: Any,
) -> None:
    runtime = await started()

    def poison(event: Any) -> None:
        if event.event_id == "poison":
            raise ValueError("a bug in the fold")

    for worker in runtime.workers:
        if worker.folder is not None:
            worker.folder.fault = poison
    nc = await connect_nats(runtime.nats_url)
    js = nc.jetstream()
    for event_id in ("before", "poison", "after"):
        await publish(js, event_dict("form_submitted", event_id=event_id, form_id="f"))
    await drain_applied(runtime, 2)
    got = card(runtime, "ana@example.com")
    assert got is not None
    assert sorted(e["event_id"] for e in got["timeline"]) == ["after", "before"]
    sub = await js.pull_subscribe("ficha.dlq.>", durable=None, stream=DLQ_STREAM)
    [msg] = await sub.fetch(1, timeout=5)
    assert msg.headers is not None
    assert msg.headers["Ficha-Error"] == "processing_failed"
    assert "a bug in the fold" in msg.headers["Ficha-Error-Detail"]
    assert json.loads(msg.data)["event_id"] == "poison"
    await nc.drain()
