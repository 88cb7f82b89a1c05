"""The HTTP API end to end: real runtime, real nats-server, both backends, real HTTP."""

from __future__ import annotations

import asyncio
import json
import re
import time
from datetime import UTC, datetime, timedelta
from datetime import time as time_of_day
from pathlib import Path
from typing import Any
from urllib.parse import quote

from projections.audience_queries import engagement_stats, list_stats, rfm_stats
from tests.api.conftest import Api

VIP = {"field": "tags", "op": "has", "value": "vip"}
SPANISH = {"field": "language", "op": "equals", "value": "es"}

PEOPLE = [  # (email, first, last, language, country, tags)
    ("ana@example.com", "Ana", "Alvarez", "es", "ES", ["vip"]),
    ("bo@example.com", "Bo", "Berg", "en", "US", []),
    ("carla@example.com", "Carla", "Alvarado", "es", "MX", ["vip", "shoes"]),
    ("dan@example.com", "Dan", "Cole", "de", "DE", ["shoes"]),
    ("eva@example.com", "Eva", "Diaz", "es", "ES", []),
]
OTHER_EMAIL = "zed@other.example"


async def seed(api: Api) -> None:
    """Five contacts in acme, one in other; a segment in each tenant."""
    for n, (email, first, last, language, country, tags) in enumerate(PEOPLE):
        await api.publish(
            "contact_updated", email=email, event_id=f"seed-{n}",
            occurred_at=f"2026-11-0{n + 1}T10:00:00Z",
            contact={"first_name": first, "last_name": last, "language": language,
                     "country": country}, tags_added=tags)
    await api.publish("form_submitted", email="ana@example.com", event_id="seed-form",
                      occurred_at="2026-11-06T10:00:00Z", form_id="contact-us",
                      tags=["web"])
    await api.publish("contact_updated", tenant="other", email=OTHER_EMAIL, event_id="o-1",
                      contact={"first_name": "Zed", "language": "es"},
                      tags_added=["secret-tag"])
    assert api.runtime.js is not None
    await api.runtime.js.publish("ficha.in.other.contact_updated", b'{"oops": ',
                                 headers={"Nats-Msg-Id": "broken-1"})
    for tenant, segment_id in (("acme", "vips"), ("other", "other-only")):
        response = await api.http.post(
            f"/v1/tenants/{tenant}/segments", json={"id": segment_id, "rule": VIP},
            headers=api.auth(f"{tenant}:admin"))
        assert response.status_code == 201, response.text
    await api.runtime.wait_until_projected(30)


def path(template: str, **values: str) -> str:
    return re.sub(r"\{(\w+)\}", lambda m: values[m[1]], template)


BODIES: dict[tuple[str, str], Any] = {
    ("post", "/v1/tenants/{tenant}/segments"): {"id": "new-one", "rule": VIP},
    ("put", "/v1/tenants/{tenant}/segments/{segment_id}"): {"rule": SPANISH},
    ("post", "/v1/tenants/{tenant}/segments/{segment_id}/preview"): {"rule": SPANISH},
    ("put", "/v1/tenants/{tenant}/properties/{name}"): {"type": "text"},
    ("post", "/v1/tenants/{tenant}/dead-letters/redrive"): {"code": "not_json"},
    ("post", "/v1/tenants/{tenant}/contacts/{ref}/erasure"): {},
    ("post", "/v1/tenants/{tenant}/dead-letters/purge"): {"code": "not_json",
                                                           "confirm": True},
}


async def other_dead_letter(api: Api) -> str:
    deadline = time.monotonic() + 20
    while True:
        body = (await api.get("/v1/tenants/other/dead-letters", "other:read")).json()
        if body["recent"]:
            return str(body["recent"][0]["seq"])
        assert time.monotonic() < deadline, "the broken event never reached the DLQ"
        await asyncio.sleep(0.1)


async def routes(api: Api) -> list[tuple[str, str]]:
    document = (await api.http.get("/schema/openapi.json")).json()
    found = [(method, template) for template, item in document["paths"].items()
             for method in item if method in ("get", "post", "put", "delete")]
    assert len(found) >= 15
    return found


async def call(api: Api, method: str, url: str, key: str, template: str) -> Any:
    if template.endswith("/imports"):
        return await api.http.post(url, headers=api.auth(key), files={
            "file": ("people.csv", b"email,first_name\nzed@other.example,Zed\n")})
    body = BODIES.get((method, template))
    if method in ("post", "put"):
        assert body is not None, f"add a request body for {method.upper()} {template}"
    return await api.http.request(method.upper(), url, json=body, headers=api.auth(key))


async def test_a_key_of_one_tenant_gets_404_on_every_route_of_another(api: Api) -> None:
    await seed(api)
    other_values = {"tenant": "other", "ref": OTHER_EMAIL, "segment_id": "other-only",
                    "name": "colour", "seq": await other_dead_letter(api),
                    "reference": OTHER_EMAIL}
    assert (await api.http.put("/v1/tenants/other/properties/colour", json={"type": "text"},
                               headers=api.auth("other:admin"))).status_code == 200
    checked = 0
    for method, template in await routes(api):
        if "{tenant}" not in template:
            continue
        for key in ("acme:read", "acme:admin"):
            response = await call(api, method, path(template, **other_values), key, template)
            assert response.status_code == 404, (method, template, key, response.text)
            assert response.json()["error"]["code"] == "not_found"
            assert OTHER_EMAIL not in response.text and "secret-tag" not in response.text
            checked += 1
    assert checked >= 30
    # Nothing of other's was changed by those attempts.
    still = await api.get("/v1/tenants/other/segments/other-only", "other:read")
    assert still.status_code == 200 and still.json()["data"]["version"] == 1
    props = await api.get("/v1/tenants/other/properties", "other:read")
    assert [p["name"] for p in props.json()] == ["colour"]
    letters = (await api.get("/v1/tenants/other/dead-letters", "other:read")).json()
    assert letters["total"] == 1 and letters["by_code"][0]["code"] == "not_json"


