"""ficha on a three-node JetStream cluster (deploy/nats/cluster.conf), with its work spread
over processes as in deploy/compose.yaml: two ingest runtimes owning two partitions each,
and one for projections and the scheduler. Streams have three replicas; the node an ingest
runtime is connected to is killed mid-stream and nothing is lost or stalled."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import nats
import pytest

from services.natsserver import EmbeddedNatsServer
from services.runtime import Runtime
from services.streams import INGEST_STREAM
from tests.backends import make_settings
from tests.factories import event_dict
from tests.faults.test_faults import free_port

CONFIG = Path(__file__).parents[2] / "deploy" / "nats" / "cluster.conf"
SECRETS = {"FICHA_NATS_PASSWORD": "svc", "PRODUCER_ACME_PASSWORD": "a",
           "PRODUCER_GLOBEX_PASSWORD": "g", "AUTOMATION_ACME_PASSWORD": "b"}

pytestmark = pytest.mark.slow


@pytest.fixture
def cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[EmbeddedNatsServer]]:
    routes = [free_port() for _ in range(3)]
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    for index, port in enumerate(routes, 1):
        monkeypatch.setenv(f"NATS_ROUTE_{index}", f"nats-route://127.0.0.1:{port}")
    nodes = []
    for index, port in enumerate(routes, 1):
        monkeypatch.setenv("NATS_SERVER_NAME", f"nats-{index}")
        node = EmbeddedNatsServer(store_dir=tmp_path / f"n{index}", config=CONFIG,
                                  extra_args=["--cluster", f"nats://127.0.0.1:{port}"],
                                  ready_timeout_s=30)
        node.start()
        nodes.append(node)
    try:
        yield nodes
    finally:
        for node in nodes:
            if node.alive:
                node.stop()


@pytest.fixture
async def deployment(cluster: list[EmbeddedNatsServer], tmp_path: Path
                     ) -> AsyncIterator[list[Runtime]]:
    url = ",".join(f"nats://ficha:svc@127.0.0.1:{n.port}" for n in cluster)
    settings = make_settings(tmp_path / "data", nats_url=url, FICHA_PARTITIONS="4",
                             FICHA_STREAM_REPLICAS="3", FICHA_ACK_WAIT="5")
    runtimes = [
        Runtime(settings, projector="none", roles=frozenset({"ingest"}), owned_partitions=[0, 1]),
        Runtime(settings, projector="none", roles=frozenset({"ingest"}), owned_partitions=[2, 3]),
        Runtime(settings, roles=frozenset({"projections", "scheduler"})),
    ]
    deadline = asyncio.get_running_loop().time() + 60
    for runtime in runtimes:
        while True:  # the cluster elects its JetStream leader first
            try:
                await runtime.start()
                break
            except Exception:
                await runtime.stop()
                assert asyncio.get_running_loop().time() < deadline, "cluster not ready"
                await asyncio.sleep(1)
    yield runtimes
    for runtime in runtimes:
        await runtime.stop()


async def publish(url: str, start: int, count: int) -> None:
    nc = await nats.connect(url.split(","), max_reconnect_attempts=-1, reconnect_time_wait=0.2)
    js = nc.jetstream(timeout=10)
    for i in range(start, start + count):
        tenant = f"t{i % 10}"
        body = event_dict("form_submitted", event_id=f"e-{i}", tenant=tenant,
                          email=f"p{i}@example.com", form_id="f")
        deadline = asyncio.get_running_loop().time() + 60
        while True:  # at least once, as a producer must (ficha applies it once)
            try:
                await js.publish(f"ficha.in.{tenant}.form_submitted", json.dumps(body).encode(),
                                 headers={"Nats-Msg-Id": body["event_id"]})
                break
            except Exception:  # noqa: BLE001 - a node went away: publish again
                assert asyncio.get_running_loop().time() < deadline, "could not publish"
                await asyncio.sleep(0.3)
    await nc.close()


async def caught_up(runtimes: list[Runtime], expected: int, timeout: float = 90) -> None:
    store = runtimes[2].store
    assert store is not None
    deadline = asyncio.get_running_loop().time() + timeout
    while await asyncio.to_thread(store.received_count) < expected:
        assert asyncio.get_running_loop().time() < deadline, (
            store.received_count(),
            [(t.get_name(), t.done() and not t.cancelled() and repr(t.exception()))
             for r in runtimes for t in r._tasks],  # noqa: SLF001
            [(w.durable, w.stats.applied, w.stats.retries) for r in runtimes for w in r.workers])
        await asyncio.sleep(0.2)
    await runtimes[2].wait_until_projected(timeout)


async def first_wave(deployment: list[Runtime]) -> str:
    """300 events over ten tenants, all applied; the cluster's URLs."""
    url = deployment[0].settings.nats_url
    assert url is not None
    await publish(url, 0, 300)
    await caught_up(deployment, 300)
    return url


async def test_spread_over_processes_on_a_three_node_cluster(
    cluster: list[EmbeddedNatsServer], deployment: list[Runtime],
) -> None:
    url = await first_wave(deployment)
    # Each ingest runtime applied events of the partitions it owns, and only those.
    assert all(w.stats.applied > 0 for w in deployment[0].workers[:2] + deployment[1].workers[:2])
    assert [w.durable for w in deployment[0].workers] == [
        "ficha-agg-p0", "ficha-agg-p1", "ficha-agg-unrouted"]
    nc = await nats.connect(url.split(","))
    info = await nc.jetstream().stream_info(INGEST_STREAM)
    assert info.config.num_replicas == 3 and info.cluster is not None
    await nc.close()
    views = deployment[2].views
    assert views is not None
    with views.reading() as cur:
        cur.execute("SELECT COUNT(*) AS n FROM timeline")
        assert cur.fetchone()["n"] == 300  # type: ignore[index]


async def test_losing_a_node_mid_stream_stalls_no_partition(
    cluster: list[EmbeddedNatsServer], deployment: list[Runtime],
) -> None:
    url = await first_wave(deployment)
    # Kill the node the second ingest runtime is connected to (one of three: the streams
    # keep a quorum, and that runtime must carry on through another node).
    nc = deployment[1].nc
    assert nc is not None and nc.connected_url is not None
    (victim,) = [n for n in cluster if n.port == nc.connected_url.port]
    victim.kill()
    await publish(url, 300, 200)
    await caught_up(deployment, 500, timeout=60)
