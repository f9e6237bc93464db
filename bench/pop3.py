"""POP3 download benchmark: C clients each download a whole maildrop, Letterbird vs Dovecot.

    .venv/bin/python -m bench.pop3 [--clients 10] [--messages 200] [--rounds 3] [--no-dovecot]

Every client has its own account (Letterbird allows one POP3 session per maildrop) holding the
same ``--messages`` messages (mixed sizes, 1 KB to 200 KB, some lines starting with ``.`` so
byte-stuffing is exercised). One round: all clients start together, each logs in with
USER/PASS, runs STAT, RETRs every message in turn (waiting for each response, as fetchmail and
mail apps do) and QUITs without deleting. Each client checks the byte count against LIST and a
SHA-256 of the un-stuffed messages against the expected bytes, so a fast wrong answer cannot
win. One warm-up round per server (Dovecot builds its POP3 caches, both servers mark the
messages ``\\Seen`` on that first download), then ``--rounds`` measured rounds; the median round
is reported as messages/second and MB/second (10^6 bytes of message data).

Servers:

- Letterbird: ``python -m letterbird --config ... serve`` as a separate process (so its peak
  RSS, ``VmHWM``, is measurable), SQLite storage, messages written straight into the store.
  Logins use cheap argon2 settings: Dovecot's peer uses ``{PLAIN}`` passwords, and the
  production argon2id cost (64 MiB per verification) would dominate the RSS figure without
  saying anything about POP3.
- Dovecot's POP3 (``dovecot-pop3d``) with a private configuration on a loopback high port over
  maildir (``bench.peers.dovecot``); needs root (Dovecot drops privileges itself). Skipped with
  a note when it cannot start.

The clients run in separate processes (one per client) so the Python client is not the
bottleneck of the measurement. Not a test: nothing here asserts on timing.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import random
import socket
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from bench.common import letterbird, print_table
from bench.peers import PeerError, dovecot, peer_workdir

DOMAIN = "bench.test"
PASSWORD = "bench-pw"
CHEAP_AUTH = """
[auth]
argon2_time_cost = 1
argon2_memory_kib = 8
argon2_parallelism = 1
"""
_TERMINATOR = b"\r\n.\r\n"


# --- the workload -------------------------------------------------------------------------------


def make_messages(count: int, seed: int = 1939) -> list[bytes]:
    """Deterministic CRLF messages of mixed sizes (median about 8 KB, 1 KB to 200 KB)."""
    rng = random.Random(seed)
    alphabet = "abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ 0123456789"
    out = []
    for n in range(count):
        size = int(min(200_000, max(1_000, rng.lognormvariate(9.0, 1.0))))
        head = (
            f"From: Alice <alice@alice.test>\r\nTo: user@{DOMAIN}\r\n"
            f"Subject: benchmark message {n}\r\nMessage-ID: <{n}.bench@alice.test>\r\n"
            f"Date: Thu, 26 Nov 2026 10:00:00 +0000\r\nMIME-Version: 1.0\r\n"
            f"Content-Type: text/plain; charset=us-ascii\r\n\r\n"
        ).encode()
        lines = [head]
        total = len(head)
        i = 0
        while total < size:
            text = "".join(rng.choice(alphabet) for _ in range(rng.randint(20, 76)))
            if i % 17 == 5:
                text = "." + text  # exercises byte-stuffing
            line = text.encode() + b"\r\n"
            lines.append(line)
            total += len(line)
            i += 1
        out.append(b"".join(lines))
    return out


# --- the client (runs in worker processes) ------------------------------------------------------


@dataclass(frozen=True)
class ClientResult:
    messages: int
    octets: int  # message bytes (LIST sizes), not wire bytes
    digest: str  # SHA-256 over the un-stuffed messages in order
    started: float  # time.monotonic() (CLOCK_MONOTONIC: comparable across processes)
    finished: float


class _Conn:
    def __init__(self, host: str, port: int) -> None:
        self.sock = socket.create_connection((host, port), timeout=120)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def line(self) -> bytes:
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                raise ConnectionError("server closed the connection")
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\r\n")
        return line

    def ok(self, command: bytes) -> bytes:
        self.sock.sendall(command + b"\r\n")
        line = self.line()
        if not line.startswith(b"+OK"):
            raise RuntimeError(f"{command!r} -> {line!r}")
        return line

    def multiline(self) -> bytes:
        """The rest of a multi-line response, dot-stuffed, without the terminating ``.``.

        ``CRLF . CRLF`` only occurs as the terminator (a body line starting with ``.`` is
        stuffed), so reading until the buffer ends with it is exact for a non-pipelined client.
        """
        buf = bytearray(self.buf)
        self.buf = b""
        while not (buf.endswith(_TERMINATOR) or buf == b".\r\n"):
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                raise ConnectionError("server closed the connection")
            buf += chunk
        return bytes(buf[:-3])  # keeps the CRLF that ends the last line


def download(host: str, port: int, user: str, password: str, start_at: float) -> ClientResult:
    """One POP3 session: USER/PASS, STAT, LIST, RETR every message, QUIT (no DELE)."""
    delay = start_at - time.monotonic()
    if delay > 0:
        time.sleep(delay)
    started = time.monotonic()
    conn = _Conn(host, port)
    if not conn.line().startswith(b"+OK"):
        raise RuntimeError("no greeting")
    conn.ok(b"USER " + user.encode())
    conn.ok(b"PASS " + password.encode())
    count = int(conn.ok(b"STAT").split()[1])
    conn.ok(b"LIST")
    sizes = [int(line.split()[1]) for line in conn.multiline().splitlines()]
    if len(sizes) != count:
        raise RuntimeError(f"LIST gave {len(sizes)} messages, STAT {count}")
    digest = hashlib.sha256()
    octets = 0
    for n in range(1, count + 1):
        conn.ok(b"RETR %d" % n)
        data = conn.multiline()
        if data.startswith(b"."):
            data = data[1:]
        data = data.replace(b"\r\n..", b"\r\n.")
        if len(data) != sizes[n - 1]:
            raise RuntimeError(f"message {n}: {len(data)} bytes, LIST said {sizes[n - 1]}")
        digest.update(data)
        octets += len(data)
    conn.ok(b"QUIT")
    conn.sock.close()
    return ClientResult(count, octets, digest.hexdigest(), started, time.monotonic())


@dataclass(frozen=True)
class Round:
    seconds: float
    messages: int
    octets: int


def run_round(
    pool: ProcessPoolExecutor, address: str, users: Sequence[str], expected: str
) -> Round:
    host, _, port = address.rpartition(":")
    start_at = time.monotonic() + 0.3
    futures = [pool.submit(download, host, int(port), u, PASSWORD, start_at) for u in users]
    results = [f.result() for f in futures]
    for user, r in zip(users, results, strict=True):
        if r.digest != expected:
            raise RuntimeError(f"{user}: downloaded bytes differ from the stored messages")
    seconds = max(r.finished for r in results) - min(r.started for r in results)
    return Round(seconds, sum(r.messages for r in results), sum(r.octets for r in results))


def measure(
    pool: ProcessPoolExecutor, address: str, users: Sequence[str], expected: str, rounds: int
) -> Round:
    """One warm-up round, then the median of ``rounds`` measured rounds."""
    run_round(pool, address, users, expected)
    measured = sorted(
        (run_round(pool, address, users, expected) for _ in range(rounds)),
        key=lambda r: r.seconds,
    )
    return measured[(len(measured) - 1) // 2]


def row(name: str, r: Round, note: str) -> tuple[str, ...]:
    return (
        name,
        f"{r.messages / r.seconds:.0f}",
        f"{r.octets / r.seconds / 1e6:.1f}",
        f"{r.seconds:.3f}",
        note,
    )


# --- servers --------------------------------------------------------------------------------------


async def populate_letterbird(
    config_path: Path, users: Sequence[str], messages: Sequence[bytes]
) -> None:
    """Create the accounts and store the messages (one blob per message, an INBOX entry per
    account), writing to the running server's database as the admin commands do."""
    from letterbird.config import load_config
    from letterbird.directory.service import Directory
    from letterbird.mime import parse_message
    from letterbird.storage import open_storage_for
    from letterbird.storage.interface import AppendTarget, BlobSource

    cfg = load_config(config_path)
    storage = open_storage_for(cfg)
    await storage.open()
    try:
        directory = Directory(storage, cfg)
        await directory.add_domain(DOMAIN)
        accounts = [await directory.add_user(u, PASSWORD) for u in users]
        targets = [AppendTarget(a.id) for a in accounts]
        for data in messages:
            blob = BlobSource(
                sha256=hashlib.sha256(data).hexdigest(),
                size=len(data),
                structure=parse_message(data).to_json(),
                data=data,
            )
            await storage.append(blob, targets)
    finally:
        await storage.close()


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def bench_letterbird(
    pool: ProcessPoolExecutor, clients: int, messages: list[bytes], expected: str, rounds: int
) -> tuple[str, ...]:
    users = [f"user{i}@{DOMAIN}" for i in range(clients)]
    with letterbird(pop3=True, extra=CHEAP_AUTH) as lb:
        asyncio.run(populate_letterbird(lb.config, users, messages))
        cpu_before = sum(_cpu_seconds(p) for p in lb.pids())
        result = measure(pool, lb.address("pop3"), users, expected, rounds)
        cpu = (sum(_cpu_seconds(p) for p in lb.pids()) - cpu_before) / (rounds + 1)
        rss = lb.peak_rss_kb()
    note = f"peak RSS {rss / 1024:.1f} MiB, server CPU {cpu:.2f} s/round"
    return row("letterbird", result, note)


