"""`ficha` as a user runs it: embedded NATS and SQLite, restart, clear errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

FICHA = [sys.executable, "-m", "services"]


def env_for(data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FICHA_")}
    env.update(FICHA_DATA_DIR=str(data_dir), FICHA_PARTITIONS="2", PYTHONUNBUFFERED="1",
               FICHA_API_PORT="0")
    return env


def ficha(data_dir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([*FICHA, *args], env=env_for(data_dir), capture_output=True,
                          text=True, timeout=120)
    if check and done.returncode != 0:
        raise AssertionError(f"ficha {' '.join(args)} failed: {done.stderr}")
    return done


def start_up(data_dir: Path, log: Path, *args: str) -> subprocess.Popen[str]:
    starts_before = log.read_text().count("ficha is up") if log.exists() else 0
    handle = log.open("a")
    proc = subprocess.Popen([*FICHA, "up", *args], env=env_for(data_dir), stdout=handle,
                            stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 60
    while log.read_text().count("ficha is up") == starts_before:
        if proc.poll() is not None:
            raise AssertionError(f"ficha up exited: {log.read_text()}")
        assert time.time() < deadline, log.read_text()
        time.sleep(0.1)
    return proc


def stop(proc: subprocess.Popen[str]) -> int:
    proc.send_signal(signal.SIGINT)
    return proc.wait(timeout=60)


def status(data_dir: Path) -> dict[str, Any]:
    return json.loads(ficha(data_dir, "status", "--json").stdout)


def wait_status(data_dir: Path, holds: Any, timeout: float = 60) -> dict[str, Any]:
    """Poll `ficha status --json` until `holds(report)`; the report."""
    deadline = time.time() + timeout
    while True:
        report = status(data_dir)
        if holds(report):
            return report
        assert time.time() < deadline, report
        time.sleep(0.2)


def wait_received(data_dir: Path, n: int, timeout: float = 90) -> dict[str, Any]:
    deadline = time.time() + timeout
    while True:
        report = status(data_dir)
        caught_up = all(p["lag"] == 0 for p in report["projections"])
        if report["received_events"] >= n and caught_up:
            return report
        assert time.time() < deadline, report
        time.sleep(0.3)


@pytest.mark.slow
def test_up_demo_list_get_restart(tmp_path: Path) -> None:
    data_dir = tmp_path / "var"
    log = tmp_path / "up.log"
    proc = start_up(data_dir, log)
    try:
        assert (data_dir / "nats.url").exists()
        # A second `ficha up` on the same data dir is refused before it touches anything
        # (it would start a second nats-server on the same store and, leaving, delete the
        # first one's nats.url): the first keeps serving, as the demo below shows.
        second = ficha(data_dir, "up", check=False)
        assert second.returncode != 0
        assert "Traceback" not in second.stderr, second.stderr
        assert f"ficha is already running on {data_dir} (pid {proc.pid})" in second.stderr
        assert (data_dir / "nats.url").exists()
        ficha(data_dir, "demo", "--tenant", "acme", "--events", "400", "--seed", "1")
        report = wait_received(data_dir, 400)
        assert report["received_events"] == 400
        assert report["bus"]["dead_letters"] == 0
        listed = json.loads(ficha(data_dir, "contacts", "list", "--tenant", "acme",
                                  "--json", "--count").stdout)
        assert listed["total"] > 10
        email = listed["contacts"][0]["email"]
        card = json.loads(ficha(data_dir, "contacts", "get", "--tenant", "acme", "--email",
                                email, "--json").stdout)
        assert card["email"] == email and card["timeline"]
        human = ficha(data_dir, "contacts", "list", "--tenant", "acme").stdout
        assert email in human
    finally:
        assert stop(proc) == 0
    assert "stopped cleanly" in log.read_text()
    # Stopped cleanly, ficha up took its NATS address away: status says no bus, exits 1.
    stopped = ficha(data_dir, "status", "--json", check=False)
    assert stopped.returncode == 1, stopped.stderr
    assert "no NATS server is known" in json.loads(stopped.stdout)["bus"]["error"]

    # The views database deleted: the read models are missing, not ficha never started,
    # and `ficha up`, as the line says, rebuilds them from the event store as it starts.
    for path in data_dir.glob("views.sqlite*"):
        path.unlink()
    gone = ficha(data_dir, "contacts", "list", "--tenant", "acme", check=False)
    assert gone.returncode == 1, gone.stderr
    assert gone.stderr.startswith("error: the read models are missing on the data dir "
                                  f"{data_dir}, though its event store holds events: "
                                  "`ficha up` builds them"), \
        gone.stderr

    assert "batch of" not in log.read_text()  # batches are logged at debug level only
    proc = start_up(data_dir, log, "--verbose")
    try:
        rebuilt = wait_received(data_dir, 400)
        assert all(p["position"] > 0 for p in rebuilt["projections"]), rebuilt
        assert json.loads(ficha(data_dir, "contacts", "list", "--tenant", "acme", "--json",
                                "--count").stdout)["total"] == listed["total"]
        ficha(data_dir, "demo", "--tenant", "acme", "--events", "200", "--seed", "2")
        report = wait_received(data_dir, 600)
        assert report["received_events"] == 600, "a restart resumes: nothing lost or doubled"
        # --verbose logs every ingest batch and every projection page, with its timings,
        # from the projector processes too.
        logged = log.read_text()
        assert "committed in" in logged
        for name in ("contacts", "audience"):
            assert f"projection {name}: " in logged
        total = json.loads(ficha(data_dir, "contacts", "list", "--tenant", "acme", "--json",
                                 "--count").stdout)["total"]
        assert total >= listed["total"]
    finally:
        assert stop(proc) == 0


def test_expected_errors_are_one_line_without_traceback(tmp_path: Path) -> None:
    data_dir = tmp_path / "var"
    cases = [
        ("demo", "--tenant", "acme", "--events", "5"),
        ("demo", "--tenant", "Bad Tenant", "--events", "5"),
        ("contacts", "list", "--tenant", "nobody"),
        ("contacts", "list", "--tenant", "acme", "--consent", "pigeon"),
        ("contacts", "get", "--tenant", "acme", "--email", "x@example.com"),
    ]
    for args in cases:
        done = ficha(data_dir, *args, check=False)
        assert done.returncode != 0, args
        assert "Traceback" not in done.stderr, done.stderr
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error:"), (args, done.stderr)

    # `ficha up` killed without a chance to clean up leaves its NATS address behind: the
    # commands that talk to NATS say so at once (nats-py alone would retry for ever,
    # printing a traceback per attempt), and `ficha status` reports it and exits 1.
    (data_dir / "nats.url").write_text("nats://127.0.0.1:1\n")
    for args in (("demo", "--tenant", "acme", "--events", "5"), ("dlq", "list")):
        started = time.monotonic()
        done = ficha(data_dir, *args, check=False)
        assert time.monotonic() - started < 30, args
        assert done.returncode != 0 and "Traceback" not in done.stderr, done.stderr
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        assert len(lines) == 1, (args, done.stderr)
        assert "is ficha up running on" in lines[0], lines[0]
    done = ficha(data_dir, "status", "--json", check=False)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert "is ficha up running on" in json.loads(done.stdout)["bus"]["error"]


def test_an_unreachable_database_is_one_line(tmp_path: Path) -> None:
    """Once, `ficha projections replay|rebuild`, `ficha replay`, `ficha project` and
    `ficha status` opened the event store themselves and printed a traceback when the
    database was away; the privacy commands already said one line. All now open it as
    every other command does (cli_common.event_store) and say why in one line."""
    port = free_ports(1)  # nothing listens there: the connection is refused
    env = {**env_for(tmp_path / "var"),
           "FICHA_DATABASE_URL": f"postgresql://postgres@127.0.0.1:{port}/test"}
    commands = [
        ("projections", "replay"), ("projections", "rebuild", "--yes"),
        ("replay", "audience"), ("project", "--projection", "audience"), ("status",),
        ("erasures", "list"), ("erasures", "show", "erase-1"),
        ("contacts", "access", "ana@example.com", "--tenant", "acme", "--skip-dead-letters"),
    ]
    for args in commands:
        done = subprocess.run([*FICHA, *args], env=env, capture_output=True, text=True,
                              timeout=60)
        assert done.returncode == 1 and "Traceback" not in done.stderr, (args, done.stderr)
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: cannot "), (args, lines)
        assert f'port {port} failed: Connection refused' in lines[0], (args, lines)


def free_ports(count: int) -> int:
    """The first of `count` consecutive free loopback ports."""
    import random
    import socket

    for _ in range(200):
        base = random.randint(20000, 60000)
        try:
            sockets = []
            for port in range(base, base + count):
                s = socket.socket()
                sockets.append(s)
                s.bind(("127.0.0.1", port))
        except OSError:
            continue
        finally:
            for s in sockets:
                s.close()
        return base
    raise AssertionError("no free ports")


def outward_address() -> str:
    """This machine's address on its default route (no packet is sent), else loopback."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("10.255.255.255", 1))
            return str(probe.getsockname()[0])
        except OSError:
            return "127.0.0.1"


