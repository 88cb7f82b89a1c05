"""Replaying or rebuilding several read models at once, each in a process of its own.

Each projection reads the whole log and applies it on its own, mostly in Python: one after
the other, they take the sum of their times; side by side on two cores, close to the
longest one's (bench.rebuild, 54,000 events on PostgreSQL: 12,800 events/s one after
the other, 17,800 side by side, process start-up included). A process per projection, not
a thread: their folds would take turns on one interpreter lock (threads: 5-12 % faster).

The parent shows the progress its children report and says how each one ended; a child
opens its own connections (none is shared across the fork: processes are spawned).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import queue
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

Kind = Literal["replay", "rebuild"]

# How often a child reports its position, at most (seconds).
_REPORT_EVERY_S = 0.2


@dataclass(frozen=True)
class JobEnd:
    """How one projection's job ended: ``ok``, and a sentence to print."""

    name: str
    ok: bool
    said: str


def run_job(kind: Kind, env: dict[str, str], name: str, tenant: str | None,
            on_page: Callable[[int], None] | None = None) -> JobEnd:
    """Replay or rebuild the projection ``name`` with the settings of ``env``."""
    from projections.db import ViewDatabase
    from projections.registry import projection_named
    from projections.replay import replay
    from projections.runner import ProjectionRunner
    from services.cli_common import db_error_text
    from services.config import load_settings
    from services.store.contact_store import ContactStore

    settings = load_settings(env)
    what = f" for tenant {tenant}" if tenant else ""
    try:
        store = ContactStore(settings)
        db = ViewDatabase(settings)
    except Exception as error:  # noqa: BLE001 - the database is unreachable
        return JobEnd(name, False, f"{name}: cannot start: {db_error_text(error)}")
    try:
        projection = projection_named(name)
        if kind == "replay":
            result = replay(store, db, type(projection), on_page, tenant=tenant)
            return JobEnd(name, True, f"{result.name}: {result.events} events replayed; "
                          f"readers switched{what} at position {result.position}")
        runner = ProjectionRunner(store, db, projection)
        runner.setup()
        runner.rebuild(on_page)
        # A running projector applies pages in turn with this command (possibly all of
        # them): the count alone would read as if nothing had been rebuilt.
        return JobEnd(name, True, f"rebuilt {name} to position {runner.position()}, the "
                      f"log's head: {runner.stats.applied:,} events applied by this "
                      "command, any others by a running projector")
    except Exception as error:  # noqa: BLE001 - reported by the parent, in a line
        if kind == "replay":
            return JobEnd(name, False, f"{name}: replay failed, the live tables are "
                          f"unchanged: {db_error_text(error)}")
        return JobEnd(name, False, f"cannot rebuild {name}: {db_error_text(error)}")
    finally:
        db.close()
        store.close()


def _child(kind: Kind, env: dict[str, str], name: str, tenant: str | None,
           reports: Any) -> None:
    from services.collector import tune_for_throughput

    tune_for_throughput()  # as the `ficha` command that started it
    last = 0.0

    def on_page(position: int) -> None:
        nonlocal last
        if time.monotonic() - last >= _REPORT_EVERY_S:
            last = time.monotonic()
            reports.put(("position", name, position))

    try:
        end = run_job(kind, env, name, tenant, on_page)
    except BaseException as error:  # (run_job reports what it expects) noqa: BLE001
        end = JobEnd(name, False, f"{name}: {type(error).__name__}: {error}")
    reports.put(("end", name, end))


def run_side_by_side(kind: Kind, env: dict[str, str], names: list[str], tenant: str | None,
                     on_position: Callable[[str, int], None]) -> list[JobEnd]:
    """Each projection of ``names`` in a spawned process; ``on_position`` hears their
    progress. Returns how each ended, in the order of ``names``."""
    context = multiprocessing.get_context("spawn")
    reports = context.Queue()
    children = {name: context.Process(target=_child, args=(kind, env, name, tenant, reports),
                                      name=f"ficha-{kind}-{name}", daemon=True)
                for name in names}
    for child in children.values():
        child.start()
    ends: dict[str, JobEnd] = {}

    def heard(report: tuple[str, str, Any]) -> None:
        what, name, value = report
        if what == "position":
            on_position(name, value)
        else:
            ends[name] = value

    last_look = time.monotonic()
    try:
        while len(ends) < len(children):
            with contextlib.suppress(queue.Empty):
                heard(reports.get(timeout=0.5))
            if time.monotonic() - last_look < 1.0:
                continue
            last_look = time.monotonic()
            for name, child in children.items():
                if name in ends or child.is_alive():
                    continue
                while True:  # what it said before it ended is in the queue by now
                    try:
                        heard(reports.get_nowait())
                    except queue.Empty:
                        break
                if name not in ends:  # ended without a word: killed
                    ends[name] = JobEnd(name, False, f"{name}: the process ended "
                                        f"unexpectedly (exit code {child.exitcode})")
    finally:
        deadline = time.monotonic() + 30  # for all of them together
        for child in children.values():
            child.join(timeout=max(0.0, deadline - time.monotonic()))
            if child.is_alive():
                child.terminate()
    return [ends[name] for name in names]
