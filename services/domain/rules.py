"""The segment rule language: parsing with errors that name the clause, and evaluation.

A rule is JSON. Groups nest to any depth::

    {"all": [rule, ...]}    every one holds
    {"any": [rule, ...]}    at least one holds
    {"not": rule}           it does not hold

and leaves are conditions::

    {"field": "country", "op": "in", "value": ["ES", "PT"]}
    {"field": "tags", "op": "has", "value": "vip"}
    {"field": "property.shoe_size", "op": "between", "value": [37, 40]}
    {"field": "last_interaction_at", "op": "within_last", "value": {"days": 30}}
    {"count": "purchases", "within_days": 365, "op": "gte", "value": 2}
    {"sum": "spent", "currency": "EUR", "op": "gt", "value": 100}
    {"segment": "newsletter-readers"}

The full list of fields, operators and values is in docs/segments.md and in the JSON
Schema ``contracts/schemas/segment-rule.json``, generated from the tables below.

Every node carries its path (``rule.all[1].any[0]``), which errors name and which
membership provenance records as the clause that flipped.

Time: rules are evaluated at an instant ``now`` given by the caller (the projection's
clock, itself driven by the event log), never the wall clock. ``next_change`` tells the
earliest later instant at which a rule may change its value by time alone, so that the
projection can schedule the contact's re-evaluation at exactly that instant; a group
that one item holds (a false ``all``, a true ``any``) waits for that item, so that a
contact who cannot enter is not woken for nothing. Engagement, RFM and other segments
change at instants the projection schedules itself, which re-evaluate every rule.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal, InvalidOperation
from functools import cached_property
from typing import Any

from contracts.events import CONSENT_CHANNELS
from services.domain.contact import CARD_FIELDS
from services.domain.facts import ContactFacts, days_after, days_before
from services.domain.rfm import GROUPS as RFM_GROUPS
from services.domain.stamps import utc_iso
from services.domain.text import NUL_PROBLEM, has_nul
from services.instants import parse_instant

TEXT_FIELDS = ("email", *CARD_FIELDS, "member_status")
DATE_FIELDS = ("first_seen_at", "last_activity_at", "last_interaction_at", "last_purchase_at")
LIST_STATES = ("pending", "subscribed", "unsubscribed", "suppressed")
RFM_SCORES = ("rfm.recency", "rfm.frequency", "rfm.monetary")
ENGAGEMENT_STATUSES = ("engaged", "not_engaged", "inactive")

TEXT_OPS = ("equals", "not_equals", "in", "not_in", "contains", "starts_with",
            "is_set", "is_not_set")
CHOICE_OPS = ("equals", "not_equals", "in", "not_in", "is_set", "is_not_set")
DATE_OPS = ("before", "after", "between", "within_last", "more_than_ago",
            "is_set", "is_not_set")
NUMBER_OPS = ("equals", "not_equals", "gt", "gte", "lt", "lte", "between")
PROPERTY_OPS = (*TEXT_OPS, "gt", "gte", "lt", "lte", "between")
TAG_OPS = ("has", "has_not")
CONSENT_OPS = ("equals", "is_set", "is_not_set")

# count name -> the activity kind it counts
COUNTS = {
    "purchases": "purchase",
    "refunds": "refund",
    "bookings": "booking",
    "cancellations": "cancellation",
    "no_shows": "no_show",
    "forms": "form",
    "surveys": "survey",
    "email_opens": "open",
    "email_clicks": "click",
}
# sum name -> (activity kind, sign) pairs it adds up
SUMS = {
    "spent": (("purchase", 1), ("refund", -1)),
    "purchased": (("purchase", 1),),
    "refunded": (("refund", 1),),
}

NAME_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$"
SEGMENT_ID_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,63}$"
_NAME = re.compile(NAME_PATTERN)
_SEGMENT_ID = re.compile(SEGMENT_ID_PATTERN)
_NUMBER_TEXT = re.compile(r"^\s*-?\d+(\.\d+)?\s*$")
MAX_DEPTH = 32
MAX_DAYS = 36500
# A rule's size: the conditions it holds, the values of one list ("in", "not_in") and of
# all its lists. Rules are evaluated for every contact a change touches and turned into
# SQL for previews and backfills, where a longer one would exceed the databases' limits
# (SQLite's expression depth, bound parameters).
MAX_CONDITIONS = 200
MAX_LIST_VALUES = 1000
MAX_RULE_VALUES = 5000
# Numbers in rules: finite, and of a size both databases store exactly.
MAX_NUMBER = Decimal(10) ** 18


def is_segment_id(value: Any) -> bool:
    return isinstance(value, str) and _SEGMENT_ID.match(value) is not None


class RuleError(ValueError):
    """A rule that does not validate: ``path`` names the offending clause."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path
        self.message = message


@dataclass
class Context:
    """What a rule is evaluated with besides the facts."""

    now: str
    segments: set[str] = field(default_factory=set)
    engagement: str | None = None
    # RFM group and the three scores (1-5; None for contacts who never bought)
    rfm_group: str | None = None
    rfm_scores: dict[str, int] = field(default_factory=dict)
    soft_bounce_limit: int = 3  # the tenant's: soft bounces that suppress an address


# ------------------------------------------------------------------------------- nodes


