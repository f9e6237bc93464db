"""IMAP benchmark: Letterbird vs Dovecot on the same mailboxes, in the same run.

    .venv/bin/python -m bench.imap [--clients 10] [--messages 200] [--seconds 10]
                                   [--idle 1000] [--big 100000] [--only mix,reconnect,idle,big]
                                   [--no-dovecot]
                                   [--storage-url postgresql://postgres@127.0.0.1:5432/test]

Four measurements, each on both servers:

``mix``
    ``--clients`` concurrent clients, each with its own account holding the same ``--messages``
    messages (mixed sizes and MIME shapes), sessions kept open for ``--seconds``. One round of
    the mix is what a desktop client does when it opens a folder and works in it: ``SELECT``,
    ``UID FETCH 1:* (UID FLAGS)`` (flag resync), envelopes of the newest 50 messages
    (``FLAGS INTERNALDATE RFC822.SIZE ENVELOPE``), the ``BODYSTRUCTURE`` and then
    ``BODY.PEEK[]`` of five random messages, two ``UID STORE`` flag changes, ``UID SEARCH
    UNSEEN``, ``UID SEARCH FROM``, every tenth round a ``UID SEARCH BODY`` (full-text, no index on
    either side), an ``APPEND`` of a small message and its removal (``UID STORE +FLAGS.SILENT
    (\\Deleted)`` + ``UID EXPUNGE``), so the mailbox stays the same size. Reported: commands/s
    over all clients, p50/p95 latency per command, and the server's CPU seconds per command
    (utime + stime from ``/proc``: Letterbird's one process; Dovecot's whole process group,
    its exited children included), which a loaded machine disturbs less than wall-clock rates.
``reconnect``
    The same mix, but every round connects, logs in and logs out (phones, mbsync, cron jobs).
``idle``
    ``--idle`` sessions (over 10 accounts) logged in, INBOX selected, in ``IDLE``; the server's
    memory per idle connection is (memory with them - memory before) / sessions. Letterbird is
    one process (RSS); Dovecot runs one ``imap`` process per session, so its figure is the sum of
    PSS (proportional set size, shared pages divided among sharers) over all its processes.
``big``
    One mailbox of ``--big`` small messages: time to ``SELECT`` and to ``FETCH 1:* (UID FLAGS)``
    (median of 3, on a fresh connection each).

Servers: Letterbird as a separate ``letterbird serve`` process (SQLite storage, messages
written straight into the store; cheap argon2 settings, because Dovecot's peer uses ``{PLAIN}``
passwords and the production argon2id cost would turn the reconnect figure into a KDF
benchmark); Dovecot 2.3 ``imapd`` with a private configuration on a loopback high port over
maildir (:func:`bench.peers.dovecot`, needs root), its index built before measuring. The mix
clients run in separate processes so the Python client is not the bottleneck; the ``idle``
sessions are asyncio connections in this process. Every response is checked (tagged OK; the
body fetches are checked against the messages' sizes), so a fast wrong answer cannot win. Both
servers are up at once and each measurement runs on one server and then straight away on the
other, so a change in the machine's load (other work on a shared machine) disturbs both
servers' figures alike.

With ``--storage-url`` the ``mix`` and ``reconnect`` measurements also run on Letterbird over
that PostgreSQL database, as two more servers up beside the others: ``letterbird-pg1`` (one
``letterbird serve`` node) and ``letterbird-pg2`` (two nodes sharing the database, client ``i``
on node ``i % 2``: half the clients on each, the same accounts and mailboxes as the other
runs). Each has its own throw-away schema (``?schema=lb_bench_imap_<pid>_<nodes>``), dropped
afterwards, also when the run fails; its mailboxes are filled the same way as for SQLite.
Their "server CPU" is summed over the nodes' processes; the PostgreSQL backends serving those
nodes (found through their connections' ports in ``pg_stat_activity``; only when the server
runs on this machine's loopback) are reported apart as "DB CPU", since SQLite's work is inside
Letterbird's own process (PostgreSQL's WAL writer and checkpointer are not counted). ``idle``
and ``big`` are not run on PostgreSQL.

Not a test: nothing here asserts on timing.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import os
import random
import re
import resource
import socket
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from bench.common import letterbird, pg_schema, print_table
from bench.peers import PeerError, dovecot, group_pids, peer_workdir

DOMAIN = "bench.test"
PASSWORD = "bench-pw"
CHEAP_AUTH = """
[auth]
argon2_time_cost = 1
argon2_memory_kib = 8
argon2_parallelism = 1
"""
# Dovecot: room for 1,000+ concurrent sessions (one imap process each) from one address.
DOVECOT_EXTRA = """
default_process_limit = 2000
default_client_limit = 4000
service imap {
  process_limit = 2000
}
service anvil {
  client_limit = 6000
}
service auth {
  client_limit = 6000
}
"""
IDLE_ACCOUNTS = 10
MEASUREMENTS = ("mix", "reconnect", "idle", "big")
ENVELOPE_WINDOW = 50
BODIES_PER_ROUND = 5


# --- messages ---------------------------------------------------------------------------------

_WORDS = [
    "alpha",
    "bravo",
    "charlie",
    "delta",
    "echo",
    "foxtrot",
    "golf",
    "hotel",
    "india",
    "juliet",
    "kilo",
    "lima",
    "mike",
    "november",
    "oscar",
    "papa",
    "quebec",
    "romeo",
    "sierra",
    "tango",
    "uniform",
    "victor",
    "whiskey",
    "xray",
    "yankee",
    "zulu",
    "meeting",
    "report",
    "budget",
    "invoice",
    "travel",
    "lunch",
    "project",
    "release",
    "review",
    "draft",
    "contract",
]


def _text(rng: random.Random, size: int) -> str:
    lines: list[str] = []
    total = 0
    while total < size:
        line = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(4, 12)))
        lines.append(line)
        total += len(line) + 2
    return "\r\n".join(lines) + "\r\n"


def make_message(n: int, rng: random.Random, size: int | None = None) -> bytes:
    """One CRLF message: text/plain, multipart/alternative, or mixed with an attachment."""
    if size is None:
        size = int(min(200_000, max(800, rng.lognormvariate(8.7, 1.0))))
    head = (
        f"From: Alice Example <alice{n % 7}@alice.test>\r\n"
        f"To: User <user@{DOMAIN}>\r\nCc: Carol <carol@carol.test>\r\n"
        f"Subject: benchmark message {n} {rng.choice(_WORDS)}\r\n"
        f"Message-ID: <{n}.{rng.randrange(10**9)}@alice.test>\r\n"
        f"Date: Thu, 26 Nov 2026 10:{n % 60:02d}:00 +0000\r\nMIME-Version: 1.0\r\n"
    )
    kind = n % 4
    if kind in (0, 1):
        body = _text(rng, size)
        return (head + "Content-Type: text/plain; charset=us-ascii\r\n\r\n" + body).encode()
    if kind == 2:
        text = _text(rng, size // 2)
        html = "<html><body><p>" + _text(rng, size // 2).replace("\r\n", "</p>\r\n<p>")
        return (
            head + 'Content-Type: multipart/alternative; boundary="alt-b"\r\n\r\n'
            "--alt-b\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n" + text + "--alt-b\r\n"
            "Content-Type: text/html; charset=us-ascii\r\n\r\n" + html + "</p></body></html>\r\n"
            "--alt-b--\r\n"
        ).encode()
    blob = rng.randbytes(max(100, size - 600))
    b64 = "\r\n".join(base64.b64encode(blob[i : i + 57]).decode() for i in range(0, len(blob), 57))
    return (
        head + 'Content-Type: multipart/mixed; boundary="mix-b"\r\n\r\n'
        "--mix-b\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n"
        + _text(rng, 400)
        + "--mix-b\r\nContent-Type: application/pdf; name=report.pdf\r\n"
        "Content-Disposition: attachment; filename=report.pdf\r\n"
        "Content-Transfer-Encoding: base64\r\n\r\n" + b64 + "\r\n--mix-b--\r\n"
    ).encode()


def make_messages(count: int, seed: int = 3501, size: int | None = None) -> list[bytes]:
    rng = random.Random(seed)
    return [make_message(n, rng, size) for n in range(count)]


# --- a minimal synchronous IMAP client ------------------------------------------------------


class ImapError(Exception):
    pass


_LITERAL_END = re.compile(rb"\{(\d+)\}\r\n$")


class Client:
    """Just enough IMAP for the benchmark: tagged commands, literals in responses, APPEND."""

    def __init__(self, host: str, port: int, timeout: float = 120) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.file = self.sock.makefile("rb")
        self.n = 0
        greeting = self.file.readline()
        if not greeting.startswith(b"* OK"):
            raise ImapError(f"bad greeting {greeting[:80]!r}")

    def _read(self) -> bytes:
        line = self.file.readline()
        if not line:
            raise ImapError("connection closed")
        while (m := _LITERAL_END.search(line)) is not None:
            line += self.file.read(int(m.group(1)))
            line += self.file.readline()
        return line

    def command(self, text: str, literal: bytes | None = None) -> list[bytes]:
        """Run one command; return its untagged responses; raise ImapError unless OK."""
        self.n += 1
        tag = b"b%d" % self.n
        if literal is None:
            self.sock.sendall(tag + b" " + text.encode() + b"\r\n")
        else:
            self.sock.sendall(tag + b" " + text.encode() + b" {%d}\r\n" % len(literal))
            line = self._read()
            if not line.startswith(b"+"):
                raise ImapError(f"{text}: no continuation: {line[:100]!r}")
            self.sock.sendall(literal + b"\r\n")
        untagged: list[bytes] = []
        while True:
            line = self._read()
            if line.startswith(tag + b" "):
                if not line.startswith(tag + b" OK"):
                    raise ImapError(f"{text[:60]}: {line[:200]!r}")
                untagged.append(line)
                return untagged
            untagged.append(line)

    def close(self) -> None:
        try:
            self.command("LOGOUT")
        except (ImapError, OSError):
            pass
        self.sock.close()


# --- the mix ----------------------------------------------------------------------------------


@dataclass
class ClientResult:
    latencies: dict[str, list[float]] = field(default_factory=dict)
    started: float = 0.0
    ended: float = 0.0
    errors: list[str] = field(default_factory=list)

    def add(self, name: str, seconds: float) -> None:
        self.latencies.setdefault(name, []).append(seconds)


_UID = re.compile(rb"UID (\d+)")
_APPENDUID = re.compile(rb"APPENDUID \d+ (\d+)")
_SIZE = re.compile(rb"RFC822\.SIZE (\d+)")
_BODY_LITERAL = re.compile(rb"BODY\[\] \{(\d+)\}\r\n")


def mix_client(
    host: str,
    port: int,
    user: str,
    seconds: float,
    start_at: float,
    reconnect: bool,
    seed: int,
    sizes: dict[int, int],
) -> ClientResult:
    """Run the mix for ``seconds`` from ``start_at`` (wall clock); ``sizes`` maps message
    number (1-based position in the mailbox) to its size, to check body fetches."""
    rng = random.Random(seed)
    result = ClientResult()
    append_msg = make_message(99_999, random.Random(seed), 1500)
    while time.time() < start_at:
        time.sleep(0.001)
    result.started = time.perf_counter()
    deadline = result.started + seconds
    client: Client | None = None
    rounds = 0

    def timed(name: str, text: str, literal: bytes | None = None) -> list[bytes]:
        assert client is not None
        t0 = time.perf_counter()
        out = client.command(text, literal)
        result.add(name, time.perf_counter() - t0)
        return out

    try:
        while time.perf_counter() < deadline:
            rounds += 1
            if client is None:
                t0 = time.perf_counter()
                client = Client(host, port)
                client.command(f'LOGIN "{user}" "{PASSWORD}"')
                result.add("connect+LOGIN", time.perf_counter() - t0)
            timed("SELECT", "SELECT INBOX")
            flags = timed("FETCH 1:* (UID FLAGS)", "UID FETCH 1:* (UID FLAGS)")
            uids = [int(m.group(1)) for line in flags if (m := _UID.search(line))]
            base = [u for u in uids if u <= len(sizes)] or uids
            newest = uids[-ENVELOPE_WINDOW:]
            timed(
                "FETCH envelopes x50",
                f"UID FETCH {newest[0]}:{newest[-1]} (UID FLAGS INTERNALDATE RFC822.SIZE ENVELOPE)",
            )
            for _ in range(BODIES_PER_ROUND):
                uid = rng.choice(base)
                timed("FETCH BODYSTRUCTURE", f"UID FETCH {uid} (BODYSTRUCTURE)")
                out = timed("FETCH BODY.PEEK[]", f"UID FETCH {uid} (RFC822.SIZE BODY.PEEK[])")
                body = b"".join(out)
                size, lit = _SIZE.search(body), _BODY_LITERAL.search(body)
                if size is None or lit is None or size.group(1) != lit.group(1):
                    raise ImapError(f"body fetch of uid {uid}: size mismatch")
            for i in range(2):
                uid = rng.choice(base)
                sign = "+" if (rounds + i) % 2 else "-"
                timed("STORE flags", f"UID STORE {uid} {sign}FLAGS (\\Flagged)")
            timed("SEARCH UNSEEN", "UID SEARCH UNSEEN")
            timed("SEARCH FROM", 'UID SEARCH FROM "alice3"')
            if rounds % 10 == 1:
                timed("SEARCH BODY", 'UID SEARCH BODY "contract budget"')
            out = timed("APPEND", "APPEND INBOX (\\Seen)", append_msg)
            m = _APPENDUID.search(b"".join(out))
            if m is None:
                raise ImapError("APPEND gave no APPENDUID")
            new = int(m.group(1))
            client.command(f"UID STORE {new} +FLAGS.SILENT (\\Deleted)")
            timed("UID EXPUNGE", f"UID EXPUNGE {new}")
            if reconnect:
                t0 = time.perf_counter()
                client.close()
                result.add("LOGOUT", time.perf_counter() - t0)
                client = None
    except (ImapError, OSError) as exc:
        result.errors.append(f"{type(exc).__name__}: {exc}")
    finally:
        if client is not None:
            client.close()
    result.ended = time.perf_counter()
    return result


@dataclass
class MixReport:
    commands: int
    seconds: float
    per_command: dict[str, tuple[int, float, float]]  # name -> (count, p50 ms, p95 ms)
    errors: list[str]
    server_cpu: float | None = None  # CPU seconds the server used during the run
    db_cpu: float | None = None  # CPU seconds of the PostgreSQL backends serving it


def run_mix(
    pool: ProcessPoolExecutor,
    addresses: Sequence[str],
    users: Sequence[str],
    seconds: float,
    reconnect: bool,
    sizes: dict[int, int],
    cpu: Callable[[], float] | None = None,
    db_cpu: Callable[[], dict[int, float] | None] | None = None,
) -> MixReport:
    """Run the mix, the ``i``-th user's client on ``addresses[i % len(addresses)]``; ``cpu()``
    (if given) reads the server's CPU seconds used so far, ``db_cpu()`` those of each database
    backend serving it (None when they cannot be read)."""
    cpu_before = cpu() if cpu is not None else 0.0
    db_before = db_cpu() if db_cpu is not None else None
    start_at = time.time() + 1.0
    futures = []
    for i, user in enumerate(users):
        host, port = addresses[i % len(addresses)].rsplit(":", 1)
        futures.append(
            pool.submit(
                mix_client, host, int(port), user, seconds, start_at, reconnect, 1000 + i, sizes
            )
        )
    results = [f.result() for f in futures]
    server_cpu = cpu() - cpu_before if cpu is not None else None
    db_after = db_cpu() if db_cpu is not None else None
    db_used = None
    if db_before is not None and db_after is not None:
        # a backend that appeared meanwhile (the pool grew) counts whole: its start-up is small
        db_used = sum(v - db_before.get(pid, 0.0) for pid, v in db_after.items())
    merged: dict[str, list[float]] = {}
    for r in results:
        for name, values in r.latencies.items():
            merged.setdefault(name, []).extend(values)
    wall = max(r.ended for r in results) - min(r.started for r in results)
    per: dict[str, tuple[int, float, float]] = {}
    for name, values in merged.items():
        values.sort()
        p95 = values[min(len(values) - 1, int(len(values) * 0.95))]
        per[name] = (len(values), statistics.median(values) * 1e3, p95 * 1e3)
    total = sum(len(v) for v in merged.values())
    errors = [e for r in results for e in r.errors]
    return MixReport(total, wall, per, errors, server_cpu, db_used)


# --- idle sessions ----------------------------------------------------------------------------


async def _idle_session(
    host: str, port: int, user: str, idling: list[int], ready: asyncio.Event
) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        await reader.readline()
        for tag, cmd in ((b"a", f'LOGIN "{user}" "{PASSWORD}"'), (b"b", "SELECT INBOX")):
            writer.write(tag + b" " + cmd.encode() + b"\r\n")
            while True:
                line = await reader.readline()
                if not line:
                    raise ImapError("closed")
                if line.startswith(tag + b" "):
                    if not line.startswith(tag + b" OK"):
                        raise ImapError(line.decode(errors="replace"))
                    break
        writer.write(b"c IDLE\r\n")
        line = await reader.readline()
        if not line.startswith(b"+"):
            raise ImapError(f"IDLE refused: {line!r}")
        idling[0] += 1
        await ready.wait()
        writer.write(b"DONE\r\n")
        while not (await reader.readline()).startswith(b"c "):
            pass
        writer.write(b"d LOGOUT\r\n")
        await writer.drain()
    finally:
        writer.close()


async def _idle(
    address: str, users: Sequence[str], sessions: int, memory: Callable[[], int]
) -> tuple[int, int, float]:
    """(memory before KiB, memory with the sessions KiB, seconds to open them)."""
    host, port_text = address.rsplit(":", 1)
    port = int(port_text)
    release = asyncio.Event()
    idling = [0]
    before = memory()
    t0 = time.perf_counter()
    tasks: list[asyncio.Task[None]] = []
    for i in range(sessions):  # in batches, so neither server sees a login storm
        user = users[i % len(users)]
        tasks.append(asyncio.create_task(_idle_session(host, port, user, idling, release)))
        if len(tasks) % 50 == 0:
            await asyncio.sleep(0.05)
    while idling[0] < sessions:  # every session has had its "+ idling"
        await asyncio.sleep(0.1)
        for t in tasks:
            if t.done():
                t.result()  # re-raise a failure
        if time.perf_counter() - t0 > 300:
            raise ImapError(f"only {idling[0]} of {sessions} sessions reached IDLE")
    opened = time.perf_counter() - t0
    await asyncio.sleep(1.0)  # let the servers settle
    during = memory()
    release.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    return before, during, opened


def _status_kb(pid: int, key: str) -> int:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    m = re.search(rf"^{key}:\s+(\d+) kB$", text, re.M)
    return int(m.group(1)) if m else 0


def _pss_kb(pid: int) -> int:
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return 0
    m = re.search(r"^Pss:\s+(\d+) kB$", text, re.M)
    return int(m.group(1)) if m else 0


def _raise_fd_limit(wanted: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(wanted, hard), hard))


# --- the big mailbox --------------------------------------------------------------------------


def big_mailbox_times(address: str, user: str, expected: int) -> tuple[float, float]:
    """Median over 3 fresh connections of (SELECT seconds, FETCH 1:* (UID FLAGS) seconds)."""
    host, port = address.rsplit(":", 1)
    selects: list[float] = []
    fetches: list[float] = []
    for _ in range(3):
        client = Client(host, int(port), timeout=600)
        client.command(f'LOGIN "{user}" "{PASSWORD}"')
        t0 = time.perf_counter()
        out = client.command("SELECT INBOX")
        selects.append(time.perf_counter() - t0)
        exists = [int(x) for x in re.findall(rb"\* (\d+) EXISTS", b"".join(out))]
        if exists != [expected]:
            raise ImapError(f"SELECT says {exists}, expected {expected} messages")
        t0 = time.perf_counter()
        lines = client.command("FETCH 1:* (UID FLAGS)")
        fetches.append(time.perf_counter() - t0)
        if len(lines) != expected + 1:
            raise ImapError(f"FETCH 1:* returned {len(lines) - 1} lines, expected {expected}")
        client.close()
    return statistics.median(selects), statistics.median(fetches)


# --- servers ----------------------------------------------------------------------------------


async def populate_letterbird(
    config_path: Path, accounts: dict[str, list[bytes]], batch: int = 256
) -> None:
    """Create the accounts and store their messages (each message once per account that lists
    it), writing to the running server's database as the admin commands do. Appends run
    ``batch`` at a time so group commit amortises the fsyncs."""
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
        if not await directory.is_local_domain(DOMAIN):
            await directory.add_domain(DOMAIN)
        by_content: dict[bytes, list[int]] = {}
        order: list[bytes] = []
        for user, messages in accounts.items():
            account = await directory.add_user(user, PASSWORD)
            for data in messages:
                if data not in by_content:
                    by_content[data] = []
                    order.append(data)
                by_content[data].append(account.id)

        async def append(data: bytes) -> None:
            blob = BlobSource(
                sha256=hashlib.sha256(data).hexdigest(),
                size=len(data),
                structure=parse_message(data).to_json(),
                data=data,
            )
            await storage.append(blob, [AppendTarget(a) for a in by_content[data]])

        for i in range(0, len(order), batch):
            await asyncio.gather(*(append(data) for data in order[i : i + batch]))
    finally:
        await storage.close()


def _cpu_seconds(pid: int, *, children: bool = False) -> float:
    """utime + stime of ``pid`` (with ``children``: plus those of its children it has
    waited for, i.e. that have exited)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:  # gone
        return 0.0
    ticks = int(fields[11]) + int(fields[12])
    if children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / os.sysconf("SC_CLK_TCK")


