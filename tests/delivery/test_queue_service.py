"""The queue service with a fake transport and a fake clock: grouping, concurrency limits, retry
schedule, delay and expiry notices, NOTIFY handling, leases, notifications and removal."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
from queueutil import inbox, inject, parsed, parts, report_fields, run, service

from letterbird.config import Config
from letterbird.delivery.dns import DnsTemporaryError, MxRecord
from letterbird.delivery.mx import NextHop
from letterbird.delivery.queue.service import QueueService, new_queue_id, owner_id
from letterbird.delivery.queue.worker import (
    CONNECT_FAILED,
    MessageFeed,
    Outbound,
    RecipientOutcome,
    Report,
    SessionReport,
)
from letterbird.directory.service import Directory
from letterbird.proto.smtp.client import DeliveryStatus
from letterbird.proto.smtp.replies import Reply
from letterbird.storage.events import ChangeKind
from letterbird.storage.interface import (
    NotFound,
    QueueEntry,
    QueueRecipient,
    Storage,
    StorageError,
)
from letterbird.storage.postgres import PgStorage

OK = Reply(250, "2.0.0", "Ok")


@dataclass
class FakeTransport:
    """Answers every recipient from ``replies`` (default 250); ``down`` hosts refuse to
    connect; records sessions and the most sessions seen at once, overall and per host."""

    replies: dict[str, Reply] = field(default_factory=dict)
    down: set[str] = field(default_factory=set)
    dsn: bool = False
    delay: float = 0.0
    hook: Callable[[Outbound], object] | None = None
    sessions: list[tuple[str, list[str]]] = field(default_factory=list)
    active: int = 0
    most: int = 0
    per_host: dict[str, int] = field(default_factory=dict)
    most_per_host: int = 0

    async def session(
        self,
        hop: NextHop,
        feed: MessageFeed,
        report: Report,
        stopping: Callable[[], bool],
    ) -> SessionReport:
        messages = []
        if hop.ip in self.down:
            feed.close()
            self.sessions.append((hop.ip, []))
            return SessionReport(hop, CONNECT_FAILED, 0, False)
        while (m := await feed.next()) is not None:
            messages.append(m)
        self.sessions.append((hop.ip, [m.entry.queue_id for m in messages]))
        self.active += 1
        self.per_host[hop.ip] = self.per_host.get(hop.ip, 0) + 1
        self.most = max(self.most, self.active)
        self.most_per_host = max(self.most_per_host, self.per_host[hop.ip])
        try:
            await asyncio.sleep(self.delay)
            for m in messages:
                if self.hook is not None:
                    await self.hook(m)  # type: ignore[misc]
                outcomes = []
                for r in list(m.pending):
                    reply = self.replies.get(r.address, OK)
                    status = (
                        DeliveryStatus.DELIVERED
                        if reply.code < 400
                        else DeliveryStatus.TEMPORARY
                        if reply.code < 500
                        else DeliveryStatus.PERMANENT
                    )
                    outcomes.append(RecipientOutcome(r, status, reply, True, hop, self.dsn))
                await report(m, outcomes)
        finally:
            self.active -= 1
            self.per_host[hop.ip] -= 1
        return SessionReport(hop, None, len(messages), True)


@pytest.fixture
async def alice(directory: Directory) -> Directory:
    await directory.add_domain("alice.test")
    await directory.add_user("alice@alice.test", "pw")
    await directory.add_user("pm@alice.test", "pw")
    return directory


ROUTES = {"bob.test": "127.0.0.3:25", "carol.test": "127.0.0.3:25", "dave.test": "127.0.0.4:25"}


def make(config: Config, storage: Storage, directory: Directory, **kw: object):  # type: ignore[no-untyped-def]
    kw.setdefault("routes", ROUTES)
    kw.setdefault("transport", FakeTransport())
    return service(config, storage, directory, **kw)


# ------------------------------------------------------------------------ ids


def test_ids() -> None:
    ids = {new_queue_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(len(i) == 21 and i == i.upper() for i in ids)
    assert owner_id().count(":") == 2


# ------------------------------------------------------------------------ grouping and limits


async def test_same_next_hop_shares_a_connection(
    config: Config, storage: Storage, alice: Directory
) -> None:
    t = FakeTransport()
    svc = make(config, storage, alice, transport=t)
    a = await inject(storage, ["x@bob.test"])
    b = await inject(storage, ["y@carol.test"])  # another domain, same route
    c = await inject(storage, ["z@dave.test"])
    assert await run(svc) == 3
    by_ip = {ip: sorted(ids) for ip, ids in t.sessions}
    assert by_ip == {"127.0.0.3": sorted([a, b]), "127.0.0.4": [c]}
    assert await storage.queue_entries() == []


async def test_messages_per_connection_and_concurrency(
    config: Config, storage: Storage, alice: Directory
) -> None:
    t = FakeTransport(delay=0.02)
    svc = make(
        config,
        storage,
        alice,
        transport=t,
        messages_per_connection=2,
        per_host_concurrency=2,
        concurrency=3,
    )
    for _ in range(7):
        await inject(storage, ["x@bob.test"])
    for _ in range(4):
        await inject(storage, ["x@dave.test"])
    while await run(svc):
        pass
    assert sum(len(ids) for _, ids in t.sessions) == 11
    assert t.most_per_host <= 2
    assert t.most <= 3
    assert max(len(ids) for _, ids in t.sessions) <= 4  # 7 messages over 2 connections
    assert await storage.queue_entries() == []


async def test_claims_are_bounded_by_capacity(
    config: Config, storage: Storage, alice: Directory
) -> None:
    t = FakeTransport()
    svc = make(config, storage, alice, transport=t, concurrency=1, messages_per_connection=2)
    for _ in range(5):
        await inject(storage, ["x@bob.test"])
    assert await run(svc) == 2
    assert await run(svc) == 2
    assert await run(svc) == 1
    assert await run(svc) == 0


# ------------------------------------------------------------------------ retries, notices


async def attempt(storage: Storage, svc: QueueService, qid: str, delay: float) -> None:
    """Make ``qid`` due (as if its retry time had come: due times are compared on the
    database clock, not on the service's fake one), run one attempt, and check that the next
    try is ``delay`` seconds later (a delay from the database clock at the commit)."""
    await storage.queue_flush()
    before = time.time()
    assert await run(svc) == 1
    after = time.time()
    [entry] = await storage.queue_entries(qid)
    assert entry.due - after - 0.001 <= delay <= entry.due - before + 0.001


async def test_retry_schedule_delay_notice_and_expiry(
    config: Config, storage: Storage, alice: Directory
) -> None:
    now = [time.time()]
    t = FakeTransport(replies={"bob@bob.test": Reply(451, "4.3.0", "try later")})
    svc = make(
        config,
        storage,
        alice,
        transport=t,
        retry=[10.0, 20.0],
        warn_after=35.0,
        lifetime=60.0,
        clock=lambda: now[0],
    )
    qid = await inject(storage, ["bob@bob.test"], envid="E1")
    [created] = [e.created for e in await storage.queue_entries(qid)]
    now[0] = created
    for step, delay in ((0, 10.0), (10, 20.0), (20, 20.0)):  # the last interval repeats
        now[0] += step
        await attempt(storage, svc, qid, delay)
        [entry] = await storage.queue_entries(qid)
        assert entry.last_error == "127.0.0.3[127.0.0.3]:25 said: 451 4.3.0 try later"
        assert await run(svc) == 0  # not due again yet
    assert await inbox(storage, alice, "alice@alice.test") == []  # 30 s: before warn_after
    now[0] += 20  # 50 s after arrival: past warn_after
    await attempt(storage, svc, qid, 10.0)  # the last try is at the expiry, 60 s
    [delay] = await inbox(storage, alice, "alice@alice.test")
    groups = report_fields(delay)
    assert groups[0]["Original-Envelope-Id"] == "E1"
    assert groups[1]["Action"] == "delayed" and groups[1]["Status"] == "4.3.0"
    assert groups[1]["Diagnostic-Code"] == "smtp; 451 4.3.0 try later"
    assert "Will-Retry-Until" in groups[1]
    [entry] = await storage.queue_entries(qid)
    assert entry.warned
    now[0] = created + 60.0
    await storage.queue_flush()
    await run(svc)
    assert await storage.queue_entries(qid) == []
    notices = await inbox(storage, alice, "alice@alice.test")
    assert len(notices) == 2  # the delay notice was sent once
    rcpt = report_fields(notices[1])[1]
    assert rcpt["Action"] == "failed" and rcpt["Status"] == "4.4.7"
    assert rcpt["Diagnostic-Code"] == "smtp; 451 4.3.0 try later"


async def test_notify_never_and_failure_only(
    config: Config, storage: Storage, alice: Directory
) -> None:
    now = [time.time()]
    t = FakeTransport(
        replies={r: Reply(451, "4.3.0", "later") for r in ("a@bob.test", "b@bob.test")}
    )
    svc = make(
        config, storage, alice, transport=t, warn_after=1.0, lifetime=5.0, clock=lambda: now[0]
    )
    await inject(
        storage,
        [QueueRecipient("a@bob.test", ("NEVER",)), QueueRecipient("b@bob.test", ("FAILURE",))],
    )
    now[0] += 2
    await run(svc)
    assert await inbox(storage, alice, "alice@alice.test") == []  # nobody wants DELAY
    now[0] += 10
    await storage.queue_flush()
    await run(svc)
    [dsn] = await inbox(storage, alice, "alice@alice.test")
    assert [g["Final-Recipient"] for g in report_fields(dsn)[1:]] == ["rfc822; b@bob.test"]


async def test_success_notices(config: Config, storage: Storage, alice: Directory) -> None:
    for dsn_offered, expected in ((True, 0), (False, 1)):
        t = FakeTransport(dsn=dsn_offered)
        svc = make(config, storage, alice, transport=t)
        await inject(storage, [QueueRecipient("bob@bob.test", ("SUCCESS",))])
        await run(svc)
        assert len(await inbox(storage, alice, "alice@alice.test")) == expected


async def test_mixed_outcomes_in_one_notice(
    config: Config, storage: Storage, alice: Directory
) -> None:
    t = FakeTransport(
        replies={
            "gone@bob.test": Reply(550, "5.1.1", "no such user"),
            "slow@bob.test": Reply(452, "4.2.2", "mailbox full"),
        }
    )
    svc = make(config, storage, alice, transport=t)
    qid = await inject(
        storage,
        [
            QueueRecipient("gone@bob.test"),
            QueueRecipient("slow@bob.test"),
            QueueRecipient("ok@bob.test", ("SUCCESS", "FAILURE")),
        ],
    )
    await run(svc)
    [dsn] = await inbox(storage, alice, "alice@alice.test")
    actions = {g["Final-Recipient"]: g["Action"] for g in report_fields(dsn)[1:]}
    assert actions == {"rfc822; gone@bob.test": "failed", "rfc822; ok@bob.test": "relayed"}
    [entry] = await storage.queue_entries(qid)
    assert [r.address for r in entry.recipients] == ["slow@bob.test"]
    assert entry.attempts == 1


async def test_null_sender_delay_is_never_reported(
    config: Config, storage: Storage, alice: Directory
) -> None:
    now = [time.time()]
    t = FakeTransport(replies={"bob@bob.test": Reply(451, "4.3.0", "later")})
    svc = make(
        config, storage, alice, transport=t, warn_after=1.0, lifetime=3.0, clock=lambda: now[0]
    )
    await inject(storage, ["bob@bob.test"], sender="")
    now[0] += 2
    await run(svc)
    assert await inbox(storage, alice, "alice@alice.test") == []
    now[0] += 2
    await storage.queue_flush()
    await run(svc)
    [dsn] = await inbox(storage, alice, "alice@alice.test")  # postmaster: the first account
    assert report_fields(dsn)[1]["Status"] == "4.4.7"
    assert await storage.queue_entries() == []


# ------------------------------------------------------------------------ routing


class FakeMx:
    def __init__(self, records: dict[str, list[MxRecord]], temporary: set[str] = set()) -> None:  # noqa: B006
        self.records = records
        self.temporary = temporary

    async def mx(self, domain: str) -> list[MxRecord]:
        if domain in self.temporary:
            raise DnsTemporaryError(domain, "MX", "SERVFAIL")
        return self.records[domain]

    async def addresses(self, host: str) -> list[str]:
        addresses = {"mx.bob.test": "127.0.0.3", "mx.alice.test": "127.0.0.2"}
        return [addresses.get(host, "127.0.0.2")]


async def test_routing_errors(config: Config, storage: Storage, alice: Directory) -> None:
    resolver = FakeMx(
        {"null.test": [MxRecord(0, ".")], "loop.test": [MxRecord(10, "mx.alice.test")]},
        temporary={"flaky.test"},
    )
    t = FakeTransport()
    svc = make(config, storage, alice, transport=t, routes={}, resolver=resolver)
    svc.local_hostnames.append("mx.alice.test")
    await inject(storage, ["a@null.test", "b@loop.test", "c@flaky.test"])
    await run(svc)
    assert t.sessions == []
    notices = await inbox(storage, alice, "alice@alice.test")
    assert len(notices) == 2  # one entry per domain, one notice per entry
    statuses = {}
    for notice in notices:
        for g in report_fields(notice)[1:]:
            statuses[g["Final-Recipient"]] = g["Status"]
    assert statuses == {"rfc822; a@null.test": "5.1.10", "rfc822; b@loop.test": "5.4.6"}
    [flaky] = await storage.queue_entries()
    assert flaky.domain == "flaky.test"
    assert "4.4.3" in flaky.last_error


async def test_mx_fallback_and_host_down(
    config: Config, storage: Storage, alice: Directory
) -> None:
    resolver = FakeMx({})

    async def mx(domain: str) -> list[MxRecord]:
        return [MxRecord(10, "mx1.multi.test"), MxRecord(20, "mx.bob.test")]

    resolver.mx = mx  # type: ignore[method-assign]
    t = FakeTransport(down={"127.0.0.2"})
    svc = make(config, storage, alice, transport=t, routes={}, resolver=resolver)
    await inject(storage, ["x@multi.test"])
    await run(svc)
    assert [ip for ip, _ in t.sessions] == ["127.0.0.2", "127.0.0.3"]
    assert await storage.queue_entries() == []


# ------------------------------------------------------------------------ leases, errors


async def test_lost_lease_writes_nothing_and_sends_no_notice(
    config: Config, storage: Storage, alice: Directory
) -> None:
    async def steal(message: Outbound) -> None:
        await storage.queue_renew([message.entry.id], svc.owner, -1.0)  # our lease expired
        assert await storage.queue_claim("thief", 60.0, 10)

    t = FakeTransport(replies={"bob@bob.test": Reply(550, "5.1.1", "gone")}, hook=steal)
    svc = make(config, storage, alice, transport=t)
    await inject(storage, ["bob@bob.test"])
    await run(svc)
    [entry] = await storage.queue_entries()
    assert entry.owner == "thief" and entry.attempts == 0
    assert await inbox(storage, alice, "alice@alice.test") == []


async def test_internal_error_defers(config: Config, storage: Storage, alice: Directory) -> None:
    async def boom(message: Outbound) -> None:
        raise RuntimeError("bug")

    svc = make(config, storage, alice, transport=FakeTransport(hook=boom))
    await inject(storage, ["bob@bob.test"])
    await run(svc)
    [entry] = await storage.queue_entries()
    assert entry.attempts == 1 and "4.3.0" in entry.last_error and "bug" in entry.last_error


async def test_leases_are_renewed_while_delivering(
    config: Config, storage: Storage, alice: Directory
) -> None:
    seen: list[float] = []

    async def look(message: Outbound) -> None:
        first = (await storage.queue_entries())[0].lease_until
        await asyncio.sleep(0.3)
        later = (await storage.queue_entries())[0].lease_until
        assert first is not None and later is not None
        seen.append(later - first)

    svc = make(config, storage, alice, transport=FakeTransport(hook=look), lease=0.3)
    await inject(storage, ["bob@bob.test"])
    await svc.start()
    try:
        svc.wake()
        for _ in range(100):
            await asyncio.sleep(0.02)
            if seen and not svc.busy:
                break
    finally:
        await svc.aclose()
    assert seen and seen[0] > 0


# ------------------------------------------------------------------------ result and DSN: one write


def fail_notifications(storage: Storage, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make storing a notification fail inside the storage transaction, after the queue
    change was written in it."""
    if isinstance(storage, PgStorage):

        async def boom(*args: object) -> None:
            raise StorageError("disk full")

    else:

        def boom(*args: object) -> None:  # type: ignore[misc]
            raise StorageError("disk full")

    monkeypatch.setattr(storage, "_notify_tx", boom)


async def test_a_failed_write_loses_neither_the_result_nor_the_report(
    config: Config, storage: Storage, alice: Directory, monkeypatch: pytest.MonkeyPatch
) -> None:
    t = FakeTransport(replies={"gone@bob.test": Reply(550, "5.1.1", "no such user")})
    svc = make(config, storage, alice, transport=t)
    qid = await inject(storage, ["gone@bob.test", "ok@bob.test"])
    fail_notifications(storage, monkeypatch)
    await run(svc)
    assert len(t.sessions) == 1
    # nothing was written: the entry keeps both recipients (and our lease, until it expires)
    [entry] = await storage.queue_entries(qid)
    assert [r.address for r in entry.recipients] == ["gone@bob.test", "ok@bob.test"]
    assert entry.attempts == 0 and entry.owner == svc.owner
    assert await inbox(storage, alice, "alice@alice.test") == []
    assert not svc.busy  # no longer renewed
    # the storage is back and the lease ran out: the next attempt reports again
    monkeypatch.undo()
    await storage.queue_renew([entry.id], svc.owner, -1.0)
    account = await alice.get_user("alice@alice.test")
    with storage.bus.subscribe(account.id) as sub:
        await run(svc)
        event = await asyncio.wait_for(sub.get(), 2)  # IMAP IDLE sees the bounce
    assert event.kind is ChangeKind.APPEND
    assert await storage.queue_entries() == []
    [dsn] = await inbox(storage, alice, "alice@alice.test")
    [rcpt] = report_fields(dsn)[1:]
    assert (rcpt["Final-Recipient"], rcpt["Action"]) == ("rfc822; gone@bob.test", "failed")


async def test_a_report_its_mailbox_refuses_is_dropped_not_retried_forever(
    config: Config,
    storage: Storage,
    alice: Directory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    account = await alice.get_user("alice@alice.test")
    await storage.set_quota(account.id, 10)  # the sender's mailbox is full
    t = FakeTransport(replies={"gone@bob.test": Reply(550, "5.1.1", "no such user")})
    svc = make(config, storage, alice, transport=t)
    await inject(storage, ["gone@bob.test", "ok@bob.test"])
    await run(svc)
    assert await storage.queue_entries() == []  # the result is written: not delivered again
    assert await inbox(storage, alice, "alice@alice.test") == []
    messages = [r.getMessage() for r in caplog.records]
    assert any("queue.dsn_refused" in m for m in messages)
    assert any("queue.dsn_dropped" in m and "quota" in m for m in messages)


async def test_a_report_whose_account_went_away_is_routed_again(
    config: Config,
    storage: Storage,
    alice: Directory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    t = FakeTransport(replies={"gone@bob.test": Reply(550, "5.1.1", "no such user")})
    svc = make(config, storage, alice, transport=t)
    real = svc._report_route
    calls = [0]

    async def stale(entry: QueueEntry) -> Any:
        calls[0] += 1
        route = await real(entry)
        if calls[0] == 1:  # routed to an account removed before the write
            return dataclasses.replace(route, accounts=(10**6,))
        return route

    monkeypatch.setattr(svc, "_report_route", stale)
    await inject(storage, ["gone@bob.test"])
    await run(svc)
    assert calls[0] == 2
    assert await storage.queue_entries() == []
    assert len(await inbox(storage, alice, "alice@alice.test")) == 1


async def test_remove_and_its_report_are_one_write(
    config: Config, storage: Storage, alice: Directory, monkeypatch: pytest.MonkeyPatch
) -> None:
    svc = make(config, storage, alice)
    qid = await inject(storage, ["bob@bob.test", "x@dave.test"])
    before = await storage.queue_entries(qid)
    fail_notifications(storage, monkeypatch)
    with pytest.raises(StorageError):
        await svc.remove(qid)
    assert await storage.queue_entries(qid) == before
    assert await inbox(storage, alice, "alice@alice.test") == []
    monkeypatch.undo()
    account = await alice.get_user("alice@alice.test")
    await storage.set_quota(account.id, 10)
    with pytest.raises(StorageError, match="not removed"):
        await svc.remove(qid)
    assert await storage.queue_entries(qid) == before
    await svc.remove(qid, silent=True)  # tell nobody
    assert await storage.queue_entries() == []


# ------------------------------------------------------------------------ notify and remove


async def test_notify_routes_locally_remotely_and_to_the_postmaster(
    config: Config, storage: Storage, alice: Directory
) -> None:
    await alice.add_alias("fwd@alice.test", ["someone@elsewhere.test", "alice@alice.test"])
    svc = make(config, storage, alice)
    note = b"From: MAILER-DAEMON@mx.alice.test\r\nSubject: n\r\n\r\nx\r\n"
    await svc.notify("alice@alice.test", note)
    await svc.notify("fwd@alice.test", note)
    await svc.notify("ghost@alice.test", note)  # unknown: the postmaster gets it
    await svc.notify("", note)
    await svc.notify("far@away.test", note)
    mine = await inbox(storage, alice, "alice@alice.test")
    assert len(mine) == 4 and all(m.startswith(b"Return-Path: <>\r\n") for m in mine)
    queued = await storage.queue_entries()
    assert sorted(r.address for e in queued for r in e.recipients) == [
        "far@away.test",
        "someone@elsewhere.test",
    ]
    assert all(e.sender == "" for e in queued)


async def test_notify_without_any_account_is_dropped(
    config: Config, storage: Storage, directory: Directory
) -> None:
    svc = make(config, storage, directory)
    await svc.notify("", b"Subject: n\r\n\r\nx\r\n")
    assert await storage.queue_entries() == []


async def test_remove_bounces_unless_silent(
    config: Config, storage: Storage, alice: Directory
) -> None:
    svc = make(config, storage, alice)
    qid = await inject(storage, ["bob@bob.test", "x@dave.test"], ret="FULL")
    removed = await svc.remove(qid)
    assert len(removed) == 2
    assert await storage.queue_entries() == []
    [dsn] = await inbox(storage, alice, "alice@alice.test")
    groups = report_fields(dsn)
    assert {g["Final-Recipient"] for g in groups[1:]} == {
        "rfc822; bob@bob.test",
        "rfc822; x@dave.test",
    }
    assert all(g["Status"] == "5.0.0" for g in groups[1:])
    original = parts(parsed(dsn))[2]
    assert original.get_content_type() == "message/rfc822"
    assert "Hello Bob." in original.as_string()

    qid = await inject(storage, ["bob@bob.test"])
    await svc.remove(qid, silent=True)
    assert len(await inbox(storage, alice, "alice@alice.test")) == 1
    with pytest.raises(NotFound):
        await svc.remove("NOPE")


# ------------------------------------------------------------------------ more edges


async def test_unreachable_host_delay_and_expiry_use_the_session_failure(
    config: Config, storage: Storage, alice: Directory
) -> None:
    now = [time.time()]
    t = FakeTransport(down={"127.0.0.3"})
    svc = make(
        config, storage, alice, transport=t, warn_after=5.0, lifetime=20.0, clock=lambda: now[0]
    )
    await inject(storage, ["bob@bob.test"])
    now[0] = time.time() + 10
    await run(svc)
    [delay] = await inbox(storage, alice, "alice@alice.test")
    rcpt = report_fields(delay)[1]
    assert (rcpt["Action"], rcpt["Status"]) == ("delayed", "4.4.1")
    assert rcpt["Diagnostic-Code"].startswith("X-Letterbird; 127.0.0.3[127.0.0.3]:25: 451 4.4.1")
    assert "Remote-MTA" not in rcpt
    now[0] += 100
    await storage.queue_flush()
    await run(svc)
    failure = (await inbox(storage, alice, "alice@alice.test"))[1]
    rcpt = report_fields(failure)[1]
    assert (rcpt["Action"], rcpt["Status"]) == ("failed", "4.4.7")


async def test_loop_survives_storage_errors(
    config: Config,
    storage: Storage,
    alice: Directory,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    t = FakeTransport()
    svc = make(config, storage, alice, transport=t, poll_interval=0.05)
    real = storage.queue_claim
    failures = [2]

    async def flaky(*args: object, **kw: object):  # type: ignore[no-untyped-def]
        if failures[0]:
            failures[0] -= 1
            raise StorageError("database is locked")
        return await real(*args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(storage, "queue_claim", flaky)
    await inject(storage, ["bob@bob.test"])
    await svc.start()
    await svc.start()  # idempotent
    try:
        for _ in range(100):
            await asyncio.sleep(0.02)
            if t.sessions and not svc.busy:
                break
    finally:
        await svc.aclose()
    assert t.sessions
    assert any("queue.loop_error" in r.getMessage() for r in caplog.records)
    assert await storage.queue_entries() == []


async def test_renewal_problems_are_logged(
    config: Config,
    storage: Storage,
    alice: Directory,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls = [0]

    async def renew(ids: Sequence[int], owner: str, lease: float) -> int:
        calls[0] += 1
        if calls[0] == 1:
            raise StorageError("busy")
        return 0

    monkeypatch.setattr(storage, "queue_renew", renew)
    t = FakeTransport(delay=0.5)
    svc = make(config, storage, alice, transport=t, lease=0.15)
    await inject(storage, ["bob@bob.test"])
    await svc.start()
    try:
        svc.wake()
        for _ in range(100):
            await asyncio.sleep(0.02)
            if t.sessions and not svc.busy:
                break
    finally:
        await svc.aclose()
    text = " ".join(r.getMessage() for r in caplog.records)
    assert "queue.renew_failed" in text and "queue.lease_lost" in text


def test_local_addresses_come_from_the_mx_listeners(config: Config) -> None:
    import dataclasses

    from letterbird.config import DeliverySettings, ListenSettings
    from letterbird.delivery.queue.service import QueueService

    cfg = dataclasses.replace(
        config,
        listen=ListenSettings(smtp=["127.0.0.2:25", "0.0.0.0:25", "127.0.0.3:2525", "[::1]:25"]),
        delivery=DeliverySettings(smtp_port=25, helo_name="out.alice.test"),
    )
    svc = QueueService(cfg, None, None)  # type: ignore[arg-type]
    assert svc.local_addresses == ["127.0.0.2", "::1"]
    assert svc.local_hostnames == [cfg.hostname, "out.alice.test"]
