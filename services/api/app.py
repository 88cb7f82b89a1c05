"""The composition root of the HTTP API: adapters wired once, routes mounted per tenant.

Every tenant's resources live under ``/v1/tenants/{tenant}``; a key of one tenant gets
404 for any other tenant's address (see ``deps.authenticate``). The OpenAPI document is
at ``/schema/openapi.json``, with a browsable page at ``/schema``.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Iterator
from importlib.resources import files
from typing import Any

import uvicorn
from litestar import Litestar, Request, Response, Router, get
from litestar.di import Provide
from litestar.openapi import OpenAPIConfig
from litestar.openapi.spec import Components, SecurityScheme
from litestar.params import FromPath

from projections.db import ViewDatabase
from services.api import contacts, dead_letters, exports, imports, privacy, segments, stats
from services.api.bus import Bus
from services.api.deps import (
    ApiContext,
    Ctx,
    admin,
    caller_first,
    client_filter,
    consistency,
    reader,
)
from services.api.errors import HANDLERS, ApiError
from services.api.freshness import FreshReads
from services.api.keyring import KeyRing
from services.catalog import SegmentCommands, TenantCommands
from services.config import Settings
from services.domain.rules import MAX_DEPTH
from services.store.contact_store import ContactStore

API_VERSION = "1"
DASHBOARD = (files("services.api") / "static" / "dashboard.html").read_bytes()


def build_context(settings: Settings) -> ApiContext:
    store = ContactStore(settings)
    views = ViewDatabase(settings)
    # The API may start before any projection has: positions then read as 0.
    views.ensure_tracking_table()
    bus = Bus(settings)
    return ApiContext(settings=settings, views=views, store=store,
                      keyring=KeyRing(store), segments=SegmentCommands(store),
                      tenants=TenantCommands(store), reads=FreshReads(views, store, bus),
                      bus=bus)


@get("/healthz", summary="Liveness", include_in_schema=False, sync_to_thread=False)
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@get("/readyz", summary="Readiness", include_in_schema=False, sync_to_thread=True)
def readyz(ctx: Ctx) -> Response[dict[str, str]]:
    """Ready when what every read needs answers: the read models' positions and the
    event store's head (a load balancer sends no request to an API process that would
    answer them with errors)."""
    try:
        with ctx.views.reading() as cur:
            cur.execute("SELECT name, position FROM ficha_projection_tracking")
            cur.fetchall()
        ctx.store.max_notification_id()
    except Exception as error:  # noqa: BLE001 - any failure is the answer: not ready
        reason = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
        return Response({"status": "not ready", "reason": reason[:300]}, status_code=503)
    return Response({"status": "ready"})


@get("/dashboard/{tenant:str}", summary="A tenant's dashboard (HTML)", media_type="text/html",
     include_in_schema=False, sync_to_thread=False)
def dashboard(tenant: FromPath[str]) -> Response[bytes]:
    """The page itself holds no data: it asks for the tenant's API key and reads the API
    with it, so it needs no authentication of its own."""
    return Response(DASHBOARD, media_type="text/html", headers={
        "Content-Security-Policy": "default-src 'self'; style-src 'unsafe-inline'; "
        "script-src 'unsafe-inline'; img-src 'self' data:",
        "Cache-Control": "no-cache",
    })


def refuse_nul(request: Request[Any, Any, Any]) -> None:
    """No text in ficha may hold a NUL character (PostgreSQL text cannot): say so, rather
    than fail deep in a query."""
    raw = request.scope.get("raw_path", b"") + b"?" + request.scope.get("query_string", b"")
    if b"%00" in raw or b"\x00" in raw:
        raise ApiError(400, "invalid_request",
                       "the address holds a NUL character (%00), which no value may contain")


async def check_request(request: Request[Any, Any, Any]) -> None:
    """Before a route reads its parameters: no NUL in the address, and a body that does
    not nest deeper than ``MAX_BODY_NESTING`` (a parser would give up with a RecursionError
    somewhere past a few hundred levels, as a 500; a segment rule nests at most
    ``MAX_DEPTH`` groups, two JSON levels each). Any body but an upload's (the routes
    marked ``opt={"upload": True}``) is looked at, whatever type it claims: the routes
    read JSON whatever it says."""
    refuse_nul(request)
    if request.method not in ("POST", "PUT", "PATCH") or request.route_handler.opt.get(
            "upload"):  # (by the route, not by the type a client claims for its body)
        return
    body = await request.body()
    if len(body) > 1_000_000:  # (a scan in Python: not on the event loop)
        deep = await asyncio.to_thread(nests_deeper, body, MAX_BODY_NESTING)
    else:
        deep = nests_deeper(body, MAX_BODY_NESTING)
    if deep:
        raise ApiError(400, "invalid_body", "the body nests too deeply to read; a "
                       f"segment rule may nest at most {MAX_DEPTH} levels")


MAX_BODY_NESTING = 2 * MAX_DEPTH + 16


def nests_deeper(data: bytes, limit: int) -> bool:
    """Whether JSON text opens more than ``limit`` arrays or objects within each other
    (brackets in strings aside), without parsing it: no recursion, whatever its depth."""
    if data.count(b"[") + data.count(b"{") <= limit:
        return False
    depth = 0
    in_string = escaped = False
    for byte in data:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):  # [ {
            depth += 1
            if depth > limit:
                return True
        elif byte in (0x5D, 0x7D):  # ] }
            depth -= 1
    return False


def create_app(ctx: ApiContext) -> Litestar:
    tenant_routes = Router(
        path="/v1/tenants/{tenant:str}",
        route_handlers=[*contacts.ROUTES, *segments.ROUTES, *stats.ROUTES,
                        *dead_letters.ROUTES, *exports.ROUTES, *privacy.ROUTES,
                        *imports.ROUTES],
        dependencies={
            # Keys are checked from memory (read from the store every 2 s per tenant).
            "principal": Provide(reader, sync_to_thread=False),
            "admin": Provide(admin, sync_to_thread=False),
            "wanted": Provide(consistency, sync_to_thread=False),
            "client_filter": Provide(client_filter, sync_to_thread=False),
        },
        security=[{"apiKey": []}],
        guards=[caller_first(ctx)],
    )
    app = Litestar(
        route_handlers=[tenant_routes, healthz, readyz, dashboard],
        dependencies={"ctx": Provide(lambda: ctx, use_cache=True, sync_to_thread=False)},
        exception_handlers=HANDLERS,
        before_request=check_request,
        openapi_config=OpenAPIConfig(
            title="ficha", version=API_VERSION,
            description="The read models of ficha (client list, contact cards, segments, "
            "engagement, lists, RFM) and the commands of a tenant's operator. Every read "
            "says how fresh it is; see `min_position` and `wait_for_event` for "
            "read-your-writes.",
            components=Components(security_schemes={"apiKey": SecurityScheme(
                type="http", scheme="bearer",
                description="A tenant's API key: ficha.<tenant>.<key id>.<secret>")}),
        ),
        debug=False,
        # ficha configures logging once for the process (JSON lines): keep Litestar's
        # own default configuration out of it.
        logging_config=None,
    )
    return app


def app_from_env() -> Litestar:
    """The app for a uvicorn worker process (``ficha api --workers N``): settings from
    the environment, adapters of its own."""
    from services.collector import tune_for_throughput
    from services.config import load_settings

    tune_for_throughput()
    return create_app(build_context(load_settings()))


class _QuietServer(uvicorn.Server):
    """A uvicorn server that leaves signals to its host process (``ficha up``)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class PortTaken(OSError):
    """The API's address is in use or not ours to bind."""


