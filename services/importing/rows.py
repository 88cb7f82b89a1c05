"""One CSV row → the contract events it stands for, each validated by the decoder.

A row becomes one ``contact_updated`` (the card fields, tags, properties, contact type and
lead status; an email alone still creates the contact), plus one ``list_subscribed`` or
``list_unsubscribed`` per list column with a value and one ``consent_changed`` per consent
column with a value. Each body goes through ``contracts.decode.decode`` (and the tenant's
property and type definitions, when given), so an accepted row is exactly what the ingest
workers accept; the bytes checked are the bytes published.

Event ids are ``import-`` + a UUIDv5 of the tenant, the file's SHA-256, the mapping's
fingerprint, the row's line number, the event type and its list or channel: the same file
imported again with the same mapping publishes the same ids, and ficha stores each once.

A rejected row publishes nothing; every cell at fault is reported with the CSV column and
the decoder's sentence. A second row for the same email is refused (``FirstRowPerEmail``).
Pure: no I/O.
"""

from __future__ import annotations

import csv
import hashlib
import math
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, NamedTuple
from uuid import UUID, uuid5

import msgspec

from contracts.decode import Rejection, decode
from contracts.events import InboundEvent
from services.domain.tenant import TenantSettings
from services.importing.mapping import FALSY, PENDING, TRUTHY, Column, ColumnPlan
from services.instants import parse_instant

# Fixed for ever: changing it would change every import's event ids.
IMPORT_NAMESPACE = UUID("4f1c1d0e-8a52-4c1b-9a53-5f1e0c2b7d11")
DEFAULT_SOURCE = "import"

_INTEGER = re.compile(r"^[+-]?\d+$")
_TAG_PATH = re.compile(r"^(tags_added|tags_removed)\[(\d+)\]")
_PHONE_NOISE = re.compile(r"[\s().-]")
_BOUNDARY = frozenset(" :[.")


@dataclass(frozen=True)
class RowProblem:
    """One reason a row was rejected: the line it starts on, the CSV column ("" for the
    row as a whole), a sentence, and the decoder's code (or the importer's own)."""

    line: int
    column: str
    reason: str
    code: str = "invalid_field"


class PreparedEvent(NamedTuple):
    """An event ready to publish: its bytes are the ones the decoder accepted."""

    type: str
    subject: str
    body: bytes
    event_id: str


class MappedRow(NamedTuple):
    """A row's events (accepted) or its problems (rejected); ``email`` normalised."""

    line: int
    email: str
    events: list[PreparedEvent]
    problems: list[RowProblem]


@dataclass
class Chunk:
    """Consecutive records of a file, mapped, in file order (blank rows only counted)."""

    rows_read: int = 0
    rows_empty: int = 0
    rows: list[MappedRow] = field(default_factory=list)


Record = tuple[int, "list[str] | csv.Error"]


def map_chunks(records: Iterable[Record], mapper: RowMapper, size: int,
               share: tuple[int, int] = (0, 1)) -> Iterator[Chunk]:
    """Map records ``size`` at a time; blank rows are counted and skipped, a record the
    csv module could not read is rejected as a whole. With ``share`` = (k, n) only every
    n-th chunk from the k-th is mapped and yielded (n processes share a file)."""
    mine, sharing = share
    number = 0
    chunk = Chunk()
    for line, cells in records:
        chunk.rows_read += 1
        if number % sharing != mine:
            pass
        elif isinstance(cells, csv.Error):
            chunk.rows.append(MappedRow(line, "", [], [RowProblem(
                line, "", f"the CSV is malformed here: {cells}", "malformed_csv")]))
        elif not any(cell.strip() for cell in cells):
            chunk.rows_empty += 1
        else:
            chunk.rows.append(mapper.map_row(line, cells))
        if chunk.rows_read >= size:
            if number % sharing == mine:
                yield chunk
            number += 1
            chunk = Chunk()
    if chunk.rows_read and number % sharing == mine:
        yield chunk


class FirstRowPerEmail:
    """A file holds each contact once: the first accepted row of an email is kept, a later
    one is refused, naming the line of the first (nothing is merged silently)."""

    def __init__(self, column: str) -> None:
        self.column = column
        self.lines: dict[str, int] = {}

    def check(self, row: MappedRow) -> MappedRow:
        if row.problems:
            return row
        first = self.lines.setdefault(row.email, row.line)
        if first == row.line:
            return row
        return MappedRow(row.line, row.email, [], [RowProblem(
            row.line, self.column, f"{row.email} is already on line {first}: a file holds "
            "each contact once; merge the two rows, or import the second from another file",
            "duplicate_email")])


