"""A producer in another language, written from the README alone, gets its events onto the
cards: tests/e2e/producers/publish.mjs (Node.js, no npm package, the NATS protocol over a
socket) publishes to the real runtime on a real nats-server, on both backends."""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path
from typing import Any, NamedTuple

from nats.js import JetStreamContext

from projections.queries import get_card
from services.runtime import Runtime, connect_nats
from services.streams import (
    DLQ_STREAM,
    INGEST_MAX_MSG_SIZE,
    INGEST_STREAM,
    TopologySettings,
    ensure_topology,
)
from tests.e2e.test_pipeline import drain_applied
from tests.factories import event_dict
from tests.programs import node_or_skip

PRODUCER = Path(__file__).parent / "producers" / "publish.mjs"

FORM = event_dict(
    "form_submitted", event_id="web-7f3a9c", email="Ana.Garcia@Example.com",
    occurred_at="2026-11-02T10:15:00+01:00", source="site-builder",
    contact={"first_name": "Ana", "language": "es", "country": "ES"},
    form_id="contact-us", form_name="Contact us",
    fields={"message": "Do you ship to Canarias?", "shoe_size": "38"},
    properties={"shoe_size": 38}, tags=["Lead", "shipping-question"],
)
PURCHASE = event_dict(
    "purchase_completed", event_id="order-A-1001", email="ana.garcia@example.com",
    occurred_at="2026-11-03T18:40:00Z", source="store", order_id="A-1001",
    total="59.90", currency="EUR", tags=["buyer"],
    items=[{"sku": "SH-38", "name": "Sandals", "quantity": 2, "unit_price": "29.95"}],
)
CONSENT = event_dict(
    "consent_changed", event_id="consent-ana-1", email="ana.garcia@example.com",
    occurred_at="2026-11-02T10:16:00+01:00", source="site-builder", channel="email",
    granted=True, text="Send me news",
)
# What a JavaScript producer's bugs look like: an email that is none, money as a number.
BAD_EMAIL = event_dict("form_submitted", event_id="web-bad-email", email="not-an-email",
                       form_id="contact-us")
MONEY_AS_NUMBER = dict(PURCHASE, event_id="order-A-1002", order_id="A-1002", total=59.9)


def lines(*events: dict[str, Any]) -> str:
    return "".join(json.dumps(event) + "\n" for event in events)


class Produced(NamedTuple):
    status: int  # the producer's exit status
    reports: list[dict[str, Any]]  # its one JSON line per event
    stderr: str


def run_producer(nats_url: str, stdin: str, *args: str) -> Produced:
    """Run the Node producer on `stdin` (JSON lines) against `nats_url`."""
    done = subprocess.run([node_or_skip(), str(PRODUCER), nats_url, *args], input=stdin,
                          capture_output=True, text=True, timeout=60)
    return Produced(done.returncode, [json.loads(line) for line in done.stdout.splitlines()],
                    done.stderr)


async def produce(nats_url: str, stdin: str, *args: str) -> Produced:
    return await asyncio.to_thread(run_producer, nats_url, stdin, *args)


async def dead_letters(js: JetStreamContext, tenant: str, count: int) -> list[Any]:
    """The first `count` dead letters of `tenant`, read from FICHA_DLQ."""
    deadline = asyncio.get_running_loop().time() + 20
    while (await js.stream_info(DLQ_STREAM)).state.messages < count:
        assert asyncio.get_running_loop().time() < deadline, "dead letters missing"
        await asyncio.sleep(0.1)
    sub = await js.pull_subscribe(f"ficha.dlq.{tenant}.>", durable=None, stream=DLQ_STREAM)
    return list(await sub.fetch(count, timeout=5))