def bench_dovecot(
    pool: ProcessPoolExecutor, clients: int, messages: list[bytes], expected: str, rounds: int
) -> tuple[str, ...]:
    users = {f"user{i}": PASSWORD for i in range(clients)}
    with peer_workdir() as work, dovecot(work / "dovecot", imap=None, users=users) as dc:
        for user in users:
            dc.populate(user, messages)
        result = measure(pool, dc.pop3_address, list(users), expected, rounds)
    return row("dovecot", result, "maildir, pop3d")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else "")
    parser.add_argument("--clients", type=int, default=10, help="concurrent clients (accounts)")
    parser.add_argument("--messages", type=int, default=200, help="messages per maildrop")
    parser.add_argument("--rounds", type=int, default=3, help="measured rounds (median shown)")
    parser.add_argument("--no-dovecot", action="store_true", help="only run Letterbird")
    args = parser.parse_args(argv)

    messages = make_messages(args.messages)
    expected = hashlib.sha256(b"".join(messages)).hexdigest()
    total = sum(len(m) for m in messages)
    print(
        f"POP3 download: {args.clients} clients x {args.messages} messages "
        f"({total / 1e6:.1f} MB per maildrop, mean {total / len(messages) / 1e3:.1f} KB), "
        f"RETR all + QUIT, median of {args.rounds} rounds after a warm-up",
        flush=True,
    )
    rows: list[tuple[str, ...]] = [("server", "msgs/s", "MB/s", "round s", "note")]
    # the worker processes are forked before any server (and its log threads) exists
    with ProcessPoolExecutor(max_workers=args.clients) as pool:
        list(pool.map(abs, range(args.clients)))
        rows.append(bench_letterbird(pool, args.clients, messages, expected, args.rounds))
        if not args.no_dovecot:
            try:
                rows.append(bench_dovecot(pool, args.clients, messages, expected, args.rounds))
            except (PeerError, OSError) as exc:
                rows.append(("dovecot", "-", "-", "-", f"not run: {exc}".splitlines()[0]))
    print_table(rows)


if __name__ == "__main__":
    main()
