"""`ficha export contacts|segment`: the client list or a segment's members to a file."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from services.cli_common import (
    AsOfOption,
    ConsentFilter,
    CountryFilter,
    EmailPrefixFilter,
    LanguageFilter,
    NoConsentFilter,
    SinceFilter,
    TagFilter,
    UntilFilter,
    console,
    db_error_text,
    description_column,
    err,
    fail,
    parse_date,
    require_known_tenant,
    settings_or_fail,
    tenant_option,
    views,
    writable_target,
)

export_app = typer.Typer(
    help="Export contacts, or a segment's members, to CSV or Parquet (streamed).",
    no_args_is_help=True,
)

Tenant = Annotated[str, tenant_option()]
Out = Annotated[Path, typer.Option("--out", help="The file to write (replaced when complete).")]
Format = Annotated[str | None, typer.Option(
    "--format", help="csv or parquet (default: from the file name's extension).")]
AsJson = Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")]

SUFFIXES = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}


def _format(fmt: str | None, out: Path) -> Any:
    from projections.export import FORMATS

    if fmt is None:
        chosen = SUFFIXES.get(out.suffix.lower())
        if chosen is None:
            fail(f"cannot tell the format from the name {out.name!r}: "
                 "add --format csv or --format parquet", 2)
        return chosen
    if fmt.lower() not in FORMATS:
        fail(f"unknown format {fmt!r}: use --format csv or --format parquet", 2)
    return fmt.lower()


def _size(n: int) -> str:
    value = float(n)
    for unit in ("bytes", "KB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:,.0f} {unit}" if unit == "bytes" else f"{value:,.1f} {unit}"
        value /= 1000
    return f"{n} bytes"


def _run_export(build: Callable[[Any], Any], what: str, fmt: str | None, out: Path,
                as_json: bool) -> None:
    """Build the query, count its rows, export them with a progress bar, summarise.

    ``build`` raises NotFound or QueryError for what the user asked wrongly."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from projections.audience_queries import NotFound
    from projections.export import count_rows, export_to_file
    from projections.queries import QueryError

    writable_target(out)
    chosen = _format(fmt, out)
    db = views(settings_or_fail())
    try:
        try:
            query = build(db)
            total = count_rows(db, query)
        except (NotFound, QueryError) as error:
            fail(str(error), 2)
        except Exception as error:  # noqa: BLE001 - the database is unreachable
            fail(f"cannot read {what}: {db_error_text(error)}")
        columns = (description_column(), BarColumn(),
                   MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn())
        with Progress(*columns, console=err, disable=as_json) as progress:
            task = progress.add_task(f"exporting {what}", total=total)
            try:
                result = export_to_file(db, query, chosen, out,
                                        progress=lambda n: progress.advance(task, n))
            except OSError as error:
                fail(f"cannot write {out}: {error.strerror or error}; nothing was written")
            except Exception as error:  # noqa: BLE001 - the database failed half-way
                fail(f"the export failed, nothing was written to {out}: "
                     f"{db_error_text(error)}")
    finally:
        db.close()
    if as_json:
        print(json.dumps({"what": what, **result.to_dict()}))
        return
    console.print(f"exported {result.rows:,} rows ({what}) to {result.path} as {chosen}: "
                  f"{_size(result.bytes)} in {result.seconds:.1f} s", highlight=False)


@export_app.command("contacts")
def export_contacts(
    tenant: Tenant,
    out: Out,
    fmt: Format = None,
    language: LanguageFilter = None,
    country: CountryFilter = None,
    tag: TagFilter = None,
    consent: ConsentFilter = None,
    no_consent: NoConsentFilter = None,
    first_seen_from: SinceFilter = None,
    first_seen_to: UntilFilter = None,
    email_prefix: EmailPrefixFilter = None,
    as_json: AsJson = False,
) -> None:
    """The client list with its filters, every column, in its order (newest first)."""
    from projections.export import contacts_query
    from projections.queries import ContactFilter

    f = ContactFilter(
        tenant=tenant, language=language, country=country, tag=tag, consent=consent,
        no_consent=no_consent, email_prefix=email_prefix,
        first_seen_from=parse_date(first_seen_from, "--since (--first-seen-from)"),
        first_seen_to=parse_date(first_seen_to, "--until (--first-seen-to)"),
    )

    def build(db: Any) -> Any:
        require_known_tenant(tenant, db)
        return contacts_query(db, f)

    _run_export(build, "contacts", fmt, out, as_json)


@export_app.command("segment")
def export_segment(
    segment_id: Annotated[str, typer.Argument(help="The segment.")],
    tenant: Tenant,
    out: Out,
    fmt: Format = None,
    as_of: AsOfOption = None,
    as_json: AsJson = False,
) -> None:
    """A segment's members, now or at a past time, with their cards and entered_at."""
    from projections.export import segment_query

    moment = parse_date(as_of, "--as-of")

    def build(db: Any) -> Any:
        require_known_tenant(tenant, db)
        return segment_query(db, tenant, segment_id, moment)

    _run_export(build, f"segment {segment_id}", fmt, out, as_json)
