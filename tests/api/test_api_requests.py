"""What the API answers to requests it must refuse: tampered cursors, out-of-range
sequences, bad names; every refusal a 4xx naming the field, never a 5xx."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import time
from typing import Any

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.limits import PREVIEW_SAMPLE_MAX
from tests.api.conftest import Api
from tests.api.test_api import VIP, seed

T = "/v1/tenants/acme"
LIST_SORTS = ["first_seen_at", "-first_seen_at", "last_activity_at", "-last_activity_at",
              "email", "-email", "name", "-name"]
# Each paginated route: its address, its other parameters, and the first item of the
# cursor it gives out (the sort, or "timeline"; None: the members' cursor is a contact id).
PAGINATED: list[tuple[str, dict[str, str], str | None]] = [
    *[(f"{T}/contacts", {"sort": s}, s) for s in LIST_SORTS],
    (f"{T}/contacts/ana@example.com/timeline", {}, "timeline"),
    (f"{T}/segments/vips/members", {}, None),
]


def b64(value: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")


def assert_foreign_cursor(response: httpx.Response) -> None:
    assert response.status_code == 400, (response.request.url, response.text)
    error = response.json()["error"]
    assert (error["code"], error["field"]) == ("invalid_request", "cursor"), error
    assert "not one this server gave out" in error["message"], error


async def test_a_tampered_cursor_is_refused_naming_the_cursor(api: Api) -> None:
    await seed(api)
    for url, params, sort in PAGINATED:
        first = await api.get(url, **params, limit=1)
        assert first.status_code == 200, first.text
        given_out = first.json()["next_cursor"]
        assert given_out, url
        following = await api.get(url, **params, limit=1, cursor=given_out)
        assert following.status_code == 200, following.text
        assert following.json()["data"] != first.json()["data"]
        tampered = ["abc", "zzz", "x" * 5000, b64([sort, "abc", "abc"])[:-1] + "!"]
        if sort is not None:
            row_id = "a" * 32 if sort == "timeline" else "0" * 32
            tampered += [b64([sort, value, row_id]) for value in
                         (None, 123, ["a"], "a\x00b", "\ud800")]
            tampered += [b64([sort, "2026-11-01T10:00:00Z", None]), b64([sort, "a", 7]),
                         b64([sort, "a"]), b64({"sort": sort}), b64("plain")]
            if sort == "timeline" or sort.endswith("_at"):
                tampered += [b64([sort, value, row_id]) for value in
                             ("notatime", "99999-01-01T00:00:00Z",
                              "0001-01-01T00:00:00+01:00", "2026-11-01T10:00:00")]
            else:  # a text sort: the id must be a contact id
                tampered += [b64([sort, "notatime", "abc"])]
        for cursor in tampered:
            assert_foreign_cursor(await api.get(url, **params, cursor=cursor))


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=8)
TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=300)
TIMES = st.datetimes(timezones=st.timezones()).map(lambda d: d.isoformat())


def cursors(sort: str | None) -> st.SearchStrategy[str]:
    """Anything a caller could send: any text, or valid base64 of any JSON, or of a
    triple shaped like the server's (its sort or another, any value, any id)."""
    shaped = st.tuples(st.sampled_from([sort or "x", "timeline", "email", "-email"]),
                       JSON | TIMES, JSON).map(list)
    return TEXT | (JSON | shaped).map(b64)


async def test_no_cursor_whatever_it_holds_gets_a_5xx(api: Api) -> None:
    """Property: for each paginated route, any cursor string, and any JSON inside valid
    base64, is answered 200 or a 400 naming the cursor; never a 5xx."""
    await seed(api)
    base, auth = str(api.http.base_url), api.auth("acme:read")

    cases = st.sampled_from(PAGINATED).flatmap(
        lambda route: st.tuples(st.just(route), cursors(route[2])))

    def explore() -> None:
        with httpx.Client(base_url=base, headers=auth, timeout=30) as http:
            @settings(max_examples=250, deadline=None, database=None,
                      suppress_health_check=list(HealthCheck))
            @given(case=cases)
            def never_5xx(case: tuple[tuple[str, dict[str, str], str | None], str]) -> None:
                (url, params, _), cursor = case
                response = http.get(url, params={**params, "cursor": cursor})
                assert response.status_code in (200, 400), (url, cursor, response.text)
                if response.status_code == 400:
                    error = response.json()["error"]
                    assert error["code"] == "invalid_request", error
                    assert error["field"] == "cursor" or "NUL" in error["message"], error

            never_5xx()

    await asyncio.to_thread(explore)


