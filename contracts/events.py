"""Contract v1 events as msgspec Structs: the wire contract agreed in ../shared/contract-v1.md.

Optional fields default to None, meaning "absent: leave the contact's value unchanged".
``null`` itself is refused by the decoder before these types are applied. Unknown extra
fields are ignored: the contract allows producers to add optional fields.

The Structs are the source of the JSON Schemas (``contracts/schemas``) and of the reference
``docs/events.md`` (``python -m contracts.events_doc``): a Struct's docstring says what the
event means and what ficha does with it, a field's ``Meta(description=...)`` what the field
means, and the description of an alias such as ``Money`` how its values are written.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Literal, get_args

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

# Fields a contact_updated.unset may name besides custom properties; email never.
UNSETTABLE_FIELDS = frozenset(
    {"phone", "first_name", "last_name", "language", "country", "city", "postal_code",
     "contact_type", "lead_status"}
)

# Value formats: each description says, in words, what a value of the alias looks like.
EventId = Annotated[str, Meta(pattern=EVENT_ID_PATTERN, description=(
    "string of 1-128 characters from A-Z a-z 0-9 . _ : -"))]
Tenant = Annotated[str, Meta(pattern=TENANT_REGEX, description=(
    "string of 1-63 lowercase letters, digits, _ or -, starting with a letter or digit"))]
Timestamp = Annotated[datetime, Meta(tz=True, description=(
    "RFC 3339 timestamp with offset, e.g. 2026-11-02T10:15:00+01:00"))]
Source = Annotated[str, Meta(min_length=1, max_length=64)]
Ref = Annotated[str, Meta(min_length=1, max_length=128)]
Text200 = Annotated[str, Meta(max_length=200)]
Text = Annotated[str, Meta(max_length=2000)]
Money = Annotated[str, Meta(pattern=MONEY_PATTERN, description=(
    "decimal string: an optional minus, 1-12 digits, then optionally a dot and 1-4 "
    "decimals, e.g. 59.90"))]
Currency = Annotated[str, Meta(pattern=r"^[A-Z]{3}$", description="ISO 4217 currency code")]
Phone = Annotated[str, Meta(pattern=PHONE_PATTERN, description=(
    "E.164 phone number, e.g. +34600111222"))]
Language = Annotated[str, Meta(pattern=LANGUAGE_PATTERN, description=(
    "BCP 47 language tag, e.g. es or es-MX"))]
Country = Annotated[str, Meta(pattern=r"^[A-Za-z]{2}$", description=(
    "ISO 3166-1 alpha-2 country code, e.g. ES"))]
Tag = Annotated[str, Meta(min_length=1, max_length=64)]
Email = Annotated[str, Meta(min_length=3, max_length=254)]
PropertyName = Annotated[str, Meta(pattern=PROPERTY_NAME_PATTERN, description=(
    "string of 1-64 characters from A-Z a-z 0-9 _ . -"))]
Scalar = str | int | float | bool
FieldValue = str | int | float | bool | list[str]
PropertyValue = str | int | float | bool | list[str | int | float | bool]
AnswerKey = Annotated[str, Meta(min_length=1, max_length=200)]
Label = Annotated[str, Meta(min_length=1, max_length=64)]

# The aliases whose description names a format: docs/events.md and the schemas' field
# descriptions recognise a value's format by these aliases' constraints.
FORMATS = (EventId, Tenant, Timestamp, Money, Currency, Phone, Language, Country,
           PropertyName)

# Fields shared by several event types: one meaning each.
Tags = Annotated[list[Tag], Meta(description=(
    "labels to add to the card; trimmed, and compared without regard to case"))]
Properties = Annotated[dict[PropertyName, PropertyValue], Meta(description=(
    "custom properties to set on the card, name to value; a property the tenant has "
    "defined must have a value of its type"))]
MessageId = Annotated[Ref, Meta(description="the email service's id of the message")]
CampaignId = Annotated[Ref, Meta(description="the campaign the message belongs to")]
ListId = Annotated[Ref, Meta(description="the mailing list's id")]
BookingId = Annotated[Ref, Meta(description="the booking's id, as in its booking_made")]
MemberId = Annotated[Ref, Meta(description="the member's id in the member area")]
OrderId = Annotated[Ref, Meta(description="the order's id in the store")]
OrderTotal = Meta(description="what the whole order cost")


def money(value: str) -> Decimal:
    """A contract money string as an exact Decimal."""
    return Decimal(value)


class ContactInfo(Struct, frozen=True, kw_only=True, omit_defaults=True):
    """Who the event is about: their email address and what the source knows of them.

    Each profile field present sets that field on the card, unless a later event has set
    it already; an absent field leaves the card's value alone. To clear one, send
    contact_updated with ``unset``."""

    email: Annotated[Email, Meta(description=(
        "the contact's identity within the tenant: trimmed and lowercased, then it must be "
        "a valid address"))]
    phone: Phone | None = None
    first_name: Text200 | None = None
    last_name: Text200 | None = None
    language: Annotated[Language, Meta(description="the language the person prefers")] | None = None
    country: Country | None = None
    city: Text200 | None = None
    postal_code: Text200 | None = None


class InboundEvent(Struct, frozen=True, kw_only=True, omit_defaults=True):
    """The envelope: the fields every inbound event carries, whatever its type.

    ficha keeps one contact per tenant and email address; the first event about an
    address creates its contact. Each event is applied once per tenant and ``event_id``,
    however often it is delivered. When two events set the same value, the one that
    happened later (``occurred_at``, ties to the greater ``event_id``) wins, so the order in
    which events arrive never changes a card. Every event but an erasure request adds one
    entry to the contact's timeline."""

    event_id: Annotated[EventId, Meta(description=(
        "the producer's id of this event, unique within the tenant: a retry sends the same "
        "id, and ficha applies an id once, for ever"))]
    type: Annotated[str, Meta(description="the event type; equal to the subject's `<type>` token")]
    tenant: Annotated[Tenant, Meta(description=(
        "the account the event belongs to; equal to the subject's `<tenant>` token"))]
    occurred_at: Annotated[Timestamp, Meta(description=(
        "when it happened at the source: decides which value wins and orders the timeline"))]
    source: Annotated[Source, Meta(description=(
        "the service that produced the event, e.g. site-builder, store; kept with the "
        "timeline entry"))]
    contact: Annotated[ContactInfo, Meta(description="who the event is about")]
    schema_version: Annotated[int, Meta(ge=1, description=(
        "the version of this type's shape; without it, version 1"))] = 1


