"""A realistic, deterministic synthetic history of contract-v1 events (no I/O).

A Zipf-skewed population (a few contacts do a lot, most do one or two things) in several
languages and countries does what a booking / e-commerce site's visitors do: forms,
surveys, bookings with cancellations and no-shows, purchases and refunds, member sign-ups,
list subscriptions with double opt-in, email sends, opens (some by privacy proxies),
clicks and bounces, product views, carts, consent changes and staff edits. Causal chains
hold per contact (a cancel follows its booking, a refund its order, a confirm its
double-opt-in subscribe, an open its send). A few percent of events are published late.
Same arguments, same events, byte for byte.
"""

from __future__ import annotations

import bisect
import itertools
import random
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

DEFAULT_START = datetime(2025, 10, 1, tzinfo=UTC)
# ``ficha demo`` starts its history this many days before today: a history of the default
# span covers about 340 of its 400 days (a visit yields more than one event), so it ends
# about three weeks before today, and a demo run today has recent activity and engaged
# contacts (a fixed start would drift further into the past every day).
DEMO_DAYS_BACK = 360


def demo_start(now: datetime) -> datetime:
    """The start of ``ficha demo``'s history when none is given: midnight UTC,
    ``DEMO_DAYS_BACK`` days before ``now``."""
    midnight = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return midnight - timedelta(days=DEMO_DAYS_BACK)

LOCALES = [
    # language, country, currency, tz offset hours, weight
    ("es", "ES", "EUR", 1, 30), ("es-MX", "MX", "MXN", -6, 12), ("en", "US", "USD", -5, 14),
    ("en-GB", "GB", "GBP", 0, 8), ("fr", "FR", "EUR", 1, 8), ("de", "DE", "EUR", 1, 7),
    ("pt-BR", "BR", "BRL", -3, 7), ("it", "IT", "EUR", 1, 5), ("ca", "ES", "EUR", 1, 4),
    ("es", "AR", "ARS", -3, 3), ("es", "CO", "COP", -5, 2),
]
NAMES = {
    "es": (["Ana", "Lucía", "Carmen", "Javier", "Pablo", "Sofía", "Diego", "Marta", "Hugo"],
           ["García", "López", "Martín", "Sánchez", "Pérez", "Gómez", "Ruiz", "Díaz"]),
    "en": (["Emma", "Olivia", "James", "Liam", "Noah", "Ava", "Mia", "Jack"],
           ["Smith", "Jones", "Brown", "Taylor", "Wilson", "Evans", "Walker"]),
    "fr": (["Louise", "Jules", "Camille", "Hugo", "Léa", "Arthur"],
           ["Martin", "Bernard", "Dubois", "Thomas", "Robert", "Petit"]),
    "de": (["Lena", "Paul", "Mia", "Felix", "Emma", "Jonas"],
           ["Müller", "Schmidt", "Schneider", "Fischer", "Weber"]),
    "pt": (["Maria", "João", "Ana", "Pedro", "Beatriz", "Lucas"],
           ["Silva", "Santos", "Oliveira", "Souza", "Costa"]),
    "it": (["Giulia", "Marco", "Sofia", "Luca", "Chiara"],
           ["Rossi", "Russo", "Ferrari", "Esposito", "Bianchi"]),
    "ca": (["Marc", "Laia", "Jordi", "Núria", "Pau"], ["Puig", "Vidal", "Soler", "Ferrer"]),
}
CITIES = {
    "ES": ["Madrid", "Barcelona", "Sevilla", "Valencia", "Bilbao", "Málaga"],
    "MX": ["Ciudad de México", "Guadalajara", "Monterrey", "Puebla"],
    "US": ["New York", "Austin", "Chicago", "Seattle", "Miami"],
    "GB": ["London", "Manchester", "Bristol", "Leeds"], "FR": ["Paris", "Lyon", "Marseille"],
    "DE": ["Berlin", "München", "Hamburg", "Köln"], "BR": ["São Paulo", "Rio de Janeiro"],
    "IT": ["Roma", "Milano", "Torino"], "AR": ["Buenos Aires", "Córdoba"],
    "CO": ["Bogotá", "Medellín"],
}
PHONE_PREFIX = {"ES": "+346", "MX": "+5255", "US": "+1415", "GB": "+447", "FR": "+336",
                "DE": "+4915", "BR": "+55119", "IT": "+393", "AR": "+54911", "CO": "+573"}
DOMAINS = ["gmail.com", "hotmail.com", "yahoo.com", "outlook.com", "icloud.com", "proton.me",
           "example.com", "correo.es", "web.de", "orange.fr"]
TAGS = ["VIP", "Lead", "Newsletter", "Wholesale", "Returning", "No-show", "Birthday",
        "Instagram", "Referral"]
