"""TenantChecks reads a tenant's definitions at most once per ``ttl``, and a definition
made meanwhile applies once the cached copy is stale (real SQLite event store)."""

from __future__ import annotations

from pathlib import Path

from services.catalog import TenantCommands
from services.ingest.tenant_checks import TenantChecks
from services.store.contact_store import ContactStore
from tests.backends import make_settings
from tests.factories import decode_dict, event_dict


def test_definitions_are_read_again_once_stale(tmp_path: Path) -> None:
    store = ContactStore(make_settings(tmp_path))
    now = [100.0]
    checks = TenantChecks(store, ttl=2.0, clock=lambda: now[0])
    event = decode_dict(event_dict("form_submitted", event_id="e1", tenant="acme",
                                   form_id="f", properties={"shoe_size": "big"}))
    assert checks.stale({"acme"})
    checks.refresh({"acme"})
    assert not checks.stale({"acme"})
    assert checks.problem(event) is None  # nothing defined yet

    TenantCommands(store).define_property("acme", "shoe_size", "number")
    now[0] += 1.9
    assert not checks.stale({"acme"})
    assert checks.problem(event) is None  # the cached copy is still used
    assert checks.stale({"acme", "other"})  # a tenant never read is stale

    now[0] += 0.1
    assert checks.stale({"acme"})
    checks.refresh({"acme"})
    problem = checks.problem(event)
    assert problem is not None and "shoe_size" in problem[1]
    store.close()
