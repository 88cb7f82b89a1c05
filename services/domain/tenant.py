"""A tenant's settings and property definitions: one aggregate per tenant, every change an
event, so that projections apply them in log order and a rebuild sees the same history.

Settings (defaults in brackets): engagement windows [90 and 180 days], the RFM window
[365 days] and primary currency [EUR], how many soft bounces suppress an address [3], and
the tenant's own contact types and lead statuses [any value accepted while unset].

Property definitions give a custom property a type (text, number, date, boolean, or
choice with options); values arriving for a defined property are checked at ingestion,
and an event carrying a value of the wrong type is dead-lettered with
``property_type_mismatch`` (see docs/audience.md).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any
from uuid import NAMESPACE_URL, UUID, uuid5

import msgspec
from eventsourcing.domain import Aggregate

from contracts.events import InboundEvent
from services.domain.text import NUL_PROBLEM, has_nul

PROPERTY_TYPES = ("text", "number", "date", "boolean", "choice")
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")
_CURRENCY = re.compile(r"^[A-Z]{3}$")
_TOKEN = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9 _.-]{0,63}$")

# Codes of the events that break a tenant's definitions (dead-lettered at ingestion).
PROPERTY_TYPE_MISMATCH = "property_type_mismatch"
UNKNOWN_CONTACT_TYPE = "unknown_contact_type"
UNKNOWN_LEAD_STATUS = "unknown_lead_status"
DEFINITION_CODES: dict[str, str] = {
    PROPERTY_TYPE_MISMATCH: "a property the tenant has defined has a value of another type "
                            "(or a choice outside its options)",
    UNKNOWN_CONTACT_TYPE: "contact_type is not one of the contact types the tenant lists",
    UNKNOWN_LEAD_STATUS: "lead_status is not one of the lead statuses the tenant lists",
}

DEFAULTS: dict[str, Any] = {
    "engaged_days": 90,
    "inactive_days": 180,
    "rfm_window_days": 365,
    "rfm_currency": "EUR",
    "soft_bounce_limit": 3,
    "contact_types": [],
    "lead_statuses": [],
}


class TenantError(ValueError):
    """A settings or property command that cannot be carried out, in words to act on;
    ``field`` names the setting or the part of a property definition to blame."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


def tenant_settings_id(tenant: str) -> UUID:
    return uuid5(NAMESPACE_URL, f"ficha:tenant:{tenant}")


@dataclass(frozen=True)
class PropertyDefinition:
    name: str
    type: str
    options: tuple[str, ...] = ()
    label: str = ""

    def check(self, value: Any) -> str | None:
        """None if ``value`` fits the definition, else a sentence saying why not."""
        shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
        if self.type == "text":
            if isinstance(value, str):
                return None
            return f"property {self.name} is defined as text; got {shown}"
        if self.type == "number":
            if isinstance(value, int | float) and not isinstance(value, bool):
                return None
            if isinstance(value, str) and re.match(r"^\s*-?\d+(\.\d+)?\s*$", value):
                return None
            return f"property {self.name} is defined as a number; got {shown}"
        if self.type == "boolean":
            if isinstance(value, bool):
                return None
            return f"property {self.name} is defined as true/false; got {shown}"
        if self.type == "date":
            if isinstance(value, str) and _is_date(value):
                return None
            return (f"property {self.name} is defined as a date (2026-01-31 or RFC 3339); "
                    f"got {shown}")
        values = value if isinstance(value, list) else [value]
        wrong = [v for v in values if v not in self.options]
        if not wrong:
            return None
        return (f"property {self.name} is a choice of {', '.join(self.options)}; "
                f"got {', '.join(map(repr, wrong))}")


def _is_date(text: str) -> bool:
    try:
        if len(text) == 10:
            date.fromisoformat(text)
        else:
            datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return False
    return True


