"""A projection whose pages keep failing is reported as failing, not only as lagging."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from projections.contacts import ContactsProjection
from projections.db import Cursor, ViewDatabase
from projections.runner import ProjectionRunner
from services.config import Settings
from services.domain.identity import ContactIdentity
from services.ingest.cache import ContactCache
from services.ingest.folding import BatchFolder
from services.store.contact_store import ContactStore
from tests.projections.test_contacts_projection import demo_events, ingest


class BreakableContacts(ContactsProjection):
    """The contacts projection, failing every page while ``broken`` is set (as a bug in a
    fold would, on an event it cannot apply)."""

    def __init__(self) -> None:
        self.broken = threading.Event()

    def apply(self, cur: Cursor, events: Sequence[Any], is_postgres: bool) -> None:
        if self.broken.is_set():
            raise RuntimeError("cannot fold this event\nsecond line of detail")
        super().apply(cur, events, is_postgres)


def wait_until(holds: Callable[[], bool], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not holds():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


def failing(db: ViewDatabase) -> dict[str, dict[str, Any]]:
    with db.reading() as cur:
        return db.failures(cur)


def status(settings: Settings) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FICHA_")}
    return subprocess.run([sys.executable, "-m", "services", "status"],
                          env={**env, **settings.to_env(), "COLUMNS": "200"},
                          capture_output=True, text=True, timeout=60)


def test_a_failing_projection_is_reported_until_a_page_succeeds(
        settings: Settings, nats_url: str) -> None:
    settings = replace(settings, nats_url=nats_url)  # (status then exits 0 when all is well)
    store = ContactStore(settings)
    db = ViewDatabase(settings)
    projection = BreakableContacts()
    runner = ProjectionRunner(store, db, projection, page_size=50, poll_interval=0.005)
    runner.setup()
    ingest(store, settings, demo_events(60), runner)
    stuck_at = runner.position()
    projection.broken.set()
    folder = BatchFolder(store, ContactIdentity(settings.id_key), ContactCache(100), "p1")
    folder.fold_and_commit(demo_events(40, seed=9), 1)
    stop = threading.Event()
    worker = threading.Thread(target=runner.run_forever, args=(stop,))
    worker.start()
    try:
        wait_until(lambda: failing(db).get("contacts", {}).get("attempts", 0) >= 2,
                   "the failures were not recorded")
        failure = failing(db)["contacts"]
        assert failure["position"] == stuck_at
        assert failure["error"] == "RuntimeError: cannot fold this event"
        assert failure["since"] <= failure["last_at"]
        shown = status(settings)
        assert shown.returncode == 1, shown.stdout + shown.stderr
        assert "failing since" in shown.stdout
        assert (f"cannot apply the events after position {stuck_at}: RuntimeError: cannot "
                "fold this event") in " ".join(shown.stdout.split())
        assert "Traceback" not in shown.stdout + shown.stderr

        projection.broken.clear()  # fixed: the next page goes through
        wait_until(lambda: not failing(db) and runner.position() == store.max_notification_id(),
                   "the projection did not recover")
        healthy = status(settings)
        assert healthy.returncode == 0, healthy.stdout + healthy.stderr
        assert "failing since" not in healthy.stdout
    finally:
        stop.set()
        runner.wake()
        worker.join()
        db.close()
        store.close()