async def test_the_caller_is_checked_before_the_body_is_read(api: Api) -> None:
    """A body that cannot be read does not get a request past its key: without one 401,
    with another tenant's 404; with the right key, a body nested too deeply to parse is
    a 400 that says so (not a 500)."""
    await seed(api)
    values = {"ref": "ana@example.com", "segment_id": "es", "name": "colour",
              "reference": "ana@example.com"}
    deep = b"[" * 5000 + b"]" * 5000
    checked = 0
    for method, template in await routes(api):
        if method not in ("post", "put") or template.endswith("/imports"):
            continue
        for body in (b"{bad", deep):
            url = path(template, tenant="other", **values)
            anonymous = await api.http.request(method.upper(), url, content=body, headers={
                "Content-Type": "application/json"})
            assert anonymous.status_code == 401, (method, template, anonymous.text)
            foreign = await api.http.request(method.upper(), url, content=body, headers={
                **api.auth("acme:admin"), "Content-Type": "application/json"})
            assert foreign.status_code == 404, (method, template, foreign.text)
        # Whatever type it claims (the routes read JSON anyway), and at depths around
        # the parser's own limit as well as far past it.
        for content_type, depth in (("application/json", 5000), ("text/csv", 5000),
                                    ("application/octet-stream", 975),
                                    ("multipart/form-data; boundary=x", 5000)):
            own = await api.http.request(
                method.upper(), path(template, tenant="acme", **values),
                content=b"[" * depth + b"]" * depth,
                headers={**api.auth("acme:admin"), "Content-Type": content_type})
            assert own.status_code == 400, (method, template, content_type, own.text)
            assert own.json()["error"]["code"] == "invalid_body"
            assert "nests too deeply" in own.json()["error"]["message"]
        checked += 1
    assert checked >= 7


async def test_other_tenants_resources_are_404_under_ones_own_tenant(api: Api) -> None:
    """Under its own tenant, a key naming another tenant's contact or segment gets the
    same answer as for one that exists nowhere: nothing tells them apart."""
    await seed(api)
    card = await api.get(f"/v1/tenants/other/contacts/{OTHER_EMAIL}", "other:read")
    other_id = card.json()["data"]["contact_id"]
    seq = await other_dead_letter(api)
    pairs = [(OTHER_EMAIL, "nobody@nowhere.example"), (other_id, "0" * 32)]
    checked = 0
    for (ref, unknown_ref), segment in zip(pairs, ("other-only", "never-made"), strict=True):
        for method, template in await routes(api):
            names = set(re.findall(r"\{(\w+)\}", template))
            if not names & {"ref", "segment_id", "seq", "reference"} or (
                    method == "put" and "ref" not in names):
                continue  # (PUT of a segment acme lacks is the same 404 for both, below)
            answers = []
            for r, s in ((ref, segment if "ref" not in names else "vips"),
                         (unknown_ref, "never-made-2" if "ref" not in names else "vips")):
                values = {"tenant": "acme", "ref": r, "segment_id": s, "name": "colour",
                          "seq": seq if r == ref else "999999", "reference": r}
                response = await call(api, method, path(template, **values), "acme:admin",
                                      template)
                answers.append((response.status_code, response.text.replace(r, "REF")
                                .replace(s, "SEGMENT").replace(values["seq"], "SEQ")))
            assert answers[0] == answers[1], (method, template, answers)
            if not template.endswith("/preview"):
                assert answers[0][0] == 404, (method, template, answers)
            checked += 1
    assert checked >= 10
    # Lists and figures of acme hold nothing of other's.
    for url in ("/contacts", "/tags", "/segments", "/engagement", "/lists", "/rfm",
                "/segment-sizes", "/dead-letters", "/status"):
        response = await api.get(f"/v1/tenants/acme{url}")
        assert response.status_code == 200, response.text
        assert OTHER_EMAIL not in response.text and "secret-tag" not in response.text
        assert "other-only" not in response.text and "oops" not in response.text


async def test_keys_are_required_checked_scoped_and_revocable(api: Api) -> None:
    url = "/v1/tenants/acme/contacts"
    missing = await api.http.get(url)
    assert missing.status_code == 401
    assert "Authorization: Bearer" in missing.json()["error"]["message"]
    for bad in ("nonsense", api.keys["acme:read"][:-1] + "x", "ficha.acme.000000000000." +
                "a" * 43):
        response = await api.http.get(url, headers={"Authorization": f"Bearer {bad}"})
        assert response.status_code == 401, bad
    assert (await api.http.get(url, headers={"X-Api-Key": api.keys["acme:read"]})
            ).status_code == 200
    forbidden = await api.http.post("/v1/tenants/acme/segments", json={"id": "x", "rule": VIP},
                                    headers=api.auth("acme:read"))
    assert forbidden.status_code == 403
    assert forbidden.json()["error"]["code"] == "forbidden"
    assert api.runtime.store is not None
    from services.catalog import ApiKeyCommands

    key_id = api.keys["acme:read"].split(".")[2]
    ApiKeyCommands(api.runtime.store).revoke("acme", key_id)
    deadline = time.monotonic() + 10
    while (await api.get(url)).status_code == 200:
        assert time.monotonic() < deadline, "a revoked key still works after 10 s"
        await asyncio.sleep(0.2)
    assert (await api.get(url)).status_code == 401
    assert (await api.get(url, "acme:admin")).status_code == 200


