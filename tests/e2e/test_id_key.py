"""Every process of a deployment derives contact ids with the same key: the event store
records a check value of the first process's key and refuses a process given another
(a second `ficha up` on another data dir against the same PostgreSQL schema, a pod whose
secret lacks FICHA_ID_KEY), before it folds anything."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from services.config import Settings
from services.runtime import Runtime
from services.store.contact_store import IdKeyMismatch

OTHER_KEY = "ab" * 32


async def test_a_process_with_another_id_key_is_refused(
        settings_for: Callable[..., Settings]) -> None:
    first = Runtime(settings_for())
    await first.start()
    await first.stop()

    other = Runtime(settings_for(FICHA_ID_KEY=OTHER_KEY))
    try:
        with pytest.raises(IdKeyMismatch, match=r"made with another id key \(check "
                           r"[0-9a-f]{16}; this process's: [0-9a-f]{16}\): every process of "
                           r"a deployment needs the same key"):
            await other.start()
        assert not other.workers
    finally:
        await other.stop()

    # A projector does not derive contact ids: it may start with any key.
    projector = Runtime(settings_for(FICHA_ID_KEY=OTHER_KEY), roles=frozenset({"projections"}))
    await projector.start()
    await projector.stop()

    again = Runtime(settings_for())
    await again.start()
    assert again.workers
    await again.stop()
