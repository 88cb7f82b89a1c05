"""The views analysts query: one definition of each view's name, columns, types, meaning
and SQL on both backends. The views are created from it (``sql_views``), the docs'
reference is generated from it (``reference_markdown``), and the tests check both.

Every view is named ``analytics_<what>`` and lives next to the read-model tables (the
``ficha`` schema on PostgreSQL, ``views.sqlite`` on SQLite): SQLite cannot put views in
another database than the tables they read, so a prefix rather than a schema keeps the
names the same on both backends. Each view reads the tables of one projection only, so
that a projection that is reset or replayed recreates its own views.

No I/O here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

PREFIX = "analytics_"


@dataclass(frozen=True)
class SqlType:
    """A column type as analysts see it, and what it is on each backend."""

    name: str
    postgres: str  # as information_schema.columns.data_type reports it
    postgres_cast: str
    sqlite: str  # SQLite's storage class (typeof) of a non-null value
    sqlite_form: str  # how the value is written on SQLite


TEXT = SqlType("text", "text", "text", "text", "text")
INTEGER = SqlType("integer", "bigint", "bigint", "integer", "integer")
BOOLEAN = SqlType("boolean", "boolean", "boolean", "integer", "integer, 1 true, 0 false")
TIMESTAMP = SqlType("timestamp", "timestamp with time zone", "timestamptz", "text",
                    "text, UTC ISO 8601 with microseconds: `2026-11-02T09:15:00.000000Z`")
DATE = SqlType("date", "date", "date", "text", "text, `2026-11-02` (a UTC day)")
JSON = SqlType("json", "jsonb", "jsonb", "text", "text holding JSON")
DECIMAL = SqlType("decimal", "numeric", "numeric", "text", "text, an exact decimal: `120.50`")
TYPES = (TEXT, INTEGER, BOOLEAN, TIMESTAMP, DATE, JSON, DECIMAL)


@dataclass(frozen=True)
class Column:
    name: str
    type: SqlType
    meaning: str


class Dialect:
    """The few expressions that differ between PostgreSQL and SQLite."""

    def __init__(self, is_postgres: bool) -> None:
        self.is_postgres = is_postgres

    def cast(self, expr: str, kind: SqlType) -> str:
        """``expr`` as ``kind``: stored values are already in SQLite's form."""
        return f"CAST({expr} AS {kind.postgres_cast})" if self.is_postgres else expr

    def flag(self, expr: str) -> str:
        """An integer 0/1 column as a boolean."""
        return f"({expr} <> 0)" if self.is_postgres else expr

    def field(self, doc: str, key: str) -> str:
        """A top-level member of a JSON object stored as text, as a scalar."""
        if self.is_postgres:
            return f"(CAST({doc} AS jsonb) ->> '{key}')"
        return f"json_extract({doc}, '$.{key}')"

    def each(self, doc: str, alias: str) -> str:
        """A join over the members of a JSON object: ``alias.key`` and ``alias.value``."""
        if self.is_postgres:
            return f"CROSS JOIN LATERAL jsonb_each(CAST({doc} AS jsonb)) AS {alias}"
        return f"CROSS JOIN json_each({doc}) AS {alias}"

    def item(self, value: str, index: int) -> str:
        """The element ``index`` of a JSON array, as text."""
        if self.is_postgres:
            return f"({value} ->> {index})"
        return f"json_extract({value}, '$[{index}]')"

    def codepoints(self, expr: str) -> str:
        """Text ordered by code point, whatever the database's collation."""
        return f'{expr} COLLATE "C"' if self.is_postgres else f"{expr} COLLATE BINARY"

    def part(self, expr: str, index: int) -> str:
        """The first (1) or second (2) part of text of the form ``a:b``."""
        if self.is_postgres:
            return f"split_part({expr}, ':', {index})"
        if index == 1:
            return f"substr({expr}, 1, instr({expr}, ':') - 1)"
        return f"substr({expr}, instr({expr}, ':') + 1)"


@dataclass(frozen=True)
class View:
    name: str
    projection: str  # the projection whose tables it reads
    description: str
    columns: tuple[Column, ...]
    select: Callable[[Dialect], str]

    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]

    def create_statement(self, is_postgres: bool) -> str:
        names = ", ".join(self.column_names())
        return f"CREATE VIEW {self.name} ({names}) AS {self.select(Dialect(is_postgres))}"


