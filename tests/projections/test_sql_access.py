"""Tenant isolation in SQL (PostgreSQL): for every analytics view, a reader sees the rows
of its tenant and nothing else, writes nothing and reads no table; a reader bound to a
tenant stays there whatever its session does; the projection writer, a non-superuser
owner of the tables, writes and reads everything as before; and all of it survives a
replay and a layout reset done by that writer.

One history and one set of roles for the module (roles are cluster-wide: uniquely named,
dropped at the end). The readers' expected rows are read by a superuser, which row-level
security does not restrict, filtered by tenant.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlparse, urlunparse

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo
from psycopg.rows import dict_row

from projections import sql_access
from projections.registry import all_projections
from projections.replay import replay
from projections.sql_catalog import PREFIX, VIEWS, Dialect, View
from tests.backends import TEST_ID_KEY, make_settings
from tests.factories import make_event
from tests.projections.analytics_data import Pipeline, seed

pytestmark = pytest.mark.postgres

PASSWORD = "pw-for-tests"
INJECTION = "a' OR '1'='1"
FICHA = [sys.executable, "-m", "services"]


@dataclass
class World:
    dsn: str  # the superuser's
    schema: str
    writer: str
    unbound: str  # follows SET ficha.tenant
    acme: str  # bound to acme, can log in, also a member of the unbound role
    globex: str  # bound to globex, NOLOGIN
    member: str  # a plain login, member of the globex role
    both: str  # a plain login, member of the acme and globex roles
    pipeline: Pipeline
    data_dir: Path

    @property
    def views_owner(self) -> str:
        return sql_access.views_owner(self.schema)


def ficha_sql(world: World, *args: str, dsn: str | None = None
              ) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FICHA_")}
    env.update(FICHA_DATA_DIR=str(world.data_dir), FICHA_ID_KEY=TEST_ID_KEY,
               FICHA_DATABASE_URL=dsn or world.dsn, FICHA_DATABASE_SCHEMA=world.schema)
    return subprocess.run([*FICHA, "sql", *args], env=env, capture_output=True, text=True,
                          timeout=120)


def as_user(dsn: str, user: str) -> str:
    """``dsn`` (a postgresql:// URL, as ficha takes it) for another user."""
    url = urlparse(dsn)
    port = f":{url.port}" if url.port else ""
    return urlunparse(url._replace(
        netloc=f"{quote(user)}:{quote(PASSWORD)}@{url.hostname}{port}"))


def superuser(dsn: str) -> psycopg.Connection[dict[str, Any]]:
    return psycopg.connect(dsn, autocommit=True, row_factory=dict_row)


@pytest.fixture(scope="module")
def world(postgres_dsn: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tag = uuid.uuid4().hex[:8]
    schema, writer = f"t_sql_{tag}", f"w_{tag}"
    names = {k: f"r_{tag}_{k}" for k in ("unbound", "acme", "globex", "member", "both")}
    data_dir = tmp_path_factory.mktemp("sql_access")
    database = psycopg.conninfo.conninfo_to_dict(postgres_dsn).get("dbname") or "test"
    pipeline: Pipeline | None = None
    try:
        with superuser(postgres_dsn) as conn:
            conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                sql.Identifier(writer), sql.Literal(PASSWORD)))
            conn.execute(sql.SQL("GRANT CREATE ON DATABASE {} TO {}").format(
                sql.Identifier(str(database)), sql.Identifier(writer)))
            conn.execute(sql.SQL("CREATE SCHEMA {} AUTHORIZATION {}").format(
                sql.Identifier(schema), sql.Identifier(writer)))
        writer_dsn = as_user(postgres_dsn, writer)
        settings = make_settings(data_dir, postgres_dsn=writer_dsn, schema=schema)
        pipeline = seed(settings)  # everything ficha writes, it writes as the writer
        w = World(postgres_dsn, schema, writer, names["unbound"], names["acme"],
                  names["globex"], names["member"], names["both"], pipeline, data_dir)
        for args in (["--role", w.unbound, "--login-password", PASSWORD],
                     ["--role", w.acme, "--tenant", "acme", "--login-password", PASSWORD],
                     ["--role", w.globex, "--tenant", "globex"]):
            done = ficha_sql(w, "grant-reader", *args)
            assert done.returncode == 0, done.stderr
        with superuser(postgres_dsn) as conn:
            for login in (w.member, w.both):
                conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                    sql.Identifier(login), sql.Literal(PASSWORD)))
            for granted, to in ((w.globex, w.member), (w.globex, w.both), (w.acme, w.both),
                                (w.unbound, w.acme)):
                conn.execute(sql.SQL("GRANT {} TO {}").format(
                    sql.Identifier(granted), sql.Identifier(to)))
        yield w
    finally:
        if pipeline is not None:
            pipeline.close()
        with superuser(postgres_dsn) as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(
                sql.Identifier(schema)))
            for role in (*names.values(), sql_access.views_owner(schema), writer):
                if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s",
                                (role,)).fetchone():
                    conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
                    conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


