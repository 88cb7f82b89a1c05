"""Raw bytes + subject → an InboundEvent, or a Rejection with a stable code and a sentence.

The codes are stable (producers and operators may match on them); ``REJECTION_CODES`` says
what each one means, and ``DECODER_ONLY_RULES`` lists what the decoder checks beyond the
JSON Schemas. Both are published in docs/events.md.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec

from contracts.emails import email_problem, normalise_email
from contracts.events import (
    EVENT_TYPES,
    LATEST_VERSIONS,
    OLDER_VERSIONS,
    TENANT_REGEX,
    UNSETTABLE_FIELDS,
    ContactInfo,
    InboundEvent,
)

MAX_BODY_BYTES = 65536
SCHEMA_VERSION = 1
TENANT_PATTERN = re.compile(TENANT_REGEX.strip("^$"))

# Instants ficha accepts: far enough back for any customer history, far enough ahead for
# bookings; outside them a date is a producer's bug (0001-01-01, 9999-12-31), and date
# arithmetic on it (windows of days) would overflow.
EARLIEST = datetime(1900, 1, 1, tzinfo=UTC)
LATEST = datetime(2200, 1, 1, tzinfo=UTC)

REJECTION_CODES: dict[str, str] = {
    "bad_subject": "the subject is not `ficha.in.<tenant>.<type>` with a valid tenant token",
    "too_large": f"the body is over {MAX_BODY_BYTES // 1024} KiB",
    "invalid_utf8": "the body is not UTF-8",
    "not_json": "the body is not JSON",
    "not_object": "the body is JSON but not an object",
    "unknown_type": "the type is not one of contract v1's event types",
    "type_mismatch": "the body's type differs from the subject's type token",
    "tenant_mismatch": "the body's tenant differs from the subject's tenant token",
    "missing_field": "a required field is absent",
    "invalid_field": "a field is of the wrong type or format, null, or an instant outside "
                     f"{EARLIEST.year}-{LATEST.year}",
    "unsupported_schema_version": "schema_version is newer than this ficha knows",
}

# What the decoder checks beyond the JSON Schemas (which name these rules too).
DECODER_ONLY_RULES: tuple[str, ...] = (
    "`contact.email` is trimmed and lowercased, then must be a valid address",
    "`contact.country` must be an assigned ISO 3166-1 alpha-2 code",
    "`currency` (and `total.currency`) must be an ISO 4217 code",
    "`tags`, `tags_added` and `tags_removed` are trimmed and must not be blank",
    "null is refused for every field (leave a field out to keep its value)",
    "no text (value or key) may hold a NUL character, \\u0000",
    "`tenant` and `type` must equal the subject's tokens `ficha.in.<tenant>.<type>`",
    f"the body is at most {MAX_BODY_BYTES} bytes",
    f"`occurred_at` and `starts_at` must be from {EARLIEST.date()} and before "
    f"{LATEST.date()}",
    "`contact_updated.unset` must not name `email`",
)

_DATA = Path(__file__).parent / "data"


def _codes(name: str) -> frozenset[str]:
    lines = (_DATA / name).read_text().splitlines()
    return frozenset(line.strip() for line in lines if line.strip() and not line.startswith("#"))


COUNTRIES = _codes("iso3166_alpha2.txt")
CURRENCIES = _codes("iso4217.txt")

_DECODERS = {name: msgspec.json.Decoder(cls) for name, cls in EVENT_TYPES.items()}
_GENERIC = msgspec.json.Decoder()


class _Header(msgspec.Struct):
    """The fields checked before the event's own type, read without building a dict of
    the whole body (a third of the cost of the generic decode)."""

    type: Any = msgspec.UNSET
    tenant: Any = msgspec.UNSET
    schema_version: Any = msgspec.UNSET


_HEADER = msgspec.json.Decoder(_Header)
_PATH = re.compile(r" - at `\$(.*)`$")
_KEY_PATH = re.compile(r" - at `key` in `\$(.*)`$")
_MISSING = re.compile(r"^Object missing required field `([^`]+)`")
# msgspec quotes a pattern with repr(), which doubles each backslash: '^\\+[1-9]…'.
_REGEX = re.compile(r"Expected `str` matching regex (['\"])(.*)\1")


@dataclass(frozen=True)
class Rejection:
    code: str
    detail: str
    tenant: str = "_"
    type: str = "_"


def _shown(value: Any, limit: int = 60) -> str:
    text = msgspec.json.encode(value).decode() if not isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def subject_tokens(subject: str) -> tuple[str, str, bool]:
    """(tenant token, type token, well formed) of a ficha.in subject; '_' when absent."""
    parts = subject.split(".")
    tenant = parts[2] if len(parts) > 2 and parts[2] else "_"
    kind = parts[3] if len(parts) > 3 and parts[3] else "_"
    ok = len(parts) == 4 and parts[0] == "ficha" and parts[1] == "in"
    return tenant, kind, ok


def decode(subject: str, data: bytes) -> InboundEvent | Rejection:
    try:
        return _decode(subject, data)
    except RecursionError:  # (any parser, and the walks below, give up past some depth)
        tenant, kind, _ = subject_tokens(subject)
        return Rejection(code="invalid_field", tenant=tenant, type=kind, detail=(
            "the body nests too deeply to read (objects or lists within each other "
            "hundreds of levels deep): send flat fields"))


def _decode(subject: str, data: bytes) -> InboundEvent | Rejection:
    tenant, kind, well_formed = subject_tokens(subject)

    def reject(code: str, detail: str) -> Rejection:
        return Rejection(code=code, detail=detail, tenant=tenant, type=kind)

    if not well_formed:
        return reject(
            "bad_subject",
            f"subject {subject!r} is not of the form ficha.in.<tenant>.<type>: publish to "
            "ficha.in.<tenant>.<type>, e.g. ficha.in.acme.form_submitted",
        )
    if not TENANT_PATTERN.fullmatch(tenant):
        return reject(
            "bad_subject",
            f"tenant token {tenant!r} in the subject is not valid: use 1-63 lowercase "
            "letters, digits, _ or -, starting with a letter or digit",
        )
    if len(data) > MAX_BODY_BYTES:
        return reject(
            "too_large",
            f"the body is {len(data)} bytes; the limit is {MAX_BODY_BYTES} bytes (64 KiB): "
            "send less raw form data or split it",
        )
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as error:
        return reject("invalid_utf8", f"the body is not UTF-8 (bad byte at {error.start})")
    try:
        try:
            header = _HEADER.decode(data)
        except msgspec.ValidationError:  # (a DecodeError too) not one object: is it JSON?
            obj = _GENERIC.decode(data)
            return reject(
                "not_object",
                f"the body must be one JSON object, got {type(obj).__name__} "
                f"{_shown(obj)}",
            )
    except msgspec.DecodeError as error:
        return reject("not_json", f"the body is not valid JSON: {error}")

    if kind not in EVENT_TYPES:
        return reject(
            "unknown_type",
            f"event type {kind!r} is not in contract v1; known types: "
            f"{', '.join(sorted(EVENT_TYPES))}",
        )
    if header.type is msgspec.UNSET:
        return reject("missing_field", "type is missing: it must equal the subject's type token")
    if header.type != kind:
        return reject(
            "type_mismatch",
            f"type is {_shown(header.type)} but the subject says {kind!r}: they must be equal",
        )
    if header.tenant is msgspec.UNSET:
        return reject("missing_field", "tenant is missing: it must equal the subject's tenant")
    if header.tenant != tenant:
        return reject(
            "tenant_mismatch",
            f"tenant is {_shown(header.tenant)} but the subject says {tenant!r}: "
            "they must be equal",
        )
    version = (SCHEMA_VERSION if header.schema_version is msgspec.UNSET
               else header.schema_version)
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        return reject(
            "invalid_field",
            f"schema_version must be a whole number from 1, got {_shown(version)}",
        )
    latest = LATEST_VERSIONS.get(kind, SCHEMA_VERSION)
    if version > latest:
        return reject(
            "unsupported_schema_version",
            f"schema_version {version} of {kind} is newer than this ficha understands "
            f"(up to {latest}): upgrade ficha or publish version {latest}",
        )
    # A JSON null is spelt `null` in the bytes, and JSON writes NUL as \u0000 (raw
    # control characters are not JSON): without those bytes there is nothing to look for.
    whole: Any = None
    for marker, refused, problem in _REFUSED_VALUES:
        if marker in data:
            whole = _GENERIC.decode(data) if whole is None else whole
            if (path := _first_path(whole, refused)) is not None:
                return reject("invalid_field", f"{path} {problem}")

    older = OLDER_VERSIONS.get((kind, version)) if version < latest else None
    try:
        if older is None:
            event = _DECODERS[kind].decode(data)
        else:
            event = older[1](msgspec.json.decode(data, type=older[0]))
    except msgspec.ValidationError as error:
        return _from_validation_error(str(error), reject)

    return _normalise(event, reject)


def read_json(data: bytes | str) -> Any:
    """Any JSON body as Python values, or ValueError: also for one nested too deeply to
    read (a parser's RecursionError), which a hostile producer can send within 4 KiB.
    For reading bodies ficha did not refuse yet or keeps as they came (dead letters,
    the streams an erasure purges)."""
    try:
        return json.loads(data)
    except RecursionError:
        raise ValueError("the JSON nests too deeply to read") from None


def _first_path(value: Any, refused: Callable[[Any], bool], path: str = "") -> str | None:
    """The path of the first value (or key) of a decoded body that is ``refused``."""
    if refused(value):
        return path or "the body"
    if isinstance(value, dict):
        for key, item in value.items():
            if refused(key):
                return f"a key of {path or 'the body'}"
            if (found := _first_path(item, refused, f"{path}.{key}" if path else key)):
                return found
    elif isinstance(value, list):
        for index, item in enumerate(value):
            if (found := _first_path(item, refused, f"{path}[{index}]")):
                return found
    return None


# Values the decoder refuses anywhere in a body: the bytes that must be there for one to
# be, what makes one, and what the dead letter says of it.
_REFUSED_VALUES: tuple[tuple[bytes, Callable[[Any], bool], str], ...] = (
    (b"null", lambda value: value is None,
     "is null, which version 1 does not accept: leave the field out to keep the current "
     "value, or clear it with contact_updated.unset"),
    (b"\\u0000", lambda value: isinstance(value, str) and "\x00" in value,
     "holds a NUL character (U+0000, written \\u0000 in JSON), which ficha cannot store: "
     "remove it"),
)


def _from_validation_error(message: str, reject: Any) -> Rejection:
    key = _KEY_PATH.search(message)
    if key:
        where = key.group(1).lstrip(".")
        text = _explain(_KEY_PATH.sub("", message))
        return reject("invalid_field", f"a key of {where}: {text}")
    match = _PATH.search(message)
    path = match.group(1).lstrip(".") if match else ""
    text = _PATH.sub("", message)
    missing = _MISSING.match(text)
    if missing:
        where = f"{path}.{missing.group(1)}" if path else missing.group(1)
        return reject("missing_field", f"{where} is required but missing")
    where = path or "the event"
    return reject("invalid_field", f"{where}: {_explain(text)}")


def _explain(text: str) -> str:
    """msgspec's message, in words closer to the contract."""
    regex = _REGEX.search(text)
    if regex:  # the pattern as a person writes it: '^\+[1-9]…'
        pattern = regex.group(2).replace("\\\\", "\\")
        text = text.replace(regex.group(0), f"expected text matching '{pattern}'")
    if "datetime" in text and "timezone" in text:
        return "needs a timezone offset, like 2026-11-02T10:15:00+01:00 or ...Z"
    if "Invalid RFC3339" in text or "`datetime`" in text:
        return "must be an RFC 3339 timestamp with offset, like 2026-11-02T10:15:00+01:00"
    return text[0].lower() + text[1:] if text else "is not valid"




def _normalise(event: InboundEvent, reject: Any) -> InboundEvent | Rejection:
    for name in ("occurred_at", "starts_at"):
        moment = getattr(event, name, None)
        if moment is not None and not EARLIEST <= moment < LATEST:
            return reject(
                "invalid_field",
                f"{name} {moment.isoformat()} is outside the instants ficha accepts "
                f"({EARLIEST.year}-01-01 to {LATEST.year}-01-01): check the producer's clock "
                "or date handling",
            )
    person = event.contact
    email = normalise_email(person.email)
    problem = email_problem(email)
    if problem:
        return reject("invalid_field", f"contact.email {_shown(person.email)} {problem}")
    updates: dict[str, Any] = {}
    if email != person.email:
        updates["email"] = email
    if person.country is not None:
        country = person.country.upper()
        if country not in COUNTRIES:
            return reject(
                "invalid_field",
                f"contact.country {_shown(person.country)} is not an ISO 3166-1 alpha-2 code "
                "(like ES, MX, US)",
            )
        if country != person.country:
            updates["country"] = country
    changes: dict[str, Any] = {}
    if updates:
        changes["contact"] = msgspec.structs.replace(person, **updates)
    total = getattr(event, "total", None)
    for name, currency in (("currency", getattr(event, "currency", None)),
                           ("total.currency", getattr(total, "currency", None))):
        if currency is not None and currency not in CURRENCIES:
            return reject("invalid_field",
                          f"{name} {_shown(currency)} is not an ISO 4217 code")
    for name in ("tags", "tags_added", "tags_removed"):
        tags = getattr(event, name, None)
        if tags is None:
            continue
        trimmed = [t.strip() for t in tags]
        for index, tag in enumerate(trimmed):
            if not tag:
                return reject("invalid_field", f"{name}[{index}] is blank after trimming")
        if trimmed != tags:
            changes[name] = trimmed
    unset = getattr(event, "unset", None)
    if unset and "email" in unset:
        return reject(
            "invalid_field",
            "unset names email, which is the contact's identity and cannot be cleared: "
            "to forget a person send contact_erasure_requested",
        )
    if changes:
        event = msgspec.structs.replace(event, **changes)
    return event


__all__ = [
    "COUNTRIES",
    "CURRENCIES",
    "DECODER_ONLY_RULES",
    "MAX_BODY_BYTES",
    "REJECTION_CODES",
    "read_json",
    "SCHEMA_VERSION",
    "TENANT_PATTERN",
    "ContactInfo",
    "Rejection",
    "UNSETTABLE_FIELDS",
    "decode",
    "subject_tokens",
]
