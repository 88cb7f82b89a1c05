"""The audience read model on both backends: live membership with provenance, exact
time, backfill and preview, rebuild equals incremental, and a brute-force oracle."""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from contracts.events import InboundEvent
from contracts.outbound import decode_outbound
from projections import audience as audience_projection
from projections.audience import TABLES, AudienceProjection, rescore_requests
from projections.audience_queries import (
    consent_at,
    count_members,
    engagement_stats,
    explain,
    list_stats,
    preview,
    projection_now,
    rfm_stats,
    segment_members,
)
from projections.db import Cursor, ViewDatabase
from projections.runner import ProjectionRunner
from services.catalog import ClockCommands, SegmentCommands, TenantCommands
from services.config import Settings
from services.demo import generate_history
from services.domain.identity import ContactIdentity, normalise_email
from services.domain.rfm import cuts_outgrown, rfm_group
from services.domain.rules import RuleError, parse_rule
from services.domain.segments import SegmentError
from services.domain.stamps import parse_utc_iso, utc_iso
from services.domain.tenant import TenantError
from services.ingest.cache import ContactCache
from services.ingest.folding import BatchFolder
from services.scheduler import Scheduler
from services.store.contact_store import ContactStore
from tests.factories import decode_dict, make_event


@dataclass
class Audience:
    store: ContactStore
    db: ViewDatabase
    runner: ProjectionRunner
    folder: BatchFolder
    segments: SegmentCommands
    clock: ClockCommands
    position: int = 0

    def ingest(self, events: list[InboundEvent], batch: int = 200) -> None:
        for start in range(0, len(events), batch):
            self.position += 1
            self.folder.fold_and_commit(events[start : start + batch], self.position)
        self.runner.catch_up()

    def define(self, segment_id: str, rule: dict[str, Any], name: str = "") -> None:
        self.segments.define("acme", segment_id, name or segment_id, rule)
        self.runner.catch_up()

    def tick(self, moment: datetime) -> None:
        self.clock.tick(moment)
        self.runner.catch_up()

    def outbox(self) -> list[dict[str, Any]]:
        with self.db.reading() as cur:
            cur.execute("SELECT seq, subject, event_id, payload FROM ficha_outbox ORDER BY seq")
            return cur.fetchall()


@pytest.fixture
def audience(settings: Settings) -> Iterator[Audience]:
    store = ContactStore(settings)
    db = ViewDatabase(settings)
    runner = ProjectionRunner(store, db, AudienceProjection(), page_size=150)
    runner.setup()
    folder = BatchFolder(store, ContactIdentity(settings.id_key), ContactCache(10_000), "p0")
    yield Audience(store, db, runner, folder, SegmentCommands(store), ClockCommands(store))
    db.close()
    store.close()


def paid_eur(event: dict[str, Any]) -> Decimal:
    """A purchase's total in EUR (0 in another currency), in either contract version."""
    money = (event["total"] if event.get("schema_version") == 2
             else {"amount": event["total"], "currency": event["currency"]})
    return Decimal(money["amount"]) if money["currency"] == "EUR" else Decimal(0)


def ago(days: float) -> str:
    return (datetime.now(UTC) - timedelta(days=days)).isoformat()


def members(a: Audience, segment_id: str) -> set[str]:
    return {r["email"] for r in segment_members(a.db, "acme", segment_id, limit=100_000)}


# ------------------------------------------------------------------- live, with provenance


def test_an_event_moves_a_contact_in_and_out_and_says_which_clause(audience: Audience) -> None:
    a = audience
    a.define("vip-iberia", {"all": [
        {"field": "country", "op": "in", "value": ["ES", "PT"]},
        {"field": "tags", "op": "has", "value": "vip"},
    ]})
    a.ingest([make_event("form_submitted", event_id="f1", email="ana@example.com",
                         occurred_at=ago(3), form_id="contact", contact={"country": "ES"})])
    assert members(a, "vip-iberia") == set()
    a.ingest([make_event("contact_updated", event_id="tag-on", email="ana@example.com",
                         occurred_at=ago(2), tags_added=["VIP"])])
    assert members(a, "vip-iberia") == {"ana@example.com"}
    a.ingest([make_event("contact_updated", event_id="tag-off", email="ana@example.com",
                         occurred_at=ago(1), tags_removed=["vip"])])
    assert members(a, "vip-iberia") == set()

    why = explain(a.db, "acme", "ana@example.com", "vip-iberia")["segments"][0]
    (interval,) = why["history"]
    assert (interval["enter_cause"], interval["enter_ref"]) == ("event", "tag-on")
    assert [c["path"] for c in interval["enter_clauses"]] == ["rule.all[1]"]
    assert (interval["exit_cause"], interval["exit_ref"]) == ("event", "tag-off")
    assert interval["exit_clauses"][0]["clause"] == "tags has 'vip'"
    assert [c["holds"] for c in why["clauses"]] == [True, False]

    out = [decode_outbound(r["payload"].encode()) for r in a.outbox()]
    assert [(type(e).__name__, e.cause.ref, e.entry_no) for e in out] == [
        ("SegmentEntered", "tag-on", 1), ("SegmentExited", "tag-off", 1)]
    assert [r["subject"] for r in a.outbox()] == [
        "ficha.out.acme.segment_entered", "ficha.out.acme.segment_exited"]


