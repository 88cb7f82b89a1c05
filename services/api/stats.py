"""Routes of the tenant's figures (engagement, lists, RFM, tags), its property
definitions, and the freshness of every read model."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from litestar import Response, delete, get, put
from litestar.params import FromPath, JSONBody, Parameter

from projections.audience_queries import engagement_stats, list_stats, rfm_stats
from projections.queries import tag_counts
from projections.registry import projection_names
from services.api.deps import Caller, Ctx, Item, Page, Wanted, Written, item, page
from services.api.errors import WAITING, ApiError, error_responses, not_found
from services.api.freshness import Consistency
from services.domain.tenant import PROPERTY_TYPES, TenantError
from services.limits import SERIES_DAYS_MAX

Days = Annotated[int, Parameter(ge=1, le=SERIES_DAYS_MAX,
                                description="Length of the daily series.")]


@get("/engagement", responses=error_responses(*WAITING),
     sync_to_thread=True, summary="Engagement split and its change",
     description="Count and percentage per status, overall and by subscription status; "
     "each status's change over the last `days` days and its daily series.")
def engagement_route(tenant: FromPath[str], ctx: Ctx, principal: Caller, wanted: Wanted,
                     days: Days = 30) -> Response[Item]:
    with ctx.read("audience", tenant, wanted) as fresh:
        return item(engagement_stats(ctx.views, tenant, days), fresh)


@get("/lists", responses=error_responses(*WAITING),
     sync_to_thread=True, summary="Email lists: members by state, with series")
def lists_route(tenant: FromPath[str], ctx: Ctx, principal: Caller, wanted: Wanted,
                days: Days = 30) -> Response[Item]:
    with ctx.read("audience", tenant, wanted) as fresh:
        return item(list_stats(ctx.views, tenant, days), fresh)


@get("/rfm", responses=error_responses(*WAITING),
     sync_to_thread=True, summary="RFM groups and score grid, with series")
def rfm_route(tenant: FromPath[str], ctx: Ctx, principal: Caller, wanted: Wanted,
              days: Days = 30) -> Response[Item]:
    with ctx.read("audience", tenant, wanted) as fresh:
        return item(rfm_stats(ctx.views, tenant, days), fresh)


@get("/tags", responses=error_responses(*WAITING),
     sync_to_thread=True, summary="Each tag with how many contacts have it")
def tags_route(tenant: FromPath[str], ctx: Ctx, principal: Caller,
               wanted: Wanted) -> Response[Page]:
    with ctx.read("contacts", tenant, wanted) as fresh:
        return page(tag_counts(ctx.views, tenant), fresh)


# ---------------------------------------------------------------------- properties


class PropertyBody(msgspec.Struct, forbid_unknown_fields=True):
    type: str
    options: list[str] | None = None
    label: str = ""


def _definitions(ctx: Ctx, tenant: FromPath[str]) -> list[dict[str, Any]]:
    properties = ctx.tenants.settings(tenant).properties
    return [{"name": d.name, "type": d.type, "options": list(d.options), "label": d.label}
            for d in sorted(properties.values(), key=lambda d: d.name)]


@get("/properties", responses=error_responses(),
     sync_to_thread=True, summary="The tenant's custom property definitions")
def properties_route(tenant: FromPath[str], ctx: Ctx, principal: Caller) -> list[Any]:
    return _definitions(ctx, tenant)


@put("/properties/{name:str}", responses=error_responses(403, 413),
     sync_to_thread=True, summary="Define a custom property",
     description=f"Types: {', '.join(PROPERTY_TYPES)}. Values of a defined property are "
     "checked at ingestion; an event with a wrong type is dead-lettered.")
def define_property_route(tenant: FromPath[str], name: FromPath[str], ctx: Ctx, admin: Caller,
                          data: JSONBody[PropertyBody]) -> Written:
    try:
        d = ctx.tenants.define_property(tenant, name, data.type, data.options, data.label)
    except TenantError as error:
        raise ApiError(400, "invalid_property", str(error), error.field) from None
    return Written({"name": d.name, "type": d.type, "options": list(d.options),
                    "label": d.label}, ctx.store.max_notification_id())


@delete("/properties/{name:str}", responses=error_responses(403),
        sync_to_thread=True, status_code=200,
        summary="Remove a custom property definition")
def remove_property_route(tenant: FromPath[str], name: FromPath[str], ctx: Ctx,
                          admin: Caller) -> Written:
    if name not in ctx.tenants.settings(tenant).properties:
        raise not_found(f"property {name!r} is not defined for tenant {tenant}")
    ctx.tenants.remove_property(tenant, name)
    return Written({"name": name, "removed": True}, ctx.store.max_notification_id())


# -------------------------------------------------------------------------- status


@get("/status", responses=error_responses(),
     sync_to_thread=True, summary="How fresh every read model is")
def status_route(tenant: FromPath[str], ctx: Ctx, principal: Caller) -> dict[str, Any]:
    with ctx.views.reading() as cur:
        failures = ctx.views.failures(cur)
    projections: list[dict[str, Any]] = []
    for name in projection_names():
        with ctx.read(name, tenant, Consistency()) as fresh:
            failing = failures.get(name)
            projections.append({**msgspec.structs.asdict(fresh), "failing": None if (
                failing is None) else {k: failing[k] for k in FAILURE_SHOWN}})
    return {"backend": ctx.settings.backend, "projections": projections}


# What a tenant's caller sees of a read model whose pages keep failing: since when, how
# often, at which position. Not the error, which may name another tenant's contact
# (`ficha status` shows it to the operator).
FAILURE_SHOWN = ("since", "last_at", "attempts", "position")


ROUTES = [engagement_route, lists_route, rfm_route, tags_route, properties_route,
          define_property_route, remove_property_route, status_route]
