"""Run a real Letterbird server for end-to-end tests: in a thread of this process, or as a
separate `letterbird serve` process (for signal and crash tests)."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Coroutine
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar

from letterbird.config import Config
from letterbird.server.supervisor import Running, start_server

T = TypeVar("T")

CHEAP_AUTH_TOML = """
[auth]
argon2_time_cost = 1
argon2_memory_kib = 8
argon2_parallelism = 1
failure_delay = 0
"""


class ServerThread:
    """`letterbird serve` in a background thread with its own event loop."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.running: Running | None = None

    def __enter__(self) -> ServerThread:
        self.thread.start()
        self.running = self.call(start_server(self.config, demo=False))
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        if self.running is not None:
            self.call(self.running.stop(), timeout=60)
            self.running = None
        if self.thread.is_alive():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        fut: Future[T] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return fut.result(timeout)

    @property
    def app(self):  # type: ignore[no-untyped-def]
        assert self.running is not None
        return self.running.app

    def address(self, key: str) -> tuple[str, int]:
        assert self.running is not None
        return self.running.address(key)

    # conveniences for tests
    def add_user(self, address: str, password: str = "secret") -> None:
        domain = address.rpartition("@")[2]

        async def run() -> None:
            if not await self.app.directory.is_local_domain(domain):
                await self.app.directory.add_domain(domain)
            await self.app.directory.add_user(address, password)

        self.call(run())

    def messages(self, address: str, mailbox: str = "INBOX") -> list[bytes]:
        async def run() -> list[bytes]:
            account = await self.app.directory.get_user(address)
            mb = await self.app.storage.get_mailbox(account.id, mailbox)
            recs = await self.app.storage.fetch_messages(mb.id)
            return [await self.app.storage.read_blob(r.blob_id) for r in recs]

        return self.call(run())


def server_config(tmp_path: Path, **listen: list[str]) -> Config:
    from conftest import make_config

    cfg = make_config(tmp_path)
    return dataclasses.replace(cfg, listen=dataclasses.replace(cfg.listen, **listen))


def storage_toml(folder: Path) -> str:
    """The ``[storage]`` table a TOML configuration for ``folder`` needs: none on SQLite (the
    default database in the data folder), the folder's throw-away schema when
    ``LETTERBIRD_TEST_STORAGE=postgresql`` (the same schema :func:`conftest.make_config` gives
    that folder)."""
    import pgutil

    if not pgutil.on_postgres():
        return ""
    return f'\n[storage]\nurl = "{pgutil.url_for_folder(folder)}"\n'


def write_config(path: Path, body: str) -> Path:
    """Write a TOML configuration with cheap password hashing; on PostgreSQL runs a body
    without its own ``[storage]`` table gets the folder's schema (:func:`storage_toml`)."""
    if "[storage]" not in body:
        body += storage_toml(path.parent)
    path.write_text(body + CHEAP_AUTH_TOML)
    return path


async def raw_sql(storage: Any, query: str, *args: Any) -> list[tuple[Any, ...]]:
    """Run one SQL statement (``?`` placeholders) in the storage's own write transaction, on
    SQLite or PostgreSQL alike, and return its rows. Only for tests that must put the database
    in a state no API produces (damaged data, a missing INBOX) or check a storage invariant."""
    from letterbird.storage.postgres import PgStorage

    if isinstance(storage, PgStorage):
        counter = iter(range(1, len(args) + 1))
        pg_query = re.sub(r"\?", lambda _: f"${next(counter)}", query)

        async def pg_fn(c: Any) -> tuple[list[tuple[Any, ...]], list[Any]]:
            return [tuple(r) for r in await c.fetch(pg_query, *args)], []

        return await storage._write(pg_fn)  # type: ignore[no-any-return]

    def sqlite_fn(c: Any) -> tuple[list[tuple[Any, ...]], list[Any]]:
        return [tuple(r) for r in c.execute(query, args).fetchall()], []

    return await storage._write(sqlite_fn)  # type: ignore[no-any-return]