# ------------------------------------------------------------------------------ columns

def _c(name: str, kind: SqlType, meaning: str) -> Column:
    return Column(name, kind, meaning)


TENANT = _c("tenant", TEXT, "The tenant (the CRM account) the row belongs to.")
CONTACT_ID = _c("contact_id", TEXT,
                "The contact's stable id (a keyed hash of tenant and email); joins every view.")
EMAIL = _c("email", TEXT, "The contact's email address, normalised (trimmed, lower case).")

_CONSENT = tuple(
    _c(f"consent_{channel}", BOOLEAN,
       f"Consent to contact by {label}: true, false, or null if never stated.")
    for channel, label in (("email", "email"), ("sms", "SMS"), ("whatsapp", "WhatsApp"),
                           ("phone", "phone"))
)
_COUNTS = (
    _c("forms_count", INTEGER, "Forms submitted."),
    _c("surveys_count", INTEGER, "Surveys completed."),
    _c("bookings_count", INTEGER, "Bookings made."),
    _c("purchases_count", INTEGER, "Purchases completed."),
    _c("events_count", INTEGER, "Every event recorded for the contact."),
)
_SPAN = (
    _c("valid_from", DATE, "The UTC day whose end-of-day counts this row holds."),
    _c("valid_until", DATE,
       "The next day with a snapshot of the same tally (the counts hold on every day from "
       "valid_from up to, not including, this day); null: still the current counts."),
)
_CONTACTS_COUNT = _c("contacts", INTEGER, "How many contacts.")
_STATUS = _c("status", TEXT, "Engagement status: engaged, not_engaged or inactive.")
_LIST_STATE = _c("state", TEXT, "List state: pending, subscribed, unsubscribed or suppressed.")


# ------------------------------------------------------------------------------ SQL

def _contacts(d: Dialect) -> str:
    counts = ", ".join(d.cast(c.name, INTEGER) for c in _COUNTS)
    consent = ", ".join(c.name for c in _CONSENT)
    return (
        "SELECT tenant, contact_id, email, first_name, last_name, phone, language, "
        "language_base, country, city, postal_code, contact_type, lead_status, member_id, "
        f"member_status, {consent}, {d.cast('properties', JSON)}, {d.cast('tags', JSON)}, "
        f"{d.cast('first_seen_at', TIMESTAMP)}, {d.cast('last_activity_at', TIMESTAMP)}, "
        f"{counts} FROM contacts"
    )


def _contact_properties(d: Dialect) -> str:
    if d.is_postgres:
        return ("SELECT c.tenant, c.contact_id, p.key, p.value, jsonb_typeof(p.value), "
                "p.value #>> '{}' FROM contacts c CROSS JOIN LATERAL jsonb_each(c.properties) "
                "AS p")
    # ``->`` gives an element's JSON text as written (json_each's values are SQL values:
    # a number would come back as a double, rounded to 15 digits when printed).
    return (
        "SELECT c.tenant, c.contact_id, p.key, c.properties -> p.fullkey, "
        "CASE p.type WHEN 'integer' THEN 'number' WHEN 'real' THEN 'number' "
        "WHEN 'text' THEN 'string' WHEN 'true' THEN 'boolean' WHEN 'false' THEN 'boolean' "
        "ELSE p.type END, "
        "CASE p.type WHEN 'text' THEN p.value WHEN 'null' THEN NULL "
        "ELSE c.properties -> p.fullkey END "
        "FROM contacts c CROSS JOIN json_each(c.properties) AS p"
    )


def _timeline(d: Dialect) -> str:
    return (f"SELECT tenant, contact_id, {d.cast('occurred_at', TIMESTAMP)}, event_id, type, "
            f"kind, source, summary, {d.cast('data', JSON)} FROM timeline")


