"""Routes of the client list: filter, search, sort, page; a contact's card and timeline."""

from __future__ import annotations

from typing import Annotated

from litestar import Response, get
from litestar.params import FromPath, FromQuery, Parameter

from projections.queries import (
    SORT_KEYS,
    QueryError,
    card,
    count_contacts,
    list_page,
    timeline_page,
)
from services.api.answers import CardItem, ContactsPage, TimelinePage
from services.api.deps import Caller, Ctx, Filter, Wanted, item, page
from services.api.errors import WAITING, ApiError, error_responses, not_found
from services.limits import PAGE_LIMIT_MAX

PROJECTION = "contacts"
_SORTS = ", ".join(sorted(SORT_KEYS))


def query_error(error: QueryError) -> ApiError:
    """A filter, sort or cursor the query refused, naming the parameter it blamed."""
    return ApiError(400, "invalid_request", str(error), error.field)


@get("/contacts", responses=error_responses(*WAITING), sync_to_thread=True,
     summary="The client list",
     description="Filter, search (a prefix of the email, first or last name), sort and "
     "page through a tenant's contacts. Pages are keyset cursors: pass `next_cursor` back "
     "as `cursor` with the same filters and sort.")
def list_route(
    tenant: FromPath[str], ctx: Ctx, principal: Caller, wanted: Wanted,
    client_filter: Filter,
    sort: Annotated[str, Parameter(
        description=f"One of {_SORTS}; a leading - sorts descending.")] = "-first_seen_at",
    limit: Annotated[int, Parameter(ge=1, le=PAGE_LIMIT_MAX)] = 50,
    cursor: FromQuery[str | None] = None,
    with_total: Annotated[bool, Parameter(
        description="Also count every contact that matches (slower).")] = False,
) -> Response[ContactsPage]:
    with ctx.read(PROJECTION, tenant, wanted) as fresh:
        f = client_filter
        try:
            rows, next_cursor = list_page(ctx.views, f, limit=limit, cursor=cursor, sort=sort)
            total = count_contacts(ctx.views, f) if with_total else None
        except QueryError as error:
            raise query_error(error) from None
        return page(rows, fresh, next_cursor, total, ContactsPage)


@get("/contacts/{ref:str}", responses=error_responses(*WAITING),
     sync_to_thread=True, summary="A contact's card",
     description="`ref` is the email or the contact id. The card holds every field, tags, "
     "properties, consent, lists and the newest `timeline_limit` timeline entries.")
def card_route(
    tenant: FromPath[str], ref: FromPath[str], ctx: Ctx, principal: Caller, wanted: Wanted,
    timeline_limit: Annotated[int, Parameter(ge=0, le=1000)] = 200,
) -> Response[CardItem]:
    with ctx.read(PROJECTION, tenant, wanted) as fresh:
        found = card(ctx.views, tenant, ref, timeline_limit=timeline_limit)
        if found is None:
            raise not_found(f"tenant {tenant} has no contact {ref}")
        return item(found, fresh, CardItem)


@get("/contacts/{ref:str}/timeline", responses=error_responses(*WAITING),
     sync_to_thread=True, summary="A contact's timeline",
     description="Newest first, in pages: `next_cursor` gives the page of older entries "
     "(each page oldest first).")
def timeline_route(
    tenant: FromPath[str], ref: FromPath[str], ctx: Ctx, principal: Caller, wanted: Wanted,
    limit: Annotated[int, Parameter(ge=1, le=PAGE_LIMIT_MAX)] = 100,
    cursor: FromQuery[str | None] = None,
) -> Response[TimelinePage]:
    with ctx.read(PROJECTION, tenant, wanted) as fresh:
        found = card(ctx.views, tenant, ref, timeline_limit=0)
        if found is None:
            raise not_found(f"tenant {tenant} has no contact {ref}")
        try:
            entries, older = timeline_page(ctx.views, tenant, found["contact_id"], limit=limit,
                                           before=cursor)
        except QueryError as error:
            raise query_error(error) from None
        return page(entries, fresh, older, shape=TimelinePage)


ROUTES = [list_route, card_route, timeline_route]
