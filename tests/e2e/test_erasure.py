"""GDPR erasure and subject access through the running system, on both backends.

Four people leave data everywhere ficha keeps it: the event store, both read models, the
outbox and FICHA_OUT, the dead letters and the raw ingest stream (a producer's late
retry too). One asks for an export, then for erasure through `ficha erase`. Then every
table of the database (and, on SQLite, every byte of its files) and every message of
ficha's streams is searched for her email, phone and names: nothing readable is left,
the others are intact, the receipt says who confirmed and what was deleted, and
`contact_erased` went out once. After a full rebuild of every projection and a restart,
the search finds nothing again and nothing was published twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from nats.js import JetStreamContext
from psycopg import sql

from contracts.publisher import publish
from services.catalog import SegmentCommands
from services.config import Settings
from services.domain.identity import ContactIdentity
from services.privacy import NotHeld, erasure_receipts, subject_access
from services.runtime import Runtime, connect_nats
from services.streams import DLQ_STREAM, INGEST_STREAM, OUT_STREAM
from tests.factories import event_dict

FICHA = [sys.executable, "-m", "services"]
ANA = "Anabel.Quintanilla@Example.com"  # as her producers spell it
ANA_PHONE = "+34600987654"
SECRETS = ("anabel.quintanilla@example.com", "anabel", "quintanilla", "34600987654",
           "Calle Zurbarán 17")
OTHERS = {"bob@example.com": "Roberto", "carla@example.com": "Carlota",
          "dan@example.com": "Danilo"}


def ago(days: float) -> str:
    return (datetime.now(UTC) - timedelta(days=days)).isoformat()


def ficha(settings: Settings, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([*FICHA, *args], env={"PATH": "/usr/bin:/bin", **settings.to_env()},
                          capture_output=True, text=True, timeout=120)
    if check and done.returncode != 0:
        raise AssertionError(f"ficha {' '.join(args)} failed: {done.stdout}{done.stderr}")
    return done


def history() -> list[dict[str, Any]]:
    events = [
        event_dict("form_submitted", event_id="ana-1", email=ANA, occurred_at=ago(9),
                   form_id="contact", form_name="Contact us",
                   contact={"first_name": "Anabel", "last_name": "Quintanilla",
                            "phone": ANA_PHONE, "city": "Sevilla", "country": "ES"},
                   fields={"message": "Please deliver to Calle Zurbarán 17"},
                   properties={"shoe_size": 38}, tags=["vip"]),
        event_dict("consent_changed", event_id="ana-2", email=ANA, occurred_at=ago(8),
                   channel="email", granted=True, text="Yes please"),
        event_dict("list_subscribed", event_id="ana-3", email=ANA, occurred_at=ago(7),
                   list_id="news"),
        event_dict("purchase_completed", event_id="ana-4", email=ANA, occurred_at=ago(6),
                   order_id="o-ana", total="120.00", currency="EUR"),
    ]
    for n, (email, name) in enumerate(sorted(OTHERS.items())):
        events += [
            event_dict("form_submitted", event_id=f"o-{n}-1", email=email, occurred_at=ago(9),
                       form_id="contact", contact={"first_name": name, "country": "ES"},
                       tags=["vip"]),
            event_dict("purchase_completed", event_id=f"o-{n}-2", email=email,
                       occurred_at=ago(5), order_id=f"o-{n}", total="80.00", currency="EUR"),
        ]
    return events


async def wait_for(check: Any, timeout: float = 30.0, what: str = "") -> Any:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        found = await check()
        if found:
            return found
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.1)


# --------------------------------------------------------------------------- the search


async def stream_texts(js: JetStreamContext) -> list[str]:
    """Every message of ficha's streams: subject, headers and body, as text."""
    texts = []
    for stream in (INGEST_STREAM, DLQ_STREAM, OUT_STREAM):
        info = await js.stream_info(stream)
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            try:
                msg = await js.get_msg(stream, seq=seq)
            except Exception:  # noqa: BLE001 - deleted: nothing to read
                continue
            texts.append(f"{stream} {msg.subject} {msg.headers} "
                         + (msg.data or b"").decode("utf-8", "replace"))
    return texts