async def test_client_list_filters_search_sorts_and_pages(api: Api) -> None:
    await seed(api)
    base = "/v1/tenants/acme/contacts"
    spanish = (await api.get(base, language="es", with_total="true")).json()
    assert {r["email"] for r in spanish["data"]} == {
        "ana@example.com", "carla@example.com", "eva@example.com"}
    assert spanish["total"] == 3
    assert spanish["freshness"]["projection"] == "contacts"
    fresh = spanish["freshness"]
    assert fresh["lag"] == 0 and fresh["position"] == fresh["head"] > 0  # seed waited for it
    both = (await api.get(base, language="es", tag="vip")).json()["data"]
    assert {r["email"] for r in both} == {"ana@example.com", "carla@example.com"}
    # Search: a prefix of the email, the first name or the last name, any case.
    for q, expected in (("alva", {"ana@example.com", "carla@example.com"}),
                        ("BO", {"bo@example.com"}), ("eva@", {"eva@example.com"}),
                        ("zed", set())):
        found = (await api.get(base, q=q)).json()["data"]
        assert {r["email"] for r in found} == expected, q
    # Every sort pages through every contact exactly once, in order.
    for sort in ("-first_seen_at", "first_seen_at", "email", "-email", "name", "-name",
                 "last_activity_at", "-last_activity_at"):
        seen: list[dict[str, Any]] = []
        cursor = None
        while True:
            params: dict[str, Any] = {"sort": sort, "limit": 2}
            if cursor:
                params["cursor"] = cursor
            body = (await api.get(base, **params)).json()
            seen += body["data"]
            cursor = body["next_cursor"]
            if cursor is None:
                break
        assert sorted(r["email"] for r in seen) == sorted(p[0] for p in PEOPLE), sort
        if sort.lstrip("-") == "email":
            emails = [r["email"] for r in seen]
            assert emails == sorted(emails, reverse=sort.startswith("-"))
        if sort.lstrip("-") == "name":
            names = [f"{r['last_name']} {r['first_name']}".lower() for r in seen]
            assert names == sorted(names, reverse=sort.startswith("-"))
        if sort.lstrip("-") == "first_seen_at":
            stamps = [r["first_seen_at"] for r in seen]
            assert stamps == sorted(stamps, reverse=sort.startswith("-"))
    # A cursor of one sort is refused under another, with a sentence.
    first = (await api.get(base, sort="email", limit=1)).json()["next_cursor"]
    wrong = await api.get(base, sort="name", cursor=first)
    assert wrong.status_code == 400 and "cursor" in wrong.json()["error"]["message"]


async def test_errors_are_json_with_a_code_and_the_field(api: Api) -> None:
    base = "/v1/tenants/acme/contacts"
    cases = [({"limit": "0"}, "limit"), ({"limit": "many"}, "limit"),
             ({"first_seen_from": "yesterday"}, "first_seen_from"),
             ({"wait_timeout": "99"}, "wait_timeout")]
    for params, field in cases:
        response = await api.get(base, **params)
        assert response.status_code == 400, params
        error = response.json()["error"]
        assert error["code"] == "invalid_request" and error["field"] == field, error
        assert field in error["message"]
    unknown_sort = (await api.get(base, sort="shoe_size")).json()["error"]
    assert "sort by one of" in unknown_sort["message"]
    bad_rule = await api.http.post(
        "/v1/tenants/acme/segments",
        json={"id": "bad", "rule": {"all": [VIP, {"field": "nope", "op": "equals"}]}},
        headers=api.auth("acme:admin"))
    assert bad_rule.status_code == 400
    error = bad_rule.json()["error"]
    assert error["code"] == "invalid_rule" and error["field"] == "rule"
    assert "rule.all[1]" in error["message"]
    extra = await api.http.post("/v1/tenants/acme/segments",
                                json={"id": "x", "rule": VIP, "colour": "red"},
                                headers=api.auth("acme:admin"))
    assert extra.status_code == 400 and "colour" in extra.text
    nowhere = await api.get("/v1/tenants/acme/nothing-here")
    assert nowhere.status_code == 404 and nowhere.json()["error"]["code"] == "not_found"


INSTANT_PARAMETERS = [("get", "/v1/tenants/{tenant}/contacts", "first_seen_from"),
                      ("get", "/v1/tenants/{tenant}/contacts", "first_seen_to"),
                      ("get", "/v1/tenants/{tenant}/exports/contacts", "first_seen_from"),
                      ("get", "/v1/tenants/{tenant}/exports/contacts", "first_seen_to"),
                      ("get", "/v1/tenants/{tenant}/segments/{segment_id}/members", "as_of"),
                      ("get", "/v1/tenants/{tenant}/segments/{segment_id}/export", "as_of"),
                      ("post", "/v1/tenants/{tenant}/imports", "occurred_at")]


async def test_instants_in_the_address_are_a_date_or_a_time_with_its_offset(api: Api) -> None:
    """Every date/time query parameter takes a plain date (00:00 UTC of that day) or RFC
    3339 with an offset, refuses a time without one in a sentence naming the parameter,
    and the OpenAPI document says so."""
    import csv
    import io

    await seed(api)  # first seen 2026-11-01T10:00Z (ana) to 2026-11-05T10:00Z (eva)
    t = "/v1/tenants/acme"

    async def emails(url: str, **params: Any) -> set[str]:
        response = await api.get(url, **params)
        assert response.status_code == 200, (url, params, response.text)
        if "export" in url:
            return {r["email"] for r in csv.DictReader(io.StringIO(response.text))}
        return {r["email"] for r in response.json()["data"]}

    for url in (f"{t}/contacts", f"{t}/exports/contacts", f"{t}/segments/vips/members",
                f"{t}/segments/vips/export"):
        if "segments" not in url:
            assert await emails(url, first_seen_from="2026-11-03") == {
                "carla@example.com", "dan@example.com", "eva@example.com"}
            assert await emails(url, first_seen_to="2026-11-03") == {
                "ana@example.com", "bo@example.com"}
            assert await emails(url, first_seen_from="2026-11-03T11:00:00+01:00",
                                first_seen_to="2026-11-05T10:00:00Z") == {
                "carla@example.com", "dan@example.com"}
            continue
        entered = datetime.fromisoformat(
            (await api.get(f"{t}/segments/vips/members")).json()["data"][0]["entered_at"])
        day = entered.astimezone(UTC).date()
        assert entered.astimezone(UTC).time() > time_of_day(0, 0)
        after = (day + timedelta(days=1)).isoformat()
        # The day the members entered, at 00:00 UTC: none yet; the next day: both.
        assert await emails(url, as_of=day.isoformat()) == set()
        assert await emails(url, as_of=f"{day}T01:00:00+01:00") == set()
        assert await emails(url, as_of=after) == {"ana@example.com", "carla@example.com"}
        assert await emails(url, as_of=f"{after}T01:00:00+01:00") == {
            "ana@example.com", "carla@example.com"}
    imported = await api.http.post(
        f"{t}/imports", params={"dry_run": "true", "occurred_at": "2025-06-01"},
        headers=api.auth("acme:admin"),
        files={"file": ("people.csv", b"email,first_name\nnew@example.com,New\n")})
    assert imported.status_code == 200, imported.text
    assert datetime.fromisoformat(imported.json()["occurred_at"]) == datetime(2025, 6, 1,
                                                                               tzinfo=UTC)
    # A time without an offset, or nonsense, is refused, naming the parameter.
    document = (await api.http.get("/schema/openapi.json")).json()
    for method, template, name in INSTANT_PARAMETERS:
        url = path(template, tenant="acme", segment_id="vips")
        for wrong, says in (("2026-11-03T10:00:00", "no timezone offset"),
                            ("2026-11-03T10:00:00 01:00", "write + as %2B"),
                            ("yesterday", "not a date or time"),
                            # no UTC instant for it: once a 500 where the value reached SQL
                            ("0001-01-01T00:00:00+01:00", "out of range once in UTC")):
            response = await api.http.request(
                method.upper(), url, params={name: wrong}, headers=api.auth("acme:admin"),
                files={"file": ("p.csv", b"email\n")} if method == "post" else None)
            assert response.status_code == 400, (url, name, wrong, response.text)
            error = response.json()["error"]
            assert (error["code"], error["field"]) == ("invalid_request", name), error
            assert error["message"].startswith(f"{name}: ") and says in error["message"], error
        [parameter] = [p for p in document["paths"][template][method]["parameters"]
                       if p["name"] == name]
        assert {s.get("format") for s in parameter["schema"]["oneOf"]} == {"date", "date-time"}
        assert "00:00 UTC" in parameter["description"], parameter


