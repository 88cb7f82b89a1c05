"""The segment rule language: errors that name the clause, typed evaluation, exact timing."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from services.domain.facts import ContactFacts
from services.domain.rules import (
    MAX_CONDITIONS,
    Context,
    RuleError,
    check_new_rule,
    parse_rule,
    rule_json_schema,
)
from services.domain.stamps import utc_iso

NOW = "2026-11-23T12:00:00.000000Z"
SCHEMA_FILE = Path(__file__).parents[2] / "contracts" / "schemas" / "segment-rule.json"
SCHEMA = jsonschema.Draft202012Validator(rule_json_schema())


def at(days_ago: float) -> str:
    return utc_iso(datetime(2026, 11, 23, 12, tzinfo=UTC) - timedelta(days=days_ago))


def facts(**kw: Any) -> ContactFacts:
    base = ContactFacts(tenant="acme", contact_id="c1", email="ana@example.com")
    for kind, at_, amount, currency in kw.pop("activity", []):
        base.add_activity(kind, at_, amount, currency)
    for key, value in kw.items():
        setattr(base, key, value)
    return base


def holds(rule: dict[str, Any], f: ContactFacts, now: str = NOW, **ctx: Any) -> bool:
    return parse_rule(rule).evaluate(f, Context(now=now, **ctx), None)


# ------------------------------------------------------------------------------ errors


@pytest.mark.parametrize(
    ("rule", "path", "words"),
    [
        ([], "rule", "expected an object"),
        ({"all": []}, "rule", "non-empty list"),
        ({"all": [{"field": "country", "op": "eq", "value": "ES"}]}, "rule.all[0]",
         "op for field country must be one of equals"),
        ({"any": [{"field": "tags", "op": "has", "value": "a"},
                  {"not": {"field": "colour", "op": "equals", "value": "x"}}]},
         "rule.any[1].not", "unknown field 'colour'"),
        ({"field": "last_activity_at", "op": "within_last", "value": 30}, "rule",
         '{"days": N}'),
        ({"field": "first_seen_at", "op": "after", "value": "yesterday"}, "rule",
         "must be a date (2026-01-31)"),
        ({"field": "property.size", "op": "between", "value": [40, 37, 2]}, "rule",
         "two bounds"),
        ({"count": "purchases", "op": "gte"}, "rule", "needs a value"),
        ({"sum": "spent", "op": "gt", "value": 10}, "rule", "needs a currency"),
        ({"field": "list.news", "op": "equals", "value": "subscribd"}, "rule",
         "must be one of pending, subscribed"),
        ({"all": [{"field": "country", "op": "is_set", "value": "x"}]}, "rule.all[0]",
         "unexpected key value"),
        ({"segment": "Bad Id"}, "rule", "segment id"),
        ({"all": [{"field": "country", "op": "equals", "value": "ES"}], "any": []}, "rule",
         "exactly one key"),
        # Numbers a JSON parser may let through (NaN, Infinity) or no database stores
        # exactly: stored, they would come back as something else.
        ({"field": "property.x", "op": "gt", "value": float("nan")}, "rule", "finite number"),
        ({"field": "property.x", "op": "between", "value": [float("-inf"), 3]}, "rule",
         "finite number"),
        ({"field": "property.x", "op": "equals", "value": float("inf")}, "rule",
         "finite number"),
        ({"field": "property.x", "op": "in", "value": [1, float("nan")]}, "rule",
         "finite number"),
        ({"sum": "spent", "currency": "EUR", "op": "gt", "value": 10**400}, "rule",
         "between -10^18 and 10^18"),
        ({"count": "purchases", "op": "gt", "value": 10**30}, "rule", "between -10^18"),
        ({"count": "purchases", "within_days": 30, "op": "gt", "value": "1e30"}, "rule",
         "between -10^18"),
        ({"sum": "spent", "currency": "EUR", "op": "between", "value": ["0", "1e999999999"]},
         "rule", "between -10^18"),
        ({"sum": "spent", "currency": "eur", "op": "gt", "value": 10}, "rule",
         "in capitals, such as EUR; got 'eur'"),
        ({"count": "purchases", "op": "gt", "value": 1, "within_days": {"days": 30}}, "rule",
         "within_days must be a number of days"),
        ({"count": "purchases", "op": "gt", "value": 1, "within_days": -5}, "rule",
         "within_days must be a number of days"),
        ({"field": "tags", "op": "has", "value": "vip\x00"}, "rule", "NUL character"),
        ({"any": [{"field": "first_name", "op": "contains", "value": "a\x00"}]}, "rule.any[0]",
         "NUL character"),
        ({"field": "country", "op": "in", "value": ["ES"] * 1001}, "rule",
         "at most 1000 values"),
        ({"any": [{"field": "email", "op": "equals", "value": f"a{i}@x.com"}
                  for i in range(201)]}, "rule.any[200]", "at most 200 conditions"),
        ({"any": [{"field": "country", "op": "in", "value": [f"C{i}"] * 1000}
                  for i in range(6)]}, "rule.any[5]", "at most 5000 values"),
    ],
)
def test_a_bad_rule_is_refused_with_the_offending_clause(
    rule: Any, path: str, words: str
) -> None:
    with pytest.raises(RuleError) as caught:
        check_new_rule(rule)
    assert caught.value.path == path
    assert words in caught.value.message


def test_a_stored_rule_past_todays_limits_is_still_read() -> None:
    """Limits hold for rules being defined: a segment stored before one existed is read
    as it was (else its tenant's audience model would stop at it)."""
    wide = {"any": [{"field": "email", "op": "equals", "value": f"a{i}@x.com"}
                    for i in range(MAX_CONDITIONS + 1)]}
    huge = {"count": "purchases", "op": "gt", "value": 10**30}
    for rule in (wide, huge):
        with pytest.raises(RuleError):
            check_new_rule(rule)
        assert parse_rule(rule) is not None


def test_nesting_is_bounded() -> None:
    rule: dict[str, Any] = {"field": "tags", "op": "has", "value": "a"}
    for _ in range(40):
        rule = {"not": rule}
    with pytest.raises(RuleError, match="at most 32 levels"):
        parse_rule(rule)


# --------------------------------------------------------------------------- semantics


def test_text_fields_compare_without_case_and_languages_match_their_base() -> None:
    f = facts(fields={"country": "ES", "language": "es-MX", "city": "Sevilla"})
    assert holds({"field": "country", "op": "equals", "value": "es"}, f)
    assert holds({"field": "language", "op": "equals", "value": "es"}, f)
    assert not holds({"field": "language", "op": "equals", "value": "es-ES"}, f)
    assert holds({"field": "city", "op": "starts_with", "value": "sev"}, f)
    assert holds({"field": "country", "op": "not_in", "value": ["PT", "FR"]}, f)
    # not_equals is the negation of equals: an unset field is "not equal".
    assert holds({"field": "lead_status", "op": "not_equals", "value": "won"}, f)
    assert holds({"field": "lead_status", "op": "is_not_set"}, f)


def test_properties_compare_as_numbers_or_dates_by_the_condition_value() -> None:
    f = facts(properties={"size": "38", "score": 7.5, "renewal": "2026-12-01",
                          "interests": ["Surf", "yoga"], "vip": True})
    assert holds({"field": "property.size", "op": "between", "value": [37, 40]}, f)
    assert holds({"field": "property.size", "op": "equals", "value": 38}, f)
    assert not holds({"field": "property.size", "op": "gt", "value": 100}, f)  # not "38" > "100"
    assert holds({"field": "property.score", "op": "gte", "value": 7.5}, f)
    assert holds({"field": "property.renewal", "op": "lt", "value": "2027-01-01"}, f)
    assert holds({"field": "property.interests", "op": "contains", "value": "surf"}, f)
    assert holds({"field": "property.interests", "op": "in", "value": ["golf", "YOGA"]}, f)
    assert holds({"field": "property.vip", "op": "equals", "value": True}, f)
    assert not holds({"field": "property.vip", "op": "equals", "value": "yes"}, f)
    assert not holds({"field": "property.missing", "op": "gt", "value": 1}, f)


def test_tags_consent_lists_engagement_and_segments() -> None:
    f = facts(tags={"vip"}, consent={"email": True},
              lists={"news": ["subscribed", at(10)], "promo": ["pending", at(5)]},
              suppressed_at=at(1))
    assert holds({"field": "tags", "op": "has", "value": " VIP "}, f)
    assert holds({"field": "tags", "op": "has_not", "value": "no-show"}, f)
    assert holds({"field": "consent.email", "op": "equals", "value": True}, f)
    assert holds({"field": "consent.sms", "op": "is_not_set"}, f)
    # A hard bounce after the subscription suppresses it.
    assert holds({"field": "list.news", "op": "equals", "value": "suppressed"}, f)
    assert holds({"field": "engagement", "op": "in", "value": ["engaged"]}, f,
                 engagement="engaged")
    assert holds({"segment": "buyers"}, f, segments={"buyers"})
    assert not holds({"not": {"segment": "buyers"}}, f, segments={"buyers"})


def test_counts_and_sums_within_a_window() -> None:
    f = facts(activity=[
        ["purchase", at(400), "500.00", "EUR"],
        ["purchase", at(20), "30.50", "EUR"],
        ["purchase", at(10), "99.00", "USD"],
        ["refund", at(5), "10.50", "EUR"],
        ["booking", at(3), None, None],
    ])
    assert holds({"count": "purchases", "op": "equals", "value": 3}, f)
    assert holds({"count": "purchases", "within_days": 30, "op": "equals", "value": 2}, f)
    assert holds({"sum": "spent", "currency": "EUR", "op": "equals", "value": 520}, f)
    assert holds({"sum": "spent", "currency": "EUR", "within_days": 365, "op": "equals",
                  "value": "20.00"}, f)
    assert holds({"count": "bookings", "within_days": 7, "op": "gte", "value": 1}, f)


def test_relative_dates_flip_at_the_exact_instant() -> None:
    f = facts(last_interaction_at=at(29))
    rule = parse_rule({"field": "last_interaction_at", "op": "within_last", "value": {"days": 30}})
    ctx = Context(now=NOW)
    assert rule.evaluate(f, ctx, None)
    flip = rule.next_change(f, ctx)
    assert flip == utc_iso(datetime(2026, 11, 24, 12, tzinfo=UTC))
    just_before = utc_iso(datetime(2026, 11, 24, 11, 59, 59, 999999, tzinfo=UTC))
    assert rule.evaluate(f, Context(now=just_before), None)
    assert not rule.evaluate(f, Context(now=flip), None)
    older = parse_rule({"field": "last_interaction_at", "op": "more_than_ago",
                        "value": {"days": 30}})
    assert not older.evaluate(f, Context(now=just_before), None)
    assert older.evaluate(f, Context(now=flip), None)


# -------------------------------------------------------------- properties: timing, schema

moments = st.integers(min_value=0, max_value=400 * 24).map(lambda h: at(h / 24))


@st.composite
def leaves(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(st.sampled_from(["date", "count", "sum", "tag", "field"]))
    days = draw(st.sampled_from([1, 7, 30, 90, 365]))
    if kind == "date":
        return {"field": draw(st.sampled_from(["last_interaction_at", "first_seen_at",
                                               "last_purchase_at"])),
                "op": draw(st.sampled_from(["within_last", "more_than_ago"])),
                "value": {"days": days}}
    if kind == "count":
        return {"count": draw(st.sampled_from(["purchases", "bookings", "forms"])),
                "within_days": days,
                "op": draw(st.sampled_from(["gte", "gt", "lt", "lte", "equals", "not_equals"])),
                "value": draw(st.integers(0, 3))}
    if kind == "sum":
        return {"sum": "spent", "currency": "EUR", "within_days": days,
                "op": draw(st.sampled_from(["gt", "gte", "lt", "lte", "equals"])),
                "value": draw(st.integers(-50, 200))}
    if kind == "tag":
        return {"field": "tags", "op": draw(st.sampled_from(["has", "has_not"])),
                "value": draw(st.sampled_from(["vip", "lead"]))}
    return {"field": "country", "op": "in", "value": ["ES", "PT"]}


def rule_trees(leaf: st.SearchStrategy[dict[str, Any]],
               max_leaves: int) -> st.SearchStrategy[dict[str, Any]]:
    """Rules nesting ``leaf`` conditions in all / any / not groups."""
    return st.recursive(
        leaf,
        lambda inner: st.one_of(
            st.builds(lambda xs: {"all": xs}, st.lists(inner, min_size=1, max_size=3)),
            st.builds(lambda xs: {"any": xs}, st.lists(inner, min_size=1, max_size=3)),
            st.builds(lambda x: {"not": x}, inner),
        ),
        max_leaves=max_leaves,
    )


rules = rule_trees(leaves(), max_leaves=6)


@st.composite
def contact_facts(draw: st.DrawFn) -> ContactFacts:
    activity = sorted(
        ([draw(st.sampled_from(["purchase", "refund", "booking", "form"])), draw(moments),
          str(draw(st.integers(1, 150))), "EUR"] for _ in range(draw(st.integers(0, 6)))),
        key=lambda e: (e[1], e[0], e[2]),
    )
    return facts(
        fields={"country": draw(st.sampled_from(["ES", "PT", "FR"]))},
        tags=set(draw(st.lists(st.sampled_from(["vip", "lead"]), max_size=2))),
        first_seen_at=draw(moments),
        last_interaction_at=draw(st.one_of(st.none(), moments)),
        last_purchase_at=draw(st.one_of(st.none(), moments)),
        activity=activity,
    )


def test_a_group_that_one_item_holds_waits_for_that_item() -> None:
    """A contact who cannot enter by time alone is not woken for nothing; one who can is
    woken when the last item holding the group back changes."""
    f = facts(last_interaction_at=at(29), activity=[
        ["purchase", at(300), "10.00", "EUR"], ["purchase", at(100), "15.00", "EUR"]])
    recent = {"field": "last_interaction_at", "op": "within_last", "value": {"days": 30}}
    one_purchase = {"count": "purchases", "within_days": 365, "op": "lte", "value": 1}
    big_spender = {"sum": "spent", "currency": "EUR", "op": "gt", "value": 100}
    ctx = Context(now=NOW)
    # Held false by a sum that time cannot change: nothing to schedule.
    stuck = parse_rule({"all": [big_spender, one_purchase, recent]})
    assert not stuck.evaluate(f, ctx, None)
    assert stuck.next_change(f, ctx) is None
    # Held false by the window count alone: woken when the older purchase leaves it.
    waiting = parse_rule({"all": [one_purchase, recent]})
    assert not waiting.evaluate(f, ctx, None)
    assert waiting.next_change(f, ctx) == utc_iso(
        datetime(2026, 11, 23, 12, tzinfo=UTC) + timedelta(days=65))
    # A true "any" held by an item that never changes by itself.
    held = parse_rule({"any": [{"field": "country", "op": "is_not_set"}, recent]})
    assert held.evaluate(f, ctx, None)
    assert held.next_change(f, ctx) is None
    # A true "all" changes as soon as any item does: the recent interaction ages first.
    both = parse_rule({"all": [recent, {"count": "purchases", "op": "gte", "value": 2}]})
    assert both.next_change(f, ctx) == utc_iso(
        datetime(2026, 11, 23, 12, tzinfo=UTC) + timedelta(days=1))


@settings(max_examples=300, deadline=None)
@given(rules, contact_facts(), st.floats(min_value=0.0, max_value=0.999999))
def test_a_rule_keeps_its_value_until_its_next_change(
    raw: dict[str, Any], f: ContactFacts, fraction: float
) -> None:
    """Scheduling is sound: between now and next_change nothing flips by itself."""
    rule = parse_rule(raw)
    now = NOW
    trace: dict[str, bool] = {}
    value = rule.evaluate(f, Context(now=now), trace)
    change = rule.next_change(f, Context(now=now))
    assert rule.next_change(f, Context(now=now), trace) == change  # read from the trace
    if change is None:
        later = utc_iso(datetime(2036, 1, 1, tzinfo=UTC))
        assert rule.evaluate(f, Context(now=later), None) == value
        return
    assert change > now
    start = datetime.fromisoformat(now.replace("Z", "+00:00"))
    end = datetime.fromisoformat(change.replace("Z", "+00:00"))
    probe = utc_iso(start + (end - start) * fraction)
    if probe < change:
        assert rule.evaluate(f, Context(now=probe), None) == value


@settings(max_examples=300, deadline=None)
@given(leaves().filter(lambda raw: "within_days" in raw), contact_facts())
def test_a_count_or_sum_flips_exactly_at_its_next_change(
        raw: dict[str, Any], f: ContactFacts) -> None:
    """Not only sound but exact: at the scheduled instant the value does change."""
    rule = parse_rule(raw)
    value = rule.evaluate(f, Context(now=NOW), None)
    change = rule.next_change(f, Context(now=NOW))
    if change is not None:
        assert rule.evaluate(f, Context(now=change), None) != value


@settings(max_examples=200, deadline=None)
@given(rules)
def test_the_json_schema_accepts_every_rule_the_parser_accepts(raw: dict[str, Any]) -> None:
    parse_rule(raw)
    errors = list(SCHEMA.iter_errors(raw))
    assert not errors, errors[0].message


def test_the_json_schema_refuses_what_the_parser_refuses() -> None:
    validator = jsonschema.Draft202012Validator(json.loads(SCHEMA_FILE.read_text()))
    for bad in ({"field": "country", "op": "eq", "value": "ES"},
                {"all": []},
                {"count": "purchases", "op": "gt"},
                {"field": "last_activity_at", "op": "within_last", "value": 30}):
        assert list(validator.iter_errors(bad)), bad
        with pytest.raises(RuleError):
            parse_rule(bad)


def test_date_arithmetic_at_the_ends_of_the_calendar_does_not_fail() -> None:
    f = facts(last_interaction_at="9999-12-31T00:00:00.000000Z",
              first_seen_at="0001-01-01T00:00:00.000000Z")
    rule = parse_rule({"all": [
        {"field": "last_interaction_at", "op": "within_last", "value": {"days": 90}},
        {"field": "first_seen_at", "op": "more_than_ago", "value": {"days": 90}}]})
    assert rule.evaluate(f, Context(now=NOW), None)
    assert rule.next_change(f, Context(now=NOW)) == "9999-12-31T23:59:59.999999Z"


# ------------------------------------------------------- fast paths agree with slow ones

INSTANTS = st.sampled_from([at(d) for d in (0, 0.5, 1, 29.9, 30, 30.1, 90, 364, 365, 400)])


@settings(max_examples=200, deadline=None)
@given(items=st.lists(st.tuples(INSTANTS, st.none() | st.sampled_from(["5.00", "70.00"]),
                                st.none() | st.sampled_from(["EUR", "USD"])), max_size=8),
       moment=st.none() | INSTANTS)
# Two items of one instant, one without amount: comparing them once raised a TypeError.
@example(items=[(at(0), None, None), (at(0), None, "EUR")], moment=None)
def test_the_items_since_a_moment_are_those_after_it(
        items: list[tuple[str, str | None, str | None]], moment: str | None) -> None:
    f = facts(activity=[("purchase", *item) for item in items])
    expected = [list(item) for item in sorted(
        items, key=lambda i: (i[0], i[1] or "", i[2] or ""))
        if moment is None or item[0] > moment]
    assert f.since("purchase", moment) == expected


LEAVES = [
    {"field": "country", "op": "in", "value": ["ES", "PT"]},
    {"field": "tags", "op": "has", "value": "vip"},
    {"field": "engagement", "op": "equals", "value": "engaged"},
    {"count": "purchases", "within_days": 30, "op": "gte", "value": 1},
    {"sum": "spent", "currency": "EUR", "op": "gt", "value": 50},
    {"field": "last_interaction_at", "op": "within_last", "value": {"days": 90}},
]
RULES = st.recursive(
    st.sampled_from(LEAVES),
    lambda inner: st.one_of(
        st.lists(inner, min_size=1, max_size=3).map(lambda items: {"all": items}),
        st.lists(inner, min_size=1, max_size=3).map(lambda items: {"any": items}),
        inner.map(lambda item: {"not": item})),
    max_leaves=6)


@settings(max_examples=200, deadline=None)
@given(rule=RULES, country=st.sampled_from(["ES", "FR"]), vip=st.booleans(),
       engagement=st.sampled_from(["engaged", "inactive"]),
       purchases=st.lists(st.tuples(INSTANTS, st.sampled_from(["5.00", "70.00"])), max_size=3),
       interacted=st.none() | INSTANTS)
def test_the_answer_alone_is_the_value_a_trace_records(
        rule: dict[str, Any], country: str, vip: bool, engagement: str,
        purchases: list[tuple[str, str]], interacted: str | None) -> None:
    f = facts(activity=[("purchase", when, amount, "EUR") for when, amount in purchases],
              last_interaction_at=interacted)
    f.fields = {"country": country}
    f.tags = {"vip"} if vip else set()
    node = parse_rule(rule)
    ctx = Context(now=NOW, engagement=engagement)
    trace: dict[str, bool] = {}
    assert node.answer(f, ctx) == node.evaluate(f, ctx, trace) == node.value_in(trace)