def test_a_new_contact_meets_every_segment_and_later_events_only_those_they_touch(
    audience: Audience,
) -> None:
    """A contact's first event evaluates every segment, even one on a part of the facts
    that no event changes (the email); later events evaluate the segments they can change,
    and those still enter and leave as they should."""
    a = audience
    a.define("everyone", {"field": "email", "op": "contains", "value": "@"})
    a.define("in-spain", {"field": "country", "op": "equals", "value": "ES"})
    a.ingest([make_event("email_sent", event_id="s1", email="eva@example.com",
                         occurred_at=ago(3), message_id="m1")])
    assert members(a, "everyone") == {"eva@example.com"}
    assert members(a, "in-spain") == set()
    a.ingest([make_event("email_opened", event_id="o1", email="eva@example.com",
                         occurred_at=ago(2), message_id="m1")])
    a.ingest([make_event("contact_updated", event_id="es", email="eva@example.com",
                         occurred_at=ago(1), contact={"country": "ES"})])
    assert members(a, "in-spain") == {"eva@example.com"}
    why = explain(a.db, "acme", "eva@example.com", "in-spain")["segments"][0]
    assert why["history"][0]["enter_ref"] == "es"
    assert [c["path"] for c in why["history"][0]["enter_clauses"]] == ["rule"]


def test_a_relative_condition_expires_at_its_exact_instant(audience: Audience) -> None:
    a = audience
    a.define("bought-lately", {"count": "purchases", "within_days": 30, "op": "gte", "value": 1})
    bought = datetime.now(UTC) - timedelta(days=29, hours=12)
    a.ingest([make_event("purchase_completed", event_id="p1", email="bo@example.com",
                         occurred_at=bought.isoformat(), order_id="o1", total="20.00",
                         currency="EUR")])
    assert members(a, "bought-lately") == {"bo@example.com"}
    a.tick(datetime.now(UTC) + timedelta(days=1))  # the scheduler's clock, moved on
    assert members(a, "bought-lately") == set()
    out = [decode_outbound(r["payload"].encode()) for r in a.outbox()]
    (exited,) = out[1:]
    assert exited.occurred_at == utc_iso(bought + timedelta(days=30))  # not the tick's time
    assert exited.cause.kind == "clock" and exited.cause.clauses == ["rule"]
    # Who was in the segment just before that instant, and at it?
    before = parse_utc_iso(exited.occurred_at) - timedelta(microseconds=1)
    assert count_members(a.db, "acme", "bought-lately", as_of=before) == 1
    assert count_members(a.db, "acme", "bought-lately",
                         as_of=parse_utc_iso(exited.occurred_at)) == 0


def test_a_tick_fires_changes_in_time_order_across_contacts(audience: Audience) -> None:
    """A long tick passes many scheduled instants: each is fired with the clock at it, in
    order across contacts, so that no exit is announced before its time and a midnight's
    rescoring between two of them sees the contact as it then is (once, a contact's later
    exit was fired early and that rescoring made it enter a second time)."""
    a = audience
    a.define("buyers-30d", {"count": "purchases", "within_days": 30, "op": "gte", "value": 1})
    a.define("talked-3d", {"field": "last_interaction_at", "op": "within_last",
                           "value": {"days": 3}})
    now = datetime.now(UTC)
    a.ingest([
        make_event("purchase_completed", event_id="p-ana", email="ana@example.com",
                   occurred_at=(now - timedelta(days=1)).isoformat(), order_id="o1",
                   total="20.00", currency="EUR"),
        # Bea's change falls on a later day than Ana's first one: a midnight in between.
        make_event("form_submitted", event_id="f-bea", email="bea@example.com",
                   occurred_at=(now - timedelta(hours=1)).isoformat(), form_id="contact"),
    ])
    a.tick(now + timedelta(days=45))
    with a.db.reading() as cur:
        cur.execute("SELECT contact_id, entry_no, exited_at FROM segment_history "
                    "WHERE segment_id = 'buyers-30d'")
        (interval,) = cur.fetchall()
    assert interval["exited_at"] == utc_iso(now - timedelta(days=1) + timedelta(days=30))
    out = [decode_outbound(r["payload"].encode()) for r in a.outbox()]
    assert [e.occurred_at for e in out] == sorted(e.occurred_at for e in out)
    assert len(out) == 6  # each contact enters and leaves each segment it was in, once


def test_segments_can_use_segments_and_cycles_or_dangling_uses_are_refused(
    audience: Audience,
) -> None:
    a = audience
    a.define("es", {"field": "country", "op": "equals", "value": "ES"})
    a.define("es-leads", {"all": [{"segment": "es"}, {"field": "tags", "op": "has",
                                                      "value": "lead"}]})
    with pytest.raises(RuleError, match="cycle: es -> es-leads -> es"):
        a.segments.define("acme", "es", "es", {"not": {"segment": "es-leads"}})
    with pytest.raises(RuleError, match="'nope' does not exist"):
        a.segments.define("acme", "x", "x", {"any": [{"segment": "nope"}]})
    with pytest.raises(SegmentError, match="used by es-leads"):
        a.segments.delete("acme", "es")
    a.ingest([make_event("form_submitted", event_id="f1", email="eva@example.com",
                         occurred_at=ago(1), form_id="f", tags=["Lead"],
                         contact={"country": "ES"})])
    assert members(a, "es-leads") == {"eva@example.com"}