class Node:
    path: str

    def evaluate(self, facts: ContactFacts, ctx: Context, trace: dict[str, bool] | None) -> bool:
        raise NotImplementedError

    def answer(self, facts: ContactFacts, ctx: Context) -> bool:
        """The value alone (``evaluate`` without a trace), as cheaply as it can be had."""
        return self.evaluate(facts, ctx, None)

    def next_change(self, facts: ContactFacts, ctx: Context,
                    trace: dict[str, bool] | None = None) -> str | None:
        """The earliest later instant at which the value may change by time alone; with
        ``trace`` (filled by ``evaluate`` at the same instant) groups read their items'
        values there instead of evaluating them again."""
        return None

    def value_in(self, trace: dict[str, bool]) -> bool:
        """The value that an ``evaluate`` filling ``trace`` returned."""
        raise NotImplementedError

    def cost(self) -> int:
        """A rough relative cost of evaluating the node (a group tries cheap items first)."""
        return 1

    def children(self) -> tuple[Node, ...]:
        return ()

    def walk(self) -> Iterator[Node]:
        yield self
        for child in self.children():
            yield from child.walk()

    def references(self) -> set[str]:
        return {n.segment_id for n in self.walk() if isinstance(n, SegmentRef)}

    def reads(self) -> frozenset[str]:
        """The parts of a contact's facts the value depends on at a given instant, named
        as ``ContactFacts.touched_by`` names them: a change of the facts that touches none
        of them leaves the value as it was (references to segments are not counted here:
        ``TenantRules.to_evaluate`` follows them)."""
        return frozenset().union(*(child.reads() for child in self.children()))

    def volatile(self) -> bool:
        """True when the value can change as time passes with the facts as they are
        (relative dates, windowed counts and sums, engagement, RFM)."""
        return any(child.volatile() for child in self.children())

    def describe(self) -> str:
        raise NotImplementedError


@dataclass
class Group(Node):
    path: str
    kind: str  # all | any | not
    items: tuple[Node, ...]

    def evaluate(self, facts: ContactFacts, ctx: Context, trace: dict[str, bool] | None) -> bool:
        if trace is None:
            return self.answer(facts, ctx)
        # No short-circuit: the trace records every leaf's value, which provenance compares.
        values = [item.evaluate(facts, ctx, trace) for item in self.items]
        if self.kind == "all":
            result = all(values)
        elif self.kind == "any":
            result = any(values)
        else:
            result = not values[0]
        return result

    def answer(self, facts: ContactFacts, ctx: Context) -> bool:
        """Stop at the first decisive item, trying the cheap items first (a preview asks
        this of every candidate contact: plain loops, no generator per group)."""
        if self.kind == "all":
            for answer in self._cheap_answers:  # noqa: SIM110 - a generator per call costs more
                if not answer(facts, ctx):
                    return False
            return True
        if self.kind == "any":
            for answer in self._cheap_answers:  # noqa: SIM110
                if answer(facts, ctx):
                    return True
            return False
        return not self.items[0].answer(facts, ctx)

    @cached_property
    def _cheap_first(self) -> tuple[Node, ...]:
        return tuple(sorted(self.items, key=lambda item: item.cost()))

    @cached_property
    def _cheap_answers(self) -> tuple[Callable[[ContactFacts, Context], bool], ...]:
        return tuple(item.answer for item in self._cheap_first)

    def cost(self) -> int:
        return sum(item.cost() for item in self.items)

    def value_in(self, trace: dict[str, bool]) -> bool:
        if self.kind == "all":
            return all(item.value_in(trace) for item in self.items)
        if self.kind == "any":
            return any(item.value_in(trace) for item in self.items)
        return not self.items[0].value_in(trace)

    def next_change(self, facts: ContactFacts, ctx: Context,
                    trace: dict[str, bool] | None = None) -> str | None:
        if self.kind == "not":
            return self.items[0].next_change(facts, ctx, trace)
        values = ([item.value_in(trace) for item in self.items] if trace is not None
                  else [item.evaluate(facts, ctx, None) for item in self.items])
        value = all(values) if self.kind == "all" else any(values)
        if value == (self.kind == "any"):
            # A true "any" stays true while one true item does, a false "all" false while
            # one false item does: the group holds until the last of those changes (never
            # by time alone, if one of them never does).
            changes = [item.next_change(facts, ctx, trace)
                       for item, v in zip(self.items, values, strict=True) if v == value]
            return None if None in changes else max(changes)  # type: ignore[type-var]
        return _earliest(item.next_change(facts, ctx, trace) for item in self.items)

    def children(self) -> tuple[Node, ...]:
        return self.items

    def describe(self) -> str:
        if self.kind == "not":
            return f"not ({self.items[0].describe()})"
        joiner = " and " if self.kind == "all" else " or "
        return "(" + joiner.join(item.describe() for item in self.items) + ")"


@dataclass
class Leaf(Node):
    path: str

    def evaluate(self, facts: ContactFacts, ctx: Context, trace: dict[str, bool] | None) -> bool:
        result = self.test(facts, ctx)
        if trace is not None:
            trace[self.path] = result
        return result

    def answer(self, facts: ContactFacts, ctx: Context) -> bool:
        return self.test(facts, ctx)

    def test(self, facts: ContactFacts, ctx: Context) -> bool:
        raise NotImplementedError

    def value_in(self, trace: dict[str, bool]) -> bool:
        return trace[self.path]


