from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from services.config import Settings
from services.runtime import Runtime
from tests.backends import make_settings


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest) -> str:
    if request.param == "postgres":
        request.getfixturevalue("postgres_dsn")
    return str(request.param)


@pytest.fixture
def settings_for(
    request: pytest.FixtureRequest, backend: str, tmp_path: Path, nats_server: Any,
    fresh_topology: Any,
) -> Callable[..., Settings]:
    """Settings for this test's backend, on the test NATS server."""
    schema = request.getfixturevalue("pg_schema") if backend == "postgres" else None
    dsn = request.getfixturevalue("postgres_dsn") if backend == "postgres" else None

    def build(**extra: str) -> Settings:
        return make_settings(
            tmp_path / "data", postgres_dsn=dsn, schema=schema, nats_url=nats_server.url,
            **{"FICHA_PARTITIONS": "4", "FICHA_ACK_WAIT": "2", **extra},
        )

    return build


@pytest.fixture
async def runtime(settings_for: Callable[..., Settings]) -> AsyncIterator[Runtime]:
    """A started in-process runtime on this test's backend and NATS server."""
    rt = Runtime(settings_for())
    await rt.start()
    yield rt
    await rt.stop()
