"""The database goes away mid-stream: nothing is lost, nothing dead-lettered, nothing doubled.

A TCP proxy between ficha and the real PostgreSQL is cut (every connection dropped, the
port closed) while events keep arriving, then restored.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from psycopg.conninfo import conninfo_to_dict

from contracts.publisher import publish
from services.runtime import Runtime, connect_nats
from services.streams import DLQ_STREAM
from tests.backends import make_settings
from tests.factories import event_dict


class TcpProxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.port = 0
        self.server: asyncio.Server | None = None
        self.writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(self.target_host,
                                                                   self.target_port)
        except OSError:
            writer.close()
            return
        self.writers.update({writer, up_writer})

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(Exception):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    async def cut(self) -> None:
        assert self.server is not None
        self.server.close()
        for writer in list(self.writers):
            writer.transport.abort()
        self.writers.clear()
        await self.server.wait_closed()

    async def restore(self) -> None:
        await self.start()


@pytest.fixture
async def proxy(postgres_dsn: str) -> AsyncIterator[TcpProxy]:
    where = conninfo_to_dict(postgres_dsn)
    proxy = TcpProxy(str(where.get("host") or "127.0.0.1"), int(where.get("port") or 5432))
    await proxy.start()
    yield proxy
    with contextlib.suppress(Exception):
        await proxy.cut()


async def test_database_outage_is_waited_out(
    proxy: TcpProxy, postgres_dsn: str, pg_schema: str, nats_server: Any,
    fresh_topology: None, tmp_path: Path,
) -> None:
    # The tests' database, reached through the proxy.
    parts = conninfo_to_dict(postgres_dsn)
    secret = f":{quote(str(parts['password']), safe='')}" if parts.get("password") else ""
    dsn = (f"postgresql://{parts.get('user') or 'postgres'}{secret}@127.0.0.1:{proxy.port}/"
           f"{parts.get('dbname') or 'test'}")
    settings = make_settings(tmp_path, postgres_dsn=dsn, schema=pg_schema,
                             nats_url=nats_server.url, FICHA_PARTITIONS="2", FICHA_ACK_WAIT="5")
    runtime = Runtime(settings)
    await runtime.start()
    nc = await connect_nats(nats_server.url)
    js = nc.jetstream()
    try:
        for i in range(30):
            await publish(js, event_dict("form_submitted", event_id=f"a{i}", form_id="f",
                                         email=f"p{i % 5}@example.com"))
        # Every database call goes through a thread: the proxy lives on this event loop.
        store = runtime.store
        assert store is not None
        for _ in range(200):
            if await asyncio.to_thread(store.received_count) >= 30:
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("the first 30 events were not stored before the outage")
        await proxy.cut()
        for i in range(60):
            await publish(js, event_dict("form_submitted", event_id=f"b{i}", form_id="f",
                                         email=f"p{i % 5}@example.com"))
        await asyncio.sleep(4)  # longer than the store's own retries and than ack_wait
        await proxy.restore()
        for _ in range(600):
            with contextlib.suppress(Exception):
                if await asyncio.to_thread(store.received_count) >= 90:
                    break
            await asyncio.sleep(0.05)
        await runtime.wait_until_projected(timeout=60)
        assert await asyncio.to_thread(store.received_count) == 90
        views = runtime.views
        assert views is not None

        def totals() -> tuple[Any, Any]:
            with views.reading() as cur:
                cur.execute("SELECT SUM(forms_count) AS n FROM contacts WHERE tenant = 'acme'")
                forms = cur.fetchone()
                cur.execute("SELECT COUNT(*) AS n FROM timeline WHERE tenant = 'acme'")
                return forms, cur.fetchone()

        assert await asyncio.to_thread(totals) == ({"n": 90}, {"n": 90})
        assert (await js.stream_info(DLQ_STREAM)).state.messages == 0
        assert sum(w.stats.retries for w in runtime.workers) > 0, "the outage was felt"
    finally:
        await nc.close()
        await runtime.stop()
