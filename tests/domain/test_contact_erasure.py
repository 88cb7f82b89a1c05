"""Erasure in the Contact aggregate, whatever the arrival order (pure, no I/O).

Invariants: after an erasure nothing stamped at or before it is held, whichever order the
facts came in; facts stamped after it that arrive after it start the contact afresh, and
among those the latest wins as usual; replaying the stored events rebuilds the same state.
"""

from __future__ import annotations

from typing import Any
from uuid import uuid4

from hypothesis import given, settings
from hypothesis import strategies as st

from services.domain.contact import Contact
from tests.factories import make_event

EMAIL = "ana@example.com"


def fact(day: int, n: int) -> Any:
    return make_event("contact_updated", event_id=f"u{n:03d}", email=EMAIL,
                      occurred_at=f"2026-11-{day:02d}T10:00:00Z",
                      contact={"city": f"city-{n}"}, tags_added=[f"tag-{n}"])


ERASURE = make_event("contact_erasure_requested", event_id="erase", email=EMAIL,
                     occurred_at="2026-11-10T12:00:00Z")


def replay(events: list[Any]) -> Contact:
    aggregate: Any = None
    for event in events:
        aggregate = event.mutate(aggregate)
    return aggregate


@settings(max_examples=150, deadline=None)
@given(days=st.lists(st.integers(1, 20), min_size=1, max_size=12), data=st.data())
def test_nothing_stamped_before_an_erasure_survives_it_in_any_order(
    days: list[int], data: st.DataObject,
) -> None:
    facts = [fact(day, n) for n, day in enumerate(days)]
    arrival = data.draw(st.permutations([*facts, ERASURE]))
    contact = Contact.register(uuid4(), "acme", EMAIL)
    refused = [e.event_id for e in arrival if not contact.record(e)]
    card = contact.card()

    before = {f"city-{n}" for n, day in enumerate(days) if day <= 10}
    assert card.get("city") not in before
    assert not {f"tag-{n}" for n, day in enumerate(days) if day <= 10} & set(card["tags"])
    after_erasure = arrival[arrival.index(ERASURE) + 1 :]
    # Facts older than the erasure that come after it are refused, and only those.
    assert sorted(refused) == sorted(e.event_id for e in after_erasure
                                     if e.occurred_at.day <= 10)
    kept = [e for e in after_erasure if e.occurred_at.day > 10]
    if kept:
        latest = max(kept, key=lambda e: (e.occurred_at, e.event_id))
        assert contact.email == EMAIL and card["city"] == latest.contact.city
    else:
        assert contact.is_erased and card.get("city") is None and card["tags"] == []
    again = replay(list(contact.collect_events()))
    assert again.card() == card and again.erased == contact.erased
