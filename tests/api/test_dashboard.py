"""The dashboard in headless Chromium (Debian's package, driven by Playwright) against a
running ficha fed by `ficha demo`: every number shown equals the API's; a screenshot is
kept under test-artifacts/."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tests.api.conftest import Api
from tests.programs import chromium_or_skip

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


async def feed_with_demo(api: Api, events: int) -> None:
    """`ficha demo` as a user runs it, against this runtime's NATS server."""
    env = {**os.environ, **api.runtime.settings.to_env()}
    await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "services", "demo", "--tenant", "acme",
                    "--events", str(events), "--seed", "7"],
        env=env, check=True, capture_output=True, timeout=300)
    assert api.runtime.store is not None
    deadline = time.monotonic() + 120
    while api.runtime.store.received_count() < events:
        assert time.monotonic() < deadline, "the demo's events were not all ingested"
        await asyncio.sleep(0.2)
    await api.runtime.wait_until_projected(120)


async def test_the_dashboard_shows_what_the_api_says(api: Api, backend: str) -> None:
    executable = chromium_or_skip()
    from playwright.async_api import async_playwright

    await feed_with_demo(api, 3000)
    assert api.runtime.js is not None
    for n in range(3):
        await api.runtime.js.publish("ficha.in.acme.order_paid", b"{broken",
                                     headers={"Nats-Msg-Id": f"broken-{n}"})
    created = await api.http.post(
        "/v1/tenants/acme/segments", headers=api.auth("acme:admin"),
        json={"id": "buyers", "name": "Buyers", "rule": {
            "count": "purchases", "op": "gte", "value": 1}})
    assert created.status_code == 201
    await api.get("/v1/tenants/acme/segments", min_position=created.json()["position"],
                  wait_timeout="30")
    deadline = time.monotonic() + 20
    while (await api.get("/v1/tenants/acme/dead-letters")).json()["total"] < 3:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.1)

    async def read_truth() -> dict[str, Any]:
        truth: dict[str, Any] = {}
        for name in ("engagement", "lists", "rfm", "segment-sizes", "dead-letters"):
            response = await api.get(f"/v1/tenants/acme/{name}")
            assert response.status_code == 200, response.text
            body = response.json()
            body.pop("freshness", None)
            truth[name] = body
        return truth

    url = f"{api.http.base_url}/dashboard/acme#key={api.keys['acme:read']}"
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=executable, args=FLAGS)
        page = await browser.new_page(viewport={"width": 1400, "height": 1100})
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        # The scheduler may still rescore RFM after the demo: compare against figures
        # that did not move while the page loaded.
        for _ in range(10):
            before = await read_truth()
            status_before = (await api.get("/v1/tenants/acme/status")).json()
            await page.goto("about:blank")  # else a same-page #key= would not reload
            await page.goto(url)
            await page.wait_for_selector("body[data-loaded=true]", timeout=30_000)
            truth = await read_truth()
            if truth == before:
                break
            await asyncio.sleep(1)
        else:
            raise AssertionError("the figures kept moving for ten page loads")
        assert "key=" not in page.url  # the key left the address bar
        # Projections may still move (the scheduler's ticks): the page shows positions
        # between those read before and after it loaded.
        status = (await api.get("/v1/tenants/acme/status")).json()
        earlier = {p["projection"]: p["position"] for p in status_before["projections"]}

        async def shown(testid: str) -> int:
            value = await page.get_attribute(f"[data-testid='{testid}']", "data-value")
            assert value is not None, f"{testid} is not on the page"
            return int(value)

        engagement = truth["engagement"]["data"]["statuses"]
        assert sum(s["count"] for s in engagement.values()) > 0
        assert engagement["engaged"]["count"] > 0  # `ficha demo`'s history is recent
        for status_name, figures in engagement.items():
            assert await shown(f"engagement-{status_name}-count") == figures["count"]
            assert await shown(f"engagement-{status_name}-change") == figures["change"]
            percent = await page.text_content(
                f"[data-testid='engagement-{status_name}-percent']")
            assert float(percent or "nan") == figures["percent"]
        lists = truth["lists"]["data"]["lists"]
        assert lists, "the demo subscribes people to lists"
        for list_id, states in lists.items():
            for state in ("subscribed", "pending", "unsubscribed", "suppressed"):
                assert await shown(f"list-{list_id}-{state}") == states.get(state, 0)
        rfm = truth["rfm"]["data"]
        for group, count in rfm["groups"].items():
            assert await shown(f"rfm-group-{group}") == count
        for r in range(1, 6):
            for f in range(1, 6):
                assert await shown(f"rfm-cell-{r}-{f}") == rfm["grid_recency_by_frequency"][
                    r - 1][f - 1]
        [buyers] = truth["segment-sizes"]["data"]["segments"]
        assert buyers["sizes"][-1] > 0
        assert await shown("segment-buyers-size") == buyers["sizes"][-1]
        assert await shown("dlq-total") == truth["dead-letters"]["total"] == 3
        for projection in status["projections"]:
            name = projection["projection"]
            assert earlier[name] <= await shown(f"fresh-{name}-position") <= projection["position"]
            assert await shown(f"fresh-{name}-lag") >= 0
        # Every figure is in view: no panel has to be scrolled sideways at this width.
        cut_off = await page.eval_on_selector_all(
            "main section", "sections => sections.filter(s => s.scrollWidth > s.clientWidth)"
            ".map(s => s.querySelector('h2').textContent)")
        assert cut_off == []
        ARTIFACTS.mkdir(exist_ok=True)
        shot = ARTIFACTS / f"dashboard-{backend}.png"
        await page.screenshot(path=str(shot), full_page=True)
        assert shot.stat().st_size > 10_000
        # A wrong key is told so, in words, and asked for again.
        stranger = await (await browser.new_context()).new_page()
        await stranger.goto(f"{api.http.base_url}/dashboard/acme#key=ficha.acme."
                            "000000000000." + "a" * 43)
        await stranger.wait_for_selector("#key-form:not([hidden])", timeout=10_000)
        assert "not valid" in (await stranger.text_content("#problem") or "")
        assert await stranger.is_hidden("#board")
        await browser.close()
    assert errors == []
