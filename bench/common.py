"""Shared benchmark plumbing: run Letterbird as a separate process and report its figures.

Benchmarks are not tests: they print numbers and never assert on timing.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bench.peers import PeerError, peak_rss_kb

__all__ = ["LetterbirdProcess", "letterbird", "peak_rss_kb", "pg_schema", "print_table"]

REPO = Path(__file__).resolve().parent.parent

# Production-like argon2id cost would dominate login-heavy benchmarks the same way it does in
# production; benchmarks keep the default cost unless told otherwise.
BASE_CONFIG = """
hostname = "mx.bench.test"
data_dir = "{data}"
workers = {workers}
[listen]
smtp = {smtp}
submission = {submission}
submissions = []
imap = {imap}
imaps = []
pop3 = {pop3}
pop3s = []
http = []
[limits]
smtp_connections_per_ip = 1000
imap_connections_per_ip = 2000
pop3_connections_per_ip = 1000
"""


class LetterbirdProcess:
    def __init__(self, workdir: Path, config_text: str) -> None:
        self.workdir = workdir
        self.config = workdir / "letterbird.toml"
        self.config.write_text(config_text)
        self.proc: subprocess.Popen[str] | None = None
        self.bound: dict[str, tuple[str, int]] = {}
        self.log: list[str] = []

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def address(self, key: str) -> str:
        host, port = self.bound[key]
        return f"{host}:{port}"

    def admin(self, *args: str, stdin: str | None = None) -> str:
        p = subprocess.run(
            [sys.executable, "-m", "letterbird", "--config", str(self.config), *args],
            input=stdin,
            capture_output=True,
            text=True,
            cwd=REPO,
        )
        if p.returncode != 0:
            raise RuntimeError(f"letterbird {' '.join(args)}: {p.stderr}")
        return p.stdout

    def start(self, timeout: float = 60) -> None:
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "letterbird",
                "--config",
                str(self.config),
                "--log-level",
                "WARNING",
                "serve",
                "--no-demo",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=REPO,
            env=dict(os.environ, PYTHONUNBUFFERED="1"),
        )

        # WARNING level hides the "listening" lines: wait until every configured port answers.
        def pump() -> None:
            assert self.proc is not None and self.proc.stdout is not None
            for line in self.proc.stdout:
                self.log.append(line.rstrip("\n"))

        threading.Thread(target=pump, daemon=True).start()
        deadline = time.monotonic() + timeout
        wanted = self._configured_ports()
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("letterbird exited:\n" + "\n".join(self.log))
            # the pid file is written once every worker process serves
            ready = (self.workdir / "data" / "letterbird.pid").exists()
            if ready and all(_port_open(h, p) for h, p in wanted.values()):
                self.bound = wanted
                return
            time.sleep(0.1)
        raise RuntimeError("letterbird did not start")

    def _configured_ports(self) -> dict[str, tuple[str, int]]:
        text = self.config.read_text()
        found = {}
        for key in ("smtp", "submission", "imap", "pop3"):
            m = re.search(rf'^{key} = \["([\d.]+):(\d+)"\]', text, re.M)
            if m:
                found[key] = (m.group(1), int(m.group(2)))
        return found

    def pids(self) -> list[int]:
        """The server's processes: the ``letterbird serve`` process and, with ``workers``,
        its worker processes (its live children)."""
        return [self.pid, *_children(self.pid)]

    def peak_rss_kb(self) -> int:
        """Peak RSS summed over the server's processes (one process: its own peak)."""
        total = 0
        for pid in self.pids():
            try:
                total += peak_rss_kb(pid)
            except (ProcessLookupError, PeerError):
                pass
        return total

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def _port_open(host: str, port: int) -> bool:
    import socket

    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex((host, port)) == 0


@contextmanager
def letterbird(
    *,
    smtp: bool = False,
    submission: bool = False,
    imap: bool = False,
    pop3: bool = False,
    extra: str = "",
    workers: int = 0,
) -> Iterator[LetterbirdProcess]:
    """A Letterbird server process on free loopback ports, with its data in a temp dir
    (``workers``: serving processes, 0 = one per CPU core)."""
    from bench.peers import free_port

    work = Path(tempfile.mkdtemp(prefix="letterbird-bench-"))

    def listen(on: bool) -> str:
        return f'["127.0.0.1:{free_port()}"]' if on else "[]"

    text = (
        BASE_CONFIG.format(
            data=work / "data",
            smtp=listen(smtp),
            submission=listen(submission),
            imap=listen(imap),
            pop3=listen(pop3),
            workers=workers,
        )
        + extra
    )
    proc = LetterbirdProcess(work, text)
    try:
        proc.start()
        yield proc
    finally:
        proc.stop()
        shutil.rmtree(work, ignore_errors=True)


@contextmanager
def pg_schema(url: str, name: str) -> Iterator[str]:
    """A throw-away schema ``name`` (a lower-case SQL identifier) in the PostgreSQL database of
    ``url``: yields the storage URL that selects it (our ``?schema=`` parameter). Dropped
    afterwards, also when the body raised; dropped first too, in case a killed run left it."""
    import asyncio

    import asyncpg

    from letterbird.storage.pg_schema import parse_pg_url

    dsn = parse_pg_url(url).dsn

    async def drop() -> None:
        conn = await asyncpg.connect(dsn, timeout=10)
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
        finally:
            await conn.close()

    asyncio.run(drop())
    try:
        yield url + ("&" if "?" in url else "?") + f"schema={name}"
    finally:
        asyncio.run(drop())


def print_table(rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)))
