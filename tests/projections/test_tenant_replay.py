"""`ficha projections replay --tenant T`: only T's rows are rebuilt and switched; every
other tenant's rows, the position and the outbox stay as they were."""

from __future__ import annotations

import json
import threading
import uuid
from typing import Any

import psycopg
import pytest

from projections.audience import AudienceProjection
from projections.contacts import ContactsProjection
from projections.db import ViewDatabase
from projections.replay import replay, tenant_scope
from projections.runner import Projection, ProjectionRunner
from services.catalog import SegmentCommands
from services.config import Settings
from services.demo import generate_history
from services.domain.identity import ContactIdentity
from services.ingest.cache import ContactCache
from services.ingest.folding import BatchFolder
from services.store.contact_store import ContactStore
from tests.factories import decode_dict


def dump(db: ViewDatabase, projection: Projection) -> dict[str, list[str]]:
    out = {}
    with db.reading() as cur:
        for table in projection.tables:
            cur.execute(f"SELECT * FROM {table}")
            out[table] = sorted(json.dumps(r, sort_keys=True, default=str)
                                for r in cur.fetchall())
    return out


def rows_of(db: ViewDatabase, projection: Projection, tenant: str) -> dict[str, list[str]]:
    out = {}
    with db.reading() as cur:
        for table in projection.tables:
            scope = tenant_scope(projection, table, tenant)
            if scope is None:
                continue
            cur.execute(f"SELECT * FROM {table} WHERE {scope[0]}", scope[1])
            out[table] = sorted(json.dumps(r, sort_keys=True, default=str)
                                for r in cur.fetchall())
    return out


SABOTAGE = {
    "contacts": ["UPDATE contacts SET first_name = 'WRONG' WHERE tenant = ?",
                 "DELETE FROM timeline WHERE tenant = ?"],
    "audience": ["DELETE FROM segment_history WHERE tenant = ?",
                 "UPDATE audience_counts SET count = count + 1000 WHERE tenant = ?"],
}


@pytest.mark.parametrize("make", [ContactsProjection, AudienceProjection])
def test_a_tenant_replay_repairs_that_tenant_and_touches_nothing_else(
        settings: Settings, make: Any) -> None:
    store = ContactStore(settings)
    db = ViewDatabase(settings)
    projection = make()
    live = ProjectionRunner(store, db, make())
    live.setup()
    for tenant in ("acme", "globex"):
        SegmentCommands(store).define(tenant, "spanish", "Spanish",
                                      {"field": "language", "op": "equals", "value": "es"})
    folder = BatchFolder(store, ContactIdentity(settings.id_key), ContactCache(10_000), "p0")
    histories = [generate_history(t, 600, seed=n) for n, t in enumerate(("acme", "globex"))]
    events = [decode_dict(e) for pair in zip(*histories, strict=True) for e in pair]
    for k, start in enumerate(range(0, len(events), 300)):
        folder.fold_and_commit(events[start:start + 300], k + 1)
    live.catch_up()
    good = dump(db, projection)
    position = live.position()
    # A bug (here: a sabotage) damages both tenants' rows.
    with db.transaction() as cur:
        for statement in SABOTAGE[projection.name]:
            for tenant in ("acme", "globex"):
                cur.execute(statement, (tenant,))
    damaged_globex = rows_of(db, projection, "globex")
    assert damaged_globex != rows_of_good(good, projection, "globex", db)
    assert rows_of(db, projection, "acme") != rows_of_good(good, projection, "acme", db)
    result = replay(store, db, make, tenant="acme")
    assert result.position == position == live.position()
    assert rows_of(db, projection, "acme") == rows_of_good(good, projection, "acme", db)
    assert rows_of(db, projection, "globex") == damaged_globex  # untouched
    if "ficha_outbox" in projection.tables:
        assert dump(db, projection)["ficha_outbox"] == good["ficha_outbox"]
    # The live runner goes on from the same position, applying nothing twice.
    more = [decode_dict(e) for e in generate_history("acme", 50, seed=9)]
    folder.fold_and_commit(more, 99)
    assert live.catch_up() == store.max_notification_id() - position > 0
    went_on = rows_of(db, projection, "acme")
    live.rebuild()
    assert rows_of(db, projection, "acme") == went_on
    db.close()
    store.close()


def rows_of_good(good: dict[str, list[str]], projection: Projection, tenant: str,
                 db: ViewDatabase) -> dict[str, list[str]]:
    """The tenant's rows of the undamaged dump (filtered the way rows_of filters)."""
    out = {}
    for table, rows in good.items():
        scope = tenant_scope(projection, table, tenant)
        if scope is None:
            continue
        if table == "audience_state":
            names = set(scope[1])
            out[table] = [r for r in rows if json.loads(r)["name"] in names]
        else:
            out[table] = [r for r in rows if json.loads(r)["tenant"] == tenant]
    return out


def test_a_tenant_replay_while_the_live_projection_moves_on_switches_without_deadlock(
        settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """The live runner applies new events while the copy is built, so the switch brings
    the copy forward while it holds the live projection's writer lock. The copy's pages
    take a writer lock of their own: when it was the live one's (one advisory lock per
    projection name on PostgreSQL, whatever the schema), the switch waited for itself, for
    ever, and the live projector behind it."""
    application = f"ficha-test-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("PGAPPNAME", application)  # this test's connections, to find them
    store = ContactStore(settings)
    db = ViewDatabase(settings)
    live = ProjectionRunner(store, db, ContactsProjection())
    live.setup()
    folder = BatchFolder(store, ContactIdentity(settings.id_key), ContactCache(10_000), "p0")
    folder.fold_and_commit([decode_dict(e) for e in generate_history("acme", 300, seed=1)], 1)
    live.catch_up()

    def live_moves_on(_position: int) -> None:  # once, after the copy's first page
        if not moved:
            more = generate_history("acme", 40, seed=2)
            folder.fold_and_commit([decode_dict(e) for e in more], 2)
            moved.append(live.catch_up())

    moved: list[int] = []

    outcome: list[Any] = []
    worker = threading.Thread(target=lambda: outcome.append(
        replay(store, db, ContactsProjection, on_page=live_moves_on, tenant="acme")))
    worker.start()
    worker.join(30)
    deadlocked = worker.is_alive()
    if deadlocked and settings.postgres is not None:  # free the waiting switch
        with psycopg.connect(settings.postgres.conninfo, autocommit=True) as conn:
            conn.execute("SELECT pg_cancel_backend(pid) FROM pg_stat_activity "
                         "WHERE application_name = %s AND wait_event = 'advisory'",
                         (application,))
        worker.join(30)
    assert not deadlocked, "the switch waited for its own copy's writer lock"
    assert outcome and outcome[0].position == live.position() == store.max_notification_id()
    db.close()
    store.close()
