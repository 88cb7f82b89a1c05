"""Routes of the client list: filter, search, sort, page; a contact's card and timeline."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from litestar import Response, get
from litestar.params import FromPath, FromQuery, Parameter

from projections.contacts import CONSENT_CHANNELS
from projections.queries import (
    SORT_KEYS,
    ContactFilter,
    QueryError,
    count_contacts,
    get_card,
    list_contacts,
    timeline_page,
)
from services.api.deps import Caller, Ctx, Item, Page, Wanted, item, page
from services.api.errors import ApiError, not_found

PROJECTION = "contacts"
_SORTS = ", ".join(sorted(SORT_KEYS))
Channel = Annotated[str | None, Parameter(
    description=f"A consent channel: {', '.join(CONSENT_CHANNELS)}.")]


def query_error(error: QueryError, field: str | None = None) -> ApiError:
    return ApiError(400, "invalid_request", str(error), field)


def _aware(value: datetime | None, field: str) -> datetime | None:
    if value is not None and value.tzinfo is None:
        raise ApiError(400, "invalid_request",
                       f"{field} needs a UTC offset, e.g. 2026-11-01T00:00:00Z", field)
    return value


@get("/contacts", sync_to_thread=True, summary="The client list",
     description="Filter, search (a prefix of the email, first or last name), sort and "
     "page through a tenant's contacts. Pages are keyset cursors: pass `next_cursor` back "
     "as `cursor` with the same filters and sort.")
def list_route(
    tenant: FromPath[str], ctx: Ctx, principal: Caller, wanted: Wanted,
    language: Annotated[str | None, Parameter(description="e.g. es, or es-MX")] = None,
    country: Annotated[str | None, Parameter(description="ISO 3166-1 alpha-2")] = None,
    tag: FromQuery[str | None] = None,
    consent: Channel = None,
    no_consent: Channel = None,
    first_seen_from: FromQuery[datetime | None] = None,
    first_seen_to: FromQuery[datetime | None] = None,
    q: Annotated[str | None, Parameter(
        max_length=200, description="Prefix of the email, first name or last name.")] = None,
    sort: Annotated[str, Parameter(
        description=f"One of {_SORTS}; a leading - sorts descending.")] = "-first_seen_at",
    limit: Annotated[int, Parameter(ge=1, le=1000)] = 50,
    cursor: FromQuery[str | None] = None,
    with_total: Annotated[bool, Parameter(
        description="Also count every contact that matches (slower).")] = False,
) -> Response[Page]:
    with ctx.read(PROJECTION, tenant, wanted) as fresh:
        f = ContactFilter(
            tenant=tenant, language=language, country=country, tag=tag, consent=consent,
            no_consent=no_consent, first_seen_from=_aware(first_seen_from, "first_seen_from"),
            first_seen_to=_aware(first_seen_to, "first_seen_to"), search=q,
        )
        try:
            rows, next_cursor = list_contacts(ctx.views, f, limit=limit, cursor=cursor, sort=sort)
            total = count_contacts(ctx.views, f) if with_total else None
        except QueryError as error:
            raise query_error(error) from None
        return page(rows, fresh, next_cursor, total)


@get("/contacts/{ref:str}", sync_to_thread=True, summary="A contact's card",
     description="`ref` is the email or the contact id. The card holds every field, tags, "
     "properties, consent, lists and the newest `timeline_limit` timeline entries.")
def card_route(
    tenant: FromPath[str], ref: FromPath[str], ctx: Ctx, principal: Caller, wanted: Wanted,
    timeline_limit: Annotated[int, Parameter(ge=0, le=1000)] = 200,
) -> Response[Item]:
    with ctx.read(PROJECTION, tenant, wanted) as fresh:
        card = get_card(ctx.views, tenant, ref, timeline_limit=timeline_limit)
        if card is None:
            raise not_found(f"tenant {tenant} has no contact {ref}")
        return item(card, fresh)


@get("/contacts/{ref:str}/timeline", sync_to_thread=True, summary="A contact's timeline",
     description="Newest first, in pages: `next_cursor` gives the page of older entries "
     "(each page oldest first).")
def timeline_route(
    tenant: FromPath[str], ref: FromPath[str], ctx: Ctx, principal: Caller, wanted: Wanted,
    limit: Annotated[int, Parameter(ge=1, le=1000)] = 100,
    cursor: FromQuery[str | None] = None,
) -> Response[Page]:
    with ctx.read(PROJECTION, tenant, wanted) as fresh:
        card = get_card(ctx.views, tenant, ref, timeline_limit=0)
        if card is None:
            raise not_found(f"tenant {tenant} has no contact {ref}")
        try:
            entries, older = timeline_page(ctx.views, tenant, card["contact_id"], limit=limit,
                                           before=cursor)
        except QueryError as error:
            raise query_error(error, "cursor") from None
        return page(entries, fresh, older)


ROUTES = [list_route, card_route, timeline_route]
