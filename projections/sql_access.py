"""Who may read the analytics views on PostgreSQL, and which tenant's rows they see.

Three kinds of roles:

* the **projection writer** (the user of ``FICHA_DATABASE_URL``) owns the read-model
  tables. Row-level security is enabled on them but not forced, so the owner is not
  subject to it: the projections write exactly as before, with no policy to evaluate.
* the **views owner**, ``<schema>_views`` (NOLOGIN), owns the analytics views. It may
  SELECT the read-model tables that carry a tenant, and, not being their owner, it is
  subject to their row-level security. A view checks its owner's privileges on the
  tables but evaluates the policies in the reader's session (``current_user``,
  ``session_user`` and the session's settings are the reader's), so a reader needs no
  privilege on any table. (``security_invoker`` views would apply the same policies, but
  only to readers who may SELECT the tables themselves.) The writer is made a member of
  it, so that it can recreate the views when a projection is reset or replayed.
* **readers** get USAGE on the schema and SELECT on the views, nothing else: not the
  tables, the event store, the outbox or the tracking tables. The policy on every table
  lets a reader see the rows of one tenant:

  - a reader **bound to a tenant** (``ficha sql grant-reader --tenant T``; the binding is
    a row of ``ficha_sql_readers``) sees that tenant's rows only, whatever the session
    sets, also after ``SET ROLE`` to another role, and also for a login that is merely a
    member of the bound role;
  - an **unbound** reader sees the rows of the tenant named by the session setting
    ``ficha.tenant`` (``SET ficha.tenant = 'acme'``), and nothing while it is unset.
    Any session can change that setting: an unbound role is for a trusted client (the
    API, a connection pooler) that sets it for its end users, never for a person;
  - anyone else reading the views is a reader as above: a superuser (which reads the
    tables whole anyway) and the writer (which does not own the views) are unbound.

Tenant names reach the database only as bound parameters or as values compared by the
policy; roles as quoted identifiers.
"""

from __future__ import annotations

import logging
import re
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from contracts.events import TENANT_REGEX
from projections.db import Cursor

log = logging.getLogger("ficha.sql")

READERS_TABLE = "ficha_sql_readers"
TENANT_SETTING = "ficha.tenant"
ROLE_PATTERN = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_ACCESS_LOCK = zlib.crc32(b"ficha_sql_access")
_VERIFIER = re.compile(r"^SCRAM-SHA-256\$[0-9]+:[A-Za-z0-9+/=]+\$[A-Za-z0-9+/=]+:[A-Za-z0-9+/=]+$")

# The tenant a reader may see: the one its login or current role (or a role either is a
# member of) is bound to; else, for an unbound reader, the session's ficha.tenant.
# Two different bound tenants give none. A superuser's memberships are ignored (a
# superuser is a member of every role): through the views it is an unbound reader, and
# SET ROLE from one tests a reader. One equality with a value computed once per query,
# so that the tables' tenant indexes serve it.
READER_TENANT = (
    "(SELECT CASE WHEN count(b.tenant) = 0 "
    f"THEN NULLIF(current_setting('{TENANT_SETTING}', true), '') "
    "WHEN count(DISTINCT b.tenant) = 1 THEN min(b.tenant) END "
    f"FROM {READERS_TABLE} b JOIN pg_catalog.pg_roles g ON g.rolname = b.role "
    "WHERE b.tenant IS NOT NULL AND ("
    "(NOT (SELECT u.rolsuper FROM pg_catalog.pg_roles u WHERE u.rolname = current_user) "
    "AND pg_catalog.pg_has_role(current_user, g.oid, 'MEMBER')) "
    "OR (NOT (SELECT s.rolsuper FROM pg_catalog.pg_roles s WHERE s.rolname = session_user) "
    "AND pg_catalog.pg_has_role(session_user, g.oid, 'MEMBER'))))"
)
POLICY_CONDITION = f"tenant = {READER_TENANT}"
# The policy's name carries its condition's checksum: a changed condition replaces it.
POLICY_PREFIX = "ficha_tenant_"
POLICY = f"{POLICY_PREFIX}{zlib.crc32(POLICY_CONDITION.encode()):08x}"


