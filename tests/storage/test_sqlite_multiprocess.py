"""Several processes on one SQLite database (``[server] workers``, the CLI): real processes.

Each child is a fresh interpreter (``python -c``) holding its own :class:`SqliteStorage` on the
test's database; the test drives it with one JSON command a line on its standard input and reads
one JSON reply a line on its standard output. The test process holds a storage of its own too.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import sqlite3
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from letterbird.storage.sqlite import MIGRATIONS, SCHEMA_VERSION, SqliteStorage

CHILD = r"""
import asyncio, hashlib, json, sys

from letterbird.mime import parse_message
from letterbird.storage.interface import AppendTarget, BlobSource
from letterbird.storage.sqlite import SqliteStorage


def message(tag, i):
    data = f"From: a@b.test\r\nSubject: {tag} {i}\r\n\r\n{tag} {i}\r\n".encode()
    sha = hashlib.sha256(data).hexdigest()
    return BlobSource(sha, len(data), parse_message(data).to_json(), data=data)


class Child:
    def __init__(self, path):
        self.path = path
        self.storage = None
        self.held = {}

    async def open(self):
        self.storage = SqliteStorage(self.path)
        await self.storage.open()

    async def lock(self, account_id):
        cm = await self.storage.maildrop_lock(account_id)
        if cm is None:
            return False
        await cm.__aenter__()
        self.held[account_id] = cm
        return True

    async def unlock(self, account_id):
        await self.held.pop(account_id).__aexit__(None, None, None)

    async def auth_add(self, keys, window):
        await self.storage.auth_failure_add(keys, window)

    async def auth_status(self, keys, window):
        return await self.storage.auth_failure_status(keys, window)

    async def auth_clear(self, key):
        await self.storage.auth_failure_clear(key)

    async def append(self, account_id, mailbox_id, tag, i):
        target = AppendTarget(account_id, mailbox_id=mailbox_id)
        return (await self.storage.append(message(tag, i), [target]))[0][1]

    async def append_interleaved(self, account_id, mailbox_id, tag, n, width):
        # Append ``width`` at a time until we did ``n`` and our UIDs interleave with another
        # process's (neither lies wholly below the other's: proof that both wrote at once).
        # Once true that stays true, so every process appending this way stops.
        own = {}
        while len(own) < 50 * n:
            start = len(own)
            uids = await asyncio.gather(
                *(self.append(account_id, mailbox_id, tag, start + k) for k in range(width))
            )
            own.update({uid: f"{tag} {start + k}" for k, uid in enumerate(uids)})
            if len(own) >= n:
                listed = await self.storage.list_messages(mailbox_id)
                others = [uid for uid, _, _ in listed if uid not in own]
                if others and max(others) > min(own) and max(own) > min(others):
                    break
        return sorted(own.items())


async def main():
    child = Child(sys.argv[1])
    loop = asyncio.get_running_loop()
    print(json.dumps(["ok", "started"]), flush=True)
    while line := await loop.run_in_executor(None, sys.stdin.readline):
        cmd, *args = json.loads(line)
        try:
            reply = ["ok", await getattr(child, cmd)(*args)]
        except Exception as exc:
            reply = ["error", repr(exc)]
        print(json.dumps(reply), flush=True)
    if child.storage is not None:
        await child.storage.close()


asyncio.run(main())
"""

TIMEOUT = 60.0  # per reply: generous for a loaded machine


class Proc:
    """A child process with its own storage on the database, driven one command at a time."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process

    @classmethod
    async def start(cls, path: Path) -> Proc:
        root = str(Path(__file__).resolve().parents[2])
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]),
        }
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            CHILD,
            str(path),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            env=env,
        )
        proc = cls(process)
        assert await proc.result() == "started"
        return proc

    def send(self, cmd: str, *args: Any) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps([cmd, *args]).encode() + b"\n")

    async def result(self) -> Any:
        assert self.process.stdout is not None
        line = await asyncio.wait_for(self.process.stdout.readline(), TIMEOUT)
        if not line:
            raise AssertionError(f"the child exited ({await self.process.wait()})")
        status, value = json.loads(line)
        assert status == "ok", value
        return value

    async def call(self, cmd: str, *args: Any) -> Any:
        self.send(cmd, *args)
        return await self.result()

    async def kill(self) -> None:
        """SIGKILL: no clean-up of any kind in the child."""
        if self.process.returncode is None:
            self.process.kill()
        await asyncio.wait_for(self.process.wait(), TIMEOUT)


@pytest.fixture
async def children(tmp_path: Path) -> AsyncIterator[list[Proc]]:
    """Children started by a test (append to the list): killed at the end in any case."""
    started: list[Proc] = []
    yield started
    for proc in started:
        await proc.kill()


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[SqliteStorage]:
    """The test process's own storage, with the account bob (id 1)."""
    s = SqliteStorage(tmp_path / "mail.db")
    await s.open()
    await s.add_domain("example.test")
    await s.add_account("bob", "example.test", "hash")
    await s.add_account("carol", "example.test", "hash")
    try:
        yield s
    finally:
        await s.close()


async def _open_child(db: SqliteStorage, children: list[Proc]) -> Proc:
    proc = await Proc.start(Path(db.path))
    children.append(proc)
    await proc.call("open")
    return proc