PRODUCTS = [("sku-tee", "Organic T-shirt", "19.90"), ("sku-mug", "Ceramic mug", "12.50"),
            ("sku-bag", "Tote bag", "24.00"), ("sku-cap", "Cap", "15.00"),
            ("sku-box", "Gift box", "49.90"), ("sku-card", "Gift card", "30.00")]
SERVICES = ["Dinner", "Lunch", "Haircut", "Massage", "Yoga class", "Consultation"]
FORMS = [("contact-us", "Contact us"), ("newsletter-popup", "Newsletter pop-up"),
         ("quote-request", "Request a quote")]
LISTS = ["newsletter", "offers", "events"]
SOURCES = {
    "form_submitted": "site-builder", "survey_completed": "surveys", "booking": "booking",
    "store": "store", "member": "members", "email": "email", "list": "email",
    "consent_changed": "site-builder", "contact_updated": "crm",
}

# Kinds of visit and how often they happen (a visit may emit a causal chain of events).
ACTIONS = [
    ("form", 14), ("survey", 3), ("booking", 9), ("purchase", 9), ("member", 3),
    ("subscribe", 7), ("campaign", 22), ("view", 14), ("cart", 6), ("consent", 4),
    ("update", 5), ("unsubscribe", 2),
]


@dataclass
class Person:
    email: str
    first_name: str
    last_name: str
    language: str
    country: str
    currency: str
    offset: int
    city: str
    phone: str | None
    bookings: list[str] = field(default_factory=list)
    orders: list[tuple[str, str, str]] = field(default_factory=list)
    pending_lists: list[str] = field(default_factory=list)
    member_pending: str | None = None
    introduced: bool = False


def _money(amount: float) -> str:
    return f"{amount:.2f}"