@dataclass
class FieldCondition(Leaf):
    field_name: str  # as written: "country", "property.size", "list.news", ...
    op: str
    value: Any

    def actual(self, facts: ContactFacts, ctx: Context) -> Any:
        name = self.field_name
        if name in TEXT_FIELDS:
            if name == "email":
                return facts.email
            if name == "member_status":
                return facts.member_status
            return facts.fields.get(name)
        if name in DATE_FIELDS:
            return getattr(facts, name)
        if name == "engagement":
            return ctx.engagement
        if name == "rfm.group":
            return ctx.rfm_group
        if name in RFM_SCORES:
            return ctx.rfm_scores.get(name)
        prefix, _, key = name.partition(".")
        if prefix == "property":
            return facts.properties.get(key)
        if prefix == "consent":
            return facts.consent.get(key)
        if prefix == "list":
            return facts.list_state(key, ctx.soft_bounce_limit)
        raise AssertionError(name)

    @cached_property
    def _choices(self) -> frozenset[str] | None:
        """For "equals" / "in" with text values on a field compared as lowercase text:
        the values, so that a text value is tested by one set lookup."""
        values = [self.value] if self.op == "equals" else self.value if self.op == "in" else None
        if (values is None or self.field_name in ("tags", "language")
                or self.field_name in DATE_FIELDS or self.field_name in RFM_SCORES
                or not all(isinstance(v, str) for v in values)):
            return None
        return frozenset(values)

    def test(self, facts: ContactFacts, ctx: Context) -> bool:
        op, expected = self.op, self.value
        choices = self._choices
        if choices is not None:
            actual = self.actual(facts, ctx)
            if isinstance(actual, str):
                return actual.lower() in choices
        if self.field_name == "tags":
            present = expected in facts.tags
            return present if op == "has" else not present
        actual = self.actual(facts, ctx)
        if op == "is_set":
            return actual is not None and actual != ""
        if op == "is_not_set":
            return actual is None or actual == ""
        if self.field_name in DATE_FIELDS:
            return _date_test(op, actual, expected, ctx.now)
        if self.field_name in RFM_SCORES:
            return actual is not None and _compare_number(op, Decimal(actual), expected)
        if op == "not_equals":
            return not _matches(self.field_name, actual, "equals", expected)
        if op == "not_in":
            return not _matches(self.field_name, actual, "in", expected)
        return _matches(self.field_name, actual, op, expected)

    def next_change(self, facts: ContactFacts, ctx: Context,
                    trace: dict[str, bool] | None = None) -> str | None:
        if self.field_name in DATE_FIELDS and self.op in ("within_last", "more_than_ago"):
            moment = getattr(facts, self.field_name)
            # Both flip at moment + N days; if that is already past, nothing is scheduled.
            if moment is None or moment <= days_before(ctx.now, self.value):
                return None
            return days_after(moment, self.value)
        return None

    def reads(self) -> frozenset[str]:
        name = self.field_name
        if name == "email":
            return frozenset()  # a contact's identity never changes
        if name == "engagement":  # services.domain.engagement
            return frozenset({"last_interaction_at", "first_seen_at"})
        if name.startswith("rfm."):  # services.domain.rfm, with the day's cuts
            return frozenset({"last_purchase_at", "activity.purchase", "activity.refund"})
        if name.startswith("list."):
            return frozenset({"lists"})  # a bounce changes the state of every list
        return frozenset({name})  # card fields, dates, tags, property.x, consent.x

    def volatile(self) -> bool:
        name = self.field_name
        return (name == "engagement" or name.startswith("rfm.")
                or (name in DATE_FIELDS and self.op in ("within_last", "more_than_ago")))

    def describe(self) -> str:
        if self.op in ("is_set", "is_not_set"):
            return f"{self.field_name} {self.op.replace('_', ' ')}"
        if self.op in ("within_last", "more_than_ago"):
            return f"{self.field_name} {self.op.replace('_', ' ')} {self.value:g} days"
        return f"{self.field_name} {self.op.replace('_', ' ')} {_shown(self.value)}"