def tag_spellings(d: Dialect, one_tenant: bool = False) -> str:
    """The rule of a tag's label, in one statement for the view analytics_tags and the
    API's /tags (``projections.queries.tag_counts``): each spelling of each tag, with
    ``tag_contacts``, how many contacts carry the tag in any spelling, and ``choice``, 1
    for the tag's label: the spelling most of the tenant's contacts carry, a tie going to
    the first in code-point order (capitals first), on both backends whatever their
    collation. ``one_tenant``: only the tenant given as the statement's parameter."""
    where = "WHERE tenant = ? " if one_tenant else ""
    return (
        "SELECT tenant, tag, label, "
        "SUM(COUNT(*)) OVER (PARTITION BY tenant, tag) AS tag_contacts, "
        "ROW_NUMBER() OVER (PARTITION BY tenant, tag "
        f"ORDER BY COUNT(*) DESC, {d.codepoints('label')}) AS choice "
        f"FROM contact_tags {where}GROUP BY tenant, tag, label"
    )


def _tags(d: Dialect) -> str:
    return (
        "SELECT t.tenant, t.contact_id, t.tag, s.label, t.label FROM contact_tags t "
        f"JOIN ({tag_spellings(d)}) s "
        "ON s.tenant = t.tenant AND s.tag = t.tag AND s.choice = 1"
    )


def _segments(d: Dialect) -> str:
    return (f"SELECT tenant, segment_id, name, {d.cast('version', INTEGER)}, "
            f"{d.flag('deleted')}, {d.cast('rule', JSON)}, {d.cast('created_at', TIMESTAMP)}, "
            f"{d.cast('changed_at', TIMESTAMP)} FROM segment_definitions")


def _segment_members(d: Dialect) -> str:
    return (f"SELECT h.tenant, h.segment_id, h.contact_id, f.email, "
            f"{d.cast('h.entry_no', INTEGER)}, {d.cast('h.entered_at', TIMESTAMP)}, "
            "h.enter_cause, h.enter_ref FROM segment_history h "
            "JOIN audience_facts f ON f.contact_id = h.contact_id WHERE h.exited_at IS NULL")


def _segment_history(d: Dialect) -> str:
    return (
        f"SELECT tenant, segment_id, contact_id, {d.cast('entry_no', INTEGER)}, "
        f"{d.cast('entered_at', TIMESTAMP)}, {d.cast('entered_version', INTEGER)}, "
        f"enter_cause, enter_ref, {d.cast('enter_clauses', JSON)}, "
        f"{d.cast('exited_at', TIMESTAMP)}, {d.cast('exited_version', INTEGER)}, exit_cause, "
        f"exit_ref, {d.cast('exit_clauses', JSON)} FROM segment_history"
    )


def _engagement(d: Dialect) -> str:
    return (
        f"SELECT tenant, contact_id, email, engagement, {d.cast('engagement_since', TIMESTAMP)}, "
        f"{d.flag('subscribed')}, {d.cast('first_seen_at', TIMESTAMP)}, "
        f"{d.cast('last_interaction_at', TIMESTAMP)}, {d.cast('last_activity_at', TIMESTAMP)}, "
        f"{d.cast('last_purchase_at', TIMESTAMP)} FROM audience_facts "
        "WHERE engagement IS NOT NULL"
    )


def _list_members(d: Dialect) -> str:
    return (f"SELECT f.tenant, f.contact_id, f.email, l.key, {d.item('l.value', 0)}, "
            f"{d.cast(d.item('l.value', 1), TIMESTAMP)} FROM audience_facts f "
            f"{d.each('f.lists', 'l')}")


def _consent_ledger(d: Dialect) -> str:
    return (f"SELECT tenant, contact_id, channel, {d.cast('occurred_at', TIMESTAMP)}, event_id, "
            f"{d.flag('granted')}, source, {d.cast('recorded_at', TIMESTAMP)} "
            "FROM consent_ledger")


def _rfm(d: Dialect) -> str:
    scores = ", ".join(d.cast(d.field("rfm", key), INTEGER)
                       for key in ("r", "f", "m", "recency_days", "frequency"))
    return (f"SELECT tenant, contact_id, email, rfm_group, {scores}, "
            f"{d.cast(d.field('rfm', 'monetary'), DECIMAL)} FROM audience_facts "
            "WHERE rfm IS NOT NULL")


