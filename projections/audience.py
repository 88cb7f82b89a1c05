"""The audience read model: segment membership with history, engagement, lists, consent.

One projection, because these all follow the same per-contact facts and the same clock:

* ``audience_facts``: each contact's facts (``services.domain.facts``) as JSON, its
  engagement status, RFM scores and its lists' effective states (``lists``);
* ``audience_segments``: each contact's open segment memberships (``members``), its
  entries so far per segment (``entries``) and its next scheduled instant (``due_at``):
  narrow rows of their own, because a new segment, a clock tick or a tenant's new
  windows change these for many contacts at once and nothing else of theirs (a wide
  ``audience_facts`` row costs several times as much to rewrite: bench/RESULTS.md);
* ``segment_definitions``: each tenant's live and deleted segments, with their version;
* ``segment_history``: every membership as an interval [entered_at, exited_at), with why
  it began and ended (the triggering event id, the clock, or the definition version) and
  the clauses that flipped;
* ``audience_counts`` / ``audience_daily``: tallies now and at the end of each day:
  contacts per engagement status (split by whether they are subscribed to a list), per
  list and state, per list, state and engagement status, per RFM group and per RFM
  recency x frequency cell;
* ``consent_ledger``: every consent fact per channel with its source event;
* ``ficha_outbox``: ``segment_entered`` / ``segment_exited`` / ``contact_erased`` events for
  ``ficha.out``, in the order they happened, numbered; ``services.outbox`` publishes them;
* ``audience_erasures``: this projection's confirmation of each erasure it applied.

Erasure (decision 0006): the contact's facts, segment state, segment history and consent
ledger rows are deleted; its tallies are taken out of ``audience_counts`` (the day's
series follows; past days keep their counts, which hold nothing personal); its outbox
rows become tombstones (no payload: the relay publishes none of them, and their numbers
stay taken); a ``contact_erased`` event is added to the outbox. Segment memberships end without a
``segment_exited``: ``contact_erased`` tells automation the contact is gone everywhere.

Time comes from the log only: an event's recorded timestamp, or a clock tick
(``services.domain.clock``). The projection's "now" is the latest of these, so a rebuild
with the same rules reproduces every row, the outbox included, except where an erasure
changed what was decided live (the RFM cuts a buyer counted in): ``services.outbox`` says
how the relay goes on then.
"""

from __future__ import annotations

import heapq
from collections.abc import (
    Callable,
    Collection,
    Generator,
    Iterable,
    Iterator,
    Sequence,
    Set,
)
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass, field
from functools import lru_cache
from itertools import chain
from typing import Any

import msgspec

from contracts.events import CONSENT_CHANNELS
from contracts.outbound import (
    ContactErased,
    OutContact,
    SegmentEntered,
    SegmentExited,
    TransitionCause,
    out_subject,
)
from projections.contacts import ERASURES_DDL, erase_rows
from projections.db import (
    Cursor,
    DeferredWrites,
    ViewDatabase,
    any_of,
    bulk_insert,
    bulk_update,
)
from projections.segment_sql import prefilter
from services.domain.audience import (
    CAUSE_CLOCK,
    CAUSE_DEFINITION,
    CAUSE_EVENT,
    Evaluation,
    TenantRules,
    Transition,
    evaluate,
    instant_before,
    reevaluate,
    transitions,
)
from services.domain.clock import ClockDay
from services.domain.contact import LIST_SUBSCRIBED, Contact
from services.domain.facts import DEFAULT_SOFT_BOUNCE_LIMIT, ContactFacts
from services.domain.rfm import (
    MIN_RANKED_BUYERS,
    Rfm,
    RfmCuts,
    cuts_outgrown,
    rfm_values,
    score,
)
from services.domain.rules import COUNTS
from services.domain.segments import SegmentCatalog, SegmentDefinition
from services.domain.stamps import utc_iso
from services.domain.tenant import TenantSettings

NAME = "audience"
CHUNK = 2000

TABLES = (
    "audience_facts",
    "audience_segments",
    "segment_definitions",
    "segment_history",
    "audience_counts",
    "audience_daily",
    "consent_ledger",
    "ficha_outbox",
    "audience_state",
    "audience_erasures",
)
ERASURES_TABLE = "audience_erasures"
# A tenant's request for new RFM cuts (audience_state row ``rfm_pending:<tenant>``, its
# value the instant it was made): held until the tenant is rescored; while any is held,
# the scheduler appends a ``ClockDay.RescoreRequested``, which rescores those tenants.
RESCORE_REQUEST = "rfm_pending:"
PERSONAL_TABLES = ("audience_facts", "audience_segments", "segment_history",
                   "consent_ledger")
# An outbox row of an erased contact: its number and id stay, its payload goes.
TOMBSTONE = ""
OUTBOX_COLUMNS = (("seq", "bigint"), ("subject", "text"), ("event_id", "text"),
                  ("payload", "text"), ("contact_id", "text"))


FILTER_COLUMNS = (
    "country", "language", "language_base", "contact_type", "lead_status", "member_status",
    *(f"consent_{channel}" for channel in CONSENT_CHANNELS), "tags",
    "first_seen_at", "last_activity_at", "last_interaction_at", "last_purchase_at",
    *(f"n_{name}" for name in COUNTS),
)
DERIVED_COLUMNS = (
    "engagement", "engagement_since", "subscribed", "rfm", "rfm_group", "lists",
)
SEGMENT_TYPES = (("contact_id", "text"), ("tenant", "text"), ("members", "text"),
                 ("entries", "text"), ("due_at", "text"))
FACT_COLUMNS = ("contact_id", "tenant", "email", "doc", *DERIVED_COLUMNS, *FILTER_COLUMNS)
# Each column's PostgreSQL type, for the array-based bulk writes (projections.db).
FACT_TYPES = tuple(
    (c, "integer" if c == "subscribed" or c.startswith(("consent_", "n_")) else "text")
    for c in FACT_COLUMNS
)
LEDGER_TYPES = (("tenant", "text"), ("contact_id", "text"), ("channel", "text"),
                ("occurred_at", "text"), ("event_id", "text"), ("granted", "integer"),
                ("source", "text"), ("recorded_at", "text"))
COUNT_TYPES = (("tenant", "text"), ("metric", "text"), ("k1", "text"), ("k2", "text"),
               ("count", "bigint"))
DERIVED_TYPES = tuple(
    (c, "integer" if c == "subscribed" else "text") for c in DERIVED_COLUMNS
)
HISTORY_COLUMNS = tuple(
    (c, "integer" if c in ("entry_no", "entered_version", "exited_version") else "text")
    for c in ("tenant", "segment_id", "contact_id", "entry_no", "entered_at",
              "entered_version", "enter_cause", "enter_ref", "enter_clauses", "exited_at",
              "exited_version", "exit_cause", "exit_ref", "exit_clauses")
)