def documented_codes() -> set[str]:
    """The error codes docs/api.md lists (its "Codes:" paragraph)."""
    text = (Path(__file__).parents[2] / "docs" / "api.md").read_text()
    paragraph = text[text.index("Codes:"):].split("\n\n")[0]
    return set(re.findall(r"`([a-z_]+)`", paragraph))


async def test_a_body_that_cannot_be_read_gets_a_documented_code_and_a_sentence(
        api: Api) -> None:
    t = "/v1/tenants/acme"
    json_type = {**api.auth("acme:admin"), "Content-Type": "application/json"}
    multipart = {**api.auth("acme:admin"), "Content-Type": "multipart/form-data; boundary=b"}
    cases = [  # method, url, body, headers, status, code, words in the message
        ("POST", f"{t}/segments", b'{"id": ', json_type, 400, "invalid_body",
         ["the body is not valid JSON", "truncated"]),
        ("PUT", f"{t}/properties/colour", b"colour: red", json_type, 400, "invalid_body",
         ["the body is not valid JSON", "malformed"]),
        ("POST", f"{t}/segments", b"[1, 2]", json_type, 400, "invalid_body",
         ["the body is not what this route takes", "object"]),
        ("POST", f"{t}/segments", b"", json_type, 400, "invalid_body",
         ["the request has no body"]),
        ("POST", f"{t}/imports", b"garbage", multipart, 400, "invalid_body",
         ["not a valid multipart/form-data upload", "`file`"]),
        ("POST", f"{t}/imports", b'{"file": "people.csv"}', json_type, 400, "invalid_body",
         ["not a valid multipart/form-data upload", "`file`"]),
        ("POST", f"{t}/segments", b"[" + b"1," * 6_000_000 + b"1]", json_type, 413,
         "too_large", ["larger than this route accepts"]),
        ("DELETE", f"{t}/contacts", b"", api.auth("acme:admin"), 405, "method_not_allowed",
         ["does not take DELETE", "GET"]),
    ]
    codes = documented_codes()
    assert {"invalid_body", "invalid_request", "internal_error"} <= codes
    for method, url, body, headers, status, code, words in cases:
        response = await api.http.request(method, url, content=body, headers=headers)
        assert response.status_code == status, (method, url, body[:20], response.text)
        error = response.json()["error"]
        assert error["code"] == code and code in codes, (body[:20], error)
        assert all(w in error["message"] for w in words), (body[:20], error)


async def test_card_timeline_and_read_your_writes(api: Api) -> None:
    await seed(api)
    card = (await api.get("/v1/tenants/acme/contacts/ana@example.com")).json()["data"]
    assert card["first_name"] == "Ana" and card["tags"]
    assert [e["type"] for e in card["timeline"]][-1] == "form_submitted"
    by_id = (await api.get(f"/v1/tenants/acme/contacts/{card['contact_id']}")).json()["data"]
    assert by_id["email"] == "ana@example.com"
    # Timeline pages, newest first, each page oldest first.
    for n in range(5):
        await api.publish("email_opened", email="ana@example.com", event_id=f"open-{n}",
                          occurred_at=f"2026-11-1{n}T09:00:00Z", message_id=f"m-{n}")
    latest = await api.get("/v1/tenants/acme/contacts/ana@example.com/timeline", limit=3,
                           wait_for_event="open-4")
    assert latest.status_code == 200, latest.text
    page1 = latest.json()
    assert [e["event_id"] for e in page1["data"]] == ["open-2", "open-3", "open-4"]
    page2 = (await api.get("/v1/tenants/acme/contacts/ana@example.com/timeline", limit=3,
                           cursor=page1["next_cursor"])).json()
    assert [e["event_id"] for e in page2["data"]] == ["seed-form", "open-0", "open-1"]
    # Read your writes: the event just published is in the answer that waited for it.
    await api.publish("contact_updated", email="ana@example.com", event_id="rename",
                      occurred_at="2026-11-20T10:00:00Z", contact={"first_name": "Anita"})
    fresh = await api.get("/v1/tenants/acme/contacts/ana@example.com",
                          wait_for_event="rename")
    assert fresh.json()["data"]["first_name"] == "Anita"
    assert int(fresh.headers["Ficha-Position"]) == fresh.json()["freshness"]["position"]
    never = await api.get("/v1/tenants/acme/contacts/ana@example.com",
                          wait_for_event="never-sent", wait_timeout="0.3")
    assert never.status_code == 503
    assert never.json()["error"]["code"] == "not_yet_ingested"
    assert never.headers["Retry-After"] == "1"
    missing = await api.get("/v1/tenants/acme/contacts/nobody@example.com")
    assert missing.status_code == 404


