"""The delivery worker on its own: message bodies from storage (streamed when big), envelope
edge cases, stopping between messages, storage failures mid-stream."""

from __future__ import annotations

import logging

import pytest
from queueutil import TRACE, inbox, inject, message, report_fields, run, service
from smtpscript import FakeSmtp

from letterbird.config import Config, DeliverySettings
from letterbird.delivery.mx import NextHop
from letterbird.delivery.queue.worker import (
    CHUNK,
    MEMORY_BODY,
    MessageBody,
    MessageFeed,
    Outbound,
    RecipientOutcome,
    SmtpTransport,
    return_path_length,
)
from letterbird.directory.service import Directory
from letterbird.proto.smtp.client import DeliveryStatus
from letterbird.storage.interface import QueueRecipient, Storage, StorageError


@pytest.fixture
async def alice(directory: Directory) -> Directory:
    await directory.add_domain("alice.test")
    await directory.add_user("alice@alice.test", "pw")
    return directory


def test_return_path_length() -> None:
    assert return_path_length(b"Return-Path: <a@b>\r\nX: y\r\n") == len(b"Return-Path: <a@b>\r\n")
    assert return_path_length(b"return-path:\r\n <a@b>\r\nX: y\r\n") == 22
    assert return_path_length(b"Return-Path: <a@b>") == 0  # no line end: not ours
    assert return_path_length(b"Received: x\r\n") == 0


async def test_message_body_in_memory_and_streamed(storage: Storage) -> None:
    small = MessageBody.from_bytes(b"Subject: x\r\n\r\nhi\r\n")
    assert small.size == 18 and not small.eight_bit and not small.utf8_headers
    assert [c async for c in small.chunks()] == [b"Subject: x\r\n\r\nhi\r\n"]
    big = b"Subject: big\r\n\r\n" + b"x" * (MEMORY_BODY + 1000) + b"\xc3\xa9\r\n"
    await inject(storage, ["bob@bob.test"], big)
    [entry] = await storage.queue_entries()
    body = MessageBody(storage, entry.blob_id, entry.size)
    await body.load()
    await body.load()  # once is enough
    assert body.data is None  # streamed, not held
    assert body.eight_bit  # found past the first megabyte
    sent = TRACE[len(b"Return-Path: <alice@alice.test>\r\n") :] + big
    assert body.size == len(sent)
    streamed = b"".join([c async for c in body.chunks()])
    assert streamed == sent
    assert await body.read_all() == sent


async def test_big_message_is_streamed_to_the_server(
    config: Config, storage: Storage, alice: Directory
) -> None:
    big = message("big", b"0123456789abcdef\r\n" * 100_000)
    async with FakeSmtp() as srv:
        svc = service(config, storage, alice, routes={"bob.test": srv.route})
        await inject(storage, ["bob@bob.test"], big)
        await run(svc)
    [txn] = srv.transactions
    sent = TRACE[len(b"Return-Path: <alice@alice.test>\r\n") :] + big
    assert txn.data == sent
    assert f"SIZE={len(sent)}" in txn.mail


async def test_storage_failure_mid_stream_aborts_without_the_final_dot(
    config: Config,
    storage: Storage,
    alice: Directory,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, "letterbird.queue")
    big = message("big", b"y" * (CHUNK * 6))
    async with FakeSmtp() as srv:
        svc = service(config, storage, alice, routes={"bob.test": srv.route})
        await inject(storage, ["bob@bob.test"], big)
        real = storage.read_blob
        calls = [0]

        async def flaky(blob_id: str, start: int = 0, end: int | None = None) -> bytes:
            calls[0] += 1
            if calls[0] > 4:
                raise StorageError("disk on fire")
            return await real(blob_id, start, end)

        monkeypatch.setattr(storage, "read_blob", flaky)
        await run(svc)
    assert srv.transactions == []  # never completed with a truncated body
    [entry] = await storage.queue_entries()
    assert "local error reading the message: disk on fire" in entry.last_error
    assert any("queue.read_failed" in r.getMessage() for r in caplog.records)


