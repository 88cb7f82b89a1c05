"""Exports of the client list and of a segment's members, to CSV and Parquet, streamed.

What to export is an ``ExportQuery``: ``contacts_query`` (the client list's filters,
through the same WHERE builder as ``list_contacts``, in its order) or ``segment_query``
(a segment's members now or at a past instant, through the same conditions as
``segment_members``, in contact id order). Every column is rendered in SQL to one text
form on both backends (timestamps as the domain's fixed-width UTC ISO strings, booleans
as ``true``/``false``, JSON as JSON text), so the formats below share one definition.

Rows are read from a snapshot of their own (``ViewDatabase.snapshot``) a batch at a
time, never all at once: on PostgreSQL the CSV comes straight out of ``COPY (SELECT ...)
TO STDOUT`` and Parquet reads a server-side cursor; on SQLite both read ``fetchmany``.
Memory is bounded by the batch (CSV) or the row group (Parquet), whatever the row count.

Entry points for callers (the CLI, an HTTP route):

* ``csv_chunks`` / ``parquet_chunks`` / ``export_chunks``: generators of byte chunks,
  header (CSV) or footer (Parquet) included; closing one early closes its connection;
* ``export_to_file``: the chunks into a temporary file beside the target, renamed over
  it only when complete;
* ``count_rows``: how many rows an export will have (for a progress bar's total).

The formats are documented in ``docs/export.md``.
"""

from __future__ import annotations

import csv
import io
import os
import time
import uuid
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import msgspec

from projections.audience_queries import MEMBERS_FROM, get_segment, membership_where
from projections.contacts import CARD_COLUMNS, COLUMNS, CONSENT_CHANNELS
from projections.db import ViewDatabase, utc_text
from projections.queries import ContactFilter, contact_where
from services.domain.stamps import utc_iso

if TYPE_CHECKING:
    import pyarrow as pa

ExportFormat = Literal["csv", "parquet"]
FORMATS: tuple[ExportFormat, ...] = ("csv", "parquet")
MEDIA_TYPES: dict[str, str] = {
    "csv": "text/csv; charset=utf-8",
    "parquet": "application/vnd.apache.parquet",
}
Progress = Callable[[int], object]  # called with the number of rows just written

BATCH_ROWS = 5_000  # rows fetched at a time
ROW_GROUP_ROWS = 50_000  # rows per Parquet row group (what a Parquet export holds in memory)
CHUNK_BYTES = 256 * 1024  # CSV bytes gathered before a chunk is handed on


# ------------------------------------------------------------------------------- columns

# How a column is stored, and so how it is rendered and typed:
#   text     TEXT on both backends; an empty string is exported as no value
#   int      INTEGER
#   bool     BOOLEAN (PostgreSQL) / 0-1 INTEGER (SQLite)
#   instant  TIMESTAMPTZ (PostgreSQL) / UTC ISO TEXT (SQLite)
#   iso      UTC ISO TEXT on both (the audience model's timestamps)
#   json     JSONB (PostgreSQL) / JSON TEXT (SQLite): a JSON object
#   tags     JSONB / JSON TEXT: a JSON array of strings
Kind = Literal["text", "int", "bool", "instant", "iso", "json", "tags"]


@dataclass(frozen=True)
class Column:
    name: str
    kind: Kind
    expression: str  # qualified SQL, e.g. c.first_name

    def rendered(self, is_postgres: bool) -> str:
        """The SQL giving this column's export text form (ints stay ints)."""
        e = self.expression
        if self.kind == "text":
            return f"NULLIF({e}, '')"
        if self.kind == "bool":  # `true`/`false` are 1/0 in SQLite
            return f"CASE {e} WHEN true THEN 'true' WHEN false THEN 'false' END"
        if self.kind == "instant":
            return utc_text(e, is_postgres)
        if self.kind in ("json", "tags") and is_postgres:
            return f"{e}::text"
        return e


def _contact_columns(contact_id: str = "c.contact_id", email: str = "c.email"
                     ) -> tuple[Column, ...]:
    return (
        Column("contact_id", "text", contact_id),
        Column("email", "text", email),
        *(Column(name, "text", f"c.{name}") for name in CARD_COLUMNS),
        Column("member_id", "text", "c.member_id"),
        Column("member_status", "text", "c.member_status"),
        *(Column(f"consent_{ch}", "bool", f"c.consent_{ch}") for ch in CONSENT_CHANNELS),
        Column("tags", "tags", "c.tags"),
        Column("properties", "json", "c.properties"),
        Column("first_seen_at", "instant", "c.first_seen_at"),
        Column("last_activity_at", "instant", "c.last_activity_at"),
        *(Column(name, "int", f"c.{name}") for name in COLUMNS if name.endswith("_count")),
    )


CONTACT_COLUMNS = _contact_columns()
# A member's id and email come from the membership, so that every member has a row even
# while the client list has not caught up with the audience model (its card is empty).
SEGMENT_COLUMNS = (
    *_contact_columns(contact_id="h.contact_id", email="f.email"),
    Column("entered_at", "iso", "h.entered_at"),
    Column("exited_at", "iso", "h.exited_at"),
)


