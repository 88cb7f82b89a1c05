"""Client-list filter queries at scale: p50/p95/p99 of `list_contacts` at N contacts.

Fills the `contacts` and `contact_tags` read models directly (COPY on PostgreSQL) with N
synthetic contacts whose languages, countries, consent, tags and first-contact dates
follow skewed, realistic mixes, then times the same query code the CLI and API use:
two-filter pages (50 rows, newest first) and a page walk with the cursor. The raw
baseline in the same run is an unfiltered page of the same table (one index range scan).

Usage:  python -m bench.client_list --contacts 1000000 [--backend postgres|sqlite]
"""

from __future__ import annotations

import argparse
import io
import os
import random
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from projections.contacts import COLUMNS, ContactsProjection
from projections.db import ViewDatabase
from projections.queries import ContactFilter, list_contacts
from services.config import load_settings

PG_DSN = os.environ.get("FICHA_BENCH_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test")
LANGS = [("es", 35), ("en", 20), ("es-MX", 10), ("fr", 8), ("de", 7), ("pt-BR", 7),
         ("it", 5), ("ca", 4), ("en-GB", 4)]
COUNTRIES = [("ES", 40), ("MX", 12), ("US", 12), ("GB", 6), ("FR", 8), ("DE", 7),
             ("BR", 7), ("IT", 5), ("AR", 3)]
TAGS = [("vip", 3), ("lead", 30), ("newsletter", 25), ("returning", 12), ("no-show", 4),
        ("wholesale", 2)]


def rows(n: int, tenant: str, seed: int = 1, properties: str = "{}") -> Any:
    rnd = random.Random(seed)
    start = datetime(2023, 1, 1, tzinfo=UTC)
    langs, lw = zip(*LANGS, strict=True)
    countries, cw = zip(*COUNTRIES, strict=True)
    for i in range(n):
        language = rnd.choices(langs, lw)[0]
        first_seen = start + timedelta(seconds=rnd.randint(0, 3 * 365 * 86400))
        tags = [t for t, pct in TAGS if rnd.random() * 100 < pct]
        consent = rnd.random() < 0.6
        yield {
            "tenant": tenant, "contact_id": uuid.UUID(int=rnd.getrandbits(128)).hex,
            "email": f"person{i}@example.com", "first_name": "Ana", "last_name": "García",
            "phone": None, "language": language, "country": rnd.choices(countries, cw)[0],
            "city": "Madrid", "postal_code": None, "contact_type": "client",
            "lead_status": None, "language_base": language.split("-")[0],
            "member_id": None, "member_status": None, "consent_email": consent,
            "consent_sms": None, "consent_whatsapp": None, "consent_phone": None,
            "properties": properties, "tags": tags, "first_seen_at": first_seen,
            "last_activity_at": first_seen, "forms_count": 1, "surveys_count": 0,
            "bookings_count": 0, "purchases_count": 0, "events_count": 1, "version": 2,
        }


