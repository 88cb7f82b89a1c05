"""The shapes of the answers of the contacts and segments routes, for the OpenAPI document.

The routes answer rows as the database selects them (``projections.json_rows``: dicts,
stored JSON embedded unread); these Structs only describe them, field by field, so that
an integrator can generate a client. They are made from the same column tables the
queries select (``projections.queries``), and a test checks real answers against the
document.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec

from projections.contacts import CONTACT_TYPES
from projections.queries import LIST_TYPES, LIST_TYPES_OF_CONTACT, TIMELINE_ENTRY_TYPES
from services.api.deps import Item, Page

# Columns that always hold a value (NOT NULL in ``projections.contacts``' tables).
_ALWAYS = {"tenant", "contact_id", "email", "properties", "tags", "forms_count",
           "surveys_count", "bookings_count", "purchases_count", "events_count", "version",
           "list_id", "state", "changed_at", "occurred_at", "event_id", "type", "kind",
           "source", "summary", "data"}


def _python_type(name: str, pg_type: str) -> Any:
    if pg_type == "jsonb":
        return list[str] if name == "tags" else dict[str, Any]
    kind: Any = {"integer": int, "boolean": bool}.get(pg_type, str)
    if pg_type == "timestamptz":
        kind = _INSTANT
    return kind if name in _ALWAYS else kind | None


# An instant as the API writes it.
_INSTANT = Annotated[str, msgspec.Meta(
    description="An instant in UTC with microseconds, e.g. 2026-11-23T10:15:00.000000Z")]


def _struct(name: str, columns: tuple[tuple[str, str], ...],
            extra: tuple[tuple[str, Any], ...] = ()) -> type[msgspec.Struct]:
    return msgspec.defstruct(
        name, [(column, _python_type(column, pg_type)) for column, pg_type in columns]
        + list(extra), kw_only=True)


ContactListRow = _struct("ContactListRow", LIST_TYPES_OF_CONTACT)
ListMembership = _struct("ListMembership", LIST_TYPES)
TimelineEntry = _struct("TimelineEntry", TIMELINE_ENTRY_TYPES)
ContactCard = _struct("ContactCard", CONTACT_TYPES, (
    ("lists", list[ListMembership]),  # type: ignore[valid-type]
    ("timeline", list[TimelineEntry]),  # type: ignore[valid-type]
))


class SegmentDefinition(msgspec.Struct, kw_only=True):
    segment_id: str
    name: str
    version: int
    deleted: bool
    created_at: _INSTANT
    changed_at: _INSTANT
    rule: Annotated[dict[str, Any], msgspec.Meta(
        description="The rule, as contracts/schemas/segment-rule.json describes it")]
    members: Annotated[int, msgspec.Meta(description="Members now")]


class SegmentMember(msgspec.Struct, kw_only=True):
    contact_id: str
    email: str
    entered_at: _INSTANT
    exited_at: _INSTANT | None  # set for a member at an earlier as_of who has left since
    enter_cause: Annotated[str, msgspec.Meta(description="event, clock or definition")]
    enter_ref: Annotated[str, msgspec.Meta(
        description="The event's event_id, clock (or rfm), or <segment>@v<version>")]


class SegmentsPage(Page):
    data: list[SegmentDefinition]


class SegmentItem(Item):
    data: SegmentDefinition


class MembersPage(Page):
    data: list[SegmentMember]


class ContactsPage(Page):
    data: list[ContactListRow]  # type: ignore[valid-type]


class TimelinePage(Page):
    data: list[TimelineEntry]  # type: ignore[valid-type]


class CardItem(Item):
    data: ContactCard  # type: ignore[valid-type]

