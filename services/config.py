"""Configuration from the environment, read once at the composition root.

| variable | default | meaning |
|---|---|---|
| FICHA_DATA_DIR | ./var | SQLite files, embedded nats-server store, contact-id key |
| FICHA_DATABASE_URL | (unset: SQLite) | postgresql://user@host:port/db selects PostgreSQL |
| FICHA_DATABASE_SCHEMA | ficha | PostgreSQL schema for ficha's tables (created if missing) |
| FICHA_NATS_URL | (unset: embedded) | NATS server to use; unset starts nats-server from the wheel |
| FICHA_PARTITIONS | 8 | ingest partitions, fixed when the stream is first created |
| FICHA_ID_KEY | (key file) | hex key for contact ids; default: made once in DATA_DIR/id.key |
| FICHA_BATCH_SIZE | 500 | messages fetched and committed together per partition |
| FICHA_DUPLICATE_WINDOW | 0.1 | de-dup window of FICHA_IN, seconds, min 0.1 (decision 0004) |
| FICHA_INGEST_MAX_AGE | 604800 | seconds raw inbound events are kept in the ingest stream |
| FICHA_AGGREGATE_CACHE | 100000 | contacts kept in memory per ingest worker |
| FICHA_ACK_WAIT | 30 | seconds before JetStream redelivers an unacked message |
| FICHA_STREAM_REPLICAS | 1 | replicas of ficha's streams: 3 on a three-node JetStream cluster |
| FICHA_METRICS_PORT | 9464 | /metrics, /healthz, /readyz (projectors: next; 0: off) |
| FICHA_METRICS_HOST | 127.0.0.1 | address they listen on (0.0.0.0 for probes and scrapers) |
| FICHA_API_HOST | 127.0.0.1 | address the HTTP API listens on (`ficha up`, `ficha api`) |
| FICHA_API_PORT | 8080 | port of the HTTP API; 0 in `ficha up` leaves the API off |
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, unquote, urlparse


class ConfigError(Exception):
    """A setting is missing or malformed; the message says which and how to fix it."""


@dataclass(frozen=True)
class PostgresSettings:
    host: str
    port: int
    dbname: str
    user: str
    password: str
    schema: str

    @property
    def conninfo(self) -> str:
        parts = [f"host={self.host}", f"port={self.port}", f"dbname={self.dbname}"]
        parts.append(f"user={self.user}")
        if self.password:
            parts.append(f"password={self.password}")
        # Plan each statement for its parameters. ficha looks rows up by arrays of keys
        # (`= ANY(%s)`); a cached generic plan cannot see the array and was seen to scan
        # whole tables for every projection page (bench/RESULTS.md, session 5).
        parts.append("options='-c plan_cache_mode=force_custom_plan'")
        return " ".join(parts)


@dataclass(frozen=True)
class Settings:
    data_dir: Path
    postgres: PostgresSettings | None
    nats_url: str | None
    partitions: int = 8
    id_key: bytes = b""
    batch_size: int = 500
    duplicate_window_s: float = 0.1
    ingest_max_age_s: float = 7 * 24 * 3600.0
    aggregate_cache: int = 100_000
    ack_wait_s: float = 30.0
    metrics_port: int = 0
    metrics_host: str = "127.0.0.1"
    stream_replicas: int = 1
    api_host: str = "127.0.0.1"
    api_port: int = 0

    def to_env(self) -> dict[str, str]:
        """The environment that reproduces these settings in a child process."""
        env = {
            "FICHA_DATA_DIR": str(self.data_dir),
            "FICHA_PARTITIONS": str(self.partitions),
            "FICHA_ID_KEY": self.id_key.hex(),
            "FICHA_BATCH_SIZE": str(self.batch_size),
            "FICHA_DUPLICATE_WINDOW": repr(self.duplicate_window_s),
            "FICHA_INGEST_MAX_AGE": str(int(self.ingest_max_age_s)),
            "FICHA_AGGREGATE_CACHE": str(self.aggregate_cache),
            "FICHA_ACK_WAIT": str(int(self.ack_wait_s)),
            "FICHA_METRICS_PORT": str(self.metrics_port),
            "FICHA_METRICS_HOST": self.metrics_host,
            "FICHA_STREAM_REPLICAS": str(self.stream_replicas),
            "FICHA_API_HOST": self.api_host,
            "FICHA_API_PORT": str(self.api_port),
        }
        if self.nats_url:
            env["FICHA_NATS_URL"] = self.nats_url
        if self.postgres is not None:
            pg = self.postgres
            auth = pg.user + (f":{quote(pg.password, safe='')}" if pg.password else "")
            env["FICHA_DATABASE_URL"] = f"postgresql://{auth}@{pg.host}:{pg.port}/{pg.dbname}"
            env["FICHA_DATABASE_SCHEMA"] = pg.schema
        return env

    @property
    def backend(self) -> str:
        return "postgres" if self.postgres else "sqlite"

    @property
    def events_db_path(self) -> Path:
        return self.data_dir / "events.sqlite"

    @property
    def views_db_path(self) -> Path:
        return self.data_dir / "views.sqlite"


def parse_database_url(url: str, schema: str) -> PostgresSettings:
    parsed = urlparse(url)
    if parsed.scheme not in ("postgresql", "postgres"):
        raise ConfigError(
            f"FICHA_DATABASE_URL must start with postgresql:// (got {parsed.scheme or url!r}); "
            "leave it unset to use the embedded SQLite files"
        )
    dbname = parsed.path.lstrip("/")
    if not dbname:
        raise ConfigError("FICHA_DATABASE_URL names no database: add /DBNAME at its end")
    return PostgresSettings(
        host=parsed.hostname or "127.0.0.1",
        port=parsed.port or 5432,
        dbname=unquote(dbname),
        user=unquote(parsed.username or "postgres"),
        password=unquote(parsed.password or ""),
        schema=schema,
    )


def _int(env: dict[str, str], name: str, default: int, minimum: int = 1) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a whole number (got {raw!r})") from None
    if value < minimum:
        raise ConfigError(f"{name} must be at least {minimum} (got {value})")
    return value


def _seconds(env: dict[str, str], name: str, default: float, *, minimum: float) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number of seconds (got {raw!r})") from None
    if not value >= minimum:
        raise ConfigError(f"{name} must be at least {minimum} seconds (got {raw})")
    return value


def load_id_key(env: dict[str, str], data_dir: Path) -> bytes:
    raw = env.get("FICHA_ID_KEY")
    if raw:
        try:
            key = bytes.fromhex(raw)
        except ValueError:
            raise ConfigError("FICHA_ID_KEY must be hex (for example 64 hex digits)") from None
        if len(key) < 16:
            raise ConfigError("FICHA_ID_KEY must be at least 16 bytes (32 hex digits)")
        return key
    path = data_dir / "id.key"
    if path.exists():
        return bytes.fromhex(path.read_text().strip())
    data_dir.mkdir(parents=True, exist_ok=True)
    key = secrets.token_bytes(32)
    path.write_text(key.hex() + "\n")
    path.chmod(0o600)
    return key


def load_settings(env: dict[str, str] | None = None) -> Settings:
    env = dict(os.environ if env is None else env)
    data_dir = Path(env.get("FICHA_DATA_DIR") or "./var").resolve()
    schema = env.get("FICHA_DATABASE_SCHEMA") or "ficha"
    if not schema.replace("_", "").isalnum():
        raise ConfigError(f"FICHA_DATABASE_SCHEMA must be letters, digits and _ (got {schema!r})")
    url = env.get("FICHA_DATABASE_URL") or ""
    postgres = parse_database_url(url, schema) if url else None
    return Settings(
        data_dir=data_dir,
        postgres=postgres,
        nats_url=env.get("FICHA_NATS_URL") or None,
        partitions=_int(env, "FICHA_PARTITIONS", 8),
        id_key=load_id_key(env, data_dir),
        batch_size=_int(env, "FICHA_BATCH_SIZE", 500),
        duplicate_window_s=_seconds(env, "FICHA_DUPLICATE_WINDOW", 0.1, minimum=0.1),
        ingest_max_age_s=float(_int(env, "FICHA_INGEST_MAX_AGE", 7 * 24 * 3600, minimum=0)),
        aggregate_cache=_int(env, "FICHA_AGGREGATE_CACHE", 100_000),
        ack_wait_s=float(_int(env, "FICHA_ACK_WAIT", 30)),
        metrics_port=_int(env, "FICHA_METRICS_PORT", 9464, minimum=0),
        metrics_host=env.get("FICHA_METRICS_HOST") or "127.0.0.1",
        stream_replicas=_int(env, "FICHA_STREAM_REPLICAS", 1),
        api_host=env.get("FICHA_API_HOST") or "127.0.0.1",
        api_port=_int(env, "FICHA_API_PORT", 8080, minimum=0),
    )
