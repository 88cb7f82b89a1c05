"""Settings for each storage backend, for tests that must pass on both."""

from __future__ import annotations

from pathlib import Path

from services.config import Settings, load_settings

TEST_ID_KEY = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"


def make_settings(
    data_dir: Path,
    *,
    postgres_dsn: str | None = None,
    schema: str | None = None,
    nats_url: str | None = None,
    **extra: str,
) -> Settings:
    env = {"FICHA_DATA_DIR": str(data_dir), "FICHA_ID_KEY": TEST_ID_KEY,
           "FICHA_METRICS_PORT": "0", "FICHA_API_PORT": "0", **extra}
    if postgres_dsn:
        env["FICHA_DATABASE_URL"] = postgres_dsn
        env["FICHA_DATABASE_SCHEMA"] = schema or "ficha"
    if nats_url:
        env["FICHA_NATS_URL"] = nats_url
    return load_settings(env)
