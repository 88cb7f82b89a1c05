"""Stamps order facts by when they happened, independently of arrival order.

A stamp is ``(occurred_at in UTC as a fixed-width ISO string, event_id)``. Comparing stamps
as tuples gives the contract's rule: the latest ``occurred_at`` wins, ties go to the
greater ``event_id``.
"""

from __future__ import annotations

from datetime import UTC, datetime

Stamp = tuple[str, str]

NO_STAMP: Stamp = ("", "")


def utc_iso(moment: datetime) -> str:
    """Fixed-width UTC ISO 8601 with microseconds, so that strings sort as instants."""
    if moment.tzinfo is None:
        raise ValueError("timestamps must carry an offset")
    utc = moment.astimezone(UTC)
    return utc.replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def parse_utc_iso(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))
