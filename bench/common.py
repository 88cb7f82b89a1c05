"""What the benchmarks share: where PostgreSQL is, a throw-away place to work in, and
where the CPU time of a run went (by process, PostgreSQL's by the client it served)."""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

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


@dataclass(frozen=True)
class ProcessCpu:
    parent: int
    name: str  # the executable's short name, as ps shows it
    seconds: float  # user + system CPU time so far


def processes() -> dict[int, ProcessCpu]:
    """Every process of this machine with the CPU time it used so far (Linux /proc)."""
    tick = os.sysconf("SC_CLK_TCK")
    found: dict[int, ProcessCpu] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # ended meanwhile
        fields = stat[stat.rindex(")") + 2 :].split()
        found[int(entry.name)] = ProcessCpu(
            parent=int(fields[1]), name=stat[stat.index("(") + 1 : stat.rindex(")")],
            seconds=(int(fields[11]) + int(fields[12])) / tick)
    return found


def descendants(procs: dict[int, ProcessCpu], root: int) -> set[int]:
    """``root`` and every process below it."""
    tree = {root}
    while True:
        more = {pid for pid, p in procs.items() if p.parent in tree} - tree
        if not more:
            return tree
        tree |= more


def command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except OSError:
        return ""


def postgres_clients(dsn: str = PG_DSN) -> dict[int, str]:
    """PostgreSQL's backend processes by the application name of their client (ficha names
    its connections after its command: ``ficha up``, ``ficha project contacts``...)."""
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute("SELECT pid, application_name FROM pg_stat_activity "
                            "WHERE backend_type = 'client backend'").fetchall()
    return {pid: name or "unnamed client" for pid, name in rows}


class CpuAccount:
    """CPU seconds by role between ``start`` and ``stop``. ``roles`` maps the processes of
    interest to a role at each reading (so that processes started in between count from
    their start); every other PostgreSQL process counts as "PostgreSQL, server work"."""

    def __init__(self, roles: Callable[[dict[int, ProcessCpu]], dict[int, str]]) -> None:
        self.roles = roles
        self._before: dict[int, ProcessCpu] = {}
        self._roles: dict[int, str] = {}

    def start(self) -> None:
        self._before = processes()
        self._roles = self.roles(self._before)

    def stop(self) -> dict[str, float]:
        after = processes()
        roles = {**self._roles, **self.roles(after)}
        used: dict[str, float] = {}
        for pid, now in after.items():
            role = roles.get(pid)
            if role is None and now.name in ("postgres", "postmaster"):
                role = "PostgreSQL, server work"
            if role is None:
                continue
            was = self._before.get(pid)
            used[role] = used.get(role, 0.0) + now.seconds - (was.seconds if was else 0.0)
        return used
