"""`ficha segments|engagement|lists|consent`: define segments, read the audience model."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from services.cli_common import (
    MOMENT,
    AsOfOption,
    ContactEmailOption,
    consent_channel,
    console,
    counted,
    event_store,
    fail,
    parse_date,
    read_views,
    require_known_tenant,
    tenant_option,
)
from services.limits import PAGE_LIMIT_MAX, PREVIEW_SAMPLE_MAX, SERIES_DAYS_MAX

if TYPE_CHECKING:
    from services.domain.rules import Node

segments_app = typer.Typer(help="Define segments and read their members.", no_args_is_help=True)
engagement_app = typer.Typer(help="Engagement statistics.", no_args_is_help=True)
lists_app = typer.Typer(help="Email list statistics.", no_args_is_help=True)
consent_app = typer.Typer(help="The consent ledger.", no_args_is_help=True)

Tenant = Annotated[str, tenant_option()]
AsJson = Annotated[bool, typer.Option("--json", help="JSON for scripts.")]


def _read_rule(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        fail(f"cannot read {path}: {error.strerror or error}", 2)
    except UnicodeDecodeError as error:
        fail(f"{path} is not UTF-8 text (byte {error.start} cannot be read): a rule file "
             "is JSON in UTF-8", 2)
    try:
        # NaN and Infinity are not JSON, though Python's parser takes them by default.
        data = json.loads(text, parse_constant=_not_json)
    except json.JSONDecodeError as error:
        fail(f"{path} is not JSON: {error.msg} at line {error.lineno}, column {error.colno}", 2)
    except ValueError as error:
        fail(f"{path} is not JSON: {error}", 2)
    except RecursionError:
        from services.domain.rules import MAX_DEPTH

        fail(f"{path} nests too deeply to read (rules may nest at most {MAX_DEPTH} levels)", 2)
    # A file may hold the rule alone, or {"name": ..., "rule": ...}.
    if isinstance(data, dict) and "rule" in data and set(data) <= {"name", "rule"}:
        return data
    return {"rule": data}


def _not_json(constant: str) -> Any:
    raise ValueError(f"{constant} is not a JSON value; write a number")


AUDIENCE = "the audience model"  # what a read of it could not read, if it fails


def _cause(cause: str, ref: str) -> str:
    """What moved a membership: ``event web-7f3a``, ``definition es@v2``, ``clock`` (a
    clock tick's reference is the word clock again: said once)."""
    return cause if ref in ("", cause) else f"{cause} {ref}"


def _dump(value: Any) -> None:
    print(json.dumps(value, default=str))


@contextmanager
def _definition_errors() -> Iterator[None]:
    """A definition refused (a bad rule, id or name, or a conflict with the tenant's
    segments), as every `segments` command says it: one line, exit 2."""
    from services.domain.rules import RuleError
    from services.domain.segments import SegmentError

    try:
        yield
    except RuleError as error:
        fail(f"the rule is not valid: {error}", 2)
    except SegmentError as error:
        fail(str(error), 2)


def _checked_rule(tenant: str, segment_id: str, rule: Any) -> Node:
    """The rule parsed, if `segments create|edit` would take it for ``segment_id``
    (``SegmentCommands.check``, as the API's preview checks it); else its refusal."""
    from services.catalog import SegmentCommands

    store = event_store()
    try:
        with _definition_errors():
            return SegmentCommands(store).check(tenant, segment_id, rule)
    finally:
        store.close()


def _define(tenant: str, segment_id: str, rule_file: Path, name: str | None,
            must_exist: bool) -> None:
    from services.catalog import SegmentCommands

    spec = _read_rule(rule_file)
    store = event_store()
    commands = SegmentCommands(store)
    try:
        catalog = commands.catalog(tenant)
        existing = None if catalog is None else catalog.live().get(segment_id)
        if must_exist and existing is None:
            fail(f"segment {segment_id!r} does not exist in tenant {tenant}; "
                 "use `ficha segments create`", 2)
        if not must_exist and existing is not None:
            fail(f"segment {segment_id!r} already exists in tenant {tenant} "
                 f"(version {existing.version}); use `ficha segments edit`", 2)
        title = name or spec.get("name") or (existing.name if existing else segment_id)
        with _definition_errors():
            definition = commands.define(tenant, segment_id, title, spec["rule"])
    finally:
        store.close()
    console.print(f"segment {definition.segment_id} is at version {definition.version}; "
                  "its membership is computed as the projection reaches this change")


@segments_app.command("create")
def segments_create(
    tenant: Tenant,
    segment_id: Annotated[str, typer.Argument(help="Id: a-z, 0-9, _ and -.")],
    rule_file: Annotated[Path, typer.Argument(help="JSON file: the rule, or {name, rule}.")],
    name: Annotated[str | None, typer.Option(help="Display name.")] = None,
) -> None:
    """Create a segment from a JSON rule (see docs/segments.md)."""
    _define(tenant, segment_id, rule_file, name, must_exist=False)


@segments_app.command("edit")
def segments_edit(
    tenant: Tenant,
    segment_id: Annotated[str, typer.Argument(help="The segment to change.")],
    rule_file: Annotated[Path, typer.Argument(help="JSON file: the rule, or {name, rule}.")],
    name: Annotated[str | None, typer.Option(help="New display name.")] = None,
) -> None:
    """Give a segment a new rule (a new version). Preview it first."""
    _define(tenant, segment_id, rule_file, name, must_exist=True)


@segments_app.command("delete")
def segments_delete(
    tenant: Tenant,
    segment_id: Annotated[str, typer.Argument(help="The segment to delete.")],
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")] = False,
) -> None:
    """Delete a segment: every member exits (its history stays)."""
    from services.catalog import SegmentCommands

    store = event_store()
    commands = SegmentCommands(store)
    try:
        catalog = commands.catalog(tenant)
        if catalog is None or segment_id not in catalog.live():
            fail(f"segment {segment_id!r} does not exist in tenant {tenant}", 2)
        if not yes and not typer.confirm(f"Delete segment {segment_id} of {tenant}?"):
            raise typer.Exit(1)
        with _definition_errors():
            definition = commands.delete(tenant, segment_id)
    finally:
        store.close()
    console.print(f"segment {segment_id} deleted (version {definition.version})")


@segments_app.command("preview")
def segments_preview(
    tenant: Tenant,
    segment_id: Annotated[str, typer.Argument(help="The segment the rule would replace.")],
    rule_file: Annotated[Path, typer.Argument(help="JSON file: the rule, or {name, rule}.")],
    sample: Annotated[int, typer.Option(
        help=f"Contacts listed per group (0-{PREVIEW_SAMPLE_MAX}).")] = 5,
    as_json: AsJson = False,
) -> None:
    """How many contacts a rule would make enter, leave and stay, with samples: a rule
    that `segments create|edit` would refuse for this segment is refused alike."""
    from projections.audience_queries import Preview, preview

    if not 0 <= sample <= PREVIEW_SAMPLE_MAX:
        fail(f"--sample must be between 0 and {PREVIEW_SAMPLE_MAX}; got {sample}", 2)
    spec = _read_rule(rule_file)

    def checked_preview(db: Any) -> Preview:
        rule = _checked_rule(tenant, segment_id, spec["rule"])  # once the tenant is known
        return preview(db, tenant, segment_id, rule, datetime.now(UTC), sample)

    result = read_views(tenant, checked_preview, AUDIENCE)
    data = result.to_dict()
    if as_json:
        _dump(data)
        return
    table = Table(title=f"preview of {segment_id} ({tenant})")
    for column in ("", "contacts", "sample"):
        table.add_column(column, overflow="fold")
    for key, label in (("entering", "would enter"), ("leaving", "would leave"),
                       ("staying", "would stay")):
        table.add_row(label, str(getattr(result, key)), ", ".join(result.samples[key]))
    console.print(table)


@segments_app.command("list")
def segments_list(tenant: Tenant, as_json: AsJson = False) -> None:
    """The tenant's segments with their member counts."""
    from projections.audience_queries import list_segments

    rows = read_views(tenant, lambda db: list_segments(db, tenant), AUDIENCE)
    if as_json:
        _dump(rows)
        return
    table = Table(title=f"segments of {tenant}")
    for column in ("segment", "name", "version", "members", "changed"):
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(row["segment_id"], row["name"], str(row["version"]), str(row["members"]),
                      row["changed_at"][:19].replace("T", " "))
    console.print(table)


@segments_app.command("members")
def segments_members(
    tenant: Tenant,
    segment_id: Annotated[str, typer.Argument(help="The segment.")],
    as_of: AsOfOption = None,
    limit: Annotated[int, typer.Option(help=f"Rows per page (1-{PAGE_LIMIT_MAX}).")] = 100,
    after: Annotated[str, typer.Option(help="Page after this contact id.")] = "",
    as_json: AsJson = False,
) -> None:
    """Members of a segment, now or at a past time."""
    from projections.audience_queries import NotFound, count_members, segment_members

    if not 1 <= limit <= PAGE_LIMIT_MAX:
        fail(f"--limit must be between 1 and {PAGE_LIMIT_MAX}; got {limit}", 2)
    moment = parse_date(as_of, "--as-of")
    rows, total = read_views(tenant, lambda db: (
        segment_members(db, tenant, segment_id, as_of=moment, limit=limit, after=after),
        count_members(db, tenant, segment_id, moment)), AUDIENCE, refused=(NotFound,))
    if as_json:
        _dump({"total": total, "members": rows,
               "next_after": rows[-1]["contact_id"] if len(rows) == limit else None})
        return
    when = f" at {as_of}" if as_of else ""
    table = Table(title=f"{segment_id} ({tenant}){when}: {counted(total, 'member')}")
    for column in ("email", "entered", "why", "exited"):
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(row["email"], row["entered_at"][:19].replace("T", " "),
                      _cause(row["enter_cause"], row["enter_ref"]),
                      (row["exited_at"] or "")[:19].replace("T", " "))
    console.print(table)
    if len(rows) == limit:
        console.print(f"next page: --after {rows[-1]['contact_id']}")


@segments_app.command("why")
def segments_why(
    tenant: Tenant,
    email: ContactEmailOption,
    segment_id: Annotated[str | None, typer.Argument(help="One segment (default: all).")] = None,
    as_json: AsJson = False,
) -> None:
    """Why a contact is or is not in segments: clause by clause, and its history."""
    from projections.audience_queries import NotFound, explain

    report = read_views(tenant, lambda db: explain(db, tenant, email, segment_id), AUDIENCE,
                        refused=(NotFound,))
    if as_json:
        _dump(report)
        return
    console.print(f"{report['email']} ({tenant}), as of {report['as_of']}, "
                  f"engagement: {report['engagement']}")
    for seg in report["segments"]:
        state = ("member", "green") if seg["member"] else ("not a member", "dim")
        console.print(Text.assemble("\n", (seg["segment_id"], "bold"), f" v{seg['version']}: ",
                                    state))
        for clause in seg["clauses"]:
            mark = ("✓", "green") if clause["holds"] else ("✗", "red")
            console.print(Text.assemble("  ", mark, f" {clause['path']}: {clause['clause']}"))
        for h in seg["history"]:
            flipped = ", ".join(c["clause"] for c in h["enter_clauses"])
            console.print(f"  entered {h['entered_at']} by "
                          f"{_cause(h['enter_cause'], h['enter_ref'])}"
                          + (f" ({flipped})" if flipped else ""))
            if h["exited_at"]:
                flipped = ", ".join(c["clause"] for c in h["exit_clauses"] or [])
                console.print(f"  exited  {h['exited_at']} by "
                              f"{_cause(h['exit_cause'], h['exit_ref'])}"
                              + (f" ({flipped})" if flipped else ""))


@engagement_app.command("stats")
def engagement_stats_command(
    tenant: Tenant,
    days: Annotated[int, typer.Option(
        help=f"Days of the daily series and of the change (1-{SERIES_DAYS_MAX}).")] = 30,
    as_json: AsJson = False,
) -> None:
    """Engaged / not engaged / inactive: counts, percentages, change, by subscription."""
    from projections.audience_queries import engagement_stats

    if not 1 <= days <= SERIES_DAYS_MAX:
        fail(f"--days must be between 1 and {SERIES_DAYS_MAX}; got {days}", 2)
    stats = read_views(tenant, lambda db: engagement_stats(db, tenant, days), AUDIENCE)
    if as_json:
        _dump(stats)
        return
    table = Table(title=f"engagement of {tenant} ({stats['total']} contacts, "
                        f"as of {(stats['as_of'] or '')[:19]})")
    for column in ("status", "contacts", "%", f"{days}-day change", "subscribed",
                   "not subscribed"):
        table.add_column(column, justify="right")
    for status, values in stats["statuses"].items():
        change = values["change"]
        table.add_row(status, str(values["count"]), f"{values['percent']:.1f}",
                      f"{change:+d}", str(stats["by_subscription"]["subscribed"][status]),
                      str(stats["by_subscription"]["not_subscribed"][status]))
    console.print(table)


@lists_app.command("stats")
def lists_stats_command(tenant: Tenant, as_json: AsJson = False) -> None:
    """Contacts per list and state."""
    from projections.audience_queries import list_stats

    stats = read_views(tenant, lambda db: list_stats(db, tenant), AUDIENCE)
    if as_json:
        _dump(stats)
        return
    states = ("pending", "subscribed", "unsubscribed", "suppressed")
    table = Table(title=f"lists of {tenant}")
    table.add_column("list")
    for state in states:
        table.add_column(state, justify="right")
    for list_id, counts in sorted(stats["lists"].items()):
        table.add_row(list_id, *(str(counts.get(s, 0)) for s in states))
    console.print(table)


@consent_app.command("at")
def consent_at_command(
    tenant: Tenant,
    email: ContactEmailOption,
    channel: Annotated[str, typer.Option(help="email, sms, whatsapp or phone.",
                                         callback=consent_channel)] = "email",
    at: Annotated[str | None, typer.Option(help=f"The moment ({MOMENT}; default: now).")] = None,
    as_json: AsJson = False,
) -> None:
    """Did the contact consent on a channel at a moment? With the deciding ledger entry."""
    from projections.audience_queries import NotFound, consent_at

    moment = parse_date(at, "--at") or datetime.now(UTC)
    answer = read_views(tenant, lambda db: consent_at(db, tenant, email, channel, moment),
                        AUDIENCE, refused=(NotFound,))
    if as_json:
        _dump(answer)
        return
    verdict = ("yes", "green") if answer["consented"] else ("no", "red")
    decided = answer["decided_by"]
    because = (f" (event {decided['event_id']} from {decided['source']}, "
               f"{decided['occurred_at']})" if decided else " (no consent fact before then)")
    console.print(Text.assemble(f"{answer['email']} consent to {channel} at {answer['at']}: ",
                                verdict, because))


rfm_app = typer.Typer(help="RFM groups and scores.", no_args_is_help=True)


@rfm_app.command("stats")
def rfm_stats_command(tenant: Tenant, as_json: AsJson = False) -> None:
    """Contacts per RFM group and the recency x frequency grid."""
    from projections.audience_queries import rfm_stats

    stats = read_views(tenant, lambda db: rfm_stats(db, tenant), AUDIENCE)
    if as_json:
        _dump(stats)
        return
    groups = Table(title=f"RFM groups of {tenant}")
    groups.add_column("group")
    groups.add_column("contacts", justify="right")
    for group, count in stats["groups"].items():
        groups.add_row(group.replace("_", " "), str(count))
    console.print(groups)
    grid = Table(title="recency (rows, 5 = most recent) x frequency (columns)")
    grid.add_column("R \\ F")
    for f in range(1, 6):
        grid.add_column(str(f), justify="right")
    for r in range(5, 0, -1):
        grid.add_row(str(r), *(str(n) for n in stats["grid_recency_by_frequency"][r - 1]))
    console.print(grid)


tenant_app = typer.Typer(help="A tenant's settings.", no_args_is_help=True)
properties_app = typer.Typer(help="A tenant's custom property definitions.",
                             no_args_is_help=True)


def _tenant_commands() -> Any:
    from services.catalog import TenantCommands

    return TenantCommands(event_store())


@tenant_app.command("show")
def tenant_show(tenant: Tenant, as_json: AsJson = False) -> None:
    """Settings (engagement windows, RFM, bounce limit, types, lead statuses), properties."""
    require_known_tenant(tenant)
    settings = _tenant_commands().settings(tenant)
    data = {"tenant": tenant, "settings": settings.values, "properties": [
        {"name": p.name, "type": p.type, "options": list(p.options), "label": p.label}
        for p in sorted(settings.properties.values(), key=lambda p: p.name)]}
    if as_json:
        _dump(data)
        return
    table = Table(title=f"settings of {tenant}")
    table.add_column("setting")
    table.add_column("value")
    for key, value in data["settings"].items():
        table.add_row(key, ", ".join(value) if isinstance(value, list) else str(value))
    console.print(table)


@tenant_app.command("set")
def tenant_set(
    tenant: Tenant,
    assignments: Annotated[list[str], typer.Argument(
        help="name=value, e.g. engaged_days=60 rfm_currency=USD contact_types=client,partner")],
) -> None:
    """Change settings. Segments, engagement and RFM are recomputed with them."""
    from services.domain.tenant import DEFAULTS, TenantError

    values: dict[str, Any] = {}
    for assignment in assignments:
        name, sep, raw = assignment.partition("=")
        if not sep or name not in DEFAULTS:
            fail(f"expected name=value with name one of {', '.join(DEFAULTS)}; "
                 f"got {assignment!r}", 2)
        default = DEFAULTS[name]
        if isinstance(default, list):
            values[name] = [v.strip() for v in raw.split(",") if v.strip()]
        elif isinstance(default, int):
            try:
                values[name] = int(raw)
            except ValueError:
                fail(f"{name} must be a whole number; got {raw!r}", 2)
        else:
            values[name] = raw
    try:
        result = _tenant_commands().change(tenant, **values)
    except TenantError as error:
        fail(str(error), 2)
    console.print(f"settings of {tenant}: " + ", ".join(f"{k}={v}" for k, v in result.items()))


@properties_app.command("define")
def properties_define(
    tenant: Tenant,
    name: Annotated[str, typer.Argument(help="The property's name.")],
    type_: Annotated[str, typer.Argument(metavar="TYPE",
                                         help="text, number, date, boolean or choice.")],
    option: Annotated[list[str] | None, typer.Option(help="A choice's option (repeat).")] = None,
    label: Annotated[str, typer.Option(help="Display label.")] = "",
) -> None:
    """Define (or redefine) a custom property; values of another type are dead-lettered."""
    from services.domain.tenant import TenantError

    try:
        definition = _tenant_commands().define_property(tenant, name, type_, option, label)
    except TenantError as error:
        fail(str(error), 2)
    options = f" ({', '.join(definition.options)})" if definition.options else ""
    console.print(f"property {definition.name} of {tenant}: {definition.type}{options}")


@properties_app.command("list")
def properties_list(tenant: Tenant, as_json: AsJson = False) -> None:
    """The tenant's property definitions."""
    require_known_tenant(tenant)
    settings = _tenant_commands().settings(tenant)
    rows = [{"name": p.name, "type": p.type, "options": list(p.options), "label": p.label}
            for p in sorted(settings.properties.values(), key=lambda p: p.name)]
    if as_json:
        _dump(rows)
        return
    table = Table(title=f"properties of {tenant}")
    for column in ("name", "type", "options", "label"):
        table.add_column(column)
    for row in rows:
        table.add_row(row["name"], row["type"], ", ".join(row["options"]), row["label"])
    console.print(table)


@properties_app.command("remove")
def properties_remove(
    tenant: Tenant, name: Annotated[str, typer.Argument(help="The property's name.")],
) -> None:
    """Remove a definition: values of any type are accepted again."""
    from services.domain.tenant import TenantError

    try:
        _tenant_commands().remove_property(tenant, name)
    except TenantError as error:
        fail(str(error), 2)
    console.print(f"property {name} of {tenant} is no longer defined")


tags_app = typer.Typer(help="Tags and how many contacts have each.", no_args_is_help=True)


@tags_app.command("counts")
def tags_counts(tenant: Tenant, as_json: AsJson = False) -> None:
    """Every tag of the tenant with its number of contacts, most used first."""
    from projections.queries import tag_counts

    rows = read_views(tenant, lambda db: tag_counts(db, tenant), "the client list")
    if as_json:
        _dump(rows)
        return
    table = Table(title=f"tags of {tenant}")
    table.add_column("tag")
    table.add_column("contacts", justify="right")
    for row in rows:
        table.add_row(row["label"], str(row["contacts"]))
    console.print(table)
