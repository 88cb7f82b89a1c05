"""Fault injection: ficha keeps every event exactly once while its processes are killed.

Runnable alone with ``pytest -m faults``. The suite owns its servers: a PostgreSQL cluster
made with initdb in a temporary directory (so it can stop and start it), a nats-server,
and ``ficha up`` as a child process tree which a small supervisor restarts whenever it
exits, like systemd would. A seeded history is published in chunks, every event once,
some twice at once and some again after JetStream's de-dup window, in shuffled order;
between chunks one fault is injected:

* SIGKILL of the whole ``ficha up`` tree (ingest, scheduler, relay, projectors);
* SIGKILL of one projector process (``ficha up`` then stops and is restarted);
* nats-server killed with SIGKILL and started again on the same store;
* PostgreSQL stopped in immediate mode (a crash, for the database) and started again.

At the end every read model is compared with one built from the same events, once each,
in publishing order, by the same code without faults; and counts with what the published
events imply. A summary table of faults and outcomes is printed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nats
import psycopg
import pytest
from psycopg.rows import dict_row

from projections.audience import AudienceProjection
from projections.contacts import ContactsProjection
from projections.db import ViewDatabase
from projections.runner import ProjectionRunner
from services.catalog import SegmentCommands
from services.demo import generate_history
from services.domain.identity import ContactIdentity, normalise_email
from services.ingest.cache import ContactCache
from services.ingest.folding import BatchFolder
from services.natsserver import EmbeddedNatsServer, port_is_free
from services.store.contact_store import ContactStore
from services.streams import OUT_STREAM
from tests.backends import TEST_ID_KEY, make_settings
from tests.factories import decode_dict

pytestmark = [pytest.mark.faults, pytest.mark.slow]

EVENTS = 12_000
CHUNK = 1_000
FAULTS = ("kill_up", "kill_contacts_projector", "restart_nats", "kill_audience_projector",
          "restart_postgres", "kill_up")


def free_port() -> int:
    rnd = random.Random()
    while True:
        port = rnd.randint(30000, 60000)
        if port_is_free("127.0.0.1", port):
            return port


class OwnedPostgres:
    """A throw-away cluster this suite may crash and restart."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.data = root / "data"
        self.port = free_port()

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _pg(self, *args: str) -> None:
        subprocess.run(["runuser", "-u", "postgres", "--", *args], check=True,
                       capture_output=True, timeout=120)

    def init(self) -> None:
        self.root.mkdir(parents=True)
        shutil.chown(self.root, "postgres")
        self._pg("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres")

    def start(self) -> None:
        self._pg("pg_ctl", "-D", str(self.data), "-l", str(self.root / "log"), "-w", "-o",
                 f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 "
                 "-c fsync=off -c max_connections=200", "start")

    def crash(self) -> None:
        self._pg("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")


@pytest.fixture(scope="module")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OwnedPostgres]:
    if shutil.which("initdb") is None or shutil.which("runuser") is None:
        if os.environ.get("FICHA_REQUIRE_POSTGRES") == "1":
            pytest.fail("the fault suite needs initdb and runuser to own a PostgreSQL cluster")
        pytest.skip("initdb or runuser missing: cannot own a PostgreSQL cluster")
    root = Path(f"/tmp/ficha-faults-{os.getpid()}-{random.randint(0, 99999)}")
    pg = OwnedPostgres(root)
    pg.init()
    pg.start()
    try:
        yield pg
    finally:
        pg.crash()
        shutil.rmtree(root, ignore_errors=True)
    _ = tmp_path_factory


