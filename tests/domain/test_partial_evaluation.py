"""Evaluating only what a change can change gives what evaluating everything gives.

The audience projection evaluates, for each event, only the segments that read a part
of the contact's facts the event touches (and the volatile ones), and the facts before
the event only when a membership flips. These tests hold that shortcut to the full
evaluation on demo histories: the same memberships, the same next change, the same
clauses, the same transitions; and ``touched_by`` to what applying an event changes.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from uuid import uuid4

from hypothesis import given, settings
from hypothesis import strategies as st

from services.demo import LISTS, generate_history
from services.domain.audience import (
    CAUSE_CLOCK,
    CAUSE_EVENT,
    TenantRules,
    evaluate,
    instant_before,
    reevaluate,
    transitions,
)
from services.domain.contact import Contact
from services.domain.facts import ContactFacts
from services.domain.rfm import RfmCuts
from services.domain.segments import SegmentDefinition
from services.domain.stamps import utc_iso
from tests.domain.test_rules import leaves, rule_trees
from tests.factories import decode_dict

START = datetime(2026, 1, 1, tzinfo=UTC)


def recorded_histories(seed: int, n: int) -> Iterator[list[Any]]:
    """Each demo contact's domain events, as its aggregate recorded them."""
    contacts: dict[str, Contact] = {}
    for raw in generate_history("acme", n, seed=seed, start=START):
        event = decode_dict(raw)
        email = event.contact.email
        if email not in contacts:
            contacts[email] = Contact.register(uuid4(), "acme", email)
        contacts[email].record(event)
    for contact in contacts.values():
        yield [e for e in contact.collect_events() if isinstance(e, Contact.Recorded)]


def parts(facts: ContactFacts) -> dict[str, Any]:
    """Every part of the facts under the name ``touched_by`` gives it."""
    out: dict[str, Any] = dict(facts.fields)
    out.update({f"property.{k}": v for k, v in facts.properties.items()})
    out.update({f"consent.{k}": v for k, v in facts.consent.items()})
    out.update({f"activity.{k}": tuple(map(tuple, v)) for k, v in facts.activity.items()})
    out["tags"] = frozenset(facts.tags)
    out["lists"] = tuple(sorted(facts.list_states(limit).items()) for limit in (1, 2, 3, 5))
    for name in ("member_status", "first_seen_at", "last_activity_at", "last_interaction_at",
                 "last_purchase_at", "email"):
        out[name] = getattr(facts, name)
    return out


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10_000))
def test_touched_by_names_every_part_an_event_changes(seed: int) -> None:
    checked = 0
    for history in recorded_histories(seed, 300):
        facts = ContactFacts(tenant="acme", contact_id="c", email="x@example.com")
        for event in history:
            touched = facts.touched_by(event)
            earlier = facts.copy_before(touched)
            as_it_was = facts.to_json()
            old = parts(facts)
            facts.apply(event)
            new = parts(facts)
            changed = {k for k in old.keys() | new.keys() if old.get(k) != new.get(k)}
            assert changed <= touched, (event.event_type, changed - touched)
            assert earlier.to_json() == as_it_was  # the copy did not move with the facts
            checked += 1
    assert checked > 250


extra_leaves = st.sampled_from([
    {"field": "engagement", "op": "in", "value": ["not_engaged", "inactive"]},
    {"field": "rfm.group", "op": "equals", "value": "champions"},
    {"field": "rfm.frequency", "op": "gte", "value": 3},
    {"field": "list.newsletter", "op": "equals", "value": "subscribed"},
    {"field": "list.offers", "op": "in", "value": ["pending", "suppressed"]},
    {"field": "consent.email", "op": "equals", "value": True},
    {"field": "language", "op": "equals", "value": "es"},
    {"field": "member_status", "op": "is_set"},
    {"field": "property.shoe_size", "op": "gte", "value": 40},
    {"field": "tags", "op": "has", "value": "newsletter"},
    {"field": "first_seen_at", "op": "after", "value": "2026-03-01T00:00:00Z"},
    {"count": "email_opens", "op": "gte", "value": 3},
    {"sum": "spent", "currency": "EUR", "op": "gt", "value": 80},
])
rules_strategy = rule_trees(st.one_of(leaves(), extra_leaves), max_leaves=5)