def _derived(r: _Row) -> tuple[Any, ...]:
    """The row's ``DERIVED_COLUMNS`` as written."""
    return (r.engagement, r.engagement_since, int(r.subscribed),
            None if r.rfm is None else _json(r.rfm),
            None if r.rfm is None else r.rfm["group"],
            _json({k: list(v) for k, v in r.facts.list_states(r.soft_limit).items()}))


def _segment_state(r: _Row) -> tuple[str, str, str | None]:
    """The row's ``audience_segments`` values as written: members, entries, due."""
    return _json(r.members), _json(r.entries), r.due


def filter_values(facts: ContactFacts) -> tuple[Any, ...]:
    f = facts.fields
    language = f.get("language")
    totals = {kind: len(items) for kind, items in facts.activity.items()}
    consent = facts.consent
    return (
        f.get("country"), language, language.split("-")[0].lower() if language else None,
        f.get("contact_type"), f.get("lead_status"), facts.member_status,
        *(None if consent.get(c) is None else int(consent[c])
          for c in CONSENT_CHANNELS),
        _json(sorted(facts.tags)), facts.first_seen_at, facts.last_activity_at,
        facts.last_interaction_at, facts.last_purchase_at,
        *(totals.get(kind, 0) for kind in COUNTS.values()),
    )


def ddl() -> list[str]:
    # Timestamps are the domain's fixed-width UTC strings and flags are integers, on both
    # backends: the same bytes everywhere, and string order is time order.
    return [
        "CREATE TABLE IF NOT EXISTS audience_facts ("
        "contact_id TEXT PRIMARY KEY, tenant TEXT NOT NULL, email TEXT NOT NULL, "
        "doc TEXT NOT NULL, "
        "engagement TEXT, engagement_since TEXT, subscribed INTEGER NOT NULL, rfm TEXT, "
        "rfm_group TEXT, lists TEXT NOT NULL, "
        # Copies of facts that never change by time alone: segment_sql narrows a backfill
        # or a preview to the contacts that can match with them.
        + ", ".join(f"{c} {'INTEGER' if c.startswith(('consent_', 'n_')) else 'TEXT'}"
                    for c in FILTER_COLUMNS)
        + ")",
        "CREATE INDEX IF NOT EXISTS audience_facts_tenant ON audience_facts (tenant, contact_id)",
        "CREATE INDEX IF NOT EXISTS audience_facts_email ON audience_facts (tenant, email)",
        "CREATE INDEX IF NOT EXISTS audience_facts_buyers ON audience_facts (tenant, contact_id) "
        "WHERE last_purchase_at IS NOT NULL",
        "CREATE TABLE IF NOT EXISTS audience_segments (contact_id TEXT PRIMARY KEY, "
        "tenant TEXT NOT NULL, members TEXT NOT NULL, entries TEXT NOT NULL, due_at TEXT)",
        "CREATE INDEX IF NOT EXISTS audience_segments_due ON audience_segments "
        "(due_at, contact_id) WHERE due_at IS NOT NULL",
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
        # Tallies: metric "engagement" (key: status, subscribed 0/1), "list" (key: list id,
        # state), "list_engagement" (key: list id, "state:status"), "rfm" (key: group, "")
        # and "rfm_grid" (key: R score, F score).
        "CREATE TABLE IF NOT EXISTS audience_counts (tenant TEXT NOT NULL, "
        "metric TEXT NOT NULL, k1 TEXT NOT NULL, k2 TEXT NOT NULL, count BIGINT NOT NULL, "
        "PRIMARY KEY (tenant, metric, k1, k2))",
        "CREATE TABLE IF NOT EXISTS audience_daily (tenant TEXT NOT NULL, day TEXT NOT NULL, "
        "metric TEXT NOT NULL, k1 TEXT NOT NULL, k2 TEXT NOT NULL, count BIGINT NOT NULL, "
        "PRIMARY KEY (tenant, metric, day, k1, k2))",
        "CREATE TABLE IF NOT EXISTS consent_ledger (tenant TEXT NOT NULL, "
        "contact_id TEXT NOT NULL, channel TEXT NOT NULL, occurred_at TEXT NOT NULL, "
        "event_id TEXT NOT NULL, granted INTEGER NOT NULL, source TEXT NOT NULL, "
        "recorded_at TEXT NOT NULL, PRIMARY KEY (contact_id, channel, occurred_at, event_id))",
        "CREATE TABLE IF NOT EXISTS ficha_outbox (seq BIGINT PRIMARY KEY, "
        "subject TEXT NOT NULL, event_id TEXT NOT NULL, payload TEXT NOT NULL, contact_id TEXT)",
        "CREATE INDEX IF NOT EXISTS ficha_outbox_contact ON ficha_outbox (contact_id)",
        "CREATE INDEX IF NOT EXISTS ficha_outbox_event ON ficha_outbox (event_id)",
        "CREATE TABLE IF NOT EXISTS audience_state (name TEXT PRIMARY KEY, value TEXT NOT NULL)",
        ERASURES_DDL.format(table=ERASURES_TABLE),
    ]


def _json(value: Any) -> str:
    return msgspec.json.encode(value, order="sorted").decode()


def rescore_requests(cur: Cursor) -> dict[str, str]:
    """The tenants asking for new RFM cuts, each with the instant it asked."""
    cur.execute(
        "SELECT name, value FROM audience_state "
        f"WHERE substr(name, 1, {len(RESCORE_REQUEST)}) = ?",
        (RESCORE_REQUEST,),
    )
    return {r["name"][len(RESCORE_REQUEST):]: r["value"] for r in cur.fetchall()}


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
    rfm: dict[str, Any] | None = None
    soft_limit: int = DEFAULT_SOFT_BOUNCE_LIMIT  # the tenant's, for list states
    dirty: bool = False  # changed since loaded or last written
    facts_changed: bool = False  # an event changed the facts (else only derived columns)
    # The tallies this contact adds to audience_counts as stored (what a flush diffs).
    counted: frozenset[tuple[str, str, str]] = frozenset()
    # Its columns as stored (``_derived``, ``_segment_state``; None: no row yet): a flush
    # writes a table's row only if its part changed.
    written_derived: tuple[Any, ...] | None = None
    written_segments: tuple[str, str, str | None] | None = None
    # What ``written_derived`` was made of, but the facts (``derived_inputs``).
    derived_from: tuple[Any, ...] | None = None

    def derived_inputs(self) -> tuple[Any, ...]:
        """What ``_derived`` reads besides the facts."""
        return (self.engagement, self.engagement_since, self.subscribed, self.rfm,
                self.soft_limit)

    def lists_now(self) -> dict[str, str]:
        out = {}
        for list_id in self.facts.lists:
            state = self.facts.list_state(list_id, self.soft_limit)
            if state is not None:
                out[list_id] = state
        return out

    def tallies(self) -> frozenset[tuple[str, str, str]]:
        if self.engagement is None:  # registered, not evaluated yet: not counted
            return frozenset()
        rfm = self.rfm or {}
        if not self.facts.lists:  # most contacts: the same few sets, made once
            return _status_tallies(self.engagement, self.subscribed, rfm.get("group"),
                                   rfm.get("r"), rfm.get("f"))
        out = {("engagement", self.engagement, str(int(self.subscribed)))}
        lists = self.lists_now()
        out.update(("list", list_id, state) for list_id, state in lists.items())
        # Engagement per list and state ("subscribed:engaged"): a list keeps every contact
        # that was ever on it in some state, so the metric's snapshots are never empty.
        out.update(("list_engagement", list_id, f"{state}:{self.engagement}")
                   for list_id, state in lists.items())
        if self.rfm is not None:
            out.add(("rfm", self.rfm["group"], ""))
            if self.rfm.get("r") is not None:
                out.add(("rfm_grid", str(self.rfm["r"]), str(self.rfm["f"])))
        return frozenset(out)