async def test_a_dead_letter_sequence_out_of_range_is_404(api: Api) -> None:
    """A stream sequence is 1 to 2^64-1: any other number names no dead letter (404, as
    for a sequence that was never used), rather than a 500 from NATS's refusal."""
    assert api.runtime.js is not None
    await api.runtime.js.publish("ficha.in.acme.contact_updated", b"not json",
                                 headers={"Nats-Msg-Id": "junk"})
    deadline = time.monotonic() + 30
    while not (await api.get(f"{T}/dead-letters")).json()["total"]:
        assert time.monotonic() < deadline, "the junk message was not dead-lettered"
        await asyncio.sleep(0.1)
    for seq in ("0", "-1", "-99999999999999999999999", str(2**64 - 1), str(2**64),
                str(2**64 + 1), "1" + "0" * 40, "999999"):
        response = await api.get(f"{T}/dead-letters/{seq}", "acme:admin")
        assert response.status_code == 404, (seq, response.text)
        error = response.json()["error"]
        assert error["code"] == "not_found" and f"no dead letter {seq}" in error["message"]


async def openapi(api: Api) -> dict[str, Any]:
    response = await api.http.get("/schema/openapi.json")
    assert response.status_code == 200
    document: dict[str, Any] = response.json()
    return document


def error_schema_errors(document: dict[str, Any], body: Any) -> list[str]:
    """How an answer's body departs from the ErrorResponse of the OpenAPI document."""
    from jsonschema import Draft202012Validator

    schema = {"$ref": "#/components/schemas/ErrorResponse",
              "components": document["components"]}
    return [e.message for e in Draft202012Validator(schema).iter_errors(body)]


def answer_schema_errors(document: dict[str, Any], path: str, body: Any) -> list[str]:
    """How a 200 answer's body departs from what the OpenAPI document says of it."""
    from jsonschema import Draft202012Validator

    shown = document["paths"][path]["get"]["responses"]["200"]["content"]["application/json"]
    schema = {**shown["schema"], "components": document["components"]}
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
            for e in Draft202012Validator(schema).iter_errors(body)]


async def test_the_typed_answers_are_what_the_openapi_document_says(api: Api) -> None:
    """The client list, the card (with lists and timeline), the timeline, segments and
    their members are typed field by field in the document (an integrator generates a
    client from it): real answers validate against it, and every field it names is
    answered."""
    await seed(api)
    await api.publish("list_subscribed", email="ana@example.com", event_id="ana-news",
                      list_id="news")
    await api.runtime.wait_until_projected(30)
    document = await openapi(api)
    t = "/v1/tenants/{tenant}"
    answers = {
        f"{t}/contacts": await api.get(f"{T}/contacts"),
        f"{t}/contacts/{{ref}}": await api.get(f"{T}/contacts/ana@example.com"),
        f"{t}/contacts/{{ref}}/timeline": await api.get(f"{T}/contacts/ana@example.com/timeline",
                                                       limit="2"),
        f"{t}/segments": await api.get(f"{T}/segments"),
        f"{t}/segments/{{segment_id}}": await api.get(f"{T}/segments/vips"),
        f"{t}/segments/{{segment_id}}/members": await api.get(f"{T}/segments/vips/members"),
    }
    for path, answer in answers.items():
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert answer_schema_errors(document, path, body) == [], path
    schemas = document["components"]["schemas"]
    card = answers[f"{t}/contacts/{{ref}}"].json()["data"]
    assert set(card) == set(schemas["ContactCard"]["properties"])
    assert card["lists"] and card["timeline"]  # the nested shapes were checked too
    row = answers[f"{t}/contacts"].json()["data"][0]
    assert set(row) == set(schemas["ContactListRow"]["properties"])
    entry = answers[f"{t}/contacts/{{ref}}/timeline"].json()["data"][0]
    assert set(entry) == set(schemas["TimelineEntry"]["properties"])
    member = answers[f"{t}/segments/{{segment_id}}/members"].json()["data"][0]
    assert set(member) == set(schemas["SegmentMember"]["properties"])
    segment = answers[f"{t}/segments/{{segment_id}}"].json()["data"]
    assert set(segment) == set(schemas["SegmentDefinition"]["properties"])
    # A wrong answer would not pass: the check can fail.
    assert answer_schema_errors(document, f"{t}/contacts", {"data": [{"email": 1}]})


