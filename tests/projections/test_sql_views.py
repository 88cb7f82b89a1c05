"""The analytics views on both backends: exactly the documented columns and types, the
right rows for a known history, daily counts for any past day, the documented queries,
and views that follow their tables through rebuilds, replays and layout resets."""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hyp_settings
from hypothesis import strategies as st

from projections.audience_queries import engagement_stats, list_stats, projection_now, rfm_stats
from projections.queries import tag_counts
from projections.registry import all_projections
from projections.replay import replay
from projections.sql_catalog import (
    BOOLEAN,
    DATE,
    DECIMAL,
    JSON,
    PREFIX,
    TIMESTAMP,
    VIEWS,
    View,
    reference_markdown,
    view_named,
)
from services.config import Settings
from services.domain.stamps import utc_iso
from tests.factories import make_event
from tests.projections.analytics_data import SEGMENTS, TENANTS, Pipeline, pipeline, seed

DOCS = Path(__file__).parents[2] / "docs" / "sql.md"


@pytest.fixture
def seeded(settings: Settings) -> Iterator[Pipeline]:
    p = seed(settings)
    yield p
    p.close()


def normal(view: View, row: dict[str, Any], is_postgres: bool) -> dict[str, Any]:
    """A row with the same Python values from either backend (psycopg decodes JSON)."""
    out = {}
    for column in view.columns:
        value = row[column.name]
        if value is not None:
            if column.type is TIMESTAMP and isinstance(value, datetime):
                value = utc_iso(value)
            elif column.type is DATE and isinstance(value, date):
                value = value.isoformat()
            elif column.type is BOOLEAN:
                value = bool(value)
            elif column.type is JSON and not is_postgres:
                value = json.loads(value)
            elif column.type is DECIMAL:
                value = Decimal(str(value))
        out[column.name] = value
    return out


def rows(p: Pipeline, name: str, tenant: str | None = None,
         where: str = "") -> list[dict[str, Any]]:
    view = view_named(name)
    conditions = [c for c in (where, "tenant = ?" if tenant else "") if c]
    with p.db.reading() as cur:
        cur.execute(f"SELECT * FROM {name}"
                    + (f" WHERE {' AND '.join(conditions)}" if conditions else ""),
                    (tenant,) if tenant else ())
        found = [normal(view, r, p.db.is_postgres) for r in cur.fetchall()]
    return sorted(found, key=lambda r: json.dumps(r, sort_keys=True, default=str))


def at(p: Pipeline, days_ago: float) -> str:
    return utc_iso(p.started - timedelta(days=days_ago))


def ids(p: Pipeline, tenant: str) -> dict[str, str]:
    with p.db.reading() as cur:
        cur.execute("SELECT email, contact_id FROM contacts WHERE tenant = ?", (tenant,))
        return {r["email"].split(".")[0].split("@")[0]: r["contact_id"] for r in cur.fetchall()}


# --------------------------------------------------------------------------- the columns


def test_every_view_has_exactly_the_documented_columns_and_types(seeded: Pipeline) -> None:
    p = seeded
    with p.db.reading() as cur:
        if p.db.is_postgres:
            cur.execute("SELECT table_name FROM information_schema.views "
                        "WHERE table_schema = current_schema()")
        else:
            cur.execute("SELECT name AS table_name FROM sqlite_master WHERE type = 'view'")
        assert {r["table_name"] for r in cur.fetchall()} == {v.name for v in VIEWS}
        for view in VIEWS:
            if p.db.is_postgres:
                cur.execute("SELECT column_name, data_type FROM information_schema.columns "
                            "WHERE table_schema = current_schema() AND table_name = ? "
                            "ORDER BY ordinal_position", (view.name,))
                assert [(r["column_name"], r["data_type"]) for r in cur.fetchall()] == [
                    (c.name, c.type.postgres) for c in view.columns], view.name
            else:
                cur.execute(f"SELECT name FROM pragma_table_info('{view.name}') ORDER BY cid")
                assert [r["name"] for r in cur.fetchall()] == view.column_names(), view.name
                for c in view.columns:
                    cur.execute(f"SELECT DISTINCT typeof({c.name}) AS t FROM {view.name} "
                                f"WHERE {c.name} IS NOT NULL")
                    assert {r["t"] for r in cur.fetchall()} <= {c.type.sqlite}, (view.name, c)
            for tenant in TENANTS:  # the history leaves rows in every view, for each tenant
                cur.execute(f"SELECT COUNT(*) AS n FROM {view.name} WHERE tenant = ?", (tenant,))
                row = cur.fetchone()
                assert row and row["n"] > 0, (view.name, tenant)