class _Generator:
    def __init__(self, tenant: str, seed: int, start: datetime, days: int,
                 n_contacts: int, until: datetime | None = None) -> None:
        self.tenant = tenant
        # Visits start no later than this: their events (up to 10 hours into a visit)
        # then stay before ``until``, however the random steps fall.
        self.last_visit = None if until is None else until - timedelta(hours=12)
        self.seed = seed
        self.rnd = random.Random(f"{tenant}:{seed}")
        self.start = start
        self.span = timedelta(days=days)
        self.counter = itertools.count()
        self.people = [self._person(i) for i in range(n_contacts)]
        weights = [1.0 / (i + 1) ** 1.07 for i in range(n_contacts)]
        self.cum = list(itertools.accumulate(weights))
        self.action_names = [a for a, _ in ACTIONS]
        self.action_cum = list(itertools.accumulate(w for _, w in ACTIONS))

    def _person(self, i: int) -> Person:
        rnd = self.rnd
        language, country, currency, offset, _ = rnd.choices(
            LOCALES, weights=[loc[4] for loc in LOCALES])[0]
        firsts, lasts = NAMES[language.split("-")[0]]
        first, last = rnd.choice(firsts), rnd.choice(lasts)
        local = f"{first}.{last}{i}".lower()
        local = local.translate(str.maketrans("áéíóúüñçàèìòùöäßãâêô", "aeiouuncaeiouoasaaeo"))
        phone = None
        if rnd.random() < 0.6:
            phone = PHONE_PREFIX[country] + "".join(rnd.choice("0123456789") for _ in range(7))
        return Person(email=f"{local}@{rnd.choice(DOMAINS)}", first_name=first, last_name=last,
                      language=language, country=country, currency=currency, offset=offset,
                      city=rnd.choice(CITIES[country]), phone=phone)

    # ------------------------------------------------------------------ helpers

    def stamp(self, moment: datetime, person: Person) -> str:
        return moment.astimezone(timezone(timedelta(hours=person.offset))).isoformat(
            timespec="seconds"
        )

    def envelope(self, kind: str, person: Person, moment: datetime, group: str) -> dict[str, Any]:
        rnd = self.rnd
        email = person.email
        if rnd.random() < 0.08:  # producers do not always normalise
            email = f" {email.capitalize()} " if rnd.random() < 0.5 else email.upper()
        contact: dict[str, Any] = {"email": email}
        if not person.introduced or rnd.random() < 0.15:
            person.introduced = True
            contact.update(first_name=person.first_name, last_name=person.last_name,
                           language=person.language, country=person.country,
                           city=person.city)
            if person.phone:
                contact["phone"] = person.phone
            if rnd.random() < 0.3:
                contact["postal_code"] = f"{rnd.randint(1000, 99999):05d}"
        event: dict[str, Any] = {
            "event_id": f"demo-{self.seed}-{next(self.counter)}",
            "type": kind,
            "tenant": self.tenant,
            "occurred_at": self.stamp(moment, person),
            "source": SOURCES.get(kind, SOURCES.get(group, "site-builder")),
            "contact": contact,
        }
        if rnd.random() < 0.2:
            event["schema_version"] = 1
        return event

    def tags(self, k: int = 2) -> list[str]:
        out = []
        for _ in range(self.rnd.randint(0, k)):
            tag = self.rnd.choice(TAGS)
            if self.rnd.random() < 0.1:
                tag = f" {tag.lower()} "
            out.append(tag)
        return out

    # ------------------------------------------------------------------ visits

    def visit(self, person: Person, moment: datetime) -> list[dict[str, Any]]:
        rnd = self.rnd
        action = self.action_names[
            bisect.bisect(self.action_cum, rnd.random() * self.action_cum[-1])]
        later = moment + timedelta(minutes=rnd.randint(2, 600))
        e = self.envelope
        if action == "form":
            form_id, form_name = rnd.choice(FORMS)
            size = rnd.randint(35, 45)
            ev = e("form_submitted", person, moment, "form")
            ev.update(form_id=form_id, form_name=form_name,
                      fields={"message": "¿Tenéis disponibilidad?", "shoe_size": str(size),
                              "accepts_terms": True},
                      properties={"shoe_size": size, "interest": rnd.choice(
                          ["shoes", "bags", "gifts", "events"])},
                      tags=self.tags(), page_url=f"https://shop.example.com/{form_id}")
            return [ev]
        if action == "survey":
            ev = e("survey_completed", person, moment, "survey_completed")
            ev.update(survey_id="nps-2026", survey_name="How did we do?",
                      answers={"recommend": rnd.randint(0, 10), "liked": ["service", "price"]},
                      score=rnd.randint(0, 10))
            return [ev]
        if action == "booking":
            if person.bookings and rnd.random() < 0.3:
                booking_id = person.bookings.pop()
                if rnd.random() < 0.6:
                    ev = e("booking_cancelled", person, moment, "booking")
                    ev.update(booking_id=booking_id, reason=rnd.choice(
                        ["Change of plans", "Illness", "Found another date"]))
                else:
                    ev = e("booking_no_show", person, moment, "booking")
                    ev.update(booking_id=booking_id)
                return [ev]
            booking_id = f"bk-{self.seed}-{next(self.counter)}"
            person.bookings.append(booking_id)
            starts = moment + timedelta(days=rnd.randint(1, 30), hours=rnd.randint(0, 10))
            ev = e("booking_made", person, moment, "booking")
            ev.update(booking_id=booking_id, starts_at=self.stamp(starts, person),
                      service=rnd.choice(SERVICES), party_size=rnd.randint(1, 6),
                      tags=self.tags(1))
            return [ev]
        if action == "purchase":
            if person.orders and rnd.random() < 0.12:
                order_id, total, currency = person.orders.pop()
                ev = e("purchase_refunded", person, moment, "store")
                amount = total if rnd.random() < 0.5 else _money(float(total) / 2)
                ev.update(order_id=order_id, amount=amount, currency=currency)
                return [ev]
            items: list[dict[str, Any]] = []
            for sku, name, price in rnd.sample(PRODUCTS, rnd.randint(1, 3)):
                items.append({"sku": sku, "name": name, "quantity": rnd.randint(1, 3),
                              "unit_price": price})
            total = _money(sum(float(i["unit_price"]) * i["quantity"] for i in items))
            order_id = f"ord-{self.seed}-{next(self.counter)}"
            person.orders.append((order_id, total, person.currency))
            ev = e("purchase_completed", person, moment, "store")
            ev.update(order_id=order_id, items=items, tags=self.tags(1))
            # Two generations of the store: the newer publishes contract version 2.
            if rnd.random() < 0.5:
                ev.update(schema_version=2, total={"amount": total, "currency": person.currency})
            else:
                ev.update(total=total, currency=person.currency)
            return [ev]
        if action == "member":
            if person.member_pending:
                ev = e("member_approved", person, moment, "member")
                ev.update(member_id=person.member_pending)
                person.member_pending = None
                return [ev]
            member_id = f"mem-{self.seed}-{next(self.counter)}"
            approval = rnd.random() < 0.3
            ev = e("member_signed_up", person, moment, "member")
            ev.update(member_id=member_id, requires_approval=approval)
            if approval:
                person.member_pending = member_id
            return [ev]
        if action == "subscribe":
            list_id = rnd.choice(LISTS)
            double = rnd.random() < 0.5
            ev = e("list_subscribed", person, moment, "list")
            ev.update(list_id=list_id, double_opt_in=double,
                      consent_text="Quiero recibir novedades por email")
            out = [ev]
            if double and rnd.random() < 0.8:
                confirm = e("list_confirmed", person, later, "list")
                confirm.update(list_id=list_id)
                out.append(confirm)
            return out
        if action == "unsubscribe":
            ev = e("list_unsubscribed", person, moment, "list")
            ev.update(list_id="*" if rnd.random() < 0.2 else rnd.choice(LISTS),
                      reason=rnd.choice(["Too many emails", "Not interested"]))
            return [ev]
        if action == "campaign":
            message_id = f"msg-{self.seed}-{next(self.counter)}"
            campaign = rnd.choice(["black-friday", "spring-sale", "welcome", "events-june"])
            sent = e("email_sent", person, moment, "email")
            sent.update(message_id=message_id, campaign_id=campaign,
                        list_id=rnd.choice(LISTS))
            out = [sent]
            roll = rnd.random()
            if roll < 0.03:
                bounce = e("email_bounced", person, later, "email")
                bounce.update(message_id=message_id, bounce="hard" if rnd.random() < 0.4
                              else "soft")
                return out + [bounce]
            if roll < 0.035:
                complaint = e("email_complained", person, later, "email")
                complaint.update(message_id=message_id)
                return out + [complaint]
            if rnd.random() < 0.2:
                machine = e("email_opened", person, moment + timedelta(seconds=30), "email")
                machine.update(message_id=message_id, campaign_id=campaign, machine_open=True)
                out.append(machine)
            if rnd.random() < 0.35:
                opened = e("email_opened", person, later, "email")
                opened.update(message_id=message_id, campaign_id=campaign)
                out.append(opened)
                if rnd.random() < 0.3:
                    click = e("email_clicked", person, later + timedelta(seconds=20), "email")
                    click.update(message_id=message_id, campaign_id=campaign,
                                 url=f"https://shop.example.com/{campaign}")
                    out.append(click)
            return out
        if action == "view":
            sku, name, _ = rnd.choice(PRODUCTS)
            ev = e("product_viewed", person, moment, "store")
            ev.update(product_id=sku, product_name=name)
            return [ev]
        if action == "cart":
            sku, _, price = rnd.choice(PRODUCTS)
            count = rnd.randint(0, 4)
            ev = e("cart_updated", person, moment, "store")
            ev.update(cart_id=f"cart-{person.email.split('@')[0]}", items_count=count,
                      value=_money(float(price) * count), currency=person.currency)
            return [ev]
        if action == "consent":
            ev = e("consent_changed", person, moment, "consent_changed")
            ev.update(channel=rnd.choice(["email", "email", "sms", "whatsapp", "phone"]),
                      granted=rnd.random() < 0.75, text="Acepto recibir comunicaciones")
            return [ev]
        # a staff edit in the CRM
        ev = e("contact_updated", person, moment, "contact_updated")
        choice = rnd.random()
        if choice < 0.3:
            ev["tags_added"] = self.tags(2) or ["VIP"]
        elif choice < 0.45:
            ev["tags_removed"] = [rnd.choice(TAGS)]
        elif choice < 0.7:
            ev["lead_status"] = rnd.choice(["new", "contacted", "qualified", "won", "lost"])
            ev["contact_type"] = rnd.choice(["client", "client", "supplier", "partner"])
        elif choice < 0.9:
            ev["properties"] = {"birthday": f"19{rnd.randint(50, 99)}-0{rnd.randint(1, 9)}-1"
                                f"{rnd.randint(0, 9)}", "vip_level": rnd.randint(1, 3)}
        else:
            ev["unset"] = [rnd.choice(["postal_code", "phone", "interest"])]
        return [ev]

    def events(self, n: int) -> Iterator[dict[str, Any]]:
        rnd = self.rnd
        produced = 0
        late: list[dict[str, Any]] = []
        step = self.span / max(n, 1)
        moment = self.start
        while produced < n:
            moment += step * rnd.uniform(0.5, 1.5)
            if self.last_visit is not None and moment > self.last_visit:
                moment = self.last_visit
            person = self.people[bisect.bisect(self.cum, rnd.random() * self.cum[-1])]
            for event in self.visit(person, moment):
                if rnd.random() < 0.03:  # delivered late, after newer events
                    late.append(event)
                    continue
                yield event
                produced += 1
                if produced >= n:
                    return
            if late and rnd.random() < 0.2:
                yield late.pop(0)
                produced += 1


def generate_history(
    tenant: str,
    n_events: int,
    *,
    seed: int = 0,
    start: datetime | None = None,
    days: int = 400,
    n_contacts: int | None = None,
    until: datetime | None = None,
) -> Iterator[dict[str, Any]]:
    """Exactly `n_events` contract-v1 event dicts, in publish order, deterministic; with
    ``until``, none occurs after it (a short history's random steps can overshoot its
    span)."""
    if n_events <= 0:
        return iter(())
    contacts = n_contacts or max(50, n_events // 8)
    generator = _Generator(tenant, seed, start or DEFAULT_START, days, contacts, until)
    return generator.events(n_events)


def demo_summary(events: Iterable[dict[str, Any]]) -> dict[str, int]:
    return dict(Counter(event["type"] for event in events))