@dataclass
class Aggregate(Leaf):
    """A count or a sum of activity, optionally within the last N days."""

    name: str  # "purchases", "spent", ...
    kinds: tuple[tuple[str, int], ...]  # activity kind, sign
    currency: str | None  # sums only
    within_days: float | None
    op: str
    value: Any  # Decimal or (Decimal, Decimal)

    def measure(self, facts: ContactFacts, now: str) -> Decimal | int:
        since = None if self.within_days is None else days_before(now, self.within_days)
        # Written out without a call per item or kind: a preview evaluates this for every
        # candidate contact.
        if self.currency is None:
            count = 0
            for kind, _ in self.kinds:
                count += len(facts.since(kind, since))
            return count
        # The sum of ``_worth`` over the window's items.
        total = Decimal(0)
        currency = self.currency
        for kind, sign in self.kinds:
            items = facts.since(kind, since)
            if not items:
                continue
            part = sum(Decimal(amount) for _, amount, paid_in in items
                       if paid_in == currency and amount is not None)
            total += part if sign > 0 else -part
        return total

    def _worth(self, item: list[Any], sign: int) -> Decimal:
        """What one activity item adds to the total."""
        if self.currency is None:
            return Decimal(1)
        _, amount, currency = item
        if currency != self.currency or amount is None:
            return Decimal(0)
        return sign * Decimal(amount)

    def cost(self) -> int:
        return 2 if self.currency is None else 3

    def test(self, facts: ContactFacts, ctx: Context) -> bool:
        return _compare_number(self.op, self.measure(facts, ctx.now), self.value)

    def needs_activity(self) -> bool:
        """True when a contact without any item of the counted kinds cannot match."""
        return not _compare_number(self.op, Decimal(0), self.value)

    def next_change(self, facts: ContactFacts, ctx: Context,
                    trace: dict[str, bool] | None = None) -> str | None:
        """The instant the comparison flips as the window's items leave it, oldest first
        (items of one instant leave together); None if it holds whatever leaves."""
        if self.within_days is None:
            return None
        since = days_before(ctx.now, self.within_days)
        items = sorted(((item[0], self._worth(item, sign))
                        for kind, sign in self.kinds for item in facts.since(kind, since)),
                       key=lambda pair: pair[0])
        total = sum((worth for _, worth in items), Decimal(0))
        holds = _compare_number(self.op, total, self.value)
        for i, (at, worth) in enumerate(items):
            total -= worth
            last_of_instant = i + 1 == len(items) or items[i + 1][0] != at
            if last_of_instant and _compare_number(self.op, total, self.value) != holds:
                return days_after(at, self.within_days)
        return None

    def reads(self) -> frozenset[str]:
        return frozenset(f"activity.{kind}" for kind, _ in self.kinds)

    def volatile(self) -> bool:
        return self.within_days is not None

    def describe(self) -> str:
        what = self.name if self.currency is None else f"{self.name} in {self.currency}"
        window = "" if self.within_days is None else f" in the last {self.within_days:g} days"
        return f"{what}{window} {self.op} {_shown(self.value)}"


@dataclass
class SegmentRef(Leaf):
    segment_id: str

    def test(self, facts: ContactFacts, ctx: Context) -> bool:
        return self.segment_id in ctx.segments

    def describe(self) -> str:
        return f"in segment {self.segment_id}"


# ----------------------------------------------------------------------------- parsing


def parse_rule(obj: Any, path: str = "rule") -> Node:
    """Turn a JSON rule into nodes, or raise RuleError naming the offending clause.

    Stored rules are read with it too, so it checks what a rule means, not how large it
    may be: ``check_new_rule`` adds the limits for rules being defined (a rule stored
    before a limit existed must still be read, or its tenant's segments would stop)."""
    return _parse_node(obj, path, 0)


def check_new_rule(obj: Any) -> Node:
    """``parse_rule`` for a rule being defined, edited or previewed, with its limits: at
    most ``MAX_CONDITIONS`` conditions, ``MAX_LIST_VALUES`` values a list and
    ``MAX_RULE_VALUES`` in all, numbers under ``MAX_NUMBER``, and no NUL in any text.
    The limits are checked on the JSON first, so an oversized rule is refused before it
    is built."""
    counted = [0, 0]  # conditions, values

    def walk(node: Any, path: str, depth: int) -> None:
        if depth > MAX_DEPTH:
            return  # parse_rule says so, naming the clause
        if isinstance(node, dict):
            group = next((k for k in ("all", "any", "not") if k in node), None)
            if group is not None:
                inner = node[group]
                if group == "not":
                    walk(inner, f"{path}.not", depth + 1)
                elif isinstance(inner, list):
                    for i, item in enumerate(inner):
                        walk(item, f"{path}.{group}[{i}]", depth + 1)
                return
            counted[0] += 1
            value = node.get("value")
            listed = len(value) if isinstance(value, list) and node.get("op") in (
                "in", "not_in") else 1
            if listed > MAX_LIST_VALUES:
                raise RuleError(path, f"a list takes at most {MAX_LIST_VALUES} values; "
                                f"got {listed}")
            counted[1] += listed
            if counted[0] > MAX_CONDITIONS:
                raise RuleError(path, f"a rule holds at most {MAX_CONDITIONS} conditions; "
                                "for more, split it into segments and refer to them "
                                '({"segment": "id"})')
            if counted[1] > MAX_RULE_VALUES:
                raise RuleError(path, f"a rule holds at most {MAX_RULE_VALUES} values in "
                                "all; for longer lists of people, use an email list or a tag")
            for problem in _unstorable(node):
                raise RuleError(path, problem)
            if "count" in node or "sum" in node:  # their values may be numbers as text
                bounds = value if isinstance(value, list) else [value]
                for bound in bounds:
                    if isinstance(bound, str) and _too_large(bound):
                        raise RuleError(path, "a number of this condition is not between "
                                        f"-10^18 and 10^18: {_shown(bound)}")

    walk(obj, "rule", 0)
    return parse_rule(obj)


def _too_large(text: str) -> bool:
    try:
        number = Decimal(text.strip())
    except InvalidOperation:
        return False  # (the parser says what it must be)
    return number.is_finite() and number.copy_abs() >= MAX_NUMBER  # (abs() may overflow)