@lru_cache(maxsize=4096)
def _status_tallies(engagement: str, subscribed: bool, rfm_group: str | None,
                    r: int | None, f: int | None) -> frozenset[tuple[str, str, str]]:
    """``_Row.tallies`` of a contact on no list."""
    out = {("engagement", engagement, str(int(subscribed)))}
    if rfm_group is not None:
        out.add(("rfm", rfm_group, ""))
        if r is not None:
            out.add(("rfm_grid", str(r), str(f)))
    return frozenset(out)


@dataclass
class _Writes:
    history: dict[tuple[str, str, str, int], list[Any]] = field(default_factory=dict)
    exits: list[list[Any]] = field(default_factory=list)
    outbox: list[tuple[int, str, str, str, str]] = field(default_factory=list)
    ledger: list[tuple[Any, ...]] = field(default_factory=list)


class AudienceProjection:
    name = NAME
    # 4: list states and the list x engagement tally (SQL views) or erasure confirmations;
    # 5: both; 6: rows written before a deleted segment's members were rewritten (they
    # kept its id as an open membership): rebuilt from the log; 7: RFM cuts taken again
    # as a tenant's buyers grow, and the tenant's buyer count (audience_state); 8: a
    # rescoring request is a tenant's own (``rfm_pending:<tenant>``, was one flag for
    # all): a RescoreRequested in the log rescores only the tenants that asked, so rows
    # written when it rescored every tenant are not what a rebuild gives; 9: a tenant
    # whose buyers were all erased loses its RFM cuts (they kept thresholds of the erased
    # people's values) and its buyer count of 0 when rescored; 10: memberships, entries
    # and the next due instant in a narrow table of their own (``audience_segments``)
    version = 10
    tables: tuple[str, ...] = TABLES
    erasures_table = ERASURES_TABLE

    @staticmethod
    def tenant_scope(table: str, tenant: str) -> tuple[str, list[Any]] | None:
        """A tenant's rows of each table, for ``ficha projections replay --tenant``."""
        if table == "ficha_outbox":
            return None  # published already; a tenant replay announces nothing
        if table == "audience_state":
            return "name IN (?, ?, ?, ?)", [f"settings:{tenant}", f"rfm_cuts:{tenant}",
                                            f"rfm_buyers:{tenant}",
                                            f"{RESCORE_REQUEST}{tenant}"]
        return "tenant = ?", [tenant]

    def statements(self, is_postgres: bool) -> list[str]:
        """The DDL of this projection's tables and indexes."""
        return ddl()

    def create_tables(self, db: ViewDatabase) -> None:
        with db.transaction() as cur:
            for statement in self.statements(db.is_postgres):
                cur.execute(statement)

    def apply(self, cur: Cursor, events: Sequence[Any], is_postgres: bool) -> None:
        page = _Page(cur, is_postgres)
        page.run(events)


class _ConnectionInUse:
    """The page's cursor while the database thread of ``_Page._written_behind`` has the
    connection: any use is a programming error, raised at once rather than racing."""

    def __getattr__(self, name: str) -> Any:
        raise RuntimeError("the database connection is in use by the write-behind thread: "
                           "a chunk's evaluation must not query")


IN_USE: Any = _ConnectionInUse()


# A contact's stored row as ``_Page._admit`` takes it: facts and segment state.
STORED_ROW = (
    "SELECT f.contact_id, f.tenant, f.doc, f.engagement, f.engagement_since, f.subscribed, "
    "f.rfm, f.rfm_group, f.lists, s.members, s.entries, s.due_at "
    "FROM audience_facts f LEFT JOIN audience_segments s ON s.contact_id = f.contact_id"
)
# The server-side cursor of a backfill on PostgreSQL (``_Page._on_definition``).
BACKFILL_CURSOR = "ficha_backfill"


def _fetch(cur: Cursor, ids: Collection[str], is_postgres: bool) -> list[dict[str, Any]]:
    """The stored rows of the contacts ``ids``, for ``_admit``."""
    found: list[dict[str, Any]] = []
    for condition, params in any_of("f.contact_id", sorted(ids), is_postgres):
        cur.execute(f"{STORED_ROW} WHERE {condition}", params)
        found.extend(cur.fetchall())
    return found


