"""Routes of a tenant's dead letters: what was refused and why; re-drive and purge."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from litestar import get, post
from litestar.params import FromPath, JSONBody, Parameter
from nats.js.errors import NotFoundError

from services.api.deps import Caller, Ctx
from services.api.errors import ApiError, error_responses, not_found
from services.dlq import DeadLetter, letter_from, purge, read_tenant, redrive
from services.streams import DLQ_STREAM

MAX_SEQ = 2**64 - 1  # a stream's sequences are unsigned 64-bit numbers, from 1


class Choice(msgspec.Struct, forbid_unknown_fields=True):
    """Which of the tenant's dead letters: given sequences, or every one with a code."""

    seqs: list[int] | None = None
    code: str | None = None


class PurgeChoice(Choice, forbid_unknown_fields=True):
    confirm: bool = False


async def _chosen(ctx: Any, tenant: str, choice: Choice) -> list[DeadLetter]:
    if not choice.seqs and not choice.code:
        raise ApiError(400, "invalid_request",
                       "say which dead letters: seqs (a list) or code (an error code)", "seqs")
    if choice.seqs and choice.code:
        raise ApiError(400, "invalid_request",
                       "say which dead letters by seqs or by code, not both", "code")
    letters, _, _ = await read_tenant(await ctx.bus.js(), tenant, recent=100_000)
    wanted = set(choice.seqs or [])
    return [d for d in letters
            if (not wanted or d.seq in wanted) and (choice.code is None or d.code == choice.code)]


@get("/dead-letters", responses=error_responses(503),
     summary="The tenant's dead letters: counts by code and the newest",
     description="Events refused at ingestion, with the reason (never the body here).")
async def list_route(
    tenant: FromPath[str], ctx: Ctx, principal: Caller,
    recent: Annotated[int, Parameter(ge=0, le=200)] = 20,
) -> dict[str, Any]:
    letters, codes, truncated = await read_tenant(await ctx.bus.js(), tenant, recent=recent)
    return {
        "total": sum(codes.values()),
        "by_code": [{"code": c, "count": n} for c, n in codes.most_common()],
        "recent": [d.to_dict() for d in letters],
        "truncated": truncated,
    }


@get("/dead-letters/{seq:int}", responses=error_responses(403, 503),
     summary="One dead letter with its original body (admin)")
async def show_route(tenant: FromPath[str], seq: FromPath[int], ctx: Ctx,
                     admin: Caller) -> dict[str, Any]:
    missing = not_found(f"tenant {tenant} has no dead letter {seq}")
    if not 1 <= seq <= MAX_SEQ:
        raise missing  # no sequence of a stream: NATS would refuse it as a bad request
    js = await ctx.bus.js()
    try:
        msg = await js.get_msg(DLQ_STREAM, seq=seq)
    except NotFoundError:
        raise missing from None
    letter = letter_from(seq, msg.subject or "", msg.headers or {}, msg.data or b"")
    if letter.tenant != tenant:
        raise missing
    return letter.to_dict(with_body=True)


@post("/dead-letters/redrive", responses=error_responses(403, 413, 503),
      status_code=200, summary="Re-drive dead letters (admin)",
      description="Each goes through the normal path again (and is de-duplicated); one "
      "still wrong comes back with a fresh reason.")
async def redrive_route(tenant: FromPath[str], ctx: Ctx, admin: Caller,
                        data: JSONBody[Choice]) -> dict[str, int]:
    letters = await _chosen(ctx, tenant, data)
    return {"redriven": await redrive(await ctx.bus.js(), letters)}


@post("/dead-letters/purge", responses=error_responses(403, 413, 503),
      status_code=200, summary="Delete dead letters (admin)",
      description="For good: send `confirm: true`.")
async def purge_route(tenant: FromPath[str], ctx: Ctx, admin: Caller,
                      data: JSONBody[PurgeChoice]) -> dict[str, int]:
    if not data.confirm:
        raise ApiError(400, "confirmation_required",
                       "purging deletes dead letters for good: send confirm: true", "confirm")
    letters = await _chosen(ctx, tenant, data)
    return {"purged": await purge(await ctx.bus.js(), letters)}


ROUTES = [list_route, show_route, redrive_route, purge_route]
