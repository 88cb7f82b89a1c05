"""Evaluating one contact against its tenant's segments and engagement windows.

Pure functions over ``ContactFacts`` and an instant: the audience projection calls them
when an event changes a contact, when a scheduled instant passes, and when a definition
changes, and turns the differences into membership transitions with their cause.
"""

from __future__ import annotations

from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from datetime import timedelta
from functools import cached_property
from typing import Any

from services.domain.engagement import DEFAULT_WINDOWS, EngagementWindows, engagement_status
from services.domain.facts import DEFAULT_SOFT_BOUNCE_LIMIT, ContactFacts
from services.domain.rfm import DEFAULT_RFM, Rfm, RfmCuts, RfmSettings, score
from services.domain.rules import Context, FieldCondition, Node
from services.domain.segments import SegmentDefinition, dependency_order
from services.domain.stamps import parse_utc_iso, utc_iso
from services.domain.tenant import DEFAULTS

CAUSE_EVENT = "event"
CAUSE_CLOCK = "clock"
CAUSE_DEFINITION = "definition"


@dataclass(frozen=True)
class CompiledSegment:
    definition: SegmentDefinition
    rule: Node

    @cached_property
    def segment_id(self) -> str:
        return self.definition.segment_id

    @cached_property
    def reads(self) -> frozenset[str]:
        return self.rule.reads()

    @cached_property
    def volatile(self) -> bool:
        return self.rule.volatile()

    @cached_property
    def uses(self) -> frozenset[str]:
        return frozenset(self.rule.references())


@dataclass(frozen=True)
class TenantRules:
    """A tenant's live segments, each after the segments it refers to."""

    segments: tuple[CompiledSegment, ...] = ()
    windows: EngagementWindows = DEFAULT_WINDOWS
    cuts: RfmCuts = field(default_factory=RfmCuts)
    rfm: RfmSettings = DEFAULT_RFM
    soft_bounce_limit: int = DEFAULT_SOFT_BOUNCE_LIMIT
    uses_rfm: bool = False  # some segment reads rfm.*: score RFM on every evaluation
    # touched parts of a contact -> the segments to evaluate (``to_evaluate``)
    _cache: dict[frozenset[str], frozenset[str]] = field(
        default_factory=dict, compare=False, repr=False)
    _ordered: dict[frozenset[str], tuple[CompiledSegment, ...]] = field(
        default_factory=dict, compare=False, repr=False)

    @classmethod
    def compile(
        cls,
        definitions: list[SegmentDefinition],
        cuts: RfmCuts | None = None,
        settings: dict[str, Any] | None = None,
    ) -> TenantRules:
        """A tenant's rules from its segment definitions, RFM cuts and settings
        (``services.domain.tenant.DEFAULTS`` keys; missing ones take the defaults)."""
        live = {d.segment_id: d for d in definitions if not d.deleted}
        parsed = {sid: d.parsed() for sid, d in live.items()}
        order = dependency_order(parsed)
        segments = tuple(CompiledSegment(live[sid], parsed[sid]) for sid in order)
        values = {**DEFAULTS, **(settings or {})}
        uses_rfm = any(
            isinstance(n, FieldCondition) and n.field_name.startswith("rfm.")
            for segment in segments for n in segment.rule.walk()
        )
        return cls(
            segments,
            EngagementWindows(float(values["engaged_days"]), float(values["inactive_days"])),
            cuts or RfmCuts(),
            RfmSettings(float(values["rfm_window_days"]), values["rfm_currency"]),
            int(values["soft_bounce_limit"]),
            uses_rfm,
        )

    def affected_by(self, segment_id: str) -> set[str]:
        """The segment and every segment that refers to it, directly or not."""
        out = {segment_id}
        for segment in self.segments:  # dependency order: references come first
            if segment.rule.references() & out:
                out.add(segment.segment_id)
        return out

    def to_evaluate(self, touched: frozenset[str] = frozenset()) -> frozenset[str]:
        """The segments whose value may change when the ``touched`` parts of a contact's
        facts change (``ContactFacts.touched_by``) or as time passes: those that read one
        of them, the volatile ones, and those that use one of these. Every other segment
        keeps its value. The volatile ones are always evaluated: the contact's next
        scheduled change (``Evaluation.due``) is the earliest of theirs."""
        wanted = self._cache.get(touched)
        if wanted is None:
            out: set[str] = set()
            for segment in self.segments:  # dependency order: references come first
                if (segment.volatile or not segment.reads.isdisjoint(touched)
                        or not segment.uses.isdisjoint(out)):
                    out.add(segment.segment_id)
            if len(self._cache) >= 4096:  # the kinds of change are few; bound them anyway
                self._cache.clear()
            wanted = self._cache[touched] = frozenset(out)
        return wanted

    def in_order(self, ids: AbstractSet[str]) -> tuple[CompiledSegment, ...]:
        """The segments of ``ids``, references first."""
        key = frozenset(ids)
        chosen = self._ordered.get(key)
        if chosen is None:
            if len(self._ordered) >= 4096:
                self._ordered.clear()
            chosen = self._ordered[key] = tuple(
                s for s in self.segments if s.segment_id in key)
        return chosen

    def get(self, segment_id: str) -> CompiledSegment | None:
        for segment in self.segments:
            if segment.segment_id == segment_id:
                return segment
        return None


