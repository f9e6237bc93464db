"""Several serving processes on one machine (``workers`` in the configuration).

One Python process serves every protocol from one event loop, so it uses one core. With
``workers = N`` (``0``: one per CPU core) ``letterbird serve`` becomes a *master* that owns
what is machine-wide and N *workers* that serve connections:

- **Listening sockets.** The master binds every ``[listen]`` address N times with
  ``SO_REUSEPORT`` (the first bind decides a port given as 0) and hands socket *i* to worker
  *i* (inherited file descriptors). The kernel spreads new connections over the N sockets; the
  master keeps its copies open, so connections that arrive while a worker is being replaced
  wait in that socket's queue instead of being refused. A taken port is reported once, by the
  master, before any worker starts.
- **Machine-wide state** that used to live in one process: connection counts per client
  address and the IMAP ``\\Recent`` claims sit in shared memory
  (:mod:`letterbird.server.shared_state`); committed changes (IMAP IDLE, POP3, webmail live
  updates) and "wake the outgoing queue" travel through the master
  (:mod:`letterbird.server.relay`); the storage backends serialise writers and hold POP3
  maildrop locks and login-failure counters across processes themselves.
- **The outgoing queue** runs in worker 0 only (exact concurrency limits per host); the other
  workers wake it through the relay when they accept mail for remote recipients.
- **Life cycle.** First-run set-up, migrations and the TLS certificate happen once, in the
  master, before the workers start; the master writes the pid file and logs ``server.ready``
  when every worker has said it is serving. SIGTERM/SIGINT are passed on and the master waits
  for the workers' graceful stop; SIGHUP (certificate reload) goes to every worker, SIGUSR1
  (``letterbird queue flush``) to the queue worker. A worker that dies is logged, its share of
  the shared state is cleared and it is started again (with a growing pause if it keeps
  dying); a worker that loses its master stops.

Workers are fresh interpreters (``python -m letterbird.server.worker``), not forks of a process
that already runs an event loop, threads and database connections; the master sends each one
its :class:`WorkerSpec` (pickled) on standard input.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
import pickle
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from letterbird.config import Config, parse_hostport
from letterbird.directory.service import Directory
from letterbird.logs import event
from letterbird.server.app import PROTOCOLS, App
from letterbird.server.relay import RelayHub
from letterbird.server.shared_state import SharedState
from letterbird.server.supervisor import (
    PROTOCOL_MODULES,
    SERVICE_LISTENERS,
    first_run,
    remove_pid_file,
    write_pid_file,
)
from letterbird.server.tls import TlsManager
from letterbird.storage import open_storage_for

log = logging.getLogger("letterbird.server")

__all__ = ["WorkerSpec", "bind_reuseport", "effective_workers", "run_master"]

START_TIMEOUT = 60.0  # for every worker to report that it serves
STOP_GRACE = 25.0  # a worker's own drain is 10 s; then SIGKILL
RESTART_PAUSE_MAX = 30.0
LISTEN_BACKLOG = 1024


@dataclass
class WorkerSpec:
    """What the master sends a worker (pickled, on its standard input)."""

    index: int
    count: int
    config: Config
    log_level: str
    listeners: dict[str, list[int]]  # [listen] key -> inherited socket fds
    shared_fd: int
    relay_fd: int
    ready_fd: int  # write one byte when serving, then close
    master_pid: int
    run_queue: bool


def effective_workers(config: Config) -> int:
    """The number of serving processes ``config`` asks for (``0``: one per CPU core)."""
    if config.workers:
        return config.workers
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def bind_reuseport(host: str, port: int, count: int) -> list[list[socket.socket]]:
    """``count`` listening sockets per address ``host`` resolves to, all on one port.

    Returns one list of ``count`` sockets per address. A port of 0 is chosen by the first
    bind and reused for the rest. A port something already listens on is refused, even by
    another ``SO_REUSEPORT`` group (:func:`_probe`). Raises OSError (the first failure) after
    closing any socket already made.
    """
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    seen: set[tuple[int, object]] = set()
    groups: list[list[socket.socket]] = []
    try:
        for family, kind, proto, _, addr in infos:
            if (family, addr[0]) in seen:
                continue
            seen.add((family, addr[0]))
            group: list[socket.socket] = []
            groups.append(group)
            bound = _probe(family, kind, proto, addr)
            for _ in range(count):
                sock = socket.socket(family, kind, proto)
                group.append(sock)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind(bound)
                bound = sock.getsockname()  # the port a 0 was given, for the others
                sock.listen(LISTEN_BACKLOG)
                sock.setblocking(False)
    except BaseException:
        for group in groups:
            for sock in group:
                sock.close()
        raise
    return groups


def _probe(family: int, kind: int, proto: int, addr: Any) -> Any:
    """Bind ``addr`` once without ``SO_REUSEPORT`` and let go: raises OSError (EADDRINUSE)
    when anything listens there, including another server's ``SO_REUSEPORT`` group, which
    our own group's binds would silently join. Returns the address with the port a 0 got."""
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is no conflict
        if family == socket.AF_INET6:
            probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        probe.bind(addr)
        return probe.getsockname()


