"""What every route shares: the composition's context, the caller, freshness, envelopes."""

from __future__ import annotations

import asyncio
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, TypeVar

import msgspec
from litestar import Request, Response
from litestar.di import NamedDependency
from litestar.openapi.spec import Schema
from litestar.openapi.spec.enums import OpenAPIFormat, OpenAPIType
from litestar.params import FromPath, FromQuery, Parameter

from projections.contacts import CONSENT_CHANNELS
from projections.db import ViewDatabase
from projections.queries import ContactFilter
from services.api.bus import Bus
from services.api.errors import ApiError
from services.api.freshness import (
    MAX_WAIT_S,
    Consistency,
    Freshness,
    FreshReads,
    awaited_event,
)
from services.api.keyring import KeyRing, Principal
from services.catalog import SegmentCommands, TenantCommands
from services.config import Settings
from services.instants import parse_instant
from services.store.contact_store import ContactStore


@dataclass
class ApiContext:
    """The adapters the routes use, wired once by ``services.api.app.create_app``."""

    settings: Settings
    views: ViewDatabase
    store: ContactStore
    keyring: KeyRing
    segments: SegmentCommands
    tenants: TenantCommands
    reads: FreshReads
    bus: Bus

    def read(self, projection: str, tenant: str,
             wanted: Consistency) -> AbstractContextManager[Freshness]:
        """``with ctx.read(...) as fresh:`` the route's queries, in one read whose rows are
        at least as new as ``fresh.position`` (after waiting as the caller asked)."""
        return self.reads.read(projection, tenant, wanted)


# Route parameters that Litestar injects by name (see services.api.app.create_app).
Ctx = NamedDependency[ApiContext]
Caller = NamedDependency[Principal]
Wanted = NamedDependency[Consistency]

# ------------------------------------------------------------------------------ callers

_HOW = ("send an API key as `Authorization: Bearer ficha.<tenant>.<id>.<secret>` "
        "(an operator creates one with `ficha keys create`)")


def _presented(request: Request[Any, Any, Any]) -> str:
    header = request.headers.get("authorization", "")
    if header[:7].lower() == "bearer ":
        return header[7:].strip()
    return request.headers.get("x-api-key", "").strip()


def authenticate(request: Request[Any, Any, Any], tenant: FromPath[str], ctx: Ctx) -> Principal:
    """The caller, if its key is valid and belongs to the tenant in the path.

    A key of another tenant gets 404, as if the tenant did not exist: a caller learns
    nothing about tenants other than its own.
    """
    text = _presented(request)
    if not text:
        scheme = request.headers.get("authorization", "").strip().split(" ")[0]
        if scheme.lower() == "bearer":
            problem = "the Authorization header has no key after Bearer"
        elif scheme:
            problem = (f"the Authorization header uses the {scheme[:20]} scheme, which ficha "
                       "does not take; the scheme must be Bearer")
        else:
            problem = "no API key"
        raise ApiError(401, "unauthorized", f"{problem}: {_HOW}",
                       headers={"WWW-Authenticate": "Bearer"})
    principal = ctx.keyring.authenticate(text)
    if principal is None:
        raise ApiError(401, "unauthorized",
                       "this API key is not valid: it is malformed, unknown or revoked",
                       headers={"WWW-Authenticate": "Bearer"})
    if principal.tenant != tenant:
        raise ApiError(404, "not_found", "there is nothing at this address")
    return principal


def _authorised(request: Request[Any, Any, Any], tenant: str, ctx: ApiContext,
                scope: str) -> Principal:
    """The caller, authenticated once per request (see ``caller_first``)."""
    principal: Principal | None = request.scope.get("state", {}).get("principal")
    if principal is None:
        principal = authenticate(request, tenant, ctx)
        request.state.principal = principal
    if scope == "admin" and not principal.may("admin"):
        raise ApiError(403, "forbidden",
                       "this key may only read; this route needs a key with the admin scope")
    return principal


def reader(request: Request[Any, Any, Any], tenant: FromPath[str], ctx: Ctx) -> Principal:
    return _authorised(request, tenant, ctx, "read")


def admin(request: Request[Any, Any, Any], tenant: FromPath[str], ctx: Ctx) -> Principal:
    return _authorised(request, tenant, ctx, "admin")


def caller_first(ctx: ApiContext) -> Any:
    """A guard of the tenant routes that take a body: the caller is checked before the
    body is read, so that an unauthenticated request or another tenant's key gets its 401 or
    404 whatever it sends (Litestar parses a body before the route's dependencies)."""
    def guard(connection: Any, handler: Any) -> None:
        if connection.scope.get("method") not in ("POST", "PUT", "PATCH"):
            return  # no body: the dependency chain checks the caller first
        scope = "admin" if "admin" in handler.parsed_fn_signature.parameters else "read"
        _authorised(connection, connection.path_params["tenant"], ctx, scope)
    return guard


# ---------------------------------------------------------------------------- freshness
#
# Litestar resolves dependencies level by level, and the dependencies of one level
# together in a task group: on a route that reads, that costs more than the route's
# query. The dependencies form a chain instead (ctx → principal → wanted → client_filter),
# which also means the caller is authenticated before anything else is parsed.


