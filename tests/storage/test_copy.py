"""``letterbird storage copy``: SQLite → PostgreSQL (and back) with every identity kept,
resumable, verified."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pgutil
import pytest
from click.testing import CliRunner
from conftest import blob_of, sample_message

from letterbird.storage.copy import TABLES, copy_storage, verify_copy
from letterbird.storage.interface import (
    AppendTarget,
    FlagMode,
    OutgoingMessage,
    QueueRecipient,
    StorageError,
)
from letterbird.storage.pg_schema import CHUNK
from letterbird.storage.postgres import PgStorage
from letterbird.storage.sqlite import SqliteStorage

pytestmark = pytest.mark.pg


@pytest.fixture
async def pg_url() -> AsyncIterator[str]:
    url = pgutil.new_url()
    yield url
    await pgutil.drop_schema_async(url)


async def fill(s: Any) -> dict[str, Any]:
    """A small but complete mail store: returns what clients would have cached."""
    await s.add_domain("example.test")
    await s.add_domain("other.test")
    bob = await s.add_account("Bob", "example.test", "hash-bob")
    alice = await s.add_account("alice", "other.test", "hash-alice")
    await s.set_quota(alice.id, 10**9)
    await s.add_alias("info", "example.test", ["Bob@example.test", "x@remote.test"])
    await s.add_alias(None, "other.test", ["alice@other.test"])
    work = await s.create_mailbox(bob.id, "Work/2026")
    for i in range(12):
        await s.append(blob_of(sample_message(i)), [AppendTarget(bob.id), AppendTarget(alice.id)])
    big = sample_message(99, body="b" * (CHUNK * 2 + 17))
    await s.append(blob_of(big), [AppendTarget(bob.id, mailbox_id=work.id)])
    inbox = await s.get_mailbox(bob.id, "INBOX")
    await s.store_flags(inbox.id, [1, 2, 3], FlagMode.ADD, ["\\Seen", "$Work"])
    await s.store_flags(inbox.id, [4], FlagMode.ADD, ["\\Deleted"])
    await s.expunge(inbox.id)
    await s.move_messages(inbox.id, [5], work.id)
    out = OutgoingMessage(
        "Bob@example.test",
        (QueueRecipient("x@remote.test", ("SUCCESS",), "rfc822;x@remote.test"),),
        envid="ENV1",
        ret="HDRS",
    )
    await s.deliver(blob_of(sample_message(50)), [AppendTarget(bob.id, "Sent")], out, "QCOPY1")
    await s.queue_claim("node-x", 3600, 10, now=2_000_000_000.0)
    await s.init_meta("web_session_secret", "c2VjcmV0")  # the webmail's, and its logouts
    for nonce in NONCES:
        await s.revoke_session(nonce, 4_000_000_000.0, now=0.0)
    return await snapshot(s)


NONCES = ("n-one", "N-two", "n_three", "Zz")  # mixed case: key order must agree on both ends


async def snapshot(s: Any) -> dict[str, Any]:
    out: dict[str, Any] = {
        "session_secret": await s.get_meta("web_session_secret"),
        "revoked": [await s.session_revoked(n) for n in (*NONCES, "other")],
        "domains": await s.list_domains(),
        "accounts": await s.list_accounts(),
        "aliases": await s.list_aliases(),
        "queue": await s.queue_entries(),
        "mailboxes": {},
    }
    for account in out["accounts"]:
        for mb in await s.list_mailboxes(account.id):
            recs = await s.fetch_messages(mb.id)
            blobs = [await s.read_blob(r.blob_id) for r in recs]
            changes = await s.changes_since(mb.id, 0)
            out["mailboxes"][(account.address, mb.name)] = (mb, recs, blobs, changes)
    return out


async def test_sqlite_to_postgres_and_back(tmp_path: Path, pg_url: str) -> None:
    src = SqliteStorage(tmp_path / "src.db")
    await src.open()
    try:
        before = await fill(src)
    finally:
        await src.close()
    seen: list[tuple[str, int, int]] = []
    report = await copy_storage(
        f"sqlite:///{tmp_path / 'src.db'}",
        pg_url,
        batch=4,
        progress=lambda t, d, n: seen.append((t, d, n)),
    )
    assert report.verified and not report.resumed and report.problems == []
    assert report.copied == report.totals and report.totals["messages"] == 25
    assert {t for t, _, _ in seen} >= {t.name for t in TABLES}
    pg = PgStorage(pg_url)
    await pg.open()
    try:
        after = await snapshot(pg)
        assert after == before  # ids, UIDVALIDITY, UIDs, modseqs, flags, bytes, queue, leases
        assert await pg.integrity_check() == []
        # life goes on: new ids, UIDs and UIDVALIDITY values never collide with copied ones
        bob = await pg.find_account("bob", "example.test")
        assert bob is not None
        inbox = await pg.get_mailbox(bob.id, "INBOX")
        assert inbox is not None
        [(_, uid)] = await pg.append(blob_of(sample_message(7000)), [AppendTarget(bob.id)])
        assert uid == inbox.uidnext
        carol = await pg.add_account("carol", "example.test", "h")
        assert carol.id > max(a.id for a in before["accounts"])
        fresh = await pg.create_mailbox(bob.id, "New")
        old = [mb.uidvalidity for mb, _, _, _ in before["mailboxes"].values()]
        assert fresh.uidvalidity > max(old)
        await pg.delete_mailbox(bob.id, "New")
        await pg.remove_account(carol.id)
        assert await pg.delete_messages(inbox.id, [uid]) == [uid]
    finally:
        await pg.close()
    # and back again, into a new SQLite file
    report2 = await copy_storage(pg_url, f"sqlite:///{tmp_path / 'back.db'}", batch=3)
    assert report2.verified
    back = SqliteStorage(tmp_path / "back.db")
    await back.open()
    try:
        again = await snapshot(back)
        assert again["accounts"] == before["accounts"]
        assert again["session_secret"] == "c2VjcmV0"
        assert again["revoked"] == [True] * len(NONCES) + [False]
        assert again["queue"] == before["queue"]
        for key, (mb, recs, blobs, changes) in before["mailboxes"].items():
            mb2, recs2, blobs2, changes2 = again["mailboxes"][key]
            assert (mb2.uidvalidity, mb2.id) == (mb.uidvalidity, mb.id)
            if mb.name != "INBOX":
                assert (recs2, blobs2, changes2) == (recs, blobs, changes)
        assert await back.integrity_check() == []
    finally:
        await back.close()


async def test_interrupted_copy_resumes(tmp_path: Path, pg_url: str) -> None:
    src = SqliteStorage(tmp_path / "src.db")
    await src.open()
    try:
        before = await fill(src)
    finally:
        await src.close()
    source = f"sqlite:///{tmp_path / 'src.db'}"

    class Crash(Exception):
        pass

    def crash(table: str, done: int, total: int) -> None:
        if table == "messages" and done >= 6:
            raise Crash

    with pytest.raises(Crash):
        await copy_storage(source, pg_url, batch=3, progress=crash)
    report = await copy_storage(source, pg_url, batch=3)
    assert report.resumed and report.verified
    assert report.copied["domains"] == 0 and 0 < report.copied["messages"] < 25
    pg = PgStorage(pg_url)
    await pg.open()
    try:
        assert await snapshot(pg) == before
    finally:
        await pg.close()
    # running it again is harmless: nothing left to copy, verified again
    report = await copy_storage(source, pg_url)
    assert sum(report.copied.values()) == 0 and report.verified


async def test_refuses_other_data_and_detects_differences(tmp_path: Path, pg_url: str) -> None:
    src = SqliteStorage(tmp_path / "src.db")
    await src.open()
    try:
        await fill(src)
    finally:
        await src.close()
    other = SqliteStorage(tmp_path / "other.db")
    await other.open()
    try:
        await other.add_domain("unrelated.test")
    finally:
        await other.close()
    source = f"sqlite:///{tmp_path / 'src.db'}"
    with pytest.raises(StorageError, match="already holds data"):
        await copy_storage(source, f"sqlite:///{tmp_path / 'other.db'}")
    with pytest.raises(StorageError, match="same"):
        await copy_storage(source, source)
    with pytest.raises(StorageError, match="no SQLite database"):
        await copy_storage(f"sqlite:///{tmp_path / 'missing.db'}", pg_url)
    with pytest.raises(StorageError, match="unsupported"):
        await copy_storage(source, "mysql://x/y")
    await copy_storage(source, pg_url, verify=False)
    with pytest.raises(StorageError, match="is a copy of"):
        await copy_storage(f"sqlite:///{tmp_path / 'other.db'}", pg_url)
    assert await verify_copy(source, pg_url) == []
    pg = PgStorage(pg_url)
    await pg.open()
    try:  # a flag changed in the copy only
        bob = await pg.find_account("bob", "example.test")
        assert bob is not None
        inbox = await pg.get_mailbox(bob.id, "INBOX")
        assert inbox is not None
        await pg.store_flags(inbox.id, [1], FlagMode.ADD, ["$Changed"])
        async with pg.connection() as c:  # and one blob's bytes damaged
            await c.execute("UPDATE blob_chunks SET data = 'x'::bytea WHERE n = 0 AND blob_id = 1")
    finally:
        await pg.close()
    problems = await verify_copy(source, pg_url)
    assert any("messages" in p for p in problems)
    assert any("does not match its hash" in p for p in problems)


def test_cli_copy(tmp_path: Path, pg_url: str) -> None:
    import asyncio

    from letterbird.cli.main import cli

    async def make() -> None:
        s = SqliteStorage(tmp_path / "mail.db")
        await s.open()
        try:
            await fill(s)
        finally:
            await s.close()

    asyncio.run(make())
    (tmp_path / "lb.toml").write_text(f'[storage]\nurl = "sqlite:///{tmp_path / "mail.db"}"\n')
    result = CliRunner().invoke(
        cli,
        ["--config", str(tmp_path / "lb.toml"), "storage", "copy", "--to", pg_url],
        obj={},
    )
    assert result.exit_code == 0, result.output
    assert "verified: counts and digests match" in result.output
    assert "messages" in result.output
    bad = CliRunner().invoke(
        cli,
        ["--config", str(tmp_path / "lb.toml"), "storage", "copy", "--to", "mysql://x/y"],
        obj={},
    )
    assert bad.exit_code == 1 and "unsupported storage URL" in bad.output