def _group_cpu_seconds(leader: int) -> float:
    """CPU seconds of a process group whose leader spawns every process (Dovecot's master):
    the live processes' own time plus what exited children left in the leader's account."""
    return sum(_cpu_seconds(p) for p in group_pids(leader)) + (
        _cpu_seconds(leader, children=True) - _cpu_seconds(leader)
    )


@dataclass
class ServerFigures:
    name: str
    mix: MixReport | None = None
    reconnect: MixReport | None = None
    idle: tuple[int, int, float] | None = None
    idle_note: str = ""
    big: tuple[float, float] | None = None
    notes: list[str] = field(default_factory=list)


@dataclass
class Workload:
    clients: int
    messages: list[bytes]
    seconds: float
    idle_sessions: int
    big: int
    only: set[str]
    workers: int = 0  # Letterbird's serving processes (0: one per CPU core)

    @property
    def sizes(self) -> dict[int, int]:
        return {i + 1: len(m) for i, m in enumerate(self.messages)}


def _big_messages(count: int) -> list[bytes]:
    rng = random.Random(7)
    return [make_message(n, rng, 600) for n in range(count)]


@dataclass
class Target:
    """One server under test, up, with its mailboxes for the mix populated."""

    figures: ServerFigures
    addresses: list[str]  # IMAP, one per node; the mix clients are spread over them
    users: list[str]
    idle_users: list[str]
    big_user: str
    cpu: Callable[[], float]  # CPU seconds used so far (all the nodes' processes)
    memory: Callable[[], int]  # KiB, as the idle figure counts it
    prepare_idle: Callable[[], None]
    store_big: Callable[[], str]  # fills the big mailbox; returns a note with the time taken
    measurements: frozenset[str] = frozenset(MEASUREMENTS)  # those this target takes part in
    # CPU seconds used so far by each PostgreSQL backend serving the nodes (None: unknown)
    db_cpu: Callable[[], dict[int, float] | None] | None = None

    @property
    def address(self) -> str:
        return self.addresses[0]