@contextmanager
def session(world: World, role: str) -> Iterator[psycopg.Connection[dict[str, Any]]]:
    """A reader's own login (trust or password authentication alike)."""
    conn = psycopg.connect(make_conninfo(world.dsn, user=role, password=PASSWORD),
                           autocommit=True, row_factory=dict_row)
    try:
        yield conn
    finally:
        conn.close()


def canonical(found: list[dict[str, Any]]) -> list[str]:
    return sorted(json.dumps(r, sort_keys=True, default=str) for r in found)


def seen(conn: psycopg.Connection[dict[str, Any]], view: View, schema: str) -> list[str]:
    return canonical(conn.execute(sql.SQL("SELECT * FROM {}.{}").format(
        sql.Identifier(schema), sql.Identifier(view.name))).fetchall())


def expected(world: World, view: View, tenant: str) -> list[str]:
    """The view's own query run by a superuser on the tables, which it reads whole."""
    with superuser(world.dsn) as conn:
        conn.execute(sql.SQL("SET search_path = {}").format(sql.Identifier(world.schema)))
        found = conn.execute(
            f"SELECT * FROM ({view.select(Dialect(True))}) AS v({', '.join(view.column_names())}) "
            "WHERE tenant = %s", (tenant,)).fetchall()
    assert found, f"the history leaves no {tenant} row in {view.name}"
    return canonical(found)


def set_tenant(conn: psycopg.Connection[dict[str, Any]], tenant: str | None) -> None:
    if tenant is None:
        conn.execute("RESET ficha.tenant")
    else:  # set_config takes the name as a value: any text, quotes included
        conn.execute("SELECT set_config('ficha.tenant', %s, false)", (tenant,))


# ------------------------------------------------------------------------ every view


@pytest.mark.parametrize("view", VIEWS, ids=lambda v: v.name)
def test_a_reader_sees_its_tenants_rows_in_this_view_and_nothing_else(
    world: World, view: View,
) -> None:
    acme, globex = expected(world, view, "acme"), expected(world, view, "globex")
    assert acme != globex

    with session(world, world.unbound) as conn:  # follows the session's ficha.tenant
        assert seen(conn, view, world.schema) == []  # nothing before it names a tenant
        set_tenant(conn, "acme")
        assert seen(conn, view, world.schema) == acme
        conn.execute("SET ficha.tenant = 'globex'")
        assert seen(conn, view, world.schema) == globex
        for nothing in ("", INJECTION, "ACME", "acme ", "%", "*"):
            set_tenant(conn, nothing)
            assert seen(conn, view, world.schema) == [], repr(nothing)
        conn.execute("SET ficha.tenant = 'acme'' OR ''1''=''1'")
        assert seen(conn, view, world.schema) == []
        set_tenant(conn, None)
        assert seen(conn, view, world.schema) == []

    with session(world, world.acme) as conn:  # bound: the setting cannot move it
        assert seen(conn, view, world.schema) == acme
        for other in ("globex", INJECTION, ""):
            set_tenant(conn, other)
            assert seen(conn, view, world.schema) == acme, repr(other)
        conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(world.unbound)))
        set_tenant(conn, "globex")  # as the unbound role, still the acme login
        assert seen(conn, view, world.schema) == acme

    with session(world, world.member) as conn:  # a login that is a member of a bound role
        assert seen(conn, view, world.schema) == globex
        set_tenant(conn, "acme")
        assert seen(conn, view, world.schema) == globex

    with session(world, world.both) as conn:  # bound to two tenants: neither
        set_tenant(conn, "acme")
        assert seen(conn, view, world.schema) == []

    with superuser(world.dsn) as conn:  # through the views a superuser is unbound too
        assert seen(conn, view, world.schema) == []
        set_tenant(conn, "globex")
        assert seen(conn, view, world.schema) == globex


