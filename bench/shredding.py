"""What per-contact encryption costs: contact events encoded and decoded with the store's
ShreddingMapper, next to the library's plain Mapper on the same events (the raw
baseline), in the same run.

* encode: domain event -> stored state (the ingest commit's share), plain vs sealed with
  the contact's key;
* decode: stored state -> domain event (every projection page's share), plain vs sealed,
  the sealed figure including the page's one key lookup (``ContactStore.decode``).

CPU time per event, best of several rounds, so that other work on the machine weighs
less than on wall-clock figures. SQLite, in a temporary folder.

Usage:  python -m bench.shredding --events 20000
Not a test: figures depend on the machine; RESULTS.md keeps the latest with its context.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from uuid import UUID

from eventsourcing.persistence import Mapper, StoredEvent

from services.demo import generate_history
from services.domain.identity import ContactIdentity
from services.ingest.cache import ContactCache
from services.ingest.folding import BatchFolder
from services.store.contact_store import ContactStore
from services.store.datakeys import associated_data, is_sealed, unseal
from services.store.transcoder import ContactEventTranscoder
from tests.backends import make_settings
from tests.factories import decode_dict


def best_cpu(work: Callable[[], Any], rounds: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        started = time.process_time()
        work()
        best = min(best, time.process_time() - started)
    return best


def uuid_of(stored: StoredEvent) -> UUID:
    """A stored event's originator id as a UUID (the library types it UUID or text)."""
    oid = stored.originator_id
    return oid if isinstance(oid, UUID) else UUID(oid)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    settings = make_settings(Path(tempfile.mkdtemp(prefix="ficha-bench-")))
    store = ContactStore(settings)
    folder = BatchFolder(store, ContactIdentity(settings.id_key), ContactCache(100_000), "p0")
    inbound = [decode_dict(d) for d in generate_history("bench", args.events, seed=7)]
    for start in range(0, len(inbound), 500):
        folder.fold_and_commit(inbound[start : start + 500], start // 500 + 1)
    sealed: list[StoredEvent] = []
    while batch := store.notifications_after(sealed[-1].id if sealed else 0, 5000):  # type: ignore[attr-defined]
        sealed += batch
    keys = store.contact_recorder.select_keys(list({uuid_of(n) for n in sealed}))

    def opened(n: StoredEvent) -> StoredEvent:
        if not is_sealed(n.state):
            return n
        oid = uuid_of(n)
        state = unseal(keys[oid], n.state, associated_data(oid, n.originator_version, n.topic))
        return StoredEvent(oid, n.originator_version, n.topic, state)

    plain_states = [opened(n) for n in sealed]
    plain: Mapper[UUID] = Mapper(ContactEventTranscoder())
    domain = [plain.to_domain_event(n) for n in plain_states]
    plan = {id(e): keys[e.originator_id] for e in domain if e.originator_id in keys}
    shredder = store.shredder
    n = len(domain)

    def encode_sealed() -> None:
        with shredder.planned(plan):
            for event in domain:
                shredder.to_stored_event(event)

    def decode_sealed() -> None:
        for start in range(0, n, 1000):
            store.decode(sealed[start : start + 1000])

    rows = [
        ("encode, plain Mapper (raw baseline)",
         best_cpu(lambda: [plain.to_stored_event(e) for e in domain], args.rounds)),
        ("encode, sealed with the contact's key", best_cpu(encode_sealed, args.rounds)),
        ("decode, plain Mapper (raw baseline)",
         best_cpu(lambda: [plain.to_domain_event(s) for s in plain_states], args.rounds)),
        ("decode, sealed + one key lookup a page", best_cpu(decode_sealed, args.rounds)),
    ]
    store.close()
    print(f"\nmachine: {platform.platform()}, {os.cpu_count()} cores, Python "
          f"{platform.python_version()}, load {os.getloadavg()[0]:.1f}; {n:,} stored events "
          "(SQLite)\n")
    for label, seconds in rows:
        print(f"{label:42} {seconds / n * 1e6:6.2f} µs CPU per event")


if __name__ == "__main__":
    main()