@contextmanager
def letterbird_target(w: Workload) -> Iterator[Target]:
    figures = ServerFigures("letterbird")
    users = [f"user{i}@{DOMAIN}" for i in range(w.clients)]
    idle_users = [f"idle{i}@{DOMAIN}" for i in range(IDLE_ACCOUNTS)]
    accounts: dict[str, list[bytes]] = {u: w.messages for u in users}
    if "idle" in w.only:
        accounts.update({u: w.messages[:10] for u in idle_users})
    big_user = f"big@{DOMAIN}"
    with letterbird(imap=True, extra=CHEAP_AUTH, workers=w.workers) as lb:
        t0 = time.perf_counter()
        asyncio.run(populate_letterbird(lb.config, accounts))
        figures.notes.append(f"populated in {time.perf_counter() - t0:.1f} s")
        processes = len(lb.pids())
        if processes > 1:
            figures.notes.append(f"{processes - 1} worker processes + master")
            figures.idle_note = "PSS summed over the master and worker processes"
        else:
            figures.idle_note = "RSS of the one process"

        def store_big() -> str:
            t0 = time.perf_counter()
            asyncio.run(populate_letterbird(lb.config, {big_user: _big_messages(w.big)}))
            return f"big mailbox stored in {time.perf_counter() - t0:.0f} s"

        yield Target(
            figures,
            [lb.address("imap")],
            users,
            idle_users,
            big_user,
            cpu=lambda: sum(_cpu_seconds(p) for p in lb.pids()),
            memory=lambda: (
                sum(_pss_kb(p) for p in lb.pids()) if processes > 1 else _status_kb(lb.pid, "VmRSS")
            ),
            prepare_idle=lambda: None,
            store_big=store_big,
        )
        figures.notes.append(f"peak RSS {lb.peak_rss_kb() / 1024:.0f} MiB")


