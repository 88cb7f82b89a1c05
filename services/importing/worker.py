"""Rows mapped in child processes, so that validating and publishing use every core.

Mapping a row (building its events and running each through the decoder) costs about
twice what publishing it does. With ``processes`` = n, each child reads the whole file
(reading is cheap) and maps every n-th chunk of it; the parent takes the chunks back in
file order, round robin, and publishes. A bounded queue per child keeps it at most a few
chunks ahead. Children ignore Ctrl-C: the parent decides when to stop, and ends them.

Children are started with the spawn method (no fork of a process running an event loop
and threads): a script calling this must guard its entry point with
``if __name__ == "__main__":``.
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

AHEAD = 4  # chunks a child may map before the parent takes them


class RowProcessFailed(RuntimeError):
    """A child process that maps rows failed; the message says how."""


def _produce(csvfile: CsvFile, plan: ColumnPlan, mapper_args: dict[str, Any], size: int,
             share: tuple[int, int], out: Any, stop: Any) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        mapper = RowMapper(plan, **mapper_args)
        for chunk in map_chunks(csvfile.records(), mapper, size, share):
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


async def chunks_in_processes(csvfile: CsvFile, plan: ColumnPlan,
                              mapper_args: dict[str, Any], size: int,
                              processes: int) -> AsyncGenerator[Chunk, None]:
    """The file's chunks, mapped by ``processes`` children, in file order."""
    context = multiprocessing.get_context("spawn")
    stop = context.Event()
    outs = [context.Queue(maxsize=AHEAD) for _ in range(processes)]
    children = [
        context.Process(target=_produce, name=f"ficha-import-rows-{index}", daemon=True,
                        args=(csvfile, plan, mapper_args, size, (index, processes),
                              outs[index], stop))
        for index in range(processes)]
    for child in children:
        child.start()
    loop = asyncio.get_running_loop()
    try:
        number = 0
        while True:
            index = number % processes
            item = await loop.run_in_executor(None, _take, outs[index], children[index])
            if item is None:
                return
            if isinstance(item, str):
                raise RowProcessFailed(f"a process mapping the rows failed: {item}")
            yield item
            number += 1
    finally:
        stop.set()  # a child waiting to hand over a chunk gives up within half a second
        for child in children:
            with contextlib.suppress(Exception):
                await loop.run_in_executor(None, child.join, 2)
            if child.is_alive():
                child.terminate()
                child.join(timeout=5)
        for out in outs:
            out.cancel_join_thread()
            out.close()


async def chunks_inline(csvfile: CsvFile, plan: ColumnPlan, mapper_args: dict[str, Any],
                        size: int) -> AsyncGenerator[Chunk, None]:
    """The same chunks mapped in this process (small files: no process to start)."""
    mapper = RowMapper(plan, **mapper_args)
    for chunk in map_chunks(csvfile.records(), mapper, size):
        yield chunk
        await asyncio.sleep(0)  # let acknowledgements and Ctrl-C in between chunks
