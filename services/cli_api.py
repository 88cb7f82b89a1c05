"""`ficha api` (the HTTP API on its own, for production) and `ficha keys` (its API keys)."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from services.cli_common import (
    CliError,
    configure_logging,
    console,
    db_error_text,
    event_store,
    fail,
    require_known_tenant,
    run,
    settings_or_fail,
    tenant_option,
)

keys_app = typer.Typer(help="API keys of a tenant: create, list, revoke.", no_args_is_help=True)

Tenant = Annotated[str, tenant_option()]
AsJson = Annotated[bool, typer.Option("--json", help="JSON for scripts.")]


@keys_app.command("create")
def keys_create(
    tenant: Tenant,
    scope: Annotated[list[str], typer.Option(
        help="read (every GET) or admin (also changes); repeat for both.")] = ["read"],  # noqa: B006
    label: Annotated[str, typer.Option(help="What the key is for, shown in the list.")] = "",
    as_json: AsJson = False,
) -> None:
    """Create an API key. It is printed once: it cannot be shown again."""
    from services.catalog import ApiKeyCommands
    from services.domain.api_keys import ApiKeyError

    store = event_store()
    try:
        key = ApiKeyCommands(store).issue(tenant, scope, label)
    except ApiKeyError as error:
        fail(str(error), 2)
    finally:
        store.close()
    if as_json:
        print(json.dumps({"tenant": tenant, "key": key, "key_id": key.split(".")[2],
                          "scopes": sorted(set(scope))}))
        return
    console.print(f"API key for tenant {tenant} (scopes: {', '.join(sorted(set(scope)))}):")
    console.print(key, highlight=False, soft_wrap=True)
    console.print("Store it now: ficha keeps only its hash. Send it as "
                  "`Authorization: Bearer <key>`.", style="dim")


@keys_app.command("list")
def keys_list(tenant: Tenant, as_json: AsJson = False) -> None:
    """A tenant's keys: id, label, scopes, when issued and revoked (never the secrets)."""
    from services.catalog import ApiKeyCommands

    require_known_tenant(tenant)
    store = event_store()
    try:
        keys = list(ApiKeyCommands(store).keys(tenant).keys.values())
    finally:
        store.close()
    rows: list[dict[str, Any]] = [{"key_id": k.key_id, "label": k.label, "scopes": list(k.scopes),
             "issued_at": k.issued_at.isoformat(),
             "revoked_at": k.revoked_at.isoformat() if k.revoked_at else None} for k in keys]
    if as_json:
        print(json.dumps(rows))
        return
    table = Table(title=f"API keys of {tenant}")
    for column in ("key id", "label", "scopes", "issued", "revoked"):
        table.add_column(column)
    for r in rows:
        table.add_row(r["key_id"], r["label"], ", ".join(r["scopes"]), r["issued_at"][:19],
                      (r["revoked_at"] or "")[:19])
    console.print(table)


@keys_app.command("revoke")
def keys_revoke(
    tenant: Tenant,
    key_id: Annotated[str, typer.Argument(help="The key's id (see `ficha keys list`).")],
) -> None:
    """Revoke a key: every API process refuses it within two seconds."""
    from services.catalog import ApiKeyCommands
    from services.domain.api_keys import ApiKeyError

    store = event_store()
    try:
        ApiKeyCommands(store).revoke(tenant, key_id)
    except ApiKeyError as error:
        fail(str(error), 2)
    finally:
        store.close()
    console.print(f"key {key_id} of tenant {tenant} is revoked")


def api(
    workers: Annotated[int, typer.Option(
        min=1, max=64, help="Processes serving the API (each with its own connections).")] = 1,
    verbose: Annotated[bool, typer.Option(
        "--verbose", "-v", help="Debug logs (FICHA_LOG_LEVEL=debug).")] = False,
) -> None:
    """Serve the HTTP API alone (FICHA_API_HOST, FICHA_API_PORT), for production."""
    import asyncio
    import os
    import signal

    from services.api.app import PortTaken, bind, build_context, close_context, serve_until
    from services.api.app import server as make_server

    configure_logging(verbose)
    settings = settings_or_fail()
    port = settings.api_port or 8080
    if workers > 1:
        import uvicorn

        try:
            bind(settings.api_host, port).close()
        except PortTaken as error:
            fail(str(error))
        os.environ.update(settings.to_env())
        console.print(Text.assemble(("ficha API", "bold green"),
                                    f" on http://{settings.api_host}:{port} "
                                    f"with {workers} workers (OpenAPI: /schema)"))
        uvicorn.run("services.api.app:app_from_env", factory=True, host=settings.api_host,
                    port=port, workers=workers, log_config=None, access_log=False,
                    lifespan="off")
        return

    async def main() -> None:
        try:
            sock = bind(settings.api_host, port)
        except PortTaken as error:
            raise CliError(str(error)) from None
        try:
            ctx = await asyncio.to_thread(build_context, settings)
        except Exception as error:  # noqa: BLE001 - the database is unreachable
            raise CliError(f"cannot open the event store: {db_error_text(error)}") from error
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        console.print(Text.assemble(("ficha API", "bold green"),
                                    f" on http://{settings.api_host}:{port}  "
                                    f"(OpenAPI: http://{settings.api_host}:{port}/schema)"))
        try:
            await serve_until(make_server(ctx, settings.api_host, port), stop, [sock])
        finally:
            await close_context(ctx)

    run(main(), uvloop_loop=True)
