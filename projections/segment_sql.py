"""Narrowing a segment's backfill and preview with SQL before evaluating it in Python.

``prefilter(rule, tenant, now)`` compiles the parts of a rule that SQL can decide on the
copied columns of ``audience_facts`` into a condition that every matching contact
satisfies (a *necessary* condition): groups of ``all`` keep what compiles, ``any``
compiles only when every branch does; fields, tags, consent, absolute dates, RFM groups,
segment references and counts of all time compile directly, counts within a window
through the all-time count (a count within a window is at most that), sums that cannot
hold at zero to "has an item they add up", and, given ``now``, ``within_last`` and
engagement as they hold at that instant. The rest (sum thresholds, ``more_than_ago``,
properties, lists, RFM scores, ``not`` over anything but a tag) is left to the Python
evaluator, which then runs only on the candidates. The result is exact because the
evaluator decides; SQL only skips contacts that cannot match.

A contact the filter skips cannot enter the segment before it is re-evaluated anyway: the
compiled conditions either never change by time alone, or only become false with time
(``within_last``), or change at instants already scheduled (engagement).

Every value is a bound parameter; column names come from fixed tables, never from input.
"""

from __future__ import annotations

import math
from typing import Any

import msgspec

from services.domain.engagement import (
    DEFAULT_WINDOWS,
    ENGAGED,
    INACTIVE,
    NOT_ENGAGED,
    EngagementWindows,
)
from services.domain.facts import days_before
from services.domain.rules import (
    COUNTS,
    DATE_FIELDS,
    MAX_NUMBER,
    Aggregate,
    FieldCondition,
    Group,
    Node,
    SegmentRef,
)

# rule field -> column holding it (lowercase compared)
TEXT_COLUMNS = {
    "email": "email",
    "country": "country",
    "contact_type": "contact_type",
    "lead_status": "lead_status",
    "member_status": "member_status",
}

Condition = tuple[str, list[Any]]
COUNT_OF_KIND = {kind: name for name, kind in COUNTS.items()}  # "purchase" -> "purchases"


def prefilter(node: Node, tenant: str, now: str | None = None,
              windows: EngagementWindows = DEFAULT_WINDOWS) -> Condition | None:
    """A SQL condition on ``audience_facts f`` that every member satisfies; None = any.

    With ``now``, conditions that time can only make false (``within_last``) or whose
    changes by time are scheduled anyway (engagement) are compiled too, as they hold at
    ``now``: a contact they skip cannot enter before it is re-evaluated.
    """
    if isinstance(node, Group):
        if node.kind == "all":
            found = [prefilter(item, tenant, now, windows) for item in node.items]
            parts = [c for c in found if c is not None]
            return _join(parts, " AND ") if parts else None
        if node.kind == "any":
            branches = [prefilter(item, tenant, now, windows) for item in node.items]
            kept = [b for b in branches if b is not None]
            return _join(kept, " OR ") if len(kept) == len(branches) else None
        inner = node.items[0]
        if isinstance(inner, FieldCondition) and inner.field_name == "tags" and (
            inner.op == "has_not"
        ):
            return _field(FieldCondition(inner.path, "tags", "has", inner.value))
        return None  # a necessary condition of X says nothing about "not X"
    if isinstance(node, SegmentRef):
        return (
            "f.contact_id IN (SELECT contact_id FROM segment_history WHERE tenant = ? "
            "AND segment_id = ? AND exited_at IS NULL)",
            [tenant, node.segment_id],
        )
    if isinstance(node, FieldCondition):
        if now is not None:
            timed = _at(node, now, windows)
            if timed is not None:
                return timed
        return _field(node)
    if isinstance(node, Aggregate):
        return _aggregate(node)
    return None


def _at(node: FieldCondition, now: str, windows: EngagementWindows) -> Condition | None:
    """Conditions decided at ``now`` (see ``prefilter``)."""
    if node.field_name in DATE_FIELDS and node.op == "within_last":
        return f"f.{node.field_name} > ?", [days_before(now, node.value)]
    if node.field_name == "engagement" and node.op in ("equals", "in"):
        wanted = [node.value] if node.op == "equals" else list(node.value)
        engaged = "(f.last_interaction_at IS NOT NULL AND f.last_interaction_at > ?)"
        reachable = "(COALESCE(f.last_interaction_at, f.first_seen_at) > ?)"
        cases = {
            ENGAGED: (engaged, [days_before(now, windows.engaged_days)]),
            NOT_ENGAGED: (f"(NOT {engaged} AND {reachable} IS TRUE)",
                          [days_before(now, windows.engaged_days),
                           days_before(now, windows.inactive_days)]),
            INACTIVE: (f"(NOT {engaged} AND {reachable} IS NOT TRUE)",
                       [days_before(now, windows.engaged_days),
                        days_before(now, windows.inactive_days)]),
        }
        return _join([cases[w] for w in wanted], " OR ")
    return None


def _beyond(node: Aggregate) -> bool:
    """A bound past what a count column holds (a rule stored before numbers in rules
    were bounded): no narrowing, the evaluator decides."""
    bounds = node.value if isinstance(node.value, tuple) else (node.value,)
    return any(bound.copy_abs() >= MAX_NUMBER for bound in bounds)  # (abs() may overflow)


