"""``letterbird serve``: open storage, start every configured listener, stop cleanly.

SIGTERM/SIGINT stop accepting, let in-flight sessions finish (up to a grace period) and exit 0;
SIGHUP reloads the TLS certificate; SIGUSR1 wakes the outgoing queue (``letterbird queue
flush`` finds the process through ``<data_dir>/letterbird.pid``). A taken port or a storage
failure exits non-zero with a clear message.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
import secrets
import signal
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from letterbird.config import Config, parse_hostport
from letterbird.delivery.dns import Resolver
from letterbird.delivery.queue.service import QueueService
from letterbird.directory.service import Directory
from letterbird.logs import event
from letterbird.server.app import PROTOCOLS, App, ProtocolSpec
from letterbird.server.tls import TlsManager
from letterbird.storage import open_storage_for

if TYPE_CHECKING:
    from letterbird.server.shared_state import SharedState

log = logging.getLogger("letterbird.server")

# Modules that register protocol listeners (letterbird.server.app.register) on import.
PROTOCOL_MODULES = tuple(f"letterbird.server.{m}" for m in ("smtp", "pop3", "imap"))

# [listen] keys served by a module that runs its own server in this event loop rather than an
# asyncio.start_server handler (uvicorn for HTTP). The module's
# ``async start_listener(app, key, host, port) -> list[(host, port)]`` binds and starts serving;
# it registers a service in ``app.services`` whose ``aclose()`` stops it. Behind ``[proxy]
# trusted`` these read the PROXY header too, before any TLS (letterbird.server.http_listener).
SERVICE_LISTENERS: dict[str, str] = {
    "http": "letterbird.http.server",
    "https": "letterbird.http.server",
}

SHUTDOWN_GRACE = 10.0
PID_FILE = "letterbird.pid"
DEMO_DOMAIN = "example.test"

__all__ = ["Running", "pid_file_path", "run_server", "start_server"]


class StartupError(Exception):
    pass


@dataclass
class WorkerContext:
    """How a worker process under a master serves (letterbird.server.workers): on the
    listening sockets it inherited, with the machine-wide state the master shares."""

    index: int
    sockets: dict[str, list[socket.socket]]  # [listen] key -> listening sockets
    shared: SharedState
    relay_sock: socket.socket
    run_queue: bool


@dataclass
class Running:
    app: App
    servers: list[asyncio.Server] = field(default_factory=list)
    bound: dict[str, list[tuple[str, int]]] = field(default_factory=dict)

    def address(self, key: str, index: int = 0) -> tuple[str, int]:
        return self.bound[key][index]

    async def stop(self) -> None:
        for s in self.servers:
            s.close()
        self.app.stopping.set()
        for callback in list(self.app.stop_callbacks):
            callback()
        queue = self.app.queue
        await asyncio.gather(
            self.app.drain_connections(SHUTDOWN_GRACE),
            queue.aclose(SHUTDOWN_GRACE) if queue is not None else asyncio.sleep(0),
        )
        for s in self.servers:
            try:
                await asyncio.wait_for(s.wait_closed(), 5)
            except TimeoutError:
                pass
        for svc in list(self.app.services.values()):
            close = getattr(svc, "aclose", None)
            if close is not None:
                await close()
        if self.app.relay is not None:
            await self.app.relay.aclose()
        await self.app.storage.close()
        event(log, "server.stopped")


async def first_run(app: App, *, announce: bool = True) -> None:
    """When the database has no domain, create a demo domain and account and say so once."""
    if await app.storage.list_domains():
        return
    cfg = app.config
    if cfg.postmaster:
        address = cfg.postmaster
        domain = address.rpartition("@")[2]
    else:
        domain = DEMO_DOMAIN
        address = f"demo@{domain}"
    password = secrets.token_urlsafe(12)
    await app.directory.add_domain(domain)
    await app.directory.add_user(address, password)
    if announce:
        print(
            f"First run: created domain {domain} and account {address} "
            f"with password {password}\n"
            f"  (shown once; change it with: letterbird user passwd {address})\n"
            f"  Add your own: letterbird domain add example.org; "
            f"letterbird user add you@example.org",
            file=sys.stderr,
            flush=True,
        )
    event(log, "server.first_run", domain=domain, account=address)


async def start_server(
    config: Config, *, demo: bool = True, worker: WorkerContext | None = None
) -> Running:
    """Open storage and start every configured listener and the outgoing queue.

    ``worker`` set: serve as one worker of a master (letterbird.server.workers) on the
    sockets it inherited; the master did the first-run set-up and logs the listeners.
    """
    for mod in PROTOCOL_MODULES:
        importlib.import_module(mod)
    storage = open_storage_for(config)
    await storage.open()
    app = App(
        config,
        storage,
        Directory(storage, config),
        TlsManager(config),
        resolver=Resolver.from_config(config),
    )
    running = Running(app)
    try:
        if worker is not None:
            await _join_master(app, worker)
        if demo and worker is None:
            await first_run(app)
        _ = app.tls.context  # make or load the certificate now: fail early
        if worker is None:
            await _listen_on_addresses(running)
        else:
            await _listen_on_sockets(running, worker)
        app.queue = QueueService(config, storage, app.directory, app.resolver)
        if worker is None or worker.run_queue:
            await app.queue.start()
        elif app.relay is not None:  # worker 0 runs it; reports are still routed from here
            app.queue.wake_elsewhere = app.relay.wake_queue
    except BaseException:
        await running.stop()
        raise
    return running


async def _listen_on_addresses(running: Running) -> None:
    """Bind and serve every ``[listen]`` address (one process: the listeners are ours)."""
    for key, addrs in running.app.config.listen.items():
        spec = PROTOCOLS.get(key)
        for addr in addrs:
            host, port = parse_hostport(addr)
            if spec is None and key in SERVICE_LISTENERS:
                await _start_service(running, key, addr, host=host, port=port)
            elif spec is None:
                event(log, "listener.skipped", protocol=key, address=addr, reason="not built yet")
            else:
                await _start_listener(running, spec, addr, host=host, port=port)


async def _listen_on_sockets(running: Running, worker: WorkerContext) -> None:
    """Serve on the listening sockets a worker inherited (the master bound and logged them)."""
    for key, socks in worker.sockets.items():
        spec = PROTOCOLS.get(key)
        for sock in socks:
            if spec is None:
                await _start_service(running, key, key, sock=sock)
            else:
                await _start_listener(running, spec, key, sock=sock)


async def _join_master(app: App, worker: WorkerContext) -> None:
    """Share the machine-wide state of the master's workers (letterbird.server.workers)."""
    from letterbird.server.relay import RelayLink
    from letterbird.storage.pg_events import PgChangeBus

    app.shared = worker.shared
    app.worker = worker.index

    def wake_local_queue() -> None:
        if app.queue is not None:
            app.queue.wake()

    # With PostgreSQL, LISTEN/NOTIFY already carries every change to every process.
    carry = not isinstance(app.storage.bus, PgChangeBus)
    link = RelayLink(
        app.storage.bus, worker.relay_sock, worker.index, wake_local_queue, carry_events=carry
    )
    await link.start()
    app.relay = link


