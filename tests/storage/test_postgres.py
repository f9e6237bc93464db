"""What only the PostgreSQL backend has: migrations, several nodes on one database, LISTEN/NOTIFY,
advisory maildrop locks, queue leases on the database clock, shared login failures.

Every test runs against a real server in a throw-away schema (``pgutil``); a "node" is one
:class:`PgStorage` instance, exactly what one ``letterbird serve`` process holds.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import pgutil
import pytest
from conftest import blob_of, make_config, sample_message

from letterbird.config import DeliverySettings
from letterbird.delivery.mx import NextHop
from letterbird.delivery.queue.service import QueueService
from letterbird.delivery.queue.worker import (
    MessageFeed,
    RecipientOutcome,
    Report,
    SessionReport,
)
from letterbird.directory.service import Directory
from letterbird.proto.smtp.client import DeliveryStatus
from letterbird.proto.smtp.replies import Reply
from letterbird.storage.events import ChangeKind
from letterbird.storage.interface import (
    AppendTarget,
    BlobSource,
    OutgoingMessage,
    QueueRecipient,
    QuotaExceeded,
    StorageError,
)
from letterbird.storage.pg_events import RESYNC_MAILBOX
from letterbird.storage.pg_schema import (
    CHUNK,
    MIGRATIONS,
    SCHEMA_VERSION,
    migrate,
    parse_pg_url,
)
from letterbird.storage.postgres import PgStorage

pytestmark = pytest.mark.pg

Nodes = Callable[..., Awaitable[PgStorage]]


@pytest.fixture
def url() -> str:
    """An empty, already migrated schema."""
    return pgutil.clean_url()


@pytest.fixture
def empty_url() -> str:
    """A schema that does not exist yet (for migration tests)."""
    return pgutil.new_url()


def _node_factory(url: str, opened: list[PgStorage]) -> Nodes:
    async def make(**kwargs: Any) -> PgStorage:
        s = PgStorage(url, **kwargs)
        await s.open()
        opened.append(s)
        return s

    return make


@pytest.fixture
async def nodes(url: str) -> AsyncIterator[Nodes]:
    """Open PgStorage instances ("nodes") on one schema; all closed afterwards."""
    opened: list[PgStorage] = []
    try:
        yield _node_factory(url, opened)
    finally:
        for s in opened:
            await s.close()
        await pgutil.recycle_async(url)


@pytest.fixture
async def fresh_nodes(empty_url: str) -> AsyncIterator[Nodes]:
    """Like ``nodes``, on a schema that starts empty (not even migrated)."""
    opened: list[PgStorage] = []
    try:
        yield _node_factory(empty_url, opened)
    finally:
        for s in opened:
            await s.close()
        await pgutil.recycle_async(empty_url)


async def _raw(url: str) -> Any:
    parsed = parse_pg_url(url)
    return await asyncpg.connect(parsed.dsn, server_settings=parsed.server_settings)


async def _bob(s: PgStorage, local: str = "bob") -> int:
    if await s.get_domain("example.test") is None:
        await s.add_domain("example.test")
    return (await s.add_account(local, "example.test", "h")).id


async def _wait(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not cond():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached"
        await asyncio.sleep(0.02)


# -- URLs and connection failures ------------------------------------------------------------
def test_url_parsing() -> None:
    u = parse_pg_url("postgresql://lb:s3cret@db.example:5433/mail?schema=Tenant_1&sslmode=disable")
    assert u.schema == "tenant_1"
    assert u.dsn == "postgresql://lb:s3cret@db.example:5433/mail?sslmode=disable"
    assert "s3cret" not in u.redacted and "***" in u.redacted
    assert u.channel == "letterbird_tenant_1"
    assert u.server_settings == {"search_path": "tenant_1"}
    plain = parse_pg_url("postgres://h/db")
    assert plain.schema is None and plain.channel == "letterbird" and plain.server_settings == {}
    for bad in ("mysql://h/db", "postgresql://h/", "postgresql://h/db?schema=a;drop"):
        with pytest.raises(ValueError):
            parse_pg_url(bad)
    with pytest.raises(StorageError):
        PgStorage("postgresql://h/")


async def test_unreachable_server_is_a_storage_error() -> None:
    s = PgStorage("postgresql://postgres@127.0.0.1:1/test", connect_timeout=2)
    with pytest.raises(StorageError, match="cannot connect to PostgreSQL"):
        await s.open()
    with pytest.raises(StorageError, match="closed"):
        await s.list_domains()


# -- migrations ------------------------------------------------------------------------------
async def test_migrates_an_empty_database(fresh_nodes: Nodes) -> None:
    s = await fresh_nodes()
    assert s.migrated == (0, SCHEMA_VERSION)
    again = await fresh_nodes()
    assert again.migrated == (SCHEMA_VERSION, SCHEMA_VERSION)


async def test_concurrent_nodes_migrate_once(fresh_nodes: Nodes) -> None:
    a, b, c = await asyncio.gather(fresh_nodes(), fresh_nodes(), fresh_nodes())
    assert sorted(x.migrated for x in (a, b, c)) == [  # type: ignore[type-var]
        (0, SCHEMA_VERSION),
        (SCHEMA_VERSION, SCHEMA_VERSION),
        (SCHEMA_VERSION, SCHEMA_VERSION),
    ]


@pytest.mark.parametrize("start", range(1, SCHEMA_VERSION))
async def test_migrates_from_each_earlier_version(
    empty_url: str, fresh_nodes: Nodes, start: int
) -> None:
    url = empty_url
    nodes = fresh_nodes
    conn = await _raw(url)
    try:
        assert await migrate(conn, parse_pg_url(url).schema, target=start) == (0, start)
        # data written by that version survives the upgrade
        await conn.execute("INSERT INTO domains(name, created) VALUES('example.test', 0)")
        await conn.execute(
            "INSERT INTO accounts(domain_id, local, local_norm, password_hash, created) "
            "SELECT id, 'Bob', 'bob', 'h', 0 FROM domains"
        )
        await conn.execute(
            "INSERT INTO mailboxes(account_id, name, uidvalidity) "
            "SELECT id, 'INBOX', 7 FROM accounts"
        )
    finally:
        await conn.close()
    with pytest.raises(StorageError, match="letterbird migrate"):
        await PgStorage(url, migrate=False).open()
    s = await nodes()
    assert s.migrated == (start, SCHEMA_VERSION)
    bob = await s.find_account("bob", "example.test")
    assert bob is not None and bob.local == "Bob"
    inbox = await s.get_mailbox(bob.id, "INBOX")
    assert inbox is not None and inbox.uidvalidity == 7
    await s.deliver(
        blob_of(sample_message()),
        [AppendTarget(bob.id)],
        OutgoingMessage("bob@example.test", (QueueRecipient("x@remote.test"),)),
        "Q1",
    )
    assert [e.domain for e in await s.queue_entries()] == ["remote.test"]
    await s.auth_failure_add(["u:bob"], 60)
    assert (await s.auth_failure_status(["u:bob"], 60))["u:bob"][0] == 1
    await s.revoke_session("n1", time.time() + 60)
    assert await s.session_revoked("n1")
    assert await s.init_meta("web_session_secret", "x") == "x"
    assert await s.integrity_check() == []


async def test_newer_schema_is_refused(url: str, nodes: Nodes) -> None:
    await nodes()
    conn = await _raw(url)
    try:
        await conn.execute("UPDATE schema_version SET version = $1", SCHEMA_VERSION + 1)
    finally:
        await conn.close()
    with pytest.raises(StorageError, match="newer than this Letterbird"):
        await PgStorage(url).open()
    with pytest.raises(StorageError, match="letterbird migrate"):
        await PgStorage(url, migrate=False).open()


def test_migrations_are_numbered_statements() -> None:
    assert SCHEMA_VERSION == len(MIGRATIONS) >= 4


# -- several nodes on one database ----------------------------------------------------------
async def test_uids_become_visible_in_order_across_nodes(nodes: Nodes) -> None:
    """Two nodes append concurrently to one mailbox while a third keeps reading: every read
    sees UIDs 1..n with no gap (UID 11 is never visible before UID 10) and modseqs increase."""
    a, b, reader = await nodes(), await nodes(), await nodes()
    bob = await _bob(a)
    inbox = await a.get_mailbox(bob, "INBOX")
    assert inbox is not None
    done = False
    snapshots = 0

    async def read() -> None:
        nonlocal snapshots
        while not done:
            msgs = await reader.list_messages(inbox.id)
            uids = [u for u, _, _ in msgs]
            assert uids == list(range(1, len(uids) + 1)), uids
            modseqs = [m for _, m, _ in msgs]
            assert modseqs == sorted(modseqs)
            snapshots += 1

    async def write(node: PgStorage, base: int) -> None:
        await asyncio.gather(
            *(
                node.append(blob_of(sample_message(base + i)), [AppendTarget(bob)])
                for i in range(60)
            )
        )

    reading = asyncio.create_task(read())
    await asyncio.gather(write(a, 0), write(b, 1000))
    done = True
    await reading
    assert snapshots > 1
    msgs = await reader.list_messages(inbox.id)
    assert [u for u, _, _ in msgs] == list(range(1, 121))
    assert len({m for _, m, _ in msgs}) == 120
    assert a.batches < 60 + 3  # group commit shared transactions


async def test_change_events_cross_nodes(nodes: Nodes) -> None:
    a, b = await nodes(), await nodes()
    bob = await _bob(a)
    with a.bus.subscribe(bob) as local, b.bus.subscribe(bob) as remote:
        [(mid, uid)] = await a.append(blob_of(sample_message()), [AppendTarget(bob)])
        ev = await asyncio.wait_for(remote.get(), 5)
        assert (ev.kind, ev.mailbox_id, ev.uids) == (ChangeKind.APPEND, mid, (uid,))
        mine = await asyncio.wait_for(local.get(), 5)
        assert mine == ev
        # the reader on node B sees the message already when the event arrives
        assert len(await b.fetch_messages(mid, [uid])) == 1
        # node A does not get its own event a second time through NOTIFY
        await asyncio.sleep(0.2)
        assert local.get_nowait() is None


async def test_large_expunge_is_split_under_the_notify_limit(nodes: Nodes) -> None:
    a, b = await nodes(), await nodes()
    bob = await _bob(a)
    inbox = await a.get_mailbox(bob, "INBOX")
    assert inbox is not None
    targets = [AppendTarget(bob, mailbox_id=inbox.id)] * 2000  # one blob, 2000 entries
    await a.append(blob_of(sample_message()), targets)
    with b.bus.subscribe(bob) as remote:
        gone = await a.delete_messages(inbox.id, list(range(1, 2001)))
        assert len(gone) == 2000
        seen: set[int] = set()
        parts = 0
        while len(seen) < 2000:
            ev = await asyncio.wait_for(remote.get(), 5)
            if ev.kind is ChangeKind.APPEND:  # the append's notifications may still arrive
                continue
            assert ev.kind is ChangeKind.EXPUNGE
            seen.update(ev.uids)
            parts += 1
        assert seen == set(range(1, 2001)) and parts > 1
    assert await a.integrity_check() == []


async def test_listener_reconnects_and_asks_for_resync(url: str, nodes: Nodes) -> None:
    a, b = await nodes(), await nodes()
    b._bus.reconnect_delay = 0.05
    bob = await _bob(a)
    with b.bus.subscribe(bob) as sub:
        pid = b._bus._conn.get_server_pid()
        conn = await _raw(url)
        try:
            assert await conn.fetchval("SELECT pg_terminate_backend($1)", pid)
        finally:
            await conn.close()
        # notifications sent meanwhile are lost; the subscriber is told to resync
        await _wait(lambda: b._bus.reconnects == 1)
        ev = await asyncio.wait_for(sub.get(), 5)
        assert ev.mailbox_id == RESYNC_MAILBOX and sub.overflowed
        sub.overflowed = False
        [(mid, uid)] = await a.append(blob_of(sample_message()), [AppendTarget(bob)])
        ev = await asyncio.wait_for(sub.get(), 5)
        assert (ev.mailbox_id, ev.uids) == (mid, (uid,))


async def test_writer_survives_killed_connections(url: str, nodes: Nodes) -> None:
    a = await nodes()
    await _bob(a)
    conn = await _raw(url)
    try:  # this node's writer and pooled connections (named after the node)
        killed = await conn.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE application_name IN ($1, $2)",
            f"letterbird:{a.node}:writer",
            f"letterbird:{a.node}:pool",
        )
    finally:
        await conn.close()
    assert killed >= 2
    await asyncio.sleep(0.2)
    # the connections died while idle: the next write and read run on fresh ones
    assert (await a.add_account("carol", "example.test", "h")).local == "carol"
    assert await a.find_account("carol", "example.test") is not None


async def test_reading_connections_are_bounded_and_recover(url: str, nodes: Nodes) -> None:
    s = await nodes(pool_size=2)
    await _bob(s)
    assert s._readers is not None

    async def slow() -> None:
        await s._fetch("SELECT pg_sleep(0.1)")

    await asyncio.gather(*(slow() for _ in range(6)))
    assert s._readers._count == 2  # six concurrent reads shared two connections
    # a read cancelled mid-query: its connection is dropped, not reused in an unknown state
    task = asyncio.ensure_future(s._fetch("SELECT pg_sleep(5)"))
    await asyncio.sleep(0.1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # a query the server refuses leaves the connection usable
    with pytest.raises(StorageError, match="database error"):
        await s._fetch("SELECT * FROM no_such_table")
    assert await s.find_account("bob", "example.test") is not None
    assert s._readers._count <= 2
    async with s.connection() as c:
        assert await c.fetchval("SELECT 1") == 1


async def test_cross_node_deadlock_is_retried(nodes: Nodes) -> None:
    a, b = await nodes(), await nodes()
    x = await _bob(a, "x")
    y = await _bob(a, "y")
    start = asyncio.Barrier(2)

    def job(first: int, second: int) -> Callable[[Any], Awaitable[tuple[None, list[Any]]]]:
        waited = False

        async def fn(c: Any) -> tuple[None, list[Any]]:
            nonlocal waited
            await c.execute("UPDATE accounts SET quota = quota + 1 WHERE id = $1", first)
            if not waited:
                waited = True
                await start.wait()
            await c.execute("UPDATE accounts SET quota = quota + 1 WHERE id = $1", second)
            return None, []

        return fn

    await asyncio.gather(a._write(job(x, y)), b._write(job(y, x)))
    # At least one deadlock victim was retried (under load a retry can meet the other
    # transaction once more); either way both jobs ran exactly once in the end.
    assert a.retries + b.retries >= 1, (a.retries, b.retries)
    assert (await a.quota_usage(x))[1] == 2 and (await a.quota_usage(y))[1] == 2


async def test_a_failing_job_reruns_its_batch_with_savepoints(nodes: Nodes) -> None:
    s = await nodes()
    bob = await _bob(s)
    alice = await _bob(s, "alice")
    await s.set_quota(bob, 1)

    async def slow(c: Any) -> tuple[None, list[Any]]:
        await c.execute("SELECT pg_sleep(0.2)")
        return None, []

    busy = asyncio.ensure_future(s._write(slow))  # the writer is busy: the rest queue up
    await asyncio.sleep(0.05)
    results = await asyncio.gather(
        *(s.append(blob_of(sample_message(i)), [AppendTarget(alice)]) for i in range(3)),
        s.append(blob_of(sample_message(9)), [AppendTarget(bob)]),
        *(s.append(blob_of(sample_message(i)), [AppendTarget(alice)]) for i in range(3, 6)),
        return_exceptions=True,
    )
    await busy
    assert isinstance(results[3], QuotaExceeded)
    assert sorted(r[0][1] for r in results if isinstance(r, list)) == [1, 2, 3, 4, 5, 6]
    assert s.reruns == 1
    assert (await s.quota_usage(bob))[0] == 0
    assert await s.integrity_check() == []


# -- POP3 maildrop locks -----------------------------------------------------------------------
async def test_maildrop_lock_across_nodes(url: str, nodes: Nodes) -> None:
    a, b = await nodes(), await nodes()
    bob = await _bob(a)
    lock = await a.maildrop_lock(bob)
    assert lock is not None
    assert await a.maildrop_lock(bob) is None  # same node
    assert await b.maildrop_lock(bob) is None  # other node
    async with lock:
        pass
    lock_b = await b.maildrop_lock(bob)
    assert lock_b is not None
    # node B dies (its connections close): the lock is free again
    await b.close()
    lock_a = await a.maildrop_lock(bob)
    assert lock_a is not None
    # A's lock connection dies: locks it held are re-taken on the next use
    pid = a._lock_conn.get_server_pid()
    conn = await _raw(url)
    try:
        await conn.fetchval("SELECT pg_terminate_backend($1)", pid)
    finally:
        await conn.close()
    carol = await _bob(a, "carol")
    await _wait(lambda: a._lock_conn.is_closed())
    assert await a.maildrop_lock(carol) is not None
    c = await nodes()
    assert await c.maildrop_lock(bob) is None
    await lock_a.__aexit__(None, None, None)
    assert await c.maildrop_lock(bob) is not None


# -- the queue across nodes -------------------------------------------------------------------
async def test_queue_leases_on_the_database_clock(nodes: Nodes) -> None:
    a, b = await nodes(), await nodes()
    out = OutgoingMessage("a@example.test", (QueueRecipient("x@r.test"),))
    await a.deliver(blob_of(sample_message()), [], out, "Q1")
    [e] = await a.queue_claim("node-a", lease=0.5, limit=10)
    db_now = await a.db_time()
    assert e.lease_until is not None and db_now < e.lease_until <= db_now + 0.5
    assert await b.queue_claim("node-b", lease=30, limit=10) == []
    await asyncio.sleep(0.6)  # node A "died": its lease ran out
    [e2] = await b.queue_claim("node-b", lease=30, limit=10)
    assert e2.id == e.id and e2.owner == "node-b"
    assert not await a.queue_update(e.id, "node-a", [], 0, "")
    assert await b.queue_renew([e.id], "node-b", 60) == 1
    assert await b.queue_update(e.id, "node-b", [], 0, "")
    assert await a.queue_entries() == []
    assert await a.integrity_check() == []


class _Gate:
    """A transport that holds its session until ``release`` is set, then answers 451 for
    every recipient (the entry is retried later)."""

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.release = asyncio.Event()
        self.sessions = 0

    async def session(
        self, hop: NextHop, feed: MessageFeed, report: Report, stopping: Callable[[], bool]
    ) -> SessionReport:
        self.sessions += 1
        messages = []
        while (m := await feed.next()) is not None:
            messages.append(m)
        self.started.set()
        await self.release.wait()
        for m in messages:
            later = Reply(451, "4.3.0", "later")
            await report(
                m,
                [
                    RecipientOutcome(r, DeliveryStatus.TEMPORARY, later, True, hop)
                    for r in list(m.pending)
                ],
            )
        return SessionReport(hop, None, len(messages), True)


@pytest.mark.parametrize(
    ("holder_skew", "other_skew"),
    [
        (0.0, 3600.0),  # a node whose clock is an hour ahead cannot steal a lease
        (3600.0, 0.0),  # nor does its own lease last an hour too long
        (-3600.0, 0.0),  # a lease set by a node an hour behind is not expired at once
    ],
)
async def test_queue_service_on_skewed_clocks(
    nodes: Nodes, tmp_path: Path, holder_skew: float, other_skew: float
) -> None:
    """Two queue services on two nodes whose clocks disagree with the database's: leases
    and due times are on the database clock, so neither node claims what it should not."""
    a, b = await nodes(), await nodes()
    delivery = DeliverySettings(
        routes={"r.test": "127.0.0.3:25"}, retry=[600.0], lease=30.0, connection_linger=0.0
    )
    config = dataclasses.replace(make_config(tmp_path), delivery=delivery)
    out = OutgoingMessage("a@example.test", (QueueRecipient("x@r.test"),))
    await a.deliver(blob_of(sample_message()), [], out, "Q1")
    gate, idle = _Gate(), _Gate()

    def skewed(skew: float) -> Callable[[], float]:
        return lambda: time.time() + skew

    holder = QueueService(
        config, a, Directory(a, config), clock=skewed(holder_skew), transport=gate, owner="A"
    )
    other = QueueService(
        config, b, Directory(b, config), clock=skewed(other_skew), transport=idle, owner="B"
    )
    before = await a.db_time()
    assert await holder.run_once() == 1
    await asyncio.wait_for(gate.started.wait(), 10)
    after = await a.db_time()
    [entry] = await b.queue_entries()
    assert entry.owner == "A" and entry.lease_until is not None
    assert before + 30 <= entry.lease_until <= after + 30  # the lease: on the database clock
    assert await other.run_once() == 0  # leased: not taken over
    gate.release.set()
    await holder.wait_idle()
    after = await a.db_time()
    [entry] = await b.queue_entries()
    assert (entry.owner, entry.attempts) == (None, 1)
    # retried 600 s after the attempt, on the database clock, whatever the holder's clock
    assert before + 600 <= entry.due <= after + 600
    assert await other.run_once() == 0  # not due yet: not claimed early by a fast clock
    assert await holder.run_once() == 0
    wait = await b.queue_next_wait()
    assert wait is not None and 590 < wait <= 600
    assert idle.sessions == 0 and gate.sessions == 1


async def test_concurrent_claims_never_share_an_entry(nodes: Nodes) -> None:
    a, b, c = await nodes(), await nodes(), await nodes()
    for i in range(40):
        out = OutgoingMessage("a@example.test", (QueueRecipient(f"x@r{i}.test"),))
        await a.deliver(blob_of(sample_message(i)), [], out, f"Q{i}")
    claimed = await asyncio.gather(
        *(node.queue_claim(f"n{k}", 60, 7) for k in range(4) for node in (a, b, c))
    )
    ids = [e.id for batch in claimed for e in batch]
    assert len(ids) == len(set(ids)) == 40


# -- blobs bigger than one chunk ----------------------------------------------------------------
async def test_multi_chunk_blobs(nodes: Nodes, tmp_path: Path) -> None:
    s = await nodes()
    bob = await _bob(s)
    big = sample_message(body="z" * (CHUNK * 2 + 1234))
    [(mid, uid)] = await s.append(blob_of(big), [AppendTarget(bob)])
    [rec] = await s.fetch_messages(mid, [uid])
    assert await s.read_blob(rec.blob_id) == big
    for start, end in ((0, 10), (CHUNK - 5, CHUNK + 5), (CHUNK * 2 - 1, None), (5, CHUNK * 3)):
        assert await s.read_blob(rec.blob_id, start, end) == big[start:end]
    spooled = sample_message(2, body="q" * (CHUNK * 20 + 7))  # more than one file batch
    path = tmp_path / "spool"
    path.write_bytes(spooled)
    b = blob_of(spooled)
    [(mid2, uid2)] = await s.append(
        BlobSource(b.sha256, b.size, b.structure, path=str(path)), [AppendTarget(bob)]
    )
    [rec2] = await s.fetch_messages(mid2, [uid2])
    assert rec2.blob_id == hashlib.sha256(spooled).hexdigest()
    assert (
        await s.read_blob(rec2.blob_id, CHUNK * 17 - 3, CHUNK * 17 + 3)
        == spooled[CHUNK * 17 - 3 : CHUNK * 17 + 3]
    )
    assert await s.read_blob(rec2.blob_id) == spooled
    short = tmp_path / "short"
    short.write_bytes(spooled[:100])
    bad = BlobSource("0" * 64, b.size, b.structure, path=str(short))
    with pytest.raises(StorageError, match="shorter"):
        await s.append(bad, [AppendTarget(bob)])
    with pytest.raises(StorageError, match="neither"):
        await s.append(BlobSource("1" * 64, CHUNK * 2, b"{}"), [AppendTarget(bob)])
    empty = blob_of(b"")
    [(mid3, uid3)] = await s.append(empty, [AppendTarget(bob)])
    [rec3] = await s.fetch_messages(mid3, [uid3])
    assert await s.read_blob(rec3.blob_id) == b""
    assert await s.integrity_check() == []


# -- login failures shared by nodes -------------------------------------------------------------
async def test_auth_failures_are_shared(nodes: Nodes) -> None:
    a, b = await nodes(), await nodes()
    await a.auth_failure_add(["u:bob", "ip:192.0.2.1"], 60)
    await b.auth_failure_add(["u:bob"], 60)
    status = await b.auth_failure_status(["u:bob", "ip:192.0.2.1", "ip:other"], 60)
    assert status["u:bob"][0] == 2 and status["ip:192.0.2.1"][0] == 1
    assert "ip:other" not in status and 0 <= status["u:bob"][1] < 5
    await a.auth_failure_clear("u:bob")
    assert "u:bob" not in await b.auth_failure_status(["u:bob"], 60)


# -- webmail sessions shared by nodes -----------------------------------------------------------
async def test_session_secret_and_logouts_are_shared(nodes: Nodes) -> None:
    """Nodes starting together offer different secrets: the first commit wins on all of
    them; a logout on one is seen by the other at once."""
    a, b, c = await nodes(), await nodes(), await nodes()
    got = await asyncio.gather(
        *(n.init_meta("web_session_secret", v) for n, v in ((a, "A"), (b, "B"), (c, "C")))
    )
    assert len(set(got)) == 1 and await b.get_meta("web_session_secret") == got[0]
    assert not await b.session_revoked("nonce")
    await a.revoke_session("nonce", time.time() + 60)
    assert await b.session_revoked("nonce") and await c.session_revoked("nonce")


async def test_closed_storage_refuses_work(nodes: Nodes) -> None:
    s = await nodes()
    await s.close()
    await s.close()  # idempotent
    with pytest.raises(StorageError, match="closed"):
        await s.add_domain("x.test")
    with pytest.raises(StorageError, match="closed"):
        await s.maildrop_lock(1)


# -- configuration --------------------------------------------------------------------------------
def test_configuration_of_postgres_and_proxies(tmp_path: Path) -> None:
    from letterbird.config import ConfigError, load_config
    from letterbird.storage import open_storage_for

    def load(text: str) -> Any:
        path = tmp_path / "lb.toml"
        path.write_text(text)
        return load_config(path)

    cfg = load(
        '[storage]\nurl = "postgresql://lb@db.test/mail?schema=tenant"\npool_size = 4\n'
        'auto_migrate = false\n[proxy]\ntrusted = ["10.0.0.0/8", "192.0.2.7"]\ntimeout = "3s"\n'
    )
    assert cfg.storage_url == "postgresql://lb@db.test/mail?schema=tenant"
    assert cfg.proxy.trusted == ["10.0.0.0/8", "192.0.2.7"] and cfg.proxy.timeout == 3.0
    s = open_storage_for(cfg)
    assert isinstance(s, PgStorage)
    assert (s.pool_size, s.auto_migrate, s.url.schema) == (4, False, "tenant")
    assert open_storage_for(cfg, migrate=True).auto_migrate  # type: ignore[attr-defined]
    for text, key in (
        ('[storage]\nurl = "mysql://x/y"\n', "storage.url"),
        ('[storage]\nurl = "postgresql://h/"\n', "storage.url"),
        ('[storage]\nurl = "postgresql://h/db?schema=a-b"\n', "storage.url"),
        ("[storage]\npool_size = 1\n", "storage.pool_size"),
        ('[proxy]\ntrusted = ["not-an-address"]\n', "proxy.trusted[0]"),
    ):
        with pytest.raises(ConfigError, match=key.replace("[", r"\[")):
            load(text)