@st.composite
def tenant_rules(draw: st.DrawFn) -> TenantRules:
    definitions = []
    for i in range(draw(st.integers(2, 6))):
        rule = draw(rules_strategy)
        if i and draw(st.booleans()):  # use an earlier segment too
            rule = {draw(st.sampled_from(["all", "any"])): [rule, {"segment": f"s{i - 1}"}]}
        definitions.append(SegmentDefinition(f"s{i}", f"s{i}", 1, rule))
    cuts = RfmCuts(tuple((d, False) for d in (300, 180, 90, 30)),
                   tuple((f, False) for f in (1, 2, 3, 5)),
                   tuple((Decimal(m), False) for m in (20, 50, 100, 200)), 100)
    return TenantRules.compile(definitions, cuts)


def same_transitions(members: set[str], rules: TenantRules, full: tuple[Any, Any],
                     partial: tuple[Any, Any], cause: str) -> None:
    expected = transitions(members, full[0], full[1], rules, cause, "ref")
    got = transitions(members, partial[0], partial[1], rules, cause, "ref")
    assert got == expected


def check_against_full_evaluation(rules: TenantRules, seed: int, days_later: float) -> int:
    """Every event of a demo history, and time passing after it; returns how many events
    flipped a membership (and so evaluated the facts before them)."""
    flips = 0
    for history in recorded_histories(seed, 150):
        facts = ContactFacts(tenant="acme", contact_id="c", email="x@example.com")
        for event in history:
            now = event.occurred_at
            full_before = evaluate(facts, rules, now)
            touched = facts.touched_by(event)
            earlier = facts.copy_before(touched)
            facts.apply(event)
            full_after = evaluate(facts, rules, now)
            before, after = reevaluate(rules, full_before.members, rules.to_evaluate(touched),
                                       facts, now, earlier, now)
            assert after.members == full_after.members
            assert after.due == full_after.due
            assert after.engagement == full_after.engagement
            for sid, trace in after.traces.items():
                assert trace == full_after.traces[sid]
            same_transitions(full_before.members, rules, (full_before, full_after),
                             (before, after), CAUSE_EVENT)
            flips += before is not None
        # Time alone: at the contact's next change, or some days later.
        moment = full_after.due or utc_iso(START + timedelta(days=days_later))
        if moment <= full_after.now:
            continue
        full_then = evaluate(facts, rules, moment)
        full_just_before = evaluate(facts, rules, instant_before(moment))
        clock = reevaluate(rules, full_just_before.members, rules.to_evaluate(), facts, moment,
                           facts, instant_before(moment))
        assert clock[1].members == full_then.members
        assert clock[1].due == full_then.due
        same_transitions(full_just_before.members, rules, (full_just_before, full_then), clock,
                         CAUSE_CLOCK)
    return flips


@settings(max_examples=60, deadline=None)
@given(tenant_rules(), st.integers(0, 10_000), st.floats(0, 400))
def test_evaluating_only_what_a_change_can_change_equals_evaluating_everything(
    rules: TenantRules, seed: int, days_later: float
) -> None:
    check_against_full_evaluation(rules, seed, days_later)


def test_the_comparison_sees_memberships_flip() -> None:
    rules = TenantRules.compile([
        SegmentDefinition("news", "news", 1, {"field": "tags", "op": "has",
                                              "value": "newsletter"}),
        SegmentDefinition("buyer", "buyer", 1, {"count": "purchases", "op": "gte", "value": 1}),
        SegmentDefinition("news-buyer", "news-buyer", 1, {"all": [{"segment": "news"},
                                                                  {"segment": "buyer"}]}),
    ])
    assert check_against_full_evaluation(rules, seed=5, days_later=30) > 10


def test_a_change_evaluates_only_the_segments_that_read_it() -> None:
    rules = TenantRules.compile([
        SegmentDefinition("vip", "vip", 1, {"field": "tags", "op": "has", "value": "vip"}),
        SegmentDefinition("es", "es", 1, {"field": "country", "op": "equals", "value": "ES"}),
        SegmentDefinition("es-vip", "es-vip", 1, {"all": [{"segment": "es"},
                                                          {"segment": "vip"}]}),
        SegmentDefinition("recent", "recent", 1, {"field": "last_interaction_at",
                                                  "op": "within_last", "value": {"days": 30}}),
        SegmentDefinition("news", "news", 1, {"field": f"list.{LISTS[0]}", "op": "equals",
                                              "value": "subscribed"}),
    ])
    assert rules.to_evaluate(frozenset({"tags"})) == {"vip", "es-vip", "recent"}
    assert rules.to_evaluate(frozenset({"country"})) == {"es", "es-vip", "recent"}
    assert rules.to_evaluate(frozenset({"lists"})) == {"news", "recent"}
    assert rules.to_evaluate() == {"recent"}  # time alone