def database_texts(settings: Settings) -> list[str]:
    """Every value of every table (event store and read models) as text, and on SQLite
    the raw bytes of every database file."""
    texts: list[str] = []
    if settings.postgres is None:
        for path in sorted(settings.data_dir.glob("*.sqlite*")):
            raw = raw_bytes(path)
            texts += [raw.decode("latin-1"), raw.decode("utf-8", "replace")]
            if path.suffix != ".sqlite":
                continue
            with contextlib.closing(sqlite3.connect(path)) as conn:
                tables = [r[0] for r in conn.execute(
                    "SELECT name FROM sqlite_master WHERE type = 'table'")]
                for table in tables:
                    for row in conn.execute(f"SELECT * FROM {table}"):  # noqa: S608
                        for value in row:
                            texts.append(value.decode("utf-8", "replace")
                                         if isinstance(value, bytes) else str(value))
        return texts
    pg = settings.postgres
    with psycopg.connect(pg.conninfo) as conn:
        columns = conn.execute(
            "SELECT table_name, column_name, data_type FROM information_schema.columns "
            "WHERE table_schema = %s AND data_type IN ('text', 'bytea', 'json', 'jsonb', "
            "'character varying', 'uuid')", (pg.schema,)).fetchall()
        assert any(c[0].endswith("events") for c in columns)  # the event store is searched
        assert any(c[0] == "contacts" for c in columns)  # and so are the read models
        for table, column, kind in columns:
            query = sql.SQL("SELECT {c} FROM {s}.{t}").format(
                c=sql.Identifier(column), s=sql.Identifier(pg.schema), t=sql.Identifier(table))
            for (value,) in conn.execute(query):
                if value is None:
                    continue
                texts.append(bytes(value).decode("utf-8", "replace") if kind == "bytea"
                             else str(value))
    return texts


def raw_bytes(path: Path) -> bytes:
    """A live SQLite file's bytes, read by another process: a close() of any descriptor of
    the file in this process would drop the POSIX locks SQLite holds on it here."""
    return subprocess.run(["cat", str(path)], capture_output=True, check=True).stdout


def readable(texts: list[str], secret: str) -> bool:
    return any(secret.casefold() in text.casefold() for text in texts)


def nats_files(store_dir: Path) -> list[str]:
    """The bytes of every file of the NATS server's store (streams are erased in place)."""
    return [path.read_bytes().decode("latin-1") for path in store_dir.rglob("*")
            if path.is_file()]


async def assert_nothing_about_ana(settings: Settings, js: JetStreamContext,
                                   nats_store: Path) -> None:
    database, streams = database_texts(settings), await stream_texts(js)
    streams += nats_files(nats_store)
    for secret in SECRETS:
        assert not readable(database, secret), f"{secret!r} is still in the database"
        assert not readable(streams, secret), f"{secret!r} is still in a stream"
    # The others are still there, in both.
    for email, name in OTHERS.items():
        assert readable(database, name) and readable(streams, email), email


# ---------------------------------------------------------------------------- the test