# The largest log position either database can hold (a signed 64-bit integer).
MAX_POSITION = 2**63 - 1


def consistency(
    principal: Caller,
    min_position: Annotated[int | None, Parameter(
        ge=0, le=MAX_POSITION, description="Wait until the read model has applied this "
        "log position (an earlier answer's freshness.position or a write's position).")
    ] = None,
    wait_for_event: Annotated[str | None, Parameter(
        max_length=128, description="Wait until this event (its event_id, as published "
        "on the bus) has been ingested and projected; 422 dead_lettered at once if "
        "ingestion refused it.")] = None,
    wait_timeout: Annotated[float, Parameter(
        ge=0, le=MAX_WAIT_S, description="Seconds to wait for min_position or "
        "wait_for_event before answering 503.")] = 5.0,
) -> Consistency:
    event = awaited_event(wait_for_event)
    # This dependency runs on the event loop (sync_to_thread=False); the wait, in the
    # route's worker thread, may need the loop (see Consistency).
    loop = asyncio.get_running_loop() if event is not None else None
    return Consistency(min_position, event, wait_timeout, loop)


# ---------------------------------------------------------------------- query values


_INSTANT_FORMS = ("a date (2026-11-01, meaning 00:00 UTC that day) or an RFC 3339 date-time "
                  "with its offset (2026-11-01T10:00:00Z, 2026-11-01T10:00:00+01:00, the + "
                  "written %2B in an address); a time without an offset is refused")


def instant_parameter(what: str) -> Any:
    """A query parameter that names an instant: ``what`` it selects, and the forms it takes
    (the OpenAPI schema says both: a date or a date-time)."""
    return Parameter(description=f"{what}: {_INSTANT_FORMS}.", schema_extra={"one_of": [
        Schema(type=OpenAPIType.STRING, format=OpenAPIFormat.DATE),
        Schema(type=OpenAPIType.STRING, format=OpenAPIFormat.DATE_TIME)]})


def instant(text: str | None, field: str) -> datetime | None:
    """The instant a query parameter names (see ``services.instants``), or 400 naming the
    field."""
    if text is None:
        return None
    moment = parse_instant(text)
    if isinstance(moment, str):
        hint = "; in an address, write + as %2B" if " " in text else ""
        raise ApiError(400, "invalid_request", f"{field}: {moment}{hint}", field)
    return moment


Channel = Annotated[str | None, Parameter(
    description=f"A consent channel: {', '.join(CONSENT_CHANNELS)}.")]


def client_filter(
    tenant: FromPath[str],
    wanted: Wanted,
    language: Annotated[str | None, Parameter(description="e.g. es, or es-MX")] = None,
    country: Annotated[str | None, Parameter(description="ISO 3166-1 alpha-2")] = None,
    tag: FromQuery[str | None] = None,
    consent: Channel = None,
    no_consent: Channel = None,
    first_seen_from: Annotated[str | None, instant_parameter(
        "Contacts first seen at or after this instant")] = None,
    first_seen_to: Annotated[str | None, instant_parameter(
        "Contacts first seen before this instant")] = None,
    q: Annotated[str | None, Parameter(
        max_length=200, description="Prefix of the email, first name or last name.")] = None,
) -> ContactFilter:
    """The client list's filters, as the list and the export routes take them (which
    take ``wanted`` with them: an export too can wait for a write to be projected)."""
    return ContactFilter(
        tenant=tenant, language=language, country=country, tag=tag, consent=consent,
        no_consent=no_consent, first_seen_from=instant(first_seen_from, "first_seen_from"),
        first_seen_to=instant(first_seen_to, "first_seen_to"), search=q)


Filter = NamedDependency[ContactFilter]

# ---------------------------------------------------------------------------- envelopes


class Item(msgspec.Struct):
    data: Any
    freshness: Freshness


class Page(msgspec.Struct):
    data: list[Any]
    freshness: Freshness
    next_cursor: str | None  # null on the last page, and for lists that are not paged
    total: int | None  # null unless with_total was asked


class Written(msgspec.Struct):
    """A command's result and the log position of the change, to read it back with
    ``min_position``."""

    data: Any
    position: int


def headers(fresh: Freshness) -> dict[str, str]:
    return {"Ficha-Position": str(fresh.position), "Ficha-Lag": str(fresh.lag)}


ItemShape = TypeVar("ItemShape", bound=Item)
PageShape = TypeVar("PageShape", bound=Page)


def item(data: Any, fresh: Freshness,
         shape: type[ItemShape] = Item) -> Response[ItemShape]:  # type: ignore[assignment]
    """``data`` with its freshness; ``shape`` says what ``data`` holds, for the OpenAPI
    document (``services.api.answers``)."""
    return Response(shape(data, fresh), headers=headers(fresh))


def page(data: list[Any], fresh: Freshness, next_cursor: str | None = None,
         total: int | None = None,
         shape: type[PageShape] = Page) -> Response[PageShape]:  # type: ignore[assignment]
    return Response(shape(data, fresh, next_cursor, total), headers=headers(fresh))
