"""What every `ficha` command shares: consoles, one-line errors, settings, dates."""

from __future__ import annotations

import asyncio
import os
import re
import sqlite3
import sys
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, TypeVar

import typer
from rich.console import Console
from rich.progress import TextColumn
from rich.text import Text

from contracts.decode import TENANT_PATTERN
from services.config import ConfigError, Settings, load_settings
from services.instants import parse_instant

if TYPE_CHECKING:
    from services.store.contact_store import ContactStore

# Piped output (to a file, grep, a test) gets a wide table instead of folded cells.
# Nothing printed through these consoles is read as rich markup: contact data, tags, CSV
# headers and what the user typed are shown as written, brackets and all. Styling is
# explicit: a Text with a style, or markup=True on a print of a fixed string.
console = Console(width=None if sys.stdout.isatty() else 200, markup=False)
err = Console(stderr=True, width=None if sys.stderr.isatty() else 200, markup=False)


class CliError(Exception):
    """An expected failure: printed as one line, no traceback; ``code`` is the exit code
    (2: asked wrong, such as about someone or something that does not exist)."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def fail(message: str, code: int = 1) -> NoReturn:
    handling = sys.exc_info()[1]
    if isinstance(handling, typer.Exit):
        # A broad `except Exception` caught an earlier fail(): its sentence is printed.
        raise handling
    err.print(labelled("error:", "bold red", message), highlight=False,
              soft_wrap=True)  # one line, however long
    raise typer.Exit(code)


def counted(n: int, word: str, plural: str | None = None) -> str:
    """``1 member``, ``2 members``: a count with its noun."""
    return f"{n:,} {word if n == 1 else plural or word + 's'}"


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


def run(coro: Any, *, uvloop_loop: bool = False) -> Any:
    """Run a command's coroutine; ``uvloop_loop`` on uvloop's event loop (what uvicorn's
    own workers run on: the HTTP API costs about a fifth less CPU per request than on
    asyncio's loop, bench/RESULTS.md)."""
    try:
        if not uvloop_loop:
            return asyncio.run(coro)
        import uvloop

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(coro)
    except CliError as error:
        fail(str(error), error.code)


def writable_target(out: Path) -> None:
    """Refuse up front a file a command could not write (before any work is done)."""
    folder = out.parent
    if out.is_dir():
        fail(f"{out} is a folder: give a file name, e.g. {out / 'export.csv'}", 2)
    if not folder.is_dir():
        fail(f"cannot write {out}: the folder {folder} does not exist", 2)
    if not os.access(folder, os.W_OK | os.X_OK):
        fail(f"cannot write {out}: no permission to create files in {folder}", 2)


def views(settings: Settings) -> Any:
    from projections.db import ViewDatabase

    return ViewDatabase(settings)


def event_store(settings: Settings | None = None) -> ContactStore:
    """The event store, or one line saying why it cannot be opened (exit 1)."""
    from services.store.contact_store import ContactStore

    try:
        return ContactStore(settings or settings_or_fail())
    except Exception as error:  # noqa: BLE001 - the database is unreachable
        fail(f"cannot open the event store: {db_error_text(error)}")


T = TypeVar("T")


def read_views(tenant: str, read: Callable[[Any], T], what: str,
               refused: tuple[type[Exception], ...] = ()) -> T:
    """What ``read`` finds on a connection to the read models, once ``tenant`` is known
    here (``require_known_tenant``): the one way a read command reads. An error in
    ``refused`` (the user asked for something that is not there, or not valid) is its
    sentence and exit 2; any other failure (the database unreachable, a read model's
    tables missing) is one line saying ``what`` could not be read, and exit 1."""
    db = views(settings_or_fail())
    try:
        require_known_tenant(tenant, db)
        return read(db)
    except refused as error:
        fail(str(error), 2)
    except Exception as error:  # noqa: BLE001 - the database is unreachable or not created
        fail(f"cannot read {what}: {db_error_text(error)}")
    finally:
        db.close()


def db_error_text(error: Exception) -> str:
    if missing_table(error):
        return missing_tables_text()
    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return first


def missing_table(error: BaseException) -> bool:
    """A read model's table is not there (``missing_tables_text`` says why)."""
    import psycopg

    if isinstance(error, sqlite3.OperationalError):
        return str(error).startswith("no such table")
    return isinstance(error, psycopg.errors.UndefinedTable)


def missing_tables_text() -> str:
    """Why a read model's table is not there, and what brings it back: read models that
    ficha set up here and that lost tables since (``lost_read_models``) are named with
    the command that rebuilds them; read models gone whole (their SQLite file deleted)
    where the event store shows that ficha ran are said to be missing, with the commands
    that rebuild them from it; else ficha was never started here."""
    from projections.registry import lost_read_models

    try:
        settings = load_settings()
    except ConfigError:
        return "ficha has not been started here yet: start it once with `ficha up`"
    try:
        db = views(settings)
        try:
            lost = lost_read_models(db)
        finally:
            db.close()
    except Exception:  # noqa: BLE001 - nothing to tell: as on a database never set up
        lost = []
    if lost:
        whose = (f"the {lost[0]} read model's" if len(lost) == 1 else
                 f"the {' and '.join(lost)} read models'")
        return (f"{whose} tables are missing though ficha has run here: rebuild them from "
                f"the event store with `ficha projections rebuild {' '.join(lost)}`")
    where = (f"on the data dir {settings.data_dir}" if settings.postgres is None else
             f"in the database schema {settings.postgres.schema}")
    if _ran_here(settings):
        return (f"the read models are missing {where}, though its event store holds "
                "events: `ficha up` builds them from the event store as it starts, as does "
                "`ficha projections rebuild`")
    return f"ficha has not been started {where} yet: start it once with `ficha up`"


def _ran_here(settings: Settings) -> bool:
    """Whether the event store shows that ficha ran here: it holds events, or an ingest
    partition's position (silent: this only words an error)."""
    from services.runtime import tracking_name
    from services.store.contact_store import ContactStore

    if not _has_event_store(settings):
        return False
    try:
        store = ContactStore(settings)
    except Exception:  # noqa: BLE001 - unreadable: nothing to tell
        return False
    try:
        return store.max_notification_id() > 0 or any(
            store.tracked_position(tracking_name(p)) for p in range(settings.partitions))
    except Exception:  # noqa: BLE001 - unreadable: nothing to tell
        return False
    finally:
        store.close()


def _has_event_store(settings: Settings) -> bool:
    """Whether an event store may be here (on SQLite, opening one where there is no file
    would create it)."""
    return settings.postgres is not None or settings.events_db_path.exists()


def tenant_name(value: str | None) -> str | None:
    """The check of every --tenant option (its typer callback): one sentence for all."""
    if value is not None and not TENANT_PATTERN.fullmatch(value):
        fail(f"{value!r} is not a tenant name: 1 to 63 of a-z, 0-9, _ and -, starting "
             "with a letter or a digit", 2)
    return value


def tenant_option(help: str = "The tenant.") -> Any:
    """A --tenant option, checked against the contract's tenant pattern."""
    return typer.Option(help=help, callback=tenant_name)


def consent_channel(value: str | None) -> str | None:
    """The check of every consent channel option (a typer callback)."""
    from projections.contacts import CONSENT_CHANNELS

    if value is not None and value not in CONSENT_CHANNELS:
        fail(f"unknown consent channel {value!r}: use one of {', '.join(CONSENT_CHANNELS)}",
             2)
    return value


def country_code(value: str | None) -> str | None:
    """The check of a --country filter (a typer callback): the contract's country list."""
    from contracts.decode import COUNTRIES

    if value is not None and value.upper() not in COUNTRIES:
        fail(f"--country takes an ISO 3166-1 alpha-2 code (like ES, MX, US); got {value!r}", 2)
    return value


def language_tag(value: str | None) -> str | None:
    """The check of a --language filter (a typer callback): the contract's language tag."""
    from contracts.events import LANGUAGE_PATTERN

    if value is not None and not re.fullmatch(LANGUAGE_PATTERN, value):
        fail(f"--language takes a language tag (like es, or es-MX); got {value!r}", 2)
    return value


def contact_email(value: str | None) -> str | None:
    """The check of every option or argument naming a person by email (a typer callback):
    the contract's email syntax, after its normalisation."""
    from contracts.emails import email_problem, normalise_email

    problem = None if value is None else email_problem(normalise_email(value))
    if problem is not None:
        fail(f"{value!r} is not an email address: it {problem}", 2)
    return value


# The client list's filters, alike in `ficha contacts list` and `ficha export contacts`.
MOMENT = "a date, or an instant with its offset"
LanguageFilter = Annotated[str | None, typer.Option(
    "--language", help="Language tag: es matches es, es-MX…", callback=language_tag)]
CountryFilter = Annotated[str | None, typer.Option(
    "--country", help="ISO 3166-1 alpha-2 country code, e.g. ES.", callback=country_code)]
TagFilter = Annotated[str | None, typer.Option("--tag", help="Has this tag (any case).")]
ConsentFilter = Annotated[str | None, typer.Option(
    "--consent", help="Consent granted on this channel.", callback=consent_channel)]
NoConsentFilter = Annotated[str | None, typer.Option(
    "--no-consent", help="No consent on this channel.", callback=consent_channel)]
SinceFilter = Annotated[str | None, typer.Option(
    "--since", "--first-seen-from", help=f"First contact on or after this moment ({MOMENT}).")]
UntilFilter = Annotated[str | None, typer.Option(
    "--until", "--first-seen-to", help=f"First contact before this moment ({MOMENT}).")]
EmailPrefixFilter = Annotated[str | None, typer.Option(
    "--email-prefix", help="Email starts with.")]
# Options a few commands share.
ContactEmailOption = Annotated[str, typer.Option(
    "--email", help="The contact's email (any case).", callback=contact_email)]
AsOfOption = Annotated[str | None, typer.Option(
    "--as-of", help=f"Members at this moment instead of now ({MOMENT}).")]


def require_known_tenant(tenant: str, db: Any = None) -> None:
    """Fail with one line unless something of ``tenant`` exists here (services.tenants):
    for commands that read a tenant's data, where a misspelled name would otherwise show
    empty tables. Commands that create things for a tenant do not call it."""
    from services.tenants import known_in_views, some_known_tenants

    settings = settings_or_fail()
    own = db is None
    if own:
        db = views(settings)
    try:
        try:
            if known_in_views(db, tenant):
                return
            started = True
        except Exception as error:  # noqa: BLE001 - unreachable, or never started
            if not missing_table(error):
                fail(f"cannot read the read models: {db_error_text(error)}")
            started = False
        if _known_in_store(settings, tenant):
            return
        if not started:
            fail(missing_tables_text())
        known = some_known_tenants(db)
    finally:
        if own:
            db.close()
    names = ", ".join(known[:10]) + (", …" if len(known) > 10 else "") or "none yet"
    fail(f"no tenant {tenant!r} is known here (known: {names})", 2)


def _known_in_store(settings: Settings, tenant: str) -> bool:
    from services.tenants import known_in_store

    if not _has_event_store(settings):
        return False
    store = event_store(settings)
    try:
        return known_in_store(store, tenant)
    finally:
        store.close()


def parse_date(value: str | None, option: str) -> datetime | None:
    """A date (00:00 UTC of that day) or an instant with its offset, by the rule the API
    and imports follow (services/instants.py): a time without an offset is refused, not
    guessed."""
    if value is None:
        return None
    moment = parse_instant(value)
    if isinstance(moment, str):
        fail(f"{option} must be a date or an instant with its offset: {moment}", 2)
    return moment


def configure_logging(verbose: bool = False) -> None:
    """Logs of the long-running processes: one JSON object per line (with ``tenant``,
    ``event_id`` and the like on lines about an event) unless FICHA_LOG_FORMAT=text, or
    stderr is a terminal and FICHA_LOG_FORMAT is unset."""
    import logging
    import os

    from pythonjsonlogger.core import RESERVED_ATTRS
    from pythonjsonlogger.json import JsonFormatter

    chosen = os.environ.get("FICHA_LOG_FORMAT") or ("text" if sys.stderr.isatty() else "json")
    handler = logging.StreamHandler()
    if chosen == "json":
        handler.setFormatter(JsonFormatter(
            "%(asctime)s %(levelname)s %(name)s %(process)d %(message)s",
            rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
            # uvicorn's copy of its message with terminal colour codes: noise in a log store
            reserved_attrs=[*RESERVED_ATTRS, "color_message"],
        ))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    if verbose:
        os.environ["FICHA_LOG_LEVEL"] = "debug"  # the projector processes log pages too
    debug = os.environ.get("FICHA_LOG_LEVEL", "").lower() == "debug"
    root.setLevel(logging.DEBUG if debug else logging.INFO)
