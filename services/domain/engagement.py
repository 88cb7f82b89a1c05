"""Engagement status: engaged, not engaged or inactive, and when it next changes.

Definitions (windows per tenant, defaults below):

* ``engaged``: an interaction (an email open that is not a machine open, a click, a product
  view, a cart, a purchase, a form, a survey, a booking) within the last 90 days;
* ``not_engaged``: no interaction within 90 days, but an interaction, or failing that the
  first contact, within the last 180 days: someone still within reach;
* ``inactive``: neither an interaction nor a first contact within 180 days.

Each status changes exactly when a window passes, so the next change is known in advance
and the projection schedules it.
"""

from __future__ import annotations

from dataclasses import dataclass

from services.domain.facts import ContactFacts, days_after, days_before

ENGAGED = "engaged"
NOT_ENGAGED = "not_engaged"
INACTIVE = "inactive"
STATUSES = (ENGAGED, NOT_ENGAGED, INACTIVE)


@dataclass(frozen=True)
class EngagementWindows:
    engaged_days: float = 90.0
    inactive_days: float = 180.0


DEFAULT_WINDOWS = EngagementWindows()


def engagement_at(
    facts: ContactFacts, now: str, windows: EngagementWindows = DEFAULT_WINDOWS
) -> str:
    """The status at ``now``."""
    last = facts.last_interaction_at
    if last is not None and last > days_before(now, windows.engaged_days):
        return ENGAGED
    basis = last or facts.first_seen_at
    if basis is None or basis <= days_before(now, windows.inactive_days):
        return INACTIVE
    return NOT_ENGAGED


def engagement_status(
    facts: ContactFacts, now: str, windows: EngagementWindows = DEFAULT_WINDOWS
) -> tuple[str, str | None]:
    """The status at ``now`` and the instant it next changes (None: never by itself)."""
    status = engagement_at(facts, now, windows)
    if status == INACTIVE:
        return status, None
    # Engaged until the last interaction leaves the engaged window; not engaged until it
    # (or, without one, the first contact) leaves the inactive window.
    engaged = status == ENGAGED
    basis = facts.last_interaction_at if engaged else (
        facts.last_interaction_at or facts.first_seen_at)
    assert basis is not None  # engagement_at found one, or the status would be inactive
    return status, days_after(basis, windows.engaged_days if engaged else windows.inactive_days)