def test_preview_tells_what_an_edit_does_and_the_edit_does_it(audience: Audience) -> None:
    a = audience
    a.ingest([decode_dict(d) for d in generate_history("acme", 1500, seed=5)])
    a.define("spenders", {"sum": "spent", "currency": "EUR", "op": "gt", "value": 50})
    before = members(a, "spenders")
    assert before
    edit = {"all": [{"sum": "spent", "currency": "EUR", "op": "gt", "value": 50},
                    {"field": "last_interaction_at", "op": "within_last",
                     "value": {"days": 120}}]}
    seen = preview(a.db, "acme", "spenders", parse_rule(edit), datetime.now(UTC), sample=3)
    a.define("spenders", edit)
    after = members(a, "spenders")
    assert (seen.entering, seen.leaving, seen.staying) == (
        len(after - before), len(before - after), len(after & before))
    assert set(seen.samples["leaving"]) <= before - after
    with a.db.reading() as cur:
        cur.execute("SELECT DISTINCT exit_cause, exit_ref FROM segment_history "
                    "WHERE exited_at IS NOT NULL")
        assert cur.fetchall() == [{"exit_cause": "definition", "exit_ref": "spenders@v2"}]
    # A rule that reads what preview takes from beside the facts: other segments, RFM,
    # engagement (one context serves every contact in turn, reset each time).
    mixed = {"any": [
        {"all": [{"segment": "spenders"}, {"field": "engagement", "op": "equals",
                                            "value": "engaged"}]},
        {"field": "rfm.group", "op": "in", "value": ["champions", "loyal"]},
        {"field": "rfm.recency", "op": "gte", "value": 4}]}
    seen = preview(a.db, "acme", "mixed", parse_rule(mixed), datetime.now(UTC), sample=4)
    a.define("mixed", mixed)
    inside = members(a, "mixed")
    with a.db.reading() as cur:
        cur.execute("SELECT COUNT(*) AS n FROM audience_facts")
        everyone = int(cur.fetchone()["n"])  # type: ignore[index]
    assert 0 < len(inside) < everyone  # the rule tells contacts apart
    assert (seen.entering, seen.leaving, seen.staying) == (len(inside), 0, 0)
    assert len(seen.samples["entering"]) == 4 and set(seen.samples["entering"]) <= inside


def test_deleting_a_segment_closes_every_membership(audience: Audience) -> None:
    a = audience
    a.ingest([make_event("form_submitted", event_id=f"f{i}", email=f"p{i}@example.com",
                         occurred_at=ago(1), form_id="f") for i in range(5)])
    a.define("everyone", {"field": "email", "op": "contains", "value": "@"})
    assert len(members(a, "everyone")) == 5
    a.segments.delete("acme", "everyone")
    a.runner.catch_up()
    assert count_members(a.db, "acme", "everyone") == 0
    exits = [decode_outbound(r["payload"].encode()) for r in a.outbox()][5:]
    assert {(e.cause.kind, e.cause.ref) for e in exits} == {("definition", "everyone@v2")}


def history(a: Audience, segment_id: str) -> list[dict[str, Any]]:
    with a.db.reading() as cur:
        cur.execute("SELECT f.email, h.entry_no, h.entered_at, h.entered_version, h.enter_ref, "
                    "h.exited_at, h.exited_version, h.exit_ref FROM segment_history h "
                    "JOIN audience_facts f ON f.contact_id = h.contact_id "
                    "WHERE h.tenant = 'acme' AND h.segment_id = ? "
                    "ORDER BY f.email, h.entry_no", (segment_id,))
        return cur.fetchall()


@pytest.mark.parametrize("edited", [False, True], ids=["plain", "edited-first"])
def test_a_segment_deleted_and_created_again_gets_its_members_back(
    audience: Audience, edited: bool,
) -> None:
    """Deleting a segment once left its id among the contacts' open memberships, so the
    same segment created again saw no one enter: not by its backfill, not by later events."""
    a = audience
    es_vip = {"all": [{"field": "language", "op": "equals", "value": "es"},
                      {"field": "tags", "op": "has", "value": "vip"}]}
    a.ingest([make_event("form_submitted", event_id=f"f-{who}", email=f"{who}@example.com",
                         occurred_at=ago(2), form_id="f", tags=tags,
                         contact={"language": "es-ES"})
              for who, tags in (("ana", ["VIP"]), ("bea", ["vip"]), ("cid", []))])
    a.define("y", es_vip)
    if edited:  # a second version before the delete: the same members, another rule
        a.define("y", {"all": [*es_vip["all"], {"field": "email", "op": "contains",
                                                "value": "@"}]})
    last = 2 if edited else 1  # the version the delete follows
    assert members(a, "y") == {"ana@example.com", "bea@example.com"}
    a.segments.delete("acme", "y")
    a.runner.catch_up()
    assert count_members(a.db, "acme", "y") == 0
    closed = history(a, "y")
    assert [(h["exited_version"], h["exit_ref"]) for h in closed] == [
        (last + 1, f"y@v{last + 1}")] * 2
    deleted_at = parse_utc_iso(closed[0]["exited_at"])
    a.define("y", es_vip)
    recreated = last + 2
    assert members(a, "y") == {"ana@example.com", "bea@example.com"}
    again = [h for h in history(a, "y") if h["entry_no"] == 2]
    assert [(h["email"], h["entered_version"], h["enter_ref"]) for h in again] == [
        ("ana@example.com", recreated, f"y@v{recreated}"),
        ("bea@example.com", recreated, f"y@v{recreated}")]
    why = explain(a.db, "acme", "ana@example.com", "y")["segments"][0]
    assert [h["entered_version"] for h in why["history"]] == [1, recreated]
    # Later events move contacts in and out of the segment created again.
    a.ingest([
        make_event("contact_updated", event_id="cid-vip", email="cid@example.com",
                   occurred_at=ago(1), tags_added=["vip"]),
        make_event("contact_updated", event_id="ana-not", email="ana@example.com",
                   occurred_at=ago(1), tags_removed=["vip"]),
    ])
    assert members(a, "y") == {"bea@example.com", "cid@example.com"}
    # Who was in y at a moment: before the delete, in the gap, after the re-creation.
    recreated_at = parse_utc_iso(again[0]["entered_at"])
    assert deleted_at < recreated_at
    before_delete = deleted_at - timedelta(microseconds=1)
    assert {r["email"] for r in segment_members(a.db, "acme", "y", as_of=before_delete)} == {
        "ana@example.com", "bea@example.com"}
    assert count_members(a.db, "acme", "y", as_of=deleted_at) == 0
    assert count_members(a.db, "acme", "y", as_of=recreated_at - timedelta(microseconds=1)) == 0
    assert {r["email"] for r in segment_members(a.db, "acme", "y", as_of=recreated_at)} == {
        "ana@example.com", "bea@example.com"}
    incremental = dump(a.db)
    a.runner.rebuild()
    assert dump(a.db) == incremental