async def test_erasure_leaves_nothing_readable_and_a_rebuild_brings_nothing_back(
    runtime: Runtime, settings_for: Any, nats_server: Any,
) -> None:
    assert runtime.store is not None and runtime.views is not None
    nats_store = Path(nats_server.store_dir)
    settings = runtime.settings
    store, views = runtime.store, runtime.views
    identity = ContactIdentity(settings.id_key)
    ana_id = identity.contact_id("acme", ANA.lower())
    nc = await connect_nats(runtime.nats_url)
    js = nc.jetstream()
    try:
        await asyncio.to_thread(SegmentCommands(store).define, "acme", "vips", "VIPs",
                                {"field": "tags", "op": "has", "value": "vip"})
        for event in history():
            await publish(js, event)
        # A producer's retry after JetStream's window: stored twice, applied once.
        await asyncio.sleep(0.3)
        await publish(js, history()[0])
        # Two dead letters naming her: a bad event, and one on a malformed subject.
        bad = event_dict("booking_made", event_id="ana-bad", email=ANA, occurred_at=ago(3),
                         booking_id="b1", starts_at="not a date",
                         contact={"first_name": "Anabel"})
        await js.publish("ficha.in.acme.booking_made", json.dumps(bad).encode(),
                         headers={"Nats-Msg-Id": "ana-bad"})
        await js.publish("ficha.in.acme", json.dumps({**bad, "event_id": "ana-bad-2"}).encode())

        async def everything_out() -> bool:
            info = await js.stream_info(OUT_STREAM)
            dlq = await js.stream_info(DLQ_STREAM)
            return info.state.messages >= 4 and dlq.state.messages >= 2
        await wait_for(everything_out, what="segment events and dead letters")
        await runtime.wait_until_projected()

        # Subject access before: everything, from every place.
        export = json.loads(ficha(settings, "contacts", "access", ANA, "--tenant", "acme")
                            .stdout)
        assert export["contact_id"] == ana_id.hex and export["email"] == ANA.lower()
        assert export["card"]["first_name"] == "Anabel"
        assert export["card"]["phone"] == ANA_PHONE
        assert [t["event_id"] for t in export["card"]["timeline"]] == [
            "ana-1", "ana-2", "ana-3", "ana-4"]
        assert [e["granted"] for e in export["consent_ledger"]] == [True]
        assert export["segments"][0]["segment_id"] == "vips" and export["segments"][0]["member"]
        assert [e["type"] for e in export["events"]] == [
            "Contact.Registered", *["Contact.Recorded"] * 4]
        assert "Calle Zurbarán 17" in json.dumps(export["events"], ensure_ascii=False)
        assert sorted(d["event_id"] for d in export["dead_letters"]) == ["ana-bad", "ana-bad-2"]
        assert readable(database_texts(settings), "quintanilla")  # the search can find her

        # The erasure, through the bus, as an operator asks for it.
        done = ficha(settings, "erase", ANA, "--tenant", "acme", "--yes", "--json")
        request_id = json.loads(done.stdout)["event_id"]

        async def completed() -> list[dict[str, Any]]:
            receipts = await asyncio.to_thread(erasure_receipts, store, views)
            return [r for r in receipts if r["complete"]]
        (receipt,) = await wait_for(completed, what="the erasure to complete")
        await runtime.wait_until_projected()
        assert (receipt["event_id"], receipt["contact_id"]) == (request_id, ana_id.hex)
        assert set(receipt["projections"]) == {"contacts", "audience"}
        assert all(receipt["projections"].values())
        assert receipt["contact_erased"]["published"]
        streams = receipt["purged"]["streams"]
        assert len(streams["FICHA_IN"]) == 8  # 4 events, the retry, 2 bad, the request
        assert len(streams["FICHA_DLQ"]) == 2 and len(streams["FICHA_OUT"]) >= 1
        assert receipt["purged"]["files_checkpointed"]
        assert "anabel" not in json.dumps(receipt).casefold()

        await assert_nothing_about_ana(settings, js, nats_store)
        shown = json.loads(ficha(settings, "erasures", "show", request_id, "--json").stdout)
        assert shown["contact_id"] == ana_id.hex and shown["complete"]
        refused = ficha(settings, "contacts", "access", ANA, "--tenant", "acme", check=False)
        assert refused.returncode != 0 and "holds no personal data" in refused.stderr
        try:
            await subject_access(store, views, identity, "acme", ANA)
            raise AssertionError("the export should be refused after erasure")
        except NotHeld:
            pass
        erased_out = await out_of_type(js, "contact_erased")
        assert [m["contact_id"] for m in erased_out] == [ana_id.hex]
        assert "email" not in erased_out[0]
        bob = await subject_access(store, views, identity, "acme", "bob@example.com")
        assert bob["card"]["first_name"] == "Roberto" and bob["segments"][0]["member"]

        # A full rebuild of every projection, then a restart: nothing comes back and
        # nothing is published twice.
        await runtime.stop()
        ficha(settings, "projections", "rebuild", "--yes")
        await assert_nothing_about_ana(settings, js, nats_store)
        again = Runtime(settings_for())
        await again.start()
        try:
            await publish(js, event_dict("form_submitted", event_id="bob-late",
                                         email="bob@example.com", occurred_at=ago(1),
                                         form_id="contact", tags=["late"]))
            assert again.store is not None and again.views is not None
            await again.wait_until_projected()
            await wait_for(lambda: relay_done(again), what="the restarted relay")
            # Erasing twice is harmless: a second receipt, and still nothing to find.
            ficha(settings, "erase", ANA, "--tenant", "acme", "--yes")

            async def two_done() -> bool:
                receipts = await asyncio.to_thread(erasure_receipts, again.store, again.views)
                return len([r for r in receipts if r["complete"]]) == 2
            await wait_for(two_done, what="the second erasure")
            await assert_nothing_about_ana(settings, js, nats_store)
            erased_out = await out_of_type(js, "contact_erased")
            assert len({m["event_id"] for m in erased_out}) == len(erased_out) == 2
            listed = json.loads(ficha(settings, "erasures", "list", "--json").stdout)
            assert [r["event_id"] for r in listed["erasures"]][0] == request_id
            segment_events = await out_of_type(js, "segment_entered")
            ids = [m["event_id"] for m in segment_events]
            assert len(ids) == len(set(ids)) == len(OTHERS)  # none twice, none of hers
        finally:
            await again.stop()
    finally:
        await nc.close()


async def relay_done(runtime: Runtime) -> bool:
    """The relay has gone past every row of the outbox."""
    def check() -> bool:
        assert runtime.views is not None and runtime.outbox is not None
        with runtime.views.reading() as cur:
            cur.execute("SELECT COALESCE(MAX(seq), 0) AS n FROM ficha_outbox")
            top = int(cur.fetchone()["n"])  # type: ignore[index]
        return runtime.outbox.recorded_position() >= top
    return await asyncio.to_thread(check)


async def out_of_type(js: JetStreamContext, kind: str) -> list[dict[str, Any]]:
    found = []
    info = await js.stream_info(OUT_STREAM)
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        try:
            msg = await js.get_msg(OUT_STREAM, seq=seq)
        except Exception:  # noqa: BLE001 - deleted by an erasure
            continue
        body = json.loads(msg.data or b"{}")
        if body.get("type") == kind:
            found.append(body)
    return found