async def test_waiting_for_a_dead_lettered_event_says_so_at_once(api: Api) -> None:
    """The walkthrough: shoe_size defined as a number, then an event with "big"."""
    from tests.api.test_api_requests import error_schema_errors

    admin = api.auth("acme:admin")
    defined = await api.http.put("/v1/tenants/acme/properties/shoe_size",
                                 json={"type": "number"}, headers=admin)
    assert defined.status_code in (200, 201), defined.text
    # The ingest workers take up a definition within about two seconds: probe until then.
    deadline = time.monotonic() + 20
    for n in range(1000):
        await api.publish("contact_updated", email="probe@example.com", event_id=f"probe-{n}",
                          properties={"shoe_size": "huge"})
        await asyncio.sleep(0.3)
        if (await api.get("/v1/tenants/acme/dead-letters")).json()["total"]:
            break
        assert time.monotonic() < deadline, "the definition never took effect"
    # An id dead-lettered in another tenant says nothing about acme's event of that id.
    assert api.runtime.js is not None
    await api.runtime.js.publish(
        "ficha.in.other.contact_updated", b'{"event_id": "late-one", "tenant": "other"}',
        headers={"Nats-Msg-Id": "late-one"})
    await api.publish("contact_updated", email="ana@example.com", event_id="shoe-big",
                      properties={"shoe_size": "big"})
    started = time.monotonic()
    answer = await api.get("/v1/tenants/acme/contacts/ana@example.com",
                           wait_for_event="shoe-big", wait_timeout="30")
    # Not a speed limit: a 422 found only at the deadline would come after 30 s.
    assert time.monotonic() - started < 30, "it waited although the event was dead-lettered"
    assert answer.status_code == 422, answer.text
    assert "Retry-After" not in answer.headers
    error = answer.json()["error"]
    letter = error["dead_letter"]
    assert (error["code"], error["field"], letter["code"]) == (
        "dead_lettered", "wait_for_event", "property_type_mismatch")
    assert "shoe_size" in letter["detail"] and "dead-lettered" in error["message"]
    # As the OpenAPI document says a 422 of this route is.
    document = (await api.http.get("/schema/openapi.json")).json()
    assert "422" in document["paths"]["/v1/tenants/{tenant}/contacts/{ref}"]["get"]["responses"]
    assert error_schema_errors(document, answer.json()) == []
    assert error_schema_errors(document, {"error": {**error, "dead_letter": {"seq": 1}}})
    shown = (await api.get(f"/v1/tenants/acme/dead-letters/{letter['seq']}", "acme:admin")
             ).json()
    assert (shown["tenant"], shown["body"]["event_id"]) == ("acme", "shoe-big")
    while not (await api.get("/v1/tenants/other/dead-letters", "other:read")).json()["total"]:
        assert time.monotonic() < deadline + 20, "other's letter never reached the DLQ"
        await asyncio.sleep(0.1)
    for event_id in ("late-one", "never-sent"):
        never = await api.get("/v1/tenants/acme/contacts/ana@example.com",
                              wait_for_event=event_id, wait_timeout="0.5")
        assert never.status_code == 503 and never.headers["Retry-After"] == "1"
        assert never.json()["error"]["code"] == "not_yet_ingested"
        assert ("nor is it among the tenant's recent dead letters"
                in never.json()["error"]["message"])
    # An id no event can have is refused at once, naming the field.
    for bad in ("", "two words"):
        started = time.monotonic()
        refused = await api.get("/v1/tenants/acme/contacts/ana@example.com",
                                wait_for_event=bad, wait_timeout="30")
        assert time.monotonic() - started < 30  # refused before any wait, not after it
        assert refused.status_code == 400, refused.text
        assert refused.json()["error"]["field"] == "wait_for_event"
        assert refused.json()["error"]["message"].startswith("wait_for_event: ")


async def test_segments_through_the_api(api: Api) -> None:
    await seed(api)
    base = "/v1/tenants/acme/segments"
    admin = api.auth("acme:admin")
    preview = await api.http.post(f"{base}/spanish/preview", json={"rule": SPANISH},
                                  headers=admin)
    assert preview.json()["data"]["would_enter"] == 3
    created = await api.http.post(base, json={"id": "spanish", "name": "Spanish",
                                              "rule": SPANISH}, headers=admin)
    assert created.status_code == 201
    position = created.json()["position"]
    members = await api.get(f"{base}/spanish/members", min_position=position,
                            with_total="true")
    assert members.json()["total"] == 3
    assert {m["email"] for m in members.json()["data"]} == {
        "ana@example.com", "carla@example.com", "eva@example.com"}
    assert members.json()["freshness"]["position"] >= position
    again = await api.http.post(base, json={"id": "spanish", "rule": SPANISH}, headers=admin)
    assert again.status_code == 409 and again.json()["error"]["code"] == "already_exists"
    edited = await api.http.put(f"{base}/spanish", json={"rule": {"all": [SPANISH, VIP]}},
                                headers=admin)
    assert edited.json()["data"]["version"] == 2
    now = await api.get(f"{base}/spanish/members", min_position=edited.json()["position"])
    assert {m["email"] for m in now.json()["data"]} == {"ana@example.com",
                                                        "carla@example.com"}
    # Who was in it before the edit.
    before = await api.get(f"{base}/spanish/members",
                           as_of=members.json()["data"][0]["entered_at"])
    assert len(before.json()["data"]) == 3
    why = (await api.get("/v1/tenants/acme/contacts/eva@example.com/segments",
                         segment="spanish")).json()["data"]
    [entry] = why["segments"]
    assert entry["member"] is False and entry["history"][0]["exited_at"] is not None
    listed = (await api.get(base)).json()["data"]
    assert {s["segment_id"]: s["members"] for s in listed} == {"spanish": 2, "vips": 2}
    sizes = (await api.get("/v1/tenants/acme/segment-sizes", days=3)).json()["data"]
    assert sizes["days"][-1] == "now" and len(sizes["days"]) == 4
    assert {s["segment_id"]: s["sizes"][-1] for s in sizes["segments"]} == {
        "spanish": 2, "vips": 2}
    deleted = await api.http.delete(f"{base}/spanish", headers=admin)
    assert deleted.status_code == 200
    assert (await api.http.delete(f"{base}/spanish", headers=admin)).status_code == 404


