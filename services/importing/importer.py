"""Import a CSV file: check it, map every row, publish the accepted rows' events.

``import_csv`` is what ``ficha import`` and the HTTP upload call::

    report = await import_csv(path_or_stream, tenant="acme", js=js, mapping=spec)

Before anything is published the file is read whole (hash, encoding) and its columns are
mapped (``MappingError``/``CsvFileError``/``ImportRefused`` otherwise, all ValueErrors);
then rows are mapped and validated in chunks (by child processes for large files), a
second row for an email is refused, and the accepted rows' events are published through
JetStream in file order with a bounded window of unacknowledged publishes. A row counts
as published once JetStream has acknowledged every one of its events. If publishing stops
half-way (NATS gone, ``stop`` set by Ctrl-C), the report says how many rows were published
and ``completed`` is False; running the same import again is safe, because the event ids
derive from the file.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from contracts.decode import TENANT_PATTERN
from contracts.publisher import PublishFailed, WindowedPublisher, connection_of
from services.domain.tenant import TenantSettings
from services.importing.files import CsvFile, RejectsWriter, Source, open_csv
from services.importing.mapping import ColumnPlan, MappingSpec, plan_columns
from services.importing.rows import DEFAULT_SOURCE, FirstRowPerEmail, instant_text
from services.importing.worker import chunks_in_processes, chunks_inline

CHUNK_ROWS = 1000
# Files longer than this are mapped in child processes (worker.py), shorter ones in this
# one: starting a child costs about half a second.
IN_PROCESS_FROM_LINES = 20_000
DEFAULT_PROCESSES = 2


class ImportRefused(ValueError):
    """An argument makes the import impossible; nothing was published."""


class ImportOptions(msgspec.Struct, frozen=True, kw_only=True):
    source: str = DEFAULT_SOURCE
    # None: the instant the import starts (one for the whole file).
    occurred_at: datetime | None = None
    encoding: str = "utf-8"
    delimiter: str | None = None  # None: detected from the header line
    tag_separator: str | None = None  # None: the mapping's, else ","
    ignore_unknown_columns: bool = False
    dry_run: bool = False
    # Validate the whole file first and publish nothing if any row is rejected.
    all_or_nothing: bool = False
    window: int = 2000
    ack_timeout: float = 10.0
    # How many rejections the report object keeps (the rejects file has them all).
    keep_rejections: int = 100
    # Child processes mapping rows (0: in this process); None: by the file's size.
    mapping_processes: int | None = None


class RejectedRow(msgspec.Struct, frozen=True):
    line: int
    column: str
    reason: str
    code: str


class ImportReport(msgspec.Struct, kw_only=True):
    """What an import did; ``completed`` False means it stopped (``stopped`` says why)."""

    file: str
    tenant: str
    sha256: str
    encoding: str
    delimiter: str
    source: str
    occurred_at: str
    dry_run: bool
    columns: dict[str, str]
    lines: int
    rows_read: int = 0
    rows_empty: int = 0
    rows_accepted: int = 0
    rows_rejected: int = 0
    rows_published: int = 0
    events_by_type: dict[str, int] = {}
    events_published: int = 0
    duplicates: int = 0
    rejects_file: str | None = None
    rejections: list[RejectedRow] = []
    warnings: list[str] = []
    completed: bool = False
    stopped: str | None = None
    elapsed_s: float = 0.0

    @property
    def events(self) -> int:
        return sum(self.events_by_type.values())


async def import_csv(
    source: Source,
    *,
    tenant: str,
    js: JetStreamContext | None = None,
    mapping: MappingSpec | None = None,
    options: ImportOptions | None = None,
    rejects_path: Path | None = None,
    definitions: TenantSettings | None = None,
    on_progress: Callable[[ImportReport], None] | None = None,
    stop: asyncio.Event | None = None,
    name: str | None = None,
) -> ImportReport:
    """Import one CSV file for ``tenant`` (see the module's docstring).

    ``js`` may be None only with ``options.dry_run``. ``rejects_path``: where the rejected
    rows are written (line, column, reason); None keeps only the first few in the report.
    ``definitions``: the tenant's settings, to convert and check properties and types as
    ingestion will. ``on_progress`` gets the live report every few thousand rows.
    """
    options = options or ImportOptions()
    if not TENANT_PATTERN.fullmatch(tenant):
        raise ImportRefused(f"tenant {tenant!r} is not valid: use 1-63 lowercase letters, "
                         "digits, _ or -, starting with a letter or digit")
    if js is None and not options.dry_run:
        raise ImportRefused("publishing needs a JetStream context (or a dry run)")
    spec = mapping or MappingSpec()
    chosen_source = options.source if options.source != DEFAULT_SOURCE else (
        spec.source or DEFAULT_SOURCE)
    if not 1 <= len(chosen_source) <= 64:
        raise ImportRefused("the source must be 1-64 characters")
    moment = options.occurred_at or datetime.now(UTC)
    if moment.tzinfo is None:
        raise ImportRefused("occurred_at needs a timezone offset")
    csvfile = await asyncio.to_thread(open_csv, source, encoding=options.encoding,
                                      delimiter=options.delimiter, name=name)
    try:
        plan = plan_columns(csvfile.header, spec, ignore_unknown=options.ignore_unknown_columns,
                            tag_separator=options.tag_separator)

        mapper_args: dict[str, Any] = dict(
            tenant=tenant, file_sha256=csvfile.sha256, occurred_at=moment,
            source=chosen_source, definitions=definitions)

        def new_report(dry_run: bool) -> ImportReport:
            return ImportReport(
                file=csvfile.name, tenant=tenant, sha256=csvfile.sha256,
                encoding=csvfile.encoding, delimiter=csvfile.delimiter, source=chosen_source,
                occurred_at=instant_text(moment), dry_run=dry_run,
                columns={c.header: c.target.describe() for c in plan.columns},
                lines=csvfile.lines, warnings=list(plan.warnings),
                rejects_file=str(rejects_path) if rejects_path else None)

        started = time.monotonic()
        if options.dry_run or js is None:
            report = new_report(True)
            await _run(csvfile, plan, mapper_args, report, None, options, rejects_path,
                       on_progress, stop)
        else:
            await _check_stream(js, tenant)
            if options.all_or_nothing:
                report = new_report(True)
                await _run(csvfile, plan, mapper_args, report, None, options, rejects_path,
                           on_progress, stop)
                if report.rows_rejected or not report.completed:
                    # The check was all that ran: the report is a dry run's.
                    if report.rows_rejected:
                        rejected = ("1 row was" if report.rows_rejected == 1 else
                                    f"{report.rows_rejected:,} rows were")
                        report.warnings.append(f"{rejected} rejected and all-or-nothing was "
                                               "asked: nothing was published")
                    report.elapsed_s = time.monotonic() - started
                    return report
            report = new_report(False)
            publisher = WindowedPublisher(connection_of(js), window=options.window,
                                          ack_timeout=options.ack_timeout)
            async with publisher:
                await _run(csvfile, plan, mapper_args, report, publisher, options, rejects_path,
                           on_progress, stop)
        report.elapsed_s = time.monotonic() - started
        return report
    finally:
        csvfile.discard()


async def _check_stream(js: JetStreamContext, tenant: str) -> None:
    subject = f"ficha.in.{tenant}.contact_updated"
    try:
        await js.find_stream_name_by_subject(subject)
    except NotFoundError:
        raise PublishFailed(f"no JetStream stream takes {subject} on this NATS server: start "
                            "ficha once (it creates its streams), or check FICHA_NATS_URL"
                            ) from None
    except Exception as error:  # noqa: BLE001 - NATS is unreachable or refuses the request
        raise PublishFailed(f"cannot reach JetStream: {error or type(error).__name__}"
                            ) from error


async def _run(
    csvfile: CsvFile,
    plan: ColumnPlan,
    mapper_args: dict[str, Any],
    report: ImportReport,
    publisher: WindowedPublisher | None,
    options: ImportOptions,
    rejects_path: Path | None,
    on_progress: Callable[[ImportReport], None] | None,
    stop: asyncio.Event | None,
) -> None:
    """One pass over the rows: map, reject or publish; fills ``report``."""
    unacked: dict[int, int] = {}  # line of an accepted row → its events not yet acked

    def acked(line: int, duplicate: bool) -> None:
        left = unacked[line] - 1
        if left:
            unacked[line] = left
        else:
            del unacked[line]
            report.rows_published += 1

    if publisher is not None:
        publisher.on_ack = acked
    by_type = report.events_by_type
    keep = options.keep_rejections
    processes = options.mapping_processes
    if processes is None:
        processes = 0 if csvfile.lines <= IN_PROCESS_FROM_LINES else DEFAULT_PROCESSES
    chunks = (chunks_in_processes(csvfile, plan, mapper_args, CHUNK_ROWS, processes)
              if processes else chunks_inline(csvfile, plan, mapper_args, CHUNK_ROWS))
    first_rows = FirstRowPerEmail(plan.email.header)
    with RejectsWriter(rejects_path) as rejects:
        try:
            async with contextlib.aclosing(chunks):
                async for chunk in chunks:
                    if stop is not None and stop.is_set():
                        report.stopped = "interrupted before the end of the file"
                        break
                    report.rows_read += chunk.rows_read
                    report.rows_empty += chunk.rows_empty
                    for row in chunk.rows:
                        line, _, events, problems = first_rows.check(row)
                        if problems:
                            report.rows_rejected += 1
                            for problem in problems:
                                rejects.write(problem.line, problem.column, problem.reason)
                                if len(report.rejections) < keep:
                                    report.rejections.append(RejectedRow(
                                        problem.line, problem.column, problem.reason,
                                        problem.code))
                            continue
                        report.rows_accepted += 1
                        for event in events:
                            by_type[event.type] = by_type.get(event.type, 0) + 1
                        if publisher is not None:
                            unacked[line] = len(events)
                            for event in events:
                                await publisher.publish(event.subject, event.body,
                                                        event.event_id, key=line)
                    _progress(report, publisher, on_progress)
            if publisher is not None:
                # After the last row or an interruption: wait for what was sent to be
                # acknowledged, so that the count of published rows is exact.
                await publisher.flush()
        except PublishFailed as error:
            report.stopped = (f"{report.stopped}; then {error}" if report.stopped
                              else str(error))
        finally:
            if publisher is not None:
                report.events_published = publisher.acked
                report.duplicates = publisher.duplicates
    report.completed = report.stopped is None
    if report.completed and not report.rows_read:
        report.warnings.append("the file has no rows after its header: nothing to import")
    if rejects_path is not None and not rejects.count:
        report.rejects_file = None
    _progress(report, publisher, on_progress)


def _progress(report: ImportReport, publisher: WindowedPublisher | None,
              on_progress: Callable[[ImportReport], None] | None) -> None:
    if publisher is not None:
        report.events_published = publisher.acked
        report.duplicates = publisher.duplicates
    if on_progress is not None:
        on_progress(report)
