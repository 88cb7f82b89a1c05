"""Which CSV column means what: card fields, tags, custom properties, lists, consent.

A column is mapped by its header, or by a mapping file whose entries use the same words
(docs/import.md has the table and examples):

| target | meaning |
|---|---|
| ``email`` | the contact's email address (required) |
| ``phone``, ``first_name``, ``last_name``, ``language``, ``country``, ``city``, | card fields |
| ``postal_code`` | |
| ``contact_type``, ``lead_status`` | card fields set by ``contact_updated`` |
| ``tags`` / ``tags_removed`` | tags added / removed, split on the tag separator |
| ``property:<name>`` (or ``prop:<name>``) | a custom property |
| ``list:<list_id>`` | a list subscription: ``list_subscribed`` / ``list_unsubscribed`` |
| ``consent:<channel>`` | consent on email, sms, whatsapp or phone: ``consent_changed`` |
| ``occurred_at`` | the row's own instant (otherwise the import's) |
| ``ignore`` | not imported |

Fixed names match headers in any case, with spaces or hyphens for underscores (``First
Name`` is ``first_name``), plus a few common aliases (``E-mail``, ``Zip``). Everything
here is pure: the plan is computed from the header row and the parsed mapping.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import Any, Literal

import msgspec

from contracts.events import CONSENT_CHANNELS, PROPERTY_NAME_PATTERN

PROFILE_FIELDS = ("phone", "first_name", "last_name", "language", "country", "city",
                  "postal_code")
UPDATE_FIELDS = ("contact_type", "lead_status")
FIXED_TARGETS = ("email", *PROFILE_FIELDS, *UPDATE_FIELDS, "tags", "tags_removed",
                 "occurred_at", "ignore")
PROPERTY_TYPES = ("text", "number", "boolean", "list")

ALIASES = {
    "e_mail": "email", "email_address": "email", "mail": "email",
    "firstname": "first_name", "given_name": "first_name",
    "lastname": "last_name", "surname": "last_name", "family_name": "last_name",
    "mobile": "phone", "phone_number": "phone", "telephone": "phone",
    "zip": "postal_code", "zip_code": "postal_code", "postcode": "postal_code",
    "tag": "tags",
}
PREFIXES = {"property": "property", "prop": "property", "list": "list", "consent": "consent"}

# Cell values of list, consent and boolean-property columns (any case); an empty cell
# means "no change". "pending" in a list column subscribes with double opt-in.
TRUTHY = ("1", "true", "t", "yes", "y", "x", "on", "subscribed", "granted")
FALSY = ("0", "false", "f", "no", "n", "off", "unsubscribed", "revoked")
PENDING = "pending"
DEFAULT_TAG_SEPARATOR = ","

_PROPERTY_NAME = re.compile(PROPERTY_NAME_PATTERN)
_SEPARATORS = re.compile(r"[\s\-]+")


class MappingError(ValueError):
    """The columns cannot be mapped; ``problems`` holds one sentence per problem."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