@contextmanager
def dovecot_target(w: Workload) -> Iterator[Target]:
    figures = ServerFigures("dovecot")
    users = [f"user{i}" for i in range(w.clients)]
    idle_users = [f"idle{i}" for i in range(IDLE_ACCOUNTS)]
    all_users = {u: PASSWORD for u in [*users, *idle_users, "big"]}
    with (
        peer_workdir() as work,
        dovecot(work / "dovecot", pop3=None, users=all_users, extra_conf=DOVECOT_EXTRA) as dc,
    ):
        for user in users:
            dc.populate(user, w.messages)
        figures.notes.append("maildir, imapd, one process per session")
        figures.idle_note = "PSS summed over all processes (one imap process per session)"

        def prepare_idle() -> None:
            for user in idle_users:
                dc.populate(user, w.messages[:10])

        def store_big() -> str:
            t0 = time.perf_counter()
            dc.populate("big", _big_messages(w.big))
            return f"big mailbox indexed in {time.perf_counter() - t0:.0f} s"

        yield Target(
            figures,
            [dc.imap_address],
            users,
            idle_users,
            "big",
            cpu=lambda: _group_cpu_seconds(dc.pid),
            memory=lambda: sum(_pss_kb(p) for p in group_pids(dc.pid)),
            prepare_idle=prepare_idle,
            store_big=store_big,
        )