# --------------------------------------------------------------------------- the rows


@pytest.mark.parametrize("tenant", TENANTS)
def test_the_views_show_a_known_history_as_documented(seeded: Pipeline, tenant: str) -> None:
    p = seeded
    who = ids(p, tenant)
    ana, bea = who["ana"], who["bea"]
    ana_email = f"ana.{tenant}@example.com"

    contacts = {r["contact_id"]: r for r in rows(p, f"{PREFIX}contacts", tenant)}
    assert set(contacts) == {ana, bea}
    assert {k: contacts[ana][k] for k in (
        "email", "first_name", "country", "language", "language_base", "consent_email",
        "consent_sms", "properties", "tags", "first_seen_at", "last_activity_at",
        "forms_count", "purchases_count", "events_count")} == {
        "email": ana_email, "first_name": "Ana", "country": "ES", "language": "es-ES",
        "language_base": "es", "consent_email": False, "consent_sms": None,
        "properties": {"shoe_size": 38, "plan": "pro", "vip_since": "2026-01-31",
                       "newsletter_ok": True},
        "tags": ["Lead"], "first_seen_at": at(p, 5), "last_activity_at": at(p, 2),
        "forms_count": 1, "purchases_count": 1, "events_count": 7}
    assert (contacts[bea]["email"], contacts[bea]["country"], contacts[bea]["events_count"]
            ) == ("bea@example.com", "PT", 3)

    properties = {(r["contact_id"], r["property"]): (r["value"], r["value_type"], r["value_text"])
                  for r in rows(p, f"{PREFIX}contact_properties", tenant)}
    assert properties == {
        (ana, "shoe_size"): (38, "number", "38"), (ana, "plan"): ("pro", "string", "pro"),
        (ana, "vip_since"): ("2026-01-31", "string", "2026-01-31"),
        (ana, "newsletter_ok"): (True, "boolean", "true")}

    timeline = {(r["contact_id"], r["event_id"]): r for r in rows(p, f"{PREFIX}timeline", tenant)}
    assert set(timeline) == {(ana, e) for e in ("f1", "c1", "c2", "l1", "p1", "o1", "t1")} | {
        (bea, e) for e in ("f2", "l2", "b1")}
    purchase = timeline[(ana, "p1")]
    assert (purchase["type"], purchase["occurred_at"]) == ("purchase_completed", at(p, 3))
    assert purchase["data"]["total"] == {"amount": "120.50", "currency": "EUR"}

    assert [(r["contact_id"], r["tag"], r["label"]) for r in rows(p, f"{PREFIX}tags", tenant)
            ] == [(ana, "lead", "Lead")]

    segments = {r["segment_id"]: r for r in rows(p, f"{PREFIX}segments", tenant)}
    assert {s: (r["version"], r["deleted"], r["rule"]) for s, r in segments.items()} == {
        s: (1, False, rule) for s, rule in SEGMENTS.items()}

    # Membership instants are ficha's time: when it learned of the event.
    (member,) = rows(p, f"{PREFIX}segment_members", tenant)
    assert member["entered_at"] >= at(p, 0)
    assert {k: v for k, v in member.items() if k != "entered_at"} == {
        "tenant": tenant, "segment_id": "spain", "contact_id": ana, "email": ana_email,
        "entry_no": 1, "enter_cause": "event", "enter_ref": "f1"}

    history = {r["segment_id"]: r for r in rows(p, f"{PREFIX}segment_history", tenant)}
    assert {k: history["vip"][k] for k in (
        "contact_id", "entry_no", "entered_version", "enter_cause", "enter_ref",
        "enter_clauses", "exited_version", "exit_cause", "exit_ref", "exit_clauses")} == {
        "contact_id": ana, "entry_no": 1, "entered_version": 1, "enter_cause": "event",
        "enter_ref": "f1", "enter_clauses": ["rule"], "exited_version": 1,
        "exit_cause": "event", "exit_ref": "t1", "exit_clauses": ["rule"]}
    assert at(p, 0) <= history["vip"]["entered_at"] < history["vip"]["exited_at"]
    assert history["spain"]["entered_at"] == member["entered_at"]
    assert history["spain"]["exited_at"] is None

    engagement = {r["contact_id"]: r for r in rows(p, f"{PREFIX}engagement", tenant)}
    assert {c: (r["status"], r["subscribed"], r["last_interaction_at"], r["last_purchase_at"])
            for c, r in engagement.items()} == {
        ana: ("engaged", True, at(p, 2), at(p, 3)), bea: ("inactive", False, at(p, 200), None)}

    assert [(r["contact_id"], r["list_id"], r["state"], r["since"])
            for r in rows(p, f"{PREFIX}list_members", tenant)] == sorted([
        (ana, "newsletter", "subscribed", at(p, 5)), (bea, "newsletter", "suppressed", at(p, 100))])

    assert [(r["contact_id"], r["channel"], r["occurred_at"], r["event_id"], r["granted"])
            for r in rows(p, f"{PREFIX}consent_ledger", tenant)] == [
        (ana, "email", at(p, 5), "c1", True), (ana, "email", at(p, 4), "c2", False)]

    rfm = {r["contact_id"]: r for r in rows(p, f"{PREFIX}rfm", tenant)}
    assert (rfm[ana]["frequency"], rfm[ana]["monetary"]) == (1, Decimal("120.50"))
    assert rfm[ana]["recency_days"] in (2, 3, 4)  # whole days to the projection's midnight
    assert rfm[bea]["rfm_group"] == "never_bought" and rfm[bea]["recency_score"] is None
    # The same groups as the tallies `ficha rfm stats` reads.
    stats = rfm_stats(p.db, tenant)["groups"]
    assert {g: n for g, n in stats.items() if n} == {
        rfm[ana]["rfm_group"]: 1, "never_bought": 1}

    def current(name: str, *keys: str) -> dict[tuple[Any, ...], int]:
        return {tuple(r[k] for k in keys): r["contacts"]
                for r in rows(p, name, tenant, "valid_until IS NULL")}

    assert current(f"{PREFIX}engagement_daily", "status", "subscribed") == {
        ("engaged", True): 1, ("inactive", False): 1}
    assert current(f"{PREFIX}list_daily", "list_id", "state") == {
        ("newsletter", "subscribed"): 1, ("newsletter", "suppressed"): 1}
    assert current(f"{PREFIX}list_engagement_daily", "list_id", "state", "status") == {
        ("newsletter", "subscribed", "engaged"): 1, ("newsletter", "suppressed", "inactive"): 1}
    assert current(f"{PREFIX}rfm_daily", "rfm_group") == {
        (rfm[ana]["rfm_group"],): 1, ("never_bought",): 1}


