"""RFM: recency, frequency and monetary value of each buyer, scored 1-5 within the tenant.

Per contact, at an instant ``now``:

RFM is computed per UTC day, as of its midnight, so that it changes only when the audience
projection rescores every buyer against the new day's quintiles.

* recency: whole days from the last purchase (any currency) to today's midnight;
* frequency: purchases within the tenant's window (default 365 days);
* monetary: purchases minus refunds within the window, in the tenant's primary currency.

Scores: each dimension is ranked among the tenant's buyers (contacts with at least one
purchase ever) and cut into quintiles: 5 is the best fifth (most recent, most frequent,
most spent), 1 the worst. Equal values always get the same score: a buyer's score is
``1 + floor(5 * below / buyers)``, where ``below`` counts buyers with a worse value. The
cuts are taken once a day (at UTC midnight, for every tenant) and a purchase during the
day is scored against the day's cuts.

Groups, from the recency (R) and frequency (F) scores, first match wins:

=================  ==========================
champions          R >= 4 and F >= 4
loyal              R >= 3 and F >= 3
recent             R = 5 (and F <= 2)
promising          R = 4 (and F <= 2)
needs_attention    R = 3 (and F <= 2)
at_risk            R <= 2 and F >= 3
hibernating        R = 2 (and F <= 2)
lost               R = 1 (and F <= 2)
never_bought       no purchase ever
=================  ==========================
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from services.domain.facts import ContactFacts, days_before
from services.domain.stamps import parse_utc_iso

NEVER_BOUGHT = "never_bought"
GROUPS = ("champions", "loyal", "recent", "promising", "needs_attention", "at_risk",
          "hibernating", "lost", NEVER_BOUGHT)


@dataclass(frozen=True)
class RfmSettings:
    window_days: float = 365.0
    currency: str = "EUR"


DEFAULT_RFM = RfmSettings()


@dataclass(frozen=True)
class RfmValues:
    recency_days: int
    frequency: int
    monetary: Decimal


def rfm_values(facts: ContactFacts, now: str, settings: RfmSettings = DEFAULT_RFM
               ) -> RfmValues | None:
    """The contact's raw RFM values, or None if they never bought."""
    if facts.last_purchase_at is None:
        return None
    # Per UTC day: values change only at midnight, when the projection rescores everyone.
    today = now[:10] + "T00:00:00.000000Z"
    recency = (parse_utc_iso(today) - parse_utc_iso(facts.last_purchase_at)).days
    since = days_before(today, settings.window_days)
    purchases = facts.since("purchase", since)
    monetary = Decimal(0)
    for kind, sign in (("purchase", 1), ("refund", -1)):
        for _, amount, currency in (purchases if kind == "purchase" else
                                    facts.since("refund", since)):
            if currency == settings.currency and amount is not None:
                monetary += sign * Decimal(amount)
    return RfmValues(max(recency, 0), len(purchases), monetary)


@dataclass(frozen=True)
class RfmCuts:
    """Per dimension, the four values a buyer must beat for scores 2, 3, 4 and 5.

    ``score >= s`` exactly when at least ``k = ceil((s - 1) * n / 5)`` buyers have a worse
    value, that is when the value is better than the k-th worst: so four thresholds per
    dimension reproduce the rank-based score of any value, and a day's cuts stay small.
    """

    recency: tuple[int, ...] = ()  # a buyer scores above a cut when fewer days than it
    frequency: tuple[int, ...] = ()  # ... when more purchases than it
    monetary: tuple[Decimal, ...] = ()  # ... when more spent than it

    @classmethod
    def of(cls, values: list[RfmValues]) -> RfmCuts:
        n = len(values)
        if n == 0:
            return cls()
        ks = [-(-(s - 1) * n // 5) for s in (2, 3, 4, 5)]  # ceil((s-1) n / 5), >= 1
        recency = sorted(v.recency_days for v in values)
        frequency = sorted(v.frequency for v in values)
        monetary = sorted(v.monetary for v in values)
        return cls(
            tuple(recency[n - k] for k in ks),
            tuple(frequency[k - 1] for k in ks),
            tuple(monetary[k - 1] for k in ks),
        )

    def scores(self, v: RfmValues) -> tuple[int, int, int]:
        if not self.recency:
            return (3, 3, 3)  # no buyers scored yet: the middle
        return (
            1 + sum(1 for cut in self.recency if v.recency_days < cut),
            1 + sum(1 for cut in self.frequency if v.frequency > cut),
            1 + sum(1 for cut in self.monetary if v.monetary > cut),
        )

    def to_json(self) -> dict[str, list[Any]]:
        return {"recency": list(self.recency), "frequency": list(self.frequency),
                "monetary": [str(m) for m in self.monetary]}

    @classmethod
    def from_json(cls, data: dict[str, list[Any]]) -> RfmCuts:
        return cls(tuple(data["recency"]), tuple(data["frequency"]),
                   tuple(Decimal(m) for m in data["monetary"]))


def rfm_group(r: int, f: int) -> str:
    if r >= 4 and f >= 4:
        return "champions"
    if r >= 3 and f >= 3:
        return "loyal"
    if r <= 2 and f >= 3:
        return "at_risk"
    return {5: "recent", 4: "promising", 3: "needs_attention", 2: "hibernating"}.get(r, "lost")


@dataclass(frozen=True)
class Rfm:
    group: str
    r: int | None = None
    f: int | None = None
    m: int | None = None
    values: RfmValues | None = None


NO_RFM = Rfm(NEVER_BOUGHT)


def score(facts: ContactFacts, now: str, cuts: RfmCuts,
          settings: RfmSettings = DEFAULT_RFM) -> Rfm:
    values = rfm_values(facts, now, settings)
    if values is None:
        return NO_RFM
    r, f, m = cuts.scores(values)
    return Rfm(rfm_group(r, f), r, f, m, values)
