"""Which tenants this deployment knows, for commands that read a tenant's data.

A tenant is known once anything of it exists: contacts or segment definitions or settings
in the read models, or, in the event store, its settings (property definitions included),
its segment catalogue or its API keys. Each check is one lookup by tenant on a key or an
index; the event store is asked only when the read models say nothing (the projectors may
not have caught up with a definition yet, and API keys and property definitions have no
read model).
"""

from __future__ import annotations

from typing import Any

from projections.db import ViewDatabase
from services.domain.api_keys import api_keys_id
from services.domain.segments import catalog_id
from services.domain.tenant import tenant_settings_id
from services.store.contact_store import ContactStore


def known_in_views(db: ViewDatabase, tenant: str) -> bool:
    with db.reading() as cur:
        for statement, key in (
            ("SELECT 1 AS one FROM contacts WHERE tenant = ? LIMIT 1", tenant),
            ("SELECT 1 AS one FROM segment_definitions WHERE tenant = ? LIMIT 1", tenant),
            ("SELECT 1 AS one FROM audience_state WHERE name = ?", f"settings:{tenant}"),
        ):
            cur.execute(statement, (key,))
            if cur.fetchone() is not None:
                return True
    return False


def known_in_store(store: ContactStore, tenant: str) -> bool:
    return any(aggregate_id in store.repository for aggregate_id in
               (tenant_settings_id(tenant), catalog_id(tenant), api_keys_id(tenant)))


def some_known_tenants(db: ViewDatabase, limit: int = 10) -> list[str]:
    """Up to ``limit`` known tenants, by name, from the read models' small tables (the
    audience tallies have a few rows per tenant with contacts; definitions and settings
    are few): a hint for a misspelled name, not an inventory."""
    with db.reading() as cur:
        cur.execute(
            "SELECT tenant FROM (SELECT DISTINCT tenant FROM audience_counts "
            "UNION SELECT tenant FROM segment_definitions "
            "UNION SELECT SUBSTR(name, 10) AS tenant FROM audience_state "
            "WHERE name > 'settings:' AND name < 'settings;') AS known "
            "ORDER BY tenant LIMIT ?",
            (limit + 1,),
        )
        names: list[Any] = [r["tenant"] for r in cur.fetchall()]
    return [str(name) for name in names]
