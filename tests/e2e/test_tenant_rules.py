"""Tenant definitions at ingestion (real NATS, both backends): a value of the wrong type
for a defined property, or a contact type the tenant does not use, is dead-lettered with
a reason, and the events around it are applied."""

from __future__ import annotations

import asyncio

from contracts.publisher import publish
from projections.queries import get_card
from services.catalog import TenantCommands
from services.runtime import Runtime, connect_nats
from services.streams import DLQ_STREAM
from tests.e2e.test_pipeline import drain_applied, wait_for
from tests.factories import event_dict


async def test_definitions_are_enforced_at_ingestion(runtime: Runtime) -> None:
    assert runtime.store is not None and runtime.views is not None
    tenants = TenantCommands(runtime.store)
    await asyncio.to_thread(tenants.define_property, "acme", "shoe_size", "number")
    await asyncio.to_thread(tenants.define_property, "acme", "plan", "choice",
                            ["basic", "pro"])
    await asyncio.to_thread(tenants.change, "acme", contact_types=["client", "supplier"])
    nc = await connect_nats(runtime.nats_url)
    js = nc.jetstream()
    try:
        good = [
            event_dict("form_submitted", event_id="g1", email="ana@example.com", form_id="f",
                       properties={"shoe_size": "38", "plan": "pro", "free": "anything"}),
            event_dict("contact_updated", event_id="g2", email="ana@example.com",
                       contact_type="supplier"),
            # Another tenant defined nothing: anything goes there.
            event_dict("form_submitted", event_id="g3", tenant="other", email="bo@example.com",
                       form_id="f", properties={"shoe_size": "big"}),
        ]
        bad = [
            event_dict("form_submitted", event_id="b1", email="ana@example.com", form_id="f",
                       properties={"shoe_size": "big"}),
            event_dict("contact_updated", event_id="b2", email="ana@example.com",
                       properties={"plan": ["pro", "ultra"]}),
            event_dict("contact_updated", event_id="b3", email="ana@example.com",
                       contact_type="alien"),
        ]
        for event in [good[0], bad[0], good[1], bad[1], bad[2], good[2]]:
            await publish(js, event)
        await drain_applied(runtime, 3)

        async def dead() -> int:
            return (await js.stream_info(DLQ_STREAM)).state.messages

        deadline = asyncio.get_running_loop().time() + 20
        while await dead() < 3:
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.05)
        sub = await js.pull_subscribe("ficha.dlq.>", durable=None, stream=DLQ_STREAM)
        msgs = await sub.fetch(3, timeout=5)
        reasons = sorted((m.headers["Ficha-Error"], m.headers["Ficha-Error-Detail"])
                         for m in msgs)
    finally:
        await nc.close()
    assert [code for code, _ in reasons] == [
        "property_type_mismatch", "property_type_mismatch", "unknown_contact_type"]
    details = " | ".join(detail for _, detail in reasons)
    assert "shoe_size is defined as a number; got 'big'" in details
    assert "plan is a choice of basic, pro; got 'ultra'" in details
    assert "'alien' is not one of tenant acme's contact types: client, supplier" in details
    card = await wait_for(lambda: get_card(runtime.views, "acme", "ana@example.com"))
    assert card["properties"] == {"shoe_size": "38", "plan": "pro", "free": "anything"}
    assert card["contact_type"] == "supplier"
    assert get_card(runtime.views, "other", "bo@example.com")["properties"] == {
        "shoe_size": "big"}