class ColumnSpec(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """A mapping file's entry with options: ``{"to": "property:size", "type": "number"}``."""

    to: str
    type: Literal["text", "number", "boolean", "list"] | None = None
    double_opt_in: bool = False


class MappingSpec(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """A mapping file: header → target (a string, or a ``ColumnSpec``), and options."""

    columns: dict[str, str | ColumnSpec] = {}
    tag_separator: str | None = None
    truthy: list[str] | None = None
    falsy: list[str] | None = None
    ignore_unknown_columns: bool = False
    source: str | None = None


def mapping_from(data: Any, origin: str = "the mapping") -> MappingSpec:
    """A parsed JSON/YAML document as a MappingSpec; MappingError says what is wrong."""
    if not isinstance(data, dict):
        raise MappingError([f"{origin} must be an object with a `columns` entry, "
                            f"got {type(data).__name__}"])
    try:
        # Lax: a YAML file's `true` arrives as text (see files.load_mapping).
        return msgspec.convert(data, MappingSpec, strict=False)
    except msgspec.ValidationError as error:
        raise MappingError([f"{origin}: {error}"]) from error


@dataclass(frozen=True)
class Target:
    """What one column feeds. ``type`` "" for a property: the tenant's definition decides."""

    kind: str  # field, tags_added, tags_removed, property, list, consent, occurred_at, ignore
    name: str = ""
    type: str = ""
    double_opt_in: bool = False

    def describe(self) -> str:
        if self.kind in ("field", "ignore", "occurred_at"):
            return self.name or self.kind
        if self.kind in ("tags_added", "tags_removed"):
            return "tags" if self.kind == "tags_added" else "tags_removed"
        text = f"{self.kind}:{self.name}"
        if self.type:
            text += f" ({self.type})"
        if self.double_opt_in:
            text += " (double opt-in)"
        return text


@dataclass(frozen=True)
class Column:
    index: int
    header: str
    target: Target


@dataclass(frozen=True)
class ColumnPlan:
    """The resolved columns of one file, and how cell values are read."""

    headers: tuple[str, ...]
    columns: tuple[Column, ...]
    tag_separator: str = DEFAULT_TAG_SEPARATOR
    truthy: frozenset[str] = frozenset(TRUTHY)
    falsy: frozenset[str] = frozenset(FALSY)
    warnings: tuple[str, ...] = field(default=(), compare=False)

    def of_kind(self, kind: str) -> tuple[Column, ...]:
        return tuple(c for c in self.columns if c.target.kind == kind)

    @property
    def email(self) -> Column:
        return next(c for c in self.columns if c.target == Target("field", "email"))

    def fingerprint(self) -> str:
        """A short hash of what the columns mean: part of every event id (a corrected
        mapping makes new events; the same mapping, the same ones)."""
        canonical = msgspec.json.encode([
            [[c.index, c.header, c.target.kind, c.target.name, c.target.type,
              c.target.double_opt_in] for c in self.columns],
            self.tag_separator, sorted(self.truthy), sorted(self.falsy),
        ])
        return hashlib.sha256(canonical).hexdigest()[:16]


def normalise_header(text: str) -> str:
    return _SEPARATORS.sub("_", text.strip().lower())


def parse_target(text: str) -> Target | None:
    """The target a header or mapping value names, or None if it names none."""
    prefix, colon, rest = text.partition(":")
    if colon:
        kind = PREFIXES.get(prefix.strip().lower())
        return Target(kind, rest.strip()) if kind else None
    name = normalise_header(text)
    name = ALIASES.get(name, name)
    if name == "tags":
        return Target("tags_added")
    if name == "tags_removed":
        return Target("tags_removed")
    if name == "ignore":
        return Target("ignore")
    if name == "occurred_at":
        return Target("occurred_at", "occurred_at")
    if name in ("email", *PROFILE_FIELDS, *UPDATE_FIELDS):
        return Target("field", name)
    return None


def _target_problem(header: str, target: Target) -> str | None:
    if target.kind == "property" and not _PROPERTY_NAME.match(target.name):
        return (f"column {header!r}: property name {target.name!r} must be 1-64 letters, "
                "digits, _ . - (no spaces)")
    if target.kind == "list" and not (1 <= len(target.name) <= 128 and target.name != "*"):
        return f"column {header!r}: a list id of 1-128 characters is needed after list:"
    if target.kind == "consent" and target.name not in CONSENT_CHANNELS:
        return (f"column {header!r}: consent channel {target.name!r} is not one of "
                f"{', '.join(CONSENT_CHANNELS)}")
    if target.type and target.kind != "property":
        return f"column {header!r}: a type applies to property columns only"
    if target.double_opt_in and target.kind != "list":
        return f"column {header!r}: double_opt_in applies to list columns only"
    return None


def _from_spec(header: str, entry: str | ColumnSpec) -> Target | str:
    """The target a mapping entry gives a header, or a sentence saying why it gives none."""
    to = entry if isinstance(entry, str) else entry.to
    target = parse_target(to)
    if target is None:
        return (f"the mapping sends column {header!r} to {to!r}, which is not a target: use "
                "a card field (email, first_name, …), tags, property:<name>, list:<id>, "
                "consent:<channel>, occurred_at or ignore")
    if isinstance(entry, ColumnSpec):
        target = Target(target.kind, target.name, entry.type or "", entry.double_opt_in)
    return target


def plan_columns(
    headers: list[str],
    spec: MappingSpec | None = None,
    *,
    ignore_unknown: bool = False,
    tag_separator: str | None = None,
) -> ColumnPlan:
    """Resolve every header to a target; MappingError lists everything that stops it."""
    spec = spec or MappingSpec()
    ignore_unknown = ignore_unknown or spec.ignore_unknown_columns
    problems: list[str] = []
    warnings: list[str] = []
    stripped = [h.strip() for h in headers]
    seen: dict[str, int] = {}
    for index, header in enumerate(stripped):
        if header and header in seen:
            problems.append(f"the header names {header!r} twice (columns {seen[header] + 1} "
                            f"and {index + 1}): rename one")
        seen.setdefault(header, index)
    mapped = {name.strip(): entry for name, entry in spec.columns.items()}
    unused = sorted(set(mapped) - set(stripped))
    if unused:
        warnings.append(f"the mapping names columns the file does not have: "
                        f"{', '.join(map(repr, unused))}")

    columns: list[Column] = []
    unknown: list[str] = []
    for index, header in enumerate(stripped):
        label = header or f"(column {index + 1}, no name)"
        resolved: Target | str | None
        resolved = _from_spec(header, mapped[header]) if header in mapped else (
            parse_target(header) if header else None)
        if isinstance(resolved, str):
            problems.append(resolved)
            continue
        if resolved is None:
            unknown.append(label)
            resolved = Target("ignore")
        problem = _target_problem(label, resolved)
        if problem:
            problems.append(problem)
            continue
        columns.append(Column(index, label, resolved))

    if unknown and not ignore_unknown:
        problems.append(
            f"no mapping for the column{'s' if len(unknown) > 1 else ''} "
            f"{', '.join(map(repr, unknown))}: name them after a target (first_name, tags, "
            "property:<name>, list:<id>, consent:<channel>, …), map them in a mapping file, "
            "or ignore them (`--ignore-unknown-columns`; in the API, "
            "`ignore_unknown_columns=true`)")
    elif unknown:
        warnings.append(f"ignored columns: {', '.join(map(repr, unknown))}")

    single: dict[tuple[str, str], str] = {}
    for column in columns:
        if column.target.kind in ("ignore", "tags_added", "tags_removed"):
            continue
        key = (column.target.kind, column.target.name)
        if key in single:
            problems.append(f"columns {single[key]!r} and {column.header!r} both map to "
                            f"{column.target.describe()}: keep one, or ignore the other")
        single.setdefault(key, column.header)
    if not any(c.target == Target("field", "email") for c in columns):
        problems.append(
            f"no email column: the file's columns are {', '.join(map(repr, stripped))}; "
            "name one `email` or map it to email in a mapping file")

    truthy = frozenset(v.strip().lower() for v in (spec.truthy or TRUTHY))
    falsy = frozenset(v.strip().lower() for v in (spec.falsy or FALSY))
    both = sorted(truthy & falsy)
    if both:
        problems.append(f"values {', '.join(map(repr, both))} are both truthy and falsy")
    separator = tag_separator if tag_separator is not None else (
        spec.tag_separator if spec.tag_separator is not None else DEFAULT_TAG_SEPARATOR)
    if not separator:
        problems.append("the tag separator cannot be empty")
    if problems:
        raise MappingError(problems)
    return ColumnPlan(tuple(stripped), tuple(columns), separator, truthy, falsy,
                      tuple(warnings))
