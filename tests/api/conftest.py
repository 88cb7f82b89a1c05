"""The HTTP API served by a real runtime (`ficha up`'s wiring) on a free port, on both
backends, with keys issued through the same commands as `ficha keys create`."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from contracts.publisher import publish
from services.catalog import ApiKeyCommands
from services.config import Settings
from services.runtime import Runtime
from tests.e2e import conftest as e2e
from tests.factories import event_dict

# The end-to-end tests' fixtures: this test's backend and settings on the test NATS.
backend = e2e.backend
settings_for = e2e.settings_for


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Api:
    runtime: Runtime
    http: httpx.AsyncClient
    keys: dict[str, str]  # "acme:read" -> key

    def auth(self, name: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[name]}"}

    async def get(self, path: str, key: str = "acme:read", **params: Any) -> httpx.Response:
        return await self.http.get(path, params=params, headers=self.auth(key))

    async def publish(self, type_: str, **fields: Any) -> None:
        assert self.runtime.js is not None
        await publish(self.runtime.js, event_dict(type_, **fields))


@pytest.fixture
async def api(settings_for: Callable[..., Settings]) -> AsyncIterator[Api]:
    port = free_port()
    runtime = Runtime(settings_for(FICHA_API_PORT=str(port)))
    await runtime.start()
    assert runtime.store is not None
    commands = ApiKeyCommands(runtime.store)
    keys = {
        f"{tenant}:{scope}": commands.issue(tenant, [scope], f"test {scope}")
        for tenant in ("acme", "other") for scope in ("read", "admin")
    }
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
        yield Api(runtime, http, keys)
    await runtime.stop()
