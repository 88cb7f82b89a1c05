"""Routes that stream exports: the client list (with its filters) or a segment's members
(now or as of an instant), as CSV or Parquet. Rows stream from the database as they are
sent: memory does not grow with the row count."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from litestar import get
from litestar.openapi.spec import OpenAPIMediaType, OpenAPIResponse, Operation, Schema
from litestar.openapi.spec.enums import OpenAPIFormat, OpenAPIType
from litestar.params import FromPath, Parameter
from litestar.response import Stream

from projections.audience_queries import NotFound
from projections.export import (
    FORMATS,
    MEDIA_TYPES,
    ExportFormat,
    ExportQuery,
    contacts_query,
    export_chunks,
    segment_query,
)
from projections.queries import QueryError
from services.api.contacts import query_error
from services.api.deps import (
    Caller,
    Ctx,
    Filter,
    Wanted,
    headers,
    instant,
    instant_parameter,
)
from services.api.errors import WAITING, ApiError, error_responses, not_found
from services.api.freshness import Freshness


@dataclass
class FileOperation(Operation):
    """An export route's operation in the OpenAPI document: its 200 is a file, CSV or
    Parquet. Litestar, seeing a stream, documents an empty JSON body, and a route's
    ``responses`` or ``media_type`` can give a status one media type only: the route
    names this class as its ``operation_class`` instead."""

    def __post_init__(self) -> None:
        answer = (self.responses or {})["200"]
        assert isinstance(answer, OpenAPIResponse)
        file = Schema(type=OpenAPIType.STRING, format=OpenAPIFormat.BINARY,
                      description="The file: CSV (UTF-8) or Parquet, as `format` asks.")
        answer.content = {media.split(";")[0]: OpenAPIMediaType(schema=file)
                          for media in MEDIA_TYPES.values()}


FILE = "The file, CSV or Parquet as `format` asks."


Format = Annotated[str, Parameter(description="csv or parquet (lower case)",
                                  schema_extra={"enum": list(FORMATS)})]


def export_format(text: str) -> ExportFormat:
    """The format asked for, or 400 listing those there are."""
    for fmt in FORMATS:
        if text == fmt:
            return fmt
    hint = " (formats are written in lower case)" if text.lower() in FORMATS else ""
    raise ApiError(400, "invalid_request", f"format: ficha exports no format {text!r}; "
                   f"ask for {' or '.join(FORMATS)}{hint}", "format")


def _stream(ctx: Ctx, query: ExportQuery, fmt: ExportFormat, name: str,
            fresh: Freshness) -> Stream:
    # The Content-Type is given whole: given as media_type, Litestar would add a second
    # charset to the CSV's (it appends one to every text/ type). The body is the file, so
    # the freshness is in the headers only; the rows are read after it, so are at least
    # that new.
    return Stream(export_chunks(ctx.views, query, fmt),
                  headers={"Content-Type": MEDIA_TYPES[fmt],
                           "Content-Disposition": f'attachment; filename="{name}.{fmt}"',
                           **headers(fresh)})


@get("/exports/contacts", responses=error_responses(*WAITING), operation_id="exportContacts",
     operation_class=FileOperation, response_description=FILE,
     sync_to_thread=True, summary="Export the client list",
     description="Every card field, tags, properties (JSON), consent and counts of the "
     "contacts the filters select, streamed as CSV or Parquet (see docs/export.md). "
     "With `min_position` or `wait_for_event`, the export starts once that write is in "
     "the client list. `Ficha-Position` and `Ficha-Lag` say how fresh the file is.")
def contacts_route(
    tenant: FromPath[str], ctx: Ctx, principal: Caller, wanted: Wanted, client_filter: Filter,
    format: Format = "csv",
) -> Stream:
    fmt = export_format(format)
    with ctx.read("contacts", tenant, wanted) as fresh:
        try:
            query = contacts_query(ctx.views, client_filter)
        except QueryError as error:
            raise query_error(error) from None
    return _stream(ctx, query, fmt, f"{tenant}-contacts", fresh)


@get("/segments/{segment_id:str}/export", responses=error_responses(*WAITING),
     operation_id="exportSegment", operation_class=FileOperation, response_description=FILE,
     sync_to_thread=True,
     summary="Export a segment's members",
     description="Members now, or at `as_of`, with their cards, as CSV or Parquet. "
     "`Ficha-Position` and `Ficha-Lag` say how fresh the file is; `min_position` or "
     "`wait_for_event` make it wait for a write.")
def segment_route(
    tenant: FromPath[str], segment_id: FromPath[str], ctx: Ctx, principal: Caller,
    wanted: Wanted, format: Format = "csv",
    as_of: Annotated[str | None, instant_parameter("Members at this moment")] = None,
) -> Stream:
    fmt = export_format(format)
    moment = instant(as_of, "as_of")
    with ctx.read("audience", tenant, wanted) as fresh:
        try:
            query = segment_query(ctx.views, tenant, segment_id, as_of=moment)
        except NotFound as error:
            raise not_found(str(error)) from None
    return _stream(ctx, query, fmt, f"{tenant}-{segment_id}", fresh)


ROUTES = [contacts_route, segment_route]