async def _start_listener(
    running: Running,
    spec: ProtocolSpec,
    addr: str,
    *,
    host: str | None = None,
    port: int | None = None,
    sock: socket.socket | None = None,
) -> None:
    """Serve ``spec`` on ``host:port``, or on the listening socket ``sock``."""
    app = running.app
    # Behind a trusted PROXY-protocol balancer the header comes before the TLS handshake, so
    # implicit-TLS listeners then start TLS after reading it
    # (letterbird.server.proxy.accept_proxy) instead of in the listener.
    implicit = spec.implicit_tls and not app.config.proxy.trusted
    ssl_ctx = app.tls.context if implicit else None

    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await app.run_connection(spec, r, w)

    try:
        server = await asyncio.start_server(
            handle,
            host,
            port,
            sock=sock,
            ssl=ssl_ctx,
            reuse_address=True if sock is None else None,
            limit=1 << 20,
            ssl_handshake_timeout=30 if ssl_ctx else None,
        )
    except OSError as exc:
        raise StartupError(f"{spec.key}: cannot listen on {addr}: {exc.strerror or exc}") from None
    running.servers.append(server)
    for s in server.sockets:
        name = s.getsockname()
        running.bound.setdefault(spec.key, []).append((str(name[0]), int(name[1])))
        if sock is None:
            log.info("%s listening on %s:%d", spec.key, name[0], name[1])


async def _start_service(
    running: Running,
    key: str,
    addr: str,
    *,
    host: str = "",
    port: int = 0,
    sock: socket.socket | None = None,
) -> None:
    module = importlib.import_module(SERVICE_LISTENERS[key])
    try:
        bound: list[tuple[str, int]] = await module.start_listener(
            running.app, key, host, port, sock=sock
        )
    except OSError as exc:
        raise StartupError(f"{key}: cannot listen on {addr}: {exc.strerror or exc}") from None
    for name in bound:
        running.bound.setdefault(key, []).append(name)
        if sock is None:
            log.info("%s listening on %s:%d", key, name[0], name[1])


async def run_server(config: Config, *, demo: bool = True) -> int:
    from letterbird.server.workers import effective_workers, run_master

    workers = effective_workers(config)
    if workers > 1:
        level = logging.getLevelName(logging.getLogger().getEffectiveLevel())
        return await run_master(config, workers, demo=demo, log_level=str(level))
    loop = asyncio.get_running_loop()
    try:
        running = await start_server(config, demo=demo)
    except StartupError as exc:
        print(f"letterbird: {exc}", file=sys.stderr)
        return 1
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, running.app.tls.reload)
    # `letterbird queue flush` finds us through the pid file and sends SIGUSR1.
    queue = running.app.queue
    if queue is not None:
        loop.add_signal_handler(signal.SIGUSR1, lambda: queue.wake(reset_backoff=True))
    pid_file = write_pid_file(config)
    event(log, "server.ready", hostname=config.hostname, storage=config.storage_url_for_display)
    await stop.wait()
    event(log, "server.stopping")
    await running.stop()
    remove_pid_file(pid_file)
    return 0


def pid_file_path(config: Config) -> Path:
    return config.data_path / PID_FILE


def write_pid_file(config: Config) -> Path | None:
    path = pid_file_path(config)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"{os.getpid()}\n")
    except OSError as exc:
        event(log, "server.pid_file_failed", path=path, error=exc)
        return None
    return path


def remove_pid_file(path: Path | None) -> None:
    if path is None:
        return
    try:
        if path.read_text().strip() == str(os.getpid()):
            path.unlink()
    except OSError:
        pass