def test_daily_views_give_the_counts_of_any_past_day(seeded: Pipeline) -> None:
    """Ana's last interaction was 2 days ago: 90 days later she is no longer engaged."""
    p = seeded
    first = (projection_now(p.db) or "")[:10]
    p.tick(p.started + timedelta(days=95))
    lapsed = (p.started + timedelta(days=88)).date().isoformat()
    for tenant in TENANTS:
        spans = {(r["valid_from"], r["valid_until"], r["status"], r["subscribed"]): r["contacts"]
                 for r in rows(p, f"{PREFIX}engagement_daily", tenant)}
        assert spans == {
            (first, lapsed, "engaged", True): 1, (first, lapsed, "inactive", False): 1,
            (lapsed, None, "not_engaged", True): 1, (lapsed, None, "inactive", False): 1}
        # The same as `ficha engagement stats`, which carries snapshots over quiet days.
        stats = engagement_stats(p.db, tenant, days=30)
        assert {s: v["count"] for s, v in stats["statuses"].items() if v["count"]} == {
            "not_engaged": 1, "inactive": 1}
        listed = list_stats(p.db, tenant)["lists"]
        with p.db.reading() as cur:
            cur.execute(f"SELECT list_id, state, contacts FROM {PREFIX}list_daily "
                        "WHERE tenant = ? AND valid_until IS NULL", (tenant,))
            assert {(r["list_id"], r["state"]): r["contacts"] for r in cur.fetchall()} == {
                (lid, state): n for lid, states in listed.items() for state, n in states.items()}


def documented_queries() -> list[str]:
    return re.findall(r"```sql\n(.*?)```", DOCS.read_text(), flags=re.S)


def test_the_documented_queries_run_and_the_30_day_change_is_right(seeded: Pipeline) -> None:
    p = seeded
    p.tick(p.started + timedelta(days=95))  # ana stopped being engaged on day 88
    then = (p.started + timedelta(days=95 - 30)).date().isoformat()
    other = "SQLite" if p.db.is_postgres else "PostgreSQL"
    ran = 0
    for query in documented_queries():
        if query.startswith(f"-- {other} only") or re.search(r"^(SET|RESET) ", query, re.M):
            continue  # session settings: test_sql_access runs those as a reader
        with p.db.reading() as cur:
            cur.execute(query.replace("'2026-11-01'", f"'{then}'"))
            found = cur.fetchall()
        ran += 1
        if "engaged_30_days_ago" in query:
            assert {(r["tenant"], r["list_id"]): (r["engaged_30_days_ago"], r["engaged_now"],
                                                  r["change"]) for r in found} == {
                (t, "newsletter"): (1, 0, -1) for t in TENANTS}
    assert ran >= 5


