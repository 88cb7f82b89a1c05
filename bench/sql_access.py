"""Row-level security and the projection writer: replay speed with and without it.

The analytics views (docs/sql.md) need row-level security on the read-model tables. It is
enabled, not forced, so the tables' owner (the projection writer) should pay nothing.
This measures it on PostgreSQL, as a writer that is not a superuser (superusers bypass
row-level security whatever the tables say, so measuring as one would prove nothing),
on the same tables, with the analytics views, their owner role and a reader in place:

* raw baseline: each projection replayed from the log into its emptied tables with row
  level security disabled on them;
* the same with row-level security enabled (the tenant policy is there in both runs);

alternating the two (and which goes first), ``--rounds`` times, and reporting each one's
best round and the median ratio of the rounds' pairs. It also times a reader's count
through a view (its tenant's rows, out of two tenants) against the writer running the
same count on the table.

Usage:  python -m bench.sql_access --events 30000 [--rounds 6]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from urllib.parse import quote, urlparse, urlunparse

import psycopg
from psycopg import sql

from bench.common import PG_DSN
from projections import sql_access, sql_views
from projections.db import ViewDatabase
from projections.registry import all_projections
from projections.runner import Projection, ProjectionRunner
from services.catalog import SegmentCommands
from services.config import Settings, load_settings
from services.demo import generate_history
from services.domain.identity import ContactIdentity
from services.ingest.cache import ContactCache
from services.ingest.folding import BatchFolder
from services.store.contact_store import ContactStore
from tests.factories import decode_dict

PASSWORD = "bench-only"
TENANTS = ("bench", "other")
SEGMENTS = {
    "es": {"field": "language", "op": "equals", "value": "es"},
    "active-30d": {"field": "last_interaction_at", "op": "within_last", "value": {"days": 30}},
}


def as_user(user: str) -> str:
    url = urlparse(PG_DSN)
    port = f":{url.port}" if url.port else ""
    return urlunparse(url._replace(netloc=f"{quote(user)}:{PASSWORD}@{url.hostname}{port}"))


def settings_for(dsn: str, schema: str, data_dir: str) -> Settings:
    return load_settings({"FICHA_DATA_DIR": data_dir, "FICHA_ID_KEY": "00" * 32,
                          "FICHA_METRICS_PORT": "0", "FICHA_DATABASE_URL": dsn,
                          "FICHA_DATABASE_SCHEMA": schema})


def fill(store: ContactStore, settings: Settings, events: int) -> None:
    start = datetime.now(UTC) - timedelta(days=330)
    folder = BatchFolder(store, ContactIdentity(settings.id_key), ContactCache(200_000), "p0")
    batch, position = [], 0
    for tenant in TENANTS:
        for sid, rule in SEGMENTS.items():
            SegmentCommands(store).define(tenant, sid, sid, rule)
        for raw in generate_history(tenant, events // len(TENANTS), seed=3, start=start):
            batch.append(decode_dict(raw))
            if len(batch) == 500:
                position += 1
                folder.fold_and_commit(batch, position)
                batch = []
    if batch:
        folder.fold_and_commit(batch, position + 1)


def replay_rate(store: ContactStore, db: ViewDatabase, projection: Projection,
                rls: bool) -> float:
    with db.transaction() as cur:
        for table in projection.tables:
            cur.execute(f"TRUNCATE {table}")
            cur.execute(f"ALTER TABLE {table} {'ENABLE' if rls else 'DISABLE'} "
                        "ROW LEVEL SECURITY")
        cur.execute("DELETE FROM ficha_projection_tracking WHERE name = ?", (projection.name,))
    runner = ProjectionRunner(store, db, projection, page_size=2000)
    started = time.perf_counter()
    runner.catch_up()
    return runner.stats.applied / (time.perf_counter() - started)


def query_ms(conn: psycopg.Connection, statement: str, times: int = 200) -> float:
    samples = []
    for _ in range(times):
        started = time.perf_counter()
        conn.execute(statement).fetchall()
        samples.append((time.perf_counter() - started) * 1000)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=30_000)
    parser.add_argument("--rounds", type=int, default=6)
    args = parser.parse_args()
    tag = uuid.uuid4().hex[:8]
    schema, writer, reader = f"bench_rls_{tag}", f"bench_w_{tag}", f"bench_r_{tag}"
    admin = psycopg.connect(PG_DSN, autocommit=True)
    database = admin.info.dbname
    admin.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
        sql.Identifier(writer), sql.Literal(PASSWORD)))
    admin.execute(sql.SQL("GRANT CREATE ON DATABASE {} TO {}").format(
        sql.Identifier(database), sql.Identifier(writer)))
    admin.execute(sql.SQL("CREATE SCHEMA {} AUTHORIZATION {}").format(
        sql.Identifier(schema), sql.Identifier(writer)))
    data_dir = tempfile.mkdtemp(prefix="ficha-rls-")
    settings = settings_for(as_user(writer), schema, data_dir)
    store = ContactStore(settings)
    db = ViewDatabase(settings)
    try:
        fill(store, settings, args.events)
        for projection in all_projections():
            ProjectionRunner(store, db, projection).setup()
        # A reader, as `ficha sql grant-reader` makes one (as a superuser).
        granting = ViewDatabase(settings_for(PG_DSN, schema, data_dir))
        assert granting.settings.postgres is not None
        verifier = sql_access.password_verifier(granting.settings.postgres.conninfo, reader,
                                                PASSWORD)
        with granting.transaction() as cur:
            sql_access.prepare_reader(cur, schema, reader, "bench", verifier)
            for projection in all_projections():
                sql_views.install(cur, granting, projection.name, projection.tables)
        granting.close()
        rates: dict[tuple[str, bool], list[float]] = {}
        for round_no in range(args.rounds):  # alternate which goes first: the machine drifts
            for projection in all_projections():
                for rls in (False, True) if round_no % 2 == 0 else (True, False):
                    rates.setdefault((projection.name, rls), []).append(
                        replay_rate(store, db, projection, rls))
        print(f"\npostgres: {args.events:,} inbound events in two tenants, writer {writer} "
              f"(not a superuser), best of {args.rounds} rounds\n")
        print(f"{'replay':12} {'RLS off (baseline) ev/s':>24} {'RLS on ev/s':>14} "
              f"{'vs baseline':>12} {'median of pairs':>16}")
        for projection in all_projections():
            base = rates[(projection.name, False)]
            with_rls = rates[(projection.name, True)]
            pairs = statistics.median(w / b for w, b in zip(with_rls, base, strict=True))
            print(f"{projection.name:12} {max(base):24,.0f} {max(with_rls):14,.0f} "
                  f"{max(with_rls) / max(base):12.2f} {pairs:16.2f}")
        with psycopg.connect(as_user(reader)) as conn_reader, \
                psycopg.connect(as_user(writer)) as conn_writer:
            conn_writer.execute(sql.SQL("SET search_path = {}").format(sql.Identifier(schema)))
            through_view = query_ms(conn_reader, "SELECT count(*) FROM analytics_engagement "
                                    "WHERE status = 'engaged'")
            on_table = query_ms(conn_writer, "SELECT count(*) FROM audience_facts WHERE "
                                "tenant = 'bench' AND engagement = 'engaged'")
            plan = " ".join(r[0] for r in conn_reader.execute(
                "EXPLAIN SELECT count(*) FROM analytics_engagement WHERE status = 'engaged'"))
        print(f"\nengaged contacts of one tenant, p50 of 200: writer on the table "
              f"{on_table:.2f} ms (baseline), reader through analytics_engagement "
              f"{through_view:.2f} ms; the reader's plan "
              f"{'uses' if 'Index' in plan else 'does not use'} an index")
    finally:
        db.close()
        store.close()
        admin.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
        for role in (reader, sql_access.views_owner(schema), writer):
            if admin.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone():
                admin.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
                admin.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))
        admin.close()


if __name__ == "__main__":
    main()
