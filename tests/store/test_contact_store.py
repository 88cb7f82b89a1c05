"""Conformance: the contact store behaves the same on SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any

import pytest
from eventsourcing.persistence import IntegrityError, Tracking

from services.config import Settings
from services.domain.contact import Contact
from services.domain.identity import ContactIdentity
from services.ingest.cache import ContactCache
from services.ingest.folding import BatchFolder
from services.store.contact_store import ContactStore
from tests.factories import make_event


def folder_for(store: ContactStore, settings: Settings, name: str = "ingest-p0") -> BatchFolder:
    return BatchFolder(store, ContactIdentity(settings.id_key), ContactCache(1000), name)


def test_commit_is_atomic_with_tracking_and_received_ids(settings: Settings) -> None:
    store = ContactStore(settings)
    folder = folder_for(store, settings)
    events = [
        make_event("form_submitted", event_id=f"e{i}", email=f"p{i % 3}@example.com",
                   form_id="f")
        for i in range(9)
    ]
    outcome = folder.fold_and_commit(events, position=9)
    assert outcome.applied == 9 and outcome.contacts_created == 3
    assert store.tracked_position("ingest-p0") == 9
    assert store.received_count() == 9
    assert store.already_received("acme", ["e1", "e5", "nope"]) == {"e1", "e5"}
    assert store.already_received("other", ["e1"]) == set()
    # 3 Registered + 9 Recorded events in the notification log.
    assert store.max_notification_id() >= 12
    assert len(store.notifications_after(0, 100)) == 12


def test_a_position_already_tracked_is_refused_and_nothing_is_written(settings: Settings) -> None:
    store = ContactStore(settings)
    folder = folder_for(store, settings)
    folder.fold_and_commit([make_event("form_submitted", event_id="a", form_id="f")], 5)
    head = store.max_notification_id()
    with pytest.raises(IntegrityError):
        folder.fold_and_commit([make_event("form_submitted", event_id="b", form_id="f")], 5)
    assert store.max_notification_id() == head
    assert store.already_received("acme", ["b"]) == set()
    # The failed batch left no half-applied contact in the cache.
    contact_id = ContactIdentity(settings.id_key).contact_id("acme", "ana@example.com")
    assert folder.cache.get(contact_id) is None


def test_received_ids_dedupe_across_batches_and_positions(settings: Settings) -> None:
    store = ContactStore(settings)
    folder = folder_for(store, settings)
    event = make_event("purchase_completed", event_id="o1", order_id="o1", total="9.99",
                       currency="EUR")
    assert folder.fold_and_commit([event, event], 1).applied == 1
    again = folder.fold_and_commit([event], 2)
    assert again.applied == 0 and again.duplicates == 1
    assert store.tracked_position("ingest-p0") == 2


def test_contacts_reload_from_the_store_as_they_were_folded(settings: Settings) -> None:
    store = ContactStore(settings)
    folder = folder_for(store, settings)
    folder.fold_and_commit(
        [
            make_event("contact_updated", event_id="1", occurred_at="2026-01-02T00:00:00Z",
                       contact={"city": "Madrid"}, tags_added=["VIP"]),
            make_event("contact_updated", event_id="2", occurred_at="2026-01-01T00:00:00Z",
                       contact={"city": "Sevilla"}),
        ],
        2,
    )
    contact_id = ContactIdentity(settings.id_key).contact_id("acme", "ana@example.com")
    fresh_store = ContactStore(settings)
    loaded = fresh_store.load_many([contact_id])
    contact = loaded[contact_id]
    assert isinstance(contact, Contact)
    assert contact.card()["city"] == "Madrid"
    assert contact.card()["tags"] == ["VIP"]
    assert contact.version == 3
    # A new folder with a cold cache continues the same stream without conflicts.
    cold = folder_for(fresh_store, settings)
    cold.fold_and_commit([make_event("form_submitted", event_id="3", form_id="f")], 3)
    assert fresh_store.load_many([contact_id])[contact_id].version == 4


def test_tracking_names_are_independent(settings: Settings) -> None:
    store = ContactStore(settings)
    store.commit([], tracking=Tracking("ingest-p0", 10), received=[])
    store.commit([], tracking=Tracking("ingest-p1", 3), received=[])
    assert store.tracked_position("ingest-p0") == 10
    assert store.tracked_position("ingest-p1") == 3
    assert store.tracked_position("ingest-p2") == 0


def open_store(settings: Settings, gate: Any, stores: list[ContactStore],
               errors: list[BaseException]) -> None:
    gate.wait()
    try:
        stores.append(ContactStore(settings))
    except BaseException as error:  # noqa: BLE001 - collected for the assert
        errors.append(error)


def test_processes_starting_together_on_a_fresh_schema_all_open_the_store(
        postgres_dsn: str, tmp_path: Any) -> None:
    """`ficha up` starts ingest, two projectors and the API at once; each creates the
    store's tables if missing. Concurrent CREATE ... IF NOT EXISTS can fail in PostgreSQL
    ("tuple concurrently updated"): every opener must still succeed."""
    import threading
    import uuid

    import psycopg

    from tests.backends import make_settings

    for round_ in range(10):
        schema = f"t_race_{uuid.uuid4().hex[:8]}"
        settings = make_settings(tmp_path / str(round_), postgres_dsn=postgres_dsn,
                                 schema=schema)
        errors: list[BaseException] = []
        stores: list[ContactStore] = []
        gate = threading.Barrier(4)
        threads = [threading.Thread(target=open_store, args=(settings, gate, stores, errors))
                   for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        try:
            assert errors == [] and len(stores) == 4
        finally:
            for store in stores:
                store.close()
            with psycopg.connect(postgres_dsn, autocommit=True) as conn:
                conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
