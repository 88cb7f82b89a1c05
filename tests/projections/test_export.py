"""Exports on both backends: CSV and Parquet equal the client list and the segment member
list they stream, odd text and properties survive, memory does not grow with the rows,
and a file is only ever complete."""

from __future__ import annotations

import csv
import io
import json
import tracemalloc
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from contracts.events import InboundEvent
from projections.audience import AudienceProjection
from projections.audience_queries import NotFound, segment_members
from projections.contacts import CONSENT_CHANNELS, ContactsProjection
from projections.db import ViewDatabase
from projections.export import (
    FORMATS,
    ExportFormat,
    ExportQuery,
    contacts_query,
    count_rows,
    csv_chunks,
    export_chunks,
    export_to_file,
    parquet_chunks,
    segment_query,
)
from projections.queries import LIST_COLUMNS, ContactFilter, QueryError, get_card, list_contacts
from projections.runner import ProjectionRunner
from services.catalog import ClockCommands, SegmentCommands
from services.config import Settings
from services.demo import generate_history
from services.domain.identity import ContactIdentity
from services.domain.stamps import utc_iso
from services.ingest.cache import ContactCache
from services.ingest.folding import BatchFolder
from services.store.contact_store import ContactStore
from tests.factories import decode_dict, make_event

START = datetime(2026, 1, 5, tzinfo=UTC)


@dataclass
class ReadModels:
    """The event store and both projections, fed through the real fold."""

    store: ContactStore
    db: ViewDatabase
    runners: list[ProjectionRunner]
    folder: BatchFolder
    position: int = 0

    def ingest(self, events: list[InboundEvent], batch: int = 250,
               project_each_batch: bool = False) -> None:
        for start in range(0, len(events), batch):
            self.position += 1
            self.folder.fold_and_commit(events[start : start + batch], self.position)
            if project_each_batch:
                self.catch_up()
        self.catch_up()

    def catch_up(self) -> None:
        for runner in self.runners:
            runner.catch_up()


@contextmanager
def read_models(settings: Settings) -> Iterator[ReadModels]:
    store = ContactStore(settings)
    db = ViewDatabase(settings)
    runners = [ProjectionRunner(store, db, projection)
               for projection in (ContactsProjection(), AudienceProjection())]
    for runner in runners:
        runner.setup()
    folder = BatchFolder(store, ContactIdentity(settings.id_key), ContactCache(20_000), "p0")
    try:
        yield ReadModels(store, db, runners, folder)
    finally:
        db.close()
        store.close()


@pytest.fixture
def models(settings: Settings) -> Iterator[ReadModels]:
    with read_models(settings) as built:
        yield built


def demo(n: int, seed: int = 3, tenant: str = "acme") -> list[InboundEvent]:
    return [decode_dict(d) for d in generate_history(tenant, n, seed=seed, start=START,
                                                     days=300)]


# ------------------------------------------------------------- reading an export back


def _typed(kind: str, text: str) -> Any:
    if text == "":
        return None
    if kind == "bool":
        return {"true": True, "false": False}[text]
    if kind == "int":
        return int(text)
    if kind in ("json", "tags"):
        return json.loads(text)
    return text


def from_csv(data: bytes, query: ExportQuery) -> list[dict[str, Any]]:
    """Rows of an exported CSV, read with the standard library's RFC 4180 reader."""
    records = list(csv.reader(io.StringIO(data.decode("utf-8"), newline="")))
    assert records[0] == query.names
    return [{c.name: _typed(c.kind, value) for c, value in zip(query.columns, r, strict=True)}
            for r in records[1:]]


def from_parquet(data: bytes, query: ExportQuery) -> list[dict[str, Any]]:
    table = pq.read_table(io.BytesIO(data))
    assert table.column_names == query.names
    out = []
    for row in table.to_pylist():
        for c in query.columns:
            value = row[c.name]
            if c.kind in ("instant", "iso") and value is not None:
                row[c.name] = utc_iso(value)
            elif c.kind == "json" and value is not None:
                row[c.name] = json.loads(value)
        out.append(row)
    return out


def exported(db: ViewDatabase, query: ExportQuery, fmt: ExportFormat, batch_rows: int = 5000,
             row_group_rows: int = 50_000) -> list[dict[str, Any]]:
    data = b"".join(export_chunks(db, query, fmt, batch_rows=batch_rows,
                                  row_group_rows=row_group_rows))
    return from_csv(data, query) if fmt == "csv" else from_parquet(data, query)


def card_row(db: ViewDatabase, tenant: str, email: str, query: ExportQuery
             ) -> dict[str, Any]:
    """What an export row should hold for a contact, from its card."""
    card = get_card(db, tenant, email)
    assert card is not None
    row = {}
    for c in query.columns:
        value = card.get(c.name)
        row[c.name] = None if value == "" else value
    return row


