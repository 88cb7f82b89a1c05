"""The API's connection to NATS, made on first use (the dead-letter routes need it; the
read routes do not, so the API serves reads while NATS is away)."""

from __future__ import annotations

import asyncio

from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from services.api.errors import ApiError
from services.config import Settings


class Bus:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._nc: NATS | None = None
        self._lock: asyncio.Lock | None = None

    async def js(self) -> JetStreamContext:
        from services.runtime import connect_nats, resolve_nats_url

        if self._nc is not None and self._nc.is_connected:
            return self._nc.jetstream()
        self._lock = self._lock or asyncio.Lock()
        async with self._lock:
            if self._nc is None or self._nc.is_closed:
                url = resolve_nats_url(self.settings)
                if url is None:
                    raise ApiError(503, "bus_unavailable",
                                   "ficha's NATS server is not known to this API process "
                                   "(set FICHA_NATS_URL)")
                try:
                    self._nc = await asyncio.wait_for(connect_nats(url, name="ficha-api"), 5)
                except Exception:  # noqa: BLE001 - reported to the caller in words
                    raise ApiError(503, "bus_unavailable",
                                   "ficha's NATS server cannot be reached right now; "
                                   "retry in a moment") from None
        assert self._nc is not None
        return self._nc.jetstream()

    async def close(self) -> None:
        if self._nc is not None and not self._nc.is_closed:
            await self._nc.close()