def _aggregate(node: Aggregate) -> Condition | None:
    """A count of all time is a column: compared exactly. A count within a window is at
    most that count; a sum that cannot hold at zero needs an item of a kind it adds up.
    (Reading windows and amounts from the activity log in ``doc`` with the backends' JSON
    functions was tried: 8 µs a row on PostgreSQL, slower than the evaluator it spares.)"""
    if _beyond(node):
        return None
    if node.currency is None and node.within_days is None:
        column = f"f.n_{COUNT_OF_KIND[node.kinds[0][0]]}"
        operators = {"gt": ">", "gte": ">=", "lt": "<", "lte": "<=", "equals": "=",
                     "not_equals": "<>"}
        if node.op == "between":
            return f"{column} BETWEEN ? AND ?", [float(node.value[0]), float(node.value[1])]
        return f"{column} {operators[node.op]} ?", [float(node.value)]
    return _count(node) if node.currency is None else _sum(node)


def _count(node: Aggregate) -> Condition | None:
    """A count within a window is at most the count of all time (``n_<name>``)."""
    column = f"f.n_{node.name}"
    if node.op in ("gte", "equals") and node.value > 0:
        return f"{column} >= ?", [math.ceil(node.value)]
    if node.op == "gt":
        return f"{column} > ?", [math.floor(node.value)]
    if node.op == "between" and node.value[0] > 0:
        return f"{column} >= ?", [math.ceil(node.value[0])]
    return None


def _sum(node: Aggregate) -> Condition | None:
    """A sum that cannot match at zero needs at least one item of a kind it adds up."""
    if not node.needs_activity():
        return None
    return " OR ".join(f"f.n_{COUNT_OF_KIND[kind]} > 0" for kind, _ in node.kinds), []


def _field(node: FieldCondition) -> Condition | None:
    name, op, value = node.field_name, node.op, node.value
    if name == "tags":
        if op != "has":
            # The match below may over-match (a tag whose key contains the quoted key of
            # another), which is safe for "has" and not for "has not".
            return None
        pattern = "%" + _like_escape(msgspec.json.encode(value).decode()) + "%"
        return "f.tags LIKE ? ESCAPE '\\'", [pattern]
    if name == "language":
        if op in ("equals", "in"):
            values = [value] if op == "equals" else list(value)
            parts = []
            params: list[Any] = []
            for v in values:
                if "-" in v:
                    parts.append("LOWER(f.language) = ?")
                else:
                    parts.append("f.language_base = ?")
                params.append(v)
            return _balanced(parts, " OR "), params
        return _presence("f.language", op)
    if name in TEXT_COLUMNS:
        column = f"LOWER(f.{TEXT_COLUMNS[name]})"
        if op == "equals":
            return f"{column} = ?", [value]
        if op == "in":
            return f"{column} IN ({','.join('?' * len(value))})", list(value)
        if op == "contains":
            return f"{column} LIKE ? ESCAPE '\\'", ["%" + _like_escape(value) + "%"]
        if op == "starts_with":
            return f"{column} LIKE ? ESCAPE '\\'", [_like_escape(value) + "%"]
        return _presence(f"f.{TEXT_COLUMNS[name]}", op)
    if name.startswith("consent."):
        column = f"f.consent_{name.split('.', 1)[1]}"
        if op == "equals":
            return f"{column} = ?", [int(value)]
        return _presence(column, op)
    if name in DATE_FIELDS:
        column = f"f.{name}"
        if op == "before":
            return f"{column} < ?", [value]
        if op == "after":
            return f"{column} > ?", [value]
        if op == "between":
            return f"{column} BETWEEN ? AND ?", [value[0], value[1]]
        if op in ("within_last", "more_than_ago"):
            return f"{column} IS NOT NULL", []  # true only when set; time decides the rest
        return _presence(column, op)
    if name == "rfm.group":
        if op == "equals":
            return "f.rfm_group = ?", [value]
        if op == "in":
            return f"f.rfm_group IN ({','.join('?' * len(value))})", list(value)
    return None


def _presence(column: str, op: str) -> Condition | None:
    if op == "is_set":
        return f"({column} IS NOT NULL AND {column} <> '')" if "consent" not in column else (
            f"{column} IS NOT NULL"), []
    if op == "is_not_set":
        return f"({column} IS NULL OR {column} = '')" if "consent" not in column else (
            f"{column} IS NULL"), []
    return None


def _join(parts: list[Condition], joiner: str) -> Condition:
    params: list[Any] = []
    for p in parts:
        params.extend(p[1])
    return _balanced([p[0] for p in parts], joiner), params


def _balanced(parts: list[str], joiner: str) -> str:
    """``a OR b OR c ...`` nested as a balanced tree, in the same order: a long chain is
    as deep as it is long to SQLite's parser, whose limit is 1,000 levels."""
    if len(parts) == 1:
        return f"({parts[0]})"
    middle = len(parts) // 2
    return (f"({_balanced(parts[:middle], joiner)}{joiner}"
            f"{_balanced(parts[middle:], joiner)})")


def _like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