@dataclass
class _Worker:
    index: int
    proc: asyncio.subprocess.Process | None = None
    started: float = 0.0
    pause: float = 1.0


@dataclass
class _Master:
    config: Config
    count: int
    log_level: str
    listeners: dict[str, list[list[socket.socket]]] = field(default_factory=dict)
    shared: SharedState | None = None
    hub: RelayHub = field(default_factory=RelayHub)
    workers: list[_Worker] = field(default_factory=list)
    stopping: bool = False

    def socket_fds(self, index: int) -> dict[str, list[int]]:
        return {
            key: [group[index].fileno() for group in groups]
            for key, groups in self.listeners.items()
        }

    async def spawn(self, worker: _Worker) -> asyncio.Future[None]:
        """Start ``worker``; the returned future completes when it reports that it serves."""
        assert self.shared is not None
        master_end, worker_end = socket.socketpair()
        self.hub.add_worker(worker.index, master_end)
        ready_r, ready_w = os.pipe()
        fds = self.socket_fds(worker.index)
        spec = WorkerSpec(
            index=worker.index,
            count=self.count,
            config=self.config,
            log_level=self.log_level,
            listeners=fds,
            shared_fd=self.shared.fd,
            relay_fd=worker_end.fileno(),
            ready_fd=ready_w,
            master_pid=os.getpid(),
            run_queue=worker.index == 0,
        )
        inherit = [fd for fd_list in fds.values() for fd in fd_list]
        inherit += [self.shared.fd, worker_end.fileno(), ready_w]
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "letterbird.server.worker",
                stdin=asyncio.subprocess.PIPE,
                pass_fds=inherit,
            )
        finally:
            os.close(ready_w)
            worker_end.close()
        assert proc.stdin is not None
        proc.stdin.write(pickle.dumps(spec))
        await proc.stdin.drain()
        proc.stdin.close()
        worker.proc = proc
        worker.started = time.monotonic()
        event(log, "worker.started", worker=worker.index, pid=proc.pid)
        return asyncio.ensure_future(_wait_ready(ready_r))

    async def supervise(self, worker: _Worker) -> None:
        """Restart ``worker`` whenever it dies, until the master stops."""
        while True:
            proc = worker.proc
            assert proc is not None
            code = await proc.wait()
            if self.stopping:
                return
            self.hub.remove_worker(worker.index)
            assert self.shared is not None
            self.shared.reset_worker(worker.index)
            ran = time.monotonic() - worker.started
            worker.pause = 1.0 if ran > 60 else min(worker.pause * 2, RESTART_PAUSE_MAX)
            event(
                log,
                "worker.died",
                level=logging.ERROR,
                worker=worker.index,
                pid=proc.pid,
                code=code,
                restart_in=f"{worker.pause:g}s",
            )
            await asyncio.sleep(worker.pause)
            if self.stopping:
                return
            try:
                ready = await self.spawn(worker)
                await asyncio.wait_for(ready, START_TIMEOUT)
            except (OSError, TimeoutError, ConnectionError) as exc:
                event(
                    log,
                    "worker.restart_failed",
                    level=logging.ERROR,
                    worker=worker.index,
                    error=exc,
                )
                if worker.proc is not None and worker.proc.returncode is None:
                    worker.proc.kill()

    def signal_all(self, sig: int, only: int | None = None) -> None:
        for w in self.workers:
            if (only is None or w.index == only) and w.proc and w.proc.returncode is None:
                try:
                    w.proc.send_signal(sig)
                except ProcessLookupError:
                    pass

    async def stop_workers(self) -> None:
        self.stopping = True
        self.hub.stopping()
        self.signal_all(signal.SIGTERM)
        procs = [w.proc for w in self.workers if w.proc is not None]
        waits = [asyncio.ensure_future(p.wait()) for p in procs]
        if waits:
            _, pending = await asyncio.wait(waits, timeout=STOP_GRACE)
            if pending:
                self.signal_all(signal.SIGKILL)
                await asyncio.wait(pending, timeout=5)

    def close(self) -> None:
        for groups in self.listeners.values():
            for group in groups:
                for sock in group:
                    sock.close()
        if self.shared is not None:
            self.shared.close()


