"""The `ficha` command line: run the system, feed it demo data, read the client list."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from services.cli_api import api, keys_app
from services.cli_audience import (
    consent_app,
    engagement_app,
    lists_app,
    properties_app,
    rfm_app,
    segments_app,
    tags_app,
    tenant_app,
)
from services.cli_common import (
    CliError,
    ConsentFilter,
    ContactEmailOption,
    CountryFilter,
    EmailPrefixFilter,
    LanguageFilter,
    NoConsentFilter,
    SinceFilter,
    TagFilter,
    UntilFilter,
    configure_logging,
    console,
    counted,
    db_error_text,
    description_column,
    err,
    event_store,
    fail,
    labelled,
    name_connections,
    parse_date,
    read_views,
    require_known_tenant,
    run,
    settings_or_fail,
    tenant_option,
    views,
)
from services.cli_dlq import dlq_app
from services.cli_export import export_app
from services.cli_import import import_file
from services.cli_privacy import contacts_access, erase, erasures_app
from services.cli_sql import sql_app
from services.demo import DEMO_DAYS_BACK, demo_start
from services.limits import PAGE_LIMIT_MAX

if TYPE_CHECKING:
    from services.config import Settings
    from services.projection_jobs import Kind

app = typer.Typer(
    help="ficha: an event-sourced contact backend. Events in on NATS, contact cards out.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
contacts_app = typer.Typer(help="Read the client list and contact cards.", no_args_is_help=True)
projections_app = typer.Typer(help="Operate the read models.", no_args_is_help=True)
app.add_typer(contacts_app, name="contacts")
app.add_typer(projections_app, name="projections")
app.add_typer(segments_app, name="segments")
app.add_typer(export_app, name="export")
app.add_typer(engagement_app, name="engagement")
app.add_typer(lists_app, name="lists")
app.add_typer(consent_app, name="consent")
app.add_typer(rfm_app, name="rfm")
app.add_typer(tenant_app, name="tenant")
app.add_typer(properties_app, name="properties")
app.add_typer(tags_app, name="tags")
app.add_typer(dlq_app, name="dlq")
app.add_typer(keys_app, name="keys")
app.command()(api)

app.add_typer(sql_app, name="sql")
app.add_typer(erasures_app, name="erasures")
app.command("erase")(erase)
contacts_app.command("access")(contacts_access)
app.command("import")(import_file)

# ------------------------------------------------------------------------- up


def _serve(runtime: Any, banner: str) -> None:
    """Start a runtime, run it until Ctrl-C, SIGTERM or a failed task, stop it cleanly."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        stopping = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stopping.set)
        try:
            await runtime.start()
        except Exception as error:
            await runtime.stop()
            raise CliError(f"could not start: {db_error_text(error)}") from error
        console.print(banner.format(nats=escape(runtime.nats_url)), markup=True)
        waiter = asyncio.create_task(runtime.wait())
        stopper = asyncio.create_task(stopping.wait())
        done, _ = await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
        console.print("stopping…")
        await runtime.stop()
        waiter.cancel()
        if waiter in done and waiter.exception() is not None:
            raise CliError(f"a worker stopped: {waiter.exception()}")
        console.print("stopped cleanly")

    run(main())


@app.command()
def up(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help=(
        "Debug logs (FICHA_LOG_LEVEL=debug): every ingest batch and projection page, "
        "with its timings."))] = False,
) -> None:
    """Start everything: NATS (embedded unless FICHA_NATS_URL), ingest workers, projections."""
    from services.runtime import Runtime

    configure_logging(verbose)
    settings = settings_or_fail()
    _serve(Runtime(settings, projector="process"),
           f"[bold green]ficha is up[/]  backend={settings.backend}  nats={{nats}}  "
           f"partitions={settings.partitions}  data={escape(str(settings.data_dir))}\n"
           + (f"HTTP API: http://{settings.api_host}:{settings.api_port} "
              f"(OpenAPI at /schema)\n" if settings.api_port else "")
           + "Publish to ficha.in.<tenant>.<type>; Ctrl-C stops.")


def parse_partitions(text: str, total: int) -> list[int]:
    """'0-3,6' -> [0, 1, 2, 3, 6]; a clear error for anything else."""
    owned: set[int] = set()
    try:
        for part in text.split(","):
            low, _, high = part.strip().partition("-")
            first, last = int(low), int(high or low)
            if first > last:
                raise ValueError
            owned.update(range(first, last + 1))
    except ValueError:
        fail(f"--partitions takes numbers and ranges like 0-3,6; got {text!r}", 2)
    wrong = sorted(p for p in owned if not 0 <= p < total)
    if wrong:
        fail(f"partitions {wrong} do not exist: FICHA_PARTITIONS is {total} (0 to {total - 1})",
             2)
    return sorted(owned)