@contextmanager
def letterbird_pg_target(w: Workload, url: str, nodes: int) -> Iterator[Target]:
    """Letterbird on PostgreSQL: ``nodes`` ``letterbird serve`` processes sharing one
    throw-away schema (dropped afterwards, also on errors), the mix users stored the same way
    as for SQLite, the mix clients split between the nodes. Only the mix measurements."""
    from letterbird.storage.pg_schema import parse_pg_url

    figures = ServerFigures(f"letterbird-pg{nodes}")
    users = [f"user{i}@{DOMAIN}" for i in range(w.clients)]
    with ExitStack() as stack:
        schema = f"lb_bench_imap_{os.getpid()}_{nodes}"
        schema_url = stack.enter_context(pg_schema(url, schema))
        extra = CHEAP_AUTH + f'\n[storage]\nurl = "{schema_url}"\n'
        lbs = [
            stack.enter_context(letterbird(imap=True, extra=extra, workers=1)) for _ in range(nodes)
        ]
        t0 = time.perf_counter()
        asyncio.run(populate_letterbird(lbs[0].config, {u: w.messages for u in users}))
        figures.notes.append(
            f"PostgreSQL schema {schema}, {nodes} node{'s' if nodes > 1 else ''}"
            + (", clients split between them" if nodes > 1 else "")
            + f"; populated in {time.perf_counter() - t0:.1f} s"
        )
        pids = [lb.pid for lb in lbs]

        def unsupported() -> str:
            raise AssertionError("not measured on PostgreSQL")

        yield Target(
            figures,
            [lb.address("imap") for lb in lbs],
            users,
            [],
            "",
            cpu=lambda: sum(_cpu_seconds(pid) for pid in pids),
            memory=lambda: sum(_status_kb(pid, "VmRSS") for pid in pids),
            prepare_idle=lambda: None,
            store_big=unsupported,
            measurements=frozenset({"mix", "reconnect"}),
            db_cpu=_pg_backend_cpu_reader(pids, parse_pg_url(url).dsn),
        )
        rss = ", ".join(f"{lb.peak_rss_kb() / 1024:.0f}" for lb in lbs)
        figures.notes.append(f"peak RSS per node {rss} MiB")


