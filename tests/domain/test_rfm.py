"""RFM scoring: thresholds reproduce rank-based quintiles exactly; groups partition buyers."""

from __future__ import annotations

from decimal import Decimal

from hypothesis import given
from hypothesis import strategies as st

from services.domain.facts import ContactFacts
from services.domain.rfm import GROUPS, NEVER_BOUGHT, RfmCuts, RfmValues, rfm_group, score

values = st.builds(RfmValues, st.integers(0, 400), st.integers(0, 30),
                   st.decimals(-100, 5000, places=2).map(Decimal))


@given(st.lists(values, min_size=1, max_size=60), values)
def test_cuts_give_the_rank_based_score_of_any_value(buyers: list[RfmValues],
                                                     probe: RfmValues) -> None:
    n = len(buyers)
    cuts = RfmCuts.of(buyers)
    expected = (
        1 + 5 * sum(1 for b in buyers if b.recency_days > probe.recency_days) // n,
        1 + 5 * sum(1 for b in buyers if b.frequency < probe.frequency) // n,
        1 + 5 * sum(1 for b in buyers if b.monetary < probe.monetary) // n,
    )
    assert cuts.scores(probe) == tuple(min(5, e) for e in expected)
    assert RfmCuts.from_json(cuts.to_json()) == cuts


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