def bind(host: str, port: int) -> socket.socket:
    """The API's listening socket, bound now so that a taken port is a clear error."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        raise PortTaken(f"the HTTP API cannot listen on {host}:{port} ({error.strerror}); "
                        "set FICHA_API_PORT to a free port (0 turns the API off in "
                        "`ficha up`)") from None
    sock.listen(2048)
    sock.setblocking(False)
    return sock


def server(ctx: ApiContext, host: str, port: int, *, own_signals: bool = False,
           sock: socket.socket | None = None) -> uvicorn.Server:
    config = uvicorn.Config(create_app(ctx), host=host, port=port, log_config=None,
                            access_log=False, lifespan="off")
    return uvicorn.Server(config) if own_signals else _QuietServer(config)


async def serve_until(srv: uvicorn.Server, stop: asyncio.Event,
                      sockets: list[socket.socket] | None = None) -> None:
    """Serve until ``stop`` is set, then finish the requests under way."""
    task = asyncio.create_task(srv.serve(sockets=sockets))
    stopper = asyncio.create_task(stop.wait())
    await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    srv.should_exit = True
    stopper.cancel()
    await task


async def close_context(ctx: ApiContext) -> None:
    await ctx.bus.close()
    ctx.views.close()
    ctx.store.close()


__all__ = ["app_from_env", "bind", "build_context", "close_context", "create_app", "serve_until",
           "server"]