SCALARS = st.one_of(
    st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
            max_size=12),
    st.integers(-(10**12), 10**12), st.booleans(),
    st.floats(allow_nan=False, allow_infinity=False),
)
PROPERTIES = st.dictionaries(st.from_regex(r"[A-Za-z0-9_.-]{1,12}", fullmatch=True),
                             st.one_of(SCALARS, st.lists(SCALARS, max_size=3)),
                             min_size=1, max_size=5)
JSON_TYPES = {str: "string", bool: "boolean", int: "number", float: "number", list: "array"}


def as_json_values(value: Any) -> Any:
    """JSON's one kind of number: jsonb writes 7.205759403792131e16 as 72057594037921310."""
    if isinstance(value, dict):
        return {k: as_json_values(v) for k, v in value.items()}
    if isinstance(value, list):
        return [as_json_values(v) for v in value]
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return value


@pytest.fixture
def empty(settings: Settings) -> Iterator[Pipeline]:
    p = pipeline(settings)
    yield p
    p.close()


def test_a_tags_label_is_the_one_the_api_shows_where_spellings_disagree(
        empty: Pipeline) -> None:
    """VIP on two contacts, vip (written last) on one; Shoes and shoes once each (a tie);
    the other tenant spells vip its own way and counts for nothing here."""
    written = [("acme", "a", ["VIP", "Shoes"]), ("acme", "b", ["VIP"]),
               ("acme", "c", ["shoes"]), ("acme", "d", ["vip"]), ("globex", "a", ["vip"]),
               ("globex", "b", ["vip"]), ("globex", "c", ["vip"])]
    for n, (tenant, who, tags) in enumerate(written):
        empty.ingest([make_event("contact_updated", tenant=tenant, event_id=f"tag-{n}",
                                 email=f"{who}@example.com", tags_added=tags)])
    api = {t["tag"]: t["label"] for t in tag_counts(empty.db, "acme")}
    assert api == {"vip": "VIP", "shoes": "Shoes"}
    found = rows(empty, f"{PREFIX}tags", "acme")
    assert {(r["tag"], r["label"]) for r in found} == set(api.items())
    people = ids(empty, "acme")
    assert {(r["contact_id"], r["spelling"]) for r in found} == {
        (people[who], label) for tenant, who, tags in written if tenant == "acme"
        for label in tags}
    assert {r["label"] for r in rows(empty, f"{PREFIX}tags", "globex")} == {"vip"}


