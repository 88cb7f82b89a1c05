"""`ficha import` against the running system (real nats-server, both backends): a file's
contacts reach the client list with their fields, tags, properties, lists and consent; the
same file imported again changes nothing; rejected rows are reported by line and column;
a mapping file; an import cut by NATS going away says how far it got and a re-run completes
it exactly once."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from nats.js import JetStreamContext

from projections.queries import ContactFilter, count_contacts, get_card
from services.catalog import TenantCommands
from services.config import Settings
from services.importing.files import load_mapping, read_rejects, rejects_path_for
from services.importing.importer import ImportOptions, import_csv
from services.natsserver import EmbeddedNatsServer
from services.runtime import Runtime, connect_nats, topology_settings
from services.streams import DLQ_STREAM, INGEST_STREAM, consumer_name, ensure_topology
from tests.backends import make_settings
from tests.e2e.test_pipeline import drain_applied

FICHA = [sys.executable, "-m", "services"]
WHEN = datetime(2026, 11, 20, 9, 0, tzinfo=UTC)

CONTACTS = """\
Email,First Name,Last Name,Phone,Language,Country,City,Tags,property:shoe_size,prop:plan,\
list:newsletter,consent:email,consent:sms,Lead Status,contact_type
Ana@Example.com,Ana,García,+34 600 111 222,es,es,Madrid,"VIP, lead",38,pro,yes,yes,,new,client
bo@example.com,Bo,Berg,,sv,SE,Malmö,,,basic,pending,no,yes,,
carla@example.com,Carla,Ruiz,,es-MX,MX,,lead,41,,no,,,qualified,
dan@example.com,Dan,,12345,,XX,,,,,yes,,,,
ana@example.com,Ana,,,,,,,,,,,,,
,,,,,,,,,,,,,,
eve@example,Eve,,,,,,,,,,,,,
"""


def run_ficha(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FICHA_")}
    env.update(settings.to_env(), PYTHONUNBUFFERED="1")
    return subprocess.run([*FICHA, *args], env=env, capture_output=True, text=True,
                          timeout=120)


async def settled(js: JetStreamContext, partitions: int, stored: int) -> None:
    """Until the ingest stream holds ``stored`` messages and every partition's consumer
    has processed (and acked) all of them."""
    deadline = asyncio.get_running_loop().time() + 30
    while True:
        info = await js.stream_info(INGEST_STREAM)
        consumers = [await js.consumer_info(INGEST_STREAM, consumer_name(p))
                     for p in range(partitions)]
        if info.state.messages >= stored and all(
                c.num_pending == 0 and c.num_ack_pending == 0 for c in consumers):
            return
        assert asyncio.get_running_loop().time() < deadline, (info.state, consumers)
        await asyncio.sleep(0.1)


def read_model(runtime: Runtime, emails: list[str]) -> dict[str, Any]:
    assert runtime.store is not None and runtime.views is not None
    return {
        "received": runtime.store.received_count(),
        "log": runtime.store.max_notification_id(),
        "contacts": count_contacts(runtime.views, ContactFilter(tenant="acme")),
        "cards": {email: get_card(runtime.views, "acme", email) for email in emails},
    }


async def test_cli_import_reaches_the_client_list_and_a_second_import_changes_nothing(
    runtime: Runtime, tmp_path: Path,
) -> None:
    assert runtime.js is not None
    path = tmp_path / "contacts.csv"
    path.write_text(CONTACTS, encoding="utf-8")
    done = await asyncio.to_thread(run_ficha, runtime.settings, "import", str(path),
                                   "--tenant", "acme", "--json")
    assert done.returncode == 3, done.stderr  # finished, some rows rejected
    report = json.loads(done.stdout)
    assert (report["rows_read"], report["rows_empty"], report["rows_accepted"],
            report["rows_rejected"], report["rows_published"]) == (7, 1, 3, 3, 3)
    assert report["events_by_type"] == {"contact_updated": 3, "list_subscribed": 2,
                                        "list_unsubscribed": 1, "consent_changed": 3}
    assert report["events_published"] == 9 and report["completed"] is True
    assert "3 rows rejected: see" in done.stderr

    rejects = read_rejects(rejects_path_for(path))
    assert [(r["line"], r["column"]) for r in rejects] == [
        ("5", "Phone"), ("5", "Country"), ("6", "Email"), ("8", "Email")]
    assert rejects[1]["reason"] == (
        "contact.country 'XX' is not an ISO 3166-1 alpha-2 code (like ES, MX, US)")
    assert rejects[2]["reason"].startswith("ana@example.com is already on line 2")

    await drain_applied(runtime, 9)
    emails = ["ana@example.com", "bo@example.com", "carla@example.com", "dan@example.com",
              "eve@example"]
    before = read_model(runtime, emails)
    ana, bo, carla = (before["cards"][e] for e in emails[:3])
    assert before["contacts"] == 3 and before["cards"]["dan@example.com"] is None
    assert (ana["first_name"], ana["last_name"], ana["phone"], ana["language"],
            ana["country"], ana["city"], ana["lead_status"], ana["contact_type"]) == (
        "Ana", "García", "+34600111222", "es", "ES", "Madrid", "new", "client")
    assert sorted(ana["tags"]) == ["VIP", "lead"]
    assert ana["properties"] == {"shoe_size": "38", "plan": "pro"}
    assert [(x["list_id"], x["state"]) for x in ana["lists"]] == [("newsletter", "subscribed")]
    assert ana["consent_email"] is True and ana["consent_sms"] is None
    assert {e["source"] for e in ana["timeline"]} == {"import"}
    assert [(x["list_id"], x["state"]) for x in bo["lists"]] == [("newsletter", "pending")]
    assert (bo["consent_email"], bo["consent_sms"]) == (False, True)
    assert [(x["list_id"], x["state"]) for x in carla["lists"]] == [
        ("newsletter", "unsubscribed")]
    assert carla["lead_status"] == "qualified" and carla["language"] == "es-MX"

    again = await asyncio.to_thread(run_ficha, runtime.settings, "import", str(path),
                                    "--tenant", "acme", "--json")
    assert again.returncode == 3, again.stderr
    assert json.loads(again.stdout)["events_published"] == 9
    await settled(runtime.js, runtime.settings.partitions, stored=18)
    await runtime.wait_until_projected()
    assert read_model(runtime, emails) == before
    assert (await runtime.js.stream_info(DLQ_STREAM)).state.messages == 0


async def test_a_mapping_file_and_the_tenants_definitions(
    runtime: Runtime, tmp_path: Path,
) -> None:
    assert runtime.store is not None and runtime.js is not None and runtime.views is not None
    tenants = TenantCommands(runtime.store)
    await asyncio.to_thread(tenants.define_property, "acme", "size", "number")
    await asyncio.to_thread(tenants.change, "acme", lead_statuses=["new", "won"])
    mapping = tmp_path / "mapping.yaml"
    mapping.write_text(
        "columns:\n"
        "  Correo: email\n"
        "  Nombre: first_name\n"
        "  Talla: property:size\n"
        "  Etiquetas: tags\n"
        "  Boletín: {to: 'list:boletin', double_opt_in: true}\n"
        "  WhatsApp: consent:whatsapp\n"
        "  Estado: lead_status\n"
        "  Fecha: occurred_at\n"
        "  Notas: ignore\n"
        "tag_separator: '|'\n"
        "truthy: [sí, si]\n"
        "falsy: [no]\n"
        "source: crm-migration\n", encoding="utf-8")
    path = tmp_path / "export.csv"
    path.write_text(
        "\ufeffCorreo;Nombre;Talla;Etiquetas;Boletín;WhatsApp;Estado;Fecha;Notas\n"
        "lucia@example.com;Lucía;37;cliente|vip;sí;no;won;2025-06-01T12:00:00+02:00;hola\n"
        "mario@example.com;Mario;grande;;;;new;;\n"
        "nora@example.com;Nora;;;no;si;lost;;\n", encoding="utf-8")
    settings = await asyncio.to_thread(tenants.settings, "acme")
    report = await import_csv(
        path, tenant="acme", js=runtime.js, mapping=load_mapping(mapping),
        rejects_path=rejects_path_for(path), definitions=settings,
        options=ImportOptions(occurred_at=WHEN, mapping_processes=2))
    assert report.completed and report.delimiter == ";"
    assert (report.rows_accepted, report.rows_rejected) == (1, 2)
    assert [(r.line, r.column, r.code, r.reason) for r in report.rejections] == [
        (3, "Talla", "property_type_mismatch",
         "property size is defined as a number; got 'grande'; fix the value or the definition"),
        (4, "Estado", "unknown_lead_status",
         "lead_status 'lost' is not one of tenant acme's lead statuses: new, won"),
    ]
    await drain_applied(runtime, 3)
    lucia = get_card(runtime.views, "acme", "lucia@example.com")
    assert lucia is not None
    assert (lucia["first_name"], lucia["lead_status"], lucia["tags"]) == (
        "Lucía", "won", ["cliente", "vip"])
    assert lucia["properties"] == {"size": 37}
    assert [(x["list_id"], x["state"]) for x in lucia["lists"]] == [("boletin", "pending")]
    assert lucia["consent_whatsapp"] is False
    assert {(e["source"], e["occurred_at"][:19]) for e in lucia["timeline"]} == {
        ("crm-migration", "2025-06-01T10:00:00")}
    assert get_card(runtime.views, "acme", "mario@example.com") is None


async def test_an_import_cut_by_nats_going_away_says_so_and_a_rerun_completes_it_once(
    settings_for: Callable[..., Settings], tmp_path: Path,
) -> None:
    rows = 4000
    path = tmp_path / "big.csv"
    path.write_text("email,first_name,consent:email\n" + "".join(
        f"p{i}@example.com,P{i},yes\n" for i in range(rows)), encoding="utf-8")
    server = EmbeddedNatsServer(store_dir=tmp_path / "own-nats")
    server.start()
    try:
        settings = replace(settings_for(), nats_url=server.url)
        nc = await connect_nats(server.url, name="first-import")
        js = nc.jetstream()
        await ensure_topology(js, topology_settings(settings))

        def stop_nats_after_the_first_chunk(report: Any) -> None:
            # A clean stop, so that what it acknowledged stays stored (a SIGKILL may lose
            # the last writes nats-server had not flushed, which would prove less here).
            if report.rows_published and server.alive:
                server.stop()

        first = await import_csv(
            path, tenant="acme", js=js, on_progress=stop_nats_after_the_first_chunk,
            options=ImportOptions(window=100, ack_timeout=1.0, occurred_at=WHEN,
                                  mapping_processes=0))
        with contextlib.suppress(Exception):
            await asyncio.wait_for(nc.close(), 2)
        assert not first.completed
        assert first.stopped and "NATS" in first.stopped
        assert 0 < first.rows_published < rows
        assert first.events_published >= 2 * first.rows_published

        server.start()  # same store: what was stored before the stop is still there
        runtime = Runtime(replace(settings, nats_url=server.url))
        await runtime.start()
        try:
            assert runtime.js is not None and runtime.store is not None
            kept = (await runtime.js.stream_info(INGEST_STREAM)).state.messages
            assert kept >= first.events_published
            second = await import_csv(path, tenant="acme", js=runtime.js,
                                      options=ImportOptions(occurred_at=WHEN))
            assert second.completed and second.rows_published == rows
            assert second.events_published == 2 * rows
            # The same ids again: JetStream drops some as duplicates (and says so), ficha's
            # store drops the rest.
            stored = (await runtime.js.stream_info(INGEST_STREAM)).state.messages
            assert stored == kept + 2 * rows - second.duplicates
            await settled(runtime.js, runtime.settings.partitions, stored)
            await drain_applied(runtime, 2 * rows)
            assert runtime.store.received_count() == 2 * rows
            assert runtime.views is not None
            assert count_contacts(runtime.views, ContactFilter(tenant="acme")) == rows
        finally:
            await runtime.stop()
    finally:
        server.stop()


@pytest.mark.parametrize(("content", "args", "expected"), [
    ("email,shoe size\na@example.com,38\n", (),
     "no mapping for the column 'shoe size'"),
    ("first_name\nAna\n", (), "no email column"),
    ("email,name\nfélix@example.com,Félix\n".encode("cp1252"), (),
     "line 2 is not valid utf-8 (byte 0xe9"),
    ("email\na@example.com\n", ("--occurred-at", "yesterday"),
     "--occurred-at: 'yesterday' is not a date or time"),
])
def test_cli_refusals_are_sentences_and_publish_nothing(
    tmp_path: Path, content: str | bytes, args: tuple[str, ...], expected: str,
) -> None:
    path = tmp_path / "in.csv"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    settings = make_settings(tmp_path / "data")
    done = run_ficha(settings, "import", str(path), "--tenant", "acme", "--dry-run", *args)
    assert done.returncode == 2, done.stderr
    assert expected in done.stderr
    assert "Traceback" not in done.stderr
    assert not rejects_path_for(path).exists()


def test_cli_without_nats_says_so(tmp_path: Path) -> None:
    path = tmp_path / "in.csv"
    path.write_text("email\na@example.com\n", encoding="utf-8")
    settings = make_settings(tmp_path / "data", nats_url="nats://127.0.0.1:9")
    done = run_ficha(settings, "import", str(path), "--tenant", "acme")
    assert done.returncode == 1
    assert "cannot reach NATS at nats://127.0.0.1:9" in done.stderr
    assert "Traceback" not in done.stderr


def test_cli_dry_run_prints_the_summary(tmp_path: Path) -> None:
    path = tmp_path / "contacts.csv"
    path.write_text(CONTACTS, encoding="utf-8")
    done = run_ficha(make_settings(tmp_path / "data"), "import", str(path), "--tenant",
                     "acme", "--dry-run")
    assert done.returncode == 3, done.stderr
    assert "dry run (nothing published) of" in done.stdout
    assert "contact_updated 3, list_subscribed 2, list_unsubscribed 1" in done.stdout
    assert "Lead Status → lead_status" in done.stdout
    assert len(read_rejects(rejects_path_for(path))) == 4
