"""A small publisher for Python producers: validates, sets Nats-Msg-Id, publishes.

    nc = await nats.connect(url); js = nc.jetstream()
    await publish(js, {"event_id": "web-1", "type": "form_submitted", ...})

For many events, ``publish_many`` (validates each) or ``WindowedPublisher`` (bodies the
caller has validated already, e.g. the CSV importer) keep a bounded window of publishes
in flight and check every acknowledgement.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from typing import Any

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from contracts.decode import Rejection, decode
from contracts.events import InboundEvent


class RejectedEvent(ValueError):
    """The event would be dead-lettered by ficha; the message says why."""

    def __init__(self, rejection: Rejection) -> None:
        super().__init__(f"{rejection.code}: {rejection.detail}")
        self.rejection = rejection


def subject_for(tenant: str, type_: str) -> str:
    return f"ficha.in.{tenant}.{type_}"


def encode(event: InboundEvent | Mapping[str, Any]) -> bytes:
    return msgspec.json.encode(event)


def prepare(event: InboundEvent | Mapping[str, Any]) -> tuple[str, bytes, dict[str, str]]:
    """(subject, body, headers) for an event, refusing what ficha would reject."""
    body = encode(event)
    if isinstance(event, InboundEvent):
        tenant, kind, event_id = event.tenant, event.type, event.event_id
    else:
        tenant, kind = str(event.get("tenant", "_")), str(event.get("type", "_"))
        event_id = str(event.get("event_id", ""))
    subject = subject_for(tenant, kind)
    result = decode(subject, body)
    if isinstance(result, Rejection):
        raise RejectedEvent(result)
    return subject, body, {"Nats-Msg-Id": event_id}


async def publish(
    js: JetStreamContext, event: InboundEvent | Mapping[str, Any], *, timeout: float = 5.0
) -> Any:
    """Publish one event and wait for JetStream's acknowledgement."""
    subject, body, headers = prepare(event)
    return await js.publish(subject, body, headers=headers, timeout=timeout)


async def publish_many(
    js: JetStreamContext,
    events: Iterable[InboundEvent | Mapping[str, Any]],
    *,
    window: int = 1000,
    rate: float = 0.0,
    ack_timeout: float = 10.0,
) -> AsyncIterator[int]:
    """Publish with up to `window` unacknowledged publishes in flight (``WindowedPublisher``).

    Yields the running count of acknowledged events as it goes (for progress), the last
    time once every event is acknowledged; `rate` > 0 paces publishing to that many events
    per second. Raises ``PublishFailed`` when JetStream refuses an event, acknowledges
    nothing for `ack_timeout` seconds, or the connection closes: it never waits for ever.
    """
    loop = asyncio.get_running_loop()
    start = loop.time()
    every = max(1, min(window, int(rate / 20))) if rate > 0 else window
    async with WindowedPublisher(connection_of(js), window=window,
                                 ack_timeout=ack_timeout) as publisher:
        for sent, event in enumerate(events):
            subject, body, headers = prepare(event)
            if rate > 0:
                delay = start + sent / rate - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
            await publisher.publish(subject, body, headers["Nats-Msg-Id"])
            if (sent + 1) % every == 0:
                yield publisher.acked
        await publisher.flush()
        yield publisher.acked


class PublishFailed(RuntimeError):
    """Publishing stopped: JetStream refused a message, or acknowledged nothing for too long,
    or the connection is gone. The message says which."""


class _PubAckError(msgspec.Struct):
    code: int = 0
    description: str = ""


class _PubAck(msgspec.Struct):
    """JetStream's reply to a publish: a stored position, or an error."""

    stream: str | None = None
    seq: int | None = None
    duplicate: bool = False
    error: _PubAckError | None = None


_PUB_ACK = msgspec.json.Decoder(_PubAck)
NO_RESPONDERS = "503"


def connection_of(js: JetStreamContext) -> NATS:
    """The NATS connection a JetStream context publishes on (nats-py keeps it as ``_nc``)."""
    nc: NATS = js._nc
    return nc