def _unstorable(value: Any, depth: int = 0) -> Iterator[str]:
    """What of a condition's JSON no database would keep as written: text with a NUL,
    numbers of 10^18 or more. (A value nests two levels at most; deeper, the parser
    refuses it whatever it holds.)"""
    if depth > 8:
        return
    if isinstance(value, str):
        if has_nul(value):
            yield f"a text of this condition {NUL_PROBLEM}"
    elif isinstance(value, bool):
        return
    elif isinstance(value, int | float):
        if isinstance(value, float) and not math.isfinite(value):
            return  # the parser says it must be finite, naming the condition's value
        if abs(value) >= MAX_NUMBER:
            yield ("a number of this condition is not between -10^18 and 10^18: "
                   f"{_shown(value)}")
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _unstorable(key, depth + 1)
            yield from _unstorable(item, depth + 1)
    elif isinstance(value, list):
        for item in value:
            yield from _unstorable(item, depth + 1)


def _parse_node(obj: Any, path: str, depth: int) -> Node:
    if depth > MAX_DEPTH:
        raise RuleError(path, f"rules may nest at most {MAX_DEPTH} levels deep")
    if not isinstance(obj, dict):
        raise RuleError(path, f"expected an object (a group or a condition), got {_kind(obj)}")
    groups = [key for key in ("all", "any", "not") if key in obj]
    if groups:
        if len(obj) != 1:
            extra = sorted(set(obj) - {groups[0]})
            raise RuleError(path, f"a group has exactly one key; remove {', '.join(extra)}")
        kind = groups[0]
        inner = obj[kind]
        if kind == "not":
            return Group(path, "not", (_parse_node(inner, f"{path}.not", depth + 1),))
        if not isinstance(inner, list) or not inner:
            raise RuleError(path, f'"{kind}" takes a non-empty list of rules')
        items = tuple(
            _parse_node(item, f"{path}.{kind}[{i}]", depth + 1) for i, item in enumerate(inner)
        )
        return Group(path, kind, items)
    if "segment" in obj:
        _only(obj, {"segment"}, path)
        segment_id = obj["segment"]
        if not is_segment_id(segment_id):
            raise RuleError(path, f"segment must be a segment id ({SEGMENT_ID_PATTERN})")
        return SegmentRef(path, segment_id)
    if "count" in obj or "sum" in obj:
        return _parse_aggregate(obj, path)
    if "field" in obj:
        return _parse_field(obj, path)
    raise RuleError(
        path,
        'expected a group ("all", "any", "not") or a condition ("field", "count", "sum", '
        f'"segment"); got keys {", ".join(sorted(obj)) or "none"}',
    )


def _parse_field(obj: dict[str, Any], path: str) -> FieldCondition:
    name = obj["field"]
    if not isinstance(name, str):
        raise RuleError(path, f"field must be a string, got {_kind(name)}")
    ops = _ops_for(name, path)
    op = obj.get("op")
    if op not in ops:
        raise RuleError(
            path, f"op for field {name} must be one of {', '.join(ops)}; got {_shown(op)}"
        )
    if op in ("is_set", "is_not_set"):
        _only(obj, {"field", "op"}, path)
        return FieldCondition(path, name, op, None)
    _only(obj, {"field", "op", "value"}, path)
    if "value" not in obj:
        raise RuleError(path, f"op {op} needs a value")
    return FieldCondition(path, name, op, _check_value(name, op, obj["value"], path))


def _ops_for(name: str, path: str) -> tuple[str, ...]:
    if name in TEXT_FIELDS:
        return TEXT_OPS
    if name in DATE_FIELDS:
        return DATE_OPS
    if name == "tags":
        return TAG_OPS
    if name == "engagement":
        return CHOICE_OPS[:4]
    if name == "rfm.group":
        return CHOICE_OPS[:4]
    if name in RFM_SCORES:
        return NUMBER_OPS
    prefix, dot, key = name.partition(".")
    if dot and prefix in ("property", "list", "consent"):
        if prefix == "consent":
            if key not in CONSENT_CHANNELS:
                raise RuleError(
                    path, f"consent channel must be one of {', '.join(CONSENT_CHANNELS)}"
                )
            return CONSENT_OPS
        if not _NAME.match(key):
            raise RuleError(path, f"{prefix} name {key!r} must match {NAME_PATTERN}")
        return PROPERTY_OPS if prefix == "property" else CHOICE_OPS
    known = [*TEXT_FIELDS, *DATE_FIELDS, "tags", "engagement", "rfm.group", *RFM_SCORES,
             "property.<name>", "list.<list_id>", "consent.<channel>"]
    raise RuleError(path, f"unknown field {name!r}; fields are {', '.join(known)}")