@pytest.mark.parametrize("view", VIEWS, ids=lambda v: v.name)
def test_a_reader_cannot_write_through_this_view(world: World, view: View) -> None:
    column = view.columns[1].name
    statements = [
        sql.SQL("INSERT INTO {} (tenant) VALUES ('acme')").format(sql.Identifier(view.name)),
        sql.SQL("UPDATE {} SET {} = NULL").format(sql.Identifier(view.name),
                                                   sql.Identifier(column)),
        sql.SQL("DELETE FROM {}").format(sql.Identifier(view.name)),
        sql.SQL("TRUNCATE {}").format(sql.Identifier(view.name)),
        sql.SQL("ALTER VIEW {} RENAME TO x").format(sql.Identifier(view.name)),
        sql.SQL("DROP VIEW {}").format(sql.Identifier(view.name)),
    ]
    for role in (world.unbound, world.acme):
        with session(world, role) as conn:
            assert conn.execute("SHOW default_transaction_read_only").fetchone() == {
                "default_transaction_read_only": "on"}
            # Not only read-only sessions: no privilege to write either.
            conn.execute("SET default_transaction_read_only = off")
            set_tenant(conn, "acme")
            for statement in statements:
                # Refused for want of privilege; or before that, for what the view is (a
                # join or an aggregate cannot take writes; TRUNCATE takes tables only).
                with pytest.raises((psycopg.errors.InsufficientPrivilege,
                                    psycopg.errors.ObjectNotInPrerequisiteState,
                                    psycopg.errors.WrongObjectType)):
                    conn.execute(statement)
            assert conn.execute(
                "SELECT has_table_privilege(CAST(%s AS regclass), 'SELECT') AS r, "
                "has_table_privilege(CAST(%s AS regclass), "
                "'INSERT, UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER') AS w",
                (f"{world.schema}.{view.name}",) * 2).fetchone() == {"r": True, "w": False}
    assert expected(world, view, "acme")


# ------------------------------------------------------------------------ around the views


