"""The Contact aggregate: last-writer-wins by occurred_at, order-insensitive, replayable."""

from __future__ import annotations

import itertools
from typing import Any
from uuid import uuid4

from hypothesis import given, settings
from hypothesis import strategies as st

from contracts.events import InboundEvent
from services.domain.contact import Contact
from tests.factories import event_dict, make_event


def fold(events: list[InboundEvent]) -> Contact:
    contact = Contact.register(uuid4(), events[0].tenant, events[0].contact.email)
    for event in events:
        contact.record(event)
    return contact


def replay(contact: Contact) -> Contact:
    aggregate: Any = None
    for event in contact.collect_events():
        aggregate = event.mutate(aggregate)
    return aggregate


def test_form_fills_the_card() -> None:
    event = make_event(
        "form_submitted",
        event_id="web-1",
        email=" Ana.Garcia@Example.com ",
        contact={"first_name": "Ana", "language": "es", "country": "ES"},
        form_id="contact-us",
        properties={"shoe_size": 38},
        tags=["Lead", " shipping-question "],
    )
    card = fold([event]).card()
    assert card["email"] == "ana.garcia@example.com"
    assert card["first_name"] == "Ana"
    assert card["language"] == "es"
    assert card["country"] == "ES"
    assert card["properties"] == {"shoe_size": 38}
    assert card["tags"] == ["Lead", "shipping-question"]
    assert card["first_seen_at"] == "2026-11-02T09:15:00.000000Z"
    assert card["last_activity_at"] == "2026-11-02T09:15:00.000000Z"


def test_older_fact_arriving_late_does_not_overwrite() -> None:
    newer = make_event("contact_updated", event_id="b", occurred_at="2026-11-02T12:00:00Z",
                       contact={"city": "Madrid"})
    older = make_event("contact_updated", event_id="a", occurred_at="2026-11-01T12:00:00Z",
                       contact={"city": "Sevilla"})
    assert fold([newer, older]).card()["city"] == "Madrid"
    assert fold([older, newer]).card()["city"] == "Madrid"


def test_tie_on_time_goes_to_greater_event_id() -> None:
    a = make_event("contact_updated", event_id="a", contact={"city": "A"})
    b = make_event("contact_updated", event_id="b", contact={"city": "B"})
    assert fold([a, b]).card()["city"] == "B"
    assert fold([b, a]).card()["city"] == "B"


def test_tags_compare_case_insensitively_and_can_be_removed() -> None:
    add = make_event("contact_updated", event_id="1", occurred_at="2026-01-01T00:00:00Z",
                     tags_added=["VIP"])
    remove = make_event("contact_updated", event_id="2", occurred_at="2026-01-02T00:00:00Z",
                        tags_removed=[" vip "])
    assert fold([add, remove]).card()["tags"] == []
    assert fold([remove, add]).card()["tags"] == []


def test_unset_clears_field_and_property() -> None:
    set_ = make_event("contact_updated", event_id="1", occurred_at="2026-01-01T00:00:00Z",
                      contact={"phone": "+34600111222"}, properties={"size": "M"})
    unset = make_event("contact_updated", event_id="2", occurred_at="2026-01-02T00:00:00Z",
                       unset=["phone", "size"])
    for order in ([set_, unset], [unset, set_]):
        card = fold(order).card()
        assert card.get("phone") is None
        assert card["properties"] == {}


def test_double_opt_in_then_confirm_then_unsubscribe_everything() -> None:
    sub = make_event("list_subscribed", event_id="1", occurred_at="2026-01-01T00:00:00Z",
                     list_id="news", double_opt_in=True)
    confirm = make_event("list_confirmed", event_id="2", occurred_at="2026-01-02T00:00:00Z",
                         list_id="news")
    offers = make_event("list_subscribed", event_id="3", occurred_at="2026-01-03T00:00:00Z",
                        list_id="offers")
    leave = make_event("list_unsubscribed", event_id="4", occurred_at="2026-01-04T00:00:00Z",
                       list_id="*")
    assert fold([sub]).card()["lists"] == {"news": "pending"}
    assert fold([sub, confirm]).card()["lists"] == {"news": "subscribed"}
    for order in itertools.permutations([sub, confirm, offers, leave]):
        assert fold(list(order)).card()["lists"] == {
            "news": "unsubscribed",
            "offers": "unsubscribed",
        }