@app.command()
def ingest(
    partitions: Annotated[str | None, typer.Option(
        help="Partitions this process owns, e.g. 0-3 (default: all).")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help=(
        "Debug logs (FICHA_LOG_LEVEL=debug): every ingest batch, with its timings."))] = False,
) -> None:
    """Run ingest workers only, for some partitions: to spread them over machines.

    Give each partition to exactly one running `ficha ingest` (docs/scaling.md).
    Needs FICHA_NATS_URL; runs no projections and no scheduler.
    """
    from services.runtime import Runtime

    configure_logging(verbose)
    settings = settings_or_fail()
    if not settings.nats_url:
        fail("ficha ingest needs FICHA_NATS_URL: it joins a running NATS", 2)
    owned = None if partitions is None else parse_partitions(partitions, settings.partitions)
    _serve(Runtime(settings, projector="none", roles=frozenset({"ingest"}),
                   owned_partitions=owned),
           f"[bold green]ficha ingest is up[/]  nats={{nats}}  partitions="
           f"{partitions or 'all'} of {settings.partitions}")


@app.command()
def scheduler(verbose: Annotated[bool, typer.Option(
        "--verbose", "-v", help="Debug logs (FICHA_LOG_LEVEL=debug).")] = False) -> None:
    """Run the clock scheduler, the outbox relay and the erasure completer only (one of
    them per deployment)."""
    from services.runtime import Runtime

    configure_logging(verbose)
    settings = settings_or_fail()
    if not settings.nats_url:
        fail("ficha scheduler needs FICHA_NATS_URL: it joins a running NATS", 2)
    _serve(Runtime(settings, projector="none", roles=frozenset({"scheduler"})),
           "[bold green]ficha scheduler is up[/]  nats={nats}")


@app.command()
def project(
    projection: Annotated[str, typer.Option(help="The projection to run.")] = "contacts",
    metrics_port: Annotated[int, typer.Option(
        help="Port of /metrics, /healthz and /readyz on FICHA_METRICS_HOST (0: off).")] = 0,
    parent_pid: Annotated[int, typer.Option(
        hidden=True, help="Stop when this parent process is gone (`ficha up` sets it).")] = 0,
) -> None:
    """Run one projection alone (`ficha up` starts one per projection; in a deployment,
    run one process per projection, on any machine)."""
    import os
    import threading

    from projections.registry import projection_named
    from projections.runner import ProjectionRunner

    configure_logging()
    settings = settings_or_fail()
    try:
        chosen = projection_named(projection)
    except KeyError as error:
        fail(str(error.args[0]), 2)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    if parent_pid:
        def watch_parent() -> None:  # a `ficha up` killed outright stops none of its children
            while not stop.wait(1):
                if os.getppid() != parent_pid:
                    stop.set()

        threading.Thread(target=watch_parent, daemon=True, name="parent").start()
    store = event_store(settings)
    runner = ProjectionRunner(store, views(settings), chosen)
    try:
        runner.setup()
    except Exception as error:  # noqa: BLE001 - the database is unreachable
        fail(f"cannot set up the {chosen.name} read model: {db_error_text(error)}")
    health = None
    if metrics_port:
        from services.health import start_health

        def not_ready() -> str | None:
            runner.position()  # raises if the database is unreachable
            return None

        health = start_health(metrics_port, not_ready, settings.metrics_host)
    try:
        runner.run_forever(stop)
    finally:
        if health is not None:
            health.stop()
        runner.db.close()
        store.close()


# ----------------------------------------------------------------------- demo