async def test_envelope_edge_cases(config: Config, storage: Storage, alice: Directory) -> None:
    async with FakeSmtp(caps=("PIPELINING", "DSN")) as srv:
        svc = service(config, storage, alice, routes={"bob.test": srv.route})
        await inject(
            storage,
            [
                QueueRecipient("bad address@bob.test"),  # cannot be sent: bounced, 5.1.3
                QueueRecipient("ok@bob.test", ("SUCCESS", "NEVER")),  # bad NOTIFY: dropped
                QueueRecipient("orcpt@bob.test", (), "no-semicolon"),  # bad ORCPT: dropped
            ],
            envid="x" * 200,  # too long for ENVID: sent without it
        )
        await run(svc)
    [txn] = srv.transactions
    assert "ENVID" not in txn.mail
    assert txn.rcpts == ["RCPT TO:<ok@bob.test>", "RCPT TO:<orcpt@bob.test>"]
    [dsn] = await inbox(storage, alice, "alice@alice.test")
    [_, rcpt] = report_fields(dsn)
    assert rcpt["Final-Recipient"] == "rfc822; bad address@bob.test"
    assert rcpt["Status"] == "5.1.3"


async def test_unsendable_sender_bounces_everything(
    config: Config, storage: Storage, alice: Directory
) -> None:
    async with FakeSmtp() as srv:
        svc = service(config, storage, alice, routes={"bob.test": srv.route})
        await alice.add_alias("weird@alice.test", ["alice@alice.test"])
        await inject(storage, ["bob@bob.test"], sender="we ird@alice.test")
        await run(svc)
    assert srv.transactions == []
    assert await storage.queue_entries() == []


async def test_only_bad_recipients_means_no_transaction(
    config: Config, storage: Storage, alice: Directory
) -> None:
    async with FakeSmtp() as srv:
        svc = service(config, storage, alice, routes={"bob.test": srv.route})
        await inject(storage, ["bad one@bob.test"])
        await inject(storage, ["good@bob.test"])
        await run(svc)
    assert len(srv.transactions) == 1 and srv.connections == 1
    [dsn] = await inbox(storage, alice, "alice@alice.test")
    assert report_fields(dsn)[1]["Status"] == "5.1.3"


async def test_stopping_between_messages_quits(storage: Storage) -> None:
    await inject(storage, ["a@bob.test"])
    await inject(storage, ["b@bob.test"])
    entries = await storage.queue_entries()
    messages = [Outbound(e, MessageBody(storage, e.blob_id, e.size)) for e in entries]
    for m in messages:
        await m.body.load()
    seen: list[list[RecipientOutcome]] = []

    async def report(message: Outbound, outcomes: list[RecipientOutcome]) -> None:
        seen.append(outcomes)

    async with FakeSmtp() as srv:
        transport = SmtpTransport(DeliverySettings(tls="none"), "mx.alice.test")
        hop = NextHop("mx.fake.test", "127.0.0.1", srv.port)
        result = await transport.session(hop, MessageFeed(messages), report, lambda: bool(seen))
    assert result.failure is None and result.attempted == 1 and result.usable
    assert [o.status for o in seen[0]] == [DeliveryStatus.DELIVERED]
    assert len(srv.transactions) == 1


async def test_connect_timeout(storage: Storage) -> None:
    await inject(storage, ["a@bob.test"])
    [entry] = await storage.queue_entries()
    m = Outbound(entry, MessageBody.from_bytes(TRACE + message()))
    transport = SmtpTransport(DeliverySettings(connect_timeout=0.2), "mx.alice.test")
    # 192.0.2.1 (TEST-NET-1) is never routed: the connection attempt hangs or fails
    hop = NextHop("x", "192.0.2.1", 25)
    result = await transport.session(hop, MessageFeed([m]), _never, lambda: False)
    assert result.failure is not None and result.failure.enhanced == "4.4.1"
    assert not result.usable and result.attempted == 0


async def _never(message: Outbound, outcomes: list[RecipientOutcome]) -> None:
    raise AssertionError("no result expected")
