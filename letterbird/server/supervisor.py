"""``letterbird serve``: open storage, start every configured listener, stop cleanly.

SIGTERM/SIGINT stop accepting, let in-flight sessions finish (up to a grace period) and exit 0;
SIGHUP reloads the TLS certificate. A taken port or a storage failure exits non-zero with a
clear message.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import secrets
import signal
import sys
from dataclasses import dataclass, field

from letterbird.config import Config, parse_hostport
from letterbird.delivery.dns import Resolver
from letterbird.directory.service import Directory
from letterbird.logs import event
from letterbird.server.app import PROTOCOLS, App, ProtocolSpec
from letterbird.server.tls import TlsManager
from letterbird.storage import open_storage_for

log = logging.getLogger("letterbird.server")

# Modules that register protocol listeners (letterbird.server.app.register) on import.
PROTOCOL_MODULES: tuple[str, ...] = ("letterbird.server.smtp", "letterbird.server.pop3")

SHUTDOWN_GRACE = 10.0
DEMO_DOMAIN = "example.test"

__all__ = ["Running", "run_server", "start_server"]


class StartupError(Exception):
    pass


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
        await self.app.drain_connections(SHUTDOWN_GRACE)
        for s in self.servers:
            try:
                await asyncio.wait_for(s.wait_closed(), 5)
            except TimeoutError:
                pass
        for svc in list(self.app.services.values()):
            close = getattr(svc, "aclose", None)
            if close is not None:
                await close()
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


async def start_server(config: Config, *, demo: bool = True) -> Running:
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
        if demo:
            await first_run(app)
        _ = app.tls.context  # make or load the certificate now: fail early
        for key, addrs in config.listen.items():
            spec = PROTOCOLS.get(key)
            for addr in addrs:
                host, port = parse_hostport(addr)
                if spec is None:
                    event(
                        log, "listener.skipped", protocol=key, address=addr, reason="not built yet"
                    )
                    continue
                ssl_ctx = app.tls.context if spec.implicit_tls else None

                async def handle(
                    r: asyncio.StreamReader, w: asyncio.StreamWriter, _spec: ProtocolSpec = spec
                ) -> None:
                    await app.run_connection(_spec, r, w)

                try:
                    server = await asyncio.start_server(
                        handle,
                        host,
                        port,
                        ssl=ssl_ctx,
                        reuse_address=True,
                        limit=1 << 20,
                        ssl_handshake_timeout=30 if ssl_ctx else None,
                    )
                except OSError as exc:
                    raise StartupError(
                        f"{key}: cannot listen on {addr}: {exc.strerror or exc}"
                    ) from None
                running.servers.append(server)
                for sock in server.sockets:
                    name = sock.getsockname()
                    running.bound.setdefault(key, []).append((str(name[0]), int(name[1])))
                    log.info("%s listening on %s:%d", key, name[0], name[1])
    except BaseException:
        await running.stop()
        raise
    return running


async def run_server(config: Config, *, demo: bool = True) -> int:
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
    event(log, "server.ready", hostname=config.hostname, storage=config.storage_url)
    await stop.wait()
    event(log, "server.stopping")
    await running.stop()
    return 0
