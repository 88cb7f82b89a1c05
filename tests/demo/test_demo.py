"""The demo history: deterministic, skewed like real traffic, causally consistent."""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest

from services.demo import demo_start, demo_summary, generate_history


def test_same_seed_same_history_and_exact_count() -> None:
    a = [json.dumps(e) for e in generate_history("acme", 3000, seed=4)]
    b = [json.dumps(e) for e in generate_history("acme", 3000, seed=4)]
    c = [json.dumps(e) for e in generate_history("acme", 3000, seed=5)]
    assert a == b and a != c and len(a) == 3000
    assert len({json.loads(e)["event_id"] for e in a}) == 3000


def test_mix_skew_and_causality() -> None:
    events = list(generate_history("acme", 20_000, seed=1))
    counts = demo_summary(events)
    assert len(counts) == 21  # every type but erasure requests
    opens = [e for e in events if e["type"] == "email_opened"]
    machine = sum(1 for e in opens if e.get("machine_open"))
    assert 0 < machine < len(opens) / 2
    assert counts["booking_cancelled"] < counts["booking_made"] / 2

    per_contact = Counter(e["contact"]["email"].strip().lower() for e in events)
    ranked = [n for _, n in per_contact.most_common()]
    top = ranked[: max(1, len(ranked) // 100)]
    assert sum(top) > 0.05 * len(events), "the top 1% of contacts do far more than 1%"

    booked: set[str] = set()
    subscribed_pending: set[tuple[str, str]] = set()
    orders: dict[str, tuple[str, str]] = {}
    for e in events:
        who = e["contact"]["email"].strip().lower()
        if e["type"] == "booking_made":
            booked.add(e["booking_id"])
        if e["type"] == "list_subscribed" and e["double_opt_in"]:
            subscribed_pending.add((who, e["list_id"]))
        if e["type"] == "purchase_completed":
            money = (e["total"] if e.get("schema_version") == 2
                     else {"amount": e["total"], "currency": e["currency"]})
            orders[e["order_id"]] = (money["amount"], money["currency"])
        if e["type"] == "purchase_refunded":
            total, currency = orders[e["order_id"]]
            assert float(e["amount"]) <= float(total) and e["currency"] == currency
    versions = {e.get("schema_version", 1) for e in events if e["type"] == "purchase_completed"}
    assert versions == {1, 2}, "the demo speaks both versions of purchase_completed"
    for e in events:
        if e["type"] in ("booking_cancelled", "booking_no_show"):
            assert e["booking_id"] in booked
        if e["type"] == "list_confirmed":
            assert (e["contact"]["email"].strip().lower(), e["list_id"]) in subscribed_pending


@pytest.mark.parametrize("events", [300, 3_000, 20_000])
def test_the_cli_default_history_ends_in_the_last_weeks(events: int) -> None:
    """`ficha demo` without --start: recent activity whatever the day it runs (a fixed
    start left a demo run today with no engaged contact at all)."""
    now = datetime(2027, 3, 14, 15, 9, tzinfo=UTC)
    history = list(generate_history("acme", events, seed=3, start=demo_start(now), until=now))
    latest = max(datetime.fromisoformat(e["occurred_at"]) for e in history)
    assert now - timedelta(days=45) < latest <= now
    assert demo_start(now) == datetime(2026, 3, 19, tzinfo=UTC)


@pytest.mark.parametrize("events", [1, 2, 5, 50, 100])
@pytest.mark.parametrize("seed", range(10))
def test_a_short_history_stays_in_the_past(events: int, seed: int) -> None:
    """A few events cover a year in a few long random steps: they overshot it by up to
    half a year into the future before `until` held them back."""
    now = datetime(2027, 3, 14, 15, 9, tzinfo=UTC)
    history = list(generate_history("acme", events, seed=seed, start=demo_start(now),
                                    until=now))
    assert len(history) == events
    assert all(datetime.fromisoformat(e["occurred_at"]) <= now for e in history)
