"""What every `ficha` command shares: consoles, one-line errors, settings, dates."""

from __future__ import annotations

import asyncio
import os
import sys
from datetime import UTC, datetime
from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.progress import TextColumn
from rich.text import Text

from services.config import ConfigError, Settings, load_settings

# Piped output (to a file, grep, a test) gets a wide table instead of folded cells.
# Nothing printed through these consoles is read as rich markup: contact data, tags, CSV
# headers and what the user typed are shown as written, brackets and all. Styling is
# explicit: a Text with a style, or markup=True on a print of a fixed string.
console = Console(width=None if sys.stdout.isatty() else 200, markup=False)
err = Console(stderr=True, width=None if sys.stderr.isatty() else 200, markup=False)


class CliError(Exception):
    """An expected failure: printed as one line, no traceback."""


def fail(message: str, code: int = 1) -> NoReturn:
    handling = sys.exc_info()[1]
    if isinstance(handling, typer.Exit):
        # A broad `except Exception` caught an earlier fail(): its sentence is printed.
        raise handling
    err.print(labelled("error:", "bold red", message), highlight=False)
    raise typer.Exit(code)


def labelled(label: str, style: str, message: str) -> Text:
    """``label message`` with the label styled and the message shown as written."""
    return Text.assemble((label, style), " ", message)


def description_column() -> TextColumn:
    """A progress bar's description, shown as written (it may hold a tenant or a name)."""
    return TextColumn("{task.description}", style="progress.description", markup=False)


def name_connections(argv: list[str]) -> None:
    """Name this process's PostgreSQL connections after the command it runs (libpq's
    ``PGAPPNAME``), so that ``pg_stat_activity`` tells an operator which ficha process
    holds which connection: ``ficha up``, ``ficha project contacts``, ``ficha api``...
    A name the operator set is kept."""
    if os.environ.get("PGAPPNAME") and not os.environ.get(_NAMED_BY_FICHA):
        return
    words = []
    for arg in argv:
        if arg.startswith("-"):
            break
        words.append(arg)
    if words[:1] == ["project"]:  # one process per projection: name which
        chosen = next((arg.split("=", 1)[1] for arg in argv if arg.startswith("--projection=")),
                      None)
        if chosen is None and "--projection" in argv[:-1]:
            chosen = argv[argv.index("--projection") + 1]
        words = ["project", chosen or "contacts"]
    os.environ["PGAPPNAME"] = " ".join(["ficha", *words[:2]])[:63]
    os.environ[_NAMED_BY_FICHA] = "1"  # a child `ficha` process names itself again


_NAMED_BY_FICHA = "FICHA_NAMED_PGAPPNAME"


def settings_or_fail() -> Settings:
    try:
        return load_settings()
    except ConfigError as error:
        fail(str(error), 2)


def run(coro: Any) -> Any:
    try:
        return asyncio.run(coro)
    except CliError as error:
        fail(str(error))


def views(settings: Settings) -> Any:
    from projections.db import ViewDatabase

    return ViewDatabase(settings)


def db_error_text(error: Exception) -> str:
    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return first


def parse_date(value: str | None, option: str) -> datetime | None:
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        fail(f"{option} must be a date like 2026-11-01 or 2026-11-01T10:00:00+01:00")
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def configure_logging(verbose: bool = False) -> None:
    """Logs of the long-running processes: one JSON object per line (with ``tenant``,
    ``event_id`` and the like on lines about an event) unless FICHA_LOG_FORMAT=text, or
    stderr is a terminal and FICHA_LOG_FORMAT is unset."""
    import logging
    import os

    from pythonjsonlogger.json import JsonFormatter

    chosen = os.environ.get("FICHA_LOG_FORMAT") or ("text" if sys.stderr.isatty() else "json")
    handler = logging.StreamHandler()
    if chosen == "json":
        handler.setFormatter(JsonFormatter(
            "%(asctime)s %(levelname)s %(name)s %(process)d %(message)s",
            rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
        ))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    if verbose:
        os.environ["FICHA_LOG_LEVEL"] = "debug"  # the projector processes log pages too
    debug = os.environ.get("FICHA_LOG_LEVEL", "").lower() == "debug"
    root.setLevel(logging.DEBUG if debug else logging.INFO)
