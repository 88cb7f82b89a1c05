"""Routes that stream exports: the client list (with its filters) or a segment's members
(now or as of an instant), as CSV or Parquet. Rows stream from the database as they are
sent: memory does not grow with the row count."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from litestar import get
from litestar.params import FromPath, FromQuery, Parameter
from litestar.response import Stream

from projections.audience_queries import NotFound
from projections.contacts import CONSENT_CHANNELS
from projections.export import (
    MEDIA_TYPES,
    ExportFormat,
    ExportQuery,
    contacts_query,
    export_chunks,
    segment_query,
)
from projections.queries import ContactFilter, QueryError
from services.api.deps import Caller, Ctx
from services.api.errors import ApiError, not_found

Format = Annotated[Literal["csv", "parquet"], Parameter(description="csv or parquet")]
Channel = Annotated[str | None, Parameter(
    description=f"A consent channel: {', '.join(CONSENT_CHANNELS)}.")]


def _stream(ctx: Ctx, query: ExportQuery, fmt: ExportFormat, name: str) -> Stream:
    return Stream(export_chunks(ctx.views, query, fmt),
                  media_type=MEDIA_TYPES[fmt],
                  headers={"Content-Disposition": f'attachment; filename="{name}.{fmt}"'})


def _aware(value: datetime | None, field: str) -> datetime | None:
    if value is not None and value.tzinfo is None:
        raise ApiError(400, "invalid_request", f"{field} needs a UTC offset", field)
    return value


@get("/exports/contacts", sync_to_thread=True, summary="Export the client list",
     description="Every card field, tags, properties (JSON), consent and counts of the "
     "contacts the filters select, streamed as CSV or Parquet (see docs/export.md).")
def contacts_route(
    tenant: FromPath[str], ctx: Ctx, principal: Caller, format: Format = "csv",
    language: FromQuery[str | None] = None, country: FromQuery[str | None] = None,
    tag: FromQuery[str | None] = None, consent: Channel = None, no_consent: Channel = None,
    first_seen_from: FromQuery[datetime | None] = None,
    first_seen_to: FromQuery[datetime | None] = None,
    q: Annotated[str | None, Parameter(max_length=200)] = None,
) -> Stream:
    f = ContactFilter(tenant=tenant, language=language, country=country, tag=tag,
                      consent=consent, no_consent=no_consent,
                      first_seen_from=_aware(first_seen_from, "first_seen_from"),
                      first_seen_to=_aware(first_seen_to, "first_seen_to"), search=q)
    try:
        query = contacts_query(ctx.views, f)
    except QueryError as error:
        raise ApiError(400, "invalid_request", str(error)) from None
    return _stream(ctx, query, format, f"{tenant}-contacts")


@get("/segments/{segment_id:str}/export", sync_to_thread=True,
     summary="Export a segment's members",
     description="Members now, or at `as_of`, with their cards, as CSV or Parquet.")
def segment_route(
    tenant: FromPath[str], segment_id: FromPath[str], ctx: Ctx, principal: Caller,
    format: Format = "csv", as_of: FromQuery[datetime | None] = None,
) -> Stream:
    try:
        query = segment_query(ctx.views, tenant, segment_id, as_of=_aware(as_of, "as_of"))
    except NotFound as error:
        raise not_found(str(error)) from None
    return _stream(ctx, query, format, f"{tenant}-{segment_id}")


ROUTES = [contacts_route, segment_route]
