"""``/metrics``, ``/healthz`` and ``/readyz`` over HTTP, in a thread of the process.

``/healthz`` answers 200 while the process runs. ``/readyz`` answers 200 when the
process's readiness check passes (its database and bus reachable) and 503 with the
reason otherwise, for orchestrators. ``/metrics`` is the Prometheus exposition.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import make_wsgi_app

log = logging.getLogger("ficha.health")

Ready = Callable[[], str | None]  # None when ready, else the reason it is not


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass


class HealthServer:
    def __init__(self, port: int, ready: Ready, host: str = "127.0.0.1") -> None:
        self.port = port
        self.host = host
        self.ready = ready
        self._metrics = make_wsgi_app()
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    def _app(self, environ: dict[str, Any], start: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            return self._metrics(environ, start)  # type: ignore[no-any-return]
        if path == "/healthz":
            return _text(start, "200 OK", "ok")
        if path == "/readyz":
            try:
                reason = self.ready()
            except Exception as error:  # noqa: BLE001 - a failing check means not ready
                reason = f"readiness check failed: {error}"
            if reason is None:
                return _text(start, "200 OK", "ready")
            return _text(start, "503 Service Unavailable", reason)
        return _text(start, "404 Not Found", "try /metrics, /healthz or /readyz")

    def start(self) -> None:
        self._server = make_server(self.host, self.port, self._app, handler_class=_QuietHandler)
        self.port = self._server.server_port
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True,
                                        name="health")
        self._thread.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


def _text(start: Callable[..., Any], status: str, body: str) -> list[bytes]:
    data = (body + "\n").encode()
    start(status, [("Content-Type", "text/plain; charset=utf-8"),
                   ("Content-Length", str(len(data)))])
    return [data]


def start_health(port: int, ready: Ready, host: str = "127.0.0.1") -> HealthServer | None:
    """Serve on ``host:port``, or log why not and go on: metrics must not stop ficha."""
    server = HealthServer(port, ready, host)
    try:
        server.start()
    except OSError as error:
        log.warning("cannot serve /metrics on port %d (%s); set FICHA_METRICS_PORT", port,
                    error.strerror or error)
        return None
    return server
