"""Hostile and broken input through the running pipeline (real NATS, both backends).

A seeded mix of good events and hostile messages of every kind the trust issue lists is
published raw (no client-side validation). Expected: every hostile message lands in the
dead-letter stream with a code and a sentence, every good event is applied once, and no
worker crashes or stalls.
"""

from __future__ import annotations

import asyncio
import json
import random
from typing import Any

from services.catalog import TenantCommands
from services.runtime import Runtime, connect_nats
from services.streams import DLQ_STREAM
from tests.e2e.test_pipeline import drain_applied
from tests.factories import event_dict

HOSTILE_KINDS = (
    "invalid_json", "invalid_utf8", "not_object", "wrong_type", "missing_field",
    "huge_string", "over_limit", "deep_nesting", "tenant_mismatch", "type_mismatch",
    "odd_subject", "future_schema", "far_date", "almost_email", "null_field",
    "property_mismatch", "sql_in_values", "nul_in_text",
)
# Each kind's fate, fixed here rather than asked of the decoder under test: the code of
# its dead letter, or None for a message that is accepted.
EXPECTED_CODE: dict[str, str | None] = {
    "invalid_json": "not_json", "invalid_utf8": "invalid_utf8", "not_object": "not_object",
    "wrong_type": "invalid_field", "missing_field": "missing_field",
    "huge_string": "invalid_field", "over_limit": "too_large", "deep_nesting": "invalid_field",
    "tenant_mismatch": "tenant_mismatch", "type_mismatch": "type_mismatch",
    "future_schema": "unsupported_schema_version", "far_date": "invalid_field",
    "almost_email": "invalid_field", "null_field": "invalid_field",
    # Valid for the contract; the tenant's definition of shoe_size (a number) refuses it.
    "property_mismatch": "property_type_mismatch",
    "sql_in_values": None,
    # PostgreSQL's text cannot hold it: accepted, it stopped the contacts read model.
    "nul_in_text": "invalid_field",
}


def expected_code(kind: str, subject: str) -> str | None:
    if kind == "odd_subject":  # a well-formed subject of an unknown type, or a malformed one
        return "unknown_type" if subject == "ficha.in.acme.nope" else "bad_subject"
    return EXPECTED_CODE[kind]


ALMOST_EMAILS = ["ana@", "@example.com", "ana@@example.com", "ana example@x.com",
                 "ana@example", "ana@.example.com", "ana@example..com", "a" * 70 + "@x.com"]


def good(rnd: random.Random, i: int) -> tuple[str, bytes]:
    body = event_dict("form_submitted", event_id=f"good-{i}", email=f"g{i}@example.com",
                      form_id="f", properties={"shoe_size": rnd.randint(34, 46)},
                      tags=["fuzz"])
    return "ficha.in.acme.form_submitted", json.dumps(body).encode()


