"""The composition root: wires configuration, the bus, the store, workers and projections.

``Runtime`` is what ``ficha up`` runs, and what the end-to-end tests start. Nothing else
constructs adapters.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from projections.db import ViewDatabase
from projections.registry import all_projections
from projections.runner import ProjectionRunner
from services import metrics
from services.config import Settings
from services.domain.identity import ContactIdentity
from services.erasures import ErasureCompleter
from services.health import HealthServer, start_health
from services.ingest.cache import ContactCache
from services.ingest.folding import BatchFolder
from services.ingest.tenant_checks import TenantChecks
from services.ingest.worker import TRANSIENT_ERRORS, PartitionWorker
from services.instance_lock import InstanceLock
from services.nats_client import FichaNatsClient
from services.natsserver import EmbeddedNatsServer
from services.outbox import OutboxRelay
from services.scheduler import Scheduler
from services.store.contact_store import ContactStore
from services.streams import (
    DLQ_STREAM,
    INGEST_STREAM,
    UNROUTED_CONSUMER,
    TopologySettings,
    consumer_name,
    ensure_topology,
)

log = logging.getLogger("ficha.runtime")

NATS_URL_FILE = "nats.url"


def tracking_name(partition: int) -> str:
    return f"ingest-p{partition}"


def resolve_nats_url(settings: Settings) -> str | None:
    """The configured URL, else the one a running `ficha up` wrote into the data dir."""
    if settings.nats_url:
        return settings.nats_url
    path = settings.data_dir / NATS_URL_FILE
    if path.exists():
        return path.read_text().strip() or None
    return None


def unreachable_text(settings: Settings, url: str, error: BaseException) -> str:
    """Why NATS at ``url`` could not be reached, in words that say what to do."""
    reason = str(error) or type(error).__name__
    if settings.nats_url:
        return f"cannot reach NATS at {url} (FICHA_NATS_URL): {reason}"
    return (f"cannot reach the NATS server of `ficha up` at {url} ({reason}): is ficha up "
            f"running on {settings.data_dir}? (it writes that address into "
            f"{settings.data_dir / NATS_URL_FILE} when it starts)")


async def connect_nats(url: str, *, name: str = "ficha", attempts: int = 3,
                       reconnect_forever: bool = True) -> NATS:
    """A connection to ``url`` (several servers of a cluster separated by commas).

    The first connection tries each server ``attempts`` times (twice at least: nats-py
    cannot be told to try once), half a second apart, then
    raises (nats-py's NoServersError, "no servers available for connection"): a wrong
    URL or a stopped server is an answer, not a hang. Once connected, a long-running
    process (``reconnect_forever``) rides out any later outage, reconnecting for as long
    as it takes. nats-py gives up only for a positive attempt count: 0 and -1 both mean
    "for ever", the first connection included. A long-running process logs connection
    trouble as one line (nats-py's default prints a traceback for every failed attempt)
    once it was connected; otherwise the caller reports a failure in its own words.
    """
    connected = False

    async def reconnected() -> None:
        metrics.NATS_RECONNECTS.inc()
        log.warning("reconnected to NATS")

    async def trouble(error: Exception) -> None:
        if connected and reconnect_forever:
            log.warning("NATS connection trouble: %s", error or type(error).__name__)

    options: dict[str, Any] = {
        "connect_timeout": 3, "reconnect_time_wait": 0.5, "allow_reconnect": True,
        "max_reconnect_attempts": max(1, attempts - 1),  # nats-py tries count + 1 times
    }
    client = FichaNatsClient()
    await client.connect(
        [part.strip() for part in url.split(",") if part.strip()],
        name=name,
        reconnected_cb=reconnected,
        error_cb=trouble,
        **options,
    )
    connected = True
    if reconnect_forever:
        client.options["max_reconnect_attempts"] = -1
    return client


def topology_settings(settings: Settings) -> TopologySettings:
    return TopologySettings(
        partitions=settings.partitions,
        duplicate_window_s=settings.duplicate_window_s,
        ingest_max_age_s=settings.ingest_max_age_s,
        ack_wait_s=settings.ack_wait_s,
        replicas=settings.stream_replicas,
    )


@dataclass
class Runtime:
    settings: Settings
    server: EmbeddedNatsServer | None = None
    nc: NATS | None = None
    js: JetStreamContext | None = None
    store: ContactStore | None = None
    views: ViewDatabase | None = None
    # "thread": projections run in this process (tests); "process": in a child process
    # (`ficha project`), so that folding and projecting use both cores despite the GIL.
    projector: str = "thread"
    # What this process does: "ingest" (partition workers), "projections", "scheduler"
    # (the clock and the outbox relay). `ficha up` does all three; in a deployment they
    # can be spread over processes and machines (docs/scaling.md).
    roles: frozenset[str] = frozenset({"ingest", "projections", "scheduler", "api"})
    # The partitions this process owns (None: all of them).
    owned_partitions: list[int] | None = None
    workers: list[PartitionWorker] = field(default_factory=list)
    projections: list[ProjectionRunner] = field(default_factory=list)
    projector_processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    scheduler: Scheduler | None = None
    outbox: OutboxRelay | None = None
    erasures: ErasureCompleter | None = None
    health: HealthServer | None = None
    api: Any = None  # the HTTP API's context, when this process serves it
    instance_lock: InstanceLock | None = None  # held while the embedded NATS server runs
    _tasks: list[asyncio.Task[Any]] = field(default_factory=list)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def nats_url(self) -> str:
        if self.server is not None:
            return self.server.url
        assert self.settings.nats_url
        return self.settings.nats_url

    async def start(self) -> None:
        settings = self.settings
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        if settings.nats_url is None:
            # Before anything else: a second instance must not touch the first one's
            # server, store or nats.url (services/instance_lock.py).
            self.instance_lock = InstanceLock(settings.data_dir)
            self.instance_lock.acquire()
            self.server = EmbeddedNatsServer(store_dir=settings.data_dir / "nats")
            await asyncio.to_thread(self.server.start)
            (settings.data_dir / NATS_URL_FILE).write_text(self.server.url + "\n")
        self.nc = await connect_nats(self.nats_url, name="ficha-up")
        self.js = self.nc.jetstream()
        await ensure_topology(self.js, topology_settings(settings))

        self.store = await asyncio.to_thread(ContactStore, settings)
        if self.roles & {"ingest", "scheduler"}:  # they turn emails into contact ids
            await asyncio.to_thread(self.store.check_id_key, ContactIdentity(settings.id_key))
        self.views = ViewDatabase(settings)
        if "projections" in self.roles:
            self.projections = [
                ProjectionRunner(self.store, self.views, projection)
                for projection in all_projections()
            ]
            for runner in self.projections:
                await asyncio.to_thread(runner.setup)
        if "projections" in self.roles and self.projector == "process":
            # One process per projection: each is CPU-bound Python, and the GIL would
            # otherwise put them, and the ingest workers, on one core.
            for index, runner in enumerate(self.projections):
                port = settings.metrics_port + 1 + index if settings.metrics_port else 0
                self.projector_processes.append(subprocess.Popen(
                    [sys.executable, "-m", "services", "project", "--projection", runner.name,
                     "--metrics-port", str(port), "--parent-pid", str(os.getpid())],
                    env={**os.environ, **settings.to_env()},
                ))
        if "ingest" in self.roles:
            self._start_workers()
        self._stop = asyncio.Event()
        for worker in self.workers:
            self._tasks.append(asyncio.create_task(worker.run(self._stop), name=worker.durable))
        if self.projector == "thread":
            for runner in self.projections:
                self._tasks.append(
                    asyncio.create_task(runner.run(self._stop), name=runner.name)
                )
        elif self.projector_processes:
            self._tasks.append(asyncio.create_task(self._watch_projectors(), name="projector"))
        if "scheduler" in self.roles:
            self.scheduler = Scheduler(self.store, self.views)
            self.outbox = OutboxRelay(self.js, self.views, self.store.max_notification_id)
            self._tasks.append(
                asyncio.create_task(self.scheduler.run(self._stop), name="scheduler"))
            self._tasks.append(asyncio.create_task(self.outbox.run(self._stop), name="outbox"))
            self.erasures = ErasureCompleter(self.js, self.store, self.views,
                                             ContactIdentity(settings.id_key))
            self._tasks.append(
                asyncio.create_task(self.erasures.run(self._stop), name="erasures"))
        if "ingest" in self.roles:
            self._tasks.append(asyncio.create_task(self._watch_lag(), name="lag"))
        if "api" in self.roles and settings.api_port:
            await self._start_api()
        if settings.metrics_port:
            self.health = start_health(settings.metrics_port, self._not_ready,
                                       settings.metrics_host)

    async def _start_api(self) -> None:
        from services.api.app import bind, build_context, serve_until, server

        settings = self.settings
        sock = bind(settings.api_host, settings.api_port)
        self.api = await asyncio.to_thread(build_context, settings)
        srv = server(self.api, settings.api_host, settings.api_port)
        self._tasks.append(asyncio.create_task(serve_until(srv, self._stop, [sock]),
                                               name="api"))

    def _start_workers(self) -> None:
        settings = self.settings
        assert self.store is not None and self.js is not None
        owned = (list(range(settings.partitions)) if self.owned_partitions is None
                 else self.owned_partitions)
        wrong = [p for p in owned if not 0 <= p < settings.partitions]
        if wrong:
            raise ValueError(f"partitions {wrong} do not exist: there are {settings.partitions}, "
                             f"0 to {settings.partitions - 1}")
        identity = ContactIdentity(settings.id_key)
        checks = TenantChecks(self.store)
        for partition in owned:
            folder = BatchFolder(
                self.store,
                identity,
                ContactCache(settings.aggregate_cache),
                tracking_name(partition),
            )
            self.workers.append(
                PartitionWorker(
                    js=self.js,
                    durable=consumer_name(partition),
                    folder=folder,
                    batch_size=settings.batch_size,
                    on_commit=self._wake_projections,
                    checks=checks,
                )
            )
        # Malformed subjects: any ingest process may take them (a shared pull consumer).
        self.workers.append(
            PartitionWorker(
                js=self.js, durable=UNROUTED_CONSUMER, folder=None, batch_size=100
            )
        )

    def _not_ready(self) -> str | None:
        """For /readyz: why this process cannot do its work, or None."""
        if self.nc is None or not self.nc.is_connected:
            return "not connected to NATS"
        assert self.store is not None
        self.store.max_notification_id()  # raises if the database is unreachable
        return None

    async def _watch_lag(self) -> None:
        """Each partition's undelivered messages and the dead letters waiting, for
        /metrics, every few seconds."""
        assert self.js is not None
        owned = self.owned_partitions or range(self.settings.partitions)
        while not self._stop.is_set():
            for partition in owned:
                with contextlib.suppress(Exception):
                    info = await self.js.consumer_info(INGEST_STREAM, consumer_name(partition))
                    metrics.PARTITION_LAG.labels(str(partition)).set(info.num_pending)
            with contextlib.suppress(Exception):
                dlq = await self.js.stream_info(DLQ_STREAM)
                metrics.DEAD_LETTERS_STORED.set(dlq.state.messages)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), 5)

    async def _watch_projectors(self) -> None:
        while not self._stop.is_set():
            for process in self.projector_processes:
                if process.poll() is not None:
                    raise RuntimeError(
                        f"a projector process (pid {process.pid}) exited with "
                        f"{process.returncode}"
                    )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), 0.5)

    def _wake_projections(self) -> None:
        for runner in self.projections:
            runner.wake()

    async def wait(self) -> None:
        """Until a task fails (its error is raised) or stop() is called."""
        done, _ = await asyncio.wait(self._tasks, return_when=asyncio.FIRST_EXCEPTION)
        for task in done:
            if not task.cancelled() and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]

    async def stop(self) -> None:
        self._stop.set()
        if self.health is not None:
            self.health.stop()
        if self._tasks:
            _, pending = await asyncio.wait(self._tasks, timeout=10)
            for task in pending:
                task.cancel()
            with contextlib.suppress(Exception):
                await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        if self.api is not None:
            from services.api.app import close_context

            await close_context(self.api)
            self.api = None
        for process in self.projector_processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.projector_processes:
            try:
                await asyncio.to_thread(process.wait, 15)
            except subprocess.TimeoutExpired:
                process.kill()
        if self.nc is not None:
            # Every processed message is acked by now; flush those acks, then close.
            # (drain() waits for pull subscriptions and times out after 30 s.)
            with contextlib.suppress(Exception):
                await self.nc.flush(timeout=5)
            with contextlib.suppress(Exception):
                await self.nc.close()
        if self.views is not None:
            self.views.close()
        if self.store is not None:
            with contextlib.suppress(Exception):
                self.store.close()
        if self.server is not None:
            await asyncio.to_thread(self.server.stop)
            url_file: Path = self.settings.data_dir / NATS_URL_FILE
            url_file.unlink(missing_ok=True)
        if self.instance_lock is not None:
            self.instance_lock.release()
            self.instance_lock = None

    async def wait_until_projected(self, timeout: float = 30.0) -> None:
        """For tests and benchmarks: until every projection reaches the store's end."""
        assert self.store is not None
        deadline = asyncio.get_running_loop().time() + timeout
        positions: list[int] = []
        top = 0
        while True:
            try:
                top = await asyncio.to_thread(self.store.max_notification_id)
                # Read from the database: the runners may live in the projector process.
                positions = [await asyncio.to_thread(r.position) for r in self.projections]
            except TRANSIENT_ERRORS:
                pass  # the database is coming back: ask again
            else:
                if all(p >= top for p in positions):
                    return
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(f"projections at {positions}, store at {top}")
            await asyncio.sleep(0.02)
