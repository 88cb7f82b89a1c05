"""The audience read model: segment membership with history, engagement, lists, consent.

One projection, because these all follow the same per-contact facts and the same clock:

* ``audience_facts``: each contact's facts (``services.domain.facts``) as JSON, its open
  segment memberships, its engagement status and its next scheduled instant (``due_at``);
* ``segment_definitions``: each tenant's live and deleted segments, with their version;
* ``segment_history``: every membership as an interval [entered_at, exited_at), with why
  it began and ended (the triggering event id, the clock, or the definition version) and
  the clauses that flipped;
* ``engagement_counts`` / ``engagement_daily``: contacts per status, split by whether they
  are subscribed to a list, now and at the end of each day;
* ``list_counts`` / ``list_daily``: contacts per list and state, now and per day;
* ``consent_ledger``: every consent fact per channel with its source event;
* ``ficha_outbox``: ``segment_entered`` / ``segment_exited`` events for ``ficha.out``, in
  the order they happened, numbered; ``services.outbox`` publishes them.

Time comes from the log only: an event's recorded timestamp, or a clock tick
(``services.domain.clock``). The projection's "now" is the latest of these, so a rebuild
reproduces every row, the outbox included.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec

from projections.db import Cursor, ViewDatabase, any_of
from services.domain.audience import (
    CAUSE_CLOCK,
    CAUSE_DEFINITION,
    CAUSE_EVENT,
    Evaluation,
    TenantRules,
    Transition,
    evaluate,
    instant_before,
    transitions,
)
from services.domain.clock import ClockDay
from services.domain.contact import LIST_SUBSCRIBED, Contact
from services.domain.facts import ContactFacts
from services.domain.segments import SegmentCatalog, SegmentDefinition
from services.domain.stamps import utc_iso

NAME = "audience"
OUT_TYPES = ("segment_entered", "segment_exited")
CHUNK = 2000

TABLES = (
    "audience_facts",
    "segment_definitions",
    "segment_history",
    "engagement_counts",
    "engagement_daily",
    "list_counts",
    "list_daily",
    "consent_ledger",
    "ficha_outbox",
    "audience_state",
)


def ddl() -> list[str]:
    # Timestamps are the domain's fixed-width UTC strings and flags are integers, on both
    # backends: the same bytes everywhere, and string order is time order.
    return [
        "CREATE TABLE IF NOT EXISTS audience_facts ("
        "contact_id TEXT PRIMARY KEY, tenant TEXT NOT NULL, email TEXT NOT NULL, "
        "doc TEXT NOT NULL, members TEXT NOT NULL, entries TEXT NOT NULL, "
        "engagement TEXT, engagement_since TEXT, subscribed INTEGER NOT NULL, due_at TEXT)",
        "CREATE INDEX IF NOT EXISTS audience_facts_tenant ON audience_facts (tenant, contact_id)",
        "CREATE INDEX IF NOT EXISTS audience_facts_email ON audience_facts (tenant, email)",
        "CREATE INDEX IF NOT EXISTS audience_facts_due ON audience_facts (due_at, contact_id) "
        "WHERE due_at IS NOT NULL",
        "CREATE TABLE IF NOT EXISTS segment_definitions ("
        "tenant TEXT NOT NULL, segment_id TEXT NOT NULL, version INTEGER NOT NULL, "
        "name TEXT NOT NULL, rule TEXT NOT NULL, deleted INTEGER NOT NULL, "
        "created_at TEXT NOT NULL, changed_at TEXT NOT NULL, "
        "PRIMARY KEY (tenant, segment_id))",
        "CREATE TABLE IF NOT EXISTS segment_history ("
        "tenant TEXT NOT NULL, segment_id TEXT NOT NULL, contact_id TEXT NOT NULL, "
        "entry_no INTEGER NOT NULL, entered_at TEXT NOT NULL, entered_version INTEGER NOT NULL, "
        "enter_cause TEXT NOT NULL, enter_ref TEXT NOT NULL, enter_clauses TEXT NOT NULL, "
        "exited_at TEXT, exited_version INTEGER, exit_cause TEXT, exit_ref TEXT, "
        "exit_clauses TEXT, PRIMARY KEY (tenant, segment_id, contact_id, entry_no))",
        "CREATE INDEX IF NOT EXISTS segment_history_current "
        "ON segment_history (tenant, segment_id, contact_id) WHERE exited_at IS NULL",
        "CREATE INDEX IF NOT EXISTS segment_history_contact "
        "ON segment_history (contact_id, entered_at)",
        "CREATE TABLE IF NOT EXISTS engagement_counts (tenant TEXT NOT NULL, "
        "status TEXT NOT NULL, subscribed INTEGER NOT NULL, count BIGINT NOT NULL, "
        "PRIMARY KEY (tenant, status, subscribed))",
        "CREATE TABLE IF NOT EXISTS engagement_daily (tenant TEXT NOT NULL, day TEXT NOT NULL, "
        "status TEXT NOT NULL, subscribed INTEGER NOT NULL, count BIGINT NOT NULL, "
        "PRIMARY KEY (tenant, day, status, subscribed))",
        "CREATE TABLE IF NOT EXISTS list_counts (tenant TEXT NOT NULL, list_id TEXT NOT NULL, "
        "state TEXT NOT NULL, count BIGINT NOT NULL, PRIMARY KEY (tenant, list_id, state))",
        "CREATE TABLE IF NOT EXISTS list_daily (tenant TEXT NOT NULL, day TEXT NOT NULL, "
        "list_id TEXT NOT NULL, state TEXT NOT NULL, count BIGINT NOT NULL, "
        "PRIMARY KEY (tenant, day, list_id, state))",
        "CREATE TABLE IF NOT EXISTS consent_ledger (tenant TEXT NOT NULL, "
        "contact_id TEXT NOT NULL, channel TEXT NOT NULL, occurred_at TEXT NOT NULL, "
        "event_id TEXT NOT NULL, granted INTEGER NOT NULL, source TEXT NOT NULL, "
        "recorded_at TEXT NOT NULL, PRIMARY KEY (contact_id, channel, occurred_at, event_id))",
        "CREATE TABLE IF NOT EXISTS ficha_outbox (seq BIGINT PRIMARY KEY, "
        "subject TEXT NOT NULL, event_id TEXT NOT NULL, payload TEXT NOT NULL)",
        "CREATE TABLE IF NOT EXISTS audience_state (name TEXT PRIMARY KEY, value TEXT NOT NULL)",
    ]


def _json(value: Any) -> str:
    return msgspec.json.encode(value, order="sorted").decode()


def load_json(value: Any) -> Any:
    return msgspec.json.decode(value) if isinstance(value, str | bytes) else value


@dataclass
class _Row:
    facts: ContactFacts
    members: dict[str, int]  # segment id -> entry number of the open membership
    entries: dict[str, int]  # segment id -> entries so far
    engagement: str | None
    engagement_since: str | None
    subscribed: bool
    due: str | None
    # What the counts tables hold for this contact (None = not counted yet).
    counted_engagement: tuple[str, bool] | None
    counted_lists: dict[str, str]
    last: Evaluation | None = None

    def lists_now(self) -> dict[str, str]:
        out = {}
        for list_id in self.facts.lists:
            state = self.facts.list_state(list_id)
            if state is not None:
                out[list_id] = state
        return out


@dataclass
class _Writes:
    history: dict[tuple[str, str, str, int], list[Any]] = field(default_factory=dict)
    exits: list[list[Any]] = field(default_factory=list)
    outbox: list[tuple[int, str, str, str]] = field(default_factory=list)
    ledger: list[tuple[Any, ...]] = field(default_factory=list)


class AudienceProjection:
    name = NAME
    version = 1
    tables = TABLES

    def create_tables(self, db: ViewDatabase) -> None:
        with db.transaction() as cur:
            for statement in ddl():
                cur.execute(statement)

    def apply(self, cur: Cursor, events: Sequence[Any], is_postgres: bool) -> None:
        page = _Page(cur, is_postgres)
        page.run(events)


class _Page:
    """One page of the log applied in one transaction (flushed in parts as it goes)."""

    def __init__(self, cur: Cursor, is_postgres: bool) -> None:
        self.cur = cur
        self.is_postgres = is_postgres
        state = self._state()
        self.now: str = state.get("now", "")
        self.seq = int(state.get("outbox_seq", "0"))
        self.rows: dict[str, _Row] = {}
        self.rules: dict[str, TenantRules] = {}
        self.writes = _Writes()

    # ------------------------------------------------------------------ the loop

    def run(self, events: Sequence[Any]) -> None:
        contact_ids = [
            e.originator_id.hex for e in events
            if isinstance(e, Contact.Registered | Contact.Recorded)
        ]
        self._load(contact_ids)
        for event in events:
            if isinstance(event, Contact.Recorded):
                self._advance(utc_iso(event.timestamp))
                self._on_recorded(event)
            elif isinstance(event, Contact.Registered):
                self._advance(utc_iso(event.timestamp))
                self._on_registered(event)
            elif isinstance(event, ClockDay.Ticked):
                self._on_tick(event.at)
            elif isinstance(event, SegmentCatalog.Defined | SegmentCatalog.Deleted):
                self._advance(utc_iso(event.timestamp))
                self._on_definition(event)
        self._flush()
        self._save_state()

    def _advance(self, moment: str) -> None:
        """Move the clock forward (never back); daily series close at each midnight."""
        if moment <= self.now:
            return
        if self.now and moment[:10] != self.now[:10]:
            self._flush(keep_rows=True)
        self.now = moment

    # ------------------------------------------------------------------ contacts

    def _on_registered(self, event: Contact.Registered) -> None:
        cid = event.originator_id.hex
        if cid in self.rows:
            return
        facts = ContactFacts(tenant=event.tenant, contact_id=cid, email=event.email)
        facts.apply(event)
        self.rows[cid] = _Row(facts, {}, {}, None, None, False, None, None, {})

    def _row(self, cid: str) -> _Row:
        row = self.rows.get(cid)
        if row is None:  # evicted by a flush earlier in this page
            self._load([cid])
            row = self.rows[cid]
        return row

    def _on_recorded(self, event: Contact.Recorded) -> None:
        row = self._row(event.originator_id.hex)
        rules = self._rules(row.facts.tenant)
        self._catch_up(row, rules, self.now)
        before = row.last if row.last is not None and row.last.now == self.now else (
            evaluate(row.facts, rules, self.now)
        )
        row.facts.apply(event)
        after = evaluate(row.facts, rules, self.now)
        self._settle(row, rules, before, after, CAUSE_EVENT, event.event_id)
        if event.event_type == "consent_changed":
            data = event.entry.get("data", {})
            self.writes.ledger.append((
                row.facts.tenant, row.facts.contact_id, data["channel"], event.occurred_at,
                event.event_id, int(bool(data["granted"])), event.source, self.now,
            ))

    def _catch_up(self, row: _Row, rules: TenantRules, until: str) -> None:
        """Fire the contact's scheduled changes due at or before ``until``, each at its instant."""
        while row.due is not None and row.due <= until:
            due = row.due
            before = evaluate(row.facts, rules, instant_before(due))
            after = evaluate(row.facts, rules, due)
            self._settle(row, rules, before, after, CAUSE_CLOCK, "clock")
            if row.due is not None and row.due <= due:
                row.due = None  # nothing later is scheduled: stop

    def _settle(self, row: _Row, rules: TenantRules, before: Evaluation | None,
                after: Evaluation, cause: str, ref: str) -> None:
        for transition in transitions(set(row.members), before, after, rules, cause, ref):
            self._record_transition(row, transition)
        if after.engagement != row.engagement:
            row.engagement = after.engagement
            row.engagement_since = after.now
        row.subscribed = any(s == LIST_SUBSCRIBED for s in row.lists_now().values())
        row.due = after.due
        row.last = after

    def _record_transition(self, row: _Row, t: Transition) -> None:
        facts = row.facts
        tenant, cid = facts.tenant, facts.contact_id
        clauses = _json(list(t.clauses))
        if t.entered:
            entry_no = row.entries.get(t.segment_id, 0) + 1
            row.entries[t.segment_id] = entry_no
            row.members[t.segment_id] = entry_no
            self.writes.history[(tenant, t.segment_id, cid, entry_no)] = [
                tenant, t.segment_id, cid, entry_no, t.at, t.segment_version, t.cause, t.ref,
                clauses, None, None, None, None, None,
            ]
        else:
            entry_no = row.members.pop(t.segment_id)
            key = (tenant, t.segment_id, cid, entry_no)
            pending = self.writes.history.get(key)
            exit_values = [t.at, t.segment_version, t.cause, t.ref, clauses]
            if pending is not None:
                pending[9:14] = exit_values
            else:
                self.writes.exits.append([*exit_values, tenant, t.segment_id, cid, entry_no])
        kind = OUT_TYPES[0] if t.entered else OUT_TYPES[1]
        self.seq += 1
        event_id = f"{t.segment_id}:{cid}:{entry_no}:{'entered' if t.entered else 'exited'}"
        payload = {
            "event_id": event_id,
            "type": kind,
            "tenant": tenant,
            "occurred_at": t.at,
            "segment_id": t.segment_id,
            "segment_version": t.segment_version,
            "contact": {"contact_id": cid, "email": facts.email},
            "cause": {"kind": t.cause, "ref": t.ref, "clauses": list(t.clauses)},
            "entry_no": entry_no,
        }
        self.writes.outbox.append(
            (self.seq, f"ficha.out.{tenant}.{kind}", event_id, _json(payload))
        )

    # ------------------------------------------------------------------ time

    def _on_tick(self, at: str) -> None:
        """Fire every contact's changes due by ``at``, in due order, in chunks."""
        self._flush()
        while True:
            self.cur.execute(
                "SELECT contact_id FROM audience_facts WHERE due_at IS NOT NULL AND due_at <= ? "
                "ORDER BY due_at, contact_id LIMIT ?",
                (at, CHUNK),
            )
            ids = [r["contact_id"] for r in self.cur.fetchall()]
            if not ids:
                break
            self._load(ids)
            for cid in ids:
                row = self.rows[cid]
                if row.due is not None and row.due > self.now:
                    self._advance(row.due)  # the clock passes each instant in turn
                self._catch_up(row, self._rules(row.facts.tenant), at)
            self._flush()
        self._advance(at)

    # ------------------------------------------------------------------ definitions

    def _on_definition(self, event: SegmentCatalog.Defined | SegmentCatalog.Deleted) -> None:
        self._flush()
        tenant = event.tenant
        sid = event.segment_id
        self.cur.execute(
            "SELECT name, rule, created_at FROM segment_definitions "
            "WHERE tenant = ? AND segment_id = ?",
            (tenant, sid),
        )
        old = self.cur.fetchone()
        if isinstance(event, SegmentCatalog.Defined):
            name, rule, deleted = event.name, event.rule, 0
        else:
            assert old is not None
            name, rule, deleted = old["name"], load_json(old["rule"]), 1
        created = self.now if old is None else old["created_at"]
        self.cur.execute(
            "INSERT INTO segment_definitions (tenant, segment_id, version, name, rule, deleted, "
            "created_at, changed_at) VALUES (?,?,?,?,?,?,?,?) "
            "ON CONFLICT (tenant, segment_id) DO UPDATE SET version = excluded.version, "
            "name = excluded.name, rule = excluded.rule, deleted = excluded.deleted, "
            "changed_at = excluded.changed_at",
            (tenant, sid, event.segment_version, name, _json(rule), deleted, created, self.now),
        )
        self.rules.pop(tenant, None)
        rules = self._rules(tenant)
        ref = f"{sid}@v{event.segment_version}"
        # Backfill: every contact of the tenant, in chunks, against the new definitions.
        after_id = ""
        while True:
            self.cur.execute(
                "SELECT contact_id FROM audience_facts WHERE tenant = ? AND contact_id > ? "
                "ORDER BY contact_id LIMIT ?",
                (tenant, after_id, CHUNK),
            )
            ids = [r["contact_id"] for r in self.cur.fetchall()]
            if not ids:
                break
            self._load(ids)
            for cid in ids:
                row = self.rows[cid]
                self._catch_up(row, rules, self.now)
                if deleted:
                    self._close_deleted(row, sid, event.segment_version, ref)
                after = evaluate(row.facts, rules, self.now)
                self._settle(row, rules, None, after, CAUSE_DEFINITION, ref)
            after_id = ids[-1]
            self._flush()

    def _close_deleted(self, row: _Row, sid: str, version: int, ref: str) -> None:
        if sid in row.members:
            self._record_transition(
                row, Transition(sid, version, False, self.now, CAUSE_DEFINITION, ref)
            )

    def _rules(self, tenant: str) -> TenantRules:
        rules = self.rules.get(tenant)
        if rules is None:
            self.cur.execute(
                "SELECT segment_id, name, version, rule FROM segment_definitions "
                "WHERE tenant = ? AND deleted = 0 ORDER BY segment_id",
                (tenant,),
            )
            definitions = [
                SegmentDefinition(r["segment_id"], r["name"], r["version"], load_json(r["rule"]))
                for r in self.cur.fetchall()
            ]
            rules = self.rules[tenant] = TenantRules.compile(definitions)
        return rules

    # ------------------------------------------------------------------ storage

    def _load(self, ids: Iterable[str]) -> None:
        wanted = sorted({cid for cid in ids if cid not in self.rows})
        for condition, params in any_of("contact_id", wanted, self.is_postgres):
            self.cur.execute(
                "SELECT contact_id, tenant, email, doc, members, entries, engagement, "
                f"engagement_since, subscribed, due_at FROM audience_facts WHERE {condition}",
                params,
            )
            for r in self.cur.fetchall():
                facts = ContactFacts.from_doc(
                    r["tenant"], r["contact_id"], r["email"], load_json(r["doc"])
                )
                row = _Row(
                    facts, load_json(r["members"]), load_json(r["entries"]), r["engagement"],
                    r["engagement_since"], bool(r["subscribed"]), r["due_at"], None, {},
                )
                row.counted_engagement = (
                    None if r["engagement"] is None else (r["engagement"], bool(r["subscribed"]))
                )
                row.counted_lists = row.lists_now()
                self.rows[r["contact_id"]] = row

    def _flush(self, keep_rows: bool = False) -> None:
        cur, w = self.cur, self.writes
        if self.rows:
            cur.executemany(
                "INSERT INTO audience_facts (contact_id, tenant, email, doc, members, entries, "
                "engagement, engagement_since, subscribed, due_at) VALUES (?,?,?,?,?,?,?,?,?,?) "
                "ON CONFLICT (contact_id) DO UPDATE SET doc = excluded.doc, "
                "members = excluded.members, entries = excluded.entries, "
                "engagement = excluded.engagement, engagement_since = excluded.engagement_since, "
                "subscribed = excluded.subscribed, due_at = excluded.due_at",
                [
                    (cid, r.facts.tenant, r.facts.email, _json(r.facts.to_doc()),
                     _json(r.members), _json(r.entries), r.engagement, r.engagement_since,
                     int(r.subscribed), r.due)
                    for cid, r in sorted(self.rows.items())
                ],
            )
        if w.history:
            cur.executemany(
                "INSERT INTO segment_history (tenant, segment_id, contact_id, entry_no, "
                "entered_at, entered_version, enter_cause, enter_ref, enter_clauses, exited_at, "
                "exited_version, exit_cause, exit_ref, exit_clauses) "
                "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                [w.history[k] for k in sorted(w.history)],
            )
        if w.exits:
            cur.executemany(
                "UPDATE segment_history SET exited_at = ?, exited_version = ?, exit_cause = ?, "
                "exit_ref = ?, exit_clauses = ? WHERE tenant = ? AND segment_id = ? "
                "AND contact_id = ? AND entry_no = ?",
                w.exits,
            )
        if w.outbox:
            cur.executemany(
                "INSERT INTO ficha_outbox (seq, subject, event_id, payload) VALUES (?,?,?,?)",
                w.outbox,
            )
        if w.ledger:
            cur.executemany(
                "INSERT INTO consent_ledger (tenant, contact_id, channel, occurred_at, event_id, "
                "granted, source, recorded_at) VALUES (?,?,?,?,?,?,?,?) "
                "ON CONFLICT (contact_id, channel, occurred_at, event_id) DO NOTHING",
                w.ledger,
            )
        self._flush_counts()
        self.writes = _Writes()
        if keep_rows:
            for row in self.rows.values():
                row.counted_engagement = (
                    None if row.engagement is None else (row.engagement, row.subscribed)
                )
                row.counted_lists = row.lists_now()
        else:
            self.rows = {}

    def _flush_counts(self) -> None:
        engagement: dict[tuple[str, str, int], int] = {}
        lists: dict[tuple[str, str, str], int] = {}
        for row in self.rows.values():
            tenant = row.facts.tenant
            now_key = None if row.engagement is None else (row.engagement, row.subscribed)
            if now_key != row.counted_engagement:
                if row.counted_engagement is not None:
                    old = (tenant, row.counted_engagement[0], int(row.counted_engagement[1]))
                    engagement[old] = engagement.get(old, 0) - 1
                if now_key is not None:
                    new = (tenant, now_key[0], int(now_key[1]))
                    engagement[new] = engagement.get(new, 0) + 1
            current = row.lists_now()
            if current != row.counted_lists:
                for list_id, state in row.counted_lists.items():
                    if current.get(list_id) != state:
                        key = (tenant, list_id, state)
                        lists[key] = lists.get(key, 0) - 1
                for list_id, state in current.items():
                    if row.counted_lists.get(list_id) != state:
                        key = (tenant, list_id, state)
                        lists[key] = lists.get(key, 0) + 1
        day = self.now[:10]
        cur = self.cur
        engagement = {k: v for k, v in engagement.items() if v}
        lists = {k: v for k, v in lists.items() if v}
        if engagement:
            cur.executemany(
                "INSERT INTO engagement_counts (tenant, status, subscribed, count) "
                "VALUES (?,?,?,?) ON CONFLICT (tenant, status, subscribed) "
                "DO UPDATE SET count = engagement_counts.count + excluded.count",
                [(*k, v) for k, v in sorted(engagement.items())],
            )
            # Keys that went back to zero are removed, so the rows depend on the counts
            # alone, not on the path (and the page sizes) that led to them.
            cur.execute("DELETE FROM engagement_counts WHERE count = 0")
            for tenant in sorted({k[0] for k in engagement}):
                cur.execute("DELETE FROM engagement_daily WHERE tenant = ? AND day = ?",
                            (tenant, day))
                cur.execute(
                    "INSERT INTO engagement_daily (tenant, day, status, subscribed, count) "
                    "SELECT tenant, ?, status, subscribed, count FROM engagement_counts "
                    "WHERE tenant = ?",
                    (day, tenant),
                )
        if lists:
            cur.executemany(
                "INSERT INTO list_counts (tenant, list_id, state, count) VALUES (?,?,?,?) "
                "ON CONFLICT (tenant, list_id, state) "
                "DO UPDATE SET count = list_counts.count + excluded.count",
                [(*k, v) for k, v in sorted(lists.items())],
            )
            cur.execute("DELETE FROM list_counts WHERE count = 0")
            for tenant in sorted({k[0] for k in lists}):
                cur.execute("DELETE FROM list_daily WHERE tenant = ? AND day = ?", (tenant, day))
                cur.execute(
                    "INSERT INTO list_daily (tenant, day, list_id, state, count) "
                    "SELECT tenant, ?, list_id, state, count FROM list_counts WHERE tenant = ?",
                    (day, tenant),
                )

    def _state(self) -> dict[str, str]:
        self.cur.execute(
            "SELECT name, value FROM audience_state WHERE name IN ('now', 'outbox_seq')"
        )
        return {r["name"]: r["value"] for r in self.cur.fetchall()}

    def _save_state(self) -> None:
        self.cur.executemany(
            "INSERT INTO audience_state (name, value) VALUES (?, ?) "
            "ON CONFLICT (name) DO UPDATE SET value = excluded.value",
            [("now", self.now), ("outbox_seq", str(self.seq))],
        )
