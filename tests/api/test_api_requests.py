"""What the API answers to requests it must refuse: tampered cursors, out-of-range
sequences, bad names; every refusal a 4xx naming the field, never a 5xx."""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.api.conftest import Api
from tests.api.test_api import seed

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
    while not (await api.get(f"{T}/dead-letters")).json()["total"]:
        await asyncio.sleep(0.1)
    for seq in ("0", "-1", "-99999999999999999999999", str(2**64 - 1), str(2**64),
                str(2**64 + 1), "1" + "0" * 40, "999999"):
        response = await api.get(f"{T}/dead-letters/{seq}", "acme:admin")
        assert response.status_code == 404, (seq, response.text)
        error = response.json()["error"]
        assert error["code"] == "not_found" and f"no dead letter {seq}" in error["message"]
