"""Every projection ficha runs, by name: the one list the runtime, the CLI and status use."""

from __future__ import annotations

from projections.audience import AudienceProjection
from projections.contacts import ContactsProjection
from projections.db import ViewDatabase
from projections.runner import Projection


def all_projections() -> list[Projection]:
    return [ContactsProjection(), AudienceProjection()]


def projection_names() -> list[str]:
    return [p.name for p in all_projections()]


def projection_named(name: str) -> Projection:
    for projection in all_projections():
        if projection.name == name:
            return projection
    raise KeyError(f"unknown projection {name!r}; projections are {', '.join(projection_names())}")


def lost_read_models(db: ViewDatabase) -> list[str]:
    """The projections once set up in ``db`` (their layout version is recorded) whose
    tables are not all there: dropped by hand, or a layout reset that did not finish.
    Empty on a database ficha never set up."""
    with db.reading() as cur:
        if not db.existing_tables(cur, ["ficha_projection_versions"]):
            return []
        cur.execute("SELECT name FROM ficha_projection_versions")
        recorded = {r["name"] for r in cur.fetchall()}
        set_up = [p for p in all_projections() if p.name in recorded]
        present = db.existing_tables(cur, [t for p in set_up for t in p.tables])
    return [p.name for p in set_up if not set(p.tables) <= present]