class AccessError(Exception):
    """A reader that cannot be granted as asked; the message says why."""


@dataclass(frozen=True)
class Reader:
    role: str
    tenant: str | None  # None: unbound, follows ficha.tenant
    exists: bool
    can_login: bool


def views_owner(schema: str) -> str:
    return f"{schema}_views"[:63]


def lock(cur: Cursor) -> None:
    """Serialise changes to policies, owners and grants (concurrent GRANTs on one object
    fail in PostgreSQL), for the rest of the transaction."""
    cur.execute("SELECT pg_advisory_xact_lock(?)", (_ACCESS_LOCK,))


def ensure_readers_table(cur: Cursor) -> None:
    cur.execute(f"CREATE TABLE IF NOT EXISTS {READERS_TABLE} ("
                "role TEXT PRIMARY KEY, tenant TEXT)")


def _text(statement: sql.Composable) -> str:
    return statement.as_string(None)


def _ident(name: str) -> str:
    return _text(sql.Identifier(name))


def _role_exists(cur: Cursor, role: str) -> bool:
    cur.execute("SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = ?", (role,))
    return cur.fetchone() is not None


def _tenant_tables(cur: Cursor, tables: Sequence[str]) -> list[str]:
    cur.execute(
        "SELECT table_name FROM information_schema.columns WHERE table_schema = current_schema() "
        "AND column_name = 'tenant' AND table_name = ANY(?) ORDER BY table_name",
        (list(tables),),
    )
    return [r["table_name"] for r in cur.fetchall()]


