"""The contact event store: an eventsourcing application over SQLite or PostgreSQL.

Only the ingest worker writes. A batch of inbound events becomes one transaction holding
the contacts' new domain events, the partition's tracking position and the received
event ids (see ``recorders``). The same class reads the notification log for projections.

Personal contact events are sealed with their contact's own data key
(``services.store.shredding``): ``commit`` plans which key seals each event, creating a
contact's key with its first personal event and deleting it with its erasure, in the same
transaction. Readers (``load_many``, ``decode``) look up the live keys of a whole batch
or page in one query; only the ingest worker keeps keys between batches (``KeyCache``).
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any
from uuid import UUID

import psycopg
from eventsourcing.application import Application, ProcessingEvent
from eventsourcing.persistence import (
    IntegrityError,
    InternalError,
    Mapper,
    Notification,
    ProgrammingError,
    StoredEvent,
    Tracking,
    Transcoder,
)
from psycopg import sql

from services.config import Settings
from services.domain.contact import Contact
from services.domain.identity import ContactIdentity
from services.domain.stamps import utc_iso
from services.store.datakeys import DataKey, KeyCache, is_sealed
from services.store.recorders import (
    ErasureRow,
    PostgresContactRecorder,
    Received,
    SQLiteContactRecorder,
)
from services.store.shredding import ShreddingMapper, is_personal
from services.store.signals import ListeningNewEvents, NewEvents, PollingNewEvents
from services.store.transcoder import ContactEventTranscoder


def store_environment(settings: Settings) -> dict[str, str]:
    """The eventsourcing settings for the configured backend."""
    if settings.postgres is None:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        return {
            "PERSISTENCE_MODULE": "eventsourcing.sqlite",
            "SQLITE_DBNAME": str(settings.events_db_path),
            "SQLITE_LOCK_TIMEOUT": "30",
            "PROCESS_RECORDER_TOPIC": f"{SQLiteContactRecorder.__module__}:"
            f"{SQLiteContactRecorder.__qualname__}",
        }
    pg = settings.postgres
    return {
        "PERSISTENCE_MODULE": "eventsourcing.postgres",
        "POSTGRES_DBNAME": pg.dbname,
        "POSTGRES_HOST": pg.host,
        "POSTGRES_PORT": str(pg.port),
        "POSTGRES_USER": pg.user,
        "POSTGRES_PASSWORD": pg.password,
        "POSTGRES_SCHEMA": pg.schema,
        "POSTGRES_POOL_SIZE": "4",
        "POSTGRES_MAX_OVERFLOW": "4",
        "POSTGRES_CONNECT_TIMEOUT": "5",
        "POSTGRES_LOCK_TIMEOUT": "10",
        # No pre-ping: it costs a round trip per checkout. A stale pooled connection after a
        # database restart fails its transaction once; the ingest worker retries the batch
        # (tests/e2e/test_outage.py proves nothing is lost or dead-lettered).
        "POSTGRES_PRE_PING": "n",
        "PROCESS_RECORDER_TOPIC": f"{PostgresContactRecorder.__module__}:"
        f"{PostgresContactRecorder.__qualname__}",
    }


def ensure_postgres_schema(settings: Settings) -> None:
    if settings.postgres is None:
        return
    with psycopg.connect(settings.postgres.conninfo, autocommit=True, connect_timeout=5) as conn:
        schema = sql.Identifier(settings.postgres.schema)
        conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(schema))


@contextmanager
def store_openers_serialised(settings: Settings) -> Iterator[None]:
    """Let one process at a time create the store's tables in a PostgreSQL schema.

    eventsourcing's tracking recorder inserts its ``__migration__`` row when it finds no
    tracking table; two openers that both found none both insert it, and the second fails
    ("Failed to record tracking for __migration__ 1"). A session advisory lock, keyed by
    the schema and held on its own connection, makes the second opener find the table.
    """
    if settings.postgres is None:
        yield
        return
    key = zlib.crc32(f"ficha-store:{settings.postgres.schema}".encode())
    with psycopg.connect(settings.postgres.conninfo, autocommit=True, connect_timeout=5) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (key,))
        try:
            yield
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (key,))


class IdKeyMismatch(Exception):
    """This process's FICHA_ID_KEY is not the one the store's contact ids were made with."""


def _concurrent_ddl(error: Exception) -> bool:
    text = str(error)
    return ("concurrently" in text or "already exists" in text
            or ("duplicate key" in text and "pg_" in text))


class ContactStore(Application[UUID]):
    """Contacts as event streams, with tracking of the upstream position."""

    name = "ficha"

    def __init__(self, settings: Settings) -> None:
        # The environment is passed whole: ficha's configuration decides, not os.environ.
        for attempt in range(10):
            try:
                with store_openers_serialised(settings):
                    ensure_postgres_schema(settings)
                    super().__init__(store_environment(settings))
                break
            except (InternalError, IntegrityError, ProgrammingError, psycopg.Error) as error:
                # Store openers are serialised, but the projectors' view database
                # creates the same schema; PostgreSQL may refuse one of two concurrent
                # CREATE ... IF NOT EXISTS ("tuple concurrently updated", a duplicate
                # pg_type row, "relation ... already exists"). The other made it: just
                # try again.
                if attempt == 9 or not _concurrent_ddl(error):
                    raise
                time.sleep(0.05 * (attempt + 1))
        self.settings = settings

    def construct_env(self, name: str, env: Any = None) -> Any:
        from eventsourcing.utils import Environment

        return Environment(name, dict(env or {}))

    def construct_recorder(self) -> Any:
        return self.factory.process_recorder()

    def construct_transcoder(self) -> Transcoder:
        return ContactEventTranscoder()

    def construct_mapper(self) -> Mapper[UUID]:
        return ShreddingMapper(self.construct_transcoder(), self._select_keys)

    def _select_keys(self, contact_ids: Sequence[UUID]) -> dict[UUID, DataKey]:
        return self.contact_recorder.select_keys(contact_ids) if contact_ids else {}

    @property
    def shredder(self) -> ShreddingMapper:
        mapper = self.mapper
        assert isinstance(mapper, ShreddingMapper)
        return mapper

    @property
    def contact_recorder(self) -> SQLiteContactRecorder | PostgresContactRecorder:
        recorder = self.recorder
        assert isinstance(recorder, SQLiteContactRecorder | PostgresContactRecorder)
        return recorder

    # ------------------------------------------------------------------ writing

    def commit(
        self,
        contacts: Iterable[Contact],
        *,
        tracking: Tracking | None,
        received: Sequence[Received],
        key_cache: KeyCache | None = None,
    ) -> None:
        """Store the contacts' pending events, the tracking and the received ids at once,
        with the data keys created and deleted by these events.

        ``key_cache`` is the partition owner's: its keys are used without a lookup, and
        it is updated once the transaction has committed."""
        processing = ProcessingEvent[UUID](tracking=tracking)
        batch: list[tuple[Contact, list[Any]]] = []
        lookup: list[UUID] = []
        # Filled directly: collect_events() runs runtime Protocol checks per object,
        # which cost more than the rest of the batch's bookkeeping together.
        for contact in contacts:
            events: list[Any] = list(contact.collect_events())
            processing.events.extend(events)
            processing.aggregates[contact.id] = contact
            batch.append((contact, events))
            # A contact created in this batch has no key yet; others may have one.
            if (events and events[0].originator_version > 1
                    and (key_cache is None or key_cache.get(contact.id) is None)
                    and any(is_personal(e) for e in events)):
                lookup.append(contact.id)
        live = self._select_keys(lookup)
        plan: dict[int, DataKey] = {}  # id(event) -> the key that seals it
        new_keys: dict[UUID, DataKey] = {}
        erased: list[UUID] = []
        erasures: list[ErasureRow] = []
        for contact, events in batch:
            cid = contact.id
            key = live.get(cid) or (None if key_cache is None else key_cache.get(cid))
            for event in events:
                if isinstance(event, Contact.Erased):
                    erased.append(cid)
                    new_keys.pop(cid, None)  # created in this batch: never stored
                    key = None
                    erasures.append((event.tenant, cid, event.originator_version,
                                     event.event_id, event.requested_at,
                                     utc_iso(event.timestamp)))
                elif is_personal(event):
                    if key is None:
                        key = new_keys[cid] = DataKey.new()
                    plan[id(event)] = key
        processing.saved_kwargs.update(
            received=received,
            erased_keys=erased,
            new_keys=[(cid, key.key_id, key.secret) for cid, key in new_keys.items()],
            erasures=erasures,
        )
        with self.shredder.planned(plan):
            self._record(processing)
        if key_cache is not None:
            key_cache.evict(erased)
            for cid, key in live.items():
                if cid not in new_keys and cid not in erased:
                    key_cache.put(cid, key)
            for cid, key in new_keys.items():
                key_cache.put(cid, key)

    # ------------------------------------------------------------------ reading

    def load_many(self, contact_ids: Sequence[UUID],
                  key_cache: KeyCache | None = None) -> dict[UUID, Contact]:
        """Rebuild many contacts with one query for their events and one for their keys.

        A contact whose key was erased loads as erased: its sealed events are Redacted."""
        stored = self.contact_recorder.select_events_many(contact_ids)
        keys = self._keys_for(stored, key_cache)
        mapper = self.shredder
        contacts: dict[UUID, Contact] = {}
        for contact_id, events in stored.items():
            aggregate: Any = None
            for stored_event in events:
                event: Any = mapper.decode(stored_event, keys)
                aggregate = event.mutate(aggregate)
            if aggregate is not None:
                contacts[contact_id] = aggregate
        return contacts

    def _keys_for(self, stored: dict[UUID, list[StoredEvent]],
                  key_cache: KeyCache | None) -> dict[UUID, DataKey]:
        keys: dict[UUID, DataKey] = {}
        missing = []
        for contact_id, events in stored.items():
            cached = None if key_cache is None else key_cache.get(contact_id)
            if cached is not None:
                keys[contact_id] = cached
            elif any(is_sealed(e.state) for e in events):
                missing.append(contact_id)
        found = self._select_keys(missing)
        keys.update(found)
        if key_cache is not None:
            for contact_id, key in found.items():
                key_cache.put(contact_id, key)
        return keys

    def decode(self, notifications: Sequence[StoredEvent]) -> list[Any]:
        """Domain events of a page of the log, with one lookup of the keys it needs."""
        sealed = {n.originator_id for n in notifications if is_sealed(n.state)}
        keys = self._select_keys(list(sealed))  # type: ignore[arg-type]
        mapper = self.shredder
        return [mapper.decode(n, keys) for n in notifications]

    def select_events(self, contact_id: UUID) -> list[Any]:
        """One contact's stream as domain events (erased ones Redacted)."""
        stored = self.contact_recorder.select_events_many([contact_id])
        keys = self._keys_for(stored, None)
        return [self.shredder.decode(e, keys) for e in stored.get(contact_id, [])]

    def erasures(self, *, pending: bool = False, tenant: str | None = None,
                 contact_id: UUID | None = None) -> list[dict[str, Any]]:
        """Erasure receipts as the store keeps them (see recorders.ERASURE_COLUMNS)."""
        return self.contact_recorder.select_erasures(
            pending=pending, tenant=tenant, contact_id=contact_id)

    def already_received(self, tenant: str, event_ids: Sequence[str]) -> set[str]:
        if not event_ids:
            return set()
        return self.contact_recorder.select_received(tenant, event_ids)

    def tracked_position(self, tracking_name: str) -> int:
        return self.contact_recorder.max_tracking_id(tracking_name) or 0

    def max_notification_id(self) -> int:
        return self.recorder.max_notification_id() or 0

    def notifications_after(self, position: int, limit: int) -> Sequence[Notification]:
        return self.recorder.select_notifications(
            start=position, limit=limit, inclusive_of_start=False
        )

    def new_events_signal(self, poll_interval: float = 0.01) -> NewEvents:
        """What a log reader waits on between reads: LISTEN on PostgreSQL, a poll on SQLite."""
        recorder = self.contact_recorder
        if isinstance(recorder, PostgresContactRecorder):
            return ListeningNewEvents(self.settings, recorder.channel_name)
        return PollingNewEvents(poll_interval)

    def received_count(self) -> int:
        return self.contact_recorder.count_received()

    def check_id_key(self, identity: ContactIdentity) -> None:
        """Record the key's check value if this store has none yet; raise IdKeyMismatch if
        it holds another's. A second key would give every person a second contact (and
        break the client list's one-card-per-email rule)."""
        proposed = identity.key_check()
        recorded = self.contact_recorder.id_key_check(proposed)
        if recorded != proposed:
            raise IdKeyMismatch(
                f"the event store's contact ids were made with another id key (check "
                f"{recorded}; this process's: {proposed}): every process of a deployment "
                f"needs the same key. Set FICHA_ID_KEY to that key, or copy id.key from the "
                f"FICHA_DATA_DIR of the process that first ran on this database")