def admin(cfg: Path, *args: str, stdin: str | None = None) -> str:
    """Run ``letterbird --config CFG ARGS`` (the admin CLI) and return its output; fails the
    test when it fails."""
    return subprocess.run(
        [sys.executable, "-m", "letterbird", "--config", str(cfg), *args],
        input=stdin,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout


async def stored_subjects(config: Config, address: str) -> list[str]:
    """The subjects of the messages in an INBOX, read through the storage the configuration
    names (SQLite or PostgreSQL) with a connection of our own; also checks that no UID was
    given twice."""
    from letterbird.storage import open_storage_for

    local, _, domain = address.rpartition("@")
    storage = open_storage_for(config)
    await storage.open()
    try:
        account = await storage.find_account(local, domain)
        assert account is not None
        mb = await storage.get_mailbox(account.id, "INBOX")
        assert mb is not None
        subjects = []
        for rec in await storage.fetch_messages(mb.id):
            data = await storage.read_blob(rec.blob_id)
            subjects += [ln[9:] for ln in data.decode().split("\r\n") if ln.startswith("Subject: ")]
        uids = [uid for uid, _, _ in await storage.list_messages(mb.id)]
        assert len(uids) == len(set(uids)), "a UID given twice"
        return subjects
    finally:
        await storage.close()


class DeliveryStream:
    """``clients`` threads each sending messages over SMTP until :meth:`stop`, a new connection
    every ``per_connection`` messages (None: one connection each for the whole stream).
    ``acked`` lists the subject of every message that got ``250``, in order; a client stops at
    its first error (the server being killed is what the crash tests do meanwhile)."""

    def __init__(
        self,
        address: tuple[str, int],
        recipients: list[str],
        *,
        clients: int = 6,
        per_connection: int | None = None,
    ) -> None:
        self.address = address
        self.recipients = recipients
        self.per_connection = per_connection
        self.acked: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._client, args=(n,)) for n in range(clients)]

    def _client(self, n: int) -> None:
        import smtplib

        sent = 0
        try:
            while not self._stop.is_set():
                with smtplib.SMTP(*self.address, timeout=10) as s:
                    for _ in range(self.per_connection or sys.maxsize):
                        if self._stop.is_set():
                            return
                        token = f"msg-{n}-{sent}"
                        s.sendmail(
                            "a@alice.test",
                            self.recipients,
                            f"Subject: {token}\r\n\r\n{token}\r\n".encode(),
                        )
                        with self._lock:
                            self.acked.append(token)
                        sent += 1
        except (smtplib.SMTPException, OSError):
            pass

    def start(self) -> DeliveryStream:
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(15)


class ServerProcess:
    """`python -m letterbird serve` as a child process, parsing the bound ports from its log."""

    def __init__(self, config_path: Path, *args: str) -> None:
        self.config_path = config_path
        self.args = args
        self.proc: subprocess.Popen[str] | None = None
        self.bound: dict[str, tuple[str, int]] = {}
        self.log: list[str] = []

    def start(self, wait_for: str = "server.ready", timeout: float = 30) -> ServerProcess:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "letterbird",
                "--config",
                str(self.config_path),
                "serve",
                *self.args,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        threading.Thread(target=self._pump, daemon=True).start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(wait_for in line for line in self.log):
                return self
            if self.proc.poll() is not None:
                time.sleep(0.2)
                raise RuntimeError("server exited:\n" + "\n".join(self.log))
            time.sleep(0.02)
        raise RuntimeError("server did not start:\n" + "\n".join(self.log))

    def _pump(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            line = line.rstrip("\n")
            self.log.append(line)
            m = re.search(r"(\w+) listening on (\S+):(\d+)$", line)
            if m:
                self.bound.setdefault(m.group(1), (m.group(2), int(m.group(3))))

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 30) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()


def follow_events(client: Any) -> tuple[threading.Thread, list[str]]:
    """Read the webmail's live-update stream (``GET /events``) of a logged-in ``httpx.Client``
    in a thread until its first ``data:`` line; returns once the stream is open, with the thread
    and the list the lines are collected into."""
    received: list[str] = []
    opened = threading.Event()

    def listen() -> None:
        with client.stream("GET", "/events", timeout=30) as r:
            assert r.headers["content-type"].startswith("text/event-stream")
            for line in r.iter_lines():
                opened.set()
                received.append(line)
                if line.startswith("data:"):
                    return

    thread = threading.Thread(target=listen, daemon=True)
    thread.start()
    assert opened.wait(10)
    return thread, received


def wait_for(predicate: Callable[[], object], timeout: float = 20.0, what: str = "") -> None:
    """Poll ``predicate`` until it is true; AssertionError after ``timeout`` seconds (an upper
    bound for a slow machine, never a latency assertion)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or predicate}")
        time.sleep(0.02)


def common_ports(count: int, hosts: tuple[str, str] = ("127.0.0.2", "127.0.0.3")) -> list[int]:
    """``count`` TCP ports that are free on both loopback ``hosts`` right now (two "hosts" of
    a test that must listen on the same port numbers)."""
    found: list[int] = []
    while len(found) < count:
        with socket.socket() as a:
            a.bind((hosts[0], 0))
            port = a.getsockname()[1]
            try:
                with socket.socket() as b:
                    b.bind((hosts[1], port))
            except OSError:
                continue
        if port not in found:
            found.append(port)
    return found
