"""deploy/nats/ficha.conf on a real nats-server: a tenant's producer can publish only for
its tenant and cannot consume; an automation user reads only its tenant's outbound events."""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import nats
import nats.errors
import pytest
from nats.js.api import ConsumerConfig

from services.natsserver import EmbeddedNatsServer, find_nats_server_binary
from services.streams import TopologySettings, ensure_topology
from tests.e2e.test_foreign_producer import lines, produce
from tests.factories import event_dict
from tests.programs import node_or_skip

CONFIG = Path(__file__).parents[2] / "deploy" / "nats" / "ficha.conf"
PASSWORDS = {
    "FICHA_NATS_PASSWORD": "service-secret",
    "PRODUCER_ACME_PASSWORD": "acme-secret",
    "PRODUCER_GLOBEX_PASSWORD": "globex-secret",
    "AUTOMATION_ACME_PASSWORD": "automation-secret",
}


@pytest.mark.parametrize("name", ["ficha.conf", "cluster.conf"])
def test_the_configurations_are_valid(name: str) -> None:
    env = {**os.environ, **PASSWORDS, "NATS_SERVER_NAME": "nats-1",
           **{f"NATS_ROUTE_{i}": f"nats-route://nats-{i}:6222" for i in (1, 2, 3)}}
    done = subprocess.run([str(find_nats_server_binary()), "-t", "-c", str(CONFIG.parent / name)],
                          env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.fixture
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[EmbeddedNatsServer]:
    for name, value in PASSWORDS.items():
        monkeypatch.setenv(name, value)
    with EmbeddedNatsServer(store_dir=tmp_path / "nats", config=CONFIG) as started:
        yield started


class Client:
    """A connection that records the asynchronous errors the server sends it."""

    def __init__(self) -> None:
        self.errors: list[str] = []
        self.nc: Any = None

    async def connect(self, url: str, user: str, password: str, inbox: str) -> Client:
        async def on_error(error: Exception) -> None:
            self.errors.append(str(error))

        self.nc = await nats.connect(url, user=user, password=password, inbox_prefix=inbox,
                                     error_cb=on_error, allow_reconnect=False,
                                     connect_timeout=3)
        return self

    async def violations(self, at_least: int = 1) -> list[str]:
        """The permission errors so far, once ``at_least`` have arrived (or 5 s passed).
        The server sends its -ERR before the PONG of a flush; the client hands it to the
        error callback on a task of its own, hence the wait after the flush."""
        await self.nc.flush()
        deadline = asyncio.get_running_loop().time() + 5
        while True:
            found = [e for e in self.errors if "permissions violation" in e.lower()]
            if len(found) >= at_least or asyncio.get_running_loop().time() > deadline:
                return found
            await asyncio.sleep(0.02)


@pytest.fixture
async def service(server: EmbeddedNatsServer) -> AsyncIterator[Any]:
    nc = await nats.connect(server.url, user="ficha", password="service-secret")
    await ensure_topology(nc.jetstream(), TopologySettings(partitions=2))
    yield nc
    await nc.close()


async def test_a_producer_publishes_for_its_own_tenant_only(
    server: EmbeddedNatsServer, service: Any,
) -> None:
    acme = await Client().connect(server.url, "producer-acme", "acme-secret", "_INBOX_acme")
    js = acme.nc.jetstream(timeout=2)
    ack = await js.publish("ficha.in.acme.form_submitted", b"{}",
                           headers={"Nats-Msg-Id": "a-1"})
    assert ack.stream == "FICHA_IN"

    with pytest.raises((nats.errors.TimeoutError, nats.errors.NoRespondersError)):
        await js.publish("ficha.in.globex.form_submitted", b"{}")
    assert any("ficha.in.globex.form_submitted" in v for v in await acme.violations())

    acme.errors.clear()
    await acme.nc.subscribe("ficha.in.>")
    await acme.nc.subscribe("ficha.out.acme.>")
    assert len(await acme.violations(2)) == 2  # no reading the streams' subjects

    acme.errors.clear()
    with pytest.raises((nats.errors.TimeoutError, nats.errors.NoRespondersError)):
        await js.pull_subscribe("ficha.in.acme.>", durable="sneaky", stream="FICHA_IN")
    found = await acme.violations()
    assert any("$js.api.consumer" in v.lower() for v in found), found  # no consumers

    info = await service.jetstream().stream_info("FICHA_IN")
    assert info.state.messages == 1  # only the allowed publish was stored
    await acme.nc.close()


async def test_a_node_producer_set_up_as_the_readme_says_publishes_for_its_tenant_only(
    server: EmbeddedNatsServer, service: Any,
) -> None:
    """The Node.js example producer (no NATS library) with the README's settings: its
    tenant's user and inbox prefix. Without the prefix it cannot even subscribe to its
    inbox, so it says so before publishing anything."""
    node_or_skip()
    url = server.url.replace("nats://", "nats://producer-acme:acme-secret@")
    acme = event_dict("form_submitted", event_id="web-1", form_id="f")
    globex = event_dict("form_submitted", tenant="globex", event_id="web-2", form_id="f")
    status, reports, _ = await produce(url, lines(acme, globex), "--inbox-prefix", "_INBOX_acme")
    assert status == 1
    assert reports[0]["stream"] == "FICHA_IN" and reports[0]["seq"] == 1, reports
    assert "permissions violation for publish" in reports[1]["error"].lower(), reports

    status, reports, stderr = await produce(url, lines(acme))
    assert status == 1 and reports == []
    assert "permissions violation for subscription" in stderr.lower(), stderr
    info = await service.jetstream().stream_info("FICHA_IN")
    assert info.state.messages == 1


async def test_wrong_or_missing_credentials_are_refused(server: EmbeddedNatsServer) -> None:
    for kwargs in ({}, {"user": "producer-acme", "password": "wrong"}):
        with pytest.raises(nats.errors.Error):
            await nats.connect(server.url, allow_reconnect=False, connect_timeout=2,
                               max_reconnect_attempts=0, **kwargs)


async def test_an_automation_user_reads_its_tenant_outbound_events_only(
    server: EmbeddedNatsServer, service: Any,
) -> None:
    js_service = service.jetstream()
    await js_service.publish("ficha.out.acme.segment_entered", b'{"n": 1}')
    await js_service.publish("ficha.out.globex.segment_entered", b'{"n": 2}')
    bot = await Client().connect(server.url, "automation-acme", "automation-secret",
                                 "_INBOX_automation_acme")
    js = bot.nc.jetstream(timeout=2)
    # The consumer is created by name with its filter in the API subject, which the
    # permissions pin to acme (a DURABLE.CREATE, whose subject has no filter, is refused).
    await js.add_consumer("FICHA_OUT", ConsumerConfig(
        name="automation-acme", durable_name="automation-acme",
        filter_subject="ficha.out.acme.>"))
    sub = await js.pull_subscribe_bind(durable="automation-acme", stream="FICHA_OUT")
    (msg,) = await sub.fetch(2, timeout=1)  # only acme's of the two is delivered
    assert msg.subject == "ficha.out.acme.segment_entered"
    await msg.ack()
    for sneaky in (ConsumerConfig(name="automation-acme", durable_name="automation-acme",
                                  filter_subject="ficha.out.globex.>"),
                   ConsumerConfig(durable_name="automation-acme",
                                  filter_subject="ficha.out.globex.>")):
        with pytest.raises((nats.errors.TimeoutError, nats.errors.NoRespondersError)):
            await js.add_consumer("FICHA_OUT", sneaky)
    assert len(await bot.violations(2)) == 2
    await bot.nc.close()
