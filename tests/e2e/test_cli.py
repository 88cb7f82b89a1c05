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
    env.update(FICHA_DATA_DIR=str(data_dir), FICHA_PARTITIONS="2", PYTHONUNBUFFERED="1")
    return env


def ficha(data_dir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([*FICHA, *args], env=env_for(data_dir), capture_output=True,
                          text=True, timeout=120)
    if check and done.returncode != 0:
        raise AssertionError(f"ficha {' '.join(args)} failed: {done.stderr}")
    return done


def start_up(data_dir: Path, log: Path) -> subprocess.Popen[str]:
    starts_before = log.read_text().count("ficha is up") if log.exists() else 0
    handle = log.open("a")
    proc = subprocess.Popen([*FICHA, "up"], env=env_for(data_dir), stdout=handle,
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

    proc = start_up(data_dir, log)
    try:
        ficha(data_dir, "demo", "--tenant", "acme", "--events", "200", "--seed", "2")
        report = wait_received(data_dir, 600)
        assert report["received_events"] == 600, "a restart resumes: nothing lost or doubled"
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