def test_engagement_lists_and_consent(audience: Audience) -> None:
    a = audience
    a.ingest([
        make_event("email_opened", event_id="o1", email="e1@example.com", occurred_at=ago(10),
                   message_id="m1"),
        make_event("email_opened", event_id="o2", email="e2@example.com", occurred_at=ago(10),
                   message_id="m1", machine_open=True),
        make_event("product_viewed", event_id="v3", email="e3@example.com",
                   occurred_at=ago(100), product_id="x"),
        make_event("product_viewed", event_id="v4", email="e4@example.com",
                   occurred_at=ago(200), product_id="x"),
        make_event("list_subscribed", event_id="s1", email="e1@example.com", occurred_at=ago(9),
                   list_id="news"),
        make_event("list_subscribed", event_id="s2", email="e2@example.com", occurred_at=ago(9),
                   list_id="news", double_opt_in=True),
        make_event("email_bounced", event_id="b1", email="e1@example.com", occurred_at=ago(2),
                   message_id="m2", bounce="hard"),
        make_event("consent_changed", event_id="c1", email="e3@example.com",
                   occurred_at=ago(50), channel="email", granted=True),
        make_event("consent_changed", event_id="c2", email="e3@example.com",
                   occurred_at=ago(20), channel="email", granted=False),
    ])
    stats = engagement_stats(a.db, "acme")
    assert {s: v["count"] for s, v in stats["statuses"].items()} == {
        "engaged": 1, "not_engaged": 2, "inactive": 1}
    assert stats["statuses"]["engaged"]["percent"] == 25.0
    assert stats["by_subscription"]["subscribed"] == {"engaged": 0, "not_engaged": 0,
                                                      "inactive": 0}  # e1 is suppressed
    assert list_stats(a.db, "acme")["lists"] == {"news": {"pending": 1, "suppressed": 1}}
    consent = consent_at(a.db, "acme", "e3@example.com", "email",
                         datetime.now(UTC) - timedelta(days=30))
    assert consent["consented"] and consent["decided_by"]["event_id"] == "c1"
    assert not consent_at(a.db, "acme", "e3@example.com", "email",
                          datetime.now(UTC))["consented"]
    # 80 days on, e1 is no longer engaged; 100 days on, e3 is inactive.
    a.tick(datetime.now(UTC) + timedelta(days=81))
    counts = {s: v["count"] for s, v in engagement_stats(a.db, "acme")["statuses"].items()}
    assert counts == {"engaged": 0, "not_engaged": 2, "inactive": 2}


# ------------------------------------------------------ rebuild equals incremental, oracle

ORACLE_SEGMENTS: dict[str, dict[str, Any]] = {
    "vip-iberia": {"all": [{"field": "country", "op": "in", "value": ["ES", "PT"]},
                           {"field": "tags", "op": "has", "value": "vip"}]},
    "bought-90d": {"count": "purchases", "within_days": 90, "op": "gte", "value": 1},
    "active-60d": {"field": "last_interaction_at", "op": "within_last", "value": {"days": 60}},
    "big-eur": {"sum": "spent", "currency": "EUR", "op": "gt", "value": 150},
    "vip-or-asleep": {"any": [{"segment": "vip-iberia"}, {"not": {"segment": "active-60d"}}]},
    "news-subscribed": {"field": "list.newsletter", "op": "equals", "value": "subscribed"},
    # Defined before the last tick: contacts whose engagement lapses by time must enter.
    "lapsed-buyers": {"all": [{"field": "engagement", "op": "in",
                               "value": ["not_engaged", "inactive"]},
                              {"count": "purchases", "op": "gte", "value": 1}]},
}


def dump(db: ViewDatabase) -> dict[str, list[str]]:
    out = {}
    with db.reading() as cur:
        for table in TABLES:
            cur.execute(f"SELECT * FROM {table}")
            out[table] = sorted(json.dumps(r, sort_keys=True, default=str)
                                for r in cur.fetchall())
    return out