async def test_node_events_reach_the_card_once_and_rejects_the_dead_letters(
    runtime: Runtime, tmp_path: Path,
) -> None:
    node_or_skip()
    events = tmp_path / "events.jsonl"
    events.write_text(lines(FORM, PURCHASE, PURCHASE, CONSENT, BAD_EMAIL, MONEY_AS_NUMBER))
    status, acks, stderr = await produce(runtime.nats_url, "", str(events))
    assert status == 0 and len(acks) == 6, (acks, stderr)
    assert all(ack["stream"] == "FICHA_IN" and ack["seq"] > 0 for ack in acks), acks
    assert [ack["subject"] for ack in acks] == [
        "ficha.in.acme.form_submitted", "ficha.in.acme.purchase_completed",
        "ficha.in.acme.purchase_completed", "ficha.in.acme.consent_changed",
        "ficha.in.acme.form_submitted", "ficha.in.acme.purchase_completed"]
    # The repeat is stored once by JetStream when it comes within FICHA_IN's 100 ms window,
    # else stored again and ignored by ficha: either way it is applied once (below). A
    # duplicate's PubAck names the original's sequence; a new store, a later one.
    assert (acks[2]["seq"] == acks[1]["seq"]) == bool(acks[2].get("duplicate"))
    assert acks[2]["seq"] >= acks[1]["seq"]
    await asyncio.sleep(0.3)  # a retry past JetStream's window: only ficha's de-dup is left
    # Then another contact's event: same tenant, same partition, so once it is applied,
    # the retry before it has been handled too.
    after = event_dict("form_submitted", event_id="web-after", email="bob@example.com",
                       form_id="contact-us")
    status, retry, _ = await produce(runtime.nats_url, lines(PURCHASE, after))
    assert status == 0 and retry[0]["duplicate"] is False, retry
    await drain_applied(runtime, 4)

    assert runtime.views is not None
    card = get_card(runtime.views, "acme", "ana.garcia@example.com")
    assert card is not None
    assert (card["first_name"], card["language"], card["country"]) == ("Ana", "es", "ES")
    assert card["properties"] == {"shoe_size": 38}
    assert sorted(card["tags"], key=str.lower) == ["buyer", "Lead", "shipping-question"]
    assert card["consent_email"] is True
    assert (card["forms_count"], card["purchases_count"], card["events_count"]) == (1, 1, 3)
    assert [(e["type"], e["event_id"]) for e in card["timeline"]] == [
        ("form_submitted", "web-7f3a9c"), ("consent_changed", "consent-ana-1"),
        ("purchase_completed", "order-A-1001")]
    purchase = card["timeline"][2]["data"]
    assert purchase["total"] == {"amount": "59.90", "currency": "EUR"}
    assert purchase["items"] == PURCHASE["items"]
    assert get_card(runtime.views, "acme", "bob@example.com") is not None
    assert get_card(runtime.views, "acme", "not-an-email") is None

    nc = await connect_nats(runtime.nats_url)
    try:
        stored = await nc.jetstream().get_msg(INGEST_STREAM, acks[0]["seq"])
        letters = await dead_letters(nc.jetstream(), "acme", 2)
    finally:
        await nc.close()
    assert (stored.headers or {}).get("Nats-Msg-Id") == FORM["event_id"]
    by_id = {json.loads(msg.data)["event_id"]: msg for msg in letters}
    for event, ack, detail in ((BAD_EMAIL, acks[4], "contact.email"),
                               (MONEY_AS_NUMBER, acks[5], "total")):
        msg = by_id[event["event_id"]]
        headers = msg.headers or {}
        assert msg.subject == f"ficha.dlq.acme.{event['type']}"
        assert headers["Ficha-Error"] == "invalid_field"
        assert detail in headers["Ficha-Error-Detail"], headers
        assert headers["Ficha-Original-Subject"] == ack["subject"]
        assert int(headers["Ficha-Original-Sequence"]) == ack["seq"]
        assert msg.data == json.dumps(event).encode(), "the producer's bytes, unchanged"


