"""RFM scoring: thresholds reproduce rank-based quintiles exactly; groups partition buyers."""

from __future__ import annotations

from decimal import Decimal

from hypothesis import given
from hypothesis import strategies as st

from services.domain.facts import ContactFacts
from services.domain.rfm import (
    GROUPS,
    MIN_RANKED_BUYERS,
    NEVER_BOUGHT,
    RESCORE_MIN_NEW_BUYERS,
    RfmCuts,
    RfmValues,
    cuts_outgrown,
    rfm_group,
    score,
)

# Narrow ranges too, so that ties and dimensions without spread are common.
values = st.builds(RfmValues, st.integers(0, 400) | st.integers(0, 2),
                   st.integers(0, 30) | st.integers(1, 2),
                   st.decimals(-100, 5000, places=2).map(Decimal)
                   | st.sampled_from([Decimal("9.99"), Decimal("20")]))


def ranked(buyers: list[int | Decimal], probe: int | Decimal, worse_than: object) -> int:
    """The documented score of ``probe`` among ``buyers``, computed the obvious way."""
    n = len(buyers)
    if n < MIN_RANKED_BUYERS:
        return 3
    if len(set(buyers)) == 1 and probe == buyers[0]:
        return 3  # a value every buyer shares
    worse = sum(1 for b in buyers if worse_than(b, probe))  # type: ignore[operator]
    return min(5, 1 + 5 * worse // n)


@given(st.lists(values, min_size=1, max_size=60), values)
def test_cuts_give_the_rank_based_score_of_any_value(buyers: list[RfmValues],
                                                     probe: RfmValues) -> None:
    cuts = RfmCuts.of(buyers)
    expected = (
        ranked([b.recency_days for b in buyers], probe.recency_days, lambda b, p: b > p),
        ranked([b.frequency for b in buyers], probe.frequency, lambda b, p: b < p),
        ranked([b.monetary for b in buyers], probe.monetary, lambda b, p: b < p),
    )
    assert cuts.scores(probe) == expected
    assert cuts.buyers == len(buyers)
    assert RfmCuts.from_json(cuts.to_json()) == cuts


def buyer(days: int, purchases: int, spent: str = "10") -> RfmValues:
    return RfmValues(days, purchases, Decimal(spent))


def test_fewer_than_five_buyers_are_not_ranked() -> None:
    few = [buyer(0, 3, "500"), buyer(40, 1), buyer(300, 1, "5"), buyer(90, 2)]
    cuts = RfmCuts.of(few)
    assert (cuts.recency, cuts.buyers) == ((), 4)
    assert {cuts.scores(v) for v in few} == {(3, 3, 3)}
    # The fifth buyer makes them rankable: five distinct values score 1 to 5.
    five = [*few, buyer(10, 5, "900")]
    assert sorted(RfmCuts.of(five).scores(v)[0] for v in five) == [1, 2, 3, 4, 5]


def test_a_value_every_buyer_shares_scores_three_not_one() -> None:
    """Everyone bought once, on the same day: nobody is ranked above or below anyone
    (by the bare formula all would score 1, and those who just bought be "lost")."""
    same = [buyer(0, 1, "25")] * 12
    cuts = RfmCuts.of(same)
    assert cuts.scores(same[0]) == (3, 3, 3)
    assert rfm_group(*cuts.scores(same[0])[:2]) == "loyal"
    # Against those cuts, a later buyer who beats them all is top, one who trails bottom.
    assert cuts.scores(buyer(0, 2, "30")) == (3, 5, 5)
    assert cuts.scores(buyer(3, 1, "5")) == (1, 3, 1)


def test_tied_values_share_the_lowest_score_of_their_block() -> None:
    """The usual shape: most buyers bought once. One-time buyers stay at frequency 1 (they
    beat nobody), and each larger block scores by the buyers below it."""
    population = ([buyer(d, 1) for d in range(60)] + [buyer(d, 2) for d in range(25)]
                  + [buyer(d, 3) for d in range(15)])
    cuts = RfmCuts.of(population)
    assert [cuts.scores(buyer(0, f))[1] for f in (1, 2, 3, 9)] == [1, 4, 5, 5]
    assert cuts.frequency == ((1, False), (1, False), (1, False), (2, False))


def test_cuts_are_outgrown_by_half_as_many_buyers_again_and_at_least_the_minimum() -> None:
    step = RESCORE_MIN_NEW_BUYERS
    assert not cuts_outgrown(0, step - 1) and cuts_outgrown(0, step)
    assert not cuts_outgrown(10, 10 + step - 1) and cuts_outgrown(10, 10 + step)
    assert not cuts_outgrown(1000, 1499) and cuts_outgrown(1000, 1500)


def test_every_score_pair_has_exactly_one_group() -> None:
    seen = {rfm_group(r, f) for r in range(1, 6) for f in range(1, 6)}
    assert seen == set(GROUPS) - {NEVER_BOUGHT}
    assert rfm_group(5, 5) == "champions" and rfm_group(1, 1) == "lost"
    assert rfm_group(2, 4) == "at_risk" and rfm_group(5, 1) == "recent"


def test_values_are_per_utc_day_and_net_of_refunds_in_the_primary_currency() -> None:
    facts = ContactFacts(tenant="t", contact_id="c", email="a@example.com",
                         last_purchase_at="2026-11-20T18:00:00.000000Z")
    for item in (["purchase", "2025-06-01T10:00:00.000000Z", "999.00", "EUR"],
                 ["refund", "2026-11-21T09:00:00.000000Z", "30.00", "EUR"],
                 ["purchase", "2026-11-20T18:00:00.000000Z", "50.00", "USD"],
                 ["purchase", "2026-10-01T10:00:00.000000Z", "100.00", "EUR"]):
        facts.add_activity(*item)
    rfm = score(facts, "2026-11-23T23:59:00.000000Z", RfmCuts())
    assert rfm.values == RfmValues(recency_days=2, frequency=2, monetary=Decimal("70.00"))
    never = ContactFacts(tenant="t", contact_id="d", email="b@example.com")
    assert score(never, "2026-11-23T00:00:00.000000Z", RfmCuts()).group == NEVER_BOUGHT
