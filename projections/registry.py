"""Every projection ficha runs, by name: the one list the runtime, the CLI and status use."""

from __future__ import annotations

from projections.audience import AudienceProjection
from projections.contacts import ContactsProjection
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