def _tcp_client_ports(pids: Sequence[int], remote_port: int) -> set[int]:
    """Local ports of the TCP connections ``pids`` hold to ``remote_port`` (from ``/proc``)."""
    inodes: set[str] = set()
    for pid in pids:
        try:
            fds = list(Path(f"/proc/{pid}/fd").iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[len("socket:[") : -1])
    ports: set[int] = set()
    for table in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/{pids[0]}/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()  # sl local rem st tx:rx tr:when retrnsmt uid timeout inode ...
            if f[9] in inodes and int(f[2].rsplit(":", 1)[1], 16) == remote_port:
                ports.add(int(f[1].rsplit(":", 1)[1], 16))
    return ports


def _pg_backend_cpu_reader(
    pids: Sequence[int], dsn: str
) -> Callable[[], dict[int, float] | None] | None:
    """A reader of the CPU seconds used by each PostgreSQL backend serving the processes
    ``pids`` (found through their connections' ports in ``pg_stat_activity``), or None when
    the server is not on this machine's loopback, where ``/proc`` shows its processes."""
    from urllib.parse import urlsplit

    import asyncpg

    parts = urlsplit(dsn)
    if parts.hostname not in ("127.0.0.1", "::1", "localhost"):
        return None
    port = parts.port or 5432

    async def backends(ports: list[int]) -> list[int]:
        conn = await asyncpg.connect(dsn, timeout=10)
        try:
            rows = await conn.fetch(
                "SELECT pid FROM pg_stat_activity WHERE client_port = ANY($1::int[])", ports
            )
        finally:
            await conn.close()
        return [int(r["pid"]) for r in rows]

    def read() -> dict[int, float] | None:
        ports = _tcp_client_ports(pids, port)
        if not ports:
            return None
        found = asyncio.run(backends(sorted(ports)))
        if not found or not all(Path(f"/proc/{b}/stat").exists() for b in found):
            return None  # not this machine's processes after all
        return {b: _cpu_seconds(b) for b in found}

    return read


