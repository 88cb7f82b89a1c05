"""The contact event store: an eventsourcing application over SQLite or PostgreSQL.

Only the ingest worker writes. A batch of inbound events becomes one transaction holding
the contacts' new domain events, the partition's tracking position and the received
event ids (see ``recorders``). The same class reads the notification log for projections.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any
from uuid import UUID

import psycopg
from eventsourcing.application import Application, ProcessingEvent
from eventsourcing.persistence import Notification, Tracking, Transcoder
from psycopg import sql

from services.config import Settings
from services.domain.contact import Contact
from services.store.recorders import PostgresContactRecorder, Received, SQLiteContactRecorder
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


class ContactStore(Application[UUID]):
    """Contacts as event streams, with tracking of the upstream position."""

    name = "ficha"

    def __init__(self, settings: Settings) -> None:
        ensure_postgres_schema(settings)
        # The environment is passed whole: ficha's configuration decides, not os.environ.
        super().__init__(store_environment(settings))
        self.settings = settings

    def construct_env(self, name: str, env: Any = None) -> Any:
        from eventsourcing.utils import Environment

        return Environment(name, dict(env or {}))

    def construct_recorder(self) -> Any:
        return self.factory.process_recorder()

    def construct_transcoder(self) -> Transcoder:
        return ContactEventTranscoder()

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
    ) -> None:
        """Store the contacts' pending events, the tracking and the received ids at once."""
        processing = ProcessingEvent[UUID](tracking=tracking)
        # Filled directly: collect_events() runs runtime Protocol checks per object,
        # which cost more than the rest of the batch's bookkeeping together.
        for contact in contacts:
            processing.events.extend(contact.collect_events())
            processing.aggregates[contact.id] = contact
        processing.saved_kwargs["received"] = received
        self._record(processing)

    # ------------------------------------------------------------------ reading

    def load_many(self, contact_ids: Sequence[UUID]) -> dict[UUID, Contact]:
        """Rebuild many contacts with one query."""
        stored = self.contact_recorder.select_events_many(contact_ids)
        contacts: dict[UUID, Contact] = {}
        for contact_id, events in stored.items():
            aggregate: Any = None
            for stored_event in events:
                event: Any = self.mapper.to_domain_event(stored_event)
                aggregate = event.mutate(aggregate)
            if aggregate is not None:
                contacts[contact_id] = aggregate
        return contacts

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