async def _wait_ready(fd: int) -> None:
    """Wait for the worker's one byte on the ready pipe (EOF first: it died starting)."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[bytes] = loop.create_future()

    def readable() -> None:
        try:
            data = os.read(fd, 1)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not done.done():
            done.set_result(data)

    os.set_blocking(fd, False)
    loop.add_reader(fd, readable)
    try:
        data = await done
    finally:
        loop.remove_reader(fd)
        os.close(fd)
    if not data:
        raise ConnectionError("the worker exited before it was serving")


async def _prepare(config: Config, demo: bool) -> None:
    """Once for the machine: migrations, the first-run account, the TLS certificate."""
    storage = open_storage_for(config)
    await storage.open()
    try:
        app = App(config, storage, Directory(storage, config), TlsManager(config))
        if demo:
            await first_run(app)
        _ = app.tls.context  # make or load the certificate now: fail early, make it once
    finally:
        await storage.close()


async def run_master(config: Config, count: int, *, demo: bool, log_level: str) -> int:
    """``letterbird serve`` with ``count`` worker processes; returns the exit status."""
    for mod in PROTOCOL_MODULES:
        importlib.import_module(mod)
    master = _Master(config, count, log_level)
    loop = asyncio.get_running_loop()
    try:
        await _prepare(config, demo)
        for key, addrs in config.listen.items():
            if key not in PROTOCOLS and key not in SERVICE_LISTENERS:
                for addr in addrs:
                    event(
                        log, "listener.skipped", protocol=key, address=addr, reason="not built yet"
                    )
                continue
            for addr in addrs:
                host, port = parse_hostport(addr)
                try:
                    groups = bind_reuseport(host, port, count)
                except OSError as exc:
                    print(
                        f"letterbird: {key}: cannot listen on {addr}: {exc.strerror or exc}",
                        file=sys.stderr,
                    )
                    return 1
                master.listeners.setdefault(key, []).extend(groups)
                for group in groups:
                    name = group[0].getsockname()
                    log.info("%s listening on %s:%d", key, name[0], name[1])
        master.shared = SharedState.create(count)
        master.workers = [_Worker(i) for i in range(count)]
        readies = [await master.spawn(w) for w in master.workers]
        try:
            await asyncio.wait_for(asyncio.gather(*readies), START_TIMEOUT)
        except (TimeoutError, ConnectionError) as exc:
            print(f"letterbird: a worker process failed to start: {exc}", file=sys.stderr)
            await master.stop_workers()
            return 1
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        loop.add_signal_handler(signal.SIGHUP, master.signal_all, signal.SIGHUP)
        loop.add_signal_handler(signal.SIGUSR1, master.signal_all, signal.SIGUSR1, 0)
        supervisors = [asyncio.ensure_future(master.supervise(w)) for w in master.workers]
        pid_file = write_pid_file(config)
        event(
            log,
            "server.ready",
            hostname=config.hostname,
            storage=config.storage_url_for_display,
            workers=count,
        )
        await stop.wait()
        event(log, "server.stopping")
        await master.stop_workers()
        for task in supervisors:
            task.cancel()
        await master.hub.aclose()
        remove_pid_file(pid_file)
        event(log, "server.stopped")
        return 0
    finally:
        master.stopping = True
        master.close()
