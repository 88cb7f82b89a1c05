"""What the benchmarks share: where PostgreSQL is, and a throw-away place to work in."""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from services.config import Settings, load_settings

PG_DSN = os.environ.get("FICHA_BENCH_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test")


@contextmanager
def scratch_settings(backend: str, name: str) -> Iterator[Settings]:
    """Settings on a fresh data dir and, for PostgreSQL, a fresh schema dropped after."""
    schema = f"bench_{name}_{uuid.uuid4().hex[:8]}"
    env = {"FICHA_DATA_DIR": tempfile.mkdtemp(prefix=f"ficha-{name}-"),
           "FICHA_ID_KEY": "00" * 32, "FICHA_METRICS_PORT": "0"}
    if backend == "postgres":
        env.update(FICHA_DATABASE_URL=PG_DSN, FICHA_DATABASE_SCHEMA=schema)
    try:
        yield load_settings(env)
    finally:
        if backend == "postgres":
            import psycopg

            with psycopg.connect(PG_DSN, autocommit=True) as conn:
                conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