def import_key(tenant: str, file_sha256: str, plan: ColumnPlan) -> str:
    return f"{tenant}:{file_sha256}:{plan.fingerprint()}"


def import_event_id(key: str, line: int, kind: str, target: str = "") -> str:
    return f"import-{uuid5(IMPORT_NAMESPACE, f'{key}:{line}:{kind}:{target}')}"


class EventIds:
    """``import_event_id`` for one key, without re-hashing the key for every event."""

    def __init__(self, key: str) -> None:
        self._base = hashlib.sha1(IMPORT_NAMESPACE.bytes + f"{key}:".encode())

    def __call__(self, line: int, kind: str, target: str = "") -> str:
        digest = self._base.copy()
        digest.update(f"{line}:{kind}:{target}".encode())
        h = digest.hexdigest()
        # RFC 4122 version 5 and variant bits, as uuid.uuid5 sets them.
        variant = "89ab"[int(h[16], 16) & 3]
        return f"import-{h[:8]}-{h[8:12]}-5{h[13:16]}-{variant}{h[17:20]}-{h[20:32]}"


def instant_text(moment: datetime) -> str:
    """An RFC 3339 instant for ``occurred_at``, in UTC, to the millisecond."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds")


class RowMapper:
    """Maps the rows of one file, each on its own (``FirstRowPerEmail`` then refuses a
    second row for an email, in file order)."""

    def __init__(
        self,
        plan: ColumnPlan,
        *,
        tenant: str,
        file_sha256: str,
        occurred_at: datetime,
        source: str = DEFAULT_SOURCE,
        definitions: TenantSettings | None = None,
    ) -> None:
        self.plan = plan
        self.tenant = tenant
        self.source = source
        self.definitions = definitions
        self.key = import_key(tenant, file_sha256, plan)
        self.event_id = EventIds(self.key)
        self.occurred_at = instant_text(occurred_at)
        self.width = len(plan.headers)
        self.email = plan.email
        self.fields = [(c.index, c.target.name) for c in plan.of_kind("field")
                       if c.target.name != "email"]
        self.tags = {kind: plan.of_kind(kind) for kind in ("tags_added", "tags_removed")}
        self.properties = [(c, self._property_type(c)) for c in plan.of_kind("property")]
        self.lists = plan.of_kind("list")
        self.consents = plan.of_kind("consent")
        moments = plan.of_kind("occurred_at")
        self.moment = moments[0] if moments else None
        self.subjects = {kind: f"ficha.in.{tenant}.{kind}" for kind in (
            "contact_updated", "list_subscribed", "list_unsubscribed", "consent_changed")}

    def _property_type(self, column: Column) -> str:
        if column.target.type:
            return column.target.type
        defined = self.definitions.properties.get(column.target.name) if self.definitions else None
        if defined is not None and defined.type in ("number", "boolean"):
            return f"defined-{defined.type}"
        return "text"

    # ------------------------------------------------------------------------- a row

    def map_row(self, line: int, cells: list[str]) -> MappedRow:
        """The row's events, or (no events and) every problem found in it."""
        events, problems, email = self._map(line, cells)
        return MappedRow(line, email, events, problems)

    def _map(self, line: int, cells: list[str]
             ) -> tuple[list[PreparedEvent], list[RowProblem], str]:
        if len(cells) != self.width:
            return [], [RowProblem(
                line, "", f"the row has {len(cells)} cells but the header has {self.width} "
                "columns: quote cells that contain the delimiter or a line break",
                "row_width")], ""
        problems: list[RowProblem] = []
        occurred_at = self.occurred_at
        if self.moment is not None and (text := cells[self.moment.index].strip()):
            moment = parse_instant(text)
            if isinstance(moment, str):
                problems.append(RowProblem(line, self.moment.header, moment))
            else:
                occurred_at = moment.isoformat()
        email_cell = cells[self.email.index]
        if not email_cell.strip():
            problems.append(RowProblem(
                line, self.email.header, "the email is empty: every row needs the contact's "
                "email address", "missing_field"))
        properties, property_problems = self._properties(line, cells)
        problems += property_problems
        others, other_problems = self._list_and_consent(line, cells)
        problems += other_problems
        if problems and not email_cell.strip():
            return [], problems, ""
        update, decoded = self._checked_update(line, cells, properties, occurred_at, problems)
        if problems or update is None or decoded is None:
            return [], problems, ""
        email = decoded.contact.email
        events = [update]
        for kind, target, fields in others:
            event = self._event(line, kind, target, occurred_at,
                                {"contact": {"email": email_cell}, **fields})
            other = decode(event.subject, event.body)
            if isinstance(other, Rejection):  # the same email and instant passed above
                return [], [RowProblem(line, "", other.detail, other.code)], email
            events.append(event)
        return events, [], email

    def _checked_update(
        self, line: int, cells: list[str], properties: dict[int, tuple[str, Any]],
        occurred_at: str, problems: list[RowProblem],
    ) -> tuple[PreparedEvent | None, InboundEvent | None]:
        """The row's contact_updated and its decoded form, or (None, None) with every
        problem the decoder finds appended: each time it names a column, that column is
        left out and the event checked again, so one pass reports all bad cells."""
        dropped: set[int] = set()
        while True:
            fields = self._contact_update(cells, properties, dropped)
            event = self._event(line, "contact_updated", "", occurred_at, fields)
            result = self._validated(event)
            if isinstance(result, InboundEvent):
                return (event, result) if not dropped else (None, None)
            column = self._column_named_by(result.detail, self._tag_owners(cells, dropped))
            problems.append(RowProblem(line, column.header if column else "", result.detail,
                                       result.code))
            if column is None or column.index in dropped or column is self.email:
                return None, None
            dropped.add(column.index)

    def _event(self, line: int, kind: str, target: str, occurred_at: str,
               fields: dict[str, Any]) -> PreparedEvent:
        event_id = self.event_id(line, kind, target)
        body = {"event_id": event_id, "type": kind, "tenant": self.tenant,
                "occurred_at": occurred_at, "source": self.source, **fields}
        return PreparedEvent(kind, self.subjects[kind], msgspec.json.encode(body), event_id)

    def _validated(self, event: PreparedEvent) -> InboundEvent | Rejection:
        """The decoder's verdict on the bytes to publish, then the tenant's definitions."""
        result = decode(event.subject, event.body)
        if isinstance(result, InboundEvent) and self.definitions is not None:
            broken = self.definitions.event_problem(result)
            if broken is not None:
                return Rejection(code=broken[0], detail=broken[1], tenant=self.tenant,
                                 type=event.type)
        return result

    # ----------------------------------------------------------------- the contact

    def _contact_update(self, cells: list[str], properties: dict[int, tuple[str, Any]],
                        dropped: set[int]) -> dict[str, Any]:
        """The contact_updated fields of a row, leaving out the ``dropped`` columns."""
        contact: dict[str, Any] = {"email": cells[self.email.index]}
        update: dict[str, Any] = {"contact": contact}
        for index, name in self.fields:
            if index in dropped:
                continue
            value = cells[index].strip()
            if not value:
                continue
            if name == "phone":
                value = _PHONE_NOISE.sub("", value)
            if name in ("contact_type", "lead_status"):
                update[name] = value
            else:
                contact[name] = value
        for kind, columns in self.tags.items():
            labels = [label for column in columns if column.index not in dropped
                      for label in self._split(cells[column.index])]
            if labels:
                update[kind] = labels
        chosen = {name: value for index, (name, value) in properties.items()
                  if index not in dropped}
        if chosen:
            update["properties"] = chosen
        return update

    def _tag_owners(self, cells: list[str], dropped: set[int]) -> dict[str, list[Column]]:
        """For tags_added and tags_removed, the column each label of the event came from."""
        return {kind: [column for column in columns if column.index not in dropped
                       for _ in self._split(cells[column.index])]
                for kind, columns in self.tags.items()}

    def _split(self, text: str) -> list[str]:
        return [part.strip() for part in text.split(self.plan.tag_separator) if part.strip()]

    def _properties(
        self, line: int, cells: list[str]
    ) -> tuple[dict[int, tuple[str, Any]], list[RowProblem]]:
        """Column index → (property name, converted value), and the cells that convert not."""
        values: dict[int, tuple[str, Any]] = {}
        problems: list[RowProblem] = []
        for column, kind in self.properties:
            text = cells[column.index].strip()
            if not text:
                continue
            value = self._convert(text, kind)
            if isinstance(value, _Wrong):
                problems.append(RowProblem(line, column.header, value.reason))
            else:
                values[column.index] = (column.target.name, value)
        return values, problems

    def _convert(self, text: str, kind: str) -> Any:
        if kind == "list":
            return self._split(text)
        if kind in ("number", "defined-number"):
            number = _number(text)
            if number is not None:
                return number
            if kind == "defined-number":
                return text  # the tenant's definition refuses it, in the pipeline's words
            hint = " (use a dot for decimals)" if "," in text else ""
            return _Wrong(f"{text!r} is not a number{hint}: write it like 38 or -2.5")
        if kind in ("boolean", "defined-boolean"):
            flag = self._flag(text)
            if flag is not None:
                return flag
            if kind == "defined-boolean":
                return text
            return _Wrong(f"{text!r} is not true or false: use {self._vocabulary()}")
        return text

    def _flag(self, text: str) -> bool | None:
        folded = text.lower()
        if folded in self.plan.truthy:
            return True
        if folded in self.plan.falsy:
            return False
        return None

    def _vocabulary(self) -> str:
        if self.plan.truthy == frozenset(TRUTHY) and self.plan.falsy == frozenset(FALSY):
            return "yes or no (or 1/0, true/false, y/n, x, on/off, subscribed/unsubscribed, " \
                   "granted/revoked)"
        return (f"one of {', '.join(sorted(self.plan.truthy))} for yes, or "
                f"{', '.join(sorted(self.plan.falsy))} for no")

    # ------------------------------------------------------------ lists and consent

    def _list_and_consent(
        self, line: int, cells: list[str]
    ) -> tuple[list[tuple[str, str, dict[str, Any]]], list[RowProblem]]:
        events: list[tuple[str, str, dict[str, Any]]] = []
        problems: list[RowProblem] = []
        for column in self.lists:
            text = cells[column.index].strip()
            if not text:
                continue
            list_id = column.target.name
            if text.lower() == PENDING:
                events.append(("list_subscribed", list_id,
                               {"list_id": list_id, "double_opt_in": True}))
                continue
            flag = self._flag(text)
            if flag is None:
                problems.append(RowProblem(line, column.header, (
                    f"{text!r} is not a subscription value: use {self._vocabulary()}, "
                    f"or {PENDING} (double opt-in)")))
            elif flag:
                body: dict[str, Any] = {"list_id": list_id}
                if column.target.double_opt_in:
                    body["double_opt_in"] = True
                events.append(("list_subscribed", list_id, body))
            else:
                events.append(("list_unsubscribed", list_id, {"list_id": list_id}))
        for column in self.consents:
            text = cells[column.index].strip()
            if not text:
                continue
            flag = self._flag(text)
            if flag is None:
                problems.append(RowProblem(line, column.header, (
                    f"{text!r} is not a consent value: use {self._vocabulary()}")))
            else:
                channel = column.target.name
                events.append(("consent_changed", channel,
                               {"channel": channel, "granted": flag}))
        return events, problems

    # ------------------------------------------------------------- back to columns

    def _column_named_by(self, detail: str, owners: dict[str, list[Column]]) -> Column | None:
        tag = _TAG_PATH.match(detail)
        if tag:
            labels = owners.get(tag.group(1), [])
            position = int(tag.group(2))
            return labels[position] if position < len(labels) else None
        best: tuple[int, Column | None] = (0, None)
        for path, column in self._paths():
            if not detail.startswith(path) or len(path) <= best[0]:
                continue
            if len(detail) == len(path) or detail[len(path)] in _BOUNDARY:
                best = (len(path), column)
        return best[1]

    def _paths(self) -> list[tuple[str, Column | None]]:
        paths: list[tuple[str, Column | None]] = [
            ("contact.email", self.email), ("occurred_at", self.moment)]
        for column in self.plan.of_kind("field"):
            name = column.target.name
            if name in ("contact_type", "lead_status"):
                paths.append((name, column))
            elif name != "email":
                paths.append((f"contact.{name}", column))
        for column, _ in self.properties:
            paths.append((f"properties.{column.target.name}", column))
            paths.append((f"property {column.target.name}", column))
        return paths


class _Wrong:
    """A cell value that cannot be converted, with the sentence saying why."""

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason


def _number(text: str) -> int | float | None:
    if _INTEGER.match(text):
        return int(text)
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None
