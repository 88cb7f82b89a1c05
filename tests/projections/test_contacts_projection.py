"""The contacts read model: rebuild equals incremental, and arrival order does not matter."""

from __future__ import annotations

import json
import random
import threading
from pathlib import Path
from typing import Any

import pytest

from contracts.events import InboundEvent
from projections.contacts import ContactsProjection
from projections.db import ViewDatabase
from projections.queries import (
    ContactFilter,
    count_contacts,
    get_card,
    list_contacts,
    tag_counts,
)
from projections.runner import ProjectionRunner
from services.config import Settings
from services.demo import generate_history
from services.domain.identity import ContactIdentity
from services.ingest.cache import ContactCache
from services.ingest.folding import BatchFolder
from services.store.contact_store import ContactStore
from tests.backends import make_settings
from tests.factories import decode_dict, make_event

TABLES = {
    "contacts": "tenant, contact_id",
    "contact_tags": "tenant, tag, contact_id",
    "contact_lists": "tenant, contact_id, list_id",
    "timeline": "tenant, contact_id, occurred_at, event_id",
}


def demo_events(n: int, seed: int = 3) -> list[InboundEvent]:
    return [decode_dict(d) for d in generate_history("acme", n, seed=seed)]


def ingest(store: ContactStore, settings: Settings, events: list[InboundEvent],
           runner: ProjectionRunner | None = None, batch: int = 250) -> None:
    folder = BatchFolder(store, ContactIdentity(settings.id_key), ContactCache(10_000), "p0")
    for start in range(0, len(events), batch):
        folder.fold_and_commit(events[start : start + batch], start + batch)
        if runner is not None:
            runner.catch_up()


def dump(db: ViewDatabase) -> dict[str, list[str]]:
    out = {}
    with db.reading() as cur:
        for table, order in TABLES.items():
            cur.execute(f"SELECT * FROM {table} ORDER BY {order}")
            out[table] = [json.dumps(row, sort_keys=True, default=str) for row in cur.fetchall()]
    return out


def test_rebuild_gives_the_same_rows_as_incremental(settings: Settings) -> None:
    store = ContactStore(settings)
    db = ViewDatabase(settings)
    runner = ProjectionRunner(store, db, ContactsProjection(), page_size=137)
    runner.setup()
    ingest(store, settings, demo_events(3000), runner)
    incremental = dump(db)
    assert len(incremental["contacts"]) > 50
    assert len(incremental["timeline"]) == 3000
    runner.rebuild()
    assert dump(db) == incremental
    db.close()


def test_pages_grow_while_behind_and_shrink_once_caught_up(settings: Settings) -> None:
    store = ContactStore(settings)
    db = ViewDatabase(settings)
    runner = ProjectionRunner(store, db, ContactsProjection(), page_size=10, max_page_size=40)
    runner.setup()
    ingest(store, settings, demo_events(150))
    head = store.max_notification_id()
    assert head > 10 + 20 + 40 + 40
    sizes = []
    while (applied := runner.run_once()) > 0:
        sizes.append(applied)
    assert sizes[:4] == [10, 20, 40, 40] and sum(sizes) == head
    assert runner.position() == head
    # Caught up: the next page is small again (a live event is not held for a big one).
    folder = BatchFolder(store, ContactIdentity(settings.id_key), ContactCache(100), "p1")
    folder.fold_and_commit(demo_events(30, seed=8), 1)
    assert store.max_notification_id() > head + 10
    assert runner.run_once() == 10
    db.close()
    store.close()


def test_arrival_order_does_not_change_the_read_model(tmp_path: Path) -> None:
    events = demo_events(2000, seed=11)
    shuffled = list(events)
    random.Random(5).shuffle(shuffled)
    dumps = []
    for name, order in (("a", events), ("b", shuffled)):
        settings = make_settings(tmp_path / name)
        store = ContactStore(settings)
        db = ViewDatabase(settings)
        runner = ProjectionRunner(store, db, ContactsProjection())
        runner.setup()
        ingest(store, settings, order, runner, batch=97)
        dumps.append(dump(db))
        db.close()
    assert dumps[0] == dumps[1]