# Routes that talk to NATS, so answer 503 bus_unavailable when it is away.
ON_THE_BUS = {"/v1/tenants/{tenant}/dead-letters", "/v1/tenants/{tenant}/dead-letters/{seq}",
              "/v1/tenants/{tenant}/dead-letters/redrive",
              "/v1/tenants/{tenant}/dead-letters/purge",
              "/v1/tenants/{tenant}/contacts/{ref}/erasure",
              "/v1/tenants/{tenant}/contacts/{ref}/access", "/v1/tenants/{tenant}/imports"}


async def test_the_openapi_document_describes_the_errors_each_route_gives(api: Api) -> None:
    """Route by route: every error response is ficha's error body, and the statuses
    documented include those the route gives: 400, 401 and 404 everywhere, 403 where a
    read key is refused, 413 where there is a body, 503 where the route waits or uses the
    bus, 409 where a segment can conflict, and 422 (an awaited event dead-lettered) on
    exactly the routes that take min_position and wait_for_event; real answers match the
    documented schema."""
    from tests.api.test_api import BODIES, call, path

    await seed(api)
    document = await openapi(api)
    schemas = document["components"]["schemas"]
    body = schemas["ErrorBody"]
    assert set(body["required"]) == {"code", "message", "field"}
    # A 422's dead letter: a member of the error that only dead_lettered carries.
    assert body["properties"]["dead_letter"] == {
        "oneOf": [{"$ref": "#/components/schemas/DeadLetterRef"}]}
    letter = schemas["DeadLetterRef"]
    assert set(letter["required"]) == set(letter["properties"]) == {"seq", "code", "detail"}
    assert document["components"]["schemas"]["ErrorResponse"]["required"] == ["error"]
    values = {"tenant": "acme", "ref": "ana@example.com", "segment_id": "vips",
              "name": "colour", "seq": "999999", "reference": "ana@example.com"}
    checked = 0
    for template, item in document["paths"].items():
        if not template.startswith("/v1/tenants/"):
            continue
        for method, operation in item.items():
            if method not in ("get", "post", "put", "delete"):
                continue
            route = (method, template)
            responses = operation["responses"]
            documented = {int(status) for status in responses}
            for status, answer in responses.items():
                if int(status) >= 400:
                    assert answer["content"]["application/json"]["schema"] == {
                        "$ref": "#/components/schemas/ErrorResponse"}, (route, status)
            parameters = {p["name"] for p in operation.get("parameters", [])}
            waits = "wait_for_event" in parameters
            assert waits == ("min_position" in parameters), route
            assert waits == ("422" in responses), route
            wanted = {400, 401, 404, 500}
            wanted |= {422} if waits else set()
            wanted |= {413} if "requestBody" in operation else set()
            wanted |= {503} if "min_position" in parameters or template in ON_THE_BUS else set()
            wanted |= {409} if template.endswith(("/segments", "{segment_id}")) and (
                method != "get") else set()
            # What the route answers: without a key, with a read key.
            url = path(template, **values)
            anonymous = await api.http.request(method.upper(), url,
                                               json=BODIES.get(route))
            reading = await call(api, method, url, "acme:read", template)
            wanted |= {403} if reading.status_code == 403 else set()
            assert wanted <= documented, (route, sorted(wanted - documented))
            for answer in (anonymous, reading):
                assert answer.status_code in documented, (route, answer.status_code)
                if answer.status_code >= 400:
                    assert error_schema_errors(document, answer.json()) == [], (
                        route, answer.text)
            checked += 1
    assert checked >= 30
    # Some more real errors, each documented for its route and shaped as documented.
    admin = api.auth("acme:admin")
    t = "/v1/tenants/acme"
    real = [
        ("post", "/v1/tenants/{tenant}/segments",
         await api.http.post(f"{t}/segments", json={"id": "vips", "rule": VIP}, headers=admin)),
        ("get", "/v1/tenants/{tenant}/contacts", await api.get(f"{t}/contacts", limit="0")),
        ("get", "/v1/tenants/{tenant}/contacts",
         await api.get(f"{t}/contacts", min_position="99999999", wait_timeout="0.1")),
        ("get", "/v1/tenants/{tenant}/exports/contacts",
         await api.get(f"{t}/exports/contacts", format="xlsx")),
    ]
    for method, template, answer in real:
        assert answer.status_code >= 400
        assert str(answer.status_code) in document["paths"][template][method]["responses"]
        assert error_schema_errors(document, answer.json()) == [], answer.text
    assert {r[2].status_code for r in real} == {409, 400, 503}


