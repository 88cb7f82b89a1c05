"""`ficha dlq list|show|redrive|purge`: see and repair what was dead-lettered."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from services.cli_common import (
    CliError,
    console,
    counted,
    err,
    fail,
    labelled,
    run,
    settings_or_fail,
    tenant_option,
)

dlq_app = typer.Typer(help="Dead letters: list, show, re-drive, purge.", no_args_is_help=True)

TenantOpt = Annotated[str | None, tenant_option("Only this tenant's dead letters.")]
def _known_code(code: str | None) -> str | None:
    """A code ficha does not give today is taken (a letter of an older release, or one
    without the header, whose code is ?), with a note naming the codes it does give."""
    from services.dlq import DEAD_LETTER_CODES

    if code is not None and code not in DEAD_LETTER_CODES:
        err.print(labelled("note:", "yellow", f"{code!r} is no dead-letter code ficha gives "
                           f"today; they are {', '.join(sorted(DEAD_LETTER_CODES))}"),
                  highlight=False)
    return code


CodeOpt = Annotated[str | None, typer.Option(help="Only this error code.",
                                             callback=_known_code)]
AsJson = Annotated[bool, typer.Option("--json", help="JSON for scripts.")]


async def _with_js(work: Callable[[Any], Awaitable[Any]]) -> Any:
    from services.runtime import connect_nats, resolve_nats_url, unreachable_text

    settings = settings_or_fail()
    url = resolve_nats_url(settings)
    if not url:
        raise CliError("no NATS to talk to: start `ficha up` or set FICHA_NATS_URL")
    try:
        nc = await connect_nats(url, name="ficha-dlq", attempts=1, reconnect_forever=False)
    except Exception as error:  # noqa: BLE001 - an unreachable server is an expected failure
        raise CliError(unreachable_text(settings, url, error)) from error
    try:
        return await work(nc.jetstream())
    finally:
        await nc.close()


def _selection(tenant: str | None, code: str | None, seqs: list[int] | None = None) -> Any:
    from services.dlq import Selection

    return Selection(tenant=tenant, code=code, seqs=frozenset(seqs or []))


@dlq_app.command("list")
def dlq_list(tenant: TenantOpt = None, code: CodeOpt = None,
             limit: Annotated[int, typer.Option(help="Latest entries to show.")] = 20,
             as_json: AsJson = False) -> None:
    """Dead letters grouped by tenant and error code, and the latest ones."""
    from services.dlq import groups, read

    if limit < 1:
        fail(f"--limit must be at least 1; got {limit}", 2)
    letters = run(_with_js(lambda js: read(js, _selection(tenant, code))))
    if as_json:
        print(json.dumps({"total": len(letters), "groups": groups(letters),
                          "latest": [d.to_dict() for d in letters[-limit:]]}))
        return
    table = Table(title=f"dead letters: {len(letters)}")
    for column in ("tenant", "code", "count", "latest seq", "latest reason"):
        table.add_column(column, overflow="fold")
    for g in groups(letters):
        table.add_row(g["tenant"], g["code"], str(g["count"]), str(g["latest_seq"]),
                      g["latest_detail"])
    console.print(table)
    latest = Table(title="latest")
    for column in ("seq", "subject", "event id", "code"):
        latest.add_column(column, overflow="fold")
    for d in letters[-limit:]:
        latest.add_row(str(d.seq), d.original_subject, d.event_id or "", d.code)
    console.print(latest)


@dlq_app.command("show")
def dlq_show(seq: Annotated[int, typer.Argument(help="The dead letter's sequence.")],
             as_json: AsJson = False) -> None:
    """One dead letter: its reason and its original body."""
    from services.dlq import read

    letters = run(_with_js(lambda js: read(js, _selection(None, None, [seq]))))
    if not letters:
        fail(f"no dead letter {seq} (already re-driven or purged?)", 2)
    data = letters[0].to_dict(with_body=True)
    if as_json:
        print(json.dumps(data))
        return
    for key in ("seq", "original_subject", "original_sequence", "event_id", "code", "detail"):
        value = data[key]
        shown = "(none: the body names no event id)" if value is None else value
        console.print(Text.assemble((key, "bold"), f": {shown}"), highlight=False)
    console.print_json(json.dumps(data["body"]) if not isinstance(data["body"], str)
                       else json.dumps({"raw": data["body"]}))


def _chosen(tenant: str | None, code: str | None, seqs: list[int] | None,
            every: bool) -> Any:
    if not (tenant or code or seqs or every):
        fail("say which dead letters: sequences, --tenant, --code, or --all", 2)
    return _selection(tenant, code, seqs)


def _nothing_matched(seqs: list[int] | None, done: str) -> None:
    """Sequences that name no dead letter were asked wrongly (exit 2, as `dlq show`);
    a tenant or code with none left is nothing to do (exit 0)."""
    if seqs:
        fail(f"no dead letter has the sequence{'s' if len(seqs) > 1 else ''} "
             f"{', '.join(map(str, seqs))} (`ficha dlq list` shows them): nothing {done}", 2)
    console.print(f"no dead letters match: nothing {done}")


@dlq_app.command("redrive")
def dlq_redrive(
    seqs: Annotated[list[int] | None, typer.Argument(help="Sequences to re-drive.")] = None,
    tenant: TenantOpt = None, code: CodeOpt = None,
    every: Annotated[bool, typer.Option("--all", help="Every dead letter.")] = False,
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")] = False,
) -> None:
    """Publish dead letters again to their original subjects, after a fix."""
    from services.dlq import redrive

    async def act(js: Any, letters: list[Any]) -> int:
        try:
            return await redrive(js, letters)
        except ValueError as error:
            raise CliError(str(error)) from error

    done = _on_selected(_chosen(tenant, code, seqs, every), yes, "Re-drive {n} dead letters?",
                        act)
    if done is None:
        _nothing_matched(seqs, "re-driven")
        return
    console.print(f"re-drove {counted(done, 'dead letter')}; they go through ingestion again")


@dlq_app.command("purge")
def dlq_purge(
    seqs: Annotated[list[int] | None, typer.Argument(help="Sequences to delete.")] = None,
    tenant: TenantOpt = None, code: CodeOpt = None,
    every: Annotated[bool, typer.Option("--all", help="Every dead letter.")] = False,
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")] = False,
) -> None:
    """Delete dead letters for good."""
    from services.dlq import purge

    done = _on_selected(_chosen(tenant, code, seqs, every), yes,
                        "Delete {n} dead letters for good?", purge)
    if done is None:
        _nothing_matched(seqs, "purged")
        return
    console.print(f"deleted {counted(done, 'dead letter')}")


def _on_selected(selection: Any, yes: bool, question: str,
                 action: Callable[[Any, list[Any]], Awaitable[int]]) -> int | None:
    """Read the selected dead letters, confirm, and act on them; the count acted on, or
    None when none matched."""
    from services.dlq import read

    async def work(js: Any) -> int | None:
        letters = await read(js, selection)
        if not letters:
            return None
        if not yes and not typer.confirm(question.format(n=len(letters))):
            raise typer.Exit(1)
        return await action(js, letters)

    done = run(_with_js(work))
    return None if done is None else int(done)