def test_a_reader_can_read_no_table_and_create_nothing(world: World) -> None:
    with superuser(world.dsn) as conn:
        tables = [r["tablename"] for r in conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = %s", (world.schema,))]
    # The read models, the event store, the outbox, tracking, the readers' bindings.
    assert {"contacts", "audience_facts", "ficha_outbox", "ficha_projection_tracking",
            sql_access.READERS_TABLE} <= set(tables)
    assert any("events" in t or "stored" in t for t in tables), tables
    for role in (world.unbound, world.acme, world.member):
        with session(world, role) as conn:
            conn.execute("SET default_transaction_read_only = off")
            set_tenant(conn, "acme")
            for table in tables:
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    conn.execute(sql.SQL("SELECT * FROM {}.{} LIMIT 1").format(
                        sql.Identifier(world.schema), sql.Identifier(table)))
            for statement in (
                sql.SQL("CREATE TABLE {}.mine (a int)").format(sql.Identifier(world.schema)),
                sql.SQL("CREATE VIEW {}.mine AS SELECT 1").format(sql.Identifier(world.schema)),
                sql.SQL("SET ROLE {}").format(sql.Identifier(world.views_owner)),
                sql.SQL("SET ROLE {}").format(sql.Identifier(world.writer)),
            ):
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    conn.execute(statement)


def test_what_a_reader_can_do_in_its_session_is_what_the_docs_say(world: World) -> None:
    """Read-only is the session's default, which it may turn off; then it may create
    temporary objects (TEMPORARY is PUBLIC's on the database), holding its rows only, and
    still nothing lasting anywhere, nor any change to ficha's data."""
    docs = (Path(__file__).parents[2] / "docs" / "sql.md").read_text()
    assert "cannot write anything" not in docs and "sessions are read-only" not in docs
    assert "REVOKE TEMPORARY ON DATABASE <database> FROM PUBLIC" in docs
    with session(world, world.acme) as conn:
        assert conn.execute("SHOW default_transaction_read_only").fetchone() == {
            "default_transaction_read_only": "on"}
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            conn.execute("CREATE TEMP TABLE mine AS SELECT * FROM analytics_contacts")
        conn.execute("SET default_transaction_read_only = off")
        temp = conn.execute("SELECT has_database_privilege(current_database(), 'TEMPORARY') "
                            "AS temp").fetchone()
        assert temp == {"temp": True}, "this database does not grant TEMPORARY to PUBLIC"
        conn.execute("CREATE TEMP TABLE mine AS SELECT * FROM analytics_contacts")
        assert {r["tenant"] for r in conn.execute("SELECT tenant FROM mine")} == {"acme"}
        for statement in ("CREATE TABLE public.mine (a int)", "CREATE SCHEMA mine",
                          "CREATE FUNCTION public.mine() RETURNS int LANGUAGE sql AS 'SELECT 1'",
                          "DELETE FROM analytics_contacts"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement)


def test_a_readers_own_function_sees_no_other_tenants_row(world: World) -> None:
    """Policies run before a reader's conditions: a leaky function gets filtered rows."""
    peeked: list[str] = []
    with session(world, world.acme) as conn:
        conn.add_notice_handler(lambda notice: peeked.append(str(notice.message_primary)))
        conn.execute("SET default_transaction_read_only = off")  # a session may: temp objects
        conn.execute(
            "CREATE FUNCTION pg_temp.peek(t text) RETURNS boolean LANGUAGE plpgsql COST 0.0001 "
            "AS $$ BEGIN RAISE NOTICE 'peek %', t; RETURN true; END $$")
        rows = conn.execute(f"SELECT tenant FROM {PREFIX}contacts WHERE pg_temp.peek(tenant)"
                            ).fetchall()
    assert {r["tenant"] for r in rows} == {"acme"}
    assert peeked and set(peeked) == {"peek acme"}


def test_the_tenant_policy_can_use_the_tables_tenant_indexes(world: World) -> None:
    """One equality with a value worked out once: with sequential scans discouraged (the
    test tables are tiny), the reader's plan reads the tenant's rows by index."""
    with session(world, world.acme) as conn:
        conn.execute("SET enable_seqscan = off")
        plan = "\n".join(r["QUERY PLAN"] for r in conn.execute(
            f"EXPLAIN (COSTS OFF) SELECT count(*) FROM {world.schema}.{PREFIX}contacts"))
    assert re.search(r"Index Cond: \(tenant = \$\d+\)", plan), plan


def test_the_documented_session_queries_work_as_a_reader(world: World) -> None:
    text = (Path(__file__).parents[2] / "docs" / "sql.md").read_text()
    blocks = [b for b in re.findall(r"```sql\n(.*?)```", text, flags=re.S)
              if re.search(r"^SET ", b, re.M)]
    assert blocks
    with session(world, world.unbound) as conn:
        for block in blocks:
            for statement in [s for s in block.split(";") if s.strip()]:
                conn.execute(statement)
            assert conn.execute(f"SELECT COUNT(*) AS n FROM {PREFIX}contacts "
                                "WHERE tenant <> 'acme'").fetchone() == {"n": 0}
            assert conn.execute(f"SELECT COUNT(*) AS n FROM {PREFIX}contacts"
                                ).fetchone() == {"n": 2}


def test_the_writer_is_not_subject_to_row_level_security(world: World) -> None:
    p = world.pipeline
    with superuser(world.dsn) as conn:
        flags = conn.execute(
            "SELECT c.relname, c.relrowsecurity, c.relforcerowsecurity, "
            "(SELECT count(*) FROM pg_policy y WHERE y.polrelid = c.oid) AS policies, "
            "EXISTS (SELECT 1 FROM information_schema.columns i WHERE i.table_schema = %s "
            "AND i.table_name = c.relname AND i.column_name = 'tenant') AS has_tenant "
            "FROM pg_class c WHERE c.relnamespace = CAST(%s AS regnamespace) "
            "AND c.relname = ANY(%s)",
            (world.schema, world.schema,
             [t for projection in all_projections() for t in projection.tables])).fetchall()
    assert len(flags) == sum(len(projection.tables) for projection in all_projections())
    for row in flags:
        assert row["relrowsecurity"] and not row["relforcerowsecurity"], row
        assert row["policies"] == (1 if row["has_tenant"] else 0), row
    # The writer (a plain role owning the tables) reads every tenant and keeps writing.
    with p.db.reading() as cur:
        cur.execute("SELECT DISTINCT tenant FROM audience_facts ORDER BY tenant")
        assert [r["tenant"] for r in cur.fetchall()] == ["acme", "globex"]
        cur.execute("SELECT current_user AS me, usesuper FROM pg_user "
                    "WHERE usename = current_user")
        assert cur.fetchone() == {"me": world.writer, "usesuper": False}
        # No policy in the writer's plans (enabled, not forced: the owner is exempt) ...
        for statement in (
            "SELECT * FROM audience_facts WHERE tenant = 'acme'",
            "UPDATE contacts SET city = city WHERE contact_id = 'x'",
            "INSERT INTO contact_tags VALUES ('acme', 't', 'x', 'T') ON CONFLICT "
            "(tenant, tag, contact_id) DO UPDATE SET label = excluded.label",
        ):
            cur.execute(f"EXPLAIN (COSTS OFF) {statement}")
            plan = " ".join(r["QUERY PLAN"] for r in cur.fetchall())
            assert "pg_has_role" not in plan and "current_setting" not in plan, plan
    with session(world, world.acme) as conn:  # ... as there is in a reader's
        plan = " ".join(r["QUERY PLAN"] for r in conn.execute(
            f"EXPLAIN (COSTS OFF) SELECT * FROM {world.schema}.{PREFIX}contacts"))
    assert "pg_has_role" in plan
    p.ingest([make_event("form_submitted", tenant="globex", event_id="w1",
                         email="dee@example.com", occurred_at=p.ago(0.2), form_id="f")])
    with session(world, world.member) as conn:
        emails = {r["email"] for r in conn.execute(
            f"SELECT email FROM {world.schema}.{PREFIX}engagement")}
    assert "dee@example.com" in emails and all("acme" not in e for e in emails)


def test_isolation_survives_a_replay_and_a_reset_by_the_writer(world: World) -> None:
    p = world.pipeline
    before = {v.name: (expected(world, v, "acme"), expected(world, v, "globex")) for v in VIEWS}
    for projection in all_projections():
        replay(p.store, p.db, type(projection))  # new tables moved in: no policy, no grant
    with p.db.transaction() as cur:
        cur.execute("UPDATE ficha_projection_versions SET version = 0 WHERE name = 'contacts'")
    p.runners[0].setup()  # a layout reset: contacts' tables and views dropped and recreated
    p.catch_up()
    with superuser(world.dsn) as conn:
        owners = conn.execute(
            "SELECT c.relname, pg_get_userbyid(c.relowner) AS owner FROM pg_class c "
            "WHERE c.relkind = 'v' AND c.relnamespace = CAST(%s AS regnamespace)",
            (world.schema,)).fetchall()
    assert {r["relname"]: r["owner"] for r in owners} == {
        v.name: world.views_owner for v in VIEWS}
    for view in VIEWS:
        assert (expected(world, view, "acme"), expected(world, view, "globex")) == before[
            view.name]
        with session(world, world.acme) as conn:
            set_tenant(conn, "globex")
            assert seen(conn, view, world.schema) == before[view.name][0]
        with session(world, world.unbound) as conn:
            assert seen(conn, view, world.schema) == []
            set_tenant(conn, "globex")
            assert seen(conn, view, world.schema) == before[view.name][1]


# ------------------------------------------------------------------------ the command


def test_grant_reader_refuses_what_would_widen_access(world: World) -> None:
    def bindings() -> list[Any]:
        with superuser(world.dsn) as conn:
            return conn.execute(sql.SQL("SELECT role, tenant FROM {}.{} ORDER BY role").format(
                sql.Identifier(world.schema), sql.Identifier(sql_access.READERS_TABLE))
            ).fetchall()

    before = bindings()
    refusals = {
        ("--role", "x_reader", "--tenant", INJECTION): "is not a tenant name",
        ("--role", "x_reader", "--tenant", "Acme"): "is not a tenant name",
        ("--role", 'x"; DROP ROLE postgres; --'): "is not allowed",
        ("--role", "Analyst"): "is not allowed",
        ("--role", "postgres"): "superuser",
        ("--role", world.writer): "owns ficha's tables",
        ("--role", world.views_owner): "owns ficha's tables",
    }
    for args, message in refusals.items():
        done = ficha_sql(world, "grant-reader", *args)
        assert done.returncode == 2, (args, done.stdout, done.stderr)
        assert message in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert bindings() == before
    listed = json.loads(ficha_sql(world, "readers", "--json").stdout)
    assert {(r["role"], r["tenant"], r["can_login"]) for r in listed} == {
        (world.unbound, None, True), (world.acme, "acme", True), (world.globex, "globex", False)}
    done = ficha_sql(world, "revoke-reader", "--role", "r_never_granted")
    assert done.returncode == 1 and "was not a reader" in done.stderr
    # A role that exists but may not create roles gets a sentence, not a traceback.
    reader_dsn = as_user(world.dsn, world.acme)
    done = ficha_sql(world, "grant-reader", "--role", "x_other", dsn=reader_dsn)
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert done.stderr.startswith("error:"), done.stderr


def test_grant_reader_refuses_an_unknown_tenant_unless_told_it_is_new(world: World) -> None:
    role = f"r_{uuid.uuid4().hex[:8]}_new"
    try:
        done = ficha_sql(world, "grant-reader", "--role", role, "--tenant", "acmee")
        assert done.returncode == 2, (done.stdout, done.stderr)
        assert done.stderr.strip() == (
            "error: no tenant 'acmee' is known here (known: acme, globex)"), done.stderr
        listed = json.loads(ficha_sql(world, "readers", "--json").stdout)
        assert role not in {r["role"] for r in listed}
        done = ficha_sql(world, "grant-reader", "--role", role, "--tenant", "acmee",
                         "--new-tenant")
        assert done.returncode == 0, done.stderr
        listed = json.loads(ficha_sql(world, "readers", "--json").stdout)
        assert {"role": role, "tenant": "acmee", "exists": True, "can_login": False} in listed
    finally:
        ficha_sql(world, "revoke-reader", "--role", role, "--drop-role")


def test_grant_reader_says_an_owner_that_is_a_superuser_is_both(world: World) -> None:
    """ficha's database user may be a superuser (postgres): the refusal says both."""
    with superuser(world.dsn) as conn:
        conn.execute(sql.SQL("ALTER ROLE {} SUPERUSER").format(sql.Identifier(world.writer)))
    try:
        done = ficha_sql(world, "grant-reader", "--role", world.writer)
    finally:
        with superuser(world.dsn) as conn:
            conn.execute(sql.SQL("ALTER ROLE {} NOSUPERUSER").format(
                sql.Identifier(world.writer)))
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert (f"{world.writer} owns ficha's tables or views and is a superuser"
            in done.stderr), done.stderr
    assert "Readers may not be superusers" in done.stderr, done.stderr


def test_revoking_a_reader_takes_its_access_away(world: World) -> None:
    role = f"r_{uuid.uuid4().hex[:8]}_gone"
    done = ficha_sql(world, "grant-reader", "--role", role, "--tenant", "acme",
                     "--login-password", PASSWORD)
    assert done.returncode == 0, done.stderr
    try:
        with session(world, role) as conn:
            assert conn.execute(f"SELECT COUNT(*) AS n FROM {PREFIX}contacts").fetchone() == {
                "n": 2}
        done = ficha_sql(world, "revoke-reader", "--role", role)
        assert done.returncode == 0, done.stderr
        with session(world, role) as conn, pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(f"SELECT COUNT(*) FROM {world.schema}.{PREFIX}contacts")
        done = ficha_sql(world, "revoke-reader", "--role", role, "--drop-role")
        assert done.returncode == 1  # no longer a reader; the role stays until dropped
    finally:
        with superuser(world.dsn) as conn:
            conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))
