"""Crypto-shredding: personal events sealed with their contact's key, on both backends.

The mapper round-trips events, refuses a wrong key, turns an event whose key was deleted
into Redacted, and keeps the library's upcasting; the store creates a contact's key with
its first event and deletes it with its erasure, in the same transaction.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from uuid import UUID, uuid4

import pytest
from eventsourcing.persistence import MapperDeserialisationError, StoredEvent
from hypothesis import given
from hypothesis import strategies as st

from services.config import Settings
from services.domain.contact import Contact
from services.domain.identity import ContactIdentity
from services.ingest.cache import ContactCache
from services.ingest.folding import BatchFolder
from services.store.contact_store import ContactStore
from services.store.datakeys import (
    DataKey,
    WrongKey,
    is_sealed,
    seal,
    sealed_moment,
    unseal,
)
from services.store.transcoder import ContactEventTranscoder
from tests.factories import make_event

EMAIL = "ana.garcia@example.com"


class Noted(Contact.Event):
    """A test-only personal event at its second version: ``mood`` came in v2."""

    class_version = 2
    text: str
    mood: str

    @staticmethod
    def upcast_v1_v2(state: dict[str, Any]) -> None:
        state["mood"] = "unknown"

    def apply(self, aggregate: Any) -> None:
        pass


def folder_for(store: ContactStore, settings: Settings) -> BatchFolder:
    return BatchFolder(store, ContactIdentity(settings.id_key), ContactCache(1000), "ingest-p0")


def stored_states(store: ContactStore, contact_id: UUID) -> list[StoredEvent]:
    return store.contact_recorder.select_events_many([contact_id])[contact_id]


def keys_table(store: ContactStore) -> dict[UUID, DataKey]:
    return store.contact_recorder.select_keys(
        [UUID(int=0)] + [n.originator_id for n in store.notifications_after(0, 10_000)])


# --------------------------------------------------------------------- sealing, pure


@given(plain=st.binary(max_size=2000), version=st.integers(1, 2**40),
       topic=st.text(max_size=60), moment=st.datetimes(timezones=st.just(UTC)))
def test_a_sealed_state_opens_with_its_key_and_only_for_its_event(
    plain: bytes, version: int, topic: str, moment: datetime,
) -> None:
    key = DataKey.new()
    oid = uuid4()
    aad = oid.bytes + version.to_bytes(8, "big") + topic.encode()
    state = seal(key, plain, aad, moment)
    assert is_sealed(state)
    assert unseal(key, state, aad) == plain
    assert sealed_moment(state) == moment  # readable without the key: when, not what
    assert plain not in state or len(plain) < 4
    other_event = oid.bytes + (version + 1).to_bytes(8, "big") + topic.encode()
    with pytest.raises(WrongKey):
        unseal(key, state, other_event)  # moved to another event: refused
    with pytest.raises(WrongKey):
        unseal(DataKey(key.key_id, DataKey.new().secret), state, aad)  # same id, wrong secret


# ------------------------------------------------------------------- the mapper, stored


def test_personal_events_round_trip_sealed_and_plain_events_stay_plain(
    settings: Settings,
) -> None:
    store = ContactStore(settings)
    folder = folder_for(store, settings)
    folder.fold_and_commit([
        make_event("form_submitted", event_id="f1", email=EMAIL, form_id="contact",
                   contact={"first_name": "Ana", "phone": "+34600111222"}),
    ], 1)
    cid = ContactIdentity(settings.id_key).contact_id("acme", EMAIL)
    states = stored_states(store, cid)
    assert [is_sealed(s.state) for s in states] == [True, True]
    for s in states:
        assert b"ana.garcia" not in s.state and b"Ana" not in s.state
    loaded = ContactStore(settings).load_many([cid])[cid]
    assert loaded.email == EMAIL
    assert loaded.card()["first_name"] == "Ana" and loaded.card()["phone"] == "+34600111222"
    # The log reader gets the same events back, with one key lookup per page.
    events = store.decode(store.notifications_after(0, 100))
    assert [type(e).__name__ for e in events] == ["Registered", "Recorded"]
    assert events[1].changes["fields"]["first_name"] == "Ana"


def test_a_wrong_key_fails_loudly(settings: Settings) -> None:
    store = ContactStore(settings)
    folder_for(store, settings).fold_and_commit(
        [make_event("form_submitted", event_id="f1", email=EMAIL, form_id="c")], 1)
    cid = ContactIdentity(settings.id_key).contact_id("acme", EMAIL)
    real = keys_table(store)[cid]
    forged = DataKey(real.key_id, DataKey.new().secret)
    with pytest.raises(MapperDeserialisationError):
        store.shredder.decode(stored_states(store, cid)[0], {cid: forged})


def test_the_library_upcasting_still_runs_on_sealed_events(settings: Settings) -> None:
    store = ContactStore(settings)
    oid, key = uuid4(), DataKey.new()
    topic = f"{Noted.__module__}:{Noted.__qualname__}"
    v1_state = ContactEventTranscoder().encode(
        {"timestamp": datetime.now(UTC), "text": "written before mood existed"})
    aad = oid.bytes + (7).to_bytes(8, "big") + topic.encode()
    stored = StoredEvent(originator_id=oid, originator_version=7, topic=topic,
                         state=seal(key, v1_state, aad))
    event = store.shredder.decode(stored, {oid: key})
    assert isinstance(event, Noted)
    assert (event.text, event.mood) == ("written before mood existed", "unknown")


def test_a_deleted_key_yields_redacted_events_and_an_erased_contact(settings: Settings) -> None:
    store = ContactStore(settings)
    folder = folder_for(store, settings)
    folder.fold_and_commit([
        make_event("form_submitted", event_id="f1", email=EMAIL, form_id="c",
                   occurred_at="2026-11-01T10:00:00Z", contact={"first_name": "Ana"}),
        make_event("form_submitted", event_id="f2", email="other@example.com", form_id="c"),
    ], 1)
    cid = ContactIdentity(settings.id_key).contact_id("acme", EMAIL)
    before = [e for e in store.decode(store.notifications_after(0, 10))
              if e.originator_id == cid]
    assert [type(e).__name__ for e in before] == ["Registered", "Recorded"]
    folder.fold_and_commit([make_event("contact_erasure_requested", event_id="erase-1",
                                       email=EMAIL, occurred_at="2026-11-02T10:00:00Z")], 2)
    assert cid not in keys_table(store)
    events = ContactStore(settings).select_events(cid)
    assert [type(e).__name__ for e in events] == ["Redacted", "Redacted", "Erased"]
    assert events[0].redacted_topic.endswith("Contact.Registered")
    assert [e.timestamp for e in events[:2]] == [e.timestamp for e in before]
    erased_stored = stored_states(store, cid)[-1]
    assert not is_sealed(erased_stored.state) and b"example.com" not in erased_stored.state
    contact = ContactStore(settings).load_many([cid])[cid]
    assert contact.is_erased and contact.email is None and contact.card().get("first_name") is None
    assert contact.erased == ("2026-11-02T10:00:00.000000Z", "erase-1")
    receipt = store.erasures()[0]
    assert (receipt["contact_id"], receipt["event_id"], receipt["completed_at"]) == (
        cid.hex, "erase-1", None)
    # The other contact is untouched.
    other = ContactIdentity(settings.id_key).contact_id("acme", "other@example.com")
    assert ContactStore(settings).load_many([other])[other].email == "other@example.com"


def test_after_erasure_older_facts_are_refused_and_newer_ones_start_afresh(
    settings: Settings,
) -> None:
    store = ContactStore(settings)
    folder = folder_for(store, settings)
    cid = ContactIdentity(settings.id_key).contact_id("acme", EMAIL)
    folder.fold_and_commit([
        make_event("form_submitted", event_id="f1", email=EMAIL, form_id="c",
                   occurred_at="2026-11-01T10:00:00Z", contact={"first_name": "Ana"}),
        make_event("contact_erasure_requested", event_id="erase-1", email=EMAIL,
                   occurred_at="2026-11-02T10:00:00Z"),
    ], 1)
    # Created and erased in one transaction: the key was never stored.
    assert cid not in keys_table(store)
    late = folder.fold_and_commit([
        make_event("email_opened", event_id="late", email=EMAIL, message_id="m",
                   occurred_at="2026-11-01T12:00:00Z"),
    ], 2)
    assert (late.applied, late.refused_erased) == (1, 1)
    assert store.already_received("acme", ["late"]) == {"late"}  # a retry is a duplicate
    fresh = folder.fold_and_commit([
        make_event("form_submitted", event_id="f2", email=EMAIL, form_id="c",
                   occurred_at="2026-11-03T10:00:00Z", contact={"city": "Lugo"}),
        make_event("contact_erasure_requested", event_id="erase-2", email=EMAIL,
                   occurred_at="2026-11-04T10:00:00Z"),
        make_event("form_submitted", event_id="f3", email=EMAIL, form_id="c",
                   occurred_at="2026-11-05T10:00:00Z", contact={"city": "Vigo"}),
    ], 3)
    assert fresh.refused_erased == 0
    # Erased and started afresh in one batch: only the newest key is left.
    assert keys_table(store)[cid].key_id == folder.keys.get(cid).key_id  # type: ignore[union-attr]
    contact = ContactStore(settings).load_many([cid])[cid]
    assert (contact.email, contact.card()["city"], contact.card().get("first_name")) == (
        EMAIL, "Vigo", None)
    kinds = [type(e).__name__ for e in ContactStore(settings).select_events(cid)]
    assert kinds == ["Redacted", "Redacted", "Erased", "Redacted", "Redacted", "Erased",
                     "Reopened", "Recorded"]
    assert [r["event_id"] for r in store.erasures()] == ["erase-1", "erase-2"]
