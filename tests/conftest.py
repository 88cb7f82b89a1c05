"""Shared fixtures: the real PostgreSQL server and a real nats-server on a free port."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

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


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    path = tmp_path / "data"
    path.mkdir()
    return path