def test_filters_and_pagination(settings: Settings) -> None:
    store = ContactStore(settings)
    db = ViewDatabase(settings)
    runner = ProjectionRunner(store, db, ContactsProjection())
    runner.setup()
    ingest(store, settings, demo_events(3000, seed=4), runner)
    everyone = count_contacts(db, ContactFilter(tenant="acme"))
    spanish = count_contacts(db, ContactFilter(tenant="acme", language="es"))
    assert 0 < spanish < everyone
    seen: list[dict[str, Any]] = []
    cursor = None
    while True:
        rows, cursor = list_contacts(db, ContactFilter(tenant="acme", language="es"),
                                     limit=7, cursor=cursor)
        seen.extend(rows)
        if cursor is None:
            break
    assert len(seen) == spanish
    assert len({r["contact_id"] for r in seen}) == spanish
    assert all((r["language"] or "").lower().split("-")[0] == "es" for r in seen)
    firsts = [r["first_seen_at"] for r in seen]
    assert firsts == sorted(firsts, reverse=True)
    with db.reading() as cur:
        cur.execute("SELECT tag, COUNT(*) AS n FROM contact_tags WHERE tenant = 'acme' "
                    "GROUP BY tag ORDER BY n DESC LIMIT 1")
        top = cur.fetchone()
    assert top is not None
    tagged = count_contacts(db, ContactFilter(tenant="acme", tag=top["tag"].upper()))
    assert tagged == top["n"]
    consenting = list_contacts(db, ContactFilter(tenant="acme", consent="email"), limit=1000)[0]
    assert all(r["consent_email"] is True for r in consenting)
    card = get_card(db, "acme", seen[0]["email"].upper())
    assert card is not None and card["timeline"]
    assert [e["occurred_at"] for e in card["timeline"]] == sorted(
        e["occurred_at"] for e in card["timeline"]
    )
    assert count_contacts(db, ContactFilter(tenant="nobody")) == 0
    db.close()


def test_a_read_model_of_another_layout_version_is_rebuilt_at_setup(settings: Settings) -> None:
    store = ContactStore(settings)
    db = ViewDatabase(settings)
    runner = ProjectionRunner(store, db, ContactsProjection())
    runner.setup()
    ingest(store, settings, demo_events(800, seed=8), runner)
    expected = dump(db)
    # Pretend the tables were written by an older release, with a stray row it left.
    with db.transaction() as cur:
        db.set_layout_version(cur, runner.name, ContactsProjection.version - 1)
        cur.execute("DELETE FROM timeline WHERE event_id IN "
                    "(SELECT event_id FROM timeline ORDER BY event_id LIMIT 5)")
    restarted = ProjectionRunner(store, db, ContactsProjection())
    restarted.setup()
    assert restarted.position() == 0
    with db.reading() as cur:
        assert db.layout_version(cur, runner.name) == ContactsProjection.version
    restarted.catch_up()
    assert dump(db) == expected
    # Same version: setup keeps the rows and the position.
    position = restarted.position()
    ProjectionRunner(store, db, ContactsProjection()).setup()
    assert restarted.position() == position
    db.close()


def test_a_side_by_side_replay_switches_atomically_and_loses_nothing(
    settings: Settings,
) -> None:
    from projections.audience import AudienceProjection
    from projections.replay import replay

    store = ContactStore(settings)
    db = ViewDatabase(settings)
    live = {p.name: ProjectionRunner(store, db, p) for p in (ContactsProjection(),
                                                              AudienceProjection())}
    for runner in live.values():
        runner.setup()
    events = demo_events(1500, seed=12)
    ingest(store, settings, events[:1000], live["contacts"])
    live["audience"].catch_up()
    expected_before = dump(db)

    seen_pages: list[int] = []

    def more_events_meanwhile(position: int) -> None:
        # While the copy is being built, events keep arriving and the live runner keeps
        # applying them: readers see the live tables all along.
        seen_pages.append(position)
        if len(seen_pages) == 1:
            assert dump(db) == expected_before
            folder = BatchFolder(store, ContactIdentity(settings.id_key), ContactCache(100),
                                 "p1")
            folder.fold_and_commit(events[1000:], 1)
            live["contacts"].catch_up()

    result = replay(store, db, ContactsProjection, more_events_meanwhile)
    assert seen_pages and result.position == store.max_notification_id()
    after_switch = dump(db)
    assert len(after_switch["timeline"]) == 1500
    live["contacts"].catch_up()  # the live runner goes on from the copy's position
    assert live["contacts"].position() == store.max_notification_id()
    assert dump(db) == after_switch
    # And the same tables as a plain rebuild gives.
    live["contacts"].rebuild()
    assert dump(db) == after_switch
    replay(store, db, AudienceProjection)  # the audience model replays the same way
    with db.reading() as cur:
        assert db.layout_version(cur, "audience") == AudienceProjection.version
    db.close()


def test_a_replay_while_the_live_runner_and_ingestion_keep_going(settings: Settings) -> None:
    from projections.replay import replay

    store = ContactStore(settings)
    db = ViewDatabase(settings)
    live = ProjectionRunner(store, db, ContactsProjection(), page_size=50, poll_interval=0.005)
    live.setup()
    events = demo_events(2400, seed=13)
    ingest(store, settings, events[:800], live)
    stop = threading.Event()
    worker = threading.Thread(target=live.run_forever, args=(stop,))
    worker.start()

    def keep_ingesting() -> None:
        folder = BatchFolder(store, ContactIdentity(settings.id_key), ContactCache(100), "p1")
        for k, start in enumerate(range(800, 2400, 100)):
            folder.fold_and_commit(events[start : start + 100], k + 1)

    producer = threading.Thread(target=keep_ingesting)
    producer.start()
    try:
        replay(store, db, ContactsProjection)
    finally:
        producer.join()
        deadline = __import__("time").monotonic() + 30
        while live.position() < store.max_notification_id():
            assert __import__("time").monotonic() < deadline
            __import__("time").sleep(0.02)
        stop.set()
        worker.join()
    incremental = dump(db)
    assert len(incremental["timeline"]) == 2400  # nothing lost, nothing twice
    live.rebuild()
    assert dump(db) == incremental
    db.close()


