"""The storage contract: every backend must pass these (DESIGN.md §3)."""

from __future__ import annotations

import asyncio
import hashlib
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pgutil
import pytest
from conftest import blob_of, sample_message

from letterbird.storage.events import ChangeKind
from letterbird.storage.interface import (
    Account,
    AccountExists,
    AppendTarget,
    BlobSource,
    FlagMode,
    MailboxExists,
    NotFound,
    Notification,
    OutgoingMessage,
    QueueEntry,
    QueueRecipient,
    QuotaExceeded,
    StorageError,
)
from letterbird.storage.postgres import PgStorage
from letterbird.storage.sqlite import SCHEMA_VERSION as SQLITE_SCHEMA_VERSION
from letterbird.storage.sqlite import SqliteStorage


def _says(text: str) -> str:
    """A ``pytest.raises`` pattern for exactly ``text``."""
    return f"^{re.escape(text)}$"


@pytest.fixture(params=["sqlite", "postgresql"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[SqliteStorage]:
    if request.param == "postgresql":
        url = pgutil.clean_url()
        s: Any = PgStorage(url)
    else:
        s = SqliteStorage(tmp_path / "contract.db")
    await s.open()
    try:
        yield s
    finally:
        problems = await s.integrity_check()
        await s.close()
        if request.param == "postgresql":
            await pgutil.recycle_async(url)
        assert problems == []


async def _blob_count(store: Any) -> int:
    """Distinct message contents stored (backend-specific bookkeeping)."""
    if isinstance(store, SqliteStorage):
        (n,) = await store._read(lambda c: c.execute("SELECT count(*) FROM blobs").fetchone())
        return int(n)
    return int((await store.counts())["blobs"])


async def _account(
    store: SqliteStorage, local: str = "bob", domain: str = "example.test"
) -> Account:
    if await store.get_domain(domain) is None:
        await store.add_domain(domain)
    return await store.add_account(local, domain, "hash")


async def test_domains_accounts_aliases(store: SqliteStorage) -> None:
    await store.add_domain("example.test")
    with pytest.raises(AccountExists):
        await store.add_domain("example.test")
    bob = await store.add_account("Bob", "example.test", "h1")
    assert bob.address == "Bob@example.test"
    with pytest.raises(AccountExists):
        await store.add_account("bob", "example.test", "h2")  # case-insensitive local part
    found = await store.find_account("BOB", "example.test")
    assert found is not None and found.id == bob.id and found.local == "Bob"
    with pytest.raises(NotFound):
        await store.add_account("x", "nowhere.test", "h")
    await store.set_password(bob.id, "h3")
    assert (await store.get_account(bob.id)).password_hash == "h3"  # type: ignore[union-attr]
    a = await store.add_alias("info", "example.test", ["Bob@example.test", "x@remote.test"])
    assert a.targets == ("Bob@example.test", "x@remote.test")
    await store.add_alias(None, "example.test", ["bob@example.test"])
    assert (await store.find_alias(None, "example.test")) is not None
    assert (await store.find_alias("INFO", "example.test")) is not None
    assert [x.address for x in await store.list_aliases()] == ["@example.test", "info@example.test"]
    with pytest.raises(StorageError):
        await store.remove_domain("example.test")  # still has an account
    await store.remove_alias("info", "example.test")
    with pytest.raises(NotFound):
        await store.remove_alias("info", "example.test")
    await store.remove_account(bob.id)
    await store.remove_domain("example.test")
    assert await store.list_domains() == []


async def test_default_mailboxes_with_roles(store: SqliteStorage) -> None:
    bob = await _account(store)
    boxes = await store.list_mailboxes(bob.id)
    assert boxes[0].name == "INBOX"
    roles = {b.name: b.role for b in boxes}
    assert roles == {
        "INBOX": None,
        "Archive": "\\Archive",
        "Drafts": "\\Drafts",
        "Junk": "\\Junk",
        "Sent": "\\Sent",
        "Trash": "\\Trash",
    }
    assert len({b.uidvalidity for b in boxes}) == len(boxes)


async def test_append_once_for_many_recipients(store: SqliteStorage) -> None:
    users = [await _account(store, n) for n in ("a", "b", "c")]
    msg = sample_message()
    res = await store.append(blob_of(msg), [AppendTarget(u.id) for u in users])
    assert [uid for _, uid in res] == [1, 1, 1]
    count = await _blob_count(store)
    assert count == 1
    for u, (mid, uid) in zip(users, res, strict=True):
        recs = await store.fetch_messages(mid, [uid])
        assert recs[0].size == len(msg)
        assert await store.read_blob(recs[0].blob_id) == msg
        assert (await store.quota_usage(u.id))[0] == len(msg)


async def test_uids_and_modseqs_increase(store: SqliteStorage) -> None:
    bob = await _account(store)
    seen = []
    for i in range(5):
        [(mid, uid)] = await store.append(blob_of(sample_message(i)), [AppendTarget(bob.id)])
        seen.append(uid)
    assert seen == [1, 2, 3, 4, 5]
    recs = await store.fetch_messages(mid)
    modseqs = [r.modseq for r in recs]
    assert modseqs == sorted(modseqs) and len(set(modseqs)) == 5
    mb = await store.get_mailbox_by_id(mid)
    assert mb is not None and mb.uidnext == 6 and mb.highestmodseq == modseqs[-1]
    # non-contiguous fetch is one query and returns exactly those
    assert [r.uid for r in await store.fetch_messages(mid, [5, 1, 3])] == [1, 3, 5]
    assert await store.fetch_messages(mid, []) == []


async def test_read_blob_ranges(store: SqliteStorage) -> None:
    bob = await _account(store)
    msg = sample_message(body="x" * 5000)
    [(mid, uid)] = await store.append(blob_of(msg), [AppendTarget(bob.id)])
    [rec] = await store.fetch_messages(mid, [uid])
    assert await store.read_blob(rec.blob_id, 10, 20) == msg[10:20]
    assert await store.read_blob(rec.blob_id, len(msg) - 3) == msg[-3:]
    assert await store.read_blob(rec.blob_id, 10, 10**9) == msg[10:]
    assert await store.read_blob(rec.blob_id, 10**9) == b""
    with pytest.raises(NotFound):
        await store.read_blob("0" * 64)


async def test_blob_from_spool_file(store: SqliteStorage, tmp_path: Path) -> None:
    bob = await _account(store)
    msg = sample_message(body="y" * 3_000_000)
    spool = tmp_path / "spool"
    spool.write_bytes(msg)
    b = blob_of(msg)
    src = BlobSource(b.sha256, b.size, b.structure, path=str(spool))
    [(mid, uid)] = await store.append(src, [AppendTarget(bob.id)])
    [rec] = await store.fetch_messages(mid, [uid])
    assert await store.read_blob(rec.blob_id) == msg
    assert rec.blob_id == hashlib.sha256(msg).hexdigest()


async def test_flags(store: SqliteStorage) -> None:
    bob = await _account(store)
    for i in range(3):
        [(mid, _)] = await store.append(
            blob_of(sample_message(i)), [AppendTarget(bob.id, flags=frozenset({"\\Seen"}))]
        )
    before = (await store.get_mailbox_by_id(mid)).highestmodseq  # type: ignore[union-attr]
    res = await store.store_flags(mid, [1, 2], FlagMode.ADD, ["\\Flagged", "$Work"])
    assert [r.uid for r in res] == [1, 2]
    assert res[0].flags == {"\\Seen", "\\Flagged", "$Work"}
    assert res[0].modseq == before + 1
    # no change → no modseq bump, nothing returned
    assert await store.store_flags(mid, [1], FlagMode.ADD, ["\\Seen"]) == []
    res = await store.store_flags(mid, [1, 2, 3], FlagMode.REMOVE, ["\\Seen"])
    assert [r.uid for r in res] == [1, 2, 3]
    res = await store.store_flags(mid, [3], FlagMode.REPLACE, ["\\Answered"])
    assert res[0].flags == {"\\Answered"}
    # UNCHANGEDSINCE: message 3 changed after `before`, so it is skipped
    assert await store.store_flags(mid, [3], FlagMode.ADD, ["x"], unchanged_since=before) == []
    st = await store.mailbox_status(mid)
    assert (st.messages, st.unseen, st.first_unseen_uid) == (3, 3, 1)


async def test_copy_move_expunge_changes(store: SqliteStorage) -> None:
    bob = await _account(store)
    inbox = await store.get_mailbox(bob.id, "inbox")
    archive = await store.get_mailbox(bob.id, "Archive")
    assert inbox is not None and archive is not None
    for i in range(4):
        await store.append(blob_of(sample_message(i)), [AppendTarget(bob.id)])
    size = (await store.quota_usage(bob.id))[0]
    mapping = await store.copy_messages(inbox.id, [1, 3], archive.id)
    assert mapping == [(1, 1), (3, 2)]
    assert (await store.quota_usage(bob.id))[0] > size
    modseq = (await store.get_mailbox_by_id(inbox.id)).highestmodseq  # type: ignore[union-attr]
    moved = await store.move_messages(inbox.id, [2], archive.id)
    assert moved == [(2, 3)]
    ch = await store.changes_since(inbox.id, modseq)
    assert ch.expunged == [2] and ch.changed == []
    await store.store_flags(inbox.id, [1, 4], FlagMode.ADD, ["\\Deleted"])
    assert await store.expunge(inbox.id, [4]) == [4]  # UID EXPUNGE: only those named
    assert await store.expunge(inbox.id) == [1]
    assert [u for u, _, _ in await store.list_messages(inbox.id)] == [3]
    ch = await store.changes_since(inbox.id, modseq)
    assert ch.expunged == [1, 2, 4]
    assert [u for u, _, _ in await store.list_messages(archive.id)] == [1, 2, 3]
    assert await store.delete_messages(archive.id, [1, 2, 3]) == [1, 2, 3]


async def test_mailbox_lifecycle(store: SqliteStorage) -> None:
    bob = await _account(store)
    await store.create_mailbox(bob.id, "Work")
    await store.create_mailbox(bob.id, "Work/2026")
    with pytest.raises(MailboxExists):
        await store.create_mailbox(bob.id, "Work")
    old = await store.get_mailbox(bob.id, "Work")
    await store.append(blob_of(sample_message()), [AppendTarget(bob.id, "Work/2026")])
    await store.rename_mailbox(bob.id, "Work", "Jobs")
    names = [b.name for b in await store.list_mailboxes(bob.id)]
    assert "Jobs" in names and "Jobs/2026" in names and "Work" not in names
    renamed = await store.get_mailbox(bob.id, "Jobs")
    assert renamed is not None and old is not None and renamed.uidvalidity == old.uidvalidity
    with pytest.raises(NotFound):
        await store.rename_mailbox(bob.id, "Nope", "X")
    await store.delete_mailbox(bob.id, "Jobs/2026")
    assert (await store.quota_usage(bob.id))[0] == 0
    await store.delete_mailbox(bob.id, "Jobs")
    again = await store.create_mailbox(bob.id, "Jobs")
    assert again.uidvalidity != renamed.uidvalidity  # a new mailbox of an old name
    with pytest.raises(StorageError):
        await store.delete_mailbox(bob.id, "INBOX")
    await store.set_subscribed(bob.id, "Jobs", False)
    assert not (await store.get_mailbox(bob.id, "Jobs")).subscribed  # type: ignore[union-attr]
    with pytest.raises(ValueError):
        await store.create_mailbox(bob.id, "bad//name")


async def test_rename_inbox_moves_messages(store: SqliteStorage) -> None:
    bob = await _account(store)
    await store.append(blob_of(sample_message()), [AppendTarget(bob.id)])
    await store.rename_mailbox(bob.id, "INBOX", "Old")
    inbox = await store.get_mailbox(bob.id, "INBOX")
    old = await store.get_mailbox(bob.id, "Old")
    assert inbox is not None and old is not None
    assert await store.list_messages(inbox.id) == []
    assert len(await store.list_messages(old.id)) == 1


async def test_rename_refused_when_an_inferior_name_is_taken(store: SqliteStorage) -> None:
    """``A`` → ``B`` while ``A/x`` and ``B/x`` exist: ``A/x`` cannot become ``B/x``. Every
    backend refuses it with the same error, and renames nothing (not even ``A``)."""
    bob = await _account(store)
    for name in ("A", "A/x", "A/y", "B/x"):
        await store.create_mailbox(bob.id, name)
    before = {mb.id: mb.name for mb in await store.list_mailboxes(bob.id)}
    with pytest.raises(MailboxExists, match=_says("a mailbox under B exists already")):
        await store.rename_mailbox(bob.id, "A", "B")
    assert {mb.id: mb.name for mb in await store.list_mailboxes(bob.id)} == before
    await store.rename_mailbox(bob.id, "A", "C")  # the mailbox is still usable
    names = {mb.name for mb in await store.list_mailboxes(bob.id)}
    assert {"C", "C/x", "C/y", "B/x"} <= names and not names & {"A", "A/x", "B"}


async def test_refusals_are_worded_alike(store: SqliteStorage) -> None:
    """Every backend refuses the same things with the same error and the same words (the
    wording lives once, in ``storage.semantics``; the CLI and web show it)."""
    bob = await _account(store)
    inbox = await store.get_mailbox(bob.id, "INBOX")
    assert inbox is not None
    gone = inbox.id + 10_000  # no such mailbox
    with pytest.raises(AccountExists, match=_says("domain example.test exists already")):
        await store.add_domain("example.test")
    with pytest.raises(NotFound, match=_says("no domain nowhere.test")):
        await store.remove_domain("nowhere.test")
    still = "domain example.test still has 1 account(s); remove them first"
    with pytest.raises(StorageError, match=_says(still)):
        await store.remove_domain("example.test")
    with pytest.raises(NotFound, match=_says("no domain nowhere.test; add it first")):
        await store.add_alias("x", "nowhere.test", ["bob@example.test"])
    with pytest.raises(AccountExists, match=_says("account BOB@example.test exists already")):
        await store.add_account("BOB", "example.test", "h")
    await store.add_alias(None, "example.test", ["bob@example.test"])
    with pytest.raises(AccountExists, match=_says("alias @example.test exists already")):
        await store.add_alias(None, "example.test", ["bob@example.test"])
    with pytest.raises(NotFound, match=_says("no such alias")):
        await store.remove_alias("nobody", "example.test")
    for change in (
        store.set_password(bob.id + 1000, "h"),
        store.set_quota(bob.id + 1000, 1),
        store.remove_account(bob.id + 1000),
        store.quota_usage(bob.id + 1000),
    ):
        with pytest.raises(NotFound, match=_says("no such account")):
            await change
    with pytest.raises(MailboxExists, match=_says("mailbox Sent exists already")):
        await store.create_mailbox(bob.id, "Sent")
    with pytest.raises(MailboxExists, match=_says("mailbox Trash exists already")):
        await store.rename_mailbox(bob.id, "Sent", "Trash")
    with pytest.raises(NotFound, match=_says("no mailbox Nope")):
        await store.rename_mailbox(bob.id, "Nope", "Other")
    with pytest.raises(NotFound, match=_says("no mailbox Nope")):
        await store.delete_mailbox(bob.id, "Nope")
    with pytest.raises(NotFound, match=_says("no mailbox Nope")):
        await store.set_subscribed(bob.id, "Nope", False)
    with pytest.raises(StorageError, match=_says("INBOX cannot be deleted")):
        await store.delete_mailbox(bob.id, "inbox")
    for read in (
        store.mailbox_status(gone),
        store.changes_since(gone, 0),
        store.changes_since_bounded(gone, 0, 10),
        store.store_flags(gone, [1], FlagMode.ADD, ["x"]),
        store.copy_messages(inbox.id, [1], gone),
        store.expunge(gone),
        store.append(blob_of(sample_message()), [AppendTarget(bob.id, mailbox_id=gone)]),
    ):
        with pytest.raises(NotFound, match=_says("no such mailbox")):
            await read
    with pytest.raises(NotFound, match=_says("no queued message Q1")):
        await store.queue_remove("Q1")
    remote = OutgoingMessage("bob@example.test", (QueueRecipient("x@remote.test"),))
    with pytest.raises(ValueError, match=_says("a queued message needs a queue id")):
        await store.deliver(blob_of(sample_message()), [], remote)
    assert await store.deliver(blob_of(sample_message()), []) == []  # nothing to store
    assert await _blob_count(store) == 0


async def test_changes_since_bounded(store: SqliteStorage) -> None:
    bob = await _account(store)
    inbox = await store.get_mailbox(bob.id, "INBOX")
    assert inbox is not None
    start = inbox.highestmodseq
    nothing = await store.changes_since_bounded(inbox.id, start, 2)
    assert nothing is not None and (nothing.changed, nothing.expunged) == ([], [])
    assert nothing.highestmodseq == start
    for i in range(3):
        await store.append(blob_of(sample_message(i)), [AppendTarget(bob.id)])
    await store.delete_messages(inbox.id, [3])
    full = await store.changes_since(inbox.id, start)
    assert [u for u, _, _ in full.changed] == [1, 2] and full.expunged == [3]
    assert await store.changes_since_bounded(inbox.id, start, 2) == full
    assert await store.changes_since_bounded(inbox.id, start, 1) is None  # two changed
    await store.delete_messages(inbox.id, [1, 2])
    assert await store.changes_since_bounded(inbox.id, full.highestmodseq, 1) is None
    later = await store.changes_since_bounded(inbox.id, full.highestmodseq, 2)
    assert later is not None and later.changed == [] and later.expunged == [1, 2]


async def test_quota(store: SqliteStorage) -> None:
    bob = await _account(store)
    msg = sample_message()
    await store.set_quota(bob.id, len(msg) * 2)
    await store.append(blob_of(sample_message(1)), [AppendTarget(bob.id)])
    await store.append(blob_of(sample_message(2)), [AppendTarget(bob.id)])
    with pytest.raises(QuotaExceeded):
        await store.append(blob_of(sample_message(3)), [AppendTarget(bob.id)])
    inbox = await store.get_mailbox(bob.id, "INBOX")
    assert inbox is not None and len(await store.list_messages(inbox.id)) == 2
    count = await _blob_count(store)
    assert count == 2  # the refused message left nothing behind


async def test_group_commit_and_order(store: SqliteStorage) -> None:
    bob = await _account(store)
    batches = store.batches
    results = await asyncio.gather(
        *(store.append(blob_of(sample_message(i)), [AppendTarget(bob.id)]) for i in range(200))
    )
    uids = sorted(uid for [(_, uid)] in results)
    assert uids == list(range(1, 201))
    assert store.batches - batches < 200  # concurrent appends shared commits


async def test_failed_job_does_not_spoil_its_batch(store: SqliteStorage) -> None:
    bob = await _account(store)
    await store.set_quota(bob.id, 1)  # everything for bob fails
    alice = await _account(store, "alice")
    res = await asyncio.gather(
        store.append(blob_of(sample_message(1)), [AppendTarget(bob.id)]),
        store.append(blob_of(sample_message(2)), [AppendTarget(alice.id)]),
        return_exceptions=True,
    )
    assert isinstance(res[0], QuotaExceeded)
    assert res[1] == [(res[1][0][0], 1)]  # type: ignore[index]


async def test_change_events_after_commit(store: SqliteStorage) -> None:
    bob = await _account(store)
    with store.bus.subscribe(bob.id) as sub:
        [(mid, uid)] = await store.append(blob_of(sample_message()), [AppendTarget(bob.id)])
        ev = await asyncio.wait_for(sub.get(), 2)
        assert (ev.kind, ev.mailbox_id, ev.uids) == (ChangeKind.APPEND, mid, (uid,))
        # the event is published after commit: a reader sees the message already
        assert len(await store.fetch_messages(mid, [uid])) == 1
        await store.store_flags(mid, [uid], FlagMode.ADD, ["\\Seen"])
        ev = await asyncio.wait_for(sub.get(), 2)
        assert ev.kind is ChangeKind.FLAGS
        await store.delete_messages(mid, [uid])
        ev = await asyncio.wait_for(sub.get(), 2)
        assert ev.kind is ChangeKind.EXPUNGE and ev.uids == (uid,)


async def test_survives_reopen(tmp_path: Path) -> None:
    s = SqliteStorage(tmp_path / "r.db")
    await s.open()
    bob = await _account(s)
    msg = sample_message()
    [(mid, uid)] = await s.append(blob_of(msg), [AppendTarget(bob.id)])
    await s.close()
    s2 = SqliteStorage(tmp_path / "r.db")
    await s2.open()
    [rec] = await s2.fetch_messages(mid, [uid])
    assert await s2.read_blob(rec.blob_id) == msg
    mode = await s2._read(lambda c: c.execute("PRAGMA journal_mode").fetchone()[0])
    assert mode == "wal"
    await s2.close()
    with pytest.raises(StorageError):
        await s2.list_domains()


async def test_queue_committed_with_local_delivery(store: SqliteStorage) -> None:
    from letterbird.storage.interface import OutgoingMessage, QueueRecipient

    bob = await _account(store)
    out = OutgoingMessage(
        "bob@example.test",
        (
            QueueRecipient("x@remote.test", ("SUCCESS",), "rfc822;x@remote.test"),
            QueueRecipient("y@REMOTE.test"),
            QueueRecipient("z@other.test"),
        ),
        envid="E1",
        ret="HDRS",
    )
    res = await store.deliver(blob_of(sample_message()), [AppendTarget(bob.id)], out, "Q1")
    assert len(res) == 1
    entries = await store.queue_entries()
    assert [(e.queue_id, e.domain, len(e.recipients)) for e in entries] == [
        ("Q1", "remote.test", 2),
        ("Q1", "other.test", 1),
    ]
    assert entries[0].recipients[0] == QueueRecipient(
        "x@remote.test", ("SUCCESS",), "rfc822;x@remote.test"
    )
    assert (entries[0].sender, entries[0].envid, entries[0].ret) == (
        "bob@example.test",
        "E1",
        "HDRS",
    )
    assert await store.read_blob(entries[0].blob_id) == sample_message()
    # remote-only: no mailbox entry, the blob is still kept for the queue
    await store.deliver(
        blob_of(sample_message(2)), [], OutgoingMessage("", (QueueRecipient("a@b.test"),)), "Q2"
    )
    assert {e.queue_id for e in await store.queue_entries()} == {"Q1", "Q2"}
    with pytest.raises(ValueError):
        await store.deliver(blob_of(sample_message(3)), [], out)  # no queue id


async def _db_now(store: Any) -> float:
    """The database clock (SQLite's is this machine's)."""
    if isinstance(store, PgStorage):
        return await store.db_time()
    return time.time()


async def test_queue_leases_and_updates(store: SqliteStorage) -> None:
    out = OutgoingMessage(
        "a@example.test", (QueueRecipient("x@r.test"), QueueRecipient("y@r.test"))
    )
    await store.deliver(blob_of(sample_message()), [], out, "Q1")
    before = await _db_now(store)
    # the lease is set on the database clock, whatever ``now`` the caller passes
    [e] = await store.queue_claim("node-a", lease=60, limit=10, now=before + 3600)
    after = await _db_now(store)
    assert e.owner == "node-a" and e.lease_until is not None
    assert before + 60 <= e.lease_until <= after + 60
    assert (await store.queue_entries("Q1"))[0].lease_until == e.lease_until
    # leased: another node gets nothing until the lease expires, whatever its clock says
    assert await store.queue_claim("node-b", lease=60, limit=10) == []
    assert await store.queue_claim("node-b", lease=60, limit=10, now=before + 10**6) == []
    # node-a's lease expired (as if it had died a while ago): node-b takes over, node-a's
    # late update is refused
    assert await store.queue_renew([e.id], "node-a", -1.0) == 1
    [e2] = await store.queue_claim("node-b", lease=60, limit=10)
    assert e2.id == e.id and e2.owner == "node-b"
    assert not await store.queue_update(e.id, "node-a", [], 0, "")
    # node-b: one recipient delivered, one to retry 300 s later; its clock reads 1000.0:
    # the delay is kept, from the database clock
    before = await _db_now(store)
    assert await store.queue_update(
        e.id, "node-b", [QueueRecipient("y@r.test")], 1300.0, "451 4.3.0 later", relative_to=1000.0
    )
    after = await _db_now(store)
    [left] = await store.queue_entries("Q1")
    assert (left.attempts, left.last_error, left.owner) == (1, "451 4.3.0 later", None)
    assert [r.address for r in left.recipients] == ["y@r.test"]
    assert before + 300 <= left.due <= after + 300
    # not due on the database clock; ``now`` overrides the due comparison (tests, tools)
    assert await store.queue_claim("node-b", lease=60, limit=10) == []
    wait = await store.queue_next_wait()
    assert wait is not None and 290 < wait <= 300
    assert await store.queue_flush() == 1
    assert await store.queue_next_wait() == 0
    [again] = await store.queue_claim("node-b", lease=60, limit=10)
    wait = await store.queue_next_wait()  # leased: claimable when the lease runs out
    assert wait is not None and 50 < wait <= 60
    assert await store.queue_renew([again.id], "node-b", 120) == 1
    assert await store.queue_renew([again.id], "node-a", 120) == 0
    # without ``relative_to`` the due time is stored as given
    assert await store.queue_update(again.id, "node-b", again.recipients, 2e9, "x")
    assert (await store.queue_entries("Q1"))[0].due == 2e9
    [again] = await store.queue_claim("node-b", lease=60, limit=10, now=2e9)
    # done: the entry, the queued message and the blob go away
    assert await store.queue_update(again.id, "node-b", [], 0, "")
    assert await store.queue_entries() == []
    count = await _blob_count(store)
    assert count == 0
    assert await store.queue_next_wait() is None


async def test_queue_remove(store: SqliteStorage) -> None:
    out = OutgoingMessage(
        "a@example.test", (QueueRecipient("x@r.test"), QueueRecipient("y@s.test"))
    )
    await store.deliver(blob_of(sample_message()), [], out, "Q9")
    removed = await store.queue_remove("Q9")
    assert sorted(e.domain for e in removed) == ["r.test", "s.test"]
    assert await store.queue_entries() == []
    with pytest.raises(NotFound):
        await store.queue_remove("Q9")


# -- a queue change and the notification it calls for: one transaction ----------------------
DSN = b"Return-Path: <>\r\nFrom: MAILER-DAEMON@example.test\r\nSubject: failed\r\n\r\nx\r\n"


def _dsn(*accounts: int, remote: str | None = None, queue_id: str = "QDSN") -> Notification:
    outgoing = OutgoingMessage("", (QueueRecipient(remote),)) if remote else None
    return Notification(
        blob_of(DSN),
        tuple(AppendTarget(a) for a in accounts),
        outgoing,
        queue_id if remote else None,
    )


async def _claimed(store: Any, queue_id: str = "Q1") -> tuple[Account, QueueEntry]:
    bob = await _account(store)
    out = OutgoingMessage(
        "bob@example.test", (QueueRecipient("x@r.test"), QueueRecipient("y@r.test"))
    )
    await store.deliver(blob_of(sample_message()), [], out, queue_id)
    [entry] = await store.queue_claim("node-a", lease=60, limit=10)
    return bob, entry


async def _inbox(store: Any, account: Account) -> list[bytes]:
    mailbox = await store.get_mailbox(account.id, "INBOX")
    if mailbox is None:
        return []
    return [await store.read_blob(r.blob_id) for r in await store.fetch_messages(mailbox.id)]


async def test_queue_update_stores_its_notification(store: SqliteStorage) -> None:
    bob, entry = await _claimed(store)
    with store.bus.subscribe(bob.id) as sub:
        assert await store.queue_update(
            entry.id,
            "node-a",
            [QueueRecipient("y@r.test")],
            0.0,
            "451 later",
            notification=_dsn(bob.id, remote="far@away.test"),
        )
        ev = await asyncio.wait_for(sub.get(), 2)  # IMAP IDLE sees the report
        assert ev.kind is ChangeKind.APPEND and ev.uids == (1,)
    assert await _inbox(store, bob) == [DSN]
    queued = {e.queue_id: e for e in await store.queue_entries()}
    assert [r.address for r in queued["Q1"].recipients] == ["y@r.test"]
    assert queued["Q1"].attempts == 1 and queued["Q1"].owner is None
    assert queued["QDSN"].sender == "" and queued["QDSN"].recipients == (
        QueueRecipient("far@away.test"),
    )
    # the last attempt: the entry and its message go, the report stays
    claimed = {e.queue_id: e for e in await store.queue_claim("node-a", lease=60, limit=10)}
    assert await store.queue_update(
        claimed["Q1"].id, "node-a", [], 0.0, "", notification=_dsn(bob.id)
    )
    assert await _inbox(store, bob) == [DSN, DSN]
    assert [e.queue_id for e in await store.queue_entries()] == ["QDSN"]
    # a queued notification needs a queue id
    with pytest.raises(ValueError):
        await store.queue_update(
            claimed["QDSN"].id,
            "node-a",
            [],
            0.0,
            "",
            notification=_dsn(remote="a@b.test", queue_id=""),
        )
    assert await store.queue_update(claimed["QDSN"].id, "node-a", [], 0.0, "")
    assert await store.queue_entries() == []


async def test_queue_update_with_a_lost_lease_stores_nothing(store: SqliteStorage) -> None:
    bob, entry = await _claimed(store)
    await store.queue_renew([entry.id], "node-a", -1.0)  # expired: node-b takes it over
    [taken] = await store.queue_claim("node-b", lease=60, limit=10)
    for remaining in ([QueueRecipient("y@r.test")], []):
        note = _dsn(bob.id, remote="far@away.test")
        assert not await store.queue_update(
            entry.id, "node-a", remaining, 0.0, "x", notification=note
        )
    assert await _inbox(store, bob) == []
    [left] = await store.queue_entries()
    assert left == taken


def _fail_notifications(store: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make storing any notification fail inside the transaction (after the queue change)."""
    if isinstance(store, PgStorage):

        async def boom(*args: object) -> None:
            raise StorageError("disk full")

    else:

        def boom(*args: object) -> None:  # type: ignore[misc]
            raise StorageError("disk full")

    monkeypatch.setattr(store, "_notify_tx", boom)


@pytest.mark.parametrize("failure", ["no-account", "quota", "queue-id", "injected"])
@pytest.mark.parametrize("finished", [False, True])
async def test_queue_update_whose_notification_fails_changes_nothing(
    store: SqliteStorage, monkeypatch: pytest.MonkeyPatch, failure: str, finished: bool
) -> None:
    """The attempt's result is written first, then its report: a report that cannot be
    stored undoes the result too (the entry keeps its recipients, to be reported later)."""
    bob, entry = await _claimed(store)
    other = OutgoingMessage("", (QueueRecipient("a@b.test"),))
    await store.deliver(blob_of(sample_message(2)), [], other, "QX")
    blobs = await _blob_count(store)
    remaining = [] if finished else [QueueRecipient("y@r.test")]
    note = _dsn(bob.id)
    expected: type[StorageError] = StorageError
    if failure == "no-account":
        note = _dsn(bob.id, bob.id + 1000)
        expected = NotFound
    elif failure == "quota":
        await store.set_quota(bob.id, 10)
        expected = QuotaExceeded
    elif failure == "queue-id":
        note = _dsn(bob.id, remote="far@away.test", queue_id="QX")  # in use
    else:
        _fail_notifications(store, monkeypatch)
    with pytest.raises(expected):
        await store.queue_update(entry.id, "node-a", remaining, 0.0, "x", notification=note)
    # as claimed: same recipients, lease, due; the message and its blob still there
    assert await store.queue_entries("Q1") == [entry]
    assert [e.queue_id for e in await store.queue_entries()] == ["Q1", "QX"]
    assert await _inbox(store, bob) == []
    assert await _blob_count(store) == blobs
    assert (await store.get_account(bob.id)).used == 0  # type: ignore[union-attr]
    monkeypatch.undo()
    await store.set_quota(bob.id, 0)
    # the next try writes both
    assert await store.queue_update(
        entry.id, "node-a", remaining, 0.0, "x", notification=_dsn(bob.id)
    )
    assert await _inbox(store, bob) == [DSN]


async def test_queue_remove_stores_its_report(
    store: SqliteStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    bob, entry = await _claimed(store)
    seen: list[list[QueueEntry]] = []

    def report(removed: list[QueueEntry]) -> Notification | None:
        seen.append(removed)
        return _dsn(bob.id)

    _fail_notifications(store, monkeypatch)
    with pytest.raises(StorageError):
        await store.queue_remove("Q1", report)
    assert await store.queue_entries() == [entry] and await _inbox(store, bob) == []
    monkeypatch.undo()
    with pytest.raises(NotFound):  # the report's account is gone: nothing removed
        await store.queue_remove("Q1", lambda removed: _dsn(bob.id + 1000))
    assert await store.queue_entries() == [entry]
    with store.bus.subscribe(bob.id) as sub:
        removed = await store.queue_remove("Q1", report)
        assert (await asyncio.wait_for(sub.get(), 2)).kind is ChangeKind.APPEND
    assert removed == [entry] and seen[-1] == [entry]
    assert await store.queue_entries() == []
    assert await _inbox(store, bob) == [DSN]
    # no report: nothing stored
    await store.deliver(
        blob_of(sample_message(2)), [], OutgoingMessage("", (QueueRecipient("a@b.test"),)), "Q2"
    )
    assert len(await store.queue_remove("Q2", lambda removed: None)) == 1
    assert await _inbox(store, bob) == [DSN]


# -- installation settings and webmail sessions ------------------------------------------------
async def test_meta_is_initialised_once(store: SqliteStorage) -> None:
    assert await store.get_meta("web_session_secret") is None
    assert await store.init_meta("web_session_secret", "first") == "first"
    assert await store.init_meta("web_session_secret", "second") == "first"  # kept
    assert await store.get_meta("web_session_secret") == "first"
    # concurrent offers (on PostgreSQL possibly batched into one transaction): one wins
    got = await asyncio.gather(*(store.init_meta("k", f"v{i}") for i in range(5)))
    assert len(set(got)) == 1 and got[0] in {f"v{i}" for i in range(5)}
    assert await store.get_meta("k") == got[0]


async def test_session_revocations(store: SqliteStorage) -> None:
    assert not await store.session_revoked("n1")
    await store.revoke_session("n1", 2000.0, now=1000.0)
    await store.revoke_session("n2", 1500.0, now=1000.0)
    await store.revoke_session("n2", 1200.0, now=1000.0)  # again: the later expiry is kept
    assert await store.session_revoked("n1") and await store.session_revoked("n2")
    assert not await store.session_revoked("n3")
    await store.revoke_session("n3", 3000.0, now=1400.0)  # n2 not expired yet: kept
    assert await store.session_revoked("n2")
    await store.revoke_session("n4", 3000.0, now=1600.0)  # n2 expired: pruned
    assert not await store.session_revoked("n2")
    assert all([await store.session_revoked(n) for n in ("n1", "n3", "n4")])
    # by default "now" is the database clock: every expiry above is long past
    await store.revoke_session("n5", time.time() + 3600)
    assert not any([await store.session_revoked(n) for n in ("n1", "n3", "n4")])
    assert await store.session_revoked("n5")


@pytest.mark.parametrize("start", range(1, SQLITE_SCHEMA_VERSION))
async def test_sqlite_migrates_from_each_earlier_version(tmp_path: Path, start: int) -> None:
    import sqlite3

    from letterbird.storage.sqlite import MIGRATIONS

    path = tmp_path / "old.db"
    c = sqlite3.connect(path, isolation_level=None)
    for migration in MIGRATIONS[:start]:
        for stmt in migration.split(";"):
            if stmt.strip():
                c.execute(stmt)
    c.execute(f"PRAGMA user_version={start}")
    c.execute("INSERT INTO domains(name, created) VALUES('example.test', 0)")
    c.execute("INSERT INTO meta(key, value) VALUES('uidvalidity', '7')")
    c.close()
    s = SqliteStorage(path)
    await s.open()
    try:
        assert [d.name for d in await s.list_domains()] == ["example.test"]
        assert await s.get_meta("uidvalidity") == "7"
        assert await s.queue_entries() == []
        await s.revoke_session("n1", time.time() + 60)
        assert await s.session_revoked("n1")
        await s.auth_failure_add(["u:bob"], 60)
        assert (await s.auth_failure_status(["u:bob"], 60))["u:bob"][0] == 1
        v = await s._read(lambda c: c.execute("PRAGMA user_version").fetchone()[0])
        assert v == SQLITE_SCHEMA_VERSION
    finally:
        await s.close()


async def test_maildrop_lock(store: SqliteStorage) -> None:
    bob = await _account(store)
    lock = await store.maildrop_lock(bob.id)
    assert lock is not None
    async with lock:
        assert await store.maildrop_lock(bob.id) is None  # one POP3 session per maildrop
        other = await store.maildrop_lock(bob.id + 1)
        assert other is not None
        async with other:
            pass
    again = await store.maildrop_lock(bob.id)
    assert again is not None
    async with again:
        pass


# -- failed logins (login throttling shared by every process and node) -------------------------
async def test_auth_failures_counted_per_key(store: SqliteStorage) -> None:
    assert await store.auth_failure_status(["u:bob", "ip:192.0.2.1"], 60) == {}
    await store.auth_failure_add(["u:bob", "ip:192.0.2.1"], 60)
    await store.auth_failure_add(["u:bob", "ip:192.0.2.2"], 60)
    await asyncio.gather(*(store.auth_failure_add(["u:bob"], 60) for _ in range(3)))
    status = await store.auth_failure_status(["u:bob", "ip:192.0.2.1", "ip:192.0.2.2", "x"], 60)
    assert {k: n for k, (n, _) in status.items()} == {
        "u:bob": 5,
        "ip:192.0.2.1": 1,
        "ip:192.0.2.2": 1,
    }
    # seconds since the latest failure, on the database clock
    assert all(0 <= since < 30 for _, since in status.values())
    await store.auth_failure_add([], 60)  # nothing to record


async def test_auth_failures_outside_the_window(store: SqliteStorage) -> None:
    await store.auth_failure_add(["u:bob", "ip:192.0.2.1"], 60)
    await asyncio.sleep(0.1)  # (time has to pass: the database clock cannot be set)
    assert await store.auth_failure_status(["u:bob"], 0.05) == {}  # too old to count
    assert (await store.auth_failure_status(["u:bob"], 60))["u:bob"][0] == 1
    await store.auth_failure_add(["u:bob"], 0.05)  # forgets older failures, of every key
    status = await store.auth_failure_status(["u:bob", "ip:192.0.2.1"], 60)
    assert {k: n for k, (n, _) in status.items()} == {"u:bob": 1}


async def test_auth_failures_cleared(store: SqliteStorage) -> None:
    await store.auth_failure_add(["u:bob", "ip:192.0.2.1"], 60)
    await store.auth_failure_add(["u:bob"], 60)
    await store.auth_failure_clear("u:bob")
    assert set(await store.auth_failure_status(["u:bob", "ip:192.0.2.1"], 60)) == {"ip:192.0.2.1"}
    # nothing to clear (every successful login): no write at all
    batches = store.batches
    await store.auth_failure_clear("u:bob")
    await store.auth_failure_clear("u:nobody")
    assert store.batches == batches


def _prune_limit(store: Any) -> int:
    """Expired failures (of any key) the backend deletes per recorded failure."""
    from letterbird.storage import postgres, sqlite

    module: Any = sqlite if isinstance(store, SqliteStorage) else postgres
    return int(module.AUTH_FAILURE_PRUNE_LIMIT)


async def test_auth_failures_of_keys_that_never_fail_again_are_pruned(
    store: SqliteStorage,
) -> None:
    """Rotating client addresses must not grow the table forever: any failure recorded
    deletes expired failures of every key, a bounded number at a time."""
    rotating = [f"ip:2001:db8::{i:x}" for i in range(_prune_limit(store) + 100)]
    await store.auth_failure_add(rotating, 60)
    await store.auth_failure_add(["u:bob"], 60)  # all within this window: nothing pruned
    assert len(await store.auth_failure_status([*rotating, "u:bob"], 3600)) == len(rotating) + 1
    await asyncio.sleep(0.1)  # (time has to pass: the database clock cannot be set)
    await store.auth_failure_add(["ip:192.0.2.1"], 0.05)
    left = await store.auth_failure_status([*rotating, "u:bob"], 3600)
    assert len(left) == len(rotating) + 1 - _prune_limit(store)  # bounded
    await store.auth_failure_add(["ip:192.0.2.2"], 0.05)
    assert await store.auth_failure_status([*rotating, "u:bob"], 3600) == {}
    # the failure just recorded is kept
    assert (await store.auth_failure_status(["ip:192.0.2.2"], 3600))["ip:192.0.2.2"][0] == 1


async def test_auth_failures_searched_by_age(store: SqliteStorage) -> None:
    """The prune finds expired failures through an index on ``at`` (both schemas)."""
    if isinstance(store, SqliteStorage):
        rows = await store._read(
            lambda c: c.execute(
                "SELECT sql FROM sqlite_master WHERE type='index' AND tbl_name='auth_failures'"
            ).fetchall()
        )
    else:
        rows = await store._fetch(  # type: ignore[attr-defined]
            "SELECT indexdef FROM pg_indexes "
            "WHERE schemaname = current_schema() AND tablename = 'auth_failures'"
        )
    assert any(re.search(r"\(\s*at\s*\)", row[0]) for row in rows), rows