def _check_value(name: str, op: str, value: Any, path: str) -> Any:
    where = f"value of {name} {op}"
    if name == "tags":
        if not isinstance(value, str) or not value.strip() or len(value.strip()) > 64:
            raise RuleError(path, f"{where} must be a tag: a string of 1-64 characters")
        return value.strip().casefold()
    if name in DATE_FIELDS:
        if op in ("within_last", "more_than_ago"):
            return _days(value, path, where)
        if op == "between":
            low, high = _pair(value, path, where)
            return _in_order(_instant(low, path, where), _instant(high, path, where), path,
                             where)
        return _instant(value, path, where)
    if name.startswith("consent."):
        if not isinstance(value, bool):
            raise RuleError(path, f"{where} must be true or false")
        return value
    if name in RFM_SCORES:
        if op == "between":
            low, high = _pair(value, path, where)
            return _in_order(_score(low, path, where), _score(high, path, where), path, where)
        return _score(value, path, where)
    choices = LIST_STATES if name.startswith("list.") else (
        ENGAGEMENT_STATUSES if name == "engagement" else
        RFM_GROUPS if name == "rfm.group" else None
    )
    if op in ("in", "not_in"):
        if not isinstance(value, list) or not value:
            raise RuleError(path, f"{where} must be a non-empty list")
        return tuple(_scalar(v, name, choices, path, where) for v in value)
    if op == "between":
        low, high = _pair(value, path, where)
        return _in_order(_ordered(low, path, where), _ordered(high, path, where), path, where)
    if op in ("gt", "gte", "lt", "lte"):
        return _ordered(value, path, where)
    return _scalar(value, name, choices, path, where)


def _scalar(value: Any, name: str, choices: tuple[str, ...] | None, path: str,
            where: str) -> Any:
    if choices is not None:
        if value not in choices:
            raise RuleError(
                path, f"{where} must be one of {', '.join(choices)}; got {_shown(value)}"
            )
        return value
    if name.startswith("property."):
        if isinstance(value, bool):
            return value
        if isinstance(value, int | float):
            return _number(value, path, where)
    if not isinstance(value, str) or len(value) > 1000:
        raise RuleError(path, f"{where} must be a string of at most 1000 characters")
    return value.lower()


def _score(value: Any, path: str, where: str) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 5:
        raise RuleError(path, f"{where} must be a score: a whole number from 1 to 5")
    return Decimal(value)