@app.command()
def demo(
    tenant: Annotated[str, tenant_option("Tenant to publish for.")],
    events: Annotated[int, typer.Option(min=1, help="How many events to publish.")] = 10_000,
    seed: Annotated[int, typer.Option(help="Same seed and --start, same history.")] = 0,
    rate: Annotated[float, typer.Option(
        min=0, help="Events per second (0 = as fast as possible).")] = 0,
    start: Annotated[str | None, typer.Option(
        help="When the history starts: a date or an instant with its offset. Default: "
        f"{DEMO_DAYS_BACK} days before today, so that it ends in the last weeks (recent "
        "activity, engaged contacts). Give it, with --seed, to publish the same history "
        "on any day.")] = None,
) -> None:
    """Publish a realistic synthetic history to the running ficha."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    from contracts.publisher import PublishFailed, publish_many
    from services.demo import generate_history
    from services.runtime import connect_nats, resolve_nats_url, unreachable_text

    if events < 1:
        fail("--events must be at least 1", 2)
    now = datetime.now(UTC)
    begins = parse_date(start, "--start") or demo_start(now)
    settings = settings_or_fail()
    url = resolve_nats_url(settings)
    if url is None:
        fail("no NATS server: start `ficha up` first, or set FICHA_NATS_URL")

    async def main() -> None:
        try:
            nc = await connect_nats(url, name="ficha-demo", reconnect_forever=False)
        except Exception as error:
            raise CliError(unreachable_text(settings, url, error)) from error
        counts: dict[str, int] = {}
        acked = 0
        try:
            js = nc.jetstream()
            history = generate_history(tenant, events, seed=seed, start=begins,
                                       until=max(now, begins))
            with Progress(
                description_column(),
                BarColumn(),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
                console=err,
            ) as progress:
                task = progress.add_task("publishing", total=events)

                def counted() -> Any:
                    for event in history:
                        counts[event["type"]] = counts.get(event["type"], 0) + 1
                        yield event

                async for acked in publish_many(js, counted(), rate=rate):
                    progress.update(task, completed=acked)
        except PublishFailed as error:
            raise CliError(f"publishing stopped after {acked:,} of {events:,} events: {error}. "
                           "Running the same command again is safe: event ids follow the "
                           "seed, and ficha stores each once.") from error
        finally:
            with contextlib.suppress(Exception):  # closed already when NATS went away
                await nc.drain()
        table = Table(title=f"published {events} events for {tenant}")
        table.add_column("type")
        table.add_column("events", justify="right")
        for kind, n in sorted(counts.items()):
            table.add_row(kind, str(n))
        console.print(table)

    run(main())


# ------------------------------------------------------------------- contacts


@contacts_app.command("list")
def contacts_list(
    tenant: Annotated[str, tenant_option("Tenant whose contacts to list.")],
    language: LanguageFilter = None,
    country: CountryFilter = None,
    tag: TagFilter = None,
    consent: ConsentFilter = None,
    no_consent: NoConsentFilter = None,
    since: SinceFilter = None,
    until: UntilFilter = None,
    email_prefix: EmailPrefixFilter = None,
    limit: Annotated[int, typer.Option(help=f"Rows per page (1-{PAGE_LIMIT_MAX}).")] = 50,
    cursor: Annotated[str | None, typer.Option(help="Next-page cursor.")] = None,
    count: Annotated[bool, typer.Option(help="Also count all matches.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="JSON for scripts.")] = False,
) -> None:
    """The client list, newest first contact first, with filters."""
    from projections.queries import (
        ContactFilter,
        QueryError,
        count_contacts,
        list_contacts,
    )

    f = ContactFilter(
        tenant=tenant,
        language=language,
        country=country,
        tag=tag,
        consent=consent,
        no_consent=no_consent,
        first_seen_from=parse_date(since, "--since (--first-seen-from)"),
        first_seen_to=parse_date(until, "--until (--first-seen-to)"),
        email_prefix=email_prefix,
    )
    (rows, next_cursor), total = read_views(tenant, lambda db: (
        list_contacts(db, f, limit=limit, cursor=cursor),
        count_contacts(db, f) if count else None), "the client list", refused=(QueryError,))
    if as_json:
        print(json.dumps({"contacts": rows, "next_cursor": next_cursor, "total": total}))
        return
    matches = f" ({counted(total, 'match', 'matches')})" if total is not None else ""
    table = Table(title=f"contacts of {tenant}{matches}")
    for column in ("email", "name", "lang", "country", "tags", "consent", "first seen",
                   "last active", "forms", "bookings", "purchases"):
        table.add_column(column, overflow="fold")
    for row in rows:
        name = " ".join(p for p in (row.get("first_name"), row.get("last_name")) if p)
        table.add_row(
            row["email"],
            name,
            row.get("language") or "",
            row.get("country") or "",
            ", ".join(row.get("tags") or []),
            {True: "email ✓", False: "email ✗"}.get(bool(row["consent_email"]), "")
            if row.get("consent_email") is not None else "",
            (row.get("first_seen_at") or "")[:10],
            (row.get("last_activity_at") or "")[:10],
            str(row["forms_count"]),
            str(row["bookings_count"]),
            str(row["purchases_count"]),
        )
    console.print(table)
    if next_cursor:
        console.print(f"next page: --cursor {next_cursor}")


@contacts_app.command("get")
def contacts_get(
    tenant: Annotated[str, tenant_option("Tenant of the contact.")],
    email: ContactEmailOption,
    as_json: Annotated[bool, typer.Option("--json", help="JSON for scripts.")] = False,
) -> None:
    """One contact's card and full timeline."""
    from contracts.emails import normalise_email
    from projections.queries import get_card

    card = read_views(tenant, lambda db: get_card(db, tenant, email), "the card")
    if card is None:
        fail(f"no contact {normalise_email(email)} in tenant {tenant}", 2)
    if as_json:
        print(json.dumps(card))
        return
    card_table = Table(show_header=False, title=card["email"])
    card_table.add_column("field", style="bold")
    card_table.add_column("value", overflow="fold")
    skip = {"timeline", "lists", "tenant", "properties", "tags", "language_base"}
    for key, value in card.items():
        if key in skip or value is None:
            continue
        card_table.add_row(key, str(value))
    card_table.add_row("tags", ", ".join(card["tags"]))
    for name, value in sorted(card["properties"].items()):
        card_table.add_row(f"property {name}", json.dumps(value))
    for entry in card["lists"]:
        state = f"{entry['state']} since {entry['changed_at']}"
        card_table.add_row(f"list {entry['list_id']}", state)
    console.print(card_table)
    timeline = Table(title=f"timeline ({counted(len(card['timeline']), 'entry', 'entries')})")
    timeline.add_column("when")
    timeline.add_column("kind")
    timeline.add_column("what", overflow="fold")
    timeline.add_column("source")
    for entry in card["timeline"]:
        timeline.add_row(entry["occurred_at"][:19].replace("T", " "), entry["kind"],
                         entry["summary"], entry["source"])
    console.print(timeline)


