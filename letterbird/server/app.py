"""The running server's shared services, and the registry of protocol listeners.

Each protocol module registers a :class:`ProtocolSpec` for its ``[listen]`` keys; the
supervisor starts one asyncio server per configured address. A listener for a key with no
registered protocol is skipped with a log line.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from letterbird.config import Config
from letterbird.delivery.dns import Resolver
from letterbird.directory.service import Directory
from letterbird.logs import event
from letterbird.server.tls import TlsManager
from letterbird.storage.interface import Storage

if TYPE_CHECKING:
    from letterbird.delivery.queue.service import QueueService
    from letterbird.server.relay import RelayLink
    from letterbird.server.shared_state import SharedState

log = logging.getLogger("letterbird.server")

__all__ = ["PROTOCOLS", "App", "ConnectionInfo", "Handler", "ProtocolSpec", "register"]


@dataclass(frozen=True, slots=True)
class ConnectionInfo:
    protocol: str  # the [listen] key: smtp, submission, imaps, ...
    peer_host: str
    peer_port: int
    local_host: str
    local_port: int
    implicit_tls: bool


Handler = Callable[
    ["App", asyncio.StreamReader, asyncio.StreamWriter, ConnectionInfo], Awaitable[None]
]


@dataclass(frozen=True)
class ProtocolSpec:
    key: str
    implicit_tls: bool
    handler: Handler
    label: str = ""


PROTOCOLS: dict[str, ProtocolSpec] = {}


def register(spec: ProtocolSpec) -> None:
    PROTOCOLS[spec.key] = spec


@dataclass
class App:
    config: Config
    storage: Storage
    directory: Directory
    tls: TlsManager
    resolver: Resolver | None = None
    clock: Callable[[], float] = time.time
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    connections: set[asyncio.Task[None]] = field(default_factory=set)
    per_ip: dict[tuple[str, str], int] = field(default_factory=dict)
    services: dict[str, object] = field(default_factory=dict)
    stop_callbacks: set[Callable[[], None]] = field(default_factory=set)
    # The outgoing queue (started by the supervisor after the listeners; under a master only
    # worker 0 runs it, the others route reports through it and wake worker 0).
    queue: QueueService | None = None
    # Under a master (letterbird.server.workers): this worker's index and its link to the
    # others (changes and queue wake-ups).
    worker: int | None = None
    relay: RelayLink | None = None
    # Connection counts and \Recent claims shared by the workers of this machine (set in a
    # worker; None in a single-process server, which keeps them in per_ip and services).
    shared: SharedState | None = None

    def connection_count(self, protocol_group: str) -> int:
        if self.shared is not None:
            return self.shared.connection_count(protocol_group)
        return sum(n for (g, _), n in self.per_ip.items() if g == protocol_group)

    def enter(self, group: str, host: str) -> int:
        if self.shared is not None:
            return self.shared.enter(group, host)
        key = (group, host)
        self.per_ip[key] = self.per_ip.get(key, 0) + 1
        return self.per_ip[key]

    def leave(self, group: str, host: str) -> None:
        if self.shared is not None:
            self.shared.leave(group, host)
            return
        key = (group, host)
        n = self.per_ip.get(key, 0) - 1
        if n <= 0:
            self.per_ip.pop(key, None)
        else:
            self.per_ip[key] = n

    async def run_connection(
        self,
        spec: ProtocolSpec,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        peer = writer.get_extra_info("peername") or ("?", 0)
        sock = writer.get_extra_info("sockname") or ("?", 0)
        info = ConnectionInfo(
            spec.key, str(peer[0]), int(peer[1]), str(sock[0]), int(sock[1]), spec.implicit_tls
        )
        task = asyncio.current_task()
        if task is not None:
            self.connections.add(task)
        try:
            if self.config.proxy.trusted:  # who the client is behind a trusted proxy (§10)
                from letterbird.server.proxy import accept_proxy

                info = await accept_proxy(self, spec, reader, writer, info)
            await spec.handler(self, reader, writer, info)
        except (ConnectionError, asyncio.IncompleteReadError, TimeoutError):
            pass
        except asyncio.CancelledError:
            pass
        except Exception as exc:  # a bug: log it, never take the server down
            log.exception("%s: unhandled error for %s: %s", spec.key, info.peer_host, exc)
        finally:
            if task is not None:
                self.connections.discard(task)
            try:
                writer.close()
            except Exception:
                pass

    async def drain_connections(self, timeout: float) -> None:
        """Wait up to ``timeout`` for sessions to finish, then cancel the rest."""
        pending = set(self.connections)
        if pending:
            event(log, "server.draining", connections=len(pending))
            _, still = await asyncio.wait(pending, timeout=timeout)
            for t in still:
                t.cancel()
            if still:
                await asyncio.wait(still, timeout=5)