def _daily(metric: str, keys: Callable[[Dialect], str]) -> Callable[[Dialect], str]:
    """A tally's end-of-day snapshots, each with the span of days it holds for.

    The audience projection writes a tally's snapshot only on days its counts changed,
    and a snapshot holds every non-zero count of that day: a key absent from a snapshot
    is zero on that day.
    """

    def select(d: Dialect) -> str:
        return (
            f"SELECT a.tenant, {d.cast('a.day', DATE)}, {d.cast('s.next_day', DATE)}, "
            f"{keys(d)}, {d.cast('a.count', INTEGER)} FROM audience_daily a "
            "JOIN (SELECT tenant, day, LEAD(day) OVER (PARTITION BY tenant ORDER BY day) "
            f"AS next_day FROM (SELECT DISTINCT tenant, day FROM audience_daily "
            f"WHERE metric = '{metric}') AS days) AS s ON s.tenant = a.tenant AND s.day = a.day "
            f"WHERE a.metric = '{metric}'"
        )

    return select


# ------------------------------------------------------------------------------ views

VIEWS: tuple[View, ...] = (
    View(
        f"{PREFIX}contacts", "contacts",
        "The client list: one row per contact with the card as it stands now.",
        (
            TENANT, CONTACT_ID, EMAIL,
            _c("first_name", TEXT, "First name."),
            _c("last_name", TEXT, "Last name."),
            _c("phone", TEXT, "Phone number as given."),
            _c("language", TEXT, "Language tag as given, e.g. es or es-MX."),
            _c("language_base", TEXT, "The language without its region, lower case: es."),
            _c("country", TEXT, "Country code, e.g. ES."),
            _c("city", TEXT, "City."),
            _c("postal_code", TEXT, "Postal code."),
            _c("contact_type", TEXT, "The tenant's contact type, e.g. client or supplier."),
            _c("lead_status", TEXT, "The tenant's lead status, e.g. new or qualified."),
            _c("member_id", TEXT, "The member-area account id, if the contact signed up."),
            _c("member_status", TEXT, "Member status: pending_approval or active."),
            *_CONSENT,
            _c("properties", JSON,
               "Custom properties as a JSON object (one row each in "
               f"{PREFIX}contact_properties)."),
            _c("tags", JSON,
               f"The tags as written on the contact, a JSON array, sorted (one row each in "
               f"{PREFIX}tags, spelling)."),
            _c("first_seen_at", TIMESTAMP, "The earliest event of the contact (first contact)."),
            _c("last_activity_at", TIMESTAMP,
               "The latest activity: an event the contact did, not one done to them."),
            *_COUNTS,
        ),
        _contacts,
    ),
    View(
        f"{PREFIX}contact_properties", "contacts",
        "One row per contact and custom property.",
        (
            TENANT, CONTACT_ID,
            _c("property", TEXT, "The property's name."),
            _c("value", JSON, "The value as JSON."),
            _c("value_type", TEXT, "The JSON type: string, number, boolean, array, object."),
            _c("value_text", TEXT,
               "The value as text: a string without quotes, a number or true/false as "
               "written, an array or object as JSON."),
        ),
        _contact_properties,
    ),
    View(
        f"{PREFIX}timeline", "contacts",
        "Every event of every contact, as on the contact's card.",
        (
            TENANT, CONTACT_ID,
            _c("occurred_at", TIMESTAMP, "When it happened (the producer's occurred_at)."),
            _c("event_id", TEXT, "The producer's event id."),
            _c("type", TEXT, "The event type, e.g. form_submitted or purchase_completed."),
            _c("kind", TEXT, "A coarse grouping of types for display: form, purchase, email..."),
            _c("source", TEXT, "The producing service, e.g. site-builder."),
            _c("summary", TEXT, "One line describing the event."),
            _c("data", JSON, "The event's own fields (form fields, order lines, ...)."),
        ),
        _timeline,
    ),
    View(
        f"{PREFIX}tags", "contacts",
        "One row per contact and tag.",
        (
            TENANT, CONTACT_ID,
            _c("tag", TEXT, "The tag compared case-insensitively: trimmed, case-folded."),
            _c("label", TEXT, "The tag's label: the spelling most of the tenant's contacts "
               "carry, a tie going to the first in code-point order (capitals first), e.g. "
               "VIP; the same on every row of the tag, and as the API's /tags shows it."),
            _c("spelling", TEXT, "The tag as written on this contact, e.g. Vip."),
        ),
        _tags,
    ),
    View(
        f"{PREFIX}segments", "audience",
        "Every segment defined, live or deleted, with its rule.",
        (
            TENANT,
            _c("segment_id", TEXT, "The segment's id."),
            _c("name", TEXT, "The segment's name."),
            _c("version", INTEGER, "The rule's version: 1, then one more at each change."),
            _c("deleted", BOOLEAN, "True once the segment is deleted."),
            _c("rule", JSON, "The rule, in the segment language (docs/segments.md)."),
            _c("created_at", TIMESTAMP, "When the segment was first defined (ficha's clock)."),
            _c("changed_at", TIMESTAMP, "When it was last changed or deleted (ficha's clock)."),
        ),
        _segments,
    ),
    View(
        f"{PREFIX}segment_members", "audience",
        "Who is in each segment now: one row per open membership.",
        (
            TENANT,
            _c("segment_id", TEXT, "The segment's id."),
            CONTACT_ID, EMAIL,
            _c("entry_no", INTEGER, "1 for the contact's first entry into the segment, and so on."),
            _c("entered_at", TIMESTAMP,
               "The instant the contact entered, in ficha's time: when ficha learned of the "
               "event, or the exact instant a time condition passed."),
            _c("enter_cause", TEXT,
               "Why: event (an event changed the contact), clock (time passed) or definition "
               "(the rule or the tenant's settings changed)."),
            _c("enter_ref", TEXT,
               "The cause's reference: the event id, clock or rfm, or segment@v<N> / "
               "settings@v<N>."),
        ),
        _segment_members,
    ),
    View(
        f"{PREFIX}segment_history", "audience",
        "Every membership of every segment as an interval [entered_at, exited_at).",
        (
            TENANT,
            _c("segment_id", TEXT, "The segment's id."),
            CONTACT_ID,
            _c("entry_no", INTEGER, "1 for the contact's first entry into the segment, and so on."),
            _c("entered_at", TIMESTAMP, "The instant the contact entered, in ficha's time."),
            _c("entered_version", INTEGER, "The segment's version that let the contact in."),
            _c("enter_cause", TEXT, "Why it entered: event, clock or definition."),
            _c("enter_ref", TEXT, "The event id, clock or rfm, or segment@v<N> / settings@v<N>."),
            _c("enter_clauses", JSON,
               "The rule's clauses that flipped to let the contact in, as paths into the rule."),
            _c("exited_at", TIMESTAMP,
               "The instant the contact left, in ficha's time; null while a member."),
            _c("exited_version", INTEGER, "The segment's version when it left."),
            _c("exit_cause", TEXT, "Why it left: event, clock or definition."),
            _c("exit_ref", TEXT, "The event id, clock or rfm, or segment@v<N> / settings@v<N>."),
            _c("exit_clauses", JSON, "The clauses that flipped to make it leave."),
        ),
        _segment_history,
    ),
    View(
        f"{PREFIX}engagement", "audience",
        "Each contact's engagement status now (docs/audience.md#engagement).",
        (
            TENANT, CONTACT_ID, EMAIL, _STATUS,
            _c("status_since", TIMESTAMP,
               "The instant the contact took this status, in ficha's time."),
            _c("subscribed", BOOLEAN, "True if subscribed to at least one list."),
            _c("first_seen_at", TIMESTAMP, "The earliest event of the contact."),
            _c("last_interaction_at", TIMESTAMP,
               "The latest interaction (an open that is not a machine open, a click, a "
               "product view, a cart, a purchase, a form, a survey, a booking)."),
            _c("last_activity_at", TIMESTAMP, "The latest activity of any kind."),
            _c("last_purchase_at", TIMESTAMP, "The latest purchase."),
        ),
        _engagement,
    ),
    View(
        f"{PREFIX}list_members", "audience",
        "One row per contact and email list the contact was ever on, with its state now.",
        (
            TENANT, CONTACT_ID, EMAIL,
            _c("list_id", TEXT, "The list's id."),
            _LIST_STATE,
            _c("since", TIMESTAMP,
               "When this state began: the subscription, confirmation or unsubscription, or "
               "for a suppressed address the bounce or complaint that suppressed it."),
        ),
        _list_members,
    ),
    View(
        f"{PREFIX}consent_ledger", "audience",
        "Every consent fact ever received, per channel, also those a later fact overrode.",
        (
            TENANT, CONTACT_ID,
            _c("channel", TEXT, "email, sms, whatsapp or phone."),
            _c("occurred_at", TIMESTAMP, "When the consent was given or withdrawn."),
            _c("event_id", TEXT, "The consent_changed event that stated it."),
            _c("granted", BOOLEAN, "True: consent given; false: withdrawn."),
            _c("source", TEXT, "The producing service."),
            _c("recorded_at", TIMESTAMP, "When ficha recorded it (ficha's clock)."),
        ),
        _consent_ledger,
    ),
    View(
        f"{PREFIX}rfm", "audience",
        "Each contact's RFM scores and group: values as of the last UTC midnight, scored "
        "against the tenant's quintile cuts in force (docs/audience.md#rfm).",
        (
            TENANT, CONTACT_ID, EMAIL,
            _c("rfm_group", TEXT,
               "champions, loyal, recent, promising, needs_attention, at_risk, hibernating, "
               "lost or never_bought."),
            _c("recency_score", INTEGER, "1 to 5 (5: bought most recently); null if never bought."),
            _c("frequency_score", INTEGER, "1 to 5 (5: buys most often); null if never bought."),
            _c("monetary_score", INTEGER, "1 to 5 (5: spent the most); null if never bought."),
            _c("recency_days", INTEGER, "Whole days since the last purchase."),
            _c("frequency", INTEGER, "Purchases within the tenant's RFM window (365 days)."),
            _c("monetary", DECIMAL,
               "Purchases minus refunds within the window, in the tenant's RFM currency."),
        ),
        _rfm,
    ),
    View(
        f"{PREFIX}engagement_daily", "audience",
        "Contacts per engagement status at the end of each UTC day, by subscription.",
        (
            TENANT, *_SPAN, _STATUS,
            _c("subscribed", BOOLEAN, "Whether these contacts are subscribed to some list."),
            _CONTACTS_COUNT,
        ),
        _daily("engagement", lambda d: "a.k1, (a.k2 = '1')"),
    ),
    View(
        f"{PREFIX}list_daily", "audience",
        "Contacts per list and state at the end of each UTC day.",
        (
            TENANT, *_SPAN,
            _c("list_id", TEXT, "The list's id."),
            _LIST_STATE, _CONTACTS_COUNT,
        ),
        _daily("list", lambda d: "a.k1, a.k2"),
    ),
    View(
        f"{PREFIX}list_engagement_daily", "audience",
        "Contacts per list, list state and engagement status at the end of each UTC day.",
        (
            TENANT, *_SPAN,
            _c("list_id", TEXT, "The list's id."),
            _LIST_STATE, _STATUS, _CONTACTS_COUNT,
        ),
        _daily("list_engagement", lambda d: f"a.k1, {d.part('a.k2', 1)}, {d.part('a.k2', 2)}"),
    ),
    View(
        f"{PREFIX}rfm_daily", "audience",
        "Contacts per RFM group at the end of each UTC day.",
        (
            TENANT, *_SPAN,
            _c("rfm_group", TEXT, "The RFM group."),
            _CONTACTS_COUNT,
        ),
        _daily("rfm", lambda d: "a.k1"),
    ),
)


def views_of(projection: str) -> tuple[View, ...]:
    return tuple(v for v in VIEWS if v.projection == projection)


def view_named(name: str) -> View:
    for view in VIEWS:
        if view.name == name:
            return view
    raise KeyError(f"no view {name!r}; views are {', '.join(v.name for v in VIEWS)}")


# ------------------------------------------------------------------------------ docs

def reference_markdown() -> str:
    """The reference part of docs/sql.md: the types, then every view and column."""
    lines = ["| type | PostgreSQL | SQLite |", "|---|---|---|"]
    lines += [f"| {t.name} | `{t.postgres_cast}` | {t.sqlite_form} |" for t in TYPES]
    for view in VIEWS:
        lines += ["", f"### `{view.name}`", "", view.description, "",
                  "| column | type | meaning |", "|---|---|---|"]
        lines += [f"| `{c.name}` | {c.type.name} | {c.meaning} |" for c in view.columns]
    return "\n".join(lines) + "\n"
