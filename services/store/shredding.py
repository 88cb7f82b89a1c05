"""The contact store's mapper: personal events sealed with their contact's own key.

eventsourcing's built-in cipher uses one key for the whole application and never sees
the aggregate id, so it cannot forget one person. ``ShreddingMapper`` extends the
library's ``Mapper``: the library still turns events into states and back (topics,
the transcoder, ``class_version`` and the ``upcast_vN_vN+1`` methods), and this class
seals the state of every personal contact event with that contact's data key
(``services.store.datakeys``) after encoding, and opens it before decoding.

* Writing: the key of each event is planned by ``ContactStore.commit`` (which creates and
  deletes keys in the same transaction); a personal event written any other way is a bug.
* Reading: a sealed state whose key is gone (the contact was erased, or it belongs to the
  contact's life before an erasure) becomes ``Contact.Redacted``: the topic of what it
  was and when it was recorded, nothing else. A key that is there but does not open the
  state is an error.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any
from uuid import UUID

from eventsourcing.persistence import (
    Mapper,
    MapperDeserialisationError,
    ProgrammingError,
    StoredEvent,
    Transcoder,
)

from services.domain.contact import Contact
from services.store.datakeys import (
    DataKey,
    WrongKey,
    associated_data,
    is_sealed,
    seal,
    sealed_key_id,
    sealed_moment,
    unseal,
)

KeyLookup = Callable[[Sequence[UUID]], dict[UUID, DataKey]]


def is_personal(event: Any) -> bool:
    """Every contact event holds personal data except the erasure itself."""
    return isinstance(event, Contact.Event) and not isinstance(event, Contact.Erased)


def redacted(stored: StoredEvent) -> Contact.Redacted:
    """The stand-in for a personal event that can no longer be read: when, not what."""
    event = object.__new__(Contact.Redacted)
    object.__setattr__(event, "__dict__", {
        "originator_id": stored.originator_id,
        "originator_version": stored.originator_version,
        "timestamp": sealed_moment(stored.state),
        "redacted_topic": stored.topic,
    })
    return event


class ShreddingMapper(Mapper[UUID]):
    def __init__(self, transcoder: Transcoder, lookup: KeyLookup) -> None:
        super().__init__(transcoder)
        self.lookup = lookup  # the live keys of contacts, from the database
        # Keyed by id() of the event objects of the commit in progress (alive until it
        # ends): cheaper than hashing UUIDs, which Python does in Python.
        self._planned: dict[int, DataKey] = {}
        self._lock = threading.Lock()

    @contextmanager
    def planned(self, keys: Mapping[int, DataKey]) -> Iterator[None]:
        """The key of each event (by ``id(event)``) about to be written, for one commit.

        Partition workers commit in threads at once; their contacts never overlap, so
        the plans share one dict without clashing."""
        with self._lock:
            self._planned.update(keys)
        try:
            yield
        finally:
            with self._lock:
                for planned in keys:
                    self._planned.pop(planned, None)

    def to_stored_event(self, domain_event: Any) -> StoredEvent:
        stored = super().to_stored_event(domain_event)
        if not is_personal(domain_event):
            return stored
        oid = stored.originator_id
        assert isinstance(oid, UUID)
        key = self._planned.get(id(domain_event))
        if key is None:
            raise ProgrammingError(
                f"{stored.topic} v{stored.originator_version} of {stored.originator_id} has "
                "no data key planned: contact events are written through ContactStore.commit")
        aad = associated_data(oid, stored.originator_version, stored.topic)
        return StoredEvent(
            originator_id=oid,
            originator_version=stored.originator_version,
            topic=stored.topic,
            state=seal(key, stored.state, aad, domain_event.timestamp),
        )

    def to_domain_event(self, stored_event: StoredEvent) -> Any:
        """One event, its key looked up on its own (the slow path: prefer ``decode``)."""
        return self.decode(stored_event, None)

    def decode(self, stored: StoredEvent, keys: Mapping[UUID, DataKey] | None) -> Any:
        """One event with the live keys already looked up for its page (``keys``)."""
        if not is_sealed(stored.state):
            return super().to_domain_event(stored)
        oid = stored.originator_id
        assert isinstance(oid, UUID)
        if keys is None:
            keys = self.lookup([oid])
        key = keys.get(oid)
        if key is None or key.key_id != sealed_key_id(stored.state):
            return redacted(stored)
        aad = associated_data(oid, stored.originator_version, stored.topic)
        try:
            plain = unseal(key, stored.state, aad)
        except WrongKey as error:
            raise MapperDeserialisationError(
                f"event {stored.topic} v{stored.originator_version} of {oid}: {error}"
            ) from error
        return super().to_domain_event(StoredEvent(
            originator_id=oid,
            originator_version=stored.originator_version,
            topic=stored.topic,
            state=plain,
        ))
