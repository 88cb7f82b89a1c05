"""`ficha import FILE.csv --tenant T`: contacts from a CSV file, published as events.

Exit codes: 0 every row imported; 1 stopped part-way (NATS, Ctrl-C) or NATS unreachable;
2 the file, the mapping or an option is wrong (nothing published); 3 finished, but some
rows were rejected (see the rejects report).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from pathlib import Path
from typing import Annotated, Any

import msgspec
import typer
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from services.cli_common import (
    CliError,
    console,
    db_error_text,
    description_column,
    err,
    fail,
    labelled,
    settings_or_fail,
    tenant_option,
)
from services.config import Settings

EXIT_STOPPED = 1
EXIT_BAD_INPUT = 2
EXIT_REJECTED = 3


def import_file(
    file: Annotated[Path, typer.Argument(help="The CSV file (UTF-8 unless --encoding).",
                                         show_default=False)],
    tenant: Annotated[str, tenant_option("Tenant to import into.")],
    mapping: Annotated[Path | None, typer.Option(
        help="JSON or YAML file mapping headers to fields (docs/import.md).")] = None,
    ignore_unknown_columns: Annotated[bool, typer.Option(
        "--ignore-unknown-columns",
        help="Leave out columns that map to nothing instead of refusing the file.")] = False,
    dry_run: Annotated[bool, typer.Option(
        "--dry-run",
        help="Validate every row and write the rejects report; publish nothing.")] = False,
    all_or_nothing: Annotated[bool, typer.Option(
        "--all-or-nothing",
        help="Validate the whole file first; publish nothing if any row is rejected.")] = False,
    tag_separator: Annotated[str | None, typer.Option(
        help="Splits the tags column (default ,).")] = None,
    delimiter: Annotated[str | None, typer.Option(
        help="Cell delimiter: , ; | or tab (default: the header's commonest).")] = None,
    encoding: Annotated[str, typer.Option(help="The file's encoding.")] = "utf-8",
    source: Annotated[str, typer.Option(help="The events' source field.")] = "import",
    occurred_at: Annotated[str | None, typer.Option(
        help="The events' occurred_at (default: when the import starts), e.g. "
             "2026-11-02T10:00:00+01:00.")] = None,
    rejects: Annotated[Path | None, typer.Option(
        help="Where to write rejected rows (default: FILE.rejects.csv).")] = None,
    window: Annotated[int, typer.Option(
        help="Publishes awaiting JetStream's acknowledgement at most.")] = 2000,
    as_json: Annotated[bool, typer.Option("--json", help="The report as JSON.")] = False,
) -> None:
    """Import contacts from a CSV file: each row becomes contact_updated (and list_subscribed
    / consent_changed where its columns say so), validated like ingestion does; rejected rows
    go to FILE.rejects.csv. Importing the same file again changes nothing."""
    from services.importing.files import CsvFileError, load_mapping, rejects_path_for
    from services.importing.importer import ImportOptions, ImportRefused, import_csv
    from services.importing.mapping import MappingError
    from services.importing.rows import parse_instant

    settings = settings_or_fail()
    spec = None
    if mapping is not None:
        try:
            spec = load_mapping(mapping)
        except MappingError as error:
            _refuse(error.problems)
    moment = None
    if occurred_at is not None:
        parsed = parse_instant(occurred_at)
        if isinstance(parsed, str):
            fail(f"--occurred-at: {parsed}", EXIT_BAD_INPUT)
        moment = parsed
    if window < 1:
        fail("--window must be at least 1", EXIT_BAD_INPUT)
    options = ImportOptions(
        source=source, occurred_at=moment, encoding=encoding, delimiter=delimiter,
        tag_separator=tag_separator, ignore_unknown_columns=ignore_unknown_columns,
        dry_run=dry_run, all_or_nothing=all_or_nothing, window=window)
    definitions, note = _tenant_definitions(settings, tenant)
    if note:
        err.print(labelled("note:", "yellow", note), highlight=False)

    async def main() -> Any:
        from contracts.publisher import PublishFailed

        js = None
        nc = None
        if not dry_run:
            nc, js = await _connect(settings)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        this = asyncio.current_task()

        def interrupt() -> None:
            if stop.is_set() and this is not None:
                this.cancel()  # a second Ctrl-C: stop waiting for acknowledgements
            stop.set()

        loop.add_signal_handler(signal.SIGINT, interrupt)
        try:
            with _progress_bar(not as_json) as bar:
                return await import_csv(
                    file, tenant=tenant, js=js, mapping=spec, options=options,
                    rejects_path=rejects or rejects_path_for(file), definitions=definitions,
                    on_progress=bar, stop=stop)
        except PublishFailed as error:
            raise CliError(f"{error}. Nothing was published.") from error
        finally:
            loop.remove_signal_handler(signal.SIGINT)
            if nc is not None:
                with contextlib.suppress(Exception):
                    await nc.close()

    try:
        report = _run(main())
    except (CsvFileError, MappingError, ImportRefused) as error:
        _refuse(getattr(error, "problems", None) or [str(error)])
    _show(report, as_json)


def _run(coro: Any) -> Any:
    try:
        return asyncio.run(coro)
    except CliError as error:
        fail(str(error), EXIT_STOPPED)
    except asyncio.CancelledError:
        fail("interrupted twice: stopped without waiting for acknowledgements. Re-running "
             "the same command is safe: ficha stores each event once.", EXIT_STOPPED)


def _refuse(problems: list[str]) -> None:
    for problem in problems:
        err.print(labelled("error:", "bold red", problem), highlight=False)
    err.print("nothing was published", highlight=False)
    raise typer.Exit(EXIT_BAD_INPUT)


def _tenant_definitions(settings: Settings, tenant: str) -> tuple[Any, str | None]:
    """The tenant's property and type definitions from the event store, if it is there."""
    if settings.postgres is None and not settings.events_db_path.exists():
        return None, None  # no event store here yet: nothing can be defined
    try:
        from services.catalog import TenantCommands
        from services.store.contact_store import ContactStore

        store = ContactStore(settings)
        try:
            return TenantCommands(store).settings(tenant), None
        finally:
            store.close()
    except Exception as error:  # noqa: BLE001 - the database is unreachable
        return None, (f"cannot read tenant {tenant}'s definitions ({db_error_text(error)}): "
                      "property types and contact types are checked at ingestion only")


