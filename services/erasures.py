"""Finishing erasures: purge the streams once every read model has let go, then close the
receipt.

An erasure starts in the ingest worker (the contact's key deleted and ``Erased`` stored
in one transaction, a receipt opened in ``ficha_erasures``) and goes on in each
projection (rows deleted, confirmation written, ``contact_erased`` put in the outbox).
The completer, which runs beside the outbox relay, waits until

1. every projection that holds personal data confirmed the erasure, and
2. the relay published ``contact_erased`` (so every earlier outbound event of the
   contact is in FICHA_OUT, or a tombstone that will never be published),

then deletes the person's messages from FICHA_IN, FICHA_DLQ and FICHA_OUT
(``services.stream_purge``), checkpoints the SQLite files (so that no write-ahead log
keeps an older copy of what was overwritten), and records on the receipt when it was done
and which stream messages went.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from nats.js import JetStreamContext

from projections.db import ViewDatabase
from services import metrics
from services.domain.identity import ContactIdentity
from services.domain.stamps import utc_iso
from services.privacy import confirmations, outbound_state
from services.store.contact_store import ContactStore
from services.stream_purge import ErasedContact, purge_streams

log = logging.getLogger("ficha.erasures")


class ErasureCompleter:
    def __init__(self, js: JetStreamContext, store: ContactStore, views: ViewDatabase,
                 identity: ContactIdentity, interval: float = 0.5) -> None:
        self.js = js
        self.store = store
        self.views = views
        self.identity = identity
        self.interval = interval
        self.completed = 0

    def _ready(self) -> list[dict[str, Any]]:
        """Open receipts whose projections all confirmed and whose contact_erased is out."""
        ready = []
        pending = self.store.erasures(pending=True)
        metrics.ERASURES_PENDING.set(len(pending))
        for row in pending:
            confirmed = confirmations(self.views, row["contact_id"], int(row["version"]))
            if not confirmed or any(at is None for at in confirmed.values()):
                continue
            if not outbound_state(self.views, row["contact_id"], int(row["version"]))[
                    "published"]:
                continue
            ready.append(row)
        return ready

    async def complete_ready(self) -> int:
        """Complete every erasure that is ready; how many were completed."""
        ready = await asyncio.to_thread(self._ready)
        if not ready:
            return 0
        targets = {
            ErasedContact(tenant=row["tenant"], contact_id=UUID(row["contact_id"]),
                          stamp=(row["requested_at"], row["event_id"]),
                          erased_at=row["erased_at"]): row
            for row in ready
        }
        purged = await purge_streams(self.js, self.identity, list(targets))
        checkpointed = await asyncio.to_thread(self._checkpoint)
        now = utc_iso(datetime.now(UTC))
        for target, row in targets.items():
            record = {"streams": purged[target].to_json(), "files_checkpointed": checkpointed}
            await asyncio.to_thread(self.store.contact_recorder.complete_erasure,
                                    target.contact_id, int(row["version"]), now,
                                    json.dumps(record, sort_keys=True))
            log.info("erasure complete", extra={"tenant": target.tenant,
                                                "event_id": row["event_id"]})
        self.completed += len(targets)
        metrics.ERASURES_COMPLETED.inc(len(targets))
        return len(targets)

    def _checkpoint(self) -> bool:
        """Empty the SQLite write-ahead logs (a few tries: readers may hold them)."""
        import time

        for _ in range(20):
            if self.store.contact_recorder.checkpoint() and self.views.checkpoint():
                return True
            time.sleep(0.05)
        return False

    async def run(self, stop: asyncio.Event) -> None:
        delay = self.interval
        while not stop.is_set():
            try:
                await self.complete_ready()
                delay = self.interval
            except Exception as error:  # noqa: BLE001 - bus or database away: retry
                log.warning("erasures: completing failed, retrying in %.1fs: %s", delay, error)
                delay = min(delay * 2, 10.0)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=delay)
