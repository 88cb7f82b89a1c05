"""Contract v1 events as msgspec Structs (see ../shared/contract-v1.md).

Optional fields default to None, meaning "absent: leave the contact's value unchanged".
``null`` itself is refused by the decoder before these types are applied. Unknown extra
fields are ignored: the contract allows producers to add optional fields.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Literal

import msgspec
from msgspec import Meta, Struct

EVENT_ID_PATTERN = r"^[A-Za-z0-9._:-]{1,128}$"
TENANT_REGEX = r"^[a-z0-9][a-z0-9_-]{0,62}$"
MONEY_PATTERN = r"^-?[0-9]{1,12}(\.[0-9]{1,4})?$"
PHONE_PATTERN = r"^\+[1-9][0-9]{6,14}$"
LANGUAGE_PATTERN = (
    r"^[A-Za-z]{2,3}(-[A-Za-z]{4})?(-([A-Za-z]{2}|[0-9]{3}))?"
    r"(-([A-Za-z0-9]{5,8}|[0-9][A-Za-z0-9]{3}))*$"
)
PROPERTY_NAME_PATTERN = r"^[A-Za-z0-9_.-]{1,64}$"

EventId = Annotated[str, Meta(pattern=EVENT_ID_PATTERN, description="1-128 of [A-Za-z0-9._:-]")]
Tenant = Annotated[str, Meta(pattern=TENANT_REGEX)]
Timestamp = Annotated[datetime, Meta(tz=True, description="RFC 3339 with offset")]
Source = Annotated[str, Meta(min_length=1, max_length=64)]
Ref = Annotated[str, Meta(min_length=1, max_length=128)]
Text200 = Annotated[str, Meta(max_length=200)]
Text = Annotated[str, Meta(max_length=2000)]
Money = Annotated[str, Meta(pattern=MONEY_PATTERN, description="decimal string")]
Currency = Annotated[str, Meta(pattern=r"^[A-Z]{3}$", description="ISO 4217 code")]
Phone = Annotated[str, Meta(pattern=PHONE_PATTERN, description="E.164")]
Language = Annotated[str, Meta(pattern=LANGUAGE_PATTERN, description="BCP 47 tag")]
Country = Annotated[str, Meta(pattern=r"^[A-Za-z]{2}$", description="ISO 3166-1 alpha-2")]
Tag = Annotated[str, Meta(min_length=1, max_length=64)]
Email = Annotated[str, Meta(min_length=3, max_length=254)]
PropertyName = Annotated[str, Meta(pattern=PROPERTY_NAME_PATTERN)]
Scalar = str | int | float | bool
FieldValue = str | int | float | bool | list[str]
PropertyValue = str | int | float | bool | list[str | int | float | bool]


def money(value: str) -> Decimal:
    """A contract money string as an exact Decimal."""
    return Decimal(value)


class ContactInfo(Struct, frozen=True, kw_only=True, omit_defaults=True):
    email: Email
    phone: Phone | None = None
    first_name: Text200 | None = None
    last_name: Text200 | None = None
    language: Language | None = None
    country: Country | None = None
    city: Text200 | None = None
    postal_code: Text200 | None = None


class InboundEvent(Struct, frozen=True, kw_only=True, omit_defaults=True):
    event_id: EventId
    type: str
    tenant: Tenant
    occurred_at: Timestamp
    source: Source
    contact: ContactInfo
    schema_version: Annotated[int, Meta(ge=1)] = 1


class FormSubmitted(InboundEvent, frozen=True, kw_only=True):
    form_id: Ref
    form_name: Text200 | None = None
    fields: dict[Annotated[str, Meta(min_length=1, max_length=200)], FieldValue] | None = None
    properties: dict[PropertyName, PropertyValue] | None = None
    tags: list[Tag] | None = None
    page_url: Text | None = None


class SurveyCompleted(InboundEvent, frozen=True, kw_only=True):
    survey_id: Ref
    survey_name: Text200 | None = None
    answers: dict[Annotated[str, Meta(min_length=1, max_length=200)], PropertyValue] | None = None
    score: int | float | None = None
    tags: list[Tag] | None = None


class BookingMade(InboundEvent, frozen=True, kw_only=True):
    booking_id: Ref
    starts_at: Timestamp
    service: Text200 | None = None
    party_size: Annotated[int, Meta(ge=1)] | None = None
    tags: list[Tag] | None = None


class BookingCancelled(InboundEvent, frozen=True, kw_only=True):
    booking_id: Ref
    reason: Text | None = None


class BookingNoShow(InboundEvent, frozen=True, kw_only=True):
    booking_id: Ref


class PurchaseItem(Struct, frozen=True, kw_only=True, omit_defaults=True):
    sku: Ref | None = None
    name: Text200 | None = None
    quantity: Annotated[int, Meta(ge=1)] = 1
    unit_price: Money | None = None


class Amount(Struct, frozen=True, kw_only=True):
    """A sum of money: a decimal string and its ISO 4217 currency."""

    amount: Money
    currency: Currency


class PurchaseCompletedV1(InboundEvent, frozen=True, kw_only=True):
    """purchase_completed as contract version 1 has it: the total in two fields.
    Still accepted (it is the version of an event without schema_version); read as
    version 2 by ``purchase_completed_v1_to_v2``."""

    order_id: Ref
    total: Money
    currency: Currency
    items: list[PurchaseItem] | None = None
    tags: list[Tag] | None = None


class PurchaseCompleted(InboundEvent, frozen=True, kw_only=True):
    """purchase_completed, version 2 (``"schema_version": 2``): the total is one money
    object, so that an amount never travels without its currency."""

    order_id: Ref
    total: Amount
    items: list[PurchaseItem] | None = None
    tags: list[Tag] | None = None
    # Required and never omitted: without it a body is read as version 1.
    schema_version: Annotated[int, Meta(ge=2, le=2)]


def purchase_completed_v1_to_v2(old: InboundEvent) -> InboundEvent:
    """The upcaster of the wire contract: a version-1 purchase as version 2."""
    assert isinstance(old, PurchaseCompletedV1)
    fields = {f: getattr(old, f) for f in old.__struct_fields__
              if f not in ("total", "currency", "schema_version")}
    return PurchaseCompleted(**fields, total=Amount(amount=old.total, currency=old.currency),
                             schema_version=2)


class PurchaseRefunded(InboundEvent, frozen=True, kw_only=True):
    order_id: Ref
    amount: Money
    currency: Currency


class MemberSignedUp(InboundEvent, frozen=True, kw_only=True):
    member_id: Ref
    requires_approval: bool = False


class MemberApproved(InboundEvent, frozen=True, kw_only=True):
    member_id: Ref


class ListSubscribed(InboundEvent, frozen=True, kw_only=True):
    list_id: Ref
    double_opt_in: bool = False
    consent_text: Text | None = None


class ListConfirmed(InboundEvent, frozen=True, kw_only=True):
    list_id: Ref


class ListUnsubscribed(InboundEvent, frozen=True, kw_only=True):
    list_id: Annotated[Ref, Meta(description="a list id, or * for every list")]
    reason: Text | None = None


class EmailSent(InboundEvent, frozen=True, kw_only=True):
    message_id: Ref
    campaign_id: Ref | None = None
    list_id: Ref | None = None


class EmailOpened(InboundEvent, frozen=True, kw_only=True):
    message_id: Ref
    campaign_id: Ref | None = None
    machine_open: bool = False


class EmailClicked(InboundEvent, frozen=True, kw_only=True):
    message_id: Ref
    campaign_id: Ref | None = None
    url: Text | None = None


class EmailBounced(InboundEvent, frozen=True, kw_only=True):
    message_id: Ref
    bounce: Literal["hard", "soft"]


class EmailComplained(InboundEvent, frozen=True, kw_only=True):
    message_id: Ref


class ProductViewed(InboundEvent, frozen=True, kw_only=True):
    product_id: Ref
    product_name: Text200 | None = None


class CartUpdated(InboundEvent, frozen=True, kw_only=True):
    cart_id: Ref
    items_count: Annotated[int, Meta(ge=0)] | None = None
    value: Money | None = None
    currency: Currency | None = None


class ConsentChanged(InboundEvent, frozen=True, kw_only=True):
    channel: Literal["email", "sms", "whatsapp", "phone"]
    granted: bool
    text: Text | None = None


class ContactUpdated(InboundEvent, frozen=True, kw_only=True):
    properties: dict[PropertyName, PropertyValue] | None = None
    unset: list[PropertyName] | None = None
    tags_added: list[Tag] | None = None
    tags_removed: list[Tag] | None = None
    contact_type: Annotated[str, Meta(min_length=1, max_length=64)] | None = None
    lead_status: Annotated[str, Meta(min_length=1, max_length=64)] | None = None


class ContactErasureRequested(InboundEvent, frozen=True, kw_only=True):
    pass


EVENT_TYPES: dict[str, type[InboundEvent]] = {
    "form_submitted": FormSubmitted,
    "survey_completed": SurveyCompleted,
    "booking_made": BookingMade,
    "booking_cancelled": BookingCancelled,
    "booking_no_show": BookingNoShow,
    "purchase_completed": PurchaseCompleted,
    "purchase_refunded": PurchaseRefunded,
    "member_signed_up": MemberSignedUp,
    "member_approved": MemberApproved,
    "list_subscribed": ListSubscribed,
    "list_confirmed": ListConfirmed,
    "list_unsubscribed": ListUnsubscribed,
    "email_sent": EmailSent,
    "email_opened": EmailOpened,
    "email_clicked": EmailClicked,
    "email_bounced": EmailBounced,
    "email_complained": EmailComplained,
    "product_viewed": ProductViewed,
    "cart_updated": CartUpdated,
    "consent_changed": ConsentChanged,
    "contact_updated": ContactUpdated,
    "contact_erasure_requested": ContactErasureRequested,
}

# The newest contract version of each type (1 unless listed), and how older versions of
# a type are read: their Struct and the upcaster that turns one into the newest.
LATEST_VERSIONS: dict[str, int] = {"purchase_completed": 2}
OLDER_VERSIONS: dict[tuple[str, int], tuple[type[InboundEvent],
                                           Callable[[InboundEvent], InboundEvent]]] = {
    ("purchase_completed", 1): (PurchaseCompletedV1, purchase_completed_v1_to_v2),
}

# Fields a contact_updated.unset may name besides custom properties; email never.
UNSETTABLE_FIELDS = frozenset(
    {"phone", "first_name", "last_name", "language", "country", "city", "postal_code",
     "contact_type", "lead_status"}
)

_ = msgspec  # re-exported types depend on msgspec at import time