class WindowedPublisher:
    """Publishes to JetStream with at most ``window`` messages awaiting their PubAck.

    Each message goes out as a plain publish with a reply subject under one inbox
    subscription, and ``Nats-Msg-Id`` set; each PubAck is checked (stored, duplicate, or an
    error) and reported to ``on_ack(key, duplicate)``. That is what ``js.publish_async``
    does, without a future and a callback per message: about 2.5 times its rate here
    (bench/import_csv.py measures both). Bodies are sent as given: validate them first
    (``prepare``, or the decoder).

    A refused message, ``ack_timeout`` seconds without any acknowledgement while messages
    wait, or a closed connection make ``publish``/``flush`` raise ``PublishFailed``;
    ``acked`` and ``in_flight`` then say how far it got.
    """

    def __init__(
        self,
        nc: NATS,
        *,
        window: int = 2000,
        ack_timeout: float = 10.0,
        on_ack: Callable[[Any, bool], None] | None = None,
    ) -> None:
        if window < 1:
            raise ValueError("the window must hold at least one message")
        self.nc = nc
        self.window = window
        self.ack_timeout = ack_timeout
        self.on_ack = on_ack
        self.acked = 0
        self.duplicates = 0
        self.failure: str | None = None
        self._pending: dict[int, tuple[Any, str]] = {}
        self._next = 0
        self._prefix = ""
        self._sub: Any = None
        self._progress = asyncio.Event()

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    async def __aenter__(self) -> WindowedPublisher:
        self._prefix = self.nc.new_inbox()
        self._sub = await self.nc.subscribe(
            f"{self._prefix}.*", cb=self._on_reply, pending_msgs_limit=self.window * 2 + 64)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._sub is not None:
            sub, self._sub = self._sub, None
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def publish(self, subject: str, body: bytes, msg_id: str, key: Any = None) -> None:
        """Send one message once the window has room; ``key`` is handed to ``on_ack``."""
        if len(self._pending) >= self.window:
            # Refill from half a window: one wake-up per window / 2 acknowledgements.
            await self._wait_until(lambda: len(self._pending) <= self.window // 2)
        if self.failure is not None:
            raise PublishFailed(self.failure)
        token = self._next
        self._next += 1
        self._pending[token] = (key, subject)
        try:
            await self.nc.publish(subject, body, reply=f"{self._prefix}.{token}",
                                  headers={"Nats-Msg-Id": msg_id})
        except Exception as error:
            self._pending.pop(token, None)
            self.failure = f"could not publish to NATS: {error or type(error).__name__}"
            raise PublishFailed(self.failure) from error

    async def flush(self) -> None:
        """Until every message sent has been acknowledged (or publishing failed)."""
        await self._wait_until(lambda: not self._pending)
        if self.failure is not None:
            raise PublishFailed(self.failure)

    async def _wait_until(self, done: Callable[[], bool]) -> None:
        loop = asyncio.get_running_loop()
        last_ack = self.acked
        quiet_since = loop.time()
        while not done() and self.failure is None:
            if self.nc.is_closed:
                self.failure = "the connection to NATS is closed"
                break
            self._progress.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._progress.wait(), min(self.ack_timeout, 1.0))
            if self.acked != last_ack:
                last_ack, quiet_since = self.acked, loop.time()
            elif loop.time() - quiet_since >= self.ack_timeout:
                self.failure = (f"NATS acknowledged nothing for {self.ack_timeout:g} s "
                                f"({len(self._pending)} messages waiting): is it running?")
        if self.failure is not None:
            raise PublishFailed(self.failure)

    async def _on_reply(self, msg: Msg) -> None:
        token = msg.subject[len(self._prefix) + 1:]
        entry = self._pending.pop(int(token), None) if token.isdigit() else None
        if entry is None:
            return  # a late reply to a message already given up on
        key, subject = entry
        if msg.headers and msg.headers.get("Status") == NO_RESPONDERS:
            self.failure = (f"no JetStream stream takes {subject}: start ficha once (it "
                            "creates its streams), or check FICHA_NATS_URL")
        else:
            try:
                ack = _PUB_ACK.decode(msg.data)
            except msgspec.DecodeError:
                ack = _PubAck(error=_PubAckError(description=f"unreadable reply {msg.data!r}"))
            if ack.error is not None:
                self.failure = (f"JetStream refused a message on {subject}: "
                                f"{ack.error.description} (code {ack.error.code})")
            else:
                self.acked += 1
                if ack.duplicate:
                    self.duplicates += 1
                if self.on_ack is not None:
                    self.on_ack(key, ack.duplicate)
        if self.failure is not None or len(self._pending) <= self.window // 2:
            self._progress.set()