def hostile(rnd: random.Random, i: int, kind: str) -> tuple[str, bytes]:
    subject = "ficha.in.acme.form_submitted"
    body: Any = event_dict("form_submitted", event_id=f"bad-{i}", email=f"b{i}@example.com",
                           form_id="f")
    if kind == "invalid_json":
        return subject, b'{"event_id": "x", ' + bytes([rnd.randint(32, 126)]) * 3
    if kind == "invalid_utf8":
        return subject, b'{"event_id": "\xff\xfe"}'
    if kind == "not_object":
        return subject, json.dumps(rnd.choice([[1, 2], "text", 42, None])).encode()
    if kind == "wrong_type":
        body["form_id"] = rnd.choice([7, [], {"a": 1}, True])
    elif kind == "missing_field":
        del body[rnd.choice(["event_id", "occurred_at", "contact", "form_id", "source"])]
    elif kind == "huge_string":
        body["form_name"] = "x" * 20_000
    elif kind == "over_limit":
        body["fields"] = {"essay": "y" * 70_000}
    elif kind == "deep_nesting":  # written out: 3000 levels are past any parser's depth
        depth = rnd.choice([100, 600, 3000])
        text = json.dumps(body)[:-1] + ', "fields": {"deep": '
        return subject, (text + '{"n": ' * depth + '"leaf"' + "}" * depth + "}}").encode()
    elif kind == "tenant_mismatch":
        body["tenant"] = "globex"
    elif kind == "type_mismatch":
        subject = "ficha.in.acme.booking_made"
    elif kind == "odd_subject":
        subject = rnd.choice(["ficha.in.acme", "ficha.in.ACME!.form_submitted",
                              "ficha.in.acme.form_submitted.extra", "ficha.in.acme.nope"])
    elif kind == "future_schema":
        body["schema_version"] = rnd.choice([2, 99])
    elif kind == "far_date":
        body["occurred_at"] = rnd.choice(["0001-01-01T00:00:00+00:00",
                                          "9999-12-31T23:59:59+00:00", "2026-13-40T25:61:00Z",
                                          "2026-11-02T10:15:00"])
    elif kind == "almost_email":
        body["contact"]["email"] = rnd.choice(ALMOST_EMAILS)
    elif kind == "null_field":
        body["form_name"] = None
    elif kind == "property_mismatch":
        body["properties"] = {"shoe_size": rnd.choice(["big", True, [38]])}
    elif kind == "nul_in_text":
        where = rnd.choice(["name", "field", "tag", "key"])
        if where == "name":
            body["contact"]["first_name"] = "A\x00na"
        elif where == "field":
            body["fields"] = {"note": ["fine", "not\x00fine"]}
        elif where == "tag":
            body["tags"] = ["vip\x00"]
        else:
            body["fields"] = {"bad\x00key": "x"}
    elif kind == "sql_in_values":
        # Not hostile to the contract: accepted, and stored as the literal text it is.
        body["form_name"] = "x'); DROP TABLE contacts; --"
        body["contact"]["first_name"] = "Robert'); DELETE FROM timeline; --"
    return subject, json.dumps(body).encode()


async def test_hostile_messages_are_dead_lettered_and_good_ones_applied(
    runtime: Runtime,
) -> None:
    assert runtime.store is not None
    await asyncio.to_thread(TenantCommands(runtime.store).define_property, "acme",
                            "shoe_size", "number")
    rnd = random.Random(2026)
    messages: list[tuple[str, bytes]] = []
    expected_codes: dict[str, int] = {}
    for i in range(300):
        messages.append(good(rnd, i))
    for i in range(400):
        kind = HOSTILE_KINDS[i % len(HOSTILE_KINDS)]
        subject, body = hostile(rnd, i, kind)
        code = expected_code(kind, subject)
        if code is not None:
            expected_codes[code] = expected_codes.get(code, 0) + 1
        messages.append((subject, body))
    rnd.shuffle(messages)
    dead = sum(expected_codes.values())
    accepted = len(messages) - dead

    nc = await connect_nats(runtime.nats_url)
    js = nc.jetstream()
    try:
        for subject, body in messages:
            await js.publish(subject, body)
        await drain_applied(runtime, accepted, timeout=60)
        deadline = asyncio.get_running_loop().time() + 60
        while (await js.stream_info(DLQ_STREAM)).state.messages < dead:
            assert asyncio.get_running_loop().time() < deadline, "dead letters missing"
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.5)
        info = await js.stream_info(DLQ_STREAM)
        assert info.state.messages == dead
        codes: dict[str, int] = {}
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            msg = await js.get_msg(DLQ_STREAM, seq=seq)
            headers = msg.headers or {}
            assert headers["Ficha-Error-Detail"].strip(), headers
            codes[headers["Ficha-Error"]] = codes.get(headers["Ficha-Error"], 0) + 1
    finally:
        await nc.close()
    assert runtime.store.received_count() == accepted
    # No worker died on the way: every task is still running.
    assert all(not task.done() for task in runtime._tasks)  # noqa: SLF001
    assert codes == expected_codes
    assert runtime.views is not None
    from projections.queries import get_card

    bobby = next(
        json.loads(body)["contact"]["email"] for _, body in messages if b"DROP TABLE" in body
    )
    card = get_card(runtime.views, "acme", bobby)
    assert card is not None and card["first_name"] == "Robert'); DELETE FROM timeline; --"
    print(f"\nhostile-input cases: {len(messages)} messages ({dead} dead-lettered, "
          f"{accepted} applied), codes: {sorted(codes.items())}")