class TenantSettings(Aggregate):
    class Opened(Aggregate.Created):
        tenant: str

    class Changed(Aggregate.Event):
        tenant: str
        values: dict[str, Any]

        def apply(self, aggregate: Any) -> None:
            aggregate.values.update(self.values)

    class PropertyDefined(Aggregate.Event):
        tenant: str
        name: str
        type: str
        options: list[str]
        label: str

        def apply(self, aggregate: Any) -> None:
            aggregate.properties[self.name] = PropertyDefinition(
                self.name, self.type, tuple(self.options), self.label
            )

    class PropertyRemoved(Aggregate.Event):
        tenant: str
        name: str

        def apply(self, aggregate: Any) -> None:
            aggregate.properties.pop(self.name, None)

    def __init__(self, tenant: str) -> None:
        self.tenant = tenant
        self.values: dict[str, Any] = dict(DEFAULTS)
        self.properties: dict[str, PropertyDefinition] = {}

    @classmethod
    def open(cls, tenant: str) -> TenantSettings:
        return cls._create(cls.Opened, id=tenant_settings_id(tenant), tenant=tenant)

    # ------------------------------------------------------------------ commands

    def change(self, **values: Any) -> dict[str, Any]:
        """Change settings; returns the new values. Raises TenantError on bad input."""
        unknown = sorted(set(values) - set(DEFAULTS))
        if unknown:
            raise TenantError(f"unknown setting {', '.join(unknown)}; settings are "
                              f"{', '.join(DEFAULTS)}")
        merged = {**self.values, **values}
        for key in ("engaged_days", "inactive_days", "rfm_window_days"):
            value = merged[key]
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 3650:
                raise TenantError(f"{key} must be a whole number of days from 1 to 3650")
        if merged["inactive_days"] <= merged["engaged_days"]:
            raise TenantError("inactive_days must be longer than engaged_days")
        if not isinstance(merged["rfm_currency"], str) or not _CURRENCY.match(
            merged["rfm_currency"]
        ):
            raise TenantError("rfm_currency must be an ISO 4217 code such as EUR")
        limit = merged["soft_bounce_limit"]
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 100:
            raise TenantError("soft_bounce_limit must be a whole number from 1 to 100")
        for key in ("contact_types", "lead_statuses"):
            items = merged[key]
            if not isinstance(items, list) or len(items) > 100 or not all(
                isinstance(i, str) and _TOKEN.match(i) for i in items
            ):
                raise TenantError(f"{key} must be a list of up to 100 names of 1-64 letters, "
                                  "digits, spaces, _ . -")
            merged[key] = sorted(set(items))
        changed = {k: v for k, v in merged.items() if self.values.get(k) != v}
        if changed:
            self.trigger_event(self.Changed, tenant=self.tenant, values=changed)
        return dict(self.values)

    def define_property(self, name: str, type_: str, options: list[str] | None = None,
                        label: str = "") -> PropertyDefinition:
        if not isinstance(name, str) or not _NAME.match(name):
            raise TenantError(f"property name {name!r} must be 1-64 of letters, digits, "
                              "_ . - starting with a letter, digit or _", "name")
        if type_ not in PROPERTY_TYPES:
            raise TenantError(f"property type must be one of {', '.join(PROPERTY_TYPES)}",
                              "type")
        opts = list(options or [])
        if type_ == "choice":
            if not opts or len(opts) > 200 or not all(isinstance(o, str) and o for o in opts):
                raise TenantError("a choice property needs 1-200 options (non-empty strings)",
                                  "options")
        elif opts:
            raise TenantError("only a choice property has options", "options")
        if len(label) > 200:
            raise TenantError("a property's label has at most 200 characters", "label")
        for field, texts in (("label", [label]), ("options", opts)):
            if any(has_nul(text) for text in texts):
                raise TenantError(f"a property's {field.rstrip('s')} {NUL_PROBLEM}", field)
        definition = PropertyDefinition(name, type_, tuple(opts), label.strip())
        if self.properties.get(name) != definition:
            self.trigger_event(self.PropertyDefined, tenant=self.tenant, name=name,
                               type=type_, options=opts, label=label.strip())
        return self.properties[name]

    def event_problem(self, event: InboundEvent) -> tuple[str, str] | None:
        """(code, sentence) if the event breaks these definitions, else None."""
        properties: dict[str, Any] = getattr(event, "properties", None) or {}
        for name, value in sorted(properties.items()):
            definition = self.properties.get(name)
            if definition is None:
                continue
            wrong = definition.check(msgspec.to_builtins(value))
            if wrong is not None:
                return PROPERTY_TYPE_MISMATCH, f"{wrong}; fix the value or the definition"
        for field, code, key in (("contact_type", UNKNOWN_CONTACT_TYPE, "contact_types"),
                                 ("lead_status", UNKNOWN_LEAD_STATUS, "lead_statuses")):
            value = getattr(event, field, None)
            allowed = self.values.get(key) or []
            if value is not None and allowed and value not in allowed:
                return code, (f"{field} {value!r} is not one of tenant {event.tenant}'s "
                              f"{key.replace('_', ' ')}: {', '.join(allowed)}")
        return None

    def remove_property(self, name: str) -> None:
        if name not in self.properties:
            raise TenantError(f"property {name!r} is not defined for tenant {self.tenant}")
        self.trigger_event(self.PropertyRemoved, tenant=self.tenant, name=name)
