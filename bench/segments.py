"""Segments at scale: preview and materialise a new segment over N contacts.

Fills the audience read model (``audience_facts``, ``audience_segments``) directly with N
synthetic contacts (countries, languages, tags, consent, interactions and purchases in
skewed mixes), then times, for a few three-condition rules:

* ``preview``: how many would enter / leave / stay, with samples (the code the CLI uses);
* materialise: the segment is defined through the event store and the audience
  projection catches up, which backfills the membership (history rows, outbox events).

The raw baseline in the same run is reading every contact's facts of the tenant once
(``SELECT contact_id, doc``), which a naive implementation would need at least.

Usage:  python -m bench.segments --contacts 1000000 [--backend postgres|sqlite]
"""

from __future__ import annotations

import argparse
import random
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec

from bench.common import scratch_settings
from projections.audience import FACT_COLUMNS, SEGMENT_TYPES, AudienceProjection, filter_values
from projections.audience_queries import count_members, preview
from projections.db import ViewDatabase
from projections.runner import ProjectionRunner
from services.catalog import SegmentCommands
from services.collector import tune_for_throughput
from services.config import Settings
from services.domain.engagement import engagement_status
from services.domain.facts import ContactFacts
from services.domain.rfm import RfmCuts, score
from services.domain.rules import parse_rule
from services.domain.stamps import utc_iso
from services.store.contact_store import ContactStore

COUNTRIES = [("ES", 40), ("MX", 12), ("US", 12), ("GB", 6), ("FR", 8), ("DE", 7),
             ("BR", 7), ("PT", 5), ("AR", 3)]
LANGS = [("es", 45), ("en", 25), ("fr", 8), ("de", 7), ("pt", 10), ("it", 5)]
TAGS = [("vip", 3), ("lead", 30), ("newsletter", 25), ("returning", 12), ("no-show", 4)]

SEGMENT_NAMES = ", ".join(name for name, _ in SEGMENT_TYPES)

RULES: dict[str, dict[str, Any]] = {
    "iberian VIPs active in 90 days": {"all": [
        {"field": "country", "op": "in", "value": ["ES", "PT"]},
        {"field": "tags", "op": "has", "value": "vip"},
        {"field": "last_interaction_at", "op": "within_last", "value": {"days": 90}}]},
    "es speakers, email consent, bought twice": {"all": [
        {"field": "language", "op": "equals", "value": "es"},
        {"field": "consent.email", "op": "equals", "value": True},
        {"count": "purchases", "op": "gte", "value": 2}]},
    "lapsed spenders (little SQL narrowing)": {"all": [
        {"sum": "spent", "currency": "EUR", "op": "gt", "value": 100},
        {"field": "engagement", "op": "in", "value": ["not_engaged", "inactive"]},
        {"count": "purchases", "within_days": 365, "op": "lte", "value": 1}]},
}


def facts_rows(n: int, tenant: str, now: datetime, seed: int = 1) -> Any:
    rnd = random.Random(seed)
    countries, cw = zip(*COUNTRIES, strict=True)
    langs, lw = zip(*LANGS, strict=True)
    moment = utc_iso(now)
    for i in range(n):
        first = now - timedelta(seconds=rnd.randint(0, 3 * 365 * 86400))
        facts = ContactFacts(tenant=tenant, contact_id=uuid.UUID(int=rnd.getrandbits(128)).hex,
                             email=f"person{i}@example.com")
        facts.fields = {"country": rnd.choices(countries, cw)[0],
                        "language": rnd.choices(langs, lw)[0], "contact_type": "client"}
        facts.tags = {t for t, pct in TAGS if rnd.random() * 100 < pct}
        if rnd.random() < 0.6:
            facts.consent = {"email": rnd.random() < 0.8}
        facts.first_seen_at = utc_iso(first)
        if rnd.random() < 0.7:
            last = first + (now - first) * rnd.random()
            facts.last_interaction_at = facts.last_activity_at = utc_iso(last)
        if rnd.random() < 0.3:
            for _ in range(rnd.randint(1, 5)):
                at = utc_iso(first + (now - first) * rnd.random())
                facts.add_activity("purchase", at, f"{rnd.randint(5, 300)}.00", "EUR")
            facts.last_purchase_at = facts.activity["purchase"][-1][0]
        status, due = engagement_status(facts, moment)
        rfm = score(facts, moment, RfmCuts())
        rfm_doc = {"group": rfm.group, "r": rfm.r, "f": rfm.f, "m": rfm.m,
                   **({} if rfm.values is None else {
                       "recency_days": rfm.values.recency_days,
                       "frequency": rfm.values.frequency,
                       "monetary": str(rfm.values.monetary)})}
        facts_row = (facts.contact_id, tenant, facts.email, facts.to_json().decode(), status,
                     moment, 0, encode_sorted(rfm_doc), rfm.group, "{}", *filter_values(facts))
        yield facts_row, (facts.contact_id, tenant, "{}", "{}", due)


