"""Erasure in the read models, on both backends: the erased contacts' rows go, everything
else is as if they had never been there, and a rebuild brings nothing back.

Each test builds two stores: one that saw the whole history and then the erasures, and a
twin that never heard of the erased people. Their read models are compared row by row;
the audience's are also checked against the brute-force oracle of test_audience.
"""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from psycopg import sql

from contracts.events import InboundEvent
from contracts.outbound import ContactErased, decode_outbound
from projections.audience import AudienceProjection
from projections.audience_queries import engagement_stats, list_stats, projection_now
from projections.contacts import ContactsProjection
from projections.db import ViewDatabase
from projections.runner import ProjectionRunner
from services.catalog import ClockCommands, SegmentCommands
from services.config import Settings
from services.demo import generate_history
from services.domain.identity import ContactIdentity, normalise_email
from services.ingest.cache import ContactCache
from services.ingest.folding import BatchFolder
from services.store.contact_store import ContactStore
from tests.factories import decode_dict, make_event
from tests.projections.test_audience import ORACLE_SEGMENTS, members, oracle
from tests.projections.test_export import ReadModels

CONTACT_TABLES = {
    "contacts": "tenant, contact_id",
    "contact_tags": "tenant, tag, contact_id",
    "contact_lists": "tenant, contact_id, list_id",
    "timeline": "tenant, contact_id, occurred_at, event_id",
}
AUDIENCE_TABLES = {
    "audience_facts": "contact_id",
    "audience_segments": "contact_id",
    "segment_definitions": "tenant, segment_id",
    "segment_history": "tenant, segment_id, contact_id, entry_no",
    "consent_ledger": "contact_id, channel, occurred_at, event_id",
    "audience_counts": "tenant, metric, k1, k2",
}


@dataclasses.dataclass
class Built(ReadModels):
    """The export tests' read models, projected after every batch (so that the clock
    and the erasures interleave as live), with dumps."""

    def ingest(self, events: list[InboundEvent], batch: int = 150,
               project_each_batch: bool = True) -> None:
        super().ingest(events, batch, project_each_batch)

    def dump(self, tables: dict[str, str]) -> dict[str, list[str]]:
        out = {}
        with self.db.reading() as cur:
            for table, order in tables.items():
                cur.execute(f"SELECT * FROM {table} ORDER BY {order}")
                out[table] = [json.dumps(r, sort_keys=True, default=str) for r in cur.fetchall()]
        return out

    def outbox(self) -> list[dict[str, Any]]:
        with self.db.reading() as cur:
            cur.execute("SELECT seq, subject, event_id, payload FROM ficha_outbox ORDER BY seq")
            return cur.fetchall()


