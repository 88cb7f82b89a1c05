"""The synchronous part of a batch: de-duplicate, load, fold and commit in one transaction.

Runs in a worker thread (eventsourcing has no async API). Pure apart from the store calls.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from uuid import UUID

from eventsourcing.persistence import Tracking

from contracts.events import InboundEvent
from services.domain.contact import Contact
from services.domain.identity import ContactIdentity
from services.ingest.cache import ContactCache
from services.store.contact_store import ContactStore
from services.store.datakeys import KeyCache


class FoldError(Exception):
    """Folding one event raised: the event is set aside, the batch is folded again."""

    def __init__(self, index: int, cause: BaseException) -> None:
        super().__init__(f"event at index {index}: {type(cause).__name__}: {cause}")
        self.index = index
        self.cause = cause


@dataclass
class BatchOutcome:
    applied: int = 0
    duplicates: int = 0
    # Facts about an erased contact stamped at or before its erasure: received, not kept.
    refused_erased: int = 0
    contacts_created: int = 0
    contacts_touched: list[UUID] = field(default_factory=list)


class BatchFolder:
    """Applies batches of accepted events to contacts for one partition."""

    def __init__(
        self,
        store: ContactStore,
        identity: ContactIdentity,
        cache: ContactCache,
        tracking_name: str,
        keys: KeyCache | None = None,
    ) -> None:
        self.store = store
        self.identity = identity
        self.cache = cache
        # The data keys of hot contacts: this folder's partition owns them (decision 0006).
        self.keys = keys if keys is not None else KeyCache(cache.maxsize)
        self.tracking_name = tracking_name
        # Fault injection for tests: called with each event before it is folded;
        # raising there is what a bug in the fold looks like to the worker.
        self.fault: Callable[[InboundEvent], None] | None = None

    def fold_and_commit(self, events: list[InboundEvent], position: int | None) -> BatchOutcome:
        """Apply `events` (stream order) and record `position` in the same transaction.

        `position` is None when the batch holds only redeliveries of older messages: the
        partition's position then stays where it is (it only moves forward).

        Raises FoldError (nothing committed, cache cleaned) if one event cannot be folded;
        any store exception also leaves nothing committed and the touched contacts evicted.
        """
        outcome = BatchOutcome()
        fresh = self._new_events(events, outcome)
        touched: dict[UUID, Contact] = {}
        try:
            ids = [self.identity.contact_id(e.tenant, e.contact.email) for e in fresh]
            loaded = self._load(ids)
            for event, contact_id in zip(fresh, ids, strict=True):
                contact = (
                    touched.get(contact_id)
                    or loaded.get(contact_id)
                    or self.cache.get(contact_id)
                )
                if contact is None:
                    contact = Contact.register(contact_id, event.tenant, event.contact.email)
                    outcome.contacts_created += 1
                try:
                    if self.fault is not None:
                        self.fault(event)
                    kept = contact.record(event)
                except Exception as cause:  # a bug or an unforeseen input: set it aside
                    raise FoldError(events.index(event), cause) from cause
                if kept:
                    touched[contact_id] = contact
                else:
                    outcome.refused_erased += 1
            received = [
                (e.tenant, e.event_id, cid.hex) for e, cid in zip(fresh, ids, strict=True)
            ]
            self.store.commit(
                touched.values(),
                tracking=None if position is None else Tracking(self.tracking_name, position),
                received=received,
                key_cache=self.keys,
            )
        except BaseException:
            self.cache.evict(touched)
            self.keys.evict(touched)
            raise
        for contact in touched.values():
            self.cache.put(contact)
        outcome.applied = len(fresh)
        outcome.contacts_touched = list(touched)
        return outcome

    def _new_events(self, events: list[InboundEvent], outcome: BatchOutcome) -> list[InboundEvent]:
        """Drop repeats inside the batch and events received in any earlier batch."""
        unique: dict[tuple[str, str], InboundEvent] = {}
        for event in events:
            key = (event.tenant, event.event_id)
            if key in unique:
                outcome.duplicates += 1
            else:
                unique[key] = event
        by_tenant: dict[str, list[str]] = defaultdict(list)
        for tenant, event_id in unique:
            by_tenant[tenant].append(event_id)
        seen: set[tuple[str, str]] = set()
        for tenant, event_ids in by_tenant.items():
            seen.update((tenant, eid) for eid in self.store.already_received(tenant, event_ids))
        outcome.duplicates += len(seen)
        return [event for key, event in unique.items() if key not in seen]

    def forget(self) -> None:
        """Drop every contact and key held in memory (another writer may have written)."""
        self.cache.clear()
        self.keys.clear()

    def _load(self, contact_ids: list[UUID]) -> dict[UUID, Contact]:
        """Contacts not in the cache, read from the store in one query."""
        missing = list({cid for cid in contact_ids if cid not in self.cache})
        return self.store.load_many(missing, self.keys) if missing else {}
