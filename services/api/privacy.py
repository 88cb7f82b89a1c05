"""Routes of a person's rights: erase a contact (crypto-shredding, see docs/privacy.md),
follow the erasure's receipt, and export everything ficha holds about them."""

from __future__ import annotations

import asyncio
from typing import Any

from litestar import get, post
from litestar.params import FromPath

from projections.queries import get_card, is_contact_id
from services.api.deps import ApiContext, Caller, Ctx
from services.api.errors import error_responses, not_found
from services.domain.identity import ContactIdentity, normalise_email
from services.privacy import (
    NotHeld,
    erasure_receipt,
    erasure_receipts,
    request_erasure,
    subject_access,
)


async def _held_email(ctx: ApiContext, tenant: str, ref: str) -> str:
    """The email of a contact ficha holds (by email or contact id), or 404."""
    missing = not_found(f"tenant {tenant} has no contact {ref}")
    if is_contact_id(ref):
        card = await asyncio.to_thread(get_card, ctx.views, tenant, ref, timeline_limit=0)
        if card is None:
            raise missing
        return str(card["email"])
    email = normalise_email(ref)
    contact_id = ContactIdentity(ctx.settings.id_key).contact_id(tenant, email)
    events = await asyncio.to_thread(ctx.store.select_events, contact_id)
    contact: Any = None
    for event in events:
        contact = event.mutate(contact)
    if contact is None or contact.is_erased:
        raise missing
    return email


@post("/contacts/{ref:str}/erasure", responses=error_responses(403, 503),
      status_code=202, summary="Erase a contact (admin)",
      description="Publishes contact_erasure_requested through the bus like any producer; "
      "the person's data becomes unrecoverable as ingestion and every read model apply it. "
      "Follow it at /erasures/{event_id}.")
async def erase_route(tenant: FromPath[str], ref: FromPath[str], ctx: Ctx,
                      admin: Caller) -> dict[str, str]:
    email = await _held_email(ctx, tenant, ref)
    event_id = await request_erasure(await ctx.bus.js(), tenant, email, source="api")
    return {"event_id": event_id, "status": "requested",
            "receipt": f"/v1/tenants/{tenant}/erasures/{event_id}"}


@get("/erasures", responses=error_responses(403),
     sync_to_thread=True, summary="The tenant's erasure receipts (admin)",
     description="When each erasure was requested and completed, which read models "
     "confirmed it and which stream messages were deleted; never personal data.")
def receipts_route(tenant: FromPath[str], ctx: Ctx, admin: Caller) -> list[dict[str, Any]]:
    return erasure_receipts(ctx.store, ctx.views, tenant=tenant)


@get("/erasures/{reference:str}", responses=error_responses(403),
     sync_to_thread=True, summary="One erasure receipt (admin)",
     description="By the request's event id or the contact id (its latest erasure).")
def receipt_route(tenant: FromPath[str], reference: FromPath[str], ctx: Ctx,
                  admin: Caller) -> dict[str, Any]:
    receipt = erasure_receipt(ctx.store, ctx.views, reference)
    if receipt is None or receipt.get("tenant") != tenant:
        raise not_found(f"tenant {tenant} has no erasure {reference}")
    return receipt


@get("/contacts/{ref:str}/access", responses=error_responses(403, 503),
     summary="Everything ficha holds about a person (admin)",
     description="The subject-access export: card, timeline, consent ledger, segments and "
     "their history, the decrypted event stream, dead letters naming them, erasures.")
async def access_route(tenant: FromPath[str], ref: FromPath[str], ctx: Ctx,
                       admin: Caller) -> dict[str, Any]:
    email = ref
    if is_contact_id(ref):
        email = await _held_email(ctx, tenant, ref)
    identity = ContactIdentity(ctx.settings.id_key)
    try:
        return await subject_access(ctx.store, ctx.views, identity, tenant, email,
                                    await ctx.bus.js())
    except NotHeld:
        raise not_found(f"tenant {tenant} has no contact {ref}") from None


ROUTES = [erase_route, receipts_route, receipt_route, access_route]