@pytest.fixture
def twin_settings(settings: Settings, tmp_path: Any) -> Iterator[Settings]:
    """A second, empty store and read models on the same backend."""
    if settings.postgres is None:
        yield dataclasses.replace(settings, data_dir=tmp_path / "twin")
        return
    schema = f"{settings.postgres.schema}_twin"
    yield dataclasses.replace(settings, data_dir=tmp_path / "twin",
                              postgres=dataclasses.replace(settings.postgres, schema=schema))
    with psycopg.connect(settings.postgres.conninfo, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


def build(settings: Settings, page_size: int = 97) -> Built:
    store = ContactStore(settings)
    db = ViewDatabase(settings)
    runners = [ProjectionRunner(store, db, ContactsProjection(), page_size=page_size),
               ProjectionRunner(store, db, AudienceProjection(), page_size=page_size)]
    for runner in runners:
        runner.setup()
    folder = BatchFolder(store, ContactIdentity(settings.id_key), ContactCache(10_000), "p0")
    return Built(store, db, runners, folder)


def history(n: int, seed: int) -> list[dict[str, Any]]:
    start = datetime.now(UTC) - timedelta(days=330)
    return list(generate_history("acme", n, seed=seed, start=start))


def chosen(raw: list[dict[str, Any]], k: int) -> list[str]:
    """k people with many events, at least one of them a buyer."""
    counts = Counter(normalise_email(e["contact"]["email"]) for e in raw)
    buyers = {normalise_email(e["contact"]["email"]) for e in raw
              if e["type"] == "purchase_completed"}
    busy = [email for email, _ in counts.most_common()]
    picked = [next(e for e in busy if e in buyers)]
    picked += [e for e in busy if e not in picked][: k - 1]
    return picked


def erasure(email: str, n: int) -> InboundEvent:
    return make_event("contact_erasure_requested", event_id=f"erase-{n}", email=email,
                      occurred_at=datetime.now(UTC).isoformat())


def without(raw: list[dict[str, Any]], emails: list[str]) -> list[dict[str, Any]]:
    return [e for e in raw if normalise_email(e["contact"]["email"]) not in emails]


def test_erased_contacts_leave_the_client_list_as_if_they_never_were(
    settings: Settings, twin_settings: Settings,
) -> None:
    raw = history(1500, seed=5)
    gone = chosen(raw, 3)
    erased = build(settings)
    # One erasure in the middle of the history, in the same batch as later facts about
    # other people; two at the end.
    half = len(raw) // 2
    erased.ingest([decode_dict(d) for d in raw[:half]])
    erased.ingest([erasure(gone[0], 0), *[decode_dict(d) for d in without(raw[half:], gone[:1])]])
    erased.ingest([erasure(gone[1], 1), erasure(gone[2], 2)])
    never = build(twin_settings)
    never.ingest([decode_dict(d) for d in without(raw, gone)])

    after = erased.dump(CONTACT_TABLES)
    assert after == never.dump(CONTACT_TABLES)
    assert len(after["contacts"]) > 50
    text = json.dumps(after)
    assert not any(email in text for email in gone)
    with erased.db.reading() as cur:
        cur.execute("SELECT tenant, contact_id, event_id FROM contacts_erasures ORDER BY event_id")
        confirmed = cur.fetchall()
    identity = ContactIdentity(settings.id_key)
    assert [(r["contact_id"], r["event_id"]) for r in confirmed] == [
        (identity.contact_id("acme", email).hex, f"erase-{n}") for n, email in enumerate(gone)]

    erased.runners[0].rebuild()
    assert erased.dump(CONTACT_TABLES) == after  # nothing came back


def test_erasure_leaves_the_audience_as_if_the_contacts_never_were(
    settings: Settings, twin_settings: Settings,
) -> None:
    raw = history(3000, seed=9)
    gone = chosen(raw, 4)
    tick_at = datetime.now(UTC) + timedelta(days=1)
    runs = {}
    for name, chosen_settings, events in (("erased", settings, raw),
                                          ("never", twin_settings, without(raw, gone))):
        built = build(chosen_settings, page_size=150)
        segments = SegmentCommands(built.store)
        for sid in ("vip-iberia", "bought-90d", "active-60d", "news-subscribed",
                    "lapsed-buyers", "big-eur", "vip-or-asleep"):
            segments.define("acme", sid, sid, ORACLE_SEGMENTS[sid])
        built.ingest([decode_dict(d) for d in events])
        if name == "erased":
            built.ingest([erasure(email, n) for n, email in enumerate(gone)])
        # A day later: the RFM quintiles are scored again, without the erased buyer.
        ClockCommands(built.store).tick(tick_at)
        built.catch_up()
        runs[name] = built
    erased, never = runs["erased"], runs["never"]

    # What does not depend on when ficha recorded things (the two logs have their own
    # clocks): tallies, memberships, statuses and RFM groups.
    assert erased.dump({"audience_counts": AUDIENCE_TABLES["audience_counts"]}) == never.dump(
        {"audience_counts": AUDIENCE_TABLES["audience_counts"]})
    for sid in ORACLE_SEGMENTS:
        assert members(erased, sid) == members(never, sid), sid  # type: ignore[arg-type]
    with erased.db.reading() as cur, never.db.reading() as other:
        for db_cur in (cur, other):
            db_cur.execute("SELECT email, engagement, rfm_group FROM audience_facts "
                           "ORDER BY email")
        assert cur.fetchall() == other.fetchall()
    stats = engagement_stats(erased.db, "acme")["statuses"]
    assert stats == engagement_stats(never.db, "acme")["statuses"]
    assert list_stats(erased.db, "acme")["lists"] == list_stats(never.db, "acme")["lists"]
    # And both agree with the brute-force oracle over the history without those people.
    now = projection_now(erased.db)
    assert now is not None
    expected = oracle(without(raw, gone), now)
    for sid in ("vip-iberia", "bought-90d", "active-60d", "news-subscribed", "big-eur"):
        assert members(erased, sid) == expected[sid], sid  # type: ignore[arg-type]
    with erased.db.reading() as cur:
        cur.execute("SELECT email, engagement FROM audience_facts")
        assert {r["email"]: r["engagement"] for r in cur.fetchall()} == expected["engagement"]
    assert list_stats(erased.db, "acme")["lists"] == expected["lists"]

    # The outbox: the erased people's rows are tombstones, one contact_erased each.
    identity = ContactIdentity(settings.id_key)
    gone_ids = {identity.contact_id("acme", email).hex for email in gone}
    rows = erased.outbox()
    kept = [r for r in rows if r["payload"]]
    assert not any(email in r["payload"] for email in gone for r in kept)
    erasures = [decode_outbound(r["payload"].encode()) for r in kept
                if r["subject"].endswith(".contact_erased")]
    assert all(isinstance(e, ContactErased) for e in erasures)
    assert sorted(e.contact_id for e in erasures) == sorted(gone_ids)  # type: ignore[union-attr]
    tombstones = [r for r in rows if not r["payload"]]
    assert tombstones and all(r["event_id"].split(":")[1] in gone_ids for r in tombstones)

    # A rebuild brings nothing back: the same rows, and the outbox without the tombstones.
    incremental = erased.dump(AUDIENCE_TABLES)
    erased.runners[1].rebuild()
    assert erased.dump(AUDIENCE_TABLES) == incremental
    rebuilt = erased.outbox()
    assert [(r["subject"], r["event_id"], r["payload"]) for r in rebuilt] == [
        (r["subject"], r["event_id"], r["payload"]) for r in kept]
    with erased.db.reading() as cur:
        cur.execute("SELECT COUNT(*) AS n FROM audience_erasures")
        assert cur.fetchone()["n"] == len(gone)  # type: ignore[index]
