"""What a user's walkthrough of the `ficha` commands found, on both backends, through the
real command line: data and input are shown as written, mistakes get one line and the
same answer from every command."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from services.cli import app
from services.config import Settings
from tests.factories import make_event
from tests.projections.test_export import ReadModels, read_models

BRACKETED = "[/b]"


@pytest.fixture
def seeded(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[ReadModels]:
    """Tenant acme with a contact whose name and tags look like rich markup; the CLI's
    environment points at these read models."""
    with read_models(settings) as models:
        models.ingest([
            make_event("contact_updated", event_id="e1", email="ana@example.com",
                       contact={"first_name": BRACKETED, "last_name": "[red]Garcia"},
                       tags_added=["[red]hot", "vip"]),
            make_event("form_submitted", event_id="e2", email="bo@example.com",
                       form_id="[/form]", contact={"first_name": "Bo"}),
        ])
        for name, value in settings.to_env().items():
            monkeypatch.setenv(name, value)
        yield models


def ficha(*args: str) -> Any:
    return CliRunner().invoke(app, list(args))


def one_error_line(done: Any) -> str:
    """The single `error: ...` line of an expected failure (no traceback)."""
    assert done.exception is None or isinstance(done.exception, SystemExit), done.exception
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    return lines[0]


# ---------------------------------------------------------------- 1. data is not markup


def test_bracketed_data_is_shown_as_written(seeded: ReadModels) -> None:
    listed = ficha("contacts", "list", "--tenant", "acme")
    assert listed.exit_code == 0, listed.stderr
    assert BRACKETED in listed.stdout and "[red]Garcia" in listed.stdout
    assert "[red]hot" in listed.stdout

    card = ficha("contacts", "get", "--tenant", "acme", "--email", "ana@example.com")
    assert card.exit_code == 0, card.stderr
    assert BRACKETED in card.stdout
    timeline = ficha("contacts", "get", "--tenant", "acme", "--email", "bo@example.com")
    assert timeline.exit_code == 0 and "[/form]" in timeline.stdout, timeline.stderr

    tags = ficha("tags", "counts", "--tenant", "acme")
    assert tags.exit_code == 0 and "[red]hot" in tags.stdout, tags.stderr


def test_bracketed_input_in_errors_is_shown_as_written(seeded: ReadModels,
                                                       tmp_path: Path) -> None:
    done = ficha("segments", "members", "--tenant", "acme", "[/bold]")
    assert done.exit_code == 2
    assert "segment '[/bold]' does not exist" in one_error_line(done)

    rule = tmp_path / "rule.json"
    rule.write_text(json.dumps({"field": "language", "op": "equals", "value": "es"}))
    done = ficha("segments", "create", "--tenant", "acme", "[bad]", str(rule))
    assert done.exit_code == 2
    line = one_error_line(done)
    assert "'[bad]'" in line and "[a-z0-9" in line  # the id and the pattern it must match


def test_bracketed_csv_headers_are_named_as_written(seeded: ReadModels,
                                                    tmp_path: Path) -> None:
    csv_file = tmp_path / "people.csv"
    csv_file.write_text("email,Phone [mobile]\nana@example.com,+34600000000\n")
    done = ficha("import", str(csv_file), "--tenant", "acme", "--dry-run")
    assert done.exit_code == 2
    assert "'Phone [mobile]'" in done.stderr, done.stderr

    csv_file.write_text("email,Notes [/internal]\nana@example.com,hello\n")
    mapping = tmp_path / "mapping.json"
    mapping.write_text(json.dumps({"columns": {"email": "email",
                                               "Notes [/internal]": "property:notes"}}))
    done = ficha("import", str(csv_file), "--tenant", "acme", "--dry-run",
                 "--mapping", str(mapping))
    assert done.exit_code == 0, done.stderr + done.stdout
    assert "Notes [/internal] → property:notes" in done.stdout


# ------------------------------------------------- 2. tenant names, 5. and 10. unknown ones

BAD_TENANT = "error: 'Bad Tenant' is not a tenant name: 1 to 63 of a-z, 0-9, _ and -, " \
    "starting with a letter or a digit"


def test_an_invalid_tenant_name_is_refused_by_every_command_alike(seeded: ReadModels,
                                                                  tmp_path: Path) -> None:
    rule = tmp_path / "rule.json"
    rule.write_text(json.dumps({"field": "language", "op": "equals", "value": "es"}))
    people = tmp_path / "people.csv"
    people.write_text("email\nana@example.com\n")
    commands = [
        ["segments", "create", "q", str(rule)], ["tenant", "set", "engaged_days=30"],
        ["properties", "define", "size", "number"], ["keys", "create"],
        ["import", str(people), "--dry-run"], ["contacts", "list"], ["segments", "list"],
        ["engagement", "stats"], ["dlq", "purge", "--yes"], ["erase", "ana@example.com"],
        ["export", "contacts", "--out", str(tmp_path / "x.csv")], ["replay", "audience"],
    ]
    for command in commands:
        done = ficha(*command, "--tenant", "Bad Tenant")
        assert done.exit_code == 2, (command, done.stdout, done.stderr)
        assert one_error_line(done) == BAD_TENANT, command
    done = ficha("segments", "list", "--tenant", "acme", "--json")
    assert json.loads(done.stdout) == []  # nothing was defined by the refused commands


def test_read_commands_refuse_an_unknown_tenant(seeded: ReadModels, tmp_path: Path) -> None:
    commands = [
        ["segments", "list"], ["segments", "members", "x"], ["engagement", "stats"],
        ["lists", "stats"], ["rfm", "stats"], ["tags", "counts"], ["tenant", "show"],
        ["properties", "list"], ["keys", "list"], ["contacts", "list"],
        ["contacts", "get", "--email", "ana@example.com"],
        ["consent", "at", "--email", "ana@example.com"],
        ["segments", "why", "--email", "ana@example.com"],
        ["export", "contacts", "--out", str(tmp_path / "x.csv")],
        ["replay", "audience"],
    ]
    for command in commands:
        done = ficha(*command, "--tenant", "acmee")
        assert done.exit_code == 2, (command, done.stdout, done.stderr)
        assert one_error_line(done) == \
            "error: no tenant 'acmee' is known here (known: acme)", command
    assert not (tmp_path / "x.csv").exists()


def test_a_tenant_is_known_once_anything_of_it_exists(seeded: ReadModels,
                                                      tmp_path: Path) -> None:
    rule = tmp_path / "rule.json"
    rule.write_text(json.dumps({"field": "language", "op": "equals", "value": "es"}))
    creations = {
        "globex": ["segments", "create", "q", str(rule)],
        "initech": ["tenant", "set", "engaged_days=30"],
        "hooli": ["properties", "define", "size", "number"],
        "umbrella": ["keys", "create"],
    }
    for tenant, command in creations.items():
        done = ficha(*command, "--tenant", tenant)
        assert done.exit_code == 0, (command, done.stderr)
        # Known at once from the event store, before the projections catch up...
        for reading in (["segments", "list"], ["tenant", "show"], ["keys", "list"]):
            done = ficha(*reading, "--tenant", tenant)
            assert done.exit_code == 0, (tenant, reading, done.stderr)
    seeded.catch_up()
    # ... and named among the known ones when the read models have them.
    done = ficha("tags", "counts", "--tenant", "nobody")
    assert one_error_line(done) == \
        "error: no tenant 'nobody' is known here (known: acme, globex, initech)"


# ----------------------------------------------- a preview refuses what a definition would


def test_a_preview_refuses_what_create_and_edit_refuse(seeded: ReadModels,
                                                       tmp_path: Path) -> None:
    """Once, `segments preview` previewed a rule that refers to its own segment, to an
    unknown one, or that closes a cycle, all of which create and edit refuse (and the
    API's preview too): it now checks the rule against the tenant's segments as they do,
    and says the same line."""
    from services.catalog import SegmentCommands

    segments = SegmentCommands(seeded.store)
    segments.define("acme", "vips", "VIPs", {"field": "tags", "op": "has", "value": "vip"})
    segments.define("acme", "es-vip", "Spanish VIPs", {"segment": "vips"})
    seeded.catch_up()

    def rule_file(rule: dict[str, Any]) -> str:
        path = tmp_path / f"rule-{len(list(tmp_path.glob('rule-*')))}.json"
        path.write_text(json.dumps(rule))
        return str(path)

    refused = [  # (segment, rule, the definition that refuses it, what the line says)
        ("later", {"segment": "nosuch"}, "create", "segment 'nosuch' does not exist"),
        ("vips", {"segment": "vips"}, "edit", "segment vips refers to itself"),
        ("vips", {"all": [{"segment": "es-vip"}]}, "edit",
         "in a cycle: es-vip -> vips -> es-vip"),
        ("Bad-Id", {"segment": "vips"}, "create", "segment id 'Bad-Id' must be"),
    ]
    for segment_id, rule, definition, said in refused:
        previewed = ficha("segments", "preview", "--tenant", "acme", segment_id,
                          rule_file(rule), "--json")
        written = ficha("segments", definition, "--tenant", "acme", segment_id,
                        rule_file(rule))
        assert (previewed.exit_code, written.exit_code) == (2, 2), (rule, previewed.stdout)
        line = one_error_line(previewed)
        assert line == one_error_line(written) and said in line, (rule, line)
    fine = ficha("segments", "preview", "--tenant", "acme", "later",
                 rule_file({"segment": "es-vip"}), "--json")
    assert fine.exit_code == 0, fine.stderr
    assert json.loads(fine.stdout)["would_enter"] == 1  # ana, tagged vip
    # Creating what exists and editing what does not are mistakes of the asker too.
    twice = ficha("segments", "create", "--tenant", "acme", "vips",
                  rule_file({"segment": "es-vip"}))
    absent = ficha("segments", "edit", "--tenant", "acme", "nosuch",
                   rule_file({"segment": "vips"}))
    assert (twice.exit_code, absent.exit_code) == (2, 2), (twice.stderr, absent.stderr)
    assert "already exists" in one_error_line(twice)
    assert "does not exist" in one_error_line(absent)


def test_a_rule_file_that_is_not_plain_json_is_refused_in_a_line(seeded: ReadModels,
                                                                 tmp_path: Path) -> None:
    """Python's JSON parser takes NaN and Infinity, which JSON has not: a rule holding one
    was once stored (as null) and then stopped the audience model. Files that are not
    UTF-8, or nest past any parser's depth, are refused in a line too, not a traceback."""
    files = {
        "nan.json": (b'{"field": "property.x", "op": "gt", "value": NaN}',
                     "NaN is not a JSON value"),
        "inf.json": (b'{"field": "property.x", "op": "between", "value": [-Infinity, 3]}',
                     "-Infinity is not a JSON value"),
        "huge.json": (b'{"field": "property.x", "op": "equals", "value": 1e999}',
                      "must be a finite number"),
        "binary.json": (b"\xff\xfe{}", "is not UTF-8 text"),
        "deep.json": (b"[" * 3000 + b"]" * 3000, "nests too deeply to read"),
    }
    for name, (content, said) in files.items():
        path = tmp_path / name
        path.write_bytes(content)
        for command in ("create", "preview"):
            done = ficha("segments", command, "--tenant", "acme", "x", str(path))
            assert done.exit_code == 2, (name, command, done.stderr)
            assert said in one_error_line(done), (name, one_error_line(done))
    listed = ficha("segments", "list", "--tenant", "acme", "--json")
    assert json.loads(listed.stdout) == []


# ------------------------------------------------------------ 7. a data dir never started


def test_reading_before_ficha_ever_ran_says_so(settings: Settings,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in settings.to_env().items():
        monkeypatch.setenv(name, value)
    where = (f"on the data dir {settings.data_dir}" if settings.postgres is None else
             f"in the database schema {settings.postgres.schema}")
    commands = [["contacts", "list"], ["contacts", "get", "--email", "ana@example.com"],
                ["segments", "list"], ["engagement", "stats"], ["tags", "counts"],
                ["keys", "list"], ["tenant", "show"]]
    for command in commands:
        done = ficha(*command, "--tenant", "acme")
        assert done.exit_code == 1, (command, done.stderr)
        assert one_error_line(done) == (f"error: ficha has not been started {where} yet: "
                                        "start it once with `ficha up`"), command


def lose_the_read_models(models: ReadModels, settings: Settings) -> None:
    """What deleting the views database leaves: on SQLite no views file at all; on
    PostgreSQL, where the read models share the event store's schema, none of their
    tables (nor the record of their set-up)."""
    from projections.registry import all_projections

    if settings.postgres is None:
        models.db.close()
        for path in settings.data_dir.glob(settings.views_db_path.name + "*"):
            path.unlink()
        return
    with models.db.transaction() as cur:
        for table in [t for p in all_projections() for t in p.tables] + [
                "ficha_projection_versions", "ficha_projection_tracking"]:
            cur.execute(f"DROP TABLE {table} CASCADE")


def test_read_models_deleted_after_ficha_ran_are_not_a_data_dir_never_started(
        seeded: ReadModels, settings: Settings, tmp_path: Path) -> None:
    """Once, a views database deleted after ficha had run was reported as ficha never
    started here, though the event store held every event: the read models are said to
    be missing, with the commands that rebuild them (both do: `ficha up` at its start,
    tests/e2e/test_cli.py)."""
    from services.catalog import SegmentCommands

    SegmentCommands(seeded.store).define("acme", "vips", "VIPs",
                                         {"field": "tags", "op": "has", "value": "vip"})
    lose_the_read_models(seeded, settings)
    where = (f"on the data dir {settings.data_dir}" if settings.postgres is None else
             f"in the database schema {settings.postgres.schema}")
    missing = (f"the read models are missing {where}, though its event store holds "
               "events: `ficha up` builds them from the event store as it starts, as does "
               "`ficha projections rebuild`")
    for tenant, command in [("acme", ["contacts", "list"]), ("acme", ["segments", "list"]),
                            ("acme", ["tags", "counts"]), ("nobody", ["contacts", "list"]),
                            ("acme", ["export", "contacts", "--out", str(tmp_path / "x.csv")])]:
        done = ficha(*command, "--tenant", tenant)
        assert done.exit_code == 1, (command, done.stdout, done.stderr)
        line = one_error_line(done)
        assert line.endswith(missing) and "not been started" not in line, (command, line)
    done = ficha("projections", "rebuild", "--yes")
    assert done.exit_code == 0, done.stderr
    done = ficha("contacts", "list", "--tenant", "acme", "--json")
    assert done.exit_code == 0 and "ana@example.com" in done.stdout, done.stderr
    done = ficha("segments", "list", "--tenant", "acme", "--json")
    assert [s["segment_id"] for s in json.loads(done.stdout)] == ["vips"], done.stdout


def test_replaying_every_projection_at_once_changes_no_row(seeded: ReadModels) -> None:
    """Several projections replay side by side, each in a process of its own: one bar
    each, one line each, and every row as it was."""
    from projections.registry import all_projections
    from tests.projections.test_tenant_replay import dump

    seeded.catch_up()
    before = {p.name: dump(seeded.db, p) for p in all_projections()}
    position = seeded.store.max_notification_id()
    done = ficha("projections", "replay")
    assert done.exit_code == 0, done.stderr
    lines = done.stdout.splitlines()
    assert sorted(lines) == sorted(
        f"{p.name}: {position} events replayed; readers switched at position {position}"
        for p in all_projections()), lines
    assert {p.name: dump(seeded.db, p) for p in all_projections()} == before


# ------------------------------------- 8. a read model that fails after the tenant check


def test_a_read_model_failing_after_the_tenant_check_is_one_line(seeded: ReadModels,
                                                                 tmp_path: Path) -> None:
    """acme is known (its contacts are there), but the audience model's tables are gone
    (dropped by hand, or the database failing mid-command): every command that reads the
    audience model says so in one line and exits 1, as the client list's commands do.
    The statistics once printed a traceback here."""
    from services.catalog import SegmentCommands

    rule = tmp_path / "rule.json"
    rule.write_text(json.dumps({"field": "language", "op": "equals", "value": "es"}))
    SegmentCommands(seeded.store).define("acme", "es", "Spanish", json.loads(rule.read_text()))
    seeded.catch_up()
    db = seeded.db
    with db.transaction() as cur:
        for table in ("audience_counts", "audience_daily", "audience_facts", "segment_history",
                      "consent_ledger"):
            cur.execute(f"DROP TABLE {table}" + (" CASCADE" if db.is_postgres else ""))
    commands = [
        ["engagement", "stats"], ["lists", "stats"], ["rfm", "stats"], ["segments", "list"],
        ["segments", "members", "es"], ["segments", "preview", "es", str(rule)],
        ["segments", "why", "--email", "ana@example.com"],
        ["consent", "at", "--email", "ana@example.com"],
    ]
    for command in commands:
        done = ficha(*command, "--tenant", "acme")
        assert done.exit_code == 1, (command, done.stdout, done.stderr)
        assert one_error_line(done) == ("error: cannot read the audience model: "
                                        f"{LOST.format('audience')}"), command
    # The command it names brings them back.
    done = ficha("projections", "rebuild", "audience", "--yes")
    assert done.exit_code == 0, done.stderr
    for command in commands:
        done = ficha(*command, "--tenant", "acme")
        assert done.exit_code == 0, (command, done.stdout, done.stderr)


LOST = ("the {0} read model's tables are missing though ficha has run here: rebuild them "
        "from the event store with `ficha projections rebuild {0}`")


def test_a_layout_reset_cut_short_is_not_a_data_dir_never_started(
        seeded: ReadModels) -> None:
    """Once, a read model's tables missing after ficha had run (here: a layout reset that
    dropped them and stopped) was reported as ficha never started here: `ficha up`, as
    that said, would have gone on from the recorded position with empty tables."""
    db = seeded.db
    with db.transaction() as cur:  # what the reset's first step leaves
        for table in ("timeline", "contact_lists", "contact_tags", "contacts",
                      "contacts_erasures"):
            cur.execute(f"DROP TABLE {table}" + (" CASCADE" if db.is_postgres else ""))
        cur.execute("DELETE FROM ficha_projection_tracking WHERE name = 'contacts'")
    commands = [["contacts", "list"], ["contacts", "get", "--email", "ana@example.com"],
                ["tags", "counts"], ["segments", "list"]]
    for command in commands:
        done = ficha(*command, "--tenant", "acme")
        assert done.exit_code == 1, (command, done.stdout, done.stderr)
        assert one_error_line(done).endswith(LOST.format("contacts")), command
    done = ficha("projections", "rebuild", "contacts", "--yes")
    assert done.exit_code == 0, done.stderr
    # Where it got, and who applied what: a running projector may apply every page.
    assert re.fullmatch(r"rebuilt contacts to position \d+, the log's head: \d+ events applied "
                        r"by this command, any others by a running projector\n",
                        done.stdout), done.stdout
    done = ficha("contacts", "list", "--tenant", "acme", "--json")
    assert done.exit_code == 0 and "ana@example.com" in done.stdout, done.stderr


# ------------------------------------------ 3. channels, 4. --days, 6. emails: one answer


def test_an_unknown_channel_is_refused_everywhere_alike(seeded: ReadModels,
                                                        tmp_path: Path) -> None:
    commands = [
        ["consent", "at", "--email", "ana@example.com", "--channel", "fax", "--at",
         "2026-04-01"],
        ["contacts", "list", "--consent", "fax"], ["contacts", "list", "--no-consent", "fax"],
        ["export", "contacts", "--consent", "fax", "--out", str(tmp_path / "x.csv")],
    ]
    for command in commands:
        done = ficha(*command, "--tenant", "acme")
        assert done.exit_code == 2, (command, done.stdout, done.stderr)
        assert one_error_line(done) == ("error: unknown consent channel 'fax': use one of "
                                        "email, sms, whatsapp, phone"), command


def test_engagement_days_must_be_a_real_period(seeded: ReadModels) -> None:
    for days in ("-5", "0", "367"):
        done = ficha("engagement", "stats", "--tenant", "acme", "--days", days)
        assert done.exit_code == 2, (days, done.stdout)
        assert one_error_line(done) == f"error: --days must be between 1 and 366; got {days}"
    done = ficha("engagement", "stats", "--tenant", "acme", "--days", "1")
    assert done.exit_code == 0 and "1-day change" in done.stdout, done.stderr


def test_a_preview_sample_has_the_api_bound(seeded: ReadModels, tmp_path: Path) -> None:
    """Once, `segments preview --sample` took any number (the API refuses all but 0 to
    100): both now check the one bound, and the CLI says so in one line."""
    from services.limits import PREVIEW_SAMPLE_MAX

    rule = tmp_path / "rule.json"
    rule.write_text(json.dumps({"field": "tags", "op": "has", "value": "vip"}))
    for sample in ("-1", str(PREVIEW_SAMPLE_MAX + 1)):
        done = ficha("segments", "preview", "--tenant", "acme", "vips", str(rule),
                     "--sample", sample)
        assert done.exit_code == 2, (sample, done.stdout)
        assert one_error_line(done) == \
            f"error: --sample must be between 0 and {PREVIEW_SAMPLE_MAX}; got {sample}"
    done = ficha("segments", "preview", "--tenant", "acme", "vips", str(rule), "--json",
                 "--sample", str(PREVIEW_SAMPLE_MAX))
    assert done.exit_code == 0, done.stderr
    assert json.loads(done.stdout)["samples"]["entering"] == ["ana@example.com"]


def test_a_malformed_email_gets_the_same_answer_from_every_command(seeded: ReadModels,
                                                                   tmp_path: Path) -> None:
    commands = [
        ["contacts", "get", "--email", "not-an-email"],
        ["segments", "why", "--email", "not-an-email"],
        ["consent", "at", "--email", "not-an-email"],
        ["contacts", "access", "not-an-email", "--skip-dead-letters"],
        ["erase", "not-an-email", "--yes"],
    ]
    for command in commands:
        done = ficha(*command, "--tenant", "acme")
        assert done.exit_code == 2, (command, done.stdout, done.stderr)
        assert one_error_line(done) == \
            "error: 'not-an-email' is not an email address: it must contain exactly one @"
    # A well-formed address nobody has: the same sentence from the card and the audience.
    for command in (["contacts", "get"], ["segments", "why"], ["consent", "at"]):
        done = ficha(*command, "--email", "Nobody@Example.com", "--tenant", "acme")
        assert done.exit_code == 2, (command, done.stderr)
        assert one_error_line(done) == "error: no contact nobody@example.com in tenant acme"


# ------------------------------------------- 8. delete, 9. country and language filters


def test_deleting_a_segment_that_does_not_exist_asks_nothing(seeded: ReadModels) -> None:
    done = CliRunner().invoke(app, ["segments", "delete", "--tenant", "acme", "nosuch"],
                              input="y\n")
    assert done.exit_code == 2, done.stdout
    assert "Delete segment" not in done.stdout  # no question before the answer is known
    assert one_error_line(done) == "error: segment 'nosuch' does not exist in tenant acme"


def test_country_and_language_filters_want_codes(seeded: ReadModels, tmp_path: Path) -> None:
    for command in (["contacts", "list"],
                    ["export", "contacts", "--out", str(tmp_path / "x.csv")]):
        done = ficha(*command, "--tenant", "acme", "--country", "Spain")
        assert done.exit_code == 2, (command, done.stdout)
        assert one_error_line(done) == ("error: --country takes an ISO 3166-1 alpha-2 code "
                                        "(like ES, MX, US); got 'Spain'")
        done = ficha(*command, "--tenant", "acme", "--language", "Spanish")
        assert done.exit_code == 2, (command, done.stdout)
        assert one_error_line(done) == ("error: --language takes a language tag (like es, "
                                        "or es-MX); got 'Spanish'")
    for good in (["--country", "es"], ["--language", "es-MX"]):
        done = ficha("contacts", "list", "--tenant", "acme", *good)
        assert done.exit_code == 0, done.stderr


# ---------------------------------------------------- 12. erasing someone ficha never held


async def test_erasing_an_unknown_person_says_what_the_request_still_does(
        seeded: ReadModels, settings: Settings, nats_server: Any, fresh_topology: None,
        js: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from services.runtime import topology_settings
    from services.streams import ensure_topology

    await ensure_topology(js, topology_settings(settings))
    monkeypatch.setenv("FICHA_NATS_URL", nats_server.url)
    note = ("note: no contact nobody@example.com is known in tenant acme yet. The request "
            "is recorded all the same: events about this person stamped before it that "
            "arrive later are refused (docs/privacy.md)")
    done = await asyncio.to_thread(ficha, "erase", "Nobody@Example.com", "--tenant", "acme",
                                   "--yes")
    assert done.exit_code == 0, done.stderr
    assert " ".join(done.stderr.split()) == note
    assert "erasure requested: event erase-" in done.stdout
    done = await asyncio.to_thread(ficha, "erase", "ana@example.com", "--tenant", "acme",
                                   "--yes")
    assert done.exit_code == 0 and done.stderr == "", done.stderr


# ----------------------------------------------------------------------- 13. cosmetics


def test_counts_and_causes_read_as_sentences(seeded: ReadModels) -> None:
    from datetime import UTC, datetime, timedelta

    from services.catalog import ClockCommands, SegmentCommands

    segments = SegmentCommands(seeded.store)
    segments.define("acme", "vip", "VIPs", {"field": "tags", "op": "has", "value": "vip"})
    segments.define("acme", "quiet", "Gone quiet",
                    {"field": "engagement", "op": "equals", "value": "inactive"})
    seeded.catch_up()
    ClockCommands(seeded.store).tick(datetime.now(UTC) + timedelta(days=800))
    seeded.catch_up()

    done = ficha("segments", "members", "--tenant", "acme", "vip")
    assert done.exit_code == 0, done.stderr
    assert "vip (acme): 1 member" in done.stdout and "1 members" not in done.stdout
    done = ficha("contacts", "list", "--tenant", "acme", "--count", "--tag", "vip")
    assert "(1 match)" in done.stdout, done.stdout

    done = ficha("segments", "why", "--tenant", "acme", "--email", "ana@example.com",
                 "quiet")
    assert done.exit_code == 0, done.stderr
    entered = [line for line in done.stdout.splitlines() if "entered" in line]
    assert entered and all(line.split(" by ")[1].startswith("clock") for line in entered)
    assert "clock clock" not in done.stdout
    done = ficha("segments", "members", "--tenant", "acme", "quiet")
    assert "clock clock" not in done.stdout and ": 2 members" in done.stdout


def test_the_import_bar_ends_full(seeded: ReadModels, tmp_path: Path) -> None:
    people = tmp_path / "people.csv"
    rows = [f'p{n}@example.com,"line one\nline two"' if n == 0 else f"p{n}@example.com,x"
            for n in range(9)]
    people.write_text("email,property:note\n" + "\n".join(rows) + "\n")
    done = ficha("import", str(people), "--tenant", "acme", "--dry-run")
    assert done.exit_code == 0, done.stderr
    assert "9/9" in done.stderr and "9/10" not in done.stderr, done.stderr


# ------------------------------------------------------------------------ 14. --help


def test_every_option_and_argument_says_what_it_is() -> None:
    """Once, --verbose of `api`, `ingest` and `scheduler` had no help at all."""
    import typer

    def commands(command: Any, path: str) -> Iterator[tuple[str, Any]]:
        if hasattr(command, "list_commands"):
            for name in command.list_commands(None):
                yield from commands(command.get_command(None, name), f"{path} {name}")
        else:
            yield path, command

    silent = [f"{path} {param.name}" for path, command in commands(
                  typer.main.get_command(app), "ficha")
              for param in command.params if param.name != "help" and not param.help]
    assert silent == []


def test_the_client_list_and_its_export_take_the_same_filter_names(
        seeded: ReadModels, tmp_path: Path) -> None:
    """The README says `export contacts` has the client list's filters, naming them
    --first-seen-from and --first-seen-to: `contacts list` once knew only --since and
    --until. Both take both names now (one definition of each filter)."""
    for names in (("--since", "--until"), ("--first-seen-from", "--first-seen-to")):
        window = [names[0], "2000-01-01", names[1], "2100-01-01"]
        done = ficha("contacts", "list", "--tenant", "acme", "--json", *window)
        assert done.exit_code == 0, done.stderr
        assert len(json.loads(done.stdout)["contacts"]) == 2
        done = ficha("export", "contacts", "--tenant", "acme", "--json", *window,
                     "--out", str(tmp_path / "x.csv"))
        assert done.exit_code == 0 and json.loads(done.stdout)["rows"] == 2, done.stderr


def test_page_sizes_are_bounded_in_one_line(seeded: ReadModels, tmp_path: Path) -> None:
    """Once, `segments members --limit 0` printed a traceback (and --limit -1 listed
    every member on SQLite), and `dlq list --limit 0` showed every dead letter."""
    from services.catalog import SegmentCommands
    from services.limits import PAGE_LIMIT_MAX

    SegmentCommands(seeded.store).define("acme", "vips", "VIPs",
                                         {"field": "tags", "op": "has", "value": "vip"})
    seeded.catch_up()
    for limit in ("0", "-1", str(PAGE_LIMIT_MAX + 1)):
        done = ficha("segments", "members", "--tenant", "acme", "vips", "--limit", limit)
        assert done.exit_code == 2, (limit, done.stdout)
        assert one_error_line(done) == \
            f"error: --limit must be between 1 and {PAGE_LIMIT_MAX}; got {limit}"
    done = ficha("segments", "members", "--tenant", "acme", "vips", "--limit", "1", "--json")
    assert done.exit_code == 0 and json.loads(done.stdout)["total"] == 1, done.stderr
    for limit in ("0", "-3"):
        done = ficha("dlq", "list", "--limit", limit)
        assert done.exit_code == 2, (limit, done.stdout)
        assert one_error_line(done) == f"error: --limit must be at least 1; got {limit}"