def fill(db: ViewDatabase, n: int, tenant: str, properties: str = "{}") -> float:
    """N synthetic contacts, all with the same ``properties`` (JSON text without
    backslashes: COPY's text format would take them as escapes)."""
    started = time.perf_counter()
    if db.is_postgres:
        conn = db._connect()  # noqa: SLF001 - bulk load needs the raw connection for COPY
        with conn.cursor() as cur:
            contacts = io.StringIO()
            tags = io.StringIO()
            for row in rows(n, tenant, properties=properties):
                values = []
                for column in COLUMNS:
                    value = row[column]
                    if column == "tags":
                        value = "[" + ",".join(f'"{t}"' for t in row["tags"]) + "]"
                    elif isinstance(value, datetime):
                        value = value.isoformat()
                    values.append("\\N" if value is None else str(value))
                contacts.write("\t".join(values) + "\n")
                for tag in row["tags"]:
                    tags.write(f"{tenant}\t{tag}\t{row['contact_id']}\t{tag}\n")
            contacts.seek(0)
            tags.seek(0)
            with cur.copy(f"COPY contacts ({', '.join(COLUMNS)}) FROM STDIN") as copy:
                while chunk := contacts.read(1 << 20):
                    copy.write(chunk)
            with cur.copy("COPY contact_tags (tenant, tag, contact_id, label) FROM STDIN") as copy:
                while chunk := tags.read(1 << 20):
                    copy.write(chunk)
            cur.execute("ANALYZE contacts")
            cur.execute("ANALYZE contact_tags")
        conn.commit()
    else:
        import json

        with db.transaction() as cur:
            batch: list[list[Any]] = []
            tag_rows: list[tuple[str, str, str, str]] = []
            for row in rows(n, tenant, properties=properties):
                values = []
                for column in COLUMNS:
                    value = row[column]
                    if column == "tags":
                        value = json.dumps(row["tags"])
                    elif isinstance(value, datetime):
                        value = value.astimezone(UTC).replace(tzinfo=None).isoformat(
                            timespec="microseconds") + "Z"
                    elif isinstance(value, bool):
                        value = int(value)
                    values.append(value)
                batch.append(values)
                tag_rows.extend((tenant, t, row["contact_id"], t) for t in row["tags"])
                if len(batch) >= 10_000:
                    cur.executemany(f"INSERT INTO contacts ({', '.join(COLUMNS)}) VALUES "
                                    f"({','.join('?' * len(COLUMNS))})", batch)
                    cur.executemany("INSERT INTO contact_tags VALUES (?,?,?,?)", tag_rows)
                    batch.clear()
                    tag_rows.clear()
            if batch:
                cur.executemany(f"INSERT INTO contacts ({', '.join(COLUMNS)}) VALUES "
                                f"({','.join('?' * len(COLUMNS))})", batch)
                cur.executemany("INSERT INTO contact_tags VALUES (?,?,?,?)", tag_rows)
            cur.execute("ANALYZE")
    return time.perf_counter() - started


def timed(db: ViewDatabase, make: Any, runs: int) -> list[float]:
    out = []
    for i in range(runs):
        f = make(i)
        t = time.perf_counter()
        list_contacts(db, f, limit=50)
        out.append((time.perf_counter() - t) * 1000)
    return sorted(out)


def pct(values: list[float], p: float) -> float:
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contacts", type=int, default=1_000_000)
    parser.add_argument("--backend", default="postgres", choices=["postgres", "sqlite"])
    parser.add_argument("--runs", type=int, default=300)
    args = parser.parse_args()
    schema = f"bench_list_{uuid.uuid4().hex[:8]}"
    env = {"FICHA_DATA_DIR": tempfile.mkdtemp(prefix="ficha-list-"),
           "FICHA_ID_KEY": "00" * 32}
    if args.backend == "postgres":
        env.update(FICHA_DATABASE_URL=PG_DSN, FICHA_DATABASE_SCHEMA=schema)
    db = ViewDatabase(load_settings(env))
    ContactsProjection().create_tables(db)
    tenant = "big"
    seconds = fill(db, args.contacts, tenant)
    rnd = random.Random(3)
    langs = ["es", "en", "fr", "de", "pt", "it", "ca"]
    countries = [c for c, _ in COUNTRIES]
    since = datetime(2024, 6, 1, tzinfo=UTC)
    cases = {
        "no filter (raw baseline)": lambda i: ContactFilter(tenant=tenant),
        "language + country": lambda i: ContactFilter(
            tenant=tenant, language=rnd.choice(langs), country=rnd.choice(countries)),
        "language + email consent": lambda i: ContactFilter(
            tenant=tenant, language=rnd.choice(langs), consent="email"),
        "tag + first contact since": lambda i: ContactFilter(
            tenant=tenant, tag=rnd.choice([t for t, _ in TAGS]), first_seen_from=since),
        "country + first contact window": lambda i: ContactFilter(
            tenant=tenant, country=rnd.choice(countries), first_seen_from=since,
            first_seen_to=since + timedelta(days=90)),
    }
    print(f"\n{args.backend}: {args.contacts:,} contacts loaded in {seconds:.1f}s; "
          f"{args.runs} queries per case, 50 rows a page\n")
    print(f"{'query':34} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8}")
    for name, make in cases.items():
        timed(db, make, 20)  # warm the cache
        values = timed(db, make, args.runs)
        print(f"{name:34} {pct(values, 50):8.2f} {pct(values, 95):8.2f} {pct(values, 99):8.2f}")
    db.close()
    if args.backend == "postgres":
        import psycopg

        with psycopg.connect(PG_DSN, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
    _ = Path


if __name__ == "__main__":
    main()