def test_rebuild_equals_incremental_and_matches_a_brute_force_oracle(
    audience: Audience,
) -> None:
    a = audience
    # A history that ends about now, so that every window has contacts on both sides.
    start = datetime.now(UTC) - timedelta(days=330)
    raw = list(generate_history("acme", 3000, seed=9, start=start))
    events = [decode_dict(d) for d in raw]
    a.ingest(events[:1000])
    for sid in ("vip-iberia", "bought-90d", "active-60d"):
        a.define(sid, ORACLE_SEGMENTS[sid])
    a.ingest(events[1000:2000])
    a.tick(datetime.now(UTC) + timedelta(days=3))
    for sid in ("big-eur", "vip-or-asleep", "news-subscribed", "lapsed-buyers"):
        a.define(sid, ORACLE_SEGMENTS[sid])
    a.ingest(events[2000:])
    a.tick(datetime.now(UTC) + timedelta(days=10))

    incremental = dump(a.db)
    assert len(incremental["segment_history"]) > 100
    # A contact's stays in a segment follow one another: none opens before the last closed.
    with a.db.reading() as cur:
        cur.execute("SELECT segment_id, contact_id, entered_at, exited_at FROM segment_history "
                    "ORDER BY segment_id, contact_id, entry_no")
        stays = cur.fetchall()
    for previous, stay in zip(stays, stays[1:], strict=False):
        if (previous["segment_id"], previous["contact_id"]) == (stay["segment_id"],
                                                                stay["contact_id"]):
            assert previous["exited_at"] is not None, stay
            assert previous["exited_at"] <= stay["entered_at"], (previous, stay)
    a.runner.rebuild()
    assert dump(a.db) == incremental

    now = projection_now(a.db)
    assert now is not None
    expected = oracle(raw, now)
    everyone = set(expected["engagement"])
    for sid in ORACLE_SEGMENTS:
        assert 0 < len(expected[sid]) < len(everyone), sid  # the oracle is not vacuous
        assert members(a, sid) == expected[sid], sid
    assert set(expected["engagement"].values()) == {"engaged", "not_engaged", "inactive"}
    with a.db.reading() as cur:
        cur.execute("SELECT email, engagement, rfm FROM audience_facts")
        rows = cur.fetchall()
    assert {r["email"]: r["engagement"] for r in rows} == expected["engagement"]
    assert list_stats(a.db, "acme")["lists"] == expected["lists"]
    assert len(expected["lists"]) == 3 and all(
        {"pending", "subscribed", "unsubscribed"} <= set(states)
        for states in expected["lists"].values())
    rfm = {r["email"]: json.loads(r["rfm"]) for r in rows}
    groups = {e: v["group"] if v["m"] is None else f"{v['group']} m{v['m']}"
              for e, v in rfm.items()}
    assert groups == expected["rfm"]
    assert len(set(groups.values())) >= 5


def oracle(raw: list[dict[str, Any]], now: str) -> dict[str, Any]:
    """Membership computed the slow, obvious way from the published events."""
    people: dict[str, list[dict[str, Any]]] = {}
    for event in raw:
        people.setdefault(normalise_email(event["contact"]["email"]), []).append(event)
    moment = parse_utc_iso(now)

    def when(event: dict[str, Any]) -> tuple[datetime, str]:
        return datetime.fromisoformat(event["occurred_at"]), event["event_id"]

    result: dict[str, Any] = {sid: set() for sid in ORACLE_SEGMENTS}
    result["engagement"] = {}
    result["lists"] = {}
    values: dict[str, tuple[int, int, Decimal]] = {}
    interactions = {"email_opened", "email_clicked", "product_viewed", "cart_updated",
                    "purchase_completed", "form_submitted", "survey_completed", "booking_made"}
    for email, evs in people.items():
        evs.sort(key=when)
        country = None
        tags: dict[str, bool] = {}
        lists: dict[str, tuple[str, datetime]] = {}  # list id -> (state, since)
        suppressed: datetime | None = None
        soft = 0
        for e in evs:  # in time order: the latest fact wins
            at = when(e)[0]
            country = e["contact"].get("country", country)
            for t in e.get("tags", []) + e.get("tags_added", []):
                tags[t.strip().casefold()] = True
            for t in e.get("tags_removed", []):
                tags[t.strip().casefold()] = False
            if e["type"] in ("list_subscribed", "list_confirmed", "list_unsubscribed"):
                state = {"list_subscribed": "pending" if e.get("double_opt_in")
                         else "subscribed", "list_confirmed": "subscribed",
                         "list_unsubscribed": "unsubscribed"}[e["type"]]
                # "*" leaves the lists one is on; it joins none.
                for list_id in (list(lists) if e["list_id"] == "*" else [e["list_id"]]):
                    lists[list_id] = (state, at)
            if e["type"] == "email_bounced":
                if e["bounce"] == "hard":
                    suppressed = at
                else:
                    soft += 1
                    if soft >= 3:
                        suppressed = at
            if e["type"] == "email_complained":
                suppressed = at
        effective = {
            list_id: "suppressed" if (state in ("pending", "subscribed")
                                      and suppressed is not None and suppressed >= since)
            else state
            for list_id, (state, since) in lists.items()
        }
        for list_id, state in effective.items():
            result["lists"].setdefault(list_id, {})
            result["lists"][list_id][state] = result["lists"][list_id].get(state, 0) + 1
        newsletter = effective.get("newsletter")
        touched = [when(e)[0] for e in evs if e["type"] in interactions
                   and not e.get("machine_open")]
        last = max(touched) if touched else None
        bought = [when(e)[0] for e in evs if e["type"] == "purchase_completed"]
        spent = sum((paid_eur(e) for e in evs if e["type"] == "purchase_completed"),
                    Decimal(0)) - sum((Decimal(e["amount"]) for e in evs
                                       if e["type"] == "purchase_refunded"
                                       and e["currency"] == "EUR"), Decimal(0))
        first = when(evs[0])[0]
        vip = country in ("ES", "PT") and tags.get("vip", False)
        active = last is not None and last > moment - timedelta(days=60)
        member = {
            "vip-iberia": vip,
            "bought-90d": any(b > moment - timedelta(days=90) for b in bought),
            "active-60d": active,
            "big-eur": spent > 150,
            "vip-or-asleep": vip or not active,
            "news-subscribed": newsletter == "subscribed",
        }
        if last is not None and last > moment - timedelta(days=90):
            status = "engaged"
        elif (last or first) > moment - timedelta(days=180):
            status = "not_engaged"
        else:
            status = "inactive"
        result["engagement"][email] = status
        member["lapsed-buyers"] = status != "engaged" and bool(bought)
        for sid, inside in member.items():
            if inside:
                result[sid].add(email)
        if bought:  # RFM as of today's UTC midnight, within 365 days, in EUR
            today = moment.replace(hour=0, minute=0, second=0, microsecond=0)
            window = [e for e in evs if today - timedelta(days=365) < when(e)[0]]
            values[email] = (
                max((today - max(bought)).days, 0),
                sum(1 for e in window if e["type"] == "purchase_completed"),
                sum((paid_eur(e) for e in window if e["type"] == "purchase_completed"),
                    Decimal(0)) - sum((Decimal(e["amount"]) for e in window
                                       if e["type"] == "purchase_refunded"
                                       and e["currency"] == "EUR"), Decimal(0)),
            )
    n = len(values)
    result["rfm"] = dict.fromkeys(result["engagement"], "never_bought")

    def rank(dimension: int, mine: Any, worse: Any) -> int:
        every = [v[dimension] for v in values.values()]
        if n < 5 or len(set(every)) == 1:
            return 3  # too few buyers, or one value for all: nothing to rank
        return 1 + 5 * sum(1 for v in every if worse(v, mine)) // n

    for email, (rec, freq, mon) in values.items():
        r = rank(0, rec, lambda v, mine: v > mine)
        f = rank(1, freq, lambda v, mine: v < mine)
        m = rank(2, mon, lambda v, mine: v < mine)
        grid = {(5, 5): "champions", (5, 4): "champions", (4, 5): "champions",
                (4, 4): "champions"}
        if (r, f) in grid:
            group = grid[(r, f)]
        elif r >= 3 and f >= 3:
            group = "loyal"
        elif f >= 3:
            group = "at_risk"
        else:
            group = ["lost", "hibernating", "needs_attention", "promising", "recent"][r - 1]
        result["rfm"][email] = f"{group} m{m}"
    return result