def whole_list(db: ViewDatabase, f: ContactFilter) -> list[dict[str, Any]]:
    """The client list, paged through to its end."""
    rows: list[dict[str, Any]] = []
    cursor = None
    while True:
        page, cursor = list_contacts(db, f, limit=41, cursor=cursor)
        rows.extend(page)
        if cursor is None:
            return rows


# ------------------------------------------------------------------------- contacts


def test_exports_equal_the_client_list_for_the_same_filters(models: ReadModels) -> None:
    models.ingest(demo(1500))
    db = models.db
    with db.reading() as cur:
        cur.execute("SELECT DISTINCT language, country FROM contacts WHERE tenant = 'acme'")
        seen = cur.fetchall()
        cur.execute("SELECT DISTINCT label FROM contact_tags WHERE tenant = 'acme'")
        labels = sorted(r["label"] for r in cur.fetchall())
    languages = sorted({r["language"] for r in seen if r["language"]})
    countries = sorted({r["country"] for r in seen if r["country"]})
    assert len(languages) > 1 and len(countries) > 1 and labels
    moments = [START + timedelta(days=d) for d in (0, 60, 120, 200)]
    list_columns = [c.strip() for c in LIST_COLUMNS.split(",")]

    def check(f: ContactFilter) -> int:
        listed = whole_list(db, f)
        query = contacts_query(db, f)
        assert count_rows(db, query) == len(listed)
        expected = [card_row(db, "acme", r["email"], query) for r in listed]
        for fmt in FORMATS:
            rows = exported(db, query, fmt, batch_rows=17, row_group_rows=40)
            assert rows == expected, (fmt, f)
            assert [{k: r[k] for k in list_columns} for r in rows] == [
                {k: r[k] for k in list_columns} for r in listed]
        return len(listed)

    everyone = check(ContactFilter(tenant="acme"))
    assert everyone > 100

    @hypothesis_settings(max_examples=25, deadline=None,
                         suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(st.builds(
        ContactFilter,
        tenant=st.just("acme"),
        language=st.none() | st.sampled_from([*languages, "es", "en"]),
        country=st.none() | st.sampled_from(countries),
        tag=st.none() | st.sampled_from(labels).map(str.upper),
        consent=st.none() | st.sampled_from(CONSENT_CHANNELS),
        no_consent=st.none() | st.sampled_from(CONSENT_CHANNELS),
        first_seen_from=st.none() | st.sampled_from(moments),
        first_seen_to=st.none() | st.sampled_from(moments),
        email_prefix=st.none() | st.sampled_from(["a", "m", "maria"]),
    ))
    def check_any(f: ContactFilter) -> None:
        check(f)

    check_any()
    assert 0 < check(ContactFilter(tenant="acme", language="es", consent="email")) < everyone
    assert check(ContactFilter(tenant="someone-else")) == 0
    with pytest.raises(QueryError, match="unknown consent channel"):
        contacts_query(db, ContactFilter(tenant="acme", consent="fax"))


ODD_TEXT = st.text(
    alphabet=st.one_of(
        st.sampled_from(list(',"\n\r\t;\'\\ ') + ["é", "ñ", "ß", "中", "😀", "\u200b", "\u2028"]),
        st.characters(exclude_categories=["Cs"], exclude_characters="\x00"),
    ),
    min_size=1, max_size=40,
).filter(lambda s: s.strip() != "")
PROPERTY_VALUES = st.one_of(
    ODD_TEXT, st.integers(-10**12, 10**12), st.booleans(),
    st.floats(allow_nan=False, allow_infinity=False, width=32),
    st.lists(ODD_TEXT, max_size=3),
)


def test_odd_text_and_properties_round_trip(models: ReadModels) -> None:
    db = models.db
    counter = iter(range(10**6))

    @hypothesis_settings(max_examples=30, deadline=None,
                         suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(first_name=ODD_TEXT, city=ODD_TEXT, tags=st.lists(ODD_TEXT, max_size=3),
           properties=st.dictionaries(st.from_regex(r"[A-Za-z0-9_.-]{1,12}", fullmatch=True),
                                      PROPERTY_VALUES, max_size=4))
    def check(first_name: str, city: str, tags: list[str], properties: dict[str, Any]) -> None:
        n = next(counter)
        email = f"odd{n}@example.com"
        models.ingest([make_event(
            "form_submitted", event_id=f"odd-{n}", email=email, form_id="f",
            occurred_at=(START + timedelta(minutes=n)).isoformat(),
            contact={"first_name": first_name, "city": city}, tags=tags, properties=properties,
        )])
        query = contacts_query(db, ContactFilter(tenant="acme", email_prefix=f"odd{n}@"))
        expected = card_row(db, "acme", email, query)
        assert (expected["first_name"], expected["city"]) == (first_name, city)
        # (PostgreSQL's jsonb may print a large float as an integer: the card says so too.)
        assert sorted(expected["properties"]) == sorted(properties)
        for fmt in FORMATS:
            assert exported(db, query, fmt) == [expected], fmt

    check()
    query = contacts_query(db, ContactFilter(tenant="acme"))
    # Every CSV record is parsed back whole (quoting keeps CR and LF inside fields).
    assert len(exported(db, query, "csv")) == count_rows(db, query) >= 1


# -------------------------------------------------------------------------- segments


def test_segment_exports_equal_the_member_list_now_and_as_of(models: ReadModels) -> None:
    segments = SegmentCommands(models.store)
    segments.define("acme", "buyers-30d", "bought in 30 days",
                    {"count": "purchases", "within_days": 30, "op": "gte", "value": 1})
    segments.define("acme", "spanish", "Spanish speakers",
                    {"field": "language", "op": "equals", "value": "es"})
    # The audience model's clock is the log's: recording times and clock ticks. Recent
    # buyers enter as their purchases are folded, and leave 30 days after their last one.
    now = datetime.now(UTC)
    models.ingest([decode_dict(d) for d in generate_history(
        "acme", 2500, seed=5, start=now - timedelta(days=100), days=100)])
    ClockCommands(models.store).tick(now + timedelta(days=45))
    models.catch_up()
    db = models.db
    with db.reading() as cur:
        cur.execute("SELECT contact_id, entered_at, exited_at FROM segment_history "
                    "WHERE segment_id = 'buyers-30d' ORDER BY entered_at")
        intervals = cur.fetchall()
    assert len(intervals) > 15 and all(i["exited_at"] for i in intervals)
    # Each boundary, and just before it: the instants where membership flips.
    instants = sorted({datetime.fromisoformat(i[k].replace("Z", "+00:00"))
                       for i in intervals[::7] for k in ("entered_at", "exited_at")})
    moments: list[datetime | None] = [None]
    for t in instants:
        moments += [t, t - timedelta(microseconds=1)]
    sizes = set()
    for segment_id in ("buyers-30d", "spanish"):
        for as_of in moments if segment_id == "buyers-30d" else [None, instants[-1]]:
            members = segment_members(db, "acme", segment_id, as_of=as_of, limit=100_000)
            sizes.add(len(members))
            query = segment_query(db, "acme", segment_id, as_of)
            assert count_rows(db, query) == len(members)
            expected = []
            for m in members:
                row = card_row(db, "acme", m["email"], query)
                row.update(contact_id=m["contact_id"], email=m["email"],
                           entered_at=m["entered_at"], exited_at=m["exited_at"])
                expected.append(row)
            for fmt in FORMATS:
                assert exported(db, query, fmt, batch_rows=13, row_group_rows=30) == expected
    assert len(sizes) > 3  # the instants did pick different member sets
    assert 0 in sizes  # nobody bought within 30 days of the final tick
    with pytest.raises(NotFound, match="does not exist"):
        segment_query(db, "acme", "nope")
    with pytest.raises(NotFound):
        segment_query(db, "globex", "spanish")  # another tenant's segment id


# -------------------------------------------------------------------- memory and files


def one_contact_each(tenant: str, n: int) -> list[InboundEvent]:
    return [make_event("form_submitted", tenant=tenant, event_id=f"{tenant}-{i}",
                       email=f"p{i:06d}@{tenant}.example", form_id="signup",
                       occurred_at=(START + timedelta(minutes=i)).isoformat(),
                       contact={"first_name": "Ana", "last_name": "García", "city": "Madrid",
                                "language": "es", "country": "ES"},
                       properties={"shoe_size": 38, "interest": "running shoes"},
                       tags=["Lead", "newsletter"])
            for i in range(n)]


def peak_while(chunks: Iterator[bytes]) -> tuple[int, int, int]:
    """Peak Python and Arrow memory while reading (and dropping) an export; its bytes."""
    pool = pa.proxy_memory_pool(pa.default_memory_pool())
    previous = pa.default_memory_pool()
    pa.set_memory_pool(pool)
    tracemalloc.start()
    try:
        size = 0
        for chunk in chunks:
            size += len(chunk)
        _, python_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        pa.set_memory_pool(previous)
    return python_peak, pool.max_memory(), size


def test_memory_does_not_grow_with_the_row_count(models: ReadModels) -> None:
    n = 1200
    models.ingest(one_contact_each("small", n) + one_contact_each("large", 4 * n), batch=1000)
    db = models.db
    small = contacts_query(db, ContactFilter(tenant="small"))
    large = contacts_query(db, ContactFilter(tenant="large"))
    assert (count_rows(db, small), count_rows(db, large)) == (n, 4 * n)
    for fmt in FORMATS:
        list(export_chunks(db, small, fmt, batch_rows=100, row_group_rows=300))  # warm the caches
        py_small, arrow_small, bytes_small = peak_while(
            export_chunks(db, small, fmt, batch_rows=100, row_group_rows=300))
        py_large, arrow_large, bytes_large = peak_while(
            export_chunks(db, large, fmt, batch_rows=100, row_group_rows=300))
        assert bytes_large > 3 * bytes_small  # four times the data went through...
        # ...with about the same peak: what one batch or row group needs, not all rows.
        assert py_large < 1.5 * py_small + 64 * 1024, (fmt, py_small, py_large)
        assert arrow_large < 1.5 * arrow_small + 64 * 1024, (fmt, arrow_small, arrow_large)
        if fmt == "csv":  # a reader holding every row would hold at least the output
            assert py_large < bytes_large / 2, (py_large, bytes_large)


def test_a_parquet_file_is_typed_and_written_in_row_groups(models: ReadModels,
                                                           tmp_path: Path) -> None:
    models.ingest(one_contact_each("acme", 250))
    query = contacts_query(models.db, ContactFilter(tenant="acme"))
    target = tmp_path / "contacts.parquet"
    result = export_to_file(models.db, query, "parquet", target, batch_rows=40,
                            row_group_rows=100)
    assert (result.rows, result.bytes) == (250, target.stat().st_size)
    meta = pq.read_metadata(target)
    assert (meta.num_rows, meta.num_row_groups) == (250, 3)
    schema = pq.read_schema(target)
    assert schema.field("first_seen_at").type == pa.timestamp("us", tz="UTC")
    assert schema.field("consent_email").type == pa.bool_()
    assert schema.field("forms_count").type == pa.int32()
    assert schema.field("tags").type == pa.list_(pa.string())
    assert str(meta.schema.column(query.names.index("properties")).logical_type) == "JSON"
    assert json.loads(schema.metadata[b"ficha.export"]) == {"export": "contacts",
                                                           "tenant": "acme"}


def ctrl_c_after(calls: int) -> Callable[[int], None]:
    """A progress callback that interrupts the export at its ``calls``-th report."""
    seen: list[int] = []

    def report(n: int) -> None:
        seen.append(n)
        if len(seen) == calls:
            raise KeyboardInterrupt

    return report


def test_a_failed_export_leaves_no_file_and_keeps_the_old_one(models: ReadModels,
                                                              tmp_path: Path) -> None:
    models.ingest(one_contact_each("acme", 300))
    query = contacts_query(models.db, ContactFilter(tenant="acme"))
    folder = tmp_path / "out"
    folder.mkdir()
    target = folder / "contacts.csv"
    for fmt in FORMATS:
        with pytest.raises(KeyboardInterrupt):
            export_to_file(models.db, query, fmt, target,
                           progress=ctrl_c_after(2), batch_rows=50, row_group_rows=50)
        assert list(folder.iterdir()) == []
    target.write_text("the previous export\n")

    with pytest.raises(KeyboardInterrupt):
        export_to_file(models.db, query, "csv", target, batch_rows=50, progress=ctrl_c_after(1))
    assert [p.name for p in folder.iterdir()] == ["contacts.csv"]
    assert target.read_text() == "the previous export\n"
    with pytest.raises(OSError):
        export_to_file(models.db, query, "csv", folder / "missing" / "x.csv")
    done = export_to_file(models.db, query, "csv", target)
    assert done.rows == 300 and len(from_csv(target.read_bytes(), query)) == 300


def test_a_reader_that_stops_early_frees_its_connection_and_sees_one_snapshot(
        models: ReadModels) -> None:
    models.ingest(one_contact_each("acme", 400))
    db = models.db
    query = contacts_query(db, ContactFilter(tenant="acme"))
    for make in (csv_chunks, parquet_chunks):
        chunks = make(db, query, batch_rows=50)
        next(chunks)
        chunks.close()  # an HTTP client went away
        if db.is_postgres:  # its transaction is over: nothing holds the table any more
            with db.transaction() as cur:
                cur.execute("LOCK TABLE contacts IN ACCESS EXCLUSIVE MODE NOWAIT")
    # Rows written after an export began are not in it: one snapshot from start to end.
    chunks = csv_chunks(db, query, batch_rows=50)
    first = [next(chunks), next(chunks)]
    models.ingest(one_contact_each("acme", 450)[400:])
    rows = from_csv(b"".join([*first, *chunks]), query)
    assert len(rows) == 400
    assert count_rows(db, query) == 450
    assert len(exported(db, query, "parquet")) == 450