async def test_the_openapi_document_describes_exports_and_required_fields(api: Api) -> None:
    await seed(api)
    document = await openapi(api)
    for template in ("/v1/tenants/{tenant}/exports/contacts",
                     "/v1/tenants/{tenant}/segments/{segment_id}/export"):
        content = document["paths"][template]["get"]["responses"]["200"]["content"]
        assert set(content) == {"text/csv", "application/vnd.apache.parquet"}, content
        for fmt in ("csv", "parquet"):
            answer = await api.get(path_of(template), format=fmt)
            assert answer.status_code == 200
            assert answer.headers["content-type"].split(";")[0] in content
    new_segment = document["components"]["schemas"]["NewSegment"]
    assert set(new_segment["required"]) == {"id", "rule"}
    assert "default" not in new_segment["properties"]["id"]
    page = document["components"]["schemas"]["Page"]
    assert set(page["required"]) == {"data", "freshness", "next_cursor", "total"}
    answer = await api.get(f"{T}/contacts")
    assert set(answer.json()) == set(page["properties"])


def path_of(template: str) -> str:
    return template.replace("{tenant}", "acme").replace("{segment_id}", "vips")


async def test_a_bad_segment_id_or_name_is_400_naming_it_and_conflicts_stay_409(
        api: Api) -> None:
    await seed(api)
    admin = api.auth("acme:admin")
    for body, field in (({"id": "Bad Id!", "rule": VIP}, "id"),
                        ({"id": "x" * 65, "rule": VIP}, "id"),
                        ({"id": "long-name", "name": "n" * 10_000, "rule": VIP}, "name"),
                        ({"id": "nul-name", "name": "a\x00b", "rule": VIP}, "name")):
        response = await api.http.post(f"{T}/segments", json=body, headers=admin)
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert (error["code"], error["field"]) == ("invalid_request", field), error
        assert error["message"].startswith(f"{field}: "), error
    renamed = await api.http.put(f"{T}/segments/vips", json={"rule": VIP, "name": "n" * 201},
                                 headers=admin)
    assert renamed.status_code == 400 and renamed.json()["error"]["field"] == "name"
    # Real conflicts: an id that exists, a segment another one uses.
    again = await api.http.post(f"{T}/segments", json={"id": "vips", "rule": VIP},
                                headers=admin)
    assert again.status_code == 409 and again.json()["error"]["code"] == "already_exists"
    user = await api.http.post(f"{T}/segments", json={"id": "uses-vips",
                                                      "rule": {"segment": "vips"}},
                               headers=admin)
    assert user.status_code == 201, user.text
    used = await api.http.delete(f"{T}/segments/vips", headers=admin)
    assert used.status_code == 409 and used.json()["error"]["code"] == "segment_conflict"


