"""The clock as events: what makes time-relative rules exact and replayable.

Segments and engagement change when time passes, not only when events arrive. The
scheduler appends a ``Ticked`` event to the store when some contact's scheduled instant
has come; projections fire every transition due at or before it, each at its own due
instant. Because ticks are in the log, a rebuild sees them in the same order as the live
run did, and produces the same rows.

Ticks are kept in one stream per UTC day, so that no stream grows without bound.
"""

from __future__ import annotations

from typing import Any
from uuid import NAMESPACE_URL, UUID, uuid5

from eventsourcing.domain import Aggregate


def clock_day_id(day: str) -> UUID:
    return uuid5(NAMESPACE_URL, f"ficha:clock:{day}")


class ClockDay(Aggregate):
    class Started(Aggregate.Created):
        day: str

    class Ticked(Aggregate.Event):
        at: str

        def apply(self, aggregate: Any) -> None:
            aggregate.last_tick = self.at

    class RescoreRequested(Aggregate.Event):
        """Score RFM now, for the tenants that asked (the audience projection holds their
        requests: a tenant with buyers enough to rank but no quintiles yet, or with a
        contact erased; the scheduler appends this while any is held). Otherwise
        rescoring happens at each UTC midnight for every tenant, and for a tenant whose
        buyers outgrew its cuts."""

        at: str

        def apply(self, aggregate: Any) -> None:
            aggregate.last_tick = max(aggregate.last_tick or "", self.at)

    def __init__(self, day: str) -> None:
        self.day = day
        self.last_tick: str | None = None

    @classmethod
    def start(cls, day: str) -> ClockDay:
        return cls._create(cls.Started, id=clock_day_id(day), day=day)

    def tick(self, at: str) -> bool:
        """Record that time has reached ``at``; ticks only move forward."""
        if not at.startswith(self.day):
            raise ValueError(f"tick {at} is not on {self.day}")
        if self.last_tick is not None and at <= self.last_tick:
            return False
        self.trigger_event(self.Ticked, at=at)
        return True

    def request_rescore(self, at: str) -> None:
        if not at.startswith(self.day):
            raise ValueError(f"{at} is not on {self.day}")
        self.trigger_event(self.RescoreRequested, at=at)
