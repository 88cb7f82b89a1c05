"""Schema evolution: purchase_completed version 2 (the total as one money object).

Old producers (version 1, or no schema_version) are still accepted and mean the same;
events stored by the version-1 code still load (through ``Contact.Recorded``'s upcaster)
and project to the same read models as events stored now.
"""

from __future__ import annotations

import json
from typing import Any
from unittest import mock

import msgspec
import pytest
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from contracts.decode import Rejection, decode
from contracts.events import Amount, PurchaseCompleted
from projections.audience import AudienceProjection
from projections.contacts import ContactsProjection
from projections.db import ViewDatabase
from projections.runner import ProjectionRunner
from services.config import Settings
from services.domain.contact import Contact
from services.domain.identity import ContactIdentity
from services.store.contact_store import ContactStore
from tests.backends import make_settings
from tests.factories import event_dict

V1 = {"order_id": "o-1", "total": "59.90", "currency": "EUR",
      "items": [{"sku": "SKU-1", "quantity": 2, "unit_price": "29.95"}], "tags": ["web"]}
V2 = {"schema_version": 2, "order_id": "o-1", "total": {"amount": "59.90", "currency": "EUR"},
      "items": [{"sku": "SKU-1", "quantity": 2, "unit_price": "29.95"}], "tags": ["web"]}


def decoded(body: dict[str, Any]) -> Any:
    return decode("ficha.in.acme.purchase_completed", json.dumps(body).encode())


def test_version_1_and_version_2_mean_the_same_purchase() -> None:
    old = decoded(event_dict("purchase_completed", event_id="p1", **V1))
    explicit = decoded(event_dict("purchase_completed", event_id="p1", schema_version=1, **V1))
    new = decoded(event_dict("purchase_completed", event_id="p1", **V2))
    assert isinstance(new, PurchaseCompleted)
    assert old == explicit == new
    assert new.total == Amount(amount="59.90", currency="EUR")


@pytest.mark.parametrize(("body", "code", "words"), [
    ({**V2, "schema_version": 3}, "unsupported_schema_version", "up to 2"),
    ({**V2, "schema_version": 1}, "invalid_field", "total"),  # a v2 body marked v1
    ({**V1, "schema_version": 2}, "invalid_field", "total"),  # a v1 body marked v2
    ({**V2, "total": {"amount": "1.00", "currency": "XXX"}}, "invalid_field",
     "total.currency"),
    ({**V2, "total": {"amount": "1.00"}}, "missing_field", "currency"),
])
def test_a_mismatched_version_is_refused_in_words(body: dict[str, Any], code: str,
                                                  words: str) -> None:
    result = decoded(event_dict("purchase_completed", event_id="p1", **body))
    assert isinstance(result, Rejection), result
    assert result.code == code and words in result.detail, result


def test_other_types_are_still_at_version_1() -> None:
    result = decode("ficha.in.acme.form_submitted", json.dumps(event_dict(
        "form_submitted", event_id="f", form_id="x", schema_version=2)).encode())
    assert isinstance(result, Rejection) and result.code == "unsupported_schema_version"
    assert "form_submitted" in result.detail and "up to 1" in result.detail


@hsettings(max_examples=100, deadline=None)
@given(st.decimals(min_value=0, max_value=10**6, places=2), st.sampled_from(["EUR", "USD"]),
       st.booleans())
def test_any_purchase_round_trips_as_version_2(amount: Any, currency: str, as_v2: bool) -> None:
    money = f"{amount:.2f}"
    fields = ({"schema_version": 2, "total": {"amount": money, "currency": currency}}
              if as_v2 else {"total": money, "currency": currency})
    first = decoded(event_dict("purchase_completed", event_id="p", order_id="o", **fields))
    assert isinstance(first, PurchaseCompleted)
    again = decode("ficha.in.acme.purchase_completed", msgspec.json.encode(first))
    assert again == first and first.total.amount == money


# ---------------------------------------------------------------- stored events


def store_as_version_1_code_did(store: ContactStore, settings: Settings) -> None:
    """Ana's purchase, stored exactly as the version-1 code stored it: a Recorded event
    without class_version whose timeline data holds total and currency as two fields
    (sealed with her data key like any personal event)."""
    event = decoded(event_dict("purchase_completed", event_id="p1", **V1))
    contact_id = ContactIdentity(settings.id_key).contact_id("acme", "ana@example.com")
    contact = Contact.register(contact_id, "acme", "ana@example.com")
    contact.record(event)
    recorded = contact.pending_events[-1]
    assert isinstance(recorded, Contact.Recorded)
    data = recorded.entry["data"]
    data["currency"] = data["total"]["currency"]
    data["total"] = data["total"]["amount"]
    with mock.patch.object(Contact.Recorded, "class_version", 1):
        store.commit([contact], tracking=None, received=[])


def store_as_today(store: ContactStore, settings: Settings) -> None:
    event = decoded(event_dict("purchase_completed", event_id="p1", **V2))
    contact_id = ContactIdentity(settings.id_key).contact_id("acme", "ana@example.com")
    contact = Contact.register(contact_id, "acme", "ana@example.com")
    contact.record(event)
    store.commit([contact], tracking=None, received=[])


def read_models(settings: Settings) -> dict[str, Any]:
    store = ContactStore(settings)
    views = ViewDatabase(settings)
    try:
        for projection in (ContactsProjection(), AudienceProjection()):
            runner = ProjectionRunner(store, views, projection)
            runner.setup()
            runner.catch_up()
        contact_id = ContactIdentity(settings.id_key).contact_id("acme", "ana@example.com")
        [contact] = store.load_many([contact_id]).values()
        with views.reading() as cur:
            cur.execute("SELECT summary, data FROM timeline")
            timeline = [(r["summary"], _json(r["data"])) for r in cur.fetchall()]
            cur.execute("SELECT purchases_count FROM contacts")
            purchases = [r["purchases_count"] for r in cur.fetchall()]
            cur.execute("SELECT doc FROM audience_facts")
            facts = [_json(r["doc"])["activity"] for r in cur.fetchall()]
        return {"timeline": timeline, "purchases": purchases, "facts": facts,
                "card": contact.card()}
    finally:
        views.close()
        store.close()


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str | bytes) else value


def test_events_stored_by_version_1_code_load_and_project_as_today(
        settings: Settings, tmp_path: Any, request: pytest.FixtureRequest) -> None:
    old_store = ContactStore(settings)
    store_as_version_1_code_did(old_store, settings)
    old_store.close()
    if settings.postgres is not None:
        other = make_settings(tmp_path / "today", postgres_dsn=request.getfixturevalue(
            "postgres_dsn"), schema=settings.postgres.schema + "_today")
    else:
        other = make_settings(tmp_path / "today")
    new_store = ContactStore(other)
    store_as_today(new_store, other)
    new_store.close()
    try:
        old, new = read_models(settings), read_models(other)
        assert old == new
        [(summary, data)] = old["timeline"]
        assert summary == "Paid order o-1: 59.90 EUR"
        assert data["total"] == {"amount": "59.90", "currency": "EUR"}
        assert old["purchases"] == [1]
        assert old["facts"][0]["purchase"][0][1:] == ["59.90", "EUR"]
    finally:
        if other.postgres is not None:
            import psycopg

            with psycopg.connect(request.getfixturevalue("postgres_dsn"),
                                 autocommit=True) as conn:
                conn.execute(f"DROP SCHEMA IF EXISTS {other.postgres.schema} CASCADE")