def run_measurements(pool: ProcessPoolExecutor, targets: Sequence[Target], w: Workload) -> None:
    """Each measurement on every server, back to back (then the next measurement), so a
    change in the machine's load disturbs both servers' figures alike."""

    def taking(name: str) -> list[Target]:
        return [t for t in targets if name in w.only and name in t.measurements]

    for t in taking("mix"):
        t.figures.mix = run_mix(
            pool, t.addresses, t.users, w.seconds, False, w.sizes, t.cpu, t.db_cpu
        )
    for t in taking("reconnect"):
        t.figures.reconnect = run_mix(
            pool, t.addresses, t.users, w.seconds, True, w.sizes, t.cpu, t.db_cpu
        )
    for t in taking("idle"):
        t.prepare_idle()
        try:
            t.figures.idle = asyncio.run(_idle(t.address, t.idle_users, w.idle_sessions, t.memory))
        except (ImapError, OSError) as exc:
            t.figures.notes.append(f"idle failed: {exc}")
    for t in taking("big"):
        t.figures.notes.append(t.store_big())
    for t in taking("big"):
        t.figures.big = big_mailbox_times(t.address, t.big_user, w.big)


# --- report -----------------------------------------------------------------------------------


def _mix_rows(title: str, servers: list[ServerFigures], attr: str) -> None:
    reports = [(s.name, getattr(s, attr)) for s in servers if getattr(s, attr) is not None]
    if not reports:
        return
    print(f"\n{title}")
    with_db = any(r.db_cpu is not None for _, r in reports)
    header: tuple[str, ...] = ("server", "commands/s", "commands", "seconds", "server CPU s")
    header += ("CPU ms/command",) + (("DB CPU ms/command",) if with_db else ()) + ("errors",)
    rows: list[tuple[str, ...]] = [header]
    for name, r in reports:
        cpu = r.server_cpu
        cells: tuple[str, ...] = (
            name,
            f"{r.commands / r.seconds:.0f}",
            str(r.commands),
            f"{r.seconds:.1f}",
            "?" if cpu is None else f"{cpu:.1f}",
            "?" if cpu is None else f"{cpu / max(r.commands, 1) * 1e3:.2f}",
        )
        if with_db:
            db = r.db_cpu
            cells += ("-" if db is None else f"{db / max(r.commands, 1) * 1e3:.2f}",)
        rows.append((*cells, "; ".join(r.errors[:2]) or "0"))
    print_table(rows)
    names = sorted({c for _, r in reports for c in r.per_command}, key=_command_order)
    header = ("command",)
    for name, _ in reports:
        header += (f"{name} n", f"{name} p50 ms", f"{name} p95 ms")
    table: list[tuple[str, ...]] = [header]
    for command in names:
        row: tuple[str, ...] = (command,)
        for _, r in reports:
            count, p50, p95 = r.per_command.get(command, (0, float("nan"), float("nan")))
            row += (str(count), f"{p50:.2f}", f"{p95:.2f}")
        table.append(row)
    print()
    print_table(table)


