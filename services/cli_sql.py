"""`ficha sql views|grant-reader|revoke-reader|readers`: SQL access for analysts
(docs/sql.md)."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.table import Table

from services.cli_common import (
    console,
    db_error_text,
    fail,
    require_known_tenant,
    settings_or_fail,
    tenant_option,
    views,
)

sql_app = typer.Typer(help="SQL for analysts: the analytics views and read-only roles.",
                      no_args_is_help=True)

AsJson = Annotated[bool, typer.Option("--json", help="JSON for scripts.")]
RoleOpt = Annotated[str, typer.Option("--role", help="The reader role.")]


@sql_app.command("views")
def sql_views_command(
    as_json: AsJson = False,
    markdown: Annotated[bool, typer.Option(
        "--markdown", help="The reference section of docs/sql.md.")] = False,
) -> None:
    """Every analytics view with its columns, types and meaning."""
    from projections.sql_catalog import VIEWS, reference_markdown

    if markdown:
        print(reference_markdown(), end="")
        return
    if as_json:
        print(json.dumps([{
            "name": v.name, "projection": v.projection, "description": v.description,
            "columns": [{"name": c.name, "type": c.type.name, "postgres": c.type.postgres_cast,
                         "sqlite": c.type.sqlite, "meaning": c.meaning} for c in v.columns],
        } for v in VIEWS]))
        return
    for view in VIEWS:
        table = Table(title=f"{view.name}: {view.description}", title_justify="left")
        for column in ("column", "type", "meaning"):
            table.add_column(column, overflow="fold")
        for c in view.columns:
            table.add_row(c.name, c.type.name, c.meaning)
        console.print(table)


def _postgres_only(command: str) -> Any:
    settings = settings_or_fail()
    if settings.postgres is None:
        fail(f"`ficha sql {command}` is for PostgreSQL: SQLite has no roles. Give analysts "
             f"a read-only connection instead: file:{settings.views_db_path}?mode=ro "
             "(docs/sql.md)", 2)
    return settings


def _projection_tables() -> list[tuple[str, tuple[str, ...]]]:
    from projections.registry import all_projections

    return [(p.name, p.tables) for p in all_projections()]


def _missing_tables(db: Any, cur: Any) -> list[str]:
    wanted = [t for _, tables in _projection_tables() for t in tables]
    present = db.existing_tables(cur, wanted)
    return [t for t in wanted if t not in present]


@sql_app.command("grant-reader")
def grant_reader(
    role: RoleOpt = "ficha_analyst",
    tenant: Annotated[str | None, tenant_option(
        "Bind the role to this tenant: it sees this tenant's rows only, whatever its "
             "session sets. Without it the role sees the tenant its session names with "
             "SET ficha.tenant (for a trusted client such as the API).")] = None,
    login_password: Annotated[str | None, typer.Option(
        "--login-password", envvar="FICHA_SQL_READER_PASSWORD",
        help="Let the role log in with this password (default: NOLOGIN, a role to grant "
             "to logins).")] = None,
    new_tenant: Annotated[bool, typer.Option(
        "--new-tenant", help="The --tenant has nothing here yet (it is about to start): "
             "bind the role anyway. Without it an unknown tenant is refused, since a "
             "misspelled one would make a reader that sees nothing.")] = False,
) -> None:
    """Create or refresh a read-only role: USAGE on ficha's schema and SELECT on the
    analytics views only, rows limited to one tenant by row-level security.

    Run it as ficha's database user if it has CREATEROLE, or as a superuser.
    """
    import psycopg

    from projections import sql_access, sql_views

    settings = _postgres_only("grant-reader")
    assert settings.postgres is not None
    db = views(settings)
    try:
        if tenant is not None and not new_tenant:
            require_known_tenant(tenant, db)
        verifier = (None if login_password is None else sql_access.password_verifier(
            settings.postgres.conninfo, role, login_password))
        with db.transaction() as cur:
            missing = _missing_tables(db, cur)
            if missing:
                raise sql_access.AccessError(
                    f"the read models are not set up in schema {db.schema} (missing "
                    f"{', '.join(missing)}): start ficha once (ficha up, or ficha project "
                    "for each projection), then grant readers")
            sql_access.prepare_reader(cur, db.schema, role, tenant, verifier)
            for name, tables in _projection_tables():
                sql_views.install(cur, db, name, tables)
    except sql_access.AccessError as error:
        fail(str(error), 2)
    except psycopg.errors.InsufficientPrivilege as error:
        fail(f"not allowed: {db_error_text(error)}. Creating roles and granting them needs "
             "a superuser or a role with CREATEROLE that owns ficha's tables")
    except psycopg.Error as error:
        fail(f"could not grant: {db_error_text(error)}")
    finally:
        db.close()
    sees = (f"only tenant {tenant}" if tenant else
            "the tenant its session sets (SET ficha.tenant = '...'), nothing before")
    login = "can log in" if login_password is not None else "NOLOGIN (grant it to a login)"
    console.print(f"reader {role} ({login}): SELECT on the analytics views of schema "
                  f"{db.schema}; sees {sees}", highlight=False)


@sql_app.command("revoke-reader")
def revoke_reader(
    role: RoleOpt,
    drop_role: Annotated[bool, typer.Option(
        "--drop-role", help="Drop the role as well (it must own nothing).")] = False,
) -> None:
    """Take a reader's access to the analytics views away (and its tenant binding)."""
    import psycopg

    from projections import sql_access
    from projections.sql_catalog import VIEWS

    settings = _postgres_only("revoke-reader")
    db = views(settings)
    try:
        with db.transaction() as cur:
            known = sql_access.forget_reader(cur, db.schema, role, [v.name for v in VIEWS],
                                             drop_role)
    except sql_access.AccessError as error:
        fail(str(error), 2)
    except psycopg.Error as error:
        fail(f"could not revoke: {db_error_text(error)}")
    finally:
        db.close()
    if not known:
        fail(f"{role} was not a reader of schema {db.schema}", 1)
    console.print(f"{role}: access to the analytics views of {db.schema} revoked"
                  + ("; role dropped" if drop_role else ""), highlight=False)


@sql_app.command("readers")
def list_readers(as_json: AsJson = False) -> None:
    """The reader roles granted on this schema and the tenant each is bound to."""
    import psycopg

    from projections import sql_access

    settings = _postgres_only("readers")
    db = views(settings)
    try:
        with db.reading() as cur:
            found = sql_access.readers(cur)
    except psycopg.Error as error:
        fail(f"could not read the readers: {db_error_text(error)}")
    finally:
        db.close()
    if as_json:
        print(json.dumps([sql_access.as_dict(r) for r in found]))
        return
    table = Table(title=f"readers of schema {db.schema}")
    for column in ("role", "tenant", "login", "exists"):
        table.add_column(column)
    for r in found:
        table.add_row(r.role, r.tenant or "(session's ficha.tenant)",
                      "yes" if r.can_login else "no", "yes" if r.exists else "no (dropped)")
    console.print(table)
