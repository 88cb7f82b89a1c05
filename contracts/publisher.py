"""A small publisher for Python producers: validates, sets Nats-Msg-Id, publishes.

    nc = await nats.connect(url); js = nc.jetstream()
    await publish(js, {"event_id": "web-1", "type": "form_submitted", ...})
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable, Mapping
from typing import Any

import msgspec
from nats.js import JetStreamContext

from contracts.decode import Rejection, decode
from contracts.events import InboundEvent


class RejectedEvent(ValueError):
    """The event would be dead-lettered by ficha; the message says why."""

    def __init__(self, rejection: Rejection) -> None:
        super().__init__(f"{rejection.code}: {rejection.detail}")
        self.rejection = rejection


def subject_for(tenant: str, type_: str) -> str:
    return f"ficha.in.{tenant}.{type_}"


def encode(event: InboundEvent | Mapping[str, Any]) -> bytes:
    return msgspec.json.encode(event)


def prepare(event: InboundEvent | Mapping[str, Any]) -> tuple[str, bytes, dict[str, str]]:
    """(subject, body, headers) for an event, refusing what ficha would reject."""
    body = encode(event)
    if isinstance(event, InboundEvent):
        tenant, kind, event_id = event.tenant, event.type, event.event_id
    else:
        tenant, kind = str(event.get("tenant", "_")), str(event.get("type", "_"))
        event_id = str(event.get("event_id", ""))
    subject = subject_for(tenant, kind)
    result = decode(subject, body)
    if isinstance(result, Rejection):
        raise RejectedEvent(result)
    return subject, body, {"Nats-Msg-Id": event_id}


async def publish(
    js: JetStreamContext, event: InboundEvent | Mapping[str, Any], *, timeout: float = 5.0
) -> Any:
    """Publish one event and wait for JetStream's acknowledgement."""
    subject, body, headers = prepare(event)
    return await js.publish(subject, body, headers=headers, timeout=timeout)


async def publish_many(
    js: JetStreamContext,
    events: Iterable[InboundEvent | Mapping[str, Any]],
    *,
    window: int = 1000,
    rate: float = 0.0,
) -> AsyncIterator[int]:
    """Publish with up to `window` unacknowledged publishes in flight.

    Yields the running count of acknowledged events after each window (for progress);
    `rate` > 0 paces publishing to that many events per second.
    """
    loop = asyncio.get_running_loop()
    start = loop.time()
    pending: list[asyncio.Future[Any]] = []
    acked = 0
    for sent, event in enumerate(events):
        subject, body, headers = prepare(event)
        if rate > 0:
            delay = start + sent / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
        pending.append(await js.publish_async(subject, body, headers=headers))
        if len(pending) >= window or (rate > 0 and len(pending) >= max(1, int(rate / 20))):
            await asyncio.gather(*pending)
            acked += len(pending)
            pending.clear()
            yield acked
    if pending:
        await asyncio.gather(*pending)
        acked += len(pending)
        yield acked
