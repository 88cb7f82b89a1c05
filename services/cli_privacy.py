"""`ficha erase`, `ficha erasures list|show`, `ficha contacts access`: GDPR from the shell.

The logic lives in ``services.privacy`` (which the HTTP API calls too); this module only
asks, prints and fails with a sentence.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from services.cli_common import (
    CliError,
    console,
    contact_email,
    db_error_text,
    err,
    event_store,
    fail,
    labelled,
    require_known_tenant,
    run,
    settings_or_fail,
    tenant_option,
    views,
    writable_target,
)
from services.cli_dlq import _with_js

erasures_app = typer.Typer(help="Erasure receipts: what was erased, when, and confirmed by whom.",
                           no_args_is_help=True)

TenantOpt = Annotated[str, tenant_option("The person's tenant.")]
AsJson = Annotated[bool, typer.Option("--json", help="JSON for scripts.")]


def erase(
    email: Annotated[str, typer.Argument(help="The person's email (any case).",
                                         callback=contact_email)],
    tenant: TenantOpt,
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")] = False,
    as_json: AsJson = False,
) -> None:
    """Erase everything ficha holds about one person (GDPR). Cannot be undone.

    Publishes contact_erasure_requested through the bus, as any producer would; follow it
    with `ficha erasures show EVENT_ID`."""
    from contracts.emails import normalise_email
    from services.privacy import erasure_request

    try:
        event = erasure_request(tenant, email)
    except ValueError as error:
        fail(str(error), 2)
    address = normalise_email(email)
    if not _holds_contact(tenant, address):
        err.print(labelled("note:", "yellow", (
            f"no contact {address} is known in tenant {tenant} yet. The request is "
            "recorded all the same: events about this person stamped before it that "
            "arrive later are refused (docs/privacy.md)")), highlight=False)
    if not yes and not typer.confirm(
            f"Erase everything ficha holds about {email.strip().lower()} in tenant {tenant}? "
            "This cannot be undone"):
        raise typer.Exit(1)

    async def send(js: Any) -> None:
        from contracts.publisher import RejectedEvent, publish

        try:
            await publish(js, event)
        except RejectedEvent as error:
            raise CliError(f"the request was refused: {error}") from error

    run(_with_js(send))
    if as_json:
        print(json.dumps({"event_id": event["event_id"], "tenant": tenant}))
        return
    console.print(f"erasure requested: event {event['event_id']}. Follow it with "
                  f"`ficha erasures show {event['event_id']}`", highlight=False)


def _holds_contact(tenant: str, address: str) -> bool:
    """Whether the client list has this person (when it cannot be read, assume so: the
    note this decides is a hint, not a check)."""
    from projections.queries import card

    db = views(settings_or_fail())
    try:
        return card(db, tenant, address, timeline_limit=0) is not None
    except Exception:  # noqa: BLE001 - not started, or unreachable: say nothing
        return True
    finally:
        db.close()


def _receipts(tenant: str | None = None, reference: str | None = None) -> Any:
    from services.privacy import erasure_receipt, erasure_receipts

    settings = settings_or_fail()
    store = event_store(settings)
    db = views(settings)
    try:
        if reference is not None:
            return erasure_receipt(store, db, reference)
        return erasure_receipts(store, db, tenant=tenant)
    except Exception as error:  # noqa: BLE001 - a database that is away is an expected failure
        fail(f"cannot read the erasure receipts: {db_error_text(error)}")
    finally:
        db.close()
        store.close()


def _projections_text(receipt: dict[str, Any]) -> str:
    return ", ".join(f"{name} {'✓' if at else '…'}" for name, at in
                     sorted(receipt["projections"].items()))


def _purged_count(receipt: dict[str, Any]) -> str:
    purged = receipt.get("purged") or {}
    streams = purged.get("streams") or {}
    return ", ".join(f"{name} {len(seqs)}" for name, seqs in streams.items()) or "-"


@erasures_app.command("list")
def erasures_list(
    tenant: Annotated[str | None, tenant_option("Only this tenant's erasures.")] = None,
    as_json: AsJson = False,
) -> None:
    """Every erasure receipt, oldest first."""
    receipts = _receipts(tenant=tenant)
    if as_json:
        print(json.dumps({"erasures": receipts}))
        return
    table = Table(title=f"erasures: {len(receipts)}")
    for column in ("request", "tenant", "contact id", "requested", "erased", "completed",
                   "projections", "contact_erased", "messages deleted"):
        table.add_column(column, overflow="fold")
    for r in receipts:
        table.add_row(r["event_id"], r["tenant"], r["contact_id"], r["requested_at"][:19],
                      r["erased_at"][:19], (r["completed_at"] or "pending")[:19],
                      _projections_text(r),
                      "published" if r["contact_erased"]["published"] else "pending",
                      _purged_count(r))
    console.print(table)


@erasures_app.command("show")
def erasures_show(
    reference: Annotated[str, typer.Argument(
        help="The request's event id, or the contact id (its latest erasure).")],
    as_json: AsJson = False,
) -> None:
    """One erasure receipt: when, which projections confirmed, which messages went."""
    receipt = _receipts(reference=reference)
    if receipt is None:
        fail(f"no erasure {reference!r}: give the request's event id (as `ficha erase` "
             "printed it) or the contact id", 2)
    if as_json:
        print(json.dumps(receipt))
        return
    table = Table(show_header=False, title=f"erasure {receipt['event_id']}")
    table.add_column("field", style="bold")
    table.add_column("value", overflow="fold")
    for key in ("tenant", "contact_id", "requested_at", "erased_at", "completed_at"):
        table.add_row(key, str(receipt[key] or "pending"))
    for name, at in sorted(receipt["projections"].items()):
        table.add_row(f"projection {name}", f"confirmed {at}" if at else "pending")
    out = receipt["contact_erased"]
    table.add_row("contact_erased", f"{out['event_id']}: "
                  f"{'published' if out['published'] else 'pending'}")
    streams = (receipt.get("purged") or {}).get("streams") or {}
    for name in ("FICHA_IN", "FICHA_DLQ", "FICHA_OUT"):
        seqs = streams.get(name, [])
        table.add_row(f"deleted from {name}", sequence_ranges(seqs) if seqs else
                      ("none" if receipt["completed_at"] else "pending"))
    console.print(table)


def contacts_access(
    email: Annotated[str, typer.Argument(help="The person's email (any case).",
                                         callback=contact_email)],
    tenant: TenantOpt,
    out: Annotated[Path | None, typer.Option(
        "--out", help="Write the JSON to this file instead of printing it.")] = None,
    skip_dead_letters: Annotated[bool, typer.Option(
        "--skip-dead-letters", help="Export without scanning the dead letters (no NATS).")
    ] = False,
) -> None:
    """Everything ficha holds about one person, as JSON (GDPR subject access)."""
    from services.domain.identity import ContactIdentity
    from services.privacy import NotHeld, subject_access

    settings = settings_or_fail()
    require_known_tenant(tenant)
    if out is not None:
        writable_target(out)
    store = event_store(settings)
    db = views(settings)

    async def export(js: Any) -> dict[str, Any]:
        try:
            return await subject_access(store, db, ContactIdentity(settings.id_key), tenant,
                                        email, js)
        except NotHeld as error:
            raise CliError(str(error), 2) from error

    async def without_bus() -> dict[str, Any]:
        return await export(None)

    try:
        data = run(without_bus() if skip_dead_letters else _with_js(export))
    except typer.Exit:
        raise
    except Exception as error:  # noqa: BLE001 - a database that is away
        fail(f"cannot export: {db_error_text(error)}")
    finally:
        db.close()
        store.close()
    text = json.dumps(data, indent=2, sort_keys=True)
    if out is None:
        print(text)
        return
    out.write_text(text + "\n")
    err.print(f"wrote everything ficha holds about {data['email']} to {out}", highlight=False)


def sequence_ranges(seqs: list[int], shown: int = 12) -> str:
    """Stream sequences as a count and runs, ``5 messages: 3-5, 9, 12``; past ``shown``
    runs the rest is counted (``--json`` lists every one)."""
    ordered = sorted(set(seqs))
    runs: list[tuple[int, int]] = []
    for seq in ordered:
        if runs and seq == runs[-1][1] + 1:
            runs[-1] = (runs[-1][0], seq)
        else:
            runs.append((seq, seq))
    parts = [str(a) if a == b else f"{a}-{b}" for a, b in runs[:shown]]
    if len(runs) > shown:
        parts.append(f"and {len(runs) - shown} more runs (--json lists them)")
    noun = "message" if len(ordered) == 1 else "messages"
    return f"{len(ordered)} {noun}: {', '.join(parts)}"
