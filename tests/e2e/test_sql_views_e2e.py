"""The analytics views behind a running ficha: events published on NATS for two tenants
show in the views, with each tenant's rows under its own name (both backends)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from contracts.publisher import publish
from projections.sql_catalog import PREFIX
from services.runtime import Runtime, connect_nats
from tests.factories import event_dict


async def wait_for(predicate: Callable[[], Any], timeout: float = 30.0) -> Any:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = await asyncio.to_thread(predicate)
        if value:
            return value
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


async def test_published_events_reach_the_analytics_views(runtime: Runtime) -> None:
    assert runtime.views is not None and runtime.store is not None
    nc = await connect_nats(runtime.nats_url)
    js = nc.jetstream()
    try:
        # Ids unique across tenants: JetStream's 100 ms de-dup window is stream-wide.
        for tenant, people in (("acme", 3), ("globex", 2)):
            for i in range(people):
                email = f"p{i}@example.com"
                await publish(js, event_dict(
                    "form_submitted", tenant=tenant, event_id=f"{tenant}-f{i}", email=email,
                    occurred_at="2026-11-02T10:15:00+01:00", form_id="contact",
                    properties={"size": i}, tags=[f"T{i}"]))
                await publish(js, event_dict(
                    "list_subscribed", tenant=tenant, event_id=f"{tenant}-l{i}", email=email,
                    occurred_at="2026-11-02T10:16:00+01:00", list_id="news"))
    finally:
        await nc.close()
    await wait_for(lambda: runtime.store.received_count() >= 10)  # type: ignore[union-attr]
    await runtime.wait_until_projected(30)

    def per_tenant(view: str) -> dict[str, int]:
        assert runtime.views is not None
        with runtime.views.reading() as cur:
            cur.execute(f"SELECT tenant, COUNT(*) AS n FROM {PREFIX}{view} GROUP BY tenant")
            return {r["tenant"]: int(r["n"]) for r in cur.fetchall()}

    assert per_tenant("contacts") == {"acme": 3, "globex": 2}
    assert per_tenant("contact_properties") == {"acme": 3, "globex": 2}
    assert per_tenant("tags") == {"acme": 3, "globex": 2}
    assert per_tenant("timeline") == {"acme": 6, "globex": 4}
    assert per_tenant("list_members") == {"acme": 3, "globex": 2}
    with runtime.views.reading() as cur:
        cur.execute(f"SELECT tenant, list_id, state, contacts FROM {PREFIX}list_daily "
                    "WHERE valid_until IS NULL ORDER BY tenant")
        assert [tuple(r.values()) for r in cur.fetchall()] == [
            ("acme", "news", "subscribed", 3), ("globex", "news", "subscribed", 2)]