async def test_figures_properties_and_the_openapi_document(api: Api) -> None:
    await seed(api)
    t = "/v1/tenants/acme"
    tags = (await api.get(f"{t}/tags")).json()["data"]
    assert {x["tag"]: x["contacts"] for x in tags}["vip"] == 2
    # The figures are the audience model's (its own tests check them against a brute-force
    # count): the routes serve them for the tenant and the days asked, whole.
    views = api.runtime.views
    assert views is not None
    for route, figures in (("engagement", engagement_stats), ("lists", list_stats),
                           ("rfm", rfm_stats)):
        for days in (7, 30):
            served = (await api.get(f"{t}/{route}", days=str(days))).json()["data"]
            expected = await asyncio.to_thread(figures, views, "acme", days)
            assert served == json.loads(json.dumps(expected, default=str)), route
    contacts = (await api.get(f"{t}/contacts", with_total="true")).json()["total"]
    engagement = (await api.get(f"{t}/engagement", days="7")).json()["data"]
    assert sum(s["count"] for s in engagement["statuses"].values()) == contacts > 0
    defined = await api.http.put(f"{t}/properties/shoe_size", json={"type": "number"},
                                 headers=api.auth("acme:admin"))
    assert defined.status_code == 200
    wrong = await api.http.put(f"{t}/properties/colour", json={"type": "colourful"},
                               headers=api.auth("acme:admin"))
    assert wrong.status_code == 400 and "property type" in wrong.json()["error"]["message"]
    assert [p["name"] for p in (await api.get(f"{t}/properties")).json()] == ["shoe_size"]
    status = (await api.get(f"{t}/status")).json()
    assert {p["projection"] for p in status["projections"]} == {"contacts", "audience"}
    document = (await api.http.get("/schema/openapi.json")).json()
    contacts = document["paths"]["/v1/tenants/{tenant}/contacts"]["get"]
    names = {p["name"] for p in contacts["parameters"]}
    assert {"q", "sort", "cursor", "min_position", "wait_for_event"} <= names
    assert "ctx" not in names and "principal" not in names


async def test_dead_letters_through_the_api(api: Api) -> None:
    assert api.runtime.js is not None
    for n in range(2):
        await api.runtime.js.publish("ficha.in.acme.contact_updated", b"not json at all",
                                     headers={"Nats-Msg-Id": f"junk-{n}"})
    url = "/v1/tenants/acme/dead-letters"
    deadline = time.monotonic() + 20
    while (listed := (await api.get(url)).json())["total"] < 2:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.1)
    assert listed["by_code"] == [{"code": "not_json", "count": 2}]
    assert "body" not in listed["recent"][0]
    seq = listed["recent"][0]["seq"]
    assert (await api.get(f"{url}/{seq}")).status_code == 403
    shown = (await api.get(f"{url}/{seq}", "acme:admin")).json()
    assert shown["body"] == "not json at all" and shown["code"] == "not_json"
    admin = api.auth("acme:admin")
    redriven = await api.http.post(f"{url}/redrive", json={"seqs": [seq]}, headers=admin)
    assert redriven.json() == {"redriven": 1}
    unconfirmed = await api.http.post(f"{url}/purge", json={"code": "not_json"}, headers=admin)
    assert unconfirmed.status_code == 400
    assert unconfirmed.json()["error"]["code"] == "confirmation_required"
    # The re-driven letter comes back (still not JSON) with a new sequence; then purge all.
    while (await api.get(url)).json()["recent"][0]["seq"] == seq:
        assert time.monotonic() < deadline + 20
        await asyncio.sleep(0.1)
    purged = await api.http.post(f"{url}/purge", json={"code": "not_json", "confirm": True},
                                 headers=admin)
    assert purged.json() == {"purged": 2}
    assert (await api.get(url)).json()["total"] == 0


INJECTIONS = ["'; DROP TABLE contacts; --", "nul\x00byte", "' OR '1'='1",
              "acme' OR tenant <> 'acme", "\\x00", "%' OR 1=1 --", "\") OR 1=1 --", "other",
              "*", "%", "_"]


async def test_sql_injection_through_filters_search_sort_cursor_and_rules(api: Api) -> None:
    await seed(api)
    base = "/v1/tenants/acme/contacts"
    everyone = {p[0] for p in PEOPLE}
    for text in INJECTIONS:
        for param in ("q", "tag", "language", "country", "consent", "sort", "cursor"):
            response = await api.get(base, **{param: text})
            assert response.status_code in (200, 400), (param, text, response.text)
            if response.status_code == 200:
                found = {r["email"] for r in response.json()["data"]}
                assert found <= everyone, (param, text)  # never another tenant's rows
                assert found != everyone or param in ("sort",), (param, text)
        quoted = quote(text, safe="")
        for url in (f"/v1/tenants/acme/contacts/{quoted}",
                    f"/v1/tenants/acme/segments/{quoted}",
                    f"/v1/tenants/acme/segments/{quoted}/members"):
            response = await api.get(url)
            assert response.status_code in (400, 404), (url, response.text)
        rule = {"all": [{"field": "first_name", "op": "equals", "value": text},
                        {"field": "tags", "op": "has", "value": text}]}
        preview = await api.http.post("/v1/tenants/acme/segments/probe/preview",
                                      json={"rule": rule}, headers=api.auth("acme:admin"))
        if "\x00" in text:  # no text in ficha holds a NUL (PostgreSQL's cannot)
            assert preview.status_code == 400, preview.text
            assert "NUL character" in preview.json()["error"]["message"]
            continue
        assert preview.status_code == 200, preview.text
        assert preview.json()["data"]["would_enter"] == 0
    # Everything is still there, and nothing of other's leaked into acme.
    listed = (await api.get(base, with_total="true")).json()
    assert listed["total"] == len(PEOPLE)
    other = (await api.get("/v1/tenants/other/contacts", "other:read")).json()["data"]
    assert [r["email"] for r in other] == [OTHER_EMAIL]