def test_a_burst_of_buyers_is_ranked_against_cuts_of_the_burst_not_of_its_first_page(
    audience: Audience,
) -> None:
    """Once, cuts taken right after a tenant's first buyers (all with purchases older than
    the window: frequency 0) stood until midnight, and every later buyer scored R5 F5:
    117 champions of 145. Cuts are now taken again as the buyers grow, at the event that
    outgrows them, so a rebuild (in other pages) does the same."""
    a = audience
    now = datetime.now(UTC)

    def purchases(i: int, ages: list[float]) -> list[InboundEvent]:
        return [make_event("purchase_completed", event_id=f"p{i}-{k}",
                           email=f"b{i:03}@example.com",
                           occurred_at=(now - timedelta(days=age)).isoformat(),
                           order_id=f"o{i}-{k}", total=f"{10 + (i * 7 + k) % 90}.00",
                           currency="EUR")
                for k, age in enumerate(ages)]

    # The first buyers bought once, long ago, and are ranked among themselves.
    a.ingest([e for i in range(10) for e in purchases(i, [380.5 + i])])
    a.clock.request_rescore(now)
    a.runner.catch_up()
    # Then a burst: buyers until cuts are next outgrown, each seen whole before the next,
    # the last one buying once, so that the last cuts are taken of every buyer as they end.
    total, base = 10, 10
    while total < 150 or not cuts_outgrown(base, total):
        total += 1
        if cuts_outgrown(base, total) and total < 150:
            base = total
    burst = []
    for i in range(10, total):
        ages = [1.5 + (i * 37) % 330] if i == total - 1 else [
            1.5 + (i * 37 + 90 * k) % 360 for k in range(1 + (i % 7 == 0) + (i % 3 == 0))]
        burst += purchases(i, ages)
    a.ingest(burst)

    stats = rfm_stats(a.db, "acme")
    assert stats["cuts"]["buyers"] == total
    with a.db.reading() as cur:
        cur.execute("SELECT email, rfm FROM audience_facts")
        rfm = {r["email"]: json.loads(r["rfm"]) for r in cur.fetchall()}
    assert len(rfm) == total
    # The documented scores, from the values: 1 + floor(5 * worse / buyers).
    for name, key, worse in (("r", "recency_days", lambda v, mine: v > mine),
                             ("f", "frequency", lambda v, mine: v < mine),
                             ("m", "monetary", lambda v, mine: Decimal(v) < Decimal(mine))):
        every = [v[key] for v in rfm.values()]
        for email, v in rfm.items():
            below = sum(1 for other in every if worse(other, v[key]))
            assert v[name] == 1 + 5 * below // total, (name, email, v)
    # Recency has no ties to speak of: a fifth of the buyers in each score; the groups
    # follow the scores; the champions are the few recent repeat buyers.
    recency = Counter(v["r"] for v in rfm.values())
    assert all(abs(recency[s] - total / 5) <= 2 for s in range(1, 6)), recency
    assert all(v["group"] == rfm_group(v["r"], v["f"]) for v in rfm.values())
    groups = stats["groups"]
    assert sum(groups.values()) == total and groups["never_bought"] == 0
    repeat = sum(1 for v in rfm.values() if v["frequency"] >= 2)
    assert 0 < groups["champions"] < repeat < total / 2
    assert {"recent", "promising", "needs_attention", "hibernating", "lost"} <= {
        g for g, n in groups.items() if n}
    # A rebuild in other pages takes the same cuts at the same events.
    incremental = dump(a.db)
    a.runner.set_page_size(37, 37)
    a.runner.rebuild()
    assert dump(a.db) == incremental


def one_purchase(tenant: str, i: int, now: datetime) -> InboundEvent:
    return make_event("purchase_completed", tenant=tenant, event_id=f"{tenant}-p{i}",
                      email=f"b{i:03}@example.com",
                      occurred_at=(now - timedelta(days=3 * i + 1)).isoformat(),
                      order_id=f"{tenant}-o{i}", total=f"{10 + i}.00", currency="EUR")