class _Page:
    """One page of the log applied in one transaction (flushed in parts as it goes)."""

    def __init__(self, cur: Cursor, is_postgres: bool) -> None:
        self.cur = cur
        self.is_postgres = is_postgres
        state = self._state()
        self.now: str = state.get("now", "")
        self.seq = int(state.get("outbox_seq", "0"))
        self.rows: dict[str, _Row] = {}
        # The contacts of this page's events: their rows stay in memory across flushes
        # (``_flush``), for the page's later events.
        self.page_ids: frozenset[str] = frozenset()
        self.rules: dict[str, TenantRules] = {}
        self.cuts: dict[str, RfmCuts | None] = {}
        self.buyers: dict[str, int] = {}  # tenant -> buyers now (``_buyers``)
        # tenant -> when it asked for new RFM cuts (``RESCORE_REQUEST``), as stored and now
        self.requests_saved = rescore_requests(cur)
        self.requests = dict(self.requests_saved)
        self.writes = _Writes()

    # ------------------------------------------------------------------ the loop

    def run(self, events: Sequence[Any]) -> None:
        self.page_ids = frozenset(
            e.originator_id.hex for e in events
            if isinstance(e, Contact.Registered | Contact.Recorded)
        )
        self._load(self.page_ids)
        for event in events:
            if isinstance(event, Contact.Recorded):
                self._advance(utc_iso(event.timestamp))
                self._on_recorded(event)
            elif isinstance(event, Contact.Registered):
                self._advance(utc_iso(event.timestamp))
                self._on_registered(event)
            elif isinstance(event, Contact.Erased):
                self._advance(utc_iso(event.timestamp))
                self._on_erased(event)
            elif isinstance(event, Contact.Redacted):
                # Erased since: nothing to apply, but the log's clock moves as it did.
                self._advance(utc_iso(event.timestamp))
            elif isinstance(event, Contact.Reopened):
                self._advance(utc_iso(event.timestamp))
                self._open(event.tenant, event.originator_id.hex, event.email, event)
            elif isinstance(event, ClockDay.Ticked):
                self._on_tick(event.at)
            elif isinstance(event, ClockDay.RescoreRequested):
                self._advance(event.at)
                if self.requests:  # (a midnight on the way may have answered them)
                    self._rescore_rfm(frozenset(self.requests))
            elif isinstance(event, SegmentCatalog.Defined | SegmentCatalog.Deleted):
                self._advance(utc_iso(event.timestamp))
                self._on_definition(event)
            elif isinstance(event, TenantSettings.Changed):
                self._advance(utc_iso(event.timestamp))
                self._on_settings(event)
        self._flush()
        self._save_state()

    def _advance(self, moment: str) -> None:
        """Move the clock forward (never back). At each UTC midnight passed, the day's
        series are closed and every buyer is rescored against new RFM quintiles."""
        if moment <= self.now:
            return
        if self.now and moment[:10] != self.now[:10]:
            self._flush(keep_rows=True)
            self.now = moment[:10] + "T00:00:00.000000Z"
            self._rescore_rfm()
        self.now = moment

    # ------------------------------------------------------------------ contacts

    def _on_registered(self, event: Contact.Registered) -> None:
        cid = event.originator_id.hex
        if cid in self.rows:
            return
        self._open(event.tenant, cid, event.email, event)

    def _open(self, tenant: str, cid: str, email: str, event: Any) -> None:
        facts = ContactFacts(tenant=tenant, contact_id=cid, email=email)
        facts.apply(event)
        self.rows[cid] = _Row(facts, {}, {}, None, None, False, None, dirty=True,
                              facts_changed=True,
                              soft_limit=self._rules(tenant).soft_bounce_limit)

    def _on_erased(self, event: Contact.Erased) -> None:
        """Take the contact out of every row, tally and pending outbound event."""
        cid, tenant = event.originator_id.hex, event.tenant
        self._flush(keep_rows=True)  # what this page decided so far, the contact's too
        if cid not in self.rows:
            self._load([cid])
        row = self.rows.pop(cid, None)
        if row is not None:
            self._apply_deltas({(tenant, *tally): -1 for tally in row.counted})
            if row.facts.last_purchase_at is not None:
                self.buyers[tenant] = self._buyers(tenant) - 1
        # The quintiles may have counted this contact: its tenant's are taken again soon.
        # Whatever it was: a rebuild replays its events redacted and cannot tell that it
        # bought, yet must ask as the live run did (the request decides who is rescored).
        self._request_rescore(tenant)
        erase_rows(self.cur, PERSONAL_TABLES, ERASURES_TABLE,
                   [(tenant, cid, event.originator_version, event.event_id)], self.is_postgres)
        self.cur.execute(
            "UPDATE ficha_outbox SET payload = ? WHERE contact_id = ? AND subject <> ?",
            (TOMBSTONE, cid, out_subject(tenant, "contact_erased")),
        )
        out = ContactErased(
            event_id=f"{cid}:erased:{event.originator_version}", tenant=tenant,
            occurred_at=utc_iso(event.timestamp), requested_at=event.requested_at,
            contact_id=cid,
        )
        self.seq += 1
        self.writes.outbox.append((self.seq, out_subject(tenant, "contact_erased"),
                                   out.event_id, msgspec.json.encode(out).decode(), cid))

    def _row(self, cid: str) -> _Row:
        row = self.rows.get(cid)
        if row is None:  # evicted by a flush earlier in this page
            self._load([cid])
            row = self.rows[cid]
        return row

    def _on_recorded(self, event: Contact.Recorded) -> None:
        row = self._row(event.originator_id.hex)
        row.dirty = row.facts_changed = True
        rules = self._rules(row.facts.tenant)
        self._catch_up(row, rules, self.now)
        # Only the segments the event can change (``TenantRules.to_evaluate``), or all of
        # them for a contact never evaluated yet (just registered); the facts before the
        # event are evaluated only if a membership flips, for its clauses.
        touched = row.facts.touched_by(event)
        wanted = None if row.engagement is None else rules.to_evaluate(touched)
        # (with nothing to evaluate nothing can flip, and the facts before are not read)
        earlier = row.facts.copy_before(touched) if wanted is None or wanted else row.facts
        was_buyer = row.facts.last_purchase_at is not None
        row.facts.apply(event)
        before, after = reevaluate(rules, set(row.members), wanted, row.facts, self.now,
                                   earlier, self.now)
        self._settle(row, rules, before, after, CAUSE_EVENT, event.event_id)
        if event.event_type == "consent_changed":
            data = event.entry.get("data", {})
            self.writes.ledger.append((
                row.facts.tenant, row.facts.contact_id, data["channel"], event.occurred_at,
                event.event_id, int(bool(data["granted"])), event.source, self.now,
            ))
        if not was_buyer and row.facts.last_purchase_at is not None:
            self._new_buyer(row.facts.tenant)

    def _catch_up(self, row: _Row, rules: TenantRules, until: str) -> None:
        """Fire the contact's scheduled changes due at or before ``until``, each at its instant."""
        while row.due is not None and row.due <= until:
            due = row.due
            before, after = reevaluate(rules, set(row.members), rules.to_evaluate(),
                                       row.facts, due, row.facts, instant_before(due))
            self._settle(row, rules, before, after, CAUSE_CLOCK, "clock")
            if row.due is not None and row.due <= due:
                # Nothing later is scheduled: stop, and store that (else the stored due
                # instant would fire again at every tick).
                row.due = None
                row.dirty = True

    def _settle(self, row: _Row, rules: TenantRules, before: Evaluation | None,
                after: Evaluation, cause: str, ref: str) -> None:
        was = (row.engagement, row.subscribed, row.rfm, row.due)
        for transition in transitions(set(row.members), before, after, rules, cause, ref):
            self._record_transition(row, transition)
        if after.engagement != row.engagement:
            row.engagement = after.engagement
            row.engagement_since = after.now
        row.subscribed = any(s == LIST_SUBSCRIBED for s in row.lists_now().values())
        if after.rfm is not None:
            self._set_rfm(row, after.rfm)
        row.due = after.due
        if (row.engagement, row.subscribed, row.rfm, row.due) != was:
            row.dirty = True

    def _set_rfm(self, row: _Row, rfm: Rfm) -> None:
        row.rfm = {"group": rfm.group, "r": rfm.r, "f": rfm.f, "m": rfm.m,
                   **({} if rfm.values is None else {
                       "recency_days": rfm.values.recency_days,
                       "frequency": rfm.values.frequency,
                       "monetary": str(rfm.values.monetary)})}

    def _score_changed_facts(self) -> None:
        """RFM for every contact whose facts changed: once per flush, not per event."""
        for row in self.rows.values():
            if row.facts_changed and row.dirty:
                rules = self._rules(row.facts.tenant)
                self._set_rfm(row, score(row.facts, self.now, rules.cuts, rules.rfm))

    def _record_transition(self, row: _Row, t: Transition) -> None:
        # The contact's open memberships change with its history: its row is written too
        # (a deletion once closed the intervals but left the id among the row's members,
        # and the segment created again saw no one enter).
        row.dirty = True
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
        # The outbound contract's own Structs: what is published is what is documented.
        out_type = SegmentEntered if t.entered else SegmentExited
        kind = "segment_entered" if t.entered else "segment_exited"
        self.seq += 1
        event_id = f"{t.segment_id}:{cid}:{entry_no}:{kind.split('_')[1]}"
        event = out_type(
            event_id=event_id, tenant=tenant, occurred_at=t.at, segment_id=t.segment_id,
            segment_version=t.segment_version,
            contact=OutContact(contact_id=cid, email=facts.email),
            cause=TransitionCause(kind=t.cause, ref=t.ref,  # type: ignore[arg-type]
                                  clauses=list(t.clauses)),
            entry_no=entry_no,
        )
        self.writes.outbox.append((self.seq, out_subject(tenant, kind), event_id,
                                   msgspec.json.encode(event).decode(), cid))

    # ------------------------------------------------------------------ time

    def _on_tick(self, at: str) -> None:
        """Fire every contact's changes due by ``at``, one instant at a time in due order
        across contacts, the clock moved to each: a change is never recorded before the
        clock reaches it, and a midnight's rescoring sees every change due before it."""
        self._flush()
        while True:
            self.cur.execute(
                "SELECT contact_id, due_at FROM audience_segments WHERE due_at IS NOT NULL "
                "AND due_at <= ? ORDER BY due_at, contact_id LIMIT ?",
                (at, CHUNK),
            )
            found = [(r["due_at"], r["contact_id"]) for r in self.cur.fetchall()]
            if not found:
                break
            # Rows beyond this chunk are due at or after its last instant: a contact's
            # next change past that waits for the next chunk, in order with theirs.
            horizon = found[-1][0] if len(found) == CHUNK else at
            self._load([cid for _, cid in found])
            queue = list(found)  # sorted: a heap already
            while queue and queue[0][0] <= horizon:
                due, cid = heapq.heappop(queue)
                if due > self.now:
                    # A midnight on the way rescores RFM and flushes; the chunk's rows
                    # stay in memory (``_chunks_written_behind`` keeps what it found).
                    self._advance(due)
                row = self._row(cid)
                self._catch_up(row, self._rules(row.facts.tenant), self.now)
                if row.due is not None and row.due <= at:
                    heapq.heappush(queue, (row.due, cid))
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
        # Backfill: the contacts that can match the new rule, and its current members.
        segment = rules.get(sid)
        narrowing = None if segment is None else prefilter(
            segment.rule, tenant, self.now, rules.windows)
        affected = rules.affected_by(sid)
        backfill = self._backfill_chunks(tenant, sid, segment is not None, narrowing)
        with closing(backfill):
            for chunk in backfill:
                for cid in chunk:
                    row = self.rows[cid]
                    self._catch_up(row, rules, self.now)
                    if deleted:
                        self._close_deleted(row, sid, event.segment_version, ref)
                    after = evaluate(row.facts, rules, self.now, affected, set(row.members))
                    # The other segments were not evaluated: keep the earlier of the two dues
                    # (a spurious wake-up re-evaluates what time can change and reschedules
                    # exactly).
                    if row.due is not None and (after.due is None or row.due < after.due):
                        after.due = row.due
                    self._settle(row, rules, None, after, CAUSE_DEFINITION, ref)

    def _chunks_written_behind(self, id_chunks: Iterable[list[str]],
                               soft_limit: int | None = None,
                               keep: Set[str] | None = None) -> Generator[list[str], None, None]:
        """Each chunk of contacts loaded (``_load``) for the caller to evaluate; then the
        chunk is flushed and its rows forgotten, but for ``keep``'s (by default the rows
        in memory before: the page's contacts, a tick's chunk), which stay for what
        follows. ``id_chunks`` may query (with the connection it was made with:
        ``_tenant_chunks``). SQLite works in place; PostgreSQL: ``_written_behind``."""
        keep = frozenset(self.rows) if keep is None else keep
        chunks = iter(id_chunks)
        if not self.is_postgres:
            for chunk in chunks:
                self._load(chunk, soft_limit)
                yield chunk
                self._flush_deferred(keep).run_on(self.cur)
            return

        def read(cur: Cursor) -> tuple[list[str], list[dict[str, Any]]] | None:
            chunk = next(chunks, None)
            if chunk is None:
                return None
            return chunk, _fetch(cur, [cid for cid in chunk if cid not in self.rows], True)

        yield from self._written_behind(read, soft_limit, keep)

    def _streamed_behind(self, cursor: str, keep: Set[str]) -> Generator[list[str], None, None]:
        """``_chunks_written_behind`` for the rows of a server-side cursor (PostgreSQL)
        declared on this page's connection: ``CHUNK`` of them at a time."""

        def read(cur: Cursor) -> tuple[list[str], list[dict[str, Any]]] | None:
            cur.execute(f"FETCH FORWARD {CHUNK} FROM {cursor}")
            rows = cur.fetchall()
            return ([r["contact_id"] for r in rows], rows) if rows else None

        yield from self._written_behind(read, None, keep)

    def _written_behind(
        self, read: Callable[[Cursor], tuple[list[str], list[dict[str, Any]]] | None],
        soft_limit: int | None, keep: Set[str],
    ) -> Generator[list[str], None, None]:
        """On PostgreSQL the database works while Python evaluates: a thread of its own
        writes the chunk before and ``read``s the chunk after (chunks hold different
        contacts, so neither depends on the writes pending; a row in memory is not read
        again: ``_admit``). The connection is used by one thread at a time: the caller's
        only between the thread's turns (to take in the rows read)."""
        cur = self.cur  # (``_flush_deferred`` swaps ``self.cur`` while the thread works)

        def turn(writes: DeferredWrites | None
                 ) -> tuple[list[str], list[dict[str, Any]]] | None:
            if writes is not None:
                writes.run_on(cur)
            return read(cur)

        worker = ThreadPoolExecutor(1, "ficha-db")
        try:
            got = turn(None)
            writes = None
            while got is not None:
                chunk, fetched = got
                self._admit(fetched, soft_limit)
                # The chunk before is written and the next one read while this one is
                # evaluated.
                pending = worker.submit(turn, writes)
                try:
                    self.cur = IN_USE  # the thread has the connection
                    try:
                        yield chunk
                    finally:
                        self.cur = cur
                    writes = self._flush_deferred(keep)
                finally:
                    got = pending.result()
            if writes is not None:
                writes.run_on(cur)
        finally:
            worker.shutdown(wait=True)  # never leave the connection to a thread

    def _flush_deferred(self, keep: Set[str]) -> DeferredWrites:
        """``_flush`` with its statements kept to run later; then the rows but ``keep``'s
        are forgotten."""
        cur, deferred = self.cur, DeferredWrites()
        self.cur = deferred
        try:
            self._flush(keep_rows=True)
        finally:
            self.cur = cur
        self._forget_rows(keep)
        return deferred

    def _backfill_chunks(self, tenant: str, segment_id: str, matchable: bool,
                         narrowing: tuple[str, list[Any]] | None,
                         ) -> Generator[list[str], None, None]:
        """The contacts a definition may change, in id order, in chunks to evaluate
        (``_chunks_written_behind``): its current members and, if it can match
        (``matchable``: not deleted), those its rule's SQL prefilter lets through.

        PostgreSQL streams their rows from one query, which reads the table in its own
        order and sorts what passes (reading each contact by id, in random places of a
        large table, cost several times as much)."""
        if not self.is_postgres:
            ids = self._current_members(tenant, segment_id)
            if matchable:
                ids |= self._candidates(tenant, narrowing)
            ordered = sorted(ids)
            yield from self._chunks_written_behind(
                ordered[start : start + CHUNK] for start in range(0, len(ordered), CHUNK))
            return
        where, params = narrowing or ("TRUE", [])
        keep = frozenset(self.rows)
        # Planned as one pass over the table (a cursor is planned for its first rows:
        # walking an index in id order reads every contact of the tenant, in random
        # places, several times slower), the sort of what passes in memory (a million
        # contacts pass a few hundred MB through it; it runs at the first FETCH), and no
        # JIT (compiling the filter cost more than it saved).
        planning = ("cursor_tuple_fraction", "enable_indexscan", "enable_indexonlyscan")
        for setting in ("cursor_tuple_fraction = 1", "enable_indexscan = off",
                        "enable_indexonlyscan = off", "work_mem = '256MB'", "jit = off"):
            self.cur.execute(f"SET LOCAL {setting}")
        self.cur.execute(
            f"DECLARE {BACKFILL_CURSOR} NO SCROLL CURSOR FOR {STORED_ROW} "
            f"WHERE f.tenant = ? AND (({where if matchable else 'FALSE'}) OR f.contact_id "
            "IN (SELECT contact_id FROM segment_history WHERE tenant = ? AND segment_id = ? "
            # (in code-point order, as SQLite's ids are sorted, whatever the collation)
            "AND exited_at IS NULL)) ORDER BY f.contact_id COLLATE \"C\"",
            [tenant, *params, tenant, segment_id],
        )
        for setting in planning:  # the writes meanwhile are planned as usual
            self.cur.execute(f"RESET {setting}")
        yield from self._streamed_behind(BACKFILL_CURSOR, keep)
        # (after a failure the page's transaction is rolled back, which ends both)
        self.cur.execute(f"CLOSE {BACKFILL_CURSOR}")
        for setting in ("work_mem", "jit"):
            self.cur.execute(f"RESET {setting}")

    def _current_members(self, tenant: str, segment_id: str) -> set[str]:
        self.cur.execute(
            "SELECT contact_id FROM segment_history WHERE tenant = ? AND segment_id = ? "
            "AND exited_at IS NULL",
            (tenant, segment_id),
        )
        return {r["contact_id"] for r in self.cur.fetchall()}

    def _candidates(self, tenant: str, narrowing: tuple[str, list[Any]] | None) -> set[str]:
        where, params = narrowing or ("1 = 1", [])
        self.cur.execute(
            f"SELECT f.contact_id FROM audience_facts f WHERE f.tenant = ? AND ({where})",
            [tenant, *params],
        )
        return {r["contact_id"] for r in self.cur.fetchall()}

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
            rules = self.rules[tenant] = TenantRules.compile(
                definitions, cuts=self._cuts(tenant), settings=self._settings(tenant)
            )
        return rules

    def _settings(self, tenant: str) -> dict[str, Any]:
        self.cur.execute(
            "SELECT value FROM audience_state WHERE name = ?", (f"settings:{tenant}",)
        )
        row = self.cur.fetchone()
        return {} if row is None else dict(load_json(row["value"]))

    def _on_settings(self, event: TenantSettings.Changed) -> None:
        """New windows, RFM settings or bounce limit: every contact of the tenant again."""
        self._flush()
        tenant = event.tenant
        old_limit = self._rules(tenant).soft_bounce_limit
        merged = {**self._settings(tenant), **event.values}
        self.cur.execute(
            "INSERT INTO audience_state (name, value) VALUES (?, ?) "
            "ON CONFLICT (name) DO UPDATE SET value = excluded.value",
            (f"settings:{tenant}", _json(merged)),
        )
        self.rules.pop(tenant, None)
        rules = self._rules(tenant)
        ref = f"settings@v{event.originator_version}"
        changed_by_settings = rules.to_evaluate(frozenset({"lists"}))
        # Loaded with the old bounce limit: counted as the counts were made.
        written = self._chunks_written_behind(self._tenant_chunks(tenant), old_limit)
        with closing(written):
            for ids in written:
                for cid in ids:
                    row = self.rows[cid]
                    row.soft_limit = rules.soft_bounce_limit
                    self._catch_up(row, rules, self.now)
                    # Settings move engagement and RFM (volatile) and the bounce limit (lists).
                    wanted = None if row.engagement is None else changed_by_settings
                    after = evaluate(row.facts, rules, self.now, wanted, set(row.members))
                    self._settle(row, rules, None, after, CAUSE_DEFINITION, ref)
                    row.dirty = True

    def _tenant_chunks(self, tenant: str, buyers_only: bool = False) -> Iterator[list[str]]:
        """The tenant's contact ids (``buyers_only``: of those who bought), in id order,
        ``CHUNK`` at a time; each chunk is asked for when the one before is done with,
        on the connection of now (``_written_behind`` asks from its thread)."""
        rows = self._tenant_rows(tenant, "contact_id", buyers_only, cur=self.cur)
        return ([r["contact_id"] for r in chunk] for chunk in rows)

    def _tenant_rows(self, tenant: str, columns: str, buyers_only: bool = False,
                     after: str = "", cur: Cursor | None = None
                     ) -> Iterator[list[dict[str, Any]]]:
        """``columns`` (``contact_id`` among them) of the tenant's contacts after the id
        ``after`` (``buyers_only``: of those who bought), in id order, ``CHUNK`` at a time
        (on ``cur``, by default the page's cursor when a chunk is asked for)."""
        bought = " AND last_purchase_at IS NOT NULL" if buyers_only else ""
        while True:
            (cur or self.cur).execute(
                f"SELECT {columns} FROM audience_facts WHERE tenant = ?{bought} "
                "AND contact_id > ? ORDER BY contact_id LIMIT ?",
                (tenant, after, CHUNK),
            )
            rows = (cur or self.cur).fetchall()
            if not rows:
                return
            yield rows
            after = rows[-1]["contact_id"]

    # ------------------------------------------------------------------ RFM

    def _cuts(self, tenant: str) -> RfmCuts:
        if tenant not in self.cuts:
            self.cur.execute(
                "SELECT value FROM audience_state WHERE name = ?", (f"rfm_cuts:{tenant}",)
            )
            row = self.cur.fetchone()
            self.cuts[tenant] = None if row is None else RfmCuts.from_json(load_json(row["value"]))
        return self.cuts[tenant] or RfmCuts()

    def _rescore_rfm(self, tenants: Collection[str] | None = None) -> None:
        """New quintiles, and every buyer rescored, for ``tenants`` (the ones that asked:
        ``RESCORE_REQUEST``), or at midnight for every tenant with buyers and every one
        that asked. Their requests are answered. A tenant left with no buyer (they were
        erased) loses its cuts (``_rescore_tenant``)."""
        self._flush(keep_rows=True)  # this page's buyers too
        asked = set(self.requests if tenants is None else tenants)
        with_buyers = set() if tenants is not None else self._tenants_with_buyers()
        for tenant in sorted(asked | with_buyers):
            self._rescore_tenant(tenant)
        for tenant in asked:
            self.requests.pop(tenant, None)

    def _tenants_with_buyers(self) -> set[str]:
        self.cur.execute(
            "SELECT DISTINCT tenant FROM audience_facts WHERE last_purchase_at IS NOT NULL"
        )
        return {r["tenant"] for r in self.cur.fetchall()}

    def _request_rescore(self, tenant: str) -> None:
        """Ask for new cuts for the tenant soon (the scheduler appends the request)."""
        self.requests.setdefault(tenant, self.now)

    def _buyers(self, tenant: str) -> int:
        """The tenant's buyers now: counted as contacts make their first purchase (and
        are erased), so that the log alone decides when cuts are outgrown."""
        if tenant not in self.buyers:
            self.cur.execute(
                "SELECT value FROM audience_state WHERE name = ?", (f"rfm_buyers:{tenant}",)
            )
            row = self.cur.fetchone()
            self.buyers[tenant] = 0 if row is None else int(row["value"])
        return self.buyers[tenant]

    def _new_buyer(self, tenant: str) -> None:
        """A contact's first purchase: the tenant's cuts are taken again, at this event,
        once its buyers have outgrown them (a burst of history); a tenant with enough
        buyers to rank and no cuts yet asks the scheduler for a rescoring soon."""
        self.buyers[tenant] = buyers = self._buyers(tenant) + 1
        cuts = self._cuts(tenant)
        if cuts_outgrown(cuts.buyers, buyers):
            self._rescore_tenant(tenant)
        elif not cuts.recency and buyers >= MIN_RANKED_BUYERS:
            self._request_rescore(tenant)

    def _rescore_tenant(self, tenant: str) -> None:
        """New quintiles for the tenant, and every buyer of it rescored (which answers
        the tenant's request for them, if it made one); a tenant with no buyer left (they
        were erased) has its cuts deleted.

        The cuts need every buyer's values before any buyer is rescored, so buyers are
        read twice, but for the first ``CHUNK`` of them: their rows, loaded for their
        values, stay in memory for the rescoring (a tenant of up to ``CHUNK`` buyers is
        read once). Keeping every buyer's row would take memory in the tenant's size.
        The rows in memory before (the page's contacts) stay after."""
        self._flush(keep_rows=True)  # the contacts as they are, scored against the cuts they had
        resident = frozenset(self.rows)
        settings = self._rules(tenant).rfm
        chunks = self._tenant_chunks(tenant, buyers_only=True)
        first = next(chunks, [])
        self._load(first)

        def buyers_facts() -> Iterator[ContactFacts]:
            yield from (self.rows[cid].facts for cid in first)
            if len(first) == CHUNK:  # more: their facts only, for their values
                for rows in self._tenant_rows(tenant, "contact_id, doc", buyers_only=True,
                                              after=first[-1]):
                    yield from (ContactFacts.from_json(r["doc"]) for r in rows)

        values = [v for facts in buyers_facts()
                  if (v := rfm_values(facts, self.now, settings)) is not None]
        self.buyers[tenant] = len(values)
        self.requests.pop(tenant, None)
        if values:
            cuts = RfmCuts.of(values)
            self.cuts[tenant] = cuts
            self.cur.execute(
                "INSERT INTO audience_state (name, value) VALUES (?, ?) "
                "ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                (f"rfm_cuts:{tenant}", _json({**cuts.to_json(), "taken_at": self.now})),
            )
        else:  # every buyer erased: no cut may keep a threshold taken of their values
            self.cuts[tenant] = None
            self.cur.execute("DELETE FROM audience_state WHERE name = ?",
                             (f"rfm_cuts:{tenant}",))
        self.rules.pop(tenant, None)
        rules = self._rules(tenant)
        written = self._chunks_written_behind(chain([first] if first else [], chunks),
                                              keep=resident)
        with closing(written):
            for ids in written:
                for cid in ids:
                    row = self.rows[cid]
                    self._catch_up(row, rules, self.now)
                    # New cuts move RFM only: the volatile segments (and their users).
                    wanted = None if row.engagement is None else rules.to_evaluate()
                    after = evaluate(row.facts, rules, self.now, wanted, set(row.members),
                                     with_rfm=True)
                    self._settle(row, rules, None, after, CAUSE_CLOCK, "rfm")

    # ------------------------------------------------------------------ storage

    def _load(self, ids: Iterable[str], soft_limit: int | None = None) -> None:
        """The rows of ``ids`` in memory (those not there yet read from the tables)."""
        self._admit(_fetch(self.cur, [cid for cid in ids if cid not in self.rows],
                           self.is_postgres), soft_limit)

    def _admit(self, fetched: list[dict[str, Any]], soft_limit: int | None = None) -> None:
        """Rows read by ``_fetch`` into memory, but for contacts there already (a row in
        memory may hold changes not written yet)."""
        for r in fetched:
            if r["contact_id"] in self.rows:
                continue
            facts = ContactFacts.from_json(r["doc"])
            segments = (None if r["members"] is None
                        else (r["members"], r["entries"], r["due_at"]))
            row = _Row(
                facts, {} if segments is None else load_json(r["members"]),
                {} if segments is None else load_json(r["entries"]), r["engagement"],
                r["engagement_since"], bool(r["subscribed"]), r["due_at"],
                None if r["rfm"] is None else load_json(r["rfm"]),
                written_derived=(r["engagement"], r["engagement_since"], r["subscribed"],
                                 r["rfm"], r["rfm_group"], r["lists"]),
                written_segments=segments,
            )
            row.soft_limit = (soft_limit if soft_limit is not None
                              else self._rules(r["tenant"]).soft_bounce_limit)
            row.counted = row.tallies()
            row.derived_from = row.derived_inputs()
            self.rows[r["contact_id"]] = row

    def _flush(self, keep_rows: bool = False) -> None:
        """Write what changed. Every row stays in memory, as written, with ``keep_rows``;
        else only the page's own contacts' do (its later events need them), and the
        others (loaded for a chunk of work) are loaded again if used again."""
        self._score_changed_facts()
        cur, w = self.cur, self.writes
        dirty = {cid: r for cid, r in self.rows.items() if r.dirty}
        facts_rows, derived_rows, new_segments, segment_rows = [], [], [], []
        for cid in sorted(dirty):
            row = dirty[cid]
            segments, inputs = _segment_state(row), row.derived_inputs()
            # (with the facts and what else it reads as written, the same as written)
            written = row.written_derived
            derived = (written if written is not None and not row.facts_changed
                       and inputs == row.derived_from else _derived(row))
            if row.facts_changed:
                facts = row.facts
                facts_rows.append((cid, facts.tenant, facts.email, facts.to_json().decode(),
                                   *derived, *filter_values(facts)))
            elif derived != row.written_derived:
                # Only statuses moved: the facts are as stored.
                derived_rows.append((*derived, cid))
            if row.written_segments is None:
                new_segments.append((cid, row.facts.tenant, *segments))
            elif segments != row.written_segments:
                segment_rows.append((*segments, cid))
            row.written_derived, row.written_segments = derived, segments
            row.derived_from = inputs
        if facts_rows:
            updates = ", ".join(f"{c} = excluded.{c}" for c in FACT_COLUMNS[3:])
            bulk_insert(cur, "audience_facts", FACT_TYPES, facts_rows, self.is_postgres,
                        conflict=f"ON CONFLICT (contact_id) DO UPDATE SET {updates}")
        if derived_rows:
            bulk_update(cur, "audience_facts", ("contact_id", "text"), DERIVED_TYPES,
                        derived_rows, self.is_postgres)
        if new_segments:  # (a row left by an earlier life of the contact is taken over)
            bulk_insert(cur, "audience_segments", SEGMENT_TYPES, new_segments,
                        self.is_postgres, conflict="ON CONFLICT (contact_id) DO UPDATE SET "
                        "members = excluded.members, entries = excluded.entries, "
                        "due_at = excluded.due_at")
        if segment_rows:
            bulk_update(cur, "audience_segments", SEGMENT_TYPES[0], SEGMENT_TYPES[2:],
                        segment_rows, self.is_postgres)
        if w.history:
            bulk_insert(cur, "segment_history", HISTORY_COLUMNS,
                        [w.history[k] for k in sorted(w.history)], self.is_postgres)
        if w.exits:
            cur.executemany(
                "UPDATE segment_history SET exited_at = ?, exited_version = ?, exit_cause = ?, "
                "exit_ref = ?, exit_clauses = ? WHERE tenant = ? AND segment_id = ? "
                "AND contact_id = ? AND entry_no = ?",
                w.exits,
            )
        if w.outbox:
            bulk_insert(cur, "ficha_outbox", OUTBOX_COLUMNS, w.outbox, self.is_postgres)
        if w.ledger:
            bulk_insert(cur, "consent_ledger", LEDGER_TYPES, w.ledger, self.is_postgres,
                        conflict="ON CONFLICT (contact_id, channel, occurred_at, event_id) "
                        "DO NOTHING")
        self._flush_counts()
        self.writes = _Writes()
        for row in dirty.values():
            row.counted = row.tallies()
            row.dirty = row.facts_changed = False
        if not keep_rows:
            self._forget_rows(self.page_ids)

    def _forget_rows(self, keep: Set[str]) -> None:
        """Drop the rows in memory (written: ``_flush``) but ``keep``'s; a later use of a
        dropped one loads it again."""
        self.rows = {cid: row for cid, row in self.rows.items() if cid in keep}

    def _flush_counts(self) -> None:
        deltas: dict[tuple[str, str, str, str], int] = {}
        for row in self.rows.values():
            if not row.dirty:
                continue
            now = row.tallies()
            if now == row.counted:
                continue
            tenant = row.facts.tenant
            for tally in row.counted - now:
                deltas[(tenant, *tally)] = deltas.get((tenant, *tally), 0) - 1
            for tally in now - row.counted:
                deltas[(tenant, *tally)] = deltas.get((tenant, *tally), 0) + 1
        self._apply_deltas(deltas)

    def _apply_deltas(self, deltas: dict[tuple[str, str, str, str], int]) -> None:
        """Add to the tallies, drop the keys back at zero, and refresh the day's series."""
        deltas = {k: v for k, v in deltas.items() if v}
        if not deltas:
            return
        cur = self.cur
        bulk_insert(cur, "audience_counts", COUNT_TYPES,
                    [(*k, v) for k, v in sorted(deltas.items())], self.is_postgres,
                    conflict="ON CONFLICT (tenant, metric, k1, k2) "
                    "DO UPDATE SET count = audience_counts.count + excluded.count")
        # Keys back at zero are removed, so that the rows depend on the counts alone, not
        # on the path (and the page sizes) that led to them.
        for tenant in sorted({k[0] for k in deltas}):
            cur.execute("DELETE FROM audience_counts WHERE tenant = ? AND count = 0", (tenant,))
        # The day's snapshot: the latest counts of that day win.
        day = self.now[:10]
        for tenant, metric in sorted({(k[0], k[1]) for k in deltas}):
            cur.execute(
                "DELETE FROM audience_daily WHERE tenant = ? AND metric = ? AND day = ?",
                (tenant, metric, day),
            )
            cur.execute(
                "INSERT INTO audience_daily (tenant, day, metric, k1, k2, count) "
                "SELECT tenant, ?, metric, k1, k2, count FROM audience_counts "
                "WHERE tenant = ? AND metric = ?",
                (day, tenant, metric),
            )

    def _state(self) -> dict[str, str]:
        self.cur.execute(
            "SELECT name, value FROM audience_state WHERE name IN ('now', 'outbox_seq')"
        )
        return {r["name"]: r["value"] for r in self.cur.fetchall()}

    def _save_state(self) -> None:
        answered = sorted(self.requests_saved.keys() - self.requests.keys())
        # A tenant with no buyer (left) has no count: absent reads as 0 (``_buyers``).
        gone = [*(f"{RESCORE_REQUEST}{tenant}" for tenant in answered),
                *(f"rfm_buyers:{tenant}" for tenant, n in sorted(self.buyers.items()) if not n)]
        if gone:
            self.cur.executemany("DELETE FROM audience_state WHERE name = ?",
                                 [(name,) for name in gone])
        self.cur.executemany(
            "INSERT INTO audience_state (name, value) VALUES (?, ?) "
            "ON CONFLICT (name) DO UPDATE SET value = excluded.value",
            [("now", self.now), ("outbox_seq", str(self.seq)),
             *((f"rfm_buyers:{tenant}", str(n)) for tenant, n in sorted(self.buyers.items())
               if n),
             *((f"{RESCORE_REQUEST}{tenant}", at) for tenant, at in sorted(self.requests.items())
               if self.requests_saved.get(tenant) != at)],
        )
