from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from services.config import Settings
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