def test_a_position_moved_by_another_worker_is_never_taken_for_this_ones(
    settings: Settings,
) -> None:
    """Two workers applying the same page compute the same new position: the second must
    fail even though it finds that position in place (else it applies the page twice)."""
    from projections.db import ConcurrentProjectionError

    db = ViewDatabase(settings)
    db.ensure_tracking_table()
    for expected, position in ((0, 500), (500, 900)):
        with db.transaction() as cur:
            db.set_position(cur, "contacts", expected, position)
        with pytest.raises(ConcurrentProjectionError), db.transaction() as cur:
            db.set_position(cur, "contacts", expected, position)
        with db.reading() as cur:
            assert db.position(cur, "contacts") == position
    db.close()


class _SecondWorkerFirst:
    """The store as one runner sees it: its first read of the log lets another runner
    apply a page first (between this runner's position read and its transaction), the
    interleaving in which both would apply the same page."""

    def __init__(self, store: ContactStore, other: ProjectionRunner) -> None:
        self._store = store
        self._other = other
        self.interleaved = 0

    def notifications_after(self, position: int, limit: int) -> Any:
        if not self.interleaved:
            self.interleaved = self._other.run_once()
        return self._store.notifications_after(position, limit)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


def test_two_runners_of_one_projection_apply_each_event_once(settings: Settings) -> None:
    """A second projector started by mistake, or an in-place rebuild while `ficha up`
    runs: when both read the same page, one applies it and the other goes on after it."""
    store = ContactStore(settings)
    db = ViewDatabase(settings)
    alone = ProjectionRunner(store, db, ContactsProjection(), page_size=41)
    alone.setup()
    ingest(store, settings, demo_events(1000, seed=17))
    alone.catch_up()
    expected = dump(db)

    alone._reset()  # what `ficha projections rebuild` does first
    other = ProjectionRunner(store, ViewDatabase(settings), ContactsProjection(), page_size=41)
    interleaving = _SecondWorkerFirst(store, other)
    runner = ProjectionRunner(interleaving, db, ContactsProjection(), page_size=41)  # type: ignore[arg-type]
    runner.catch_up()
    assert interleaving.interleaved == 41
    assert runner.stats.applied + other.stats.applied == store.max_notification_id()
    assert dump(db) == expected
    other.db.close()
    db.close()


def test_tag_counts_show_the_spelling_most_contacts_carry(settings: Settings) -> None:
    """Once the label shown was MAX(label): the lower-case spelling on SQLite (and on
    PostgreSQL whatever its collation put last), though 58 of 62 contacts said `VIP`."""
    store = ContactStore(settings)
    db = ViewDatabase(settings)
    runner = ProjectionRunner(store, db, ContactsProjection())
    runner.setup()

    def tag(n: int, who: str, **changes: list[str]) -> InboundEvent:
        return make_event("contact_updated", event_id=f"t{n}", email=f"{who}@example.com",
                          occurred_at=f"2026-11-02T10:{n:02}:00+00:00", **changes)

    ingest(store, settings, [
        *(tag(i, f"v{i}", tags_added=["VIP"]) for i in range(3)),
        tag(10, "v9", tags_added=["vip"]),  # the latest written, and the fewest
        tag(11, "v3", tags_added=["vip"]),
        tag(12, "v3", tags_added=["VIP"]),  # re-spelt: this contact now says VIP
        tag(13, "g1", tags_added=["gold"]), tag(14, "g2", tags_added=["GOLD"]),
        tag(15, "g3", tags_added=["Gold"]), tag(16, "g4", tags_added=["Gold"]),
        tag(17, "n1", tags_added=["news"]), tag(18, "n2", tags_added=["news"]),
        tag(19, "n3", tags_added=["News"]), tag(20, "n4", tags_added=["News"]),
        tag(21, "n5", tags_added=["NEWS"]), tag(22, "n5", tags_removed=["news"]),
    ], runner)
    assert tag_counts(db, "acme") == [
        {"tag": "vip", "label": "VIP", "contacts": 5},
        {"tag": "gold", "label": "Gold", "contacts": 4},
        {"tag": "news", "label": "News", "contacts": 4},  # News 2, news 2: capitals first
    ]
    db.close()
    store.close()