async def test_exports_stream_csv_and_parquet(api: Api) -> None:
    await seed(api)
    import csv
    import io

    import pyarrow.parquet as pq

    t = "/v1/tenants/acme"
    response = await api.get(f"{t}/exports/contacts", language="es")
    assert response.status_code == 200, response.text
    assert response.headers.get_list("content-type") == ["text/csv; charset=utf-8"]
    assert "attachment" in response.headers["content-disposition"]
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert {r["email"] for r in rows} == {"ana@example.com", "carla@example.com",
                                          "eva@example.com"}
    parquet = await api.get(f"{t}/exports/contacts", format="parquet", tag="vip")
    assert parquet.headers.get_list("content-type") == ["application/vnd.apache.parquet"]
    table = pq.read_table(io.BytesIO(parquet.content))
    assert sorted(table.column("email").to_pylist()) == ["ana@example.com",
                                                         "carla@example.com"]
    members = await api.get(f"{t}/segments/vips/export")
    assert members.headers.get_list("content-type") == ["text/csv; charset=utf-8"]
    members_parquet = await api.get(f"{t}/segments/vips/export", format="parquet")
    assert members_parquet.headers.get_list("content-type") == [
        "application/vnd.apache.parquet"]
    assert {r["email"] for r in csv.DictReader(io.StringIO(members.text))} == {
        "ana@example.com", "carla@example.com"}
    before = await api.get(f"{t}/segments/vips/export", as_of="2000-01-01T00:00:00Z")
    assert list(csv.DictReader(io.StringIO(before.text))) == []
    wrong = await api.get(f"{t}/exports/contacts", format="xlsx")
    assert wrong.status_code == 400 and wrong.json()["error"]["field"] == "format"
    assert (await api.get(f"{t}/exports/contacts", consent="fax")).status_code == 400
    # An export can wait for a write: the event just published is in the file.
    await api.publish("contact_updated", email="zoe@example.com", event_id="zoe-joins",
                      occurred_at="2026-11-21T10:00:00Z", contact={"language": "es"})
    waited = await api.get(f"{t}/exports/contacts", language="es", wait_for_event="zoe-joins",
                           wait_timeout="20")
    assert waited.status_code == 200, waited.text
    assert "zoe@example.com" in {r["email"] for r in csv.DictReader(io.StringIO(waited.text))}
    never = await api.get(f"{t}/exports/contacts", wait_for_event="never-sent",
                          wait_timeout="0.3")
    assert never.status_code == 503 and never.json()["error"]["code"] == "not_yet_ingested"


async def test_exports_say_how_fresh_they_are_and_can_wait_for_a_write(api: Api) -> None:
    import csv
    import io

    await seed(api)
    t = "/v1/tenants/acme"
    status = (await api.get(f"{t}/status")).json()
    before = {p["projection"]: p["position"] for p in status["projections"]}
    for url, projection in ((f"{t}/exports/contacts", "contacts"),
                            (f"{t}/segments/vips/export", "audience")):
        for fmt in ("csv", "parquet"):
            response = await api.get(url, format=fmt)
            assert response.status_code == 200, response.text
            assert int(response.headers["Ficha-Position"]) >= before[projection] > 0, url
            assert int(response.headers["Ficha-Lag"]) >= 0
        ahead = await api.get(url, min_position="999999999", wait_timeout="0.2")
        assert ahead.status_code == 503, ahead.text
        assert ahead.json()["error"]["code"] == "not_yet_projected"
        assert projection in ahead.json()["error"]["message"]
    # The segment's export waits for a write as the client list's does.
    await api.publish("contact_updated", email="bo@example.com", event_id="bo-vip",
                      occurred_at="2026-11-21T10:00:00Z", tags_added=["vip"])
    waited = await api.get(f"{t}/segments/vips/export", wait_for_event="bo-vip",
                           wait_timeout="20")
    assert waited.status_code == 200, waited.text
    assert "bo@example.com" in {r["email"] for r in csv.DictReader(io.StringIO(waited.text))}


async def test_erasure_and_subject_access_through_the_api(api: Api) -> None:
    await seed(api)
    t = "/v1/tenants/acme"
    admin = api.auth("acme:admin")
    assert (await api.get(f"{t}/contacts/eva@example.com/access")).status_code == 403
    held = (await api.get(f"{t}/contacts/eva@example.com/access", "acme:admin")).json()
    assert held["card"]["first_name"] == "Eva" and held["events"]
    requested = await api.http.post(f"{t}/contacts/eva@example.com/erasure", headers=admin)
    assert requested.status_code == 202, requested.text
    receipt_url = requested.json()["receipt"]
    deadline = time.monotonic() + 60
    while True:
        receipt = await api.get(receipt_url, "acme:admin")
        if receipt.status_code == 200 and receipt.json()["complete"]:
            break
        assert time.monotonic() < deadline, receipt.text
        await asyncio.sleep(0.2)
    body = receipt.json()
    assert body["tenant"] == "acme" and "eva" not in receipt.text.lower()
    assert all(body["projections"].values())
    assert (await api.get(f"{t}/contacts/eva@example.com")).status_code == 404
    gone = await api.get(f"{t}/contacts/eva@example.com/access", "acme:admin")
    assert gone.status_code == 404
    again = await api.http.post(f"{t}/contacts/eva@example.com/erasure", headers=admin)
    assert again.status_code == 404
    listed = (await api.get(f"{t}/erasures", "acme:admin")).json()
    assert [r["event_id"] for r in listed] == [requested.json()["event_id"]]
    assert (await api.get(f"{t}/erasures", "acme:read")).status_code == 403
    others = (await api.get("/v1/tenants/other/erasures", "other:admin")).json()
    assert others == []