class Dribbler:
    """A TCP proxy between a client and nats-server that hands the client the server's
    bytes one at a time, and slips in a PING of its own after the INFO line: the client
    must reassemble frames that TCP splits anywhere, and answer the PINGs a server sends."""

    def __init__(self, upstream: str) -> None:
        host, port = upstream.removeprefix("nats://").rsplit(":", 1)
        self.upstream = (host, int(port))
        self.from_client = bytearray()
        self.server: asyncio.Server | None = None
        self.connections: list[asyncio.Task[Any]] = []  # each ends when its client leaves

    async def start(self) -> str:
        self.server = await asyncio.start_server(self.serve, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return f"nats://127.0.0.1:{port}"

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()
        await asyncio.wait_for(asyncio.gather(*self.connections), 10)

    async def serve(self, client_in: asyncio.StreamReader,
                    client_out: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.connections.append(task)
        server_in, server_out = await asyncio.open_connection(*self.upstream)

        async def to_server() -> None:
            while data := await client_in.read(65536):
                self.from_client += data
                server_out.write(data)
                await server_out.drain()
            server_out.close()

        async def to_client() -> None:
            data = await server_in.readline()  # INFO {...}\r\n
            while data:
                for byte in data:
                    client_out.write(bytes([byte]))
                    await client_out.drain()
                if data.startswith(b"INFO "):
                    client_out.write(b"PING\r\n")
                data = await server_in.read(65536)
            client_out.close()

        await asyncio.gather(to_server(), to_client(), return_exceptions=True)


async def test_frames_split_anywhere_and_server_pings_are_handled(
    nats_url: str, js: JetStreamContext, fresh_topology: None,
) -> None:
    node_or_skip()
    await ensure_topology(js, TopologySettings(partitions=2))
    proxy = Dribbler(nats_url)
    url = await proxy.start()
    try:
        status, acks, stderr = await produce(url, lines(FORM, PURCHASE, FORM))
    finally:
        await proxy.stop()
    assert status == 0 and len(acks) == 3, (acks, stderr)
    assert [(a["seq"], a["duplicate"]) for a in acks[:2]] == [(1, False), (2, False)]
    assert acks[2]["duplicate"] or acks[2]["seq"] == 3
    assert b"PONG\r\n" in proxy.from_client, "the producer must answer the server's PING"


async def test_before_ficha_ever_started_the_producer_retries_then_says_why(
    nats_url: str, js: JetStreamContext, fresh_topology: None,
) -> None:
    """No FICHA_IN yet: the publish has no responders. The producer retries with the same
    Nats-Msg-Id, so it succeeds once ficha has created its streams, and otherwise fails
    with a sentence saying what to do."""
    node_or_skip()
    status, acks, _ = await produce(nats_url, lines(FORM), "--retries", "0")
    assert status == 1
    assert "start ficha" in acks[0]["error"], acks

    waiting = asyncio.ensure_future(produce(nats_url, lines(FORM), "--retries", "6"))
    await asyncio.sleep(0.5)
    await ensure_topology(js, TopologySettings(partitions=2))
    status, acks, _ = await waiting
    assert status == 0 and acks[0]["seq"] == 1, acks


async def test_oversized_events_are_reported_and_the_others_still_published(
    nats_url: str, js: JetStreamContext, fresh_topology: None,
) -> None:
    """Over FICHA_IN's message size JetStream answers with an error; over the server's
    max_payload the producer does not send it (the server would close the connection)."""
    node_or_skip()
    await ensure_topology(js, TopologySettings(partitions=2))
    too_big_for_jetstream = dict(FORM, event_id="big-1",
                                 fields={"essay": "x" * INGEST_MAX_MSG_SIZE})
    too_big_for_nats = dict(FORM, event_id="big-2", fields={"essay": "x" * 2 * 1024 * 1024})
    status, reports, _ = await produce(nats_url, lines(
        too_big_for_jetstream, too_big_for_nats, FORM))
    assert status == 1
    assert "JetStream refused" in reports[0]["error"], reports[0]
    assert "max_payload" in reports[1]["error"], reports[1]
    assert reports[2]["seq"] == 1, reports[2]
