"""Instants as a person writes them: in a CSV cell, on the command line, in an address.

One rule wherever ficha reads an instant a person typed (``ficha import``'s
``occurred_at``, the HTTP API's date and time query parameters, the rules' dates): RFC 3339
with its offset (``2026-11-02T10:15:00+01:00``, ``…Z`` for UTC; ``t`` and ``z`` may be
lower case), or a plain date (``2026-11-02``), which means 00:00 UTC of that day. A time
without an offset is refused rather than guessed.
"""

from __future__ import annotations

from datetime import UTC, datetime


def parse_instant(text: str) -> datetime | str:
    """The instant ``text`` names (always with its offset), or why it names none."""
    # RFC 3339 lets the T and the Z be lower case; Python reads a lower-case t only.
    written = text[:-1] + "Z" if text.endswith("z") else text
    try:
        moment = datetime.fromisoformat(written)
    except ValueError:
        return (f"{text!r} is not a date or time: write 2026-11-02T10:15:00+01:00 "
                "(Z for UTC), or a date such as 2026-11-02")
    if moment.tzinfo is None:
        if len(text) == 10:
            return moment.replace(tzinfo=UTC)
        return (f"{text!r} has no timezone offset: write it like 2026-11-02T10:15:00+01:00 "
                "(Z for UTC)")
    try:
        moment.astimezone(UTC)  # a year-1 time west of UTC, or 9999 east of it, has no UTC
    except OverflowError:
        return f"{text!r} is out of range once in UTC: give an instant between years 1 and 9999"
    return moment
