"""Publishing an import on a real nats-server (no ficha workers): the windowed publisher
checks every acknowledgement, refusals stop it with JetStream's reason, a missing stream
is found before anything is sent, all-or-nothing publishes nothing when a row is refused."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from contracts.publisher import PublishFailed, WindowedPublisher
from services.importing.importer import ImportOptions, import_csv
from services.streams import INGEST_MAX_MSG_SIZE, INGEST_STREAM, TopologySettings, ensure_topology


@pytest.fixture
async def topology(fresh_topology: None, js: JetStreamContext) -> JetStreamContext:
    await ensure_topology(js, TopologySettings(partitions=2, duplicate_window_s=60))
    return js


async def stored(js: JetStreamContext) -> int:
    return (await js.stream_info(INGEST_STREAM)).state.messages


async def test_every_ack_is_counted_and_duplicates_reported(
        nc: NATS, topology: JetStreamContext) -> None:
    acks: list[tuple[Any, bool]] = []
    async with WindowedPublisher(nc, window=7, on_ack=lambda key, dup: acks.append((key, dup))
                                 ) as publisher:
        for i in range(50):
            await publisher.publish("ficha.in.acme.contact_updated", b"{}", f"id-{i % 40}",
                                    key=i)
        await publisher.flush()
    assert publisher.acked == 50 and publisher.in_flight == 0
    assert publisher.duplicates == 10  # ids 0-9 again, inside the 60 s window
    assert sorted(key for key, _ in acks) == list(range(50))
    assert {key for key, dup in acks if dup} == set(range(40, 50))
    assert await stored(topology) == 40


async def test_a_refused_message_stops_publishing_with_jetstreams_reason(
        nc: NATS, topology: JetStreamContext) -> None:
    async with WindowedPublisher(nc, window=10) as publisher:
        await publisher.publish("ficha.in.acme.contact_updated", b"{}", "fine")
        await publisher.publish("ficha.in.acme.contact_updated",
                                b"x" * (INGEST_MAX_MSG_SIZE + 1), "too-big")
        with pytest.raises(PublishFailed, match="JetStream refused a message on "
                           "ficha.in.acme.contact_updated: message size exceeds maximum"):
            await publisher.flush()
    assert publisher.acked == 1


async def test_no_stream_is_found_before_anything_is_published(
        fresh_topology: None, js: JetStreamContext, tmp_path: Path) -> None:
    path = tmp_path / "in.csv"
    path.write_text("email\nana@example.com\n")
    with pytest.raises(PublishFailed, match="no JetStream stream takes "
                       "ficha.in.acme.contact_updated on this NATS server"):
        await import_csv(path, tenant="acme", js=js)


async def test_all_or_nothing_publishes_nothing_when_a_row_is_refused(
        topology: JetStreamContext, tmp_path: Path) -> None:
    path = tmp_path / "in.csv"
    path.write_text("email,country\nana@example.com,ES\nbo@example.com,XX\n")
    options = ImportOptions(all_or_nothing=True)
    refused = await import_csv(path, tenant="acme", js=topology, options=options,
                               rejects_path=tmp_path / "rejects.csv")
    assert refused.dry_run and refused.rows_rejected == 1 and refused.events_published == 0
    assert refused.warnings == ["1 row was rejected and all-or-nothing was asked: "
                                "nothing was published"]
    assert (tmp_path / "rejects.csv").exists()
    assert await stored(topology) == 0

    path.write_text("email,country\nana@example.com,ES\nbo@example.com,SE\n")
    done = await import_csv(path, tenant="acme", js=topology, options=options,
                            rejects_path=tmp_path / "rejects.csv")
    assert done.completed and not done.dry_run and done.rows_published == 2
    assert await stored(topology) == 2
    assert not (tmp_path / "rejects.csv").exists()