# --------------------------------------------------------------------- status


@app.command()
def status(
    as_json: Annotated[bool, typer.Option("--json", help="JSON for scripts.")] = False,
) -> None:
    """Per partition and per projection: position, lag and whether it keeps failing;
    dead-letter count. Exits 1 when the bus cannot be reached (the report still shows what
    the database knows) or a projection is failing."""
    from services.status import collect_status

    settings = settings_or_fail()
    store = event_store(settings)
    try:
        report = run(collect_status(settings, store))
    except Exception as error:  # noqa: BLE001 - the read models' database is unreachable
        fail(f"cannot read the status: {db_error_text(error)}")
    finally:
        store.close()
    failing = [p for p in report["projections"] if p.get("failing")]
    unhealthy = bool(report["bus"].get("error")) or bool(failing)
    if as_json:
        print(json.dumps(report))
        raise typer.Exit(1 if unhealthy else 0)
    bus = report["bus"]
    console.print(Text.assemble(
        f"backend: {report['backend']}   nats: {bus.get('url') or 'not found'}",
        *((("   ("), (str(bus["error"]), "red"), ")") if bus.get("error") else ())))
    parts = Table(title="ingest partitions")
    for column in ("partition", "committed position", "pending in stream", "unacked"):
        parts.add_column(column, justify="right")
    for p in report["partitions"]:
        parts.add_row(str(p["partition"]), str(p["position"]),
                      str(p.get("pending", "?")), str(p.get("ack_pending", "?")))
    console.print(parts)
    proj = Table(title="projections")
    for column in ("projection", "version", "position", "store head", "lag (events)"):
        proj.add_column(column, justify="right")
    proj.add_column("state")
    for p in report["projections"]:
        state = (Text(f"failing since {p['failing']['since'][:19].replace('T', ' ')} UTC "
                      f"({p['failing']['attempts']} attempts)", style="red")
                 if p.get("failing") else Text("ok", style="green"))
        proj.add_row(p["name"], str(p.get("version") or "-"), str(p["position"]),
                     str(p["head"]), str(p["lag"]), state)
    console.print(proj)
    for p in failing:
        console.print(Text.assemble(
            (f"{p['name']}", "bold red"),
            f" cannot apply the events after position {p['failing']['position']}: "
            f"{p['failing']['error']} (last tried {p['failing']['last_at'][:19]} UTC; see "
            "its log; it retries on its own)"))
    console.print(f"dead letters: {bus.get('dead_letters', '?')}   "
                  f"received events: {report['received_events']}   "
                  f"erasures under way: {report['pending_erasures']}")
    if unhealthy:
        raise typer.Exit(1)