async def test_every_validation_error_names_its_field(api: Api) -> None:
    await seed(api)
    admin = api.auth("acme:admin")
    cases: list[tuple[str, httpx.Response, str]] = [
        ("invalid_request", await api.get(f"{T}/contacts", sort="bogus"), "sort"),
        ("invalid_request", await api.get(f"{T}/contacts", sort="--email"), "sort"),
        ("invalid_request", await api.get(f"{T}/contacts", cursor="abc"), "cursor"),
        ("invalid_request", await api.get(f"{T}/contacts", consent="fax"), "consent"),
        ("invalid_request", await api.get(f"{T}/contacts", no_consent="fax"), "no_consent"),
        ("invalid_request", await api.get(f"{T}/exports/contacts", consent="fax"), "consent"),
        ("invalid_request", await api.get(f"{T}/exports/contacts", no_consent="fax"),
         "no_consent"),
        ("not_yet_projected", await api.get(f"{T}/contacts", min_position="99999999",
                                            wait_timeout="0.1"), "min_position"),
        ("invalid_request", await api.get(f"{T}/contacts", min_position=str(2**63)),
         "min_position"),
    ]
    for body, field in (({"type": "colour"}, "type"), ({"type": "choice"}, "options"),
                        ({"type": "number", "options": ["a"]}, "options"),
                        ({"type": "text", "label": "x" * 201}, "label"),
                        ({"type": "text", "label": "a\x00b"}, "label"),
                        ({"type": "choice", "options": ["a", "b\x00"]}, "options")):
        cases.append(("invalid_property", await api.http.put(
            f"{T}/properties/x", json=body, headers=admin), field))
    cases.append(("invalid_property", await api.http.put(
        f"{T}/properties/bad name", json={"type": "text"}, headers=admin), "name"))
    for body, field in (({"id": "x1", "name": "x"}, "rule"),
                        ({"id": "x1", "rule": VIP, "extra": 1}, "extra"),
                        ({"rule": VIP}, "id")):
        cases.append(("invalid_request", await api.http.post(
            f"{T}/segments", json=body, headers=admin), field))
    for code, response, field in cases:
        error = response.json()["error"]
        assert (error["code"], error["field"]) == (code, field), (response.request.url, error)
        assert response.status_code == (503 if code.startswith("not_yet") else 400), error


async def test_a_preview_refuses_what_create_and_edit_refuse(api: Api) -> None:
    await seed(api)
    admin = api.auth("acme:admin")
    refused = [({"segment": "nosuch"}, "es-vip"), ({"segment": "vips"}, "vips"),
               ({"all": [VIP, {"field": "nope", "op": "equals"}]}, "es-vip"),
               ({"segment": "es-vip"}, "es-vip")]
    for rule, segment_id in refused:
        previewed = await api.http.post(f"{T}/segments/{segment_id}/preview",
                                        json={"rule": rule}, headers=admin)
        if segment_id == "vips":
            written = await api.http.put(f"{T}/segments/vips", json={"rule": rule},
                                         headers=admin)
        else:
            written = await api.http.post(f"{T}/segments", json={"id": segment_id,
                                                                 "rule": rule}, headers=admin)
        assert written.status_code == 400, written.text
        assert (previewed.status_code, previewed.json()) == (400, written.json()), rule
        assert previewed.json()["error"]["code"] == "invalid_rule"
    bad_id = await api.http.post(f"{T}/segments/Bad%20Id/preview", json={"rule": VIP},
                                 headers=admin)
    assert bad_id.status_code == 400 and bad_id.json()["error"]["field"] == "id"
    fine = await api.http.post(f"{T}/segments/es-vip/preview",
                               json={"rule": {"segment": "vips"}}, headers=admin)
    assert fine.status_code == 200 and fine.json()["data"]["would_enter"] == 2
    # The sample's bound is the CLI's (services.limits).
    for sample in (-1, PREVIEW_SAMPLE_MAX + 1):
        refused = await api.http.post(f"{T}/segments/es-vip/preview",
                                      json={"rule": VIP, "sample": sample}, headers=admin)
        assert refused.status_code == 400 and refused.json()["error"]["field"] == "sample"
    fine = await api.http.post(f"{T}/segments/es-vip/preview",
                               json={"rule": VIP, "sample": PREVIEW_SAMPLE_MAX}, headers=admin)
    assert fine.status_code == 200, fine.text