def _ordered(value: Any, path: str, where: str) -> Decimal | str:
    """A number (compared as a number) or a date (compared as a date)."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return _number(value, path, where)
    if isinstance(value, str):
        return _instant(value, path, where)
    raise RuleError(path, f"{where} must be a number or an RFC 3339 date, got {_kind(value)}")


def _parse_aggregate(obj: dict[str, Any], path: str) -> Aggregate:
    if "count" in obj:
        name = obj["count"]
        if name not in COUNTS:
            raise RuleError(path, f"count must be one of {', '.join(COUNTS)}; got {_shown(name)}")
        kinds: tuple[tuple[str, int], ...] = ((COUNTS[name], 1),)
        currency = None
        _only(obj, {"count", "op", "value", "within_days"}, path)
    else:
        name = obj["sum"]
        if name not in SUMS:
            raise RuleError(path, f"sum must be one of {', '.join(SUMS)}; got {_shown(name)}")
        kinds = SUMS[name]
        currency = obj.get("currency")
        if currency is None:
            raise RuleError(path, "a sum needs a currency: an ISO 4217 code such as EUR")
        if not isinstance(currency, str) or not re.match(r"^[A-Z]{3}$", currency):
            raise RuleError(path, "currency must be an ISO 4217 code in capitals, such as "
                            f"EUR; got {_shown(currency)}")
        _only(obj, {"sum", "currency", "op", "value", "within_days"}, path)
    op = obj.get("op")
    if op not in NUMBER_OPS:
        raise RuleError(path, f"op for {name} must be one of {', '.join(NUMBER_OPS)}; "
                        f"got {_shown(op)}")
    where = f"value of {name} {op}"
    if "value" not in obj:
        raise RuleError(path, f"op {op} needs a value")
    raw = obj["value"]
    if op == "between":
        low, high = _pair(raw, path, where)
        value: Any = _in_order(_number(low, path, where), _number(high, path, where), path,
                               where)
    else:
        value = _number(raw, path, where)
    within = obj.get("within_days")
    if within is not None and (isinstance(within, bool) or not isinstance(within, int | float)
                               or not 0 < within <= MAX_DAYS):
        raise RuleError(path, f"within_days must be a number of days, 0 < N <= {MAX_DAYS}; "
                        f"got {_shown(within)}")
    days = None if within is None else float(within)
    return Aggregate(path, name, kinds, currency, days, op, value)


def _number(value: Any, path: str, where: str) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise RuleError(path, f"{where} must be a number")
    try:
        number = Decimal(str(value))
    except InvalidOperation:
        raise RuleError(path, f"{where} must be a number, got {_shown(value)}") from None
    if not number.is_finite():
        raise RuleError(path, f"{where} must be a finite number; got {_shown(value)}")
    return number


def _days(value: Any, path: str, where: str) -> float:
    days = value.get("days") if isinstance(value, dict) and set(value) == {"days"} else None
    if isinstance(days, bool) or not isinstance(days, int | float) or not 0 < days <= MAX_DAYS:
        raise RuleError(path, f'{where} must be {{"days": N}} with 0 < N <= {MAX_DAYS}')
    return float(days)


def _instant(value: Any, path: str, where: str) -> str:
    """An RFC 3339 timestamp with offset, or a date (midnight UTC), as a domain instant."""
    moment = parse_instant(value) if isinstance(value, str) else None
    if isinstance(moment, datetime):  # (parse_instant refuses instants beyond UTC's range)
        return utc_iso(moment)
    raise RuleError(
        path, f"{where} must be a date (2026-01-31) or an RFC 3339 timestamp with offset; "
        f"got {_shown(value)}"
    )


def _pair(value: Any, path: str, where: str) -> tuple[Any, Any]:
    if not isinstance(value, list) or len(value) != 2:
        raise RuleError(path, f"{where} must be a list of two bounds [low, high]")
    return value[0], value[1]


def _in_order(low: Any, high: Any, path: str, where: str) -> tuple[Any, Any]:
    """A between's bounds, of one kind and low first: a reversed range matches nobody,
    so it is refused rather than accepted silently."""
    if isinstance(low, Decimal) != isinstance(high, Decimal):
        raise RuleError(path, f"{where}: the bounds must be both numbers or both dates")
    if low > high:
        raise RuleError(path, f"{where}: the first bound is after the second; write "
                        "[low, high]")
    return (low, high)


def _only(obj: dict[str, Any], allowed: set[str], path: str) -> None:
    extra = sorted(set(obj) - allowed)
    if extra:
        raise RuleError(path, f"unexpected key {', '.join(extra)}; allowed: "
                        f"{', '.join(sorted(allowed))}")


# -------------------------------------------------------------------------- evaluation


def _matches(name: str, actual: Any, op: str, expected: Any) -> bool:
    if actual is None:
        return False
    if isinstance(actual, list):
        return any(_matches(name, item, op, expected) for item in actual)
    if op == "in":
        return any(_matches(name, actual, "equals", e) for e in expected)
    if op in ("gt", "gte", "lt", "lte", "between"):
        kind = expected[0] if isinstance(expected, tuple) else expected
        coerced = _as_number(actual) if isinstance(kind, Decimal) else _as_instant(actual)
        if coerced is None:
            return False
        return _compare_number(op, coerced, expected)  # works for str instants too
    if isinstance(expected, bool):
        return actual is expected
    if isinstance(expected, Decimal):
        number = _as_number(actual)
        return number is not None and number == expected
    text = actual.lower() if isinstance(actual, str) else _text(actual)
    if op == "equals":
        if name == "language" and "-" not in expected:
            return text == expected or text.startswith(expected + "-")
        return text == expected
    if op == "contains":
        return expected in text
    if op == "starts_with":
        return text.startswith(expected)
    raise AssertionError(op)


def _compare_number(op: str, actual: Any, expected: Any) -> bool:
    if op == "equals":
        return bool(actual == expected)
    if op == "not_equals":
        return bool(actual != expected)
    if op == "gt":
        return bool(actual > expected)
    if op == "gte":
        return bool(actual >= expected)
    if op == "lt":
        return bool(actual < expected)
    if op == "lte":
        return bool(actual <= expected)
    if op == "between":
        low, high = expected
        return bool(low <= actual <= high)
    raise AssertionError(op)


def _date_test(op: str, actual: str | None, expected: Any, now: str) -> bool:
    if actual is None:
        return False
    if op == "within_last":
        return actual > days_before(now, expected)
    if op == "more_than_ago":
        return actual <= days_before(now, expected)
    if op == "before":
        return actual < expected
    if op == "after":
        return actual > expected
    if op == "between":
        return bool(expected[0] <= actual <= expected[1])
    raise AssertionError(op)


def _as_number(value: Any) -> Decimal | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return Decimal(str(value))
    if isinstance(value, str) and _NUMBER_TEXT.match(value):
        return Decimal(value.strip())
    return None


def _as_instant(value: Any) -> str | None:
    if not isinstance(value, str):
        return None
    try:
        return _instant(value, "", "")
    except RuleError:
        return None


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value).lower()


def _earliest(moments: Iterator[str | None] | Any) -> str | None:
    present = [m for m in moments if m is not None]
    return min(present) if present else None


def _kind(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean",
            type(None): "null"}.get(type(value), "a number")


def _shown(value: Any) -> str:
    if isinstance(value, tuple):
        return "[" + ", ".join(_shown(v) for v in value) + "]"
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10**60:
        return f"an integer of {len(str(value)) if value < 10**4000 else 'thousands of'} digits"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# ------------------------------------------------------------------------- JSON Schema


def rule_json_schema() -> dict[str, Any]:
    """The rule language as JSON Schema (2020-12), built from the tables above.

    The schema checks shapes, field names, operators and value types; the parser adds
    what a schema cannot say well (bounds in order, cycles between segments), and its
    errors name the clause.
    """
    text = {"type": "string", "maxLength": 1000}
    scalar = {"anyOf": [text, {"type": "number"}, {"type": "boolean"}]}
    ordered = {"anyOf": [{"type": "number"}, {"type": "string", "format": "date-time"},
                         {"type": "string", "format": "date"}]}
    instant = {"anyOf": [{"type": "string", "format": "date-time"},
                         {"type": "string", "format": "date"}]}
    days = {"type": "object", "properties": {"days": {"type": "number", "exclusiveMinimum": 0,
                                                       "maximum": MAX_DAYS}},
            "required": ["days"], "additionalProperties": False}

    def pair(item: dict[str, Any]) -> dict[str, Any]:
        return {"type": "array", "prefixItems": [item, item], "minItems": 2, "maxItems": 2}

    def listing(item: dict[str, Any]) -> dict[str, Any]:
        return {"type": "array", "items": item, "minItems": 1, "maxItems": MAX_LIST_VALUES}

    def condition(
        field_schema: dict[str, Any], ops: dict[str, dict[str, Any] | None]
    ) -> dict[str, Any]:
        branches = []
        for op, value in ops.items():
            if value is None:
                branches.append({
                    "type": "object",
                    "properties": {"field": field_schema, "op": {"const": op}},
                    "required": ["field", "op"], "additionalProperties": False,
                })
            else:
                branches.append({
                    "type": "object",
                    "properties": {"field": field_schema, "op": {"const": op}, "value": value},
                    "required": ["field", "op", "value"], "additionalProperties": False,
                })
        return {"oneOf": branches}

    text_ops: dict[str, dict[str, Any] | None] = {
        "equals": text, "not_equals": text, "in": listing(text), "not_in": listing(text),
        "contains": text, "starts_with": text, "is_set": None, "is_not_set": None,
    }
    property_ops: dict[str, dict[str, Any] | None] = {
        "equals": scalar, "not_equals": scalar, "in": listing(scalar),
        "not_in": listing(scalar), "contains": text, "starts_with": text,
        "gt": ordered, "gte": ordered, "lt": ordered, "lte": ordered, "between": pair(ordered),
        "is_set": None, "is_not_set": None,
    }
    date_ops: dict[str, dict[str, Any] | None] = {
        "before": instant, "after": instant, "between": pair(instant),
        "within_last": days, "more_than_ago": days, "is_set": None, "is_not_set": None,
    }

    def choice_ops(choices: tuple[str, ...], unset: bool) -> dict[str, dict[str, Any] | None]:
        one = {"enum": list(choices)}
        ops: dict[str, dict[str, Any] | None] = {
            "equals": one, "not_equals": one, "in": listing(one), "not_in": listing(one),
        }
        if unset:
            ops.update({"is_set": None, "is_not_set": None})
        return ops

    number = {"type": "number"}
    score = {"type": "integer", "minimum": 1, "maximum": 5}
    number_ops = {op: (pair(number) if op == "between" else number) for op in NUMBER_OPS}

    def aggregate(key: str, names: list[str], extra: dict[str, Any]) -> dict[str, Any]:
        return {"oneOf": [
            {
                "type": "object",
                "properties": {key: {"enum": names}, "op": {"const": op}, "value": value,
                               "within_days": {"type": "number", "exclusiveMinimum": 0,
                                               "maximum": MAX_DAYS}, **extra},
                "required": [key, "op", "value", *extra],
                "additionalProperties": False,
            }
            for op, value in number_ops.items()
        ]}

    conditions = [
        condition({"enum": list(TEXT_FIELDS)}, text_ops),
        condition({"enum": list(DATE_FIELDS)}, date_ops),
        condition({"const": "tags"}, {"has": {"type": "string", "minLength": 1, "maxLength": 64},
                                      "has_not": {"type": "string", "minLength": 1,
                                                  "maxLength": 64}}),
        condition({"const": "engagement"}, choice_ops(ENGAGEMENT_STATUSES, unset=False)),
        condition({"const": "rfm.group"}, choice_ops(RFM_GROUPS, unset=False)),
        condition({"enum": list(RFM_SCORES)},
                  {op: (pair(score) if op == "between" else score) for op in NUMBER_OPS}),
        condition({"type": "string", "pattern": r"^property\.[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$"},
                  property_ops),
        condition({"type": "string", "pattern": r"^list\.[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$"},
                  choice_ops(LIST_STATES, unset=True)),
        condition({"enum": [f"consent.{c}" for c in CONSENT_CHANNELS]},
                  {"equals": {"type": "boolean"}, "is_set": None, "is_not_set": None}),
        aggregate("count", list(COUNTS), {}),
        aggregate("sum", list(SUMS), {"currency": {"type": "string", "pattern": "^[A-Z]{3}$"}}),
        {"type": "object", "properties": {"segment": {"type": "string",
                                                      "pattern": SEGMENT_ID_PATTERN}},
         "required": ["segment"], "additionalProperties": False},
    ]
    rule_ref = {"$ref": "#/$defs/rule"}
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://ficha.dev/contracts/segment-rule.json",
        "title": "ficha segment rule",
        "description": "A segment's rule: groups (all, any, not) nesting conditions up to "
        f"{MAX_DEPTH} levels deep, at most {MAX_CONDITIONS} conditions and {MAX_RULE_VALUES} "
        "values in all. See docs/segments.md for the meaning of every field and operator.",
        "$ref": "#/$defs/rule",
        "$defs": {
            "rule": {"anyOf": [
                {"type": "object", "properties": {"all": {"type": "array", "items": rule_ref,
                                                          "minItems": 1,
                                                          "maxItems": MAX_CONDITIONS}},
                 "required": ["all"], "additionalProperties": False},
                {"type": "object", "properties": {"any": {"type": "array", "items": rule_ref,
                                                          "minItems": 1,
                                                          "maxItems": MAX_CONDITIONS}},
                 "required": ["any"], "additionalProperties": False},
                {"type": "object", "properties": {"not": rule_ref}, "required": ["not"],
                 "additionalProperties": False},
                *conditions,
            ]},
        },
    }
