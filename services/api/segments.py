"""Routes of segments: definitions (create, edit, delete), preview, members, and why."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Annotated, Any

import msgspec
from litestar import Response, delete, get, post, put
from litestar.params import FromPath, FromQuery, JSONBody, Parameter

from projections.audience_queries import (
    NotFound,
    count_members,
    explain,
    get_segment,
    list_segments,
    preview,
    segment_members,
    segment_sizes,
)
from projections.queries import QueryError, get_card, is_contact_id, member_cursor
from services.api.answers import MembersPage, SegmentItem, SegmentsPage
from services.api.contacts import query_error
from services.api.deps import (
    Caller,
    Ctx,
    Item,
    Wanted,
    Written,
    instant,
    instant_parameter,
    item,
    page,
)
from services.api.errors import WAITING, ApiError, error_responses, not_found
from services.domain.rules import RuleError
from services.domain.segments import InvalidSegment, SegmentError
from services.limits import PAGE_LIMIT_MAX, PREVIEW_SAMPLE_MAX, SERIES_DAYS_MAX

PROJECTION = "audience"


class SegmentBody(msgspec.Struct, forbid_unknown_fields=True):
    """A segment's definition: its rule (see docs/segments.md and
    contracts/schemas/segment-rule.json) and an optional display name."""

    rule: Any
    name: str | None = None


class NewSegment(msgspec.Struct, forbid_unknown_fields=True):
    """A new segment: its id (letters, digits, - and _), its rule and an optional
    display name (its id if none)."""

    id: str
    rule: Any
    name: str | None = None


class PreviewBody(msgspec.Struct, forbid_unknown_fields=True):
    rule: Any
    sample: int = 5


@contextmanager
def definition_errors() -> Iterator[None]:
    """A definition refused, as the API answers it: a bad rule, id or name (400), or a
    conflict with what exists (409)."""
    try:
        yield
    except RuleError as error:
        raise ApiError(400, "invalid_rule", f"the rule is not valid: {error}", "rule") from None
    except InvalidSegment as error:
        raise ApiError(400, "invalid_request", f"{error.field}: {error}", error.field) from None
    except SegmentError as error:
        raise ApiError(409, "segment_conflict", str(error)) from None


def _write(ctx: Ctx, tenant: FromPath[str], segment_id: str, body: SegmentBody | NewSegment,
           must_exist: bool) -> Written:
    catalog = ctx.segments.catalog(tenant)
    existing = None if catalog is None else catalog.live().get(segment_id)
    if must_exist and existing is None:
        raise not_found(f"segment {segment_id!r} does not exist in tenant {tenant}")
    if not must_exist and existing is not None:
        raise ApiError(409, "already_exists",
                       f"segment {segment_id!r} already exists (version {existing.version}); "
                       "change it with PUT", "id")
    title = body.name or (existing.name if existing else segment_id)
    with definition_errors():
        definition = ctx.segments.define(tenant, segment_id, title, body.rule)
    return Written({"segment_id": definition.segment_id, "name": definition.name,
                    "version": definition.version}, ctx.store.max_notification_id())


@get("/segments", responses=error_responses(*WAITING),
     sync_to_thread=True, summary="The tenant's segments, with member counts")
def list_route(tenant: FromPath[str], ctx: Ctx, principal: Caller, wanted: Wanted,
               include_deleted: FromQuery[bool] = False) -> Response[SegmentsPage]:
    with ctx.read(PROJECTION, tenant, wanted) as fresh:
        return page(list_segments(ctx.views, tenant, include_deleted), fresh,
                    shape=SegmentsPage)


@post("/segments", responses=error_responses(403, 409, 413),
      sync_to_thread=True, status_code=201, summary="Create a segment",
      description="Its membership is computed as the audience read model reaches the "
      "change: read members with `min_position` set to the answer's `position`.")
def create_route(tenant: FromPath[str], ctx: Ctx, admin: Caller,
                 data: JSONBody[NewSegment]) -> Written:
    if not data.id:
        raise ApiError(400, "invalid_request", "id: a new segment needs an id", "id")
    return _write(ctx, tenant, data.id, data, must_exist=False)


@get("/segments/{segment_id:str}", responses=error_responses(*WAITING),
     sync_to_thread=True, summary="One segment")
def get_route(tenant: FromPath[str], segment_id: FromPath[str], ctx: Ctx, principal: Caller,
              wanted: Wanted) -> Response[SegmentItem]:
    with ctx.read(PROJECTION, tenant, wanted) as fresh:
        try:
            return item(get_segment(ctx.views, tenant, segment_id), fresh, SegmentItem)
        except NotFound as error:
            raise not_found(str(error)) from None


@put("/segments/{segment_id:str}", responses=error_responses(403, 409, 413),
     sync_to_thread=True, summary="Edit a segment",
     description="A new version of its rule (and name). Preview it first.")
def edit_route(tenant: FromPath[str], segment_id: FromPath[str], ctx: Ctx, admin: Caller,
               data: JSONBody[SegmentBody]) -> Written:
    return _write(ctx, tenant, segment_id, data, must_exist=True)


@delete("/segments/{segment_id:str}", responses=error_responses(403, 409),
        sync_to_thread=True, status_code=200,
        summary="Delete a segment", description="Every member exits; its history stays.")
def delete_route(tenant: FromPath[str], segment_id: FromPath[str], ctx: Ctx,
                 admin: Caller) -> Written:
    catalog = ctx.segments.catalog(tenant)
    if catalog is None or segment_id not in catalog.live():
        raise not_found(f"segment {segment_id!r} does not exist in tenant {tenant}")
    with definition_errors():
        definition = ctx.segments.delete(tenant, segment_id)
    return Written({"segment_id": segment_id, "version": definition.version, "deleted": True},
                   ctx.store.max_notification_id())


@post("/segments/{segment_id:str}/preview", responses=error_responses(413, *WAITING),
      sync_to_thread=True, status_code=200,
      summary="What a rule would change",
      description="How many contacts would enter, leave and stay if `segment_id` had this "
      "rule, with samples; nothing is changed. The segment need not exist yet.")
def preview_route(tenant: FromPath[str], segment_id: FromPath[str], ctx: Ctx, principal: Caller,
                  wanted: Wanted, data: JSONBody[PreviewBody]) -> Response[Item]:
    if not 0 <= data.sample <= PREVIEW_SAMPLE_MAX:
        raise ApiError(400, "invalid_request", f"sample: between 0 and {PREVIEW_SAMPLE_MAX}",
                       "sample")
    with definition_errors():
        rule = ctx.segments.check(tenant, segment_id, data.rule)  # as create and edit do
    with ctx.read(PROJECTION, tenant, wanted) as fresh:
        result = preview(ctx.views, tenant, segment_id, rule, datetime.now(UTC), data.sample)
        return item(result.to_dict(), fresh)


@get("/segments/{segment_id:str}/members", responses=error_responses(*WAITING), sync_to_thread=True,
     summary="A segment's members, now or at a past moment",
     description="Ordered by contact id; `next_cursor` gives the next page.")
def members_route(
    tenant: FromPath[str], segment_id: FromPath[str], ctx: Ctx, principal: Caller, wanted: Wanted,
    as_of: Annotated[str | None, instant_parameter("Who was a member at this moment")] = None,
    limit: Annotated[int, Parameter(ge=1, le=PAGE_LIMIT_MAX)] = 100,
    cursor: FromQuery[str | None] = None,
    with_total: FromQuery[bool] = False,
) -> Response[MembersPage]:
    moment = instant(as_of, "as_of")
    try:
        after = member_cursor(cursor)
    except QueryError as error:
        raise query_error(error) from None
    with ctx.read(PROJECTION, tenant, wanted) as fresh:
        try:
            rows = segment_members(ctx.views, tenant, segment_id, as_of=moment, limit=limit + 1,
                                   after=after)
        except NotFound as error:
            raise not_found(str(error)) from None
        next_cursor = None
        if len(rows) > limit:
            rows = rows[:limit]
            next_cursor = rows[-1]["contact_id"]
        total = count_members(ctx.views, tenant, segment_id, moment) if with_total else None
        return page(rows, fresh, next_cursor, total, MembersPage)


@get("/contacts/{ref:str}/segments", responses=error_responses(*WAITING), sync_to_thread=True,
     summary="A contact's segments, and why",
     description="For each segment: member or not, every clause of its rule with its "
     "value for this contact, and the membership history with what caused each change.")
def why_route(tenant: FromPath[str], ref: FromPath[str], ctx: Ctx, principal: Caller,
              wanted: Wanted, segment: FromQuery[str | None] = None) -> Response[Item]:
    with ctx.read(PROJECTION, tenant, wanted) as fresh:
        email = ref
        if is_contact_id(ref):
            card = get_card(ctx.views, tenant, ref, timeline_limit=0)
            if card is None:
                raise not_found(f"tenant {tenant} has no contact {ref}")
            email = card["email"]
        try:
            return item(explain(ctx.views, tenant, email, segment), fresh)
        except NotFound as error:
            raise not_found(str(error)) from None


@get("/segment-sizes", responses=error_responses(*WAITING),
     sync_to_thread=True, summary="Segment sizes over time",
     description="Each live segment's member count at the end of each of the last `days` "
     "days (ficha's clock) and now.")
def sizes_route(tenant: FromPath[str], ctx: Ctx, principal: Caller, wanted: Wanted,
                days: Annotated[int, Parameter(ge=1, le=SERIES_DAYS_MAX)] = 30) -> Response[Item]:
    with ctx.read(PROJECTION, tenant, wanted) as fresh:
        return item(segment_sizes(ctx.views, tenant, days), fresh)


ROUTES = [sizes_route, list_route, create_route, get_route, edit_route, delete_route, preview_route,
          members_route, why_route]
