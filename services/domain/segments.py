"""Segment definitions: one catalogue aggregate per tenant, every change an event.

Keeping a tenant's definitions in one aggregate makes the checks that span segments
(references to other segments exist, no cycles) part of the same consistent decision:
two operators editing at once cannot together create a cycle, because the store refuses
the second write of the same catalogue version and the command is retried on the new
state.

Each edit makes a new version of the segment; versions are never reused, not even after
a delete and a re-create, so a membership's provenance can always name the definition.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from uuid import NAMESPACE_URL, UUID, uuid5

from eventsourcing.domain import Aggregate

from services.domain.rules import (
    SEGMENT_ID_PATTERN,
    Node,
    RuleError,
    SegmentRef,
    check_new_rule,
    is_segment_id,
    parse_rule,
)
from services.domain.text import NUL_PROBLEM, has_nul

MAX_SEGMENTS_PER_TENANT = 500


class SegmentError(ValueError):
    """A command on the catalogue that cannot be carried out, in words a person can act on."""


class InvalidSegment(SegmentError):
    """An id or a name that no segment may have; ``field`` says which ("id", "name")."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def catalog_id(tenant: str) -> UUID:
    return uuid5(NAMESPACE_URL, f"ficha:segments:{tenant}")


@dataclass(frozen=True)
class SegmentDefinition:
    segment_id: str
    name: str
    version: int
    rule: dict[str, Any]
    deleted: bool = False

    def parsed(self) -> Node:
        return parse_rule(self.rule)


class SegmentCatalog(Aggregate):
    class Opened(Aggregate.Created):
        tenant: str

    class Defined(Aggregate.Event):
        tenant: str
        segment_id: str
        name: str
        segment_version: int
        rule: dict[str, Any]

        def apply(self, aggregate: Any) -> None:
            aggregate.segments[self.segment_id] = SegmentDefinition(
                self.segment_id, self.name, self.segment_version, self.rule
            )

    class Deleted(Aggregate.Event):
        tenant: str
        segment_id: str
        segment_version: int

        def apply(self, aggregate: Any) -> None:
            old = aggregate.segments[self.segment_id]
            aggregate.segments[self.segment_id] = SegmentDefinition(
                self.segment_id, old.name, self.segment_version, old.rule, deleted=True
            )

    def __init__(self, tenant: str) -> None:
        self.tenant = tenant
        self.segments: dict[str, SegmentDefinition] = {}

    @classmethod
    def open(cls, tenant: str) -> SegmentCatalog:
        return cls._create(cls.Opened, id=catalog_id(tenant), tenant=tenant)

    # ---------------------------------------------------------------- commands

    def check(self, segment_id: str, name: str, rule: Any) -> tuple[str, Node]:
        """The name a definition would have and its parsed rule, if a segment of this
        catalogue may be defined so (what ``define`` and a preview check alike); raises
        InvalidSegment or RuleError."""
        if not is_segment_id(segment_id):
            raise InvalidSegment(
                "id", f"segment id {segment_id!r} must be 1-64 of a-z, 0-9, _ and -, starting "
                f"with a letter or digit ({SEGMENT_ID_PATTERN})"
            )
        name = (name or "").strip() or segment_id
        if len(name) > 200:
            raise InvalidSegment("name", "a segment name has at most 200 characters")
        if has_nul(name):
            raise InvalidSegment("name", f"the segment name {NUL_PROBLEM}")
        node = check_new_rule(rule)
        live = self.live()
        for ref in sorted(node.references()):
            if ref == segment_id:
                raise RuleError(_ref_path(node, ref), f"segment {segment_id} refers to itself")
            if ref not in live:
                raise RuleError(
                    _ref_path(node, ref), f"segment {ref!r} does not exist in tenant {self.tenant}"
                )
        rules = {sid: d.parsed() for sid, d in live.items()}
        rules[segment_id] = node
        dependency_order(rules)  # raises on a cycle
        return name, node

    def define(self, segment_id: str, name: str, rule: dict[str, Any]) -> SegmentDefinition:
        """Create a segment or edit it (a new version); raises SegmentError or RuleError."""
        name, _ = self.check(segment_id, name, rule)
        current = self.segments.get(segment_id)
        live = self.live()
        if current is None or current.deleted:
            if len(live) >= MAX_SEGMENTS_PER_TENANT:
                raise SegmentError(
                    f"tenant {self.tenant} has {len(live)} segments, the most allowed"
                )
        elif current.rule == rule and current.name == name:
            return current  # nothing changes: no new version
        version = 1 if current is None else current.version + 1
        self.trigger_event(
            self.Defined,
            tenant=self.tenant,
            segment_id=segment_id,
            name=name,
            segment_version=version,
            rule=rule,
        )
        return self.segments[segment_id]

    def delete(self, segment_id: str) -> SegmentDefinition:
        current = self.live().get(segment_id)
        if current is None:
            raise SegmentError(f"segment {segment_id!r} does not exist in tenant {self.tenant}")
        users = sorted(
            sid for sid, d in self.live().items() if segment_id in d.parsed().references()
        )
        if users:
            raise SegmentError(
                f"segment {segment_id} is used by {', '.join(users)}; change those first"
            )
        self.trigger_event(
            self.Deleted,
            tenant=self.tenant,
            segment_id=segment_id,
            segment_version=current.version + 1,
        )
        return self.segments[segment_id]

    # ---------------------------------------------------------------- queries

    def live(self) -> dict[str, SegmentDefinition]:
        return {sid: d for sid, d in self.segments.items() if not d.deleted}


def dependency_order(rules: dict[str, Node]) -> list[str]:
    """Segment ids so that each comes after the segments its rule refers to.

    Raises RuleError on a cycle, naming it: ``a -> b -> a``.
    """
    order: list[str] = []
    state: dict[str, int] = {}  # 1 = visiting, 2 = done

    def visit(sid: str, trail: list[str]) -> None:
        mark = state.get(sid)
        if mark == 2:
            return
        if mark == 1:
            cycle = [*trail[trail.index(sid):], sid]
            raise RuleError(
                _ref_path(rules[trail[-1]], sid),
                f"segments may not refer to each other in a cycle: {' -> '.join(cycle)}",
            )
        state[sid] = 1
        for ref in sorted(rules[sid].references()):
            if ref in rules:
                visit(ref, [*trail, sid])
        state[sid] = 2
        order.append(sid)

    for sid in sorted(rules):
        visit(sid, [])
    return order


def _ref_path(node: Node, segment_id: str) -> str:
    for n in node.walk():
        if isinstance(n, SegmentRef) and n.segment_id == segment_id:
            return n.path
    return node.path