class Supervisor:
    """Runs `ficha up` and starts it again whenever it has exited."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.env = env
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None
        self.restarts = 0

    def start(self) -> None:
        with self.log.open("ab") as handle:
            self.proc = subprocess.Popen([sys.executable, "-m", "services", "up"], env=self.env,
                                         stdout=handle, stderr=subprocess.STDOUT,
                                         start_new_session=True)

    def ensure_running(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            self.restarts += 1
            self.start()

    def children(self) -> dict[str, int]:
        """Projector pids by projection name."""
        assert self.proc is not None
        found = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                args = (entry / "cmdline").read_bytes().split(b"\0")
                if os.getpgid(int(entry.name)) != self.proc.pid:
                    continue
            except (OSError, ProcessLookupError):
                continue
            if b"--projection" in args:
                found[args[args.index(b"--projection") + 1].decode()] = int(entry.name)
        return found

    def kill_all(self) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(30)

    def kill_projector(self, name: str) -> bool:
        deadline = time.time() + 30
        while name not in self.children():
            if time.time() > deadline:
                return False
            time.sleep(0.2)
            self.ensure_running()  # (killed by an earlier fault, and not yet restarted)
        os.kill(self.children()[name], signal.SIGKILL)
        return True

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)


async def publish_reliably(url: str, items: list[tuple[str, bytes, str]]) -> None:
    """At-least-once publishing that rides out a NATS restart (same ids on retry)."""
    nc = None
    pending = list(items)
    deadline = time.monotonic() + 120
    while pending:
        assert time.monotonic() < deadline, f"NATS did not come back: {len(pending)} unpublished"
        try:
            if nc is None or not nc.is_connected:
                nc = await nats.connect(url, connect_timeout=2, max_reconnect_attempts=0,
                                        allow_reconnect=False)
            js = nc.jetstream(timeout=5)
            subject, body, msg_id = pending[0]
            await js.publish(subject, body, headers={"Nats-Msg-Id": msg_id})
            pending.pop(0)
        except Exception:  # noqa: BLE001 - the server is restarting: retry the same message
            if nc is not None:
                with contextlib.suppress(Exception):
                    await nc.close()
            nc = None
            await asyncio.sleep(0.3)
    if nc is not None:
        await nc.drain()


def query(dsn: str, sql: str, schema: str = "ficha") -> list[dict[str, Any]]:
    with psycopg.connect(dsn, row_factory=dict_row, connect_timeout=5) as conn:
        conn.execute(f"SET search_path TO {schema}")
        return list(conn.execute(sql).fetchall())


def dump(dsn: str, schema: str) -> dict[str, list[str]]:
    tables = {
        "contacts": "SELECT * FROM contacts ORDER BY contact_id",
        "timeline": "SELECT * FROM timeline ORDER BY contact_id, occurred_at, event_id",
        "contact_tags": "SELECT * FROM contact_tags ORDER BY tenant, tag, contact_id",
        "contact_lists": "SELECT * FROM contact_lists ORDER BY contact_id, list_id",
        "audience_facts": "SELECT contact_id, tenant, email, doc FROM audience_facts "
                          "ORDER BY contact_id",
    }
    return {name: [json.dumps(r, sort_keys=True, default=str) for r in query(dsn, sql, schema)]
            for name, sql in tables.items()}


def test_nothing_is_lost_or_applied_twice_under_faults(
    postgres: OwnedPostgres, tmp_path: Path,
) -> None:
    rnd = random.Random(5)
    raw = list(generate_history("acme", EVENTS, seed=21))
    unique_ids = {e["event_id"] for e in raw}
    emails = {normalise_email(e["contact"]["email"]) for e in raw}

    nats_server = EmbeddedNatsServer(store_dir=tmp_path / "nats", port=free_port())
    nats_server.start()
    env = {k: v for k, v in os.environ.items() if not k.startswith("FICHA_")}
    env.update(FICHA_DATA_DIR=str(tmp_path / "var"), FICHA_DATABASE_URL=postgres.dsn,
               FICHA_DATABASE_SCHEMA="ficha", FICHA_NATS_URL=nats_server.url,
               FICHA_ID_KEY=TEST_ID_KEY, FICHA_PARTITIONS="4", FICHA_ACK_WAIT="5",
               FICHA_METRICS_PORT="0", FICHA_API_PORT="0", PYTHONUNBUFFERED="1")
    supervisor = Supervisor(env, tmp_path / "up.log")
    outcomes: Counter[str] = Counter()
    # A segment, so that transitions flow to ficha.out through the relay under faults too.
    settings = make_settings(tmp_path / "admin", postgres_dsn=postgres.dsn, schema="ficha")
    admin = ContactStore(settings)
    SegmentCommands(admin).define("acme", "vips", "VIPs",
                                  {"field": "tags", "op": "has", "value": "vip"})
    admin.close()
    supervisor.start()
    try:
        later: list[tuple[str, bytes, str]] = []
        for number, start in enumerate(range(0, len(raw), CHUNK)):
            chunk = []
            for event in raw[start : start + CHUNK]:
                item = (f"ficha.in.{event['tenant']}.{event['type']}",
                        json.dumps(event).encode(), event["event_id"])
                chunk.append(item)
                if rnd.random() < 0.10:
                    chunk.append(item)  # a producer retry at once
                if rnd.random() < 0.05:
                    later.append(item)  # again, after the de-dup window
            chunk += later
            later = []
            rnd.shuffle(chunk)
            asyncio.run(publish_reliably(nats_server.url, chunk))
            fault = FAULTS[number % len(FAULTS)]
            time.sleep(rnd.uniform(0.2, 1.5))  # somewhere in the middle of the work
            if fault == "kill_up":
                supervisor.kill_all()
            elif fault.startswith("kill_") and fault.endswith("_projector"):
                name = fault.split("_")[1]
                assert supervisor.kill_projector(name), f"ficha up has no {name} projector"
            elif fault == "restart_nats":
                nats_server.kill()
                time.sleep(1)
                nats_server.start()
            elif fault == "restart_postgres":
                postgres.crash()
                time.sleep(2)
                postgres.start()
            outcomes[fault] += 1
            time.sleep(1)
            supervisor.ensure_running()
        asyncio.run(publish_reliably(nats_server.url, later))

        deadline = time.time() + 300
        while True:
            supervisor.ensure_running()
            try:
                received = query(postgres.dsn, "SELECT COUNT(*) AS n FROM ficha_received")[0]["n"]
                head = query(postgres.dsn, "SELECT COALESCE(MAX(notification_id), 0) AS n "
                             "FROM ficha_events")
                positions = query(postgres.dsn, "SELECT name, position "
                                  "FROM ficha_projection_tracking")
                relay = query(postgres.dsn, "SELECT COALESCE(MAX(seq), 0) AS n FROM ficha_outbox")
                published = query(postgres.dsn, "SELECT position FROM ficha_outbox_relay")
            except psycopg.Error:
                time.sleep(1)
                continue
            caught_up = (received == len(unique_ids) and len(positions) == 2
                         and all(p["position"] >= head[0]["n"] for p in positions)
                         and published and published[0]["position"] >= relay[0]["n"])
            if caught_up:
                break
            assert time.time() < deadline, (received, len(unique_ids), positions, head)
            time.sleep(1)
        out_messages = asyncio.run(_out_sequences(nats_server.url))
    finally:
        supervisor.stop()
        nats_server.stop()

    assert set(outcomes) == set(FAULTS), outcomes  # every kind of fault happened
    # Exactly once: every event received once; every read model as without faults.
    assert received == len(unique_ids)
    timeline = query(postgres.dsn, "SELECT COUNT(*) AS n FROM timeline")[0]["n"]
    assert timeline == len(unique_ids)
    contacts = query(postgres.dsn, "SELECT COUNT(*) AS n FROM contacts")[0]["n"]
    assert contacts == len(emails)
    assert out_messages == list(range(1, relay[0]["n"] + 1)), "ficha.out: a gap or a double"

    reference = _reference(postgres.dsn, raw, tmp_path)
    assert dump(postgres.dsn, "ficha") == reference

    print("\nfault suite: "
          f"{EVENTS:,} events ({len(unique_ids):,} unique) published in "
          f"{EVENTS // CHUNK} chunks with retries and late duplicates")
    print(f"{'fault':40} {'times':>6}")
    for fault, times in sorted(outcomes.items()):
        print(f"{fault:40} {times:6}")
    print(f"{'ficha up restarts':40} {supervisor.restarts:6}")
    print(f"outcome: {received:,} events applied once each, {timeline:,} timeline rows, "
          f"{contacts:,} contacts, {len(out_messages):,} outbound events without gap or "
          "double; read models equal to a fault-free build")


async def _out_sequences(url: str) -> list[int]:
    nc = await nats.connect(url)
    js = nc.jetstream()
    info = await js.stream_info(OUT_STREAM)
    seqs = []
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        msg = await js.get_msg(OUT_STREAM, seq=seq)
        seqs.append(int((msg.headers or {})["Ficha-Out-Seq"]))
    await nc.close()
    return seqs


def _reference(dsn: str, raw: list[dict[str, Any]], tmp_path: Path) -> dict[str, list[str]]:
    """The same events, once each, in publishing order, folded without faults."""
    settings = make_settings(tmp_path / "ref", postgres_dsn=dsn, schema="reference")
    store = ContactStore(settings)
    db = ViewDatabase(settings)
    SegmentCommands(store).define("acme", "vips", "VIPs",
                                  {"field": "tags", "op": "has", "value": "vip"})
    folder = BatchFolder(store, ContactIdentity(settings.id_key), ContactCache(100_000), "p0")
    events = [decode_dict(e) for e in raw]
    for start in range(0, len(events), 500):
        folder.fold_and_commit(events[start : start + 500], start // 500 + 1)
    for projection in (ContactsProjection(), AudienceProjection()):
        runner = ProjectionRunner(store, db, projection, page_size=1000)
        runner.setup()
        runner.catch_up()
    db.close()
    store.close()
    return dump(dsn, "reference")
