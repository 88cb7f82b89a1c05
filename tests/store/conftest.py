from __future__ import annotations

from pathlib import Path

import pytest

from services.config import Settings
from tests.backends import make_settings


@pytest.fixture(params=["sqlite", "postgres"])
def settings(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    """The same tests run against both backends (a conformance suite)."""
    if request.param == "postgres":
        dsn = request.getfixturevalue("postgres_dsn")
        schema = request.getfixturevalue("pg_schema")
        return make_settings(tmp_path, postgres_dsn=dsn, schema=schema)
    return make_settings(tmp_path)