# ------------------------------------------------------------------------------- queries

# The client list's default order (``list_contacts``): newest first contact first.
LIST_ORDER = "c.first_seen_at DESC, c.contact_id DESC"


@dataclass(frozen=True)
class ExportQuery:
    """What to export: columns, FROM ... WHERE ... with ``?`` parameters, and an order."""

    columns: tuple[Column, ...]
    source: str
    params: tuple[Any, ...]
    order_by: str
    description: dict[str, Any] = field(default_factory=dict)  # what was asked, as JSON

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]

    def select(self, is_postgres: bool) -> str:
        rendered = ", ".join(c.rendered(is_postgres) for c in self.columns)
        return f"SELECT {rendered} FROM {self.source} ORDER BY {self.order_by}"


def contacts_query(db: ViewDatabase, f: ContactFilter) -> ExportQuery:
    """The client list with ``f``'s filters, in its order (newest first contact first).

    Raises ``QueryError`` for a filter the client list would refuse."""
    clauses, params = contact_where(db, f)
    asked: dict[str, Any] = {"export": "contacts"}
    for name, value in vars(f).items():
        if value is not None:
            asked[name] = utc_iso(value) if isinstance(value, datetime) else value
    return ExportQuery(CONTACT_COLUMNS, f"contacts c WHERE {' AND '.join(clauses)}",
                       tuple(params), LIST_ORDER, asked)


def segment_query(db: ViewDatabase, tenant: str, segment_id: str,
                  as_of: datetime | None = None) -> ExportQuery:
    """A segment's members now, or at ``as_of``, in contact id order, with their cards.

    Raises ``NotFound`` for a segment the tenant never defined."""
    get_segment(db, tenant, segment_id)
    where, params = membership_where(tenant, segment_id, as_of)
    asked: dict[str, Any] = {"export": "segment", "tenant": tenant, "segment_id": segment_id}
    if as_of is not None:
        asked["as_of"] = utc_iso(as_of)
    return ExportQuery(
        SEGMENT_COLUMNS,
        f"{MEMBERS_FROM} LEFT JOIN contacts c ON c.contact_id = h.contact_id WHERE {where}",
        tuple(params), "h.contact_id", asked,
    )


def count_rows(db: ViewDatabase, query: ExportQuery) -> int:
    with db.reading() as cur:
        cur.execute(f"SELECT COUNT(*) AS n FROM {query.source}", query.params)
        row = cur.fetchone()
    return int(row["n"]) if row else 0


def _postgres(statement: str) -> str:
    # ficha's SQL is written with `?` placeholders (see projections.db); the export
    # statements hold no other `?` and no `%`.
    return statement.replace("?", "%s")


def stream_rows(db: ViewDatabase, query: ExportQuery, batch_rows: int = BATCH_ROWS
                ) -> Iterator[list[tuple[Any, ...]]]:
    """The rows, rendered, ``batch_rows`` at a time, from one snapshot."""
    yield from db.stream(query.select(db.is_postgres), query.params, batch_rows,
                         name="ficha_export")


# ----------------------------------------------------------------------------------- CSV


def _csv_text(rows: Sequence[Sequence[Any]]) -> bytes:
    # CRLF ends records (RFC 4180); it also makes the writer quote a field holding a
    # lone CR, which it would leave bare with LF.
    out = io.StringIO()
    csv.writer(out, lineterminator="\r\n").writerows(rows)
    return out.getvalue().encode()


def csv_chunks(db: ViewDatabase, query: ExportQuery, *, progress: Progress | None = None,
               batch_rows: int = BATCH_ROWS) -> Generator[bytes, None, None]:
    """The export as CSV (UTF-8, header, RFC 4180), in chunks of bytes."""
    yield _csv_text([query.names])
    if not db.is_postgres:
        for rows in stream_rows(db, query, batch_rows):
            yield _csv_text(rows)
            if progress:
                progress(len(rows))
        return
    # PostgreSQL writes the CSV itself, quoting as RFC 4180 asks; it sends one row per
    # message, ended by LF, which becomes CRLF here.
    statement = _postgres(f"COPY ({query.select(True)}) TO STDOUT (FORMAT csv)")
    with db.snapshot() as conn, conn.cursor() as cur, cur.copy(statement, query.params) as copy:
        buffer = bytearray()
        pending = 0
        for row in copy:
            buffer += row[:-1]
            buffer += b"\r\n"
            pending += 1
            if len(buffer) >= CHUNK_BYTES or pending >= batch_rows:
                yield bytes(buffer)
                buffer.clear()
                if progress:
                    progress(pending)
                pending = 0
        if buffer:
            yield bytes(buffer)
            if progress:
                progress(pending)


# ------------------------------------------------------------------------------- Parquet