async def _connect(settings: Settings) -> tuple[Any, Any]:
    """A connection for one import: a few reconnects ride out a NATS restart; errors are
    summed up in one line by the import's report, not logged with tracebacks."""
    from services.runtime import connect_nats, resolve_nats_url, unreachable_text

    url = resolve_nats_url(settings)
    if url is None:
        raise CliError("no NATS server: start `ficha up` first, or set FICHA_NATS_URL "
                       "(or use --dry-run to validate only)")

    try:
        nc = await connect_nats(url, name="ficha-import", attempts=5, reconnect_forever=False)
    except Exception as error:
        raise CliError(unreachable_text(settings, url, error)) from error
    return nc, nc.jetstream()


class _ProgressBar:
    """Rows read against the file's line count, with the counts as they grow."""

    def __init__(self, enabled: bool) -> None:
        self.progress = Progress(
            SpinnerColumn(),
            description_column(),
            BarColumn(),
            MofNCompleteColumn(),
            TaskProgressColumn(),
            TextColumn("{task.fields[counts]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=err,
            disable=not enabled,
            transient=False,
        )
        self.task = self.progress.add_task("reading", total=None, counts="")

    def __enter__(self) -> _ProgressBar:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def __call__(self, report: Any) -> None:
        published = "" if report.dry_run else f" · {report.rows_published:,} published"
        self.progress.update(
            self.task, description="checking" if report.dry_run else "importing",
            # The line count estimates the rows (a quoted cell may span lines): once the
            # file is read, the rows read are the whole.
            total=report.rows_read if report.completed else max(report.lines - 1,
                                                                report.rows_read),
            completed=report.rows_read,
            counts=f"{report.rows_accepted:,} ok · {report.rows_rejected:,} rejected"
                   f"{published}")


def _progress_bar(enabled: bool) -> _ProgressBar:
    return _ProgressBar(enabled)


def _show(report: Any, as_json: bool) -> None:
    if as_json:
        print(msgspec.json.encode(report).decode())
    else:
        for warning in report.warnings:
            err.print(labelled("warning:", "yellow", warning), highlight=False)
        console.print(_summary(report))
    if not report.completed:
        waiting = report.rows_accepted - report.rows_published
        unread = max(report.lines - 1 - report.rows_read, 0)
        err.print(labelled("stopped:", "bold red", report.stopped or ""), highlight=False)
        err.print(
            f"{report.rows_published:,} of {report.rows_accepted:,} accepted rows were "
            f"published ({report.events_published:,} events acknowledged)"
            + (f"; {waiting:,} were not, or not wholly" if waiting > 0 else "")
            + (f"; about {unread:,} rows were not read" if unread else "") + ".",
            highlight=False)
        err.print("Re-running the same command is safe: the event ids derive from the file "
                  "and its rows, so ficha stores each event once.", highlight=False)
        raise typer.Exit(EXIT_STOPPED)
    if report.rows_rejected:
        where = f": see {report.rejects_file} (line, column, reason)" if report.rejects_file \
            else ""
        rows = "1 row" if report.rows_rejected == 1 else f"{report.rows_rejected:,} rows"
        err.print(Text.assemble((f"{rows} rejected", "yellow"), where), highlight=False)
        raise typer.Exit(EXIT_REJECTED)


def _summary(report: Any) -> Table:
    title = ("dry run (nothing published)" if report.dry_run else "import") + \
        f" of {report.file} into {report.tenant}"
    table = Table(title=title, show_header=False)
    table.add_column("what", style="bold")
    table.add_column("count", justify="right")
    table.add_column("detail", overflow="fold")
    rate = report.rows_read / report.elapsed_s if report.elapsed_s else 0.0
    events = ", ".join(f"{kind} {n:,}" for kind, n in sorted(report.events_by_type.items()))
    table.add_row("rows read", f"{report.rows_read:,}",
                  f"delimiter {report.delimiter!r}, {report.encoding}")
    table.add_row("  empty, skipped", f"{report.rows_empty:,}", "")
    table.add_row("  accepted", f"{report.rows_accepted:,}", "")
    table.add_row("  rejected", f"{report.rows_rejected:,}", report.rejects_file or "")
    table.add_row("events built", f"{report.events:,}", events)
    if not report.dry_run:
        table.add_row("rows published", f"{report.rows_published:,}",
                      "every event acknowledged by JetStream")
        table.add_row("events published", f"{report.events_published:,}", "")
        table.add_row("duplicates (JetStream)", f"{report.duplicates:,}",
                      "already stored within JetStream's window; ficha drops other repeats")
    table.add_row("elapsed", f"{report.elapsed_s:,.1f} s", f"{rate:,.0f} rows/s")
    table.add_row("occurred_at", "", report.occurred_at)
    table.add_row("columns", "", ", ".join(
        f"{header} → {target}" for header, target in report.columns.items()))
    return table
