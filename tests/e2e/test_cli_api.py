"""`ficha api`: the HTTP API as its own process, as production runs it."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.api.conftest import free_port
from tests.e2e.test_cli import FICHA, alive, children_of, env_for


def start_api(data_dir: Path, port: int, *args: str) -> subprocess.Popen[str]:
    env = {**env_for(data_dir), "FICHA_API_PORT": str(port)}
    return subprocess.Popen([*FICHA, "api", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def wait_healthy(proc: subprocess.Popen[str], port: int) -> None:
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            raise AssertionError(f"ficha api exited: {proc.communicate()[0]}")
        assert time.monotonic() < deadline, "ficha api did not answer /healthz in 60 s"
        time.sleep(0.1)


def stop(proc: subprocess.Popen[str]) -> str:
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    return out


@pytest.mark.slow
def test_one_process_serves_on_uvloop_and_stops_cleanly(tmp_path: Path) -> None:
    port = free_port()
    proc = start_api(tmp_path / "var", port)
    try:
        wait_healthy(proc, port)
        ready = httpx.get(f"http://127.0.0.1:{port}/readyz")
        assert ready.status_code == 200, ready.text
        # uvloop's event loop, as uvicorn's own workers have (asyncio's costs the API about
        # a fifth more CPU per request): its extension is loaded by nothing else.
        maps = Path(f"/proc/{proc.pid}/maps").read_text()
        assert "uvloop/loop." in maps
    finally:
        if proc.poll() is None:
            stop(proc)


@pytest.mark.slow
def test_worker_processes_serve_and_stop_with_their_parent(tmp_path: Path) -> None:
    port = free_port()
    proc = start_api(tmp_path / "var", port, "--workers", "2")
    try:
        wait_healthy(proc, port)
        answers = {httpx.get(f"http://127.0.0.1:{port}/readyz").status_code
                   for _ in range(6)}
        assert answers == {200}
        # uvicorn's workers: processes spawned by multiprocessing (whose resource tracker
        # may be a child too, with another command line).
        workers = [pid for pid in children_of(proc.pid) if b"spawn_main" in _cmdline(pid)]
        assert len(workers) == 2, [_cmdline(pid) for pid in children_of(proc.pid)]
    finally:
        if proc.poll() is None:
            stop(proc)
    deadline = time.monotonic() + 10
    while any(alive(pid) for pid in workers):
        assert time.monotonic() < deadline, "a worker outlived its parent"
        time.sleep(0.1)


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""