class FormSubmitted(InboundEvent, frozen=True, kw_only=True):
    """Someone sent a form on one of the tenant's sites.

    The timeline keeps the form with its raw answers; ``properties`` are the answers the
    form maps onto the card's custom properties, and ``tags`` are added to the card. Counts
    as the person's activity and as an interaction (engagement)."""

    form_id: Annotated[Ref, Meta(description="the form's id at the producer")]
    form_name: Annotated[Text200, Meta(description=(
        "shown on the timeline instead of form_id"))] | None = None
    fields: Annotated[dict[AnswerKey, FieldValue], Meta(description=(
        "every answer as the form sent it, by field name; kept on the timeline "
        "only"))] | None = None
    properties: Properties | None = None
    tags: Tags | None = None
    page_url: Annotated[Text, Meta(description="the page the form was on")] | None = None


class SurveyCompleted(InboundEvent, frozen=True, kw_only=True):
    """Someone finished a survey.

    The timeline keeps the survey with its answers and score; ``tags`` are added to the
    card. Counts as activity and as an interaction."""

    survey_id: Annotated[Ref, Meta(description="the survey's id at the producer")]
    survey_name: Annotated[Text200, Meta(description=(
        "shown on the timeline instead of survey_id"))] | None = None
    answers: Annotated[dict[AnswerKey, PropertyValue], Meta(description=(
        "the answers by question; kept on the timeline only"))] | None = None
    score: Annotated[int | float, Meta(description=(
        "the survey's overall result, if it has one"))] | None = None
    tags: Tags | None = None


class BookingMade(InboundEvent, frozen=True, kw_only=True):
    """Someone booked an appointment, a class or a table.

    The timeline shows the booking; ``tags`` are added to the card. Counts as activity and
    as an interaction."""

    booking_id: Annotated[Ref, Meta(description="the booking's id at the producer")]
    starts_at: Annotated[Timestamp, Meta(description="when the booked time begins")]
    service: Annotated[Text200, Meta(description="what was booked")] | None = None
    party_size: Annotated[int, Meta(ge=1, description=(
        "how many people the booking is for"))] | None = None
    tags: Tags | None = None


class BookingCancelled(InboundEvent, frozen=True, kw_only=True):
    """A booking was called off.

    Shown on the timeline, and counted as the person's activity (but not as an
    interaction: it shows no interest)."""

    booking_id: BookingId
    reason: Annotated[Text, Meta(description="why, in words")] | None = None


class BookingNoShow(InboundEvent, frozen=True, kw_only=True):
    """The person did not turn up for a booking. Shown on the timeline; not activity."""

    booking_id: BookingId