@hyp_settings(max_examples=20, deadline=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(properties=PROPERTIES)
def test_property_rows_reassemble_the_contacts_properties(
    empty: Pipeline, properties: dict[str, Any],
) -> None:
    """Whatever the values, one row per property, typed and written out, on both backends."""
    p = empty
    email = f"{uuid.uuid4().hex}@example.com"
    p.ingest([make_event("contact_updated", event_id=uuid.uuid4().hex, email=email,
                         occurred_at=p.ago(1), properties=properties)])
    (contact,) = rows(p, f"{PREFIX}contacts", "acme", f"email = '{email}'")
    assert as_json_values(contact["properties"]) == as_json_values(properties)
    found = {r["property"]: r for r in rows(p, f"{PREFIX}contact_properties", "acme",
                                            f"contact_id = '{contact['contact_id']}'")}
    assert as_json_values({name: r["value"] for name, r in found.items()}) == as_json_values(
        properties)
    for name, value in properties.items():
        row = found[name]
        assert row["value_type"] == JSON_TYPES[type(value)], (name, value, row)
        assert isinstance(row["value"], bool) == isinstance(value, bool)
        text = row["value_text"]
        if isinstance(value, str):
            assert text == value
        elif isinstance(value, bool):
            assert text == str(value).lower()
        elif isinstance(value, int | float):
            assert float(text) == value
        else:
            assert as_json_values(json.loads(text)) == as_json_values(value)


# --------------------------------------------------------------------------- the tables


def dump_views(p: Pipeline) -> dict[str, list[dict[str, Any]]]:
    return {v.name: rows(p, v.name) for v in VIEWS}


def test_views_follow_their_tables_through_rebuild_replay_and_a_layout_reset(
    seeded: Pipeline,
) -> None:
    p = seeded
    before = dump_views(p)
    for runner in p.runners:
        runner.rebuild()
    assert dump_views(p) == before
    for projection in all_projections():
        replay(p.store, p.db, type(projection))
    assert dump_views(p) == before
    with p.db.transaction() as cur:  # as if the tables had been written by another version
        cur.execute("UPDATE ficha_projection_versions SET version = 0")
    for runner in p.runners:
        runner.setup()
    p.catch_up()
    assert dump_views(p) == before
    # The views read the live tables: a new event shows in them.
    p.ingest([make_event("form_submitted", tenant="acme", event_id="late",
                         email="cy@example.com", occurred_at=p.ago(0.5), form_id="f",
                         tags=["New"])])
    assert [r["email"] for r in rows(p, f"{PREFIX}engagement", "acme")
            if r["email"] == "cy@example.com"] == ["cy@example.com"]
    assert [r["label"] for r in rows(p, f"{PREFIX}tags", "acme")].count("New") == 1
    if p.db.is_postgres:  # and only tables of ficha's live schema
        with p.db.reading() as cur:
            cur.execute(
                "SELECT DISTINCT n.nspname FROM pg_depend d JOIN pg_rewrite w ON w.oid = d.objid "
                "JOIN pg_class t ON t.oid = d.refobjid JOIN pg_namespace n "
                "ON n.oid = t.relnamespace WHERE d.classid = 'pg_rewrite'::regclass "
                "AND w.ev_class = ANY(SELECT oid FROM pg_class WHERE relname = ANY(?) "
                "AND relnamespace = CAST(current_schema() AS regnamespace)) "
                "AND t.relkind = 'r'", ([v.name for v in VIEWS],))
            assert [r["nspname"] for r in cur.fetchall()] == [p.db.schema]


def test_setting_up_again_recreates_nothing(seeded: Pipeline) -> None:
    """A restart leaves unchanged views alone (no lock on a view an analyst is reading)."""
    p = seeded

    def schema_state() -> Any:
        with p.db.reading() as cur:
            if p.db.is_postgres:  # a recreated view is a new relation
                cur.execute("SELECT relname, CAST(oid AS text) AS ident FROM pg_class "
                            "WHERE relkind = 'v' AND relnamespace = "
                            "CAST(current_schema() AS regnamespace)")
                return {r["relname"]: r["ident"] for r in cur.fetchall()}
            cur.execute("PRAGMA schema_version")  # moves on any change of the schema
            return cur.fetchall()

    first = schema_state()
    for runner in p.runners:
        runner.setup()
    assert schema_state() == first
    p.runners[0].rebuild()  # contacts: its tables and views are new
    assert schema_state() != first


# --------------------------------------------------------------------------- docs, SQLite


def test_the_reference_in_the_docs_is_generated_from_the_view_definitions() -> None:
    text = DOCS.read_text()
    start, end = "<!-- reference: start -->\n", "<!-- reference: end -->"
    assert start in text and end in text
    block = text.split(start, 1)[1].split(end, 1)[0]
    assert block.strip() == reference_markdown().strip(), (
        "docs/sql.md is out of date: paste `ficha sql views --markdown` between the markers")


def test_a_read_only_sqlite_connection_reads_the_views_and_writes_nothing(
    tmp_path: Path,
) -> None:
    from tests.backends import make_settings

    settings = make_settings(tmp_path)
    p = seed(settings)
    p.close()
    conn = sqlite3.connect(f"file:{settings.views_db_path}?mode=ro", uri=True)
    try:
        (count,) = conn.execute(f"SELECT COUNT(*) FROM {PREFIX}contacts").fetchone()
        assert count == 4
        for statement in (f"DELETE FROM {PREFIX}contacts", "DELETE FROM contacts",
                          "CREATE TABLE x (a)", f"DROP VIEW {PREFIX}contacts"):
            with pytest.raises(sqlite3.OperationalError, match="readonly|read-only|cannot"):
                conn.execute(statement)
        (count,) = conn.execute("SELECT COUNT(*) FROM contacts").fetchone()
        assert count == 4
    finally:
        conn.close()


def test_on_sqlite_grant_reader_says_what_to_do_instead(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FICHA_")}
    env["FICHA_DATA_DIR"] = str(tmp_path)
    done = subprocess.run([sys.executable, "-m", "services", "sql", "grant-reader"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "SQLite has no roles" in done.stderr and "mode=ro" in done.stderr