async def test_small_things_instants_ranges_redrive_and_trimmed_filters(api: Api) -> None:
    await seed(api)
    admin = api.auth("acme:admin")
    # RFC 3339 lets t and z be lower case.
    upper = await api.get(f"{T}/contacts", first_seen_from="2026-11-03T10:00:00Z")
    lower = await api.get(f"{T}/contacts", first_seen_from="2026-11-03t10:00:00z")
    assert lower.status_code == 200, lower.text
    assert lower.json()["data"] == upper.json()["data"] != []
    in_rule = await api.http.post(f"{T}/segments/later/preview", headers=admin, json={
        "rule": {"field": "first_seen_at", "op": "after", "value": "2026-11-03t10:00:00z"}})
    assert in_rule.status_code == 200 and in_rule.json()["data"]["would_enter"] == 2
    # A reversed between is refused, naming the clause, whatever the field.
    for clause in ({"field": "property.shoe_size", "op": "between", "value": [40, 37]},
                   {"field": "rfm.recency", "op": "between", "value": [5, 1]},
                   {"count": "purchases", "op": "between", "value": [3, 1]},
                   {"field": "first_seen_at", "op": "between",
                    "value": ["2026-12-01", "2026-11-01"]}):
        rule = {"all": [VIP, clause]}
        response = await api.http.post(f"{T}/segments", json={"id": "odd", "rule": rule},
                                       headers=admin)
        assert response.status_code == 400, (clause, response.text)
        error = response.json()["error"]
        assert error["code"] == "invalid_rule" and "rule.all[1]" in error["message"], error
        assert "first bound is after the second" in error["message"], error
    mixed = await api.http.post(f"{T}/segments/odd/preview", headers=admin, json={"rule": {
        "field": "property.shoe_size", "op": "between", "value": [1, "2026-01-01"]}})
    assert mixed.status_code == 400 and "both numbers or both dates" in mixed.text
    # Re-drive (and purge) take seqs or code, not both.
    for route in ("redrive", "purge"):
        both = await api.http.post(f"{T}/dead-letters/{route}", headers=admin,
                                   json={"seqs": [1], "code": "not_json",
                                         **({"confirm": True} if route == "purge" else {})})
        assert both.status_code == 400 and both.json()["error"]["field"] == "code", both.text
    # Text filters are trimmed like the search.
    for name, value in (("language", "es"), ("country", "es"), ("tag", "vip")):
        plain = (await api.get(f"{T}/contacts", **{name: value})).json()["data"]
        padded = await api.get(f"{T}/contacts", **{name: f" {value} "})
        assert padded.status_code == 200 and padded.json()["data"] == plain != [], name


async def test_messages_say_what_to_do_and_do_not_echo_long_input(api: Api) -> None:
    await seed(api)
    for fmt, words in (("xlsx", ["csv or parquet"]), ("CSV", ["csv or parquet", "lower case"])):
        for url in (f"{T}/exports/contacts", f"{T}/segments/vips/export"):
            response = await api.get(url, format=fmt)
            error = response.json()["error"]
            assert (response.status_code, error["field"]) == (400, "format"), error
            assert all(w in error["message"] for w in words), error
    basic = await api.http.get(f"{T}/contacts", headers={"Authorization": "Basic YTpi"})
    assert basic.status_code == 401
    assert "Basic scheme" in basic.json()["error"]["message"]
    assert "must be Bearer" in basic.json()["error"]["message"]
    empty = await api.http.get(f"{T}/contacts", headers={"Authorization": "Bearer"})
    assert empty.status_code == 401
    assert "no key after Bearer" in empty.json()["error"]["message"]
    long_ref = "x" * 5000
    for url in (f"{T}/contacts/{long_ref}", f"{T}/segments/{long_ref}",
                f"{T}/contacts/{long_ref}/timeline"):
        response = await api.get(url)
        assert response.status_code == 404, response.text
        message = response.json()["error"]["message"]
        assert len(message) < 200 and re.search(r"…\(500\d characters\)", message), message
    bad_id = await api.http.post(f"{T}/segments", json={"id": long_ref + "!", "rule": VIP},
                                 headers=api.auth("acme:admin"))
    assert bad_id.status_code == 400 and len(bad_id.json()["error"]["message"]) < 400


async def test_the_error_examples_of_docs_api_md_are_real_answers(api: Api) -> None:
    """The examples under "Errors" in docs/api.md are what the API answers (the rule's
    message is cut with … in the doc)."""
    from pathlib import Path

    text = (Path(__file__).parents[2] / "docs" / "api.md").read_text()
    section = text[text.index("## Errors"):]
    examples = [json.loads(line) for line in section.splitlines()
                if line.startswith('{"error"')]
    assert len(examples) == 3
    admin = {**api.auth("acme:admin"), "Content-Type": "application/json"}
    answers = [
        await api.get(f"{T}/contacts", limit="5000"),
        await api.http.post(f"{T}/segments", headers=admin, json={"id": "x", "rule": {
            "all": [VIP, {"field": "nope", "op": "equals"}]}}),
        await api.http.post(f"{T}/segments", headers=admin, content=b'{"id": '),
    ]
    for example, answer in zip(examples, answers, strict=True):
        real = answer.json()["error"]
        shown = example["error"]
        if shown["message"].endswith("…"):
            real["message"] = real["message"][:len(shown["message"]) - 1] + "…"
        assert real == shown, (real, shown)