def fill(db: ViewDatabase, n: int, tenant: str, now: datetime) -> float:
    started = time.perf_counter()
    if db.is_postgres:
        conn = db._connect()  # noqa: SLF001 - bulk load needs the raw connection for COPY
        with conn.cursor() as cur:
            segments = []
            with cur.copy(f"COPY audience_facts ({', '.join(FACT_COLUMNS)}) FROM STDIN") as copy:
                for row, segment_row in facts_rows(n, tenant, now):
                    copy.write_row(row)
                    segments.append(segment_row)
            with cur.copy(f"COPY audience_segments ({SEGMENT_NAMES}) FROM STDIN") as copy:
                for segment_row in segments:
                    copy.write_row(segment_row)
            cur.execute("ANALYZE audience_facts")
            cur.execute("ANALYZE audience_segments")
        conn.commit()
    else:
        with db.transaction() as cur:
            batch: list[Any] = []
            for rows in facts_rows(n, tenant, now):
                batch.append(rows)
                if len(batch) >= 10_000:
                    insert_sqlite(cur, batch)
                    batch.clear()
            insert_sqlite(cur, batch)
            cur.execute("ANALYZE")
    return time.perf_counter() - started


def insert_sqlite(cur: Any, batch: list[Any]) -> None:
    cur.executemany(f"INSERT INTO audience_facts ({', '.join(FACT_COLUMNS)}) "
                    f"VALUES ({','.join('?' * len(FACT_COLUMNS))})", [f for f, _ in batch])
    cur.executemany(f"INSERT INTO audience_segments ({SEGMENT_NAMES}) VALUES (?,?,?,?,?)",
                    [s for _, s in batch])


def encode_sorted(value: Any) -> str:
    """JSON as the projection writes it (keys sorted, no spaces)."""
    return msgspec.json.encode(value, order="sorted").decode()


def read_all(db: ViewDatabase, tenant: str) -> float:
    started = time.perf_counter()
    with db.reading() as cur:
        cur.execute("SELECT contact_id, doc FROM audience_facts WHERE tenant = ?", (tenant,))
        rows = cur.fetchall()
    assert rows
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contacts", type=int, default=1_000_000)
    parser.add_argument("--backend", default="postgres", choices=["postgres", "sqlite"])
    args = parser.parse_args()
    tune_for_throughput()  # as `ficha` does for every command
    with scratch_settings(args.backend, "seg") as settings:
        run(args, settings)


def run(args: argparse.Namespace, settings: Settings) -> None:
    store = ContactStore(settings)
    db = ViewDatabase(settings)
    runner = ProjectionRunner(store, db, AudienceProjection())
    runner.setup()
    tenant = "big"
    now = datetime.now(UTC)
    try:
        loaded = fill(db, args.contacts, tenant, now)
        baseline = min(read_all(db, tenant) for _ in range(2))
        print(f"\n{args.backend}: {args.contacts:,} contacts loaded in {loaded:.1f}s\n")
        print(f"{'measure':48} {'seconds':>8} {'result':>28}")
        print(f"{'read every contact facts once (raw baseline)':48} {baseline:8.2f}")
        commands = SegmentCommands(store)
        for i, (name, rule) in enumerate(RULES.items()):
            started = time.perf_counter()
            seen = preview(db, tenant, f"s{i}", parse_rule(rule), datetime.now(UTC))
            took = time.perf_counter() - started
            print(f"{'preview: ' + name:48} {took:8.2f} {seen.entering:>20,} would enter")
            started = time.perf_counter()
            commands.define(tenant, f"s{i}", name, rule)
            runner.catch_up()
            took = time.perf_counter() - started
            members = count_members(db, tenant, f"s{i}")
            print(f"{'materialise: ' + name:48} {took:8.2f} {members:>20,} members")
            assert members == seen.entering, (members, seen.entering)
    finally:
        db.close()
        store.close()


if __name__ == "__main__":
    main()