_ORDER = [
    "connect+LOGIN",
    "SELECT",
    "FETCH 1:* (UID FLAGS)",
    "FETCH envelopes x50",
    "FETCH BODYSTRUCTURE",
    "FETCH BODY.PEEK[]",
    "STORE flags",
    "SEARCH UNSEEN",
    "SEARCH FROM",
    "SEARCH BODY",
    "APPEND",
    "UID EXPUNGE",
    "LOGOUT",
]


def _command_order(name: str) -> int:
    return _ORDER.index(name) if name in _ORDER else len(_ORDER)


def report(servers: list[ServerFigures], w: Workload) -> None:
    total = sum(len(m) for m in w.messages)
    print(
        f"\nIMAP: {w.clients} clients x {len(w.messages)} messages "
        f"({total / 1e6:.1f} MB per mailbox), {w.seconds:g} s per mix run"
    )
    _mix_rows("mix, sessions kept open", servers, "mix")
    _mix_rows("mix, reconnecting every round", servers, "reconnect")
    idle = [s for s in servers if s.idle is not None]
    if idle:
        print(f"\nidle: {w.idle_sessions} sessions in IDLE")
        rows: list[tuple[str, ...]] = [
            ("server", "before MiB", "with sessions MiB", "KiB/session", "open s", "measured")
        ]
        for s in idle:
            assert s.idle is not None
            before, during, opened = s.idle
            rows.append(
                (
                    s.name,
                    f"{before / 1024:.1f}",
                    f"{during / 1024:.1f}",
                    f"{(during - before) / w.idle_sessions:.0f}",
                    f"{opened:.1f}",
                    s.idle_note,
                )
            )
        print_table(rows)
    big = [s for s in servers if s.big is not None]
    if big:
        print(f"\nbig mailbox: {w.big} messages")
        rows = [("server", "SELECT s", "FETCH 1:* (UID FLAGS) s")]
        for s in big:
            assert s.big is not None
            rows.append((s.name, f"{s.big[0]:.3f}", f"{s.big[1]:.3f}"))
        print_table(rows)
    print()
    for s in servers:
        print(f"{s.name}: " + "; ".join(s.notes))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else "")
    parser.add_argument("--clients", type=int, default=10, help="concurrent mix clients")
    parser.add_argument("--messages", type=int, default=200, help="messages per mailbox")
    parser.add_argument("--seconds", type=float, default=10.0, help="duration of a mix run")
    parser.add_argument("--idle", type=int, default=1000, help="IDLE sessions")
    parser.add_argument("--big", type=int, default=100_000, help="messages in the big mailbox")
    parser.add_argument(
        "--only", default="mix,reconnect,idle,big", help="comma-separated measurements"
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=0,
        help="Letterbird's serving processes (0, the default: one per CPU core)",
    )
    parser.add_argument("--no-dovecot", action="store_true", help="only run Letterbird")
    parser.add_argument("--no-letterbird", action="store_true", help="only run Dovecot")
    parser.add_argument(
        "--storage-url",
        metavar="postgresql://...",
        help="also run the mix measurements on Letterbird over this PostgreSQL database, "
        "with one node and with two nodes sharing it (throw-away schemas)",
    )
    args = parser.parse_args(argv)
    only = {x.strip() for x in args.only.split(",") if x.strip()}
    unknown = only - set(MEASUREMENTS)
    if unknown:
        parser.error(f"unknown measurement(s): {', '.join(sorted(unknown))}")
    w = Workload(
        args.clients,
        make_messages(args.messages),
        args.seconds,
        args.idle,
        args.big,
        only,
        args.workers,
    )
    _raise_fd_limit(args.idle * 4 + 1000)
    servers: list[ServerFigures] = []
    # the worker processes are forked before any server (and its log threads) exists
    with ProcessPoolExecutor(max_workers=args.clients) as pool, ExitStack() as stack:
        list(pool.map(abs, range(args.clients)))
        targets: list[Target] = []
        if not args.no_letterbird:
            targets.append(stack.enter_context(letterbird_target(w)))
        if not args.no_dovecot:
            try:
                targets.append(stack.enter_context(dovecot_target(w)))
            except (PeerError, OSError) as exc:
                print(f"dovecot not run: {exc}".splitlines()[0])
        if args.storage_url and not args.no_letterbird and only & {"mix", "reconnect"}:
            for nodes in (1, 2):
                pg = letterbird_pg_target(w, args.storage_url, nodes)
                targets.append(stack.enter_context(pg))
        run_measurements(pool, targets, w)
        servers = [t.figures for t in targets]
    report(servers, w)  # after the servers stopped (their final notes are in)


if __name__ == "__main__":
    main()