def test_an_erased_buyer_has_only_its_own_tenant_rescored(audience: Audience) -> None:
    """Once, erasing one tenant's buyer had the next rescoring request take every tenant's
    cuts again; the request is now the tenant's own."""
    a = audience
    now = datetime.now(UTC)
    a.ingest([one_purchase(t, i, now) for i in range(8) for t in ("acme", "globex")])
    scheduler = Scheduler(a.store, a.db)
    assert scheduler.rescore_wanted()  # both reached 5 buyers without cuts
    a.clock.request_rescore(now)
    a.runner.catch_up()
    assert not scheduler.rescore_wanted()
    before = {t: rfm_stats(a.db, t)["cuts"] for t in ("acme", "globex")}
    assert before["acme"]["buyers"] == before["globex"]["buyers"] == 8
    a.ingest([make_event("contact_erasure_requested", event_id="erase-0",
                         email="b000@example.com", occurred_at=datetime.now(UTC).isoformat())])
    with a.db.reading() as cur:
        assert set(rescore_requests(cur)) == {"acme"}
    assert scheduler.rescore_wanted()
    a.clock.request_rescore(datetime.now(UTC))
    a.runner.catch_up()
    assert not scheduler.rescore_wanted()
    after = {t: rfm_stats(a.db, t)["cuts"] for t in ("acme", "globex")}
    assert after["acme"]["buyers"] == 7
    assert after["acme"]["taken_at"] > before["acme"]["taken_at"]
    assert after["globex"] == before["globex"]  # not taken again: same instant too
    # A rebuild sees the erased buyer's purchase redacted; here it takes the same cuts at
    # the same instants all the same (docs/audience.md: not always after an erased buyer).
    assert_rebuild_gives_the_same_rows(a, page_size=5)


def assert_rebuild_gives_the_same_rows(a: Audience, page_size: int) -> None:
    """Every audience row as incremental processing left it, after a rebuild in pages of
    ``page_size``; erasure confirmations aside (stamped with the time they are applied)."""
    def kept(rows: dict[str, list[str]]) -> dict[str, list[str]]:
        return {table: values for table, values in rows.items() if table != "audience_erasures"}

    incremental = dump(a.db)
    a.runner.set_page_size(page_size)  # growing from page_size: pages of many sizes
    a.runner.rebuild()
    assert kept(dump(a.db)) == kept(incremental)


def state_rows(a: Audience, prefix: str) -> dict[str, str]:
    with a.db.reading() as cur:
        cur.execute("SELECT name, value FROM audience_state")
        return {r["name"]: r["value"] for r in cur.fetchall() if r["name"].startswith(prefix)}


def test_a_tenant_whose_buyers_are_all_erased_loses_its_cuts(audience: Audience) -> None:
    """Once, a tenant whose every buyer was erased kept its RFM cuts for ever, thresholds
    taken of the erased people's values: rescoring visited only tenants with buyers. Now
    the tenant's rescoring (its own request, or a midnight before it) drops them."""
    a = audience
    now = datetime.now(UTC)
    tenants = ("acme", "globex", "initech")
    a.ingest([one_purchase(t, i, now) for i in range(8) for t in tenants])
    a.clock.request_rescore(now)
    a.runner.catch_up()
    before = state_rows(a, "rfm_cuts:")
    assert set(before) == {f"rfm_cuts:{t}" for t in tenants}

    def erase_every_buyer(tenant: str) -> None:
        a.ingest([make_event("contact_erasure_requested", tenant=tenant,
                             event_id=f"erase-{tenant}-{i}", email=f"b{i:03}@example.com",
                             occurred_at=datetime.now(UTC).isoformat()) for i in range(8)])
        with a.db.reading() as cur:
            assert tenant in rescore_requests(cur)

    # acme's request is answered by a rescoring request in the log...
    erase_every_buyer("acme")
    a.clock.request_rescore(datetime.now(UTC))
    a.runner.catch_up()
    assert rfm_stats(a.db, "acme")["cuts"] is None
    # ... globex's by the midnight that comes first.
    erase_every_buyer("globex")
    a.tick(now + timedelta(days=1))
    with a.db.reading() as cur:
        assert rescore_requests(cur) == {}
    assert rfm_stats(a.db, "globex")["cuts"] is None
    assert set(state_rows(a, "rfm_cuts:")) == {"rfm_cuts:initech"}
    assert rfm_stats(a.db, "initech")["cuts"]["buyers"] == 8
    assert state_rows(a, "rfm_buyers:") == {"rfm_buyers:initech": "8"}
    # A rebuild, which never sees the erased people buy, gives the same rows.
    assert_rebuild_gives_the_same_rows(a, page_size=7)


class CountedCursor:
    """A cursor that keeps the text of every statement it runs."""

    def __init__(self, cur: Cursor) -> None:
        self.cur = cur
        self.statements: list[str] = []

    def execute(self, statement: str, params: Any = ()) -> Any:
        self.statements.append(statement)
        return self.cur.execute(statement, params)

    def executemany(self, statement: str, params: Any) -> Any:
        self.statements.append(statement)
        return self.cur.executemany(statement, params)

    def fetchall(self) -> list[dict[str, Any]]:
        return self.cur.fetchall()

    def fetchone(self) -> dict[str, Any] | None:
        return self.cur.fetchone()


class CountedAudience(AudienceProjection):
    """The audience projection, its statements counted."""

    def __init__(self) -> None:
        self.statements: list[str] = []

    def apply(self, cur: Cursor, events: Any, is_postgres: bool) -> None:
        counted = CountedCursor(cur)
        super().apply(counted, events, is_postgres)
        self.statements += counted.statements