# ---------------------------------------------------------------- projections


def _chosen_projections(names: list[str] | None) -> list[Any]:
    from projections.registry import all_projections, projection_named

    if not names:
        return all_projections()
    try:
        return [projection_named(name) for name in names]
    except KeyError as error:
        fail(str(error.args[0]), 2)


@projections_app.command("replay")
def projections_replay(
    names: Annotated[list[str] | None, typer.Argument(
        help="Projections to replay (default: all).")] = None,
    tenant: Annotated[str | None, tenant_option(
        "Replace only this tenant's rows (the others, and ficha.out, are untouched).",
    )] = None,
) -> None:
    """Rebuild side by side from the event log, then switch readers over atomically.

    The live tables keep serving (and keep being updated) until the copy has caught up.
    With --tenant, the copy stops at the live model's position and only that tenant's
    rows are replaced; nothing is published on ficha.out. On PostgreSQL several
    projections are replayed at once, each in a process of its own (on SQLite, in turn).
    """
    settings = settings_or_fail()
    chosen = _chosen_projections(names)
    if tenant is not None:
        require_known_tenant(tenant)
    what = f" for tenant {tenant}" if tenant else ""
    _run_projection_jobs("replay", settings, [p.name for p in chosen], tenant,
                         lambda name: f"replaying {name}{what}")


@projections_app.command("rebuild")
def projections_rebuild(
    names: Annotated[list[str] | None, typer.Argument(
        help="Projections to rebuild (default: all).")] = None,
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")] = False,
) -> None:
    """Drop the read models and replay every stored event into them, in place.

    Readers see empty or partial tables meanwhile; `ficha projections replay` does not.
    A running `ficha up` may go on: its projectors and this command apply pages in turn,
    each page once. On PostgreSQL several projections are rebuilt at once, each in a
    process of its own (on SQLite, in turn).
    """
    settings = settings_or_fail()
    chosen = _chosen_projections(names)
    listed = ", ".join(p.name for p in chosen)
    store = event_store(settings)  # an unreachable database is said before the question
    store.close()
    if not yes and not typer.confirm(f"Drop and rebuild {listed} in place?"):
        raise typer.Exit(1)
    _run_projection_jobs("rebuild", settings, [p.name for p in chosen], None,
                         lambda name: f"rebuilding {name}")


def _run_projection_jobs(kind: Kind, settings: Settings,
                         names: list[str], tenant: str | None,
                         label: Callable[[str], str]) -> None:
    """Replay or rebuild ``names``, one bar each: one projection in this process, several
    side by side in processes of their own (``services.projection_jobs``)."""
    from rich.progress import BarColumn, Progress, TaskProgressColumn, TimeRemainingColumn

    from services.projection_jobs import run_job, run_side_by_side

    store = event_store(settings)
    db = views(settings)
    try:
        head = store.max_notification_id() or 1
        db.ensure_tracking_table()  # shared by the projections: made before they start
    except Exception as error:  # noqa: BLE001 - the database is unreachable
        fail(f"{kind} failed, the read models are unchanged: {db_error_text(error)}")
    finally:
        db.close()
        store.close()
    env = settings.to_env()
    with Progress(description_column(), BarColumn(), TaskProgressColumn(),
                  TimeRemainingColumn(), console=err) as progress:
        tasks = {name: progress.add_task(label(name), total=head) for name in names}

        def on_position(name: str, position: int) -> None:
            progress.update(tasks[name], completed=position)

        if len(names) > 1 and settings.postgres is not None:
            ends = run_side_by_side(kind, env, names, tenant, on_position)
        else:  # one, or SQLite's, whose writers would take turns at its one file anyway
            ends = [run_job(kind, env, name, tenant, partial(on_position, name))
                    for name in names]
        for end in ends:
            if end.ok:
                progress.update(tasks[end.name], completed=head)
    for end in ends:
        if end.ok:
            console.print(end.said, highlight=False)
        else:
            err.print(labelled("error:", "red", end.said), highlight=False)
    if not all(end.ok for end in ends):
        raise typer.Exit(1)


# `ficha replay PROJECTION [--tenant T]`, as operators ask for it: the same command.
app.command("replay", help="Same as `ficha projections replay`.")(projections_replay)


def main() -> None:
    from services.collector import tune_for_throughput

    tune_for_throughput()
    name_connections(sys.argv[1:])
    try:
        app()
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)
