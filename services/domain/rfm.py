"""RFM: recency, frequency and monetary value of each buyer, scored 1-5 within the tenant.

Per contact, at an instant ``now``:

RFM values are computed per UTC day, as of its midnight, so that a buyer's scores change
only with its own purchases and when the audience projection rescores the tenant's buyers
against new cuts.

* recency: whole days from the last purchase (any currency) to today's midnight;
* frequency: purchases within the tenant's window (default 365 days);
* monetary: purchases minus refunds within the window, in the tenant's primary currency.

Scores: each dimension is ranked among the tenant's buyers (contacts with at least one
purchase ever) and cut into quintiles: 5 is the best fifth (most recent, most frequent,
most spent), 1 the worst. A buyer's score is ``1 + floor(5 * worse / buyers)`` (at most
5), where ``worse`` counts buyers with a worse value: a score is earned by beating other
buyers, and equal values share the lowest score of their block (the many one-time buyers
among repeat buyers all have frequency 1). Two cases have nothing to rank:

* fewer than ``MIN_RANKED_BUYERS`` (5) buyers: no cuts are taken (a fifth of the buyers
  would be less than one buyer) and every buyer scores 3 in each dimension, as before a
  tenant's first cuts;
* a dimension in which every buyer has the same value (all bought once, or all on the
  same day): that value scores 3, not 1; a better one 5, a worse one 1.

The cuts are taken at each UTC midnight for every tenant, and for one tenant as soon as
its buyers outgrow them (``cuts_outgrown``: half as many buyers again as the cuts were
taken from, and at least ``RESCORE_MIN_NEW_BUYERS`` more), so that a burst of history is
not scored until midnight against cuts of its first few buyers. A purchase in between is
scored against the cuts in force.

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


# Fewer buyers than this are not ranked: every buyer scores 3.
MIN_RANKED_BUYERS = 5
# Cuts are taken again, between midnights, once a tenant has this many more buyers than
# its cuts were taken from, and at least half as many more.
RESCORE_MIN_NEW_BUYERS = 20


def cuts_outgrown(cut_buyers: int, buyers: int) -> bool:
    """Whether cuts taken from ``cut_buyers`` buyers (0: none yet) no longer stand for
    ``buyers``: half as many again, and at least ``RESCORE_MIN_NEW_BUYERS`` more."""
    return buyers - cut_buyers >= max(RESCORE_MIN_NEW_BUYERS, cut_buyers / 2)


# A cut: the value to beat for the next score, and whether equalling it is enough.
Cut = tuple[Any, bool]


@dataclass(frozen=True)
class RfmCuts:
    """Per dimension, the four cuts a value must reach for scores 2, 3, 4 and 5.

    ``score >= s`` exactly when at least ``k = ceil((s - 1) * n / 5)`` buyers have a worse
    value, that is when the value beats the k-th worst: so four thresholds per dimension
    reproduce the rank-based score of any value, and a day's cuts stay small. In a
    dimension without spread (one value for all) equalling it is enough for 2 and 3.
    """

    recency: tuple[Cut, ...] = ()  # days: fewer is better
    frequency: tuple[Cut, ...] = ()  # purchases: more is better
    monetary: tuple[Cut, ...] = ()  # spent (Decimal): more is better
    buyers: int = 0  # how many buyers the cuts were taken from

    @classmethod
    def of(cls, values: list[RfmValues]) -> RfmCuts:
        n = len(values)
        if n < MIN_RANKED_BUYERS:
            return cls(buyers=n)  # too few to rank: every buyer scores 3
        # Recency ranked on minus the days, so that for each dimension more is better.
        recency = _cuts(sorted(-v.recency_days for v in values))
        return cls(
            tuple((-days, or_equal) for days, or_equal in recency),
            _cuts(sorted(v.frequency for v in values)),
            _cuts(sorted(v.monetary for v in values)),
            n,
        )

    def scores(self, v: RfmValues) -> tuple[int, int, int]:
        if not self.recency:
            return (3, 3, 3)  # no cuts (yet, or too few buyers): the middle
        return (
            1 + sum(1 for cut, or_equal in self.recency
                    if v.recency_days < cut or (or_equal and v.recency_days == cut)),
            1 + sum(1 for cut, or_equal in self.frequency
                    if v.frequency > cut or (or_equal and v.frequency == cut)),
            1 + sum(1 for cut, or_equal in self.monetary
                    if v.monetary > cut or (or_equal and v.monetary == cut)),
        )

    def to_json(self) -> dict[str, Any]:
        def cuts(dimension: tuple[Cut, ...], write: Any = int) -> list[dict[str, Any]]:
            return [{"value": write(value), "or_equal": or_equal}
                    for value, or_equal in dimension]

        return {"recency": cuts(self.recency), "frequency": cuts(self.frequency),
                "monetary": cuts(self.monetary, str), "buyers": self.buyers}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RfmCuts:
        def cuts(dimension: list[dict[str, Any]], read: Any = int) -> tuple[Cut, ...]:
            return tuple((read(c["value"]), bool(c["or_equal"])) for c in dimension)

        return cls(cuts(data["recency"]), cuts(data["frequency"]),
                   cuts(data["monetary"], Decimal), int(data["buyers"]))


def _cuts(ascending: list[Any]) -> tuple[Cut, ...]:
    """The cuts for scores 2-5 of values sorted from worst to best (``RfmCuts``)."""
    n = len(ascending)
    if ascending[0] == ascending[-1]:  # no spread: that value scores 3
        return ((ascending[0], True), (ascending[0], True),
                (ascending[0], False), (ascending[0], False))
    ks = [-(-(s - 1) * n // 5) for s in (2, 3, 4, 5)]  # ceil((s - 1) n / 5), >= 1
    return tuple((ascending[k - 1], False) for k in ks)  # beat the k-th worst


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