async def test_status_tells_a_failing_read_model_without_its_error(api: Api) -> None:
    views = api.runtime.views
    assert views is not None
    healthy = (await api.get("/v1/tenants/acme/status")).json()
    assert [p["failing"] for p in healthy["projections"]] == [None, None]
    await asyncio.to_thread(views.record_failure, "audience",
                            "OperationalError: about someone@other.example", "2026-12-05T10:00:00Z")
    try:
        report = (await api.get("/v1/tenants/acme/status")).json()
        failing = {p["projection"]: p["failing"] for p in report["projections"]}
        assert failing["contacts"] is None
        assert failing["audience"]["attempts"] == 1
        assert failing["audience"]["since"].startswith("2026-12-05T10:00:00")
        assert "other.example" not in json.dumps(report)
    finally:
        await asyncio.to_thread(views.clear_failure, "audience")


async def test_import_through_the_api(api: Api) -> None:
    await seed(api)
    t = "/v1/tenants/acme"
    csv_text = ("email,first_name,language,tags,list:newsletter\n"
                "nia@example.com,Nia,es,vip|new,yes\n"
                "not-an-email,Bad,es,,\n"
                "omar@example.com,Omar,en,,no\n")
    mapping = b'{"columns": {"tags": "tags"}, "tag_separator": "|"}'
    files = {"file": ("people.csv", csv_text.encode()),
             "mapping": ("mapping.json", mapping)}
    assert (await api.http.post(f"{t}/imports", files=files,
                                headers=api.auth("acme:read"))).status_code == 403
    first = await api.http.post(f"{t}/imports", files=files, headers=api.auth("acme:admin"))
    assert first.status_code == 200, first.text
    report = first.json()
    assert (report["rows_accepted"], report["rows_rejected"]) == (2, 1)
    [rejected] = report["rejections"]
    assert rejected["line"] == 3 and rejected["column"] == "email"
    card = await api.get(f"{t}/contacts/nia@example.com", wait_timeout="20",
                         wait_for_event=await _an_event_of(api, "nia@example.com"))
    assert card.status_code == 200, card.text
    assert sorted(card.json()["data"]["tags"]) == ["new", "vip"]
    assert api.runtime.store is not None
    await _ingested(api)
    received = api.runtime.store.received_count()
    again = (await api.http.post(f"{t}/imports", files=files,
                                 headers=api.auth("acme:admin"))).json()
    assert again["events_published"] == report["events_published"] > 0
    await _ingested(api)
    assert api.runtime.store.received_count() == received  # the same ids: nothing new
    bad = await api.http.post(f"{t}/imports", headers=api.auth("acme:admin"), files={
        "file": ("x.csv", b"name\nAna\n")})
    assert bad.status_code == 400 and bad.json()["error"]["code"] in (
        "invalid_mapping", "invalid_file")
    assert "email" in bad.json()["error"]["message"]


async def test_a_refused_upload_says_what_to_send_in_the_apis_words(api: Api) -> None:
    """Refusals speak of the uploaded files by their names (not of the server's folders)
    and of the API's parameters (not of the CLI's options)."""
    t = "/v1/tenants/acme/imports?dry_run=true"
    admin = api.auth("acme:admin")

    async def refused(status: int = 400, **kw: Any) -> dict[str, Any]:
        answer = await api.http.post(t, headers=admin, **kw)
        assert answer.status_code == status, answer.text
        error: dict[str, Any] = answer.json()["error"]
        assert "/tmp" not in error["message"] and "ficha-import-" not in error["message"]
        return error

    mapping = await refused(files={"file": ("people.csv", b"email\nana@example.com\n"),
                                   "mapping": ("map.json", b"{not json")})
    assert mapping["code"] == "invalid_mapping" and "map.json" in mapping["message"]
    latin = "email,first_name\nfelix@example.com,Félix\n".encode("cp1252")
    encoded = await refused(files={"file": ("people.csv", latin)})
    assert "in the API, `encoding=cp1252`" in encoded["message"]
    fixed = await api.http.post(t + "&encoding=cp1252", headers=admin,
                                files={"file": ("people.csv", latin)})
    assert fixed.status_code == 200 and fixed.json()["rows_accepted"] == 1, fixed.text
    unknown = await refused(files={"file": ("people.csv", b"email,shoe\nana@example.com,42\n")})
    assert "ignore_unknown_columns=true" in unknown["message"]
    semicolons = b"email;first_name\nana@example.com;Ana\n"
    split = await api.http.post(t + "&delimiter=%3B", headers=admin,
                                files={"file": ("people.csv", semicolons)})
    assert split.status_code == 200 and split.json()["rows_accepted"] == 1, split.text
    odd = await refused(files={"file": ("people.csv", semicolons)}, params={"delimiter": "x"})
    assert odd["field"] == "delimiter"
    # A multipart upload whose `file` is a text field, not a file.
    not_a_file = await refused(data={"file": "people.csv"}, files={"mapping": ("m.json", b"{}")})
    assert not_a_file["field"] == "file" and "-F file=@" in not_a_file["message"], not_a_file


async def _an_event_of(api: Api, email: str) -> str:
    """The id of an event the import published for this email (from the log of the bus:
    the API's read-your-writes needs one event id)."""
    assert api.runtime.js is not None
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        info = await api.runtime.js.stream_info("FICHA_IN")
        for seq in range(info.state.last_seq, max(0, info.state.last_seq - 20), -1):
            msg = await api.runtime.js.get_msg("FICHA_IN", seq)
            if email.encode() in (msg.data or b""):
                return str((msg.headers or {})["Nats-Msg-Id"])
        await asyncio.sleep(0.1)
    raise AssertionError(f"no event for {email}")


async def _ingested(api: Api) -> None:
    """Until every message in FICHA_IN has been processed by its partition's worker."""
    from services.streams import consumer_name

    assert api.runtime.js is not None
    deadline = time.monotonic() + 30
    while True:
        waiting = 0
        for k in range(api.runtime.settings.partitions):
            info = await api.runtime.js.consumer_info("FICHA_IN", consumer_name(k))
            waiting += info.num_pending + info.num_ack_pending
        if waiting == 0:
            return
        assert time.monotonic() < deadline
        await asyncio.sleep(0.1)