def test_machine_open_is_not_activity() -> None:
    sent = make_event("email_sent", event_id="1", occurred_at="2026-01-01T00:00:00Z",
                      message_id="m1")
    machine = make_event("email_opened", event_id="2", occurred_at="2026-01-02T00:00:00Z",
                         message_id="m1", machine_open=True)
    card = fold([sent, machine]).card()
    assert card["last_activity_at"] is None
    human = make_event("email_opened", event_id="3", occurred_at="2026-01-03T00:00:00Z",
                       message_id="m1")
    assert fold([sent, machine, human]).card()["last_activity_at"].startswith("2026-01-03")


def test_membership_approval() -> None:
    signup = make_event("member_signed_up", event_id="1", occurred_at="2026-01-01T00:00:00Z",
                        member_id="m-9", requires_approval=True)
    approve = make_event("member_approved", event_id="2", occurred_at="2026-01-02T00:00:00Z",
                         member_id="m-9")
    assert fold([signup]).card()["member"] == {"member_id": "m-9", "status": "pending_approval"}
    assert fold([approve, signup]).card()["member"] == {"member_id": "m-9", "status": "active"}


# ------------------------------------------------------------ order-insensitivity

TIMES = [f"2026-03-0{d}T10:00:00Z" for d in range(1, 5)]
WORDS = ["a", "b", "c"]


@st.composite
def contact_events(draw: st.DrawFn) -> list[dict[str, Any]]:
    n = draw(st.integers(min_value=1, max_value=12))
    out = []
    for i in range(n):
        when = draw(st.sampled_from(TIMES))
        kind = draw(st.sampled_from([
            "contact_updated", "consent_changed", "list_subscribed", "list_confirmed",
            "list_unsubscribed", "member_signed_up", "member_approved", "form_submitted",
        ]))
        fields: dict[str, Any] = {}
        contact: dict[str, Any] = {}
        if draw(st.booleans()):
            contact["city"] = draw(st.sampled_from(WORDS))
        if kind == "contact_updated":
            fields["properties"] = {draw(st.sampled_from(WORDS)): draw(st.integers(0, 3))}
            fields["tags_added"] = draw(st.lists(st.sampled_from(["VIP", "vip", "Lead"]),
                                                 max_size=2))
            fields["tags_removed"] = draw(st.lists(st.sampled_from(["VIP", "lead"]), max_size=1))
            fields["unset"] = draw(st.lists(st.sampled_from(["city", "a", "b"]), max_size=1))
            fields["lead_status"] = draw(st.sampled_from(["new", "won"]))
        elif kind == "consent_changed":
            fields["channel"] = draw(st.sampled_from(["email", "sms"]))
            fields["granted"] = draw(st.booleans())
        elif kind == "list_subscribed":
            fields["list_id"] = draw(st.sampled_from(["l1", "l2"]))
            fields["double_opt_in"] = draw(st.booleans())
        elif kind == "list_confirmed":
            fields["list_id"] = draw(st.sampled_from(["l1", "l2"]))
        elif kind == "list_unsubscribed":
            fields["list_id"] = draw(st.sampled_from(["l1", "*"]))
        elif kind in ("member_signed_up", "member_approved"):
            fields["member_id"] = "m1"
            if kind == "member_signed_up":
                fields["requires_approval"] = draw(st.booleans())
        else:
            fields["form_id"] = "f"
            fields["properties"] = {"a": draw(st.integers(0, 3))}
            fields["tags"] = draw(st.lists(st.sampled_from(["VIP", "Lead"]), max_size=2))
        out.append(event_dict(kind, event_id=f"e{i:02d}", occurred_at=when, contact=contact,
                              **fields))
    return out


@settings(max_examples=300, deadline=None)
@given(contact_events(), st.randoms(use_true_random=False))
def test_any_arrival_order_gives_the_same_card(dicts: list[dict[str, Any]], rnd: Any) -> None:
    from tests.factories import decode_dict

    events = [decode_dict(d) for d in dicts]
    shuffled = list(events)
    rnd.shuffle(shuffled)
    first, second = fold(events), fold(shuffled)
    assert first.card() == second.card()
    # Replaying the stored domain events rebuilds exactly the same state.
    assert replay(first).card() == first.card()