@dataclass
class Evaluation:
    now: str
    members: set[str]
    # segment id -> leaf path -> value: what provenance compares
    traces: dict[str, dict[str, bool]]
    engagement: str
    rfm: Rfm | None  # scored only when asked, or when a segment needs it
    # the next instant at which a membership or the engagement status may change
    due: str | None


@dataclass(frozen=True)
class Transition:
    segment_id: str
    segment_version: int
    entered: bool
    at: str
    cause: str
    ref: str  # the triggering event id, "clock", or "<segment>@v<version>"
    clauses: tuple[str, ...] = field(default=())


def evaluate(facts: ContactFacts, rules: TenantRules, now: str,
             only: AbstractSet[str] | None = None, members: AbstractSet[str] | None = None,
             with_rfm: bool = False) -> Evaluation:
    """Every segment at ``now``; or, with ``only``, just those segments, the others taken
    as they are (``members``): a backfill re-evaluates only what a definition affects, an
    event only what it can change (``TenantRules.to_evaluate``).

    RFM is scored when ``with_rfm`` or when a segment reads it (it walks the contact's
    purchases; the projection otherwise scores it once per flushed contact)."""
    status, engagement_due = engagement_status(facts, now, rules.windows)
    rfm = score(facts, now, rules.cuts, rules.rfm) if with_rfm or rules.uses_rfm else None
    ctx = Context(now=now, engagement=status, soft_bounce_limit=rules.soft_bounce_limit)
    if rfm is not None:
        ctx.rfm_group = rfm.group
        if rfm.r is not None and rfm.f is not None and rfm.m is not None:
            ctx.rfm_scores = {"rfm.recency": rfm.r, "rfm.frequency": rfm.f,
                              "rfm.monetary": rfm.m}
    traces: dict[str, dict[str, bool]] = {}
    due = engagement_due
    if only is None:
        chosen = rules.segments
    else:  # the others as they are
        chosen = rules.in_order(only)
        ctx.segments.update(sid for sid in members or () if sid not in only)
    for segment in chosen:
        trace: dict[str, bool] = {}
        if segment.rule.evaluate(facts, ctx, trace):
            ctx.segments.add(segment.segment_id)
        traces[segment.segment_id] = trace
        change = segment.rule.next_change(facts, ctx, trace)
        if change is not None and (due is None or change < due):
            due = change
    return Evaluation(now, ctx.segments, traces, status, rfm, due)


def reevaluate(rules: TenantRules, members: AbstractSet[str],
               wanted: AbstractSet[str] | None, facts: ContactFacts, now: str,
               earlier_facts: ContactFacts, earlier: str,
               ) -> tuple[Evaluation | None, Evaluation]:
    """A change of a contact's facts (to ``facts``) or of time (to ``now``): the
    evaluation after it of the ``wanted`` segments (all if None), the others kept as
    ``members`` says, and, only if a membership flips, the evaluation before it
    (``earlier_facts`` at ``earlier``) of the flipped segments, whose clauses
    ``transitions`` compares."""
    after = evaluate(facts, rules, now, wanted, members)
    flipped = {sid for sid in after.traces if (sid in after.members) != (sid in members)}
    if not flipped:
        return None, after
    return evaluate(earlier_facts, rules, earlier, flipped, members), after


def transitions(
    members: set[str],
    before: Evaluation | None,
    after: Evaluation,
    rules: TenantRules,
    cause: str,
    ref: str,
) -> list[Transition]:
    """Entries and exits that take ``members`` to ``after.members``, with the flipped clauses."""
    out: list[Transition] = []
    for segment in rules.segments:
        sid = segment.segment_id
        if sid not in after.traces:
            continue  # not evaluated this time
        inside = sid in after.members
        if inside == (sid in members):
            continue
        clauses: tuple[str, ...] = ()
        if before is not None:
            old = before.traces.get(sid, {})
            clauses = tuple(p for p, v in after.traces[sid].items() if old.get(p) != v)
        out.append(
            Transition(sid, segment.definition.version, inside, after.now, cause, ref, clauses)
        )
    return out


def instant_before(moment: str) -> str:
    """One microsecond earlier: the last instant before a scheduled change."""
    return utc_iso(parse_utc_iso(moment) - timedelta(microseconds=1))