def secure(cur: Cursor, schema: str, tables: Sequence[str], views: Sequence[str]) -> None:
    """Row-level security on a projection's tables, and, once ``grant-reader`` has created
    the views owner, its views' owner and the readers' grants. Only what is missing is
    changed, so that a restart takes no strong lock on a table in use."""
    ensure_readers_table(cur)
    tenant_tables = _tenant_tables(cur, tables)
    cur.execute(
        "SELECT c.relname, c.relrowsecurity, (SELECT count(*) FROM pg_catalog.pg_policy p "
        "WHERE p.polrelid = c.oid AND p.polname = ?) AS policies FROM pg_catalog.pg_class c "
        "WHERE c.relnamespace = CAST(current_schema() AS regnamespace) AND c.relname = ANY(?)",
        (POLICY, list(tables)),
    )
    for row in cur.fetchall():
        table = _ident(row["relname"])
        if not row["relrowsecurity"]:
            # Tables without a tenant get no policy: nobody but their owner reads them.
            cur.execute(f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY")
        if row["relname"] in tenant_tables and not row["policies"]:
            cur.execute("SELECT polname FROM pg_catalog.pg_policy WHERE polrelid = "
                        "CAST(? AS regclass) AND starts_with(polname, ?)",
                        (row["relname"], POLICY_PREFIX))
            for old in [r["polname"] for r in cur.fetchall()]:
                cur.execute(f"DROP POLICY {_ident(old)} ON {table}")
            cur.execute(f"CREATE POLICY {POLICY} ON {table} FOR SELECT "
                        f"USING ({POLICY_CONDITION})")
    owner = views_owner(schema)
    if not _role_exists(cur, owner):
        return
    cur.execute("SELECT pg_catalog.pg_has_role(current_user, ?, 'MEMBER') AS member", (owner,))
    membership = cur.fetchone()
    if not membership or not membership["member"]:
        log.warning("the analytics views stay owned by the projection writer, which is not "
                    "a member of %s: readers cannot use them until `ficha sql grant-reader` "
                    "runs again (as a superuser or a role with CREATEROLE)", owner)
        return
    quoted_owner = _ident(owner)
    cur.execute(f"GRANT USAGE, CREATE ON SCHEMA {_ident(schema)} TO {quoted_owner}")
    readable = [*tenant_tables, READERS_TABLE]
    _grant_select(cur, readable, owner)
    cur.execute(
        "SELECT c.relname FROM pg_catalog.pg_class c WHERE c.relnamespace = "
        "CAST(current_schema() AS regnamespace) AND c.relname = ANY(?) "
        "AND c.relowner <> CAST(CAST(? AS text) AS regrole)",
        (list(views), owner),
    )
    for row in cur.fetchall():
        cur.execute(f"ALTER VIEW {_ident(row['relname'])} OWNER TO {quoted_owner}")
    cur.execute(f"SELECT role FROM {READERS_TABLE} ORDER BY role")
    for reader in [r["role"] for r in cur.fetchall()]:
        if _role_exists(cur, reader):
            cur.execute(f"GRANT USAGE ON SCHEMA {_ident(schema)} TO {_ident(reader)}")
            _grant_select(cur, views, reader)


def _grant_select(cur: Cursor, relations: Sequence[str], role: str) -> None:
    cur.execute(
        "SELECT c.relname FROM pg_catalog.pg_class c WHERE c.relnamespace = "
        "CAST(current_schema() AS regnamespace) AND c.relname = ANY(?) "
        "AND NOT pg_catalog.has_table_privilege(CAST(CAST(? AS text) AS regrole), c.oid, 'SELECT')",
        (list(relations), role),
    )
    missing = [r["relname"] for r in cur.fetchall()]
    if missing:
        names = ", ".join(_ident(name) for name in sorted(missing))
        cur.execute(f"GRANT SELECT ON {names} TO {_ident(role)}")


# ------------------------------------------------------------------------------ readers


def check_role_name(role: str) -> None:
    if not ROLE_PATTERN.match(role):
        raise AccessError(
            f"role name {role!r} is not allowed: use lower-case letters, digits and _, "
            "starting with a letter or _, at most 63 characters")


def check_tenant(tenant: str) -> None:
    if not re.match(TENANT_REGEX, tenant):
        raise AccessError(
            f"tenant {tenant!r} is not a tenant name: lower-case letters, digits, _ and -, "
            "starting with a letter or digit, at most 63 characters")


def password_verifier(conninfo: str, role: str, password: str) -> str:
    """The SCRAM verifier of ``password``, computed by libpq on this side: the clear
    password never reaches the server (nor its statement log)."""
    with psycopg.connect(conninfo, connect_timeout=5) as conn:
        verifier = conn.pgconn.encrypt_password(password.encode(), role.encode(),
                                                b"scram-sha-256").decode()
    if not _VERIFIER.match(verifier):
        raise AccessError("libpq returned a password verifier of an unexpected form")
    return verifier


def prepare_reader(cur: Cursor, schema: str, role: str, tenant: str | None,
                   verifier: str | None) -> None:
    """Create or update ``role`` as a reader of ``tenant`` (None: unbound) and the views
    owner, and make the projection writer (the tables' owner) a member of the latter.
    ``verifier`` (from ``password_verifier``) lets the role log in. ``secure`` then
    applies the grants."""
    check_role_name(role)
    if tenant is not None:
        check_tenant(tenant)
    owner = views_owner(schema)
    lock(cur)
    ensure_readers_table(cur)
    cur.execute("SELECT tableowner FROM pg_catalog.pg_tables WHERE schemaname = ? "
                "AND tablename = 'contacts'", (schema,))
    row = cur.fetchone()
    if row is None:
        raise AccessError(f"the read models do not exist in schema {schema} yet: start ficha "
                          "(ficha up, or ficha project) once, then grant readers")
    writer = str(row["tableowner"])
    cur.execute("SELECT rolsuper, rolbypassrls FROM pg_catalog.pg_roles WHERE rolname = ?",
                (role,))
    existing = cur.fetchone()
    refusal = _not_a_reader(role, role in (owner, writer), existing)
    if refusal is not None:
        raise AccessError(refusal)
    if verifier is not None and not _VERIFIER.match(verifier):
        raise AccessError("a login password must be given as a SCRAM verifier")
    # A verifier is base64 and $ : only, so it can be written into the statement.
    login = (sql.SQL("LOGIN PASSWORD {}").format(sql.Literal(verifier))
             if verifier is not None else sql.SQL(""))
    if existing is None:
        nologin = sql.SQL("NOLOGIN") if verifier is None else sql.SQL("")
        cur.execute(_text(sql.SQL("CREATE ROLE {} {} {}").format(
            sql.Identifier(role), login, nologin)))
    elif verifier is not None:
        cur.execute(_text(sql.SQL("ALTER ROLE {} {}").format(sql.Identifier(role), login)))
    # A reader's sessions read, in ficha's schema, by default.
    cur.execute(_text(sql.SQL("ALTER ROLE {} SET default_transaction_read_only = on").format(
        sql.Identifier(role))))
    cur.execute(_text(sql.SQL("ALTER ROLE {} SET search_path = {}").format(
        sql.Identifier(role), sql.Identifier(schema))))
    if not _role_exists(cur, owner):
        cur.execute(f"CREATE ROLE {_ident(owner)} NOLOGIN")
    cur.execute("SELECT pg_catalog.pg_has_role(?, ?, 'MEMBER') AS member", (writer, owner))
    member = cur.fetchone()
    if not member or not member["member"]:
        cur.execute(f"GRANT {_ident(owner)} TO {_ident(writer)}")
    cur.execute(
        f"INSERT INTO {READERS_TABLE} (role, tenant) VALUES (?, ?) "
        "ON CONFLICT (role) DO UPDATE SET tenant = excluded.tenant",
        (role, tenant),
    )


def _not_a_reader(role: str, owns: bool, existing: Any) -> str | None:
    """Why ``role`` may not be a reader, or None: the owners of ficha's tables or views,
    superusers and roles with BYPASSRLS all read around row-level security."""
    reasons = []
    if owns:
        reasons.append("owns ficha's tables or views")
    if existing is not None and existing["rolsuper"]:
        reasons.append("is a superuser")
    elif existing is not None and existing["rolbypassrls"]:
        reasons.append("bypasses row-level security (BYPASSRLS)")
    if not reasons:
        return None
    return (f"{role} {' and '.join(reasons)}: it would see every tenant. Readers may not be "
            "superusers, roles with BYPASSRLS, or the owners of ficha's tables or views "
            "(row-level security does not restrict them); choose another reader role")


def forget_reader(cur: Cursor, schema: str, role: str, views: Sequence[str],
                  drop_role: bool) -> bool:
    """Revoke what ``prepare_reader`` and ``secure`` granted; False if it was no reader."""
    check_role_name(role)
    lock(cur)
    ensure_readers_table(cur)
    cur.execute(f"DELETE FROM {READERS_TABLE} WHERE role = ? RETURNING role", (role,))
    if cur.fetchone() is None:
        return False
    if not _role_exists(cur, role):
        return True
    quoted = _ident(role)
    cur.execute("SELECT relname FROM pg_catalog.pg_class WHERE relnamespace = "
                "CAST(current_schema() AS regnamespace) AND relname = ANY(?)", (list(views),))
    present = [r["relname"] for r in cur.fetchall()]
    if present:
        cur.execute(f"REVOKE ALL ON {', '.join(_ident(v) for v in present)} FROM {quoted}")
    cur.execute(f"REVOKE ALL ON SCHEMA {_ident(schema)} FROM {quoted}")
    if drop_role:
        cur.execute(f"DROP ROLE {quoted}")
    return True


def readers(cur: Cursor) -> list[Reader]:
    ensure_readers_table(cur)
    cur.execute(f"SELECT b.role, b.tenant, g.rolname IS NOT NULL AS present, "
                f"COALESCE(g.rolcanlogin, false) AS login FROM {READERS_TABLE} b "
                "LEFT JOIN pg_catalog.pg_roles g ON g.rolname = b.role ORDER BY b.role")
    return [Reader(r["role"], r["tenant"], bool(r["present"]), bool(r["login"]))
            for r in cur.fetchall()]


def as_dict(reader: Reader) -> dict[str, Any]:
    return {"role": reader.role, "tenant": reader.tenant, "exists": reader.exists,
            "can_login": reader.can_login}
