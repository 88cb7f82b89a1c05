"""What `ficha status` reports: partitions, projections, dead letters, from live sources."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from services.config import Settings

if TYPE_CHECKING:
    from services.store.contact_store import ContactStore


async def collect_status(settings: Settings, store: ContactStore) -> dict[str, Any]:
    from projections.db import ViewDatabase
    from projections.registry import all_projections
    from services.runtime import resolve_nats_url, tracking_name
    from services.streams import DLQ_STREAM, consumer_name

    head = await asyncio.to_thread(store.max_notification_id)
    received = await asyncio.to_thread(store.received_count)
    pending_erasures = len(await asyncio.to_thread(store.erasures, pending=True))
    partitions: list[dict[str, Any]] = []
    for k in range(settings.partitions):
        position = await asyncio.to_thread(store.tracked_position, tracking_name(k))
        partitions.append({"partition": k, "position": position})
    db = ViewDatabase(settings)
    projections = []
    try:
        db.ensure_tracking_table()
        with db.reading() as cur:
            failures = db.failures(cur)
            for projection in all_projections():
                name = projection.name
                position = db.position(cur, name)
                projections.append({
                    "name": name, "position": position, "head": head, "lag": head - position,
                    "version": db.layout_version(cur, name),
                    # null, or since when its pages fail, how often, at which position, why
                    "failing": failures.get(name),
                })
    finally:
        db.close()

    bus: dict[str, Any] = {"url": resolve_nats_url(settings)}
    if not bus["url"]:
        bus["error"] = (f"no NATS server is known: `ficha up` is not running on "
                        f"{settings.data_dir}, and FICHA_NATS_URL is not set")
    else:
        from services.runtime import connect_nats, unreachable_text

        try:
            nc = await connect_nats(bus["url"], name="ficha-status", attempts=1,
                                    reconnect_forever=False)
        except Exception as error:  # noqa: BLE001 - reported, not raised
            bus["error"] = unreachable_text(settings, bus["url"], error)
        else:
            try:
                js = nc.jetstream()
                for p in partitions:
                    try:
                        info = await js.consumer_info("FICHA_IN", consumer_name(p["partition"]))
                    except Exception:  # noqa: BLE001
                        continue
                    p["pending"] = info.num_pending
                    p["ack_pending"] = info.num_ack_pending
                try:
                    dlq = await js.stream_info(DLQ_STREAM)
                    bus["dead_letters"] = dlq.state.messages
                except Exception:  # noqa: BLE001
                    bus["dead_letters"] = 0
            finally:
                await nc.close()
    return {
        "backend": settings.backend,
        "bus": bus,
        "partitions": partitions,
        "projections": projections,
        "received_events": received,
        "pending_erasures": pending_erasures,
    }