@pytest.mark.slow
def test_every_process_serves_metrics_health_and_readiness(tmp_path: Path) -> None:
    import urllib.request

    data_dir = tmp_path / "var"
    base = free_ports(3)
    log = tmp_path / "up.log"
    # Listening on every address (as in a container), they answer on this machine's own
    # address too, the projector processes included.
    env = {**env_for(data_dir), "FICHA_METRICS_PORT": str(base), "FICHA_METRICS_HOST": "0.0.0.0"}
    host = outward_address()
    with log.open("a") as handle:
        proc = subprocess.Popen([*FICHA, "up"], env=env, stdout=handle,
                                stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 60
        while "ficha is up" not in log.read_text():
            assert proc.poll() is None and time.time() < deadline, log.read_text()
            time.sleep(0.1)
        ficha(data_dir, "demo", "--tenant", "acme", "--events", "300", "--seed", "3")
        wait_received(data_dir, 300)

        def get(port: int, path: str) -> tuple[int, str]:
            try:
                with urllib.request.urlopen(f"http://{host}:{port}{path}", timeout=5) as r:
                    return r.status, r.read().decode()
            except urllib.error.HTTPError as error:
                return error.code, error.read().decode()

        deadline = time.time() + 30
        while True:  # the projectors' servers start with their processes
            try:
                statuses = [get(port, "/healthz")[0] for port in range(base, base + 3)]
            except OSError:
                statuses = []
            if statuses == [200, 200, 200]:
                break
            assert time.time() < deadline, statuses
            time.sleep(0.2)
        for port in range(base, base + 3):
            assert get(port, "/readyz") == (200, "ready\n")
        status_code, text = get(base, "/metrics")
        assert status_code == 200
        assert 'ficha_ingest_events_total{outcome="accepted",type="form_submitted"}' in text
        assert "ficha_fold_seconds_bucket" in text and "ficha_partition_lag_messages" in text
        # What an operator alerts on is there from the start, before anything went wrong:
        # the dead letters waiting, and each projection's failures at 0.
        deadline = time.time() + 30
        while "\nficha_dead_letters_stored 0.0" not in text:
            assert time.time() < deadline, text
            time.sleep(0.5)
            text = get(base, "/metrics")[1]
        projector = get(base + 1, "/metrics")[1] + get(base + 2, "/metrics")[1]
        assert 'ficha_projection_events_total{projection="contacts"}' in projector
        assert 'ficha_projection_events_total{projection="audience"}' in projector
        for name in ("contacts", "audience"):
            assert f'ficha_projection_failures_total{{projection="{name}"}} 0.0' in projector
        assert get(base, "/nope")[0] == 404
    finally:
        assert stop(proc) == 0


def test_demo_stops_with_one_line_when_nats_goes_away_mid_way(tmp_path: Path) -> None:
    """NATS stopping while `ficha demo` publishes ends it in seconds with one line saying
    how far it got; it used to wait for the acknowledgements of a closed connection for
    ever (and a Ctrl-C then printed a traceback)."""
    import asyncio

    import nats

    from services.natsserver import EmbeddedNatsServer
    from services.streams import INGEST_STREAM, TopologySettings, ensure_topology

    server = EmbeddedNatsServer(store_dir=tmp_path / "nats")
    server.start()

    async def streams(then: Any) -> Any:
        nc = await nats.connect(server.url)
        try:
            return await then(nc.jetstream())
        finally:
            await nc.close()

    async def stored(js: Any) -> int:
        return int((await js.stream_info(INGEST_STREAM)).state.messages)

    demo = None
    try:
        asyncio.run(streams(lambda js: ensure_topology(js, TopologySettings(partitions=2))))
        env = {**env_for(tmp_path / "var"), "FICHA_NATS_URL": server.url}
        demo = subprocess.Popen([*FICHA, "demo", "--tenant", "acme", "--events", "20000",
                                 "--rate", "400"], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 60
        while asyncio.run(streams(stored)) < 200:
            assert demo.poll() is None and time.time() < deadline, demo.communicate()
            time.sleep(0.2)
        server.stop()
        _, errors = demo.communicate(timeout=60)
    finally:
        if demo is not None and demo.poll() is None:
            demo.kill()
            demo.wait()
        server.stop()
    assert demo.returncode == 1 and "Traceback" not in errors, errors
    lines = [line for line in errors.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, errors
    assert "publishing stopped after " in lines[0] and " of 20,000 events" in lines[0]
    assert "Running the same command again is safe" in lines[0]


def children_of(pid: int) -> list[int]:
    """The processes whose parent is `pid` (started by any of its threads)."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            children.append(int(stat.parent.name))
    return children


def alive(pid: int) -> bool:
    """Running, not a zombie (a child of ours that exited is one until reaped)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes() != b""
    except OSError:
        return False


@pytest.mark.slow
def test_a_killed_up_leaves_nothing_running_after_the_next_start(tmp_path: Path) -> None:
    """SIGKILL (the OOM killer) gives `ficha up` no chance to stop its children. Its
    projector processes stop when they find their parent gone; its nats-server, which
    cannot, is stopped by the next `ficha up` before it starts its own on the same store
    (two servers on one store would both write it)."""
    data_dir = tmp_path / "var"
    log = tmp_path / "up.log"
    proc = start_up(data_dir, log)
    try:
        first = children_of(proc.pid)
        deadline = time.time() + 30
        while len(first) < 3:  # nats-server and the two projectors
            assert time.time() < deadline, first
            time.sleep(0.2)
            first = children_of(proc.pid)
    finally:
        proc.kill()
        proc.wait()
    nats_pid = next(pid for pid in first if "nats-server" in Path(f"/proc/{pid}/cmdline")
                    .read_text())
    projectors = [pid for pid in first if pid != nats_pid]
    try:
        deadline = time.time() + 30
        while any(alive(pid) for pid in projectors):
            assert time.time() < deadline, "the projectors outlived their ficha up"
            time.sleep(0.2)
        assert alive(nats_pid)  # nothing stops it but the next start

        proc = start_up(data_dir, log)
        try:
            assert not alive(nats_pid)
            servers = [pid for pid in children_of(proc.pid)
                       if "nats-server" in Path(f"/proc/{pid}/cmdline").read_text()]
            assert len(servers) == 1
            ficha(data_dir, "demo", "--tenant", "acme", "--events", "100", "--seed", "4")
            wait_received(data_dir, 100)
        finally:
            assert stop(proc) == 0
    finally:
        for pid in first:  # whatever the fix missed
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