class PurchaseItem(Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One line of an order, kept on the timeline."""

    sku: Annotated[Ref, Meta(description="the product's stock-keeping code")] | None = None
    name: Annotated[Text200, Meta(description="the product's name")] | None = None
    quantity: Annotated[int, Meta(ge=1, description="how many units")] = 1
    unit_price: Annotated[Money, Meta(description=(
        "the price of one unit, in the order's currency"))] | None = None


class Amount(Struct, frozen=True, kw_only=True):
    """A sum of money: a decimal string and its ISO 4217 currency."""

    amount: Money
    currency: Currency


class PurchaseCompletedV1(InboundEvent, frozen=True, kw_only=True):
    """An order was paid, in version 1's shape: the total and its currency in two fields.

    Still accepted, and the version of an event without ``schema_version``; ficha reads it
    as version 2 (``purchase_completed_v1_to_v2``), so it has the same effects."""

    order_id: OrderId
    total: Annotated[Money, OrderTotal]
    currency: Annotated[Currency, Meta(description="the currency of total")]
    items: Annotated[list[PurchaseItem], Meta(description="the order's lines")] | None = None
    tags: Tags | None = None


class PurchaseCompleted(InboundEvent, frozen=True, kw_only=True):
    """An order was paid (version 2, sent with ``"schema_version": 2``).

    The total is one object holding amount and currency, so that an amount never travels
    without its currency. The timeline shows the order and ``tags`` are added to the card.
    The purchase counts as activity and as an interaction, sets the contact's last
    purchase, and feeds RFM: recency, frequency, and the money spent in the tenant's
    primary currency."""

    order_id: OrderId
    total: Annotated[Amount, OrderTotal]
    items: Annotated[list[PurchaseItem], Meta(description="the order's lines")] | None = None
    tags: Tags | None = None
    # Required and never omitted: without it a body is read as version 1.
    schema_version: Annotated[int, Meta(ge=2, le=2, description=(
        "2: this shape; without it, the body is read as version 1"))]


def purchase_completed_v1_to_v2(old: InboundEvent) -> InboundEvent:
    """The upcaster of the wire contract: a version-1 purchase as version 2."""
    assert isinstance(old, PurchaseCompletedV1)
    fields = {f: getattr(old, f) for f in old.__struct_fields__
              if f not in ("total", "currency", "schema_version")}
    return PurchaseCompleted(**fields, total=Amount(amount=old.total, currency=old.currency),
                             schema_version=2)


class PurchaseRefunded(InboundEvent, frozen=True, kw_only=True):
    """Money was given back on an order, in whole or in part.

    Shown on the timeline; not activity. RFM counts the money spent as purchases minus
    refunds."""

    order_id: OrderId
    amount: Annotated[Money, Meta(description="how much was given back")]
    currency: Annotated[Currency, Meta(description="the currency of amount")]


class MemberSignedUp(InboundEvent, frozen=True, kw_only=True):
    """Someone signed up in the tenant's member area.

    The card's membership becomes ``pending_approval`` when ``requires_approval``, else
    ``active``. Counts as activity."""

    member_id: MemberId
    requires_approval: Annotated[bool, Meta(description=(
        "true when staff must approve the member first (member_approved follows)"))] = False


class MemberApproved(InboundEvent, frozen=True, kw_only=True):
    """Staff approved a membership: the card's membership becomes ``active``."""

    member_id: MemberId


class ListSubscribed(InboundEvent, frozen=True, kw_only=True):
    """Someone subscribed to a mailing list.

    The list's state on the card becomes ``subscribed``, or ``pending`` until
    list_confirmed when ``double_opt_in``. Counts as activity."""

    list_id: ListId
    double_opt_in: Annotated[bool, Meta(description=(
        "true when the person must still confirm (list_confirmed) before the subscription "
        "counts"))] = False
    consent_text: Annotated[Text, Meta(description=(
        "the wording the person agreed to, kept on the timeline as a record"))] | None = None


class ListConfirmed(InboundEvent, frozen=True, kw_only=True):
    """The person confirmed a double opt-in subscription: the list becomes ``subscribed``.
    Counts as activity."""

    list_id: ListId


class ListUnsubscribed(InboundEvent, frozen=True, kw_only=True):
    """Someone left a mailing list, or every list.

    The list's state becomes ``unsubscribed``. With ``list_id`` ``*``, every subscription
    older than this event ends; a later subscription counts again. Counts as activity."""

    list_id: Annotated[Ref, Meta(description="a list id, or * for every list")]
    reason: Annotated[Text, Meta(description="why, in words")] | None = None


class EmailSent(InboundEvent, frozen=True, kw_only=True):
    """The email service sent the contact a message. Shown on the timeline; not activity."""

    message_id: MessageId
    campaign_id: CampaignId | None = None
    list_id: Annotated[Ref, Meta(description="the list it was sent to")] | None = None


class EmailOpened(InboundEvent, frozen=True, kw_only=True):
    """The contact opened a message: activity and an interaction, unless ``machine_open``."""

    message_id: MessageId
    campaign_id: CampaignId | None = None
    machine_open: Annotated[bool, Meta(description=(
        "true when a mail privacy proxy opened it by itself: kept on the timeline, but no "
        "sign of interest"))] = False


class EmailClicked(InboundEvent, frozen=True, kw_only=True):
    """The contact followed a link in a message: activity and an interaction."""

    message_id: MessageId
    campaign_id: CampaignId | None = None
    url: Annotated[Text, Meta(description="the link followed")] | None = None


class EmailBounced(InboundEvent, frozen=True, kw_only=True):
    """A message could not be delivered.

    A hard bounce suppresses email to the contact: the lists they had joined before it
    show as ``suppressed``. Soft bounces do the same once the tenant's soft bounce limit
    (3 unless set) is reached. Not activity."""

    message_id: MessageId
    bounce: Annotated[Literal["hard", "soft"], Meta(description=(
        "hard: the address does not work; soft: a failure that may pass"))]


class EmailComplained(InboundEvent, frozen=True, kw_only=True):
    """The contact reported a message as spam: email to them is suppressed, as after a
    hard bounce."""

    message_id: MessageId


class ProductViewed(InboundEvent, frozen=True, kw_only=True):
    """The contact looked at a product in the tenant's store: activity and an
    interaction."""

    product_id: Annotated[Ref, Meta(description="the product's id in the store")]
    product_name: Annotated[Text200, Meta(description=(
        "shown on the timeline instead of product_id"))] | None = None


class CartUpdated(InboundEvent, frozen=True, kw_only=True):
    """The contact's shopping cart changed: activity and an interaction."""

    cart_id: Annotated[Ref, Meta(description="the cart's id in the store")]
    items_count: Annotated[int, Meta(ge=0, description=(
        "how many items the cart now holds"))] | None = None
    value: Annotated[Money, Meta(description=(
        "what the cart's contents are worth now"))] | None = None
    currency: Annotated[Currency, Meta(description="the currency of value")] | None = None


ConsentChannel = Literal["email", "sms", "whatsapp", "phone"]
# The channels consent is kept for, in this order wherever they are listed (card columns,
# SQL views, imports, segment rules).
CONSENT_CHANNELS: tuple[str, ...] = get_args(ConsentChannel)


class ConsentChanged(InboundEvent, frozen=True, kw_only=True):
    """The contact gave or withdrew consent to be contacted on a channel.

    Sets the card's consent for that channel, and ficha keeps every consent fact with the
    event that carried it. Counts as activity."""

    channel: Annotated[ConsentChannel, Meta(description=(
        "the channel the consent is for"))]
    granted: Annotated[bool, Meta(description="true: consent given; false: withdrawn")]
    text: Annotated[Text, Meta(description="the wording the person was shown")] | None = None


class ContactUpdated(InboundEvent, frozen=True, kw_only=True):
    """A change to the card made by staff or another system rather than by the person.

    Sets custom properties, clears fields or properties, adds and removes tags, and sets
    the contact type and lead status. Shown on the timeline as a card update; not
    activity."""

    properties: Properties | None = None
    unset: Annotated[list[PropertyName], Meta(description=(
        f"what to clear: card fields ({', '.join(sorted(UNSETTABLE_FIELDS))}) or custom "
        "properties by name; never email"))] | None = None
    tags_added: Annotated[list[Tag], Meta(description="labels to add to the card")] | None = None
    tags_removed: Annotated[list[Tag], Meta(description=(
        "labels to take off the card"))] | None = None
    contact_type: Annotated[Label, Meta(description=(
        "the tenant's kind of contact, such as client, supplier or partner; one of the "
        "tenant's contact types once it lists any"))] | None = None
    lead_status: Annotated[Label, Meta(description=(
        "where the contact stands as a lead; one of the tenant's lead statuses once it "
        "lists any"))] | None = None


class ContactErasureRequested(InboundEvent, frozen=True, kw_only=True):
    """The person asked for their personal data to be erased.

    ficha erases the contact: its personal data becomes unreadable, it leaves every
    segment, and ``contact_erased`` is published to automation services. Events about the
    person that happened before the request and arrive later are set aside; one that
    happened after it starts the contact afresh."""


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

_ = msgspec  # re-exported types depend on msgspec at import time