def arrow_schema(query: ExportQuery) -> pa.Schema:
    """Each column's Arrow type: strings, booleans, int32 counts, timestamp[us, UTC],
    tags as list<string> and properties as JSON text (Parquet's JSON logical type)."""
    import pyarrow as pa

    types: dict[str, pa.DataType] = {
        "text": pa.string(), "int": pa.int32(), "bool": pa.bool_(),
        "instant": pa.timestamp("us", tz="UTC"), "iso": pa.timestamp("us", tz="UTC"),
        "json": pa.json_(pa.string()), "tags": pa.list_(pa.string()),
    }
    metadata = {b"ficha.export": msgspec.json.encode(query.description, order="sorted")}
    return pa.schema([pa.field(c.name, types[c.kind]) for c in query.columns],
                     metadata=metadata)


def _arrow_array(kind: Kind, values: Sequence[Any], type_: pa.DataType) -> pa.Array:
    import pyarrow as pa

    if kind in ("text", "int"):
        return pa.array(values, type_)
    if kind == "tags":
        return pa.array([None if v is None else msgspec.json.decode(v) for v in values], type_)
    text = pa.array(values, pa.string())
    if kind == "json":
        return pa.ExtensionArray.from_storage(type_, text)
    return text.cast(type_)  # bool from true/false, timestamps from ISO text


class _Chunks:
    """A write-only file for the Parquet writer that hands on what it was given."""

    closed = False

    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def write(self, data: Any) -> int:
        self._parts.append(bytes(data))
        return len(data)

    def flush(self) -> None:
        pass

    def take(self) -> bytes:
        data = b"".join(self._parts)
        self._parts.clear()
        return data


def parquet_chunks(db: ViewDatabase, query: ExportQuery, *, progress: Progress | None = None,
                   batch_rows: int = BATCH_ROWS, row_group_rows: int = ROW_GROUP_ROWS
                   ) -> Generator[bytes, None, None]:
    """The export as a Parquet file (zstd), in chunks of bytes: one per row group, then
    the footer. A row group holds up to ``row_group_rows`` rows."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = arrow_schema(query)
    sink = _Chunks()
    writer = pq.ParquetWriter(sink, schema, compression="zstd")
    kinds = [c.kind for c in query.columns]
    waiting: list[pa.RecordBatch] = []
    held = 0

    def flush() -> bytes:
        nonlocal held
        writer.write_table(pa.Table.from_batches(waiting, schema), row_group_size=held)
        if progress:
            progress(held)
        waiting.clear()
        held = 0
        return sink.take()

    try:
        for rows in stream_rows(db, query, batch_rows):
            columns = zip(*rows, strict=True)
            arrays = [_arrow_array(kind, values, f.type)
                      for kind, values, f in zip(kinds, columns, schema, strict=True)]
            waiting.append(pa.RecordBatch.from_arrays(arrays, schema=schema))
            held += len(rows)
            if held >= row_group_rows:
                yield flush()
        if held:
            yield flush()
    finally:
        writer.close()
    yield sink.take()


def export_chunks(db: ViewDatabase, query: ExportQuery, fmt: ExportFormat, *,
                  progress: Progress | None = None, batch_rows: int = BATCH_ROWS,
                  row_group_rows: int = ROW_GROUP_ROWS) -> Generator[bytes, None, None]:
    """The export in ``fmt``, in chunks of bytes (see ``csv_chunks``, ``parquet_chunks``)."""
    if fmt == "csv":
        return csv_chunks(db, query, progress=progress, batch_rows=batch_rows)
    if fmt == "parquet":
        return parquet_chunks(db, query, progress=progress, batch_rows=batch_rows,
                              row_group_rows=row_group_rows)
    raise ValueError(f"unknown export format {fmt!r}: use one of {', '.join(FORMATS)}")


# ---------------------------------------------------------------------------------- file


@dataclass(frozen=True)
class ExportResult:
    path: Path
    format: ExportFormat
    rows: int
    bytes: int
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), "format": self.format, "rows": self.rows,
                "bytes": self.bytes, "seconds": round(self.seconds, 3)}


def export_to_file(db: ViewDatabase, query: ExportQuery, fmt: ExportFormat, path: Path, *,
                   progress: Progress | None = None, batch_rows: int = BATCH_ROWS,
                   row_group_rows: int = ROW_GROUP_ROWS) -> ExportResult:
    """Write the export to ``path``: into a hidden temporary file in the same folder,
    flushed to disk, then renamed over ``path``. A failed or interrupted export leaves
    no file at ``path`` (nor changes one already there), and removes its temporary file.

    Raises OSError when the folder is missing or not writable."""
    started = time.perf_counter()
    rows = 0

    def counted(n: int) -> None:
        nonlocal rows
        rows += n
        if progress:
            progress(n)

    path = Path(path)
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.part")
    with temporary.open("xb") as out:
        try:
            for chunk in export_chunks(db, query, fmt, progress=counted,
                                       batch_rows=batch_rows, row_group_rows=row_group_rows):
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
            size = out.tell()
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise
    try:
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return ExportResult(path, fmt, rows, size, time.perf_counter() - started)