def test_a_rescoring_mid_page_keeps_the_page_contacts_for_its_later_events(
    audience: Audience,
) -> None:
    """Once, a tenant's rescoring in the middle of a page dropped every contact the page
    had loaded, and its later events fetched their contacts one query each."""
    a = audience
    now = datetime.now(UTC)
    people = [f"p{i:03}@example.com" for i in range(60)]
    a.ingest([one_purchase("acme", i, now) for i in range(19)] + [
        make_event("product_viewed", event_id=f"v-{i}", email=email,
                   occurred_at=ago(5), product_id="x") for i, email in enumerate(people)])
    a.define("late", {"field": "tags", "op": "has", "value": "late"})
    assert rfm_stats(a.db, "acme")["cuts"] is None
    # One page: every person's event, then the purchase that brings the tenant to 20
    # buyers (its cuts are taken at it), then every person's event again.
    batches = [
        [make_event("product_viewed", event_id=f"w-{i}", email=email, occurred_at=ago(1),
                    product_id="y") for i, email in enumerate(people)],
        [one_purchase("acme", 19, now)],
        [make_event("contact_updated", event_id=f"t-{i}", email=email,
                    occurred_at=ago(0.5), tags_added=["late"]) for i, email in enumerate(people)],
    ]
    for batch in batches:
        a.position += 1
        a.folder.fold_and_commit(batch, a.position)
    projection = CountedAudience()
    runner = ProjectionRunner(a.store, a.db, projection, page_size=10_000)
    # (the new buyer is registered, then its purchase recorded)
    assert runner.run_once() == 2 * len(people) + 2 and runner.run_once() == 0
    assert rfm_stats(a.db, "acme")["cuts"]["buyers"] == 20  # taken mid-page
    assert members(a, "late") == set(people)
    with a.db.reading() as cur:
        cur.execute("SELECT email, tags FROM audience_facts")
        tagged = {r["email"] for r in cur.fetchall() if "late" in json.loads(r["tags"])}
    assert tagged == set(people)
    # The contacts' rows are read a few times in the page, not once per contact: the
    # page's contacts as it starts, and the buyers once for their new cuts (their ids
    # aside).
    reads = [s for s in projection.statements
             if s.startswith("SELECT") and "FROM audience_facts" in s]
    assert len(reads) <= 4, reads
    assert len([s for s in reads if re.search(r"\bdoc\b", s)]) == 2, reads
    incremental = dump(a.db)
    a.runner.set_page_size(23, 23)
    a.runner.rebuild()
    assert dump(a.db) == incremental


def test_rows_do_not_depend_on_how_many_contacts_are_loaded_at_once(
    audience: Audience, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Rescorings, backfills and ticks go through a tenant's contacts ``CHUNK`` at a time
    (the first chunk of buyers read once, the rows in memory before kept): in chunks of
    7 they write the rows that chunks of 2000 write."""
    a = audience
    monkeypatch.setattr(audience_projection, "CHUNK", 7)
    start = datetime.now(UTC) - timedelta(days=330)
    events = [decode_dict(d) for d in generate_history("acme", 1500, seed=4, start=start)]
    a.ingest(events[:500])
    a.define("best", {"field": "rfm.group", "op": "in", "value": ["champions", "loyal"]})
    a.define("active-60d", ORACLE_SEGMENTS["active-60d"])
    a.clock.request_rescore(datetime.now(UTC))
    a.ingest(events[500:])
    a.tick(datetime.now(UTC) + timedelta(days=2))  # past midnight: every buyer rescored
    cuts = rfm_stats(a.db, "acme")["cuts"]
    assert cuts["buyers"] > 5 * 7 and members(a, "best")
    incremental = dump(a.db)
    monkeypatch.undo()
    a.runner.set_page_size(1000)
    a.runner.rebuild()
    assert dump(a.db) == incremental


def test_tenant_settings_change_engagement_windows_and_bounce_suppression(
    audience: Audience,
) -> None:
    a = audience
    a.ingest([
        make_event("email_clicked", event_id="k1", email="c1@example.com", occurred_at=ago(40),
                   message_id="m"),
        make_event("list_subscribed", event_id="s1", email="c2@example.com", occurred_at=ago(20),
                   list_id="news"),
        make_event("email_bounced", event_id="sb", email="c2@example.com", occurred_at=ago(10),
                   message_id="m", bounce="soft"),
    ])
    a.define("engaged", {"field": "engagement", "op": "equals", "value": "engaged"})
    a.define("news", {"field": "list.news", "op": "equals", "value": "subscribed"})
    assert members(a, "engaged") == {"c1@example.com"}
    assert members(a, "news") == {"c2@example.com"}
    assert list_stats(a.db, "acme")["lists"] == {"news": {"subscribed": 1}}
    tenants = TenantCommands(a.store)
    tenants.change("acme", engaged_days=30, inactive_days=60, soft_bounce_limit=1)
    a.runner.catch_up()
    assert members(a, "engaged") == set()  # 40 days ago is outside a 30-day window
    assert members(a, "news") == set()  # one soft bounce now suppresses
    assert list_stats(a.db, "acme")["lists"] == {"news": {"suppressed": 1}}
    stats = engagement_stats(a.db, "acme")
    assert {s: v["count"] for s, v in stats["statuses"].items()} == {
        "engaged": 0, "not_engaged": 2, "inactive": 0}
    with a.db.reading() as cur:
        cur.execute("SELECT exit_cause, exit_ref FROM segment_history WHERE segment_id = 'engaged'")
        assert cur.fetchall() == [{"exit_cause": "definition", "exit_ref": "settings@v2"}]
    with pytest.raises(TenantError, match="inactive_days must be longer"):
        tenants.change("acme", engaged_days=90)