async def test_concurrent_appends_from_two_processes(
    db: SqliteStorage, children: list[Proc]
) -> None:
    bob = await db.find_account("bob", "example.test")
    assert bob is not None
    inbox = await db.get_mailbox(bob.id, "INBOX")
    assert inbox is not None
    a, b = await _open_child(db, children), await _open_child(db, children)
    a.send("append_interleaved", bob.id, inbox.id, "A", 60, 6)
    b.send("append_interleaved", bob.id, inbox.id, "B", 60, 6)
    got_a, got_b = await a.result(), await b.result()
    claimed = {uid: subject for uid, subject in got_a + got_b}
    assert len(claimed) == len(got_a) + len(got_b) >= 120  # no UID given twice
    total = len(claimed)
    listed = await db.list_messages(inbox.id)
    assert [uid for uid, _, _ in listed] == list(range(1, total + 1))  # dense, nothing lost
    modseqs = [modseq for _, modseq, _ in listed]
    assert modseqs == sorted(set(modseqs))  # strictly increasing with the UID
    for rec in await db.fetch_messages(inbox.id):  # each UID holds the message it was given
        assert f"\r\n\r\n{claimed[rec.uid]}\r\n".encode() in await db.read_blob(rec.blob_id)
    status = await db.mailbox_status(inbox.id)
    assert (status.mailbox.uidnext, status.mailbox.highestmodseq) == (total + 1, modseqs[-1])
    assert await db.integrity_check() == []


async def test_writers_take_the_cross_process_lock(db: SqliteStorage, children: list[Proc]) -> None:
    bob = await db.find_account("bob", "example.test")
    assert bob is not None
    child = await _open_child(db, children)
    fd = os.open(db.path + "-writer.lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # as a writer of another process would
        child.send("append", bob.id, None, "C", 1)
        reply = asyncio.ensure_future(child.result())
        done, _ = await asyncio.wait({reply}, timeout=0.5)
        assert not done  # the child's write waits for the lock...
        fcntl.flock(fd, fcntl.LOCK_UN)
        assert await reply == 1  # ...and goes ahead once it is free
    finally:
        os.close(fd)


async def test_maildrop_lock_across_processes(db: SqliteStorage, children: list[Proc]) -> None:
    bob, carol = 1, 2
    child = await _open_child(db, children)
    assert await child.call("lock", bob)
    assert await db.maildrop_lock(bob) is None  # held by another process
    lock = await db.maildrop_lock(carol)  # another account: free
    assert lock is not None
    async with lock:
        assert not await child.call("lock", carol)
    assert await child.call("lock", carol)  # released when the session ended
    await child.call("unlock", carol)
    await child.call("unlock", bob)
    lock = await db.maildrop_lock(bob)
    assert lock is not None
    async with lock:
        assert not await child.call("lock", bob)
    assert await child.call("lock", bob)
    await child.kill()  # a process that dies (SIGKILL) leaves no lock behind
    lock = await db.maildrop_lock(bob)
    assert lock is not None
    async with lock:
        pass


async def test_maildrop_lock_of_two_storages_in_one_process(
    db: SqliteStorage, children: list[Proc]
) -> None:
    """POSIX record locks belong to the process: two storages of one process on one database
    must still keep their sessions apart, and closing one must not drop the other's locks."""
    child = await _open_child(db, children)
    second = SqliteStorage(db.path)
    await second.open()
    try:
        lock = await db.maildrop_lock(1)
        assert lock is not None
        async with lock:
            assert await second.maildrop_lock(1) is None
            await second.close()
            assert not await child.call("lock", 1)  # still held after the other closed
        assert await child.call("lock", 1)
    finally:
        await second.close()


async def test_auth_failures_are_shared_by_processes(
    db: SqliteStorage, children: list[Proc]
) -> None:
    child = await _open_child(db, children)
    await child.call("auth_add", ["u:bob", "ip:192.0.2.1"], 60)
    status = await db.auth_failure_status(["u:bob", "ip:192.0.2.1", "ip:other"], 60)
    assert {k: n for k, (n, _) in status.items()} == {"u:bob": 1, "ip:192.0.2.1": 1}
    await db.auth_failure_add(["u:bob"], 60)
    seen = await child.call("auth_status", ["u:bob"], 60)
    assert seen["u:bob"][0] == 2 and 0 <= seen["u:bob"][1] < TIMEOUT
    await child.call("auth_clear", "u:bob")
    assert set(await db.auth_failure_status(["u:bob", "ip:192.0.2.1"], 60)) == {"ip:192.0.2.1"}


async def test_processes_opening_an_old_database_migrate_it_once(
    tmp_path: Path, children: list[Proc]
) -> None:
    path = tmp_path / "old.db"
    c = sqlite3.connect(path, isolation_level=None)
    c.execute("PRAGMA journal_mode=WAL")
    for migration in MIGRATIONS[:1]:
        for stmt in migration.split(";"):
            if stmt.strip():
                c.execute(stmt)
    c.execute("PRAGMA user_version=1")
    c.close()
    procs = [await Proc.start(path) for _ in range(3)]
    children.extend(procs)
    for proc in procs:  # all at once
        proc.send("open")
    assert await asyncio.gather(*(proc.result() for proc in procs)) == [None] * 3
    c = sqlite3.connect(path)
    assert c.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    c.close()
