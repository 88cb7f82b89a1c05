"""Build real inbound events through the real decoder (no hand-made Structs)."""

from __future__ import annotations

import json
from typing import Any

from contracts.decode import Rejection, decode
from contracts.events import InboundEvent


def event_dict(
    type_: str,
    *,
    tenant: str = "acme",
    email: str = "ana@example.com",
    event_id: str,
    occurred_at: str = "2026-11-02T10:15:00+01:00",
    source: str = "test",
    contact: dict[str, Any] | None = None,
    **fields: Any,
) -> dict[str, Any]:
    return {
        "event_id": event_id,
        "type": type_,
        "tenant": tenant,
        "occurred_at": occurred_at,
        "source": source,
        "contact": {"email": email, **(contact or {})},
        **fields,
    }


def decode_dict(data: dict[str, Any]) -> InboundEvent:
    result = decode(f"ficha.in.{data['tenant']}.{data['type']}", json.dumps(data).encode())
    if isinstance(result, Rejection):
        raise AssertionError(f"test event rejected: {result.code}: {result.detail}")
    return result


def make_event(type_: str, **kwargs: Any) -> InboundEvent:
    return decode_dict(event_dict(type_, **kwargs))
