"""Rows mapped in a child process, so that validating and publishing use both cores.

Mapping a row (building its events and running each through the decoder) costs about
twice what publishing it does; in one process the two take turns on one core. The child
reads the file and maps it in chunks, in order; the parent publishes. A bounded queue
keeps the child at most a few chunks ahead. The child ignores Ctrl-C: the parent decides
when to stop, and then ends it.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import queue as queues
import signal
from collections.abc import AsyncGenerator
from typing import Any

from services.importing.files import CsvFile
from services.importing.mapping import ColumnPlan
from services.importing.rows import Chunk, RowMapper, map_chunks

AHEAD = 8  # chunks the child may map before the parent takes them


class RowProcessFailed(RuntimeError):
    """The child process that maps rows failed; the message says how."""


def _produce(csvfile: CsvFile, plan: ColumnPlan, mapper_args: dict[str, Any], size: int,
             out: Any, stop: Any) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        mapper = RowMapper(plan, **mapper_args)
        for chunk in map_chunks(csvfile.records(), mapper, size):
            while not stop.is_set():
                try:
                    out.put(chunk, timeout=0.5)
                    break
                except queues.Full:
                    continue
            if stop.is_set():
                return
        out.put(None)
    except BaseException as error:  # noqa: BLE001 - reported to the parent, which raises
        out.put(f"{type(error).__name__}: {error}")


def _take(out: Any, process: Any) -> Chunk | str | None:
    while True:
        try:
            item: Chunk | str | None = out.get(timeout=0.5)
            return item
        except queues.Empty:
            if not process.is_alive():
                try:
                    last: Chunk | str | None = out.get(timeout=0.5)
                    return last
                except queues.Empty:
                    return f"it exited with code {process.exitcode}"


async def chunks_in_process(csvfile: CsvFile, plan: ColumnPlan, mapper_args: dict[str, Any],
                            size: int) -> AsyncGenerator[Chunk, None]:
    """The file's chunks, mapped by a child process, in file order."""
    context = multiprocessing.get_context("spawn")
    out = context.Queue(maxsize=AHEAD)
    stop = context.Event()
    process = context.Process(target=_produce, name="ficha-import-rows", daemon=True,
                              args=(csvfile, plan, mapper_args, size, out, stop))
    process.start()
    loop = asyncio.get_running_loop()
    try:
        while True:
            item = await loop.run_in_executor(None, _take, out, process)
            if item is None:
                return
            if isinstance(item, str):
                raise RowProcessFailed(f"the process mapping the rows failed: {item}")
            yield item
    finally:
        stop.set()  # a child waiting to hand over a chunk gives up within half a second
        with contextlib.suppress(Exception):
            await loop.run_in_executor(None, process.join, 2)
        if process.is_alive():
            process.terminate()
            process.join(timeout=5)
        out.cancel_join_thread()
        out.close()


async def chunks_inline(csvfile: CsvFile, plan: ColumnPlan, mapper_args: dict[str, Any],
                        size: int) -> AsyncGenerator[Chunk, None]:
    """The same chunks mapped in this process (small files: no process to start)."""
    mapper = RowMapper(plan, **mapper_args)
    for chunk in map_chunks(csvfile.records(), mapper, size):
        yield chunk
        await asyncio.sleep(0)  # let acknowledgements and Ctrl-C in between chunks
