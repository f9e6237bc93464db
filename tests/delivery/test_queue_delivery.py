"""The queue delivering over real sockets to scripted SMTP servers on loopback: success, every
misbehaviour the issue lists (stall, drop mid-DATA, garbage, split replies, STARTTLS then a
failed handshake, 421, lost after the final dot), 8-bit downgrade, bounces and DSN parameters,
MX fallback, restart safety."""

from __future__ import annotations

import asyncio
import logging
import socket
import time

import pytest
from queueutil import inbox, inject, message, parsed, report_fields, run, service
from smtpscript import FakeSmtp

from letterbird.config import Config
from letterbird.delivery.dns import MxRecord
from letterbird.directory.service import Directory
from letterbird.storage.interface import QueueRecipient, Storage


@pytest.fixture
async def alice(directory: Directory) -> Directory:
    await directory.add_domain("alice.test")
    await directory.add_user("alice@alice.test", "pw")
    return directory


def routes(server: FakeSmtp, domain: str = "bob.test") -> dict[str, str]:
    return {domain: server.route}


async def entries(storage: Storage) -> list:  # type: ignore[type-arg]
    return await storage.queue_entries()


# ------------------------------------------------------------------------ success


async def test_delivers_and_strips_return_path(
    config: Config, storage: Storage, alice: Directory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "letterbird.queue")
    async with FakeSmtp(caps=("PIPELINING", "8BITMIME", "SIZE 1000000", "DSN")) as srv:
        svc = service(config, storage, alice, routes=routes(srv))
        qid = await inject(
            storage,
            [QueueRecipient("bob@bob.test", ("SUCCESS", "FAILURE"), "rfc822;Bob@bob.test")],
            ret="HDRS",
            envid="env-1",
        )
        assert await run(svc) == 1
    [txn] = srv.transactions
    assert txn.mail.startswith("MAIL FROM:<alice@alice.test> SIZE=")
    assert "RET=HDRS" in txn.mail and "ENVID=env-1" in txn.mail
    assert txn.rcpts == ["RCPT TO:<bob@bob.test> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;Bob@bob.test"]
    assert txn.data.startswith(b"Received: from pc.alice.test")  # our Return-Path is gone
    assert txn.data.endswith(b"Hello Bob.\r\n")
    assert await entries(storage) == []
    # the next hop offers DSN: NOTIFY=SUCCESS was passed on, no "relayed" notice from us
    assert await inbox(storage, alice, "alice@alice.test") == []
    [line] = [r.getMessage() for r in caplog.records if "queue.attempt" in r.getMessage()]
    assert f"id={qid}" in line and "domain=bob.test" in line and "result=delivered" in line
    assert f"host=127.0.0.1[127.0.0.1]:{srv.port}" in line and "reply=" in line


async def test_one_connection_carries_several_messages(
    config: Config, storage: Storage, alice: Directory
) -> None:
    async with FakeSmtp() as srv:
        svc = service(config, storage, alice, routes=routes(srv))
        for n in range(4):
            await inject(storage, ["bob@bob.test"], message(f"m{n}"))
        assert await run(svc) == 4
    assert len(srv.transactions) == 4
    assert srv.connections == 1
    assert await entries(storage) == []


async def test_split_replies_are_reassembled(
    config: Config, storage: Storage, alice: Directory
) -> None:
    async with FakeSmtp(split=True) as srv:
        svc = service(config, storage, alice, routes=routes(srv))
        await inject(storage, ["bob@bob.test"])
        await run(svc)
    assert len(srv.transactions) == 1
    assert await entries(storage) == []


async def test_starttls_is_used_when_offered(
    config: Config, storage: Storage, alice: Directory
) -> None:
    async with FakeSmtp(caps=("PIPELINING", "8BITMIME", "STARTTLS")) as srv:
        svc = service(config, storage, alice, routes=routes(srv), tls="require")
        await inject(storage, ["bob@bob.test"])
        await run(svc)
    assert srv.tls_sessions == 1
    assert len(srv.transactions) == 1


async def test_relayed_dsn_when_next_hop_lacks_dsn(
    config: Config, storage: Storage, alice: Directory
) -> None:
    async with FakeSmtp() as srv:  # no DSN keyword
        svc = service(config, storage, alice, routes=routes(srv))
        await inject(storage, [QueueRecipient("bob@bob.test", ("SUCCESS",))], envid="e-42")
        await run(svc)
    assert "NOTIFY" not in srv.transactions[0].rcpts[0]  # never sent without DSN
    [dsn] = await inbox(storage, alice, "alice@alice.test")
    groups = report_fields(dsn)
    assert groups[0]["Original-Envelope-Id"] == "e-42"
    assert groups[1]["Action"] == "relayed"
    assert groups[1]["Status"] == "2.0.0"
    assert parsed(dsn)["Subject"] == "Successful Mail Delivery Report"


# ------------------------------------------------------------------------ misbehaviour: retry


async def assert_deferred(storage: Storage, text: str) -> None:
    [entry] = await entries(storage)
    assert entry.attempts == 1
    assert text in entry.last_error, entry.last_error
    assert entry.owner is None or entry.lease_until is None


@pytest.mark.parametrize(
    ("knobs", "error"),
    [
        ({"stall": "greeting"}, "timeout waiting for the reply to greeting"),
        ({"drop_in_data": 10}, "4.4.2 Connection lost"),
        ({"garbage": b"hello there, not SMTP\r\n"}, "4.5.0 SMTP protocol error"),
        ({"greeting": b"421 4.3.2 Too busy, come back later\r\n"}, "421 4.3.2 Too busy"),
        ({"stall": "data"}, "4.4.2 Connection lost after the end of data; the message may"),
    ],
)
async def test_misbehaving_server_means_retry(
    config: Config,
    storage: Storage,
    alice: Directory,
    caplog: pytest.LogCaptureFixture,
    knobs: dict,  # type: ignore[type-arg]
    error: str,
) -> None:
    caplog.set_level(logging.INFO, "letterbird.queue")
    async with FakeSmtp(**knobs) as srv:
        svc = service(
            config, storage, alice, routes=routes(srv), command_timeout=0.3, data_timeout=0.3
        )
        await inject(storage, ["bob@bob.test"])
        await run(svc)
    await assert_deferred(storage, error)
    assert srv.transactions == []
    assert await inbox(storage, alice, "alice@alice.test") == []  # no DSN before warn_after
    assert any("result=deferred" in r.getMessage() for r in caplog.records)


async def test_lost_after_dot_is_retried_and_logged(
    config: Config, storage: Storage, alice: Directory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "letterbird.queue")
    async with FakeSmtp(drop_after_dot=True) as srv:
        svc = service(config, storage, alice, routes=routes(srv))
        await inject(storage, ["bob@bob.test"])
        await run(svc)
    await assert_deferred(storage, "may have been delivered")
    assert any("queue.lost_after_dot" in r.getMessage() for r in caplog.records)


async def test_connection_refused_then_host_backed_off(
    config: Config, storage: Storage, alice: Directory
) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens
    now = [time.time()]
    svc = service(
        config,
        storage,
        alice,
        routes={"bob.test": f"127.0.0.1:{port}"},
        retry=[10.0],
        host_failures=2,
        clock=lambda: now[0],
    )
    await inject(storage, ["bob@bob.test"])
    for expected in (1, 2):
        now[0] += 100
        await storage.queue_flush()  # due now (on the database clock)
        await run(svc)
        [entry] = await entries(storage)
        assert entry.attempts == expected
        assert "4.4.1 Connection failed" in entry.last_error
    # a new message for the same host, due at once: the host is skipped without connecting
    second = await inject(storage, ["carol@bob.test"])
    now[0] += 1
    before = time.time()
    assert await run(svc) == 1
    [entry] = await storage.queue_entries(second)
    assert "host skipped after repeated failures" in entry.last_error
    assert entry.due >= before + 9  # not before the host is tried again
    svc.wake(reset_backoff=True)  # `letterbird queue flush`
    await storage.queue_flush()
    await run(svc)
    for entry in await entries(storage):
        assert "Connection failed" in entry.last_error and "skipped" not in entry.last_error


async def test_broken_starttls_falls_back_to_plaintext_when_opportunistic(
    config: Config, storage: Storage, alice: Directory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "letterbird.queue")
    async with FakeSmtp(broken_tls=True) as srv:
        svc = service(config, storage, alice, routes=routes(srv))
        await inject(storage, ["bob@bob.test"])
        await run(svc)
        assert srv.connections == 2  # the failed handshake, then plaintext
    assert len(srv.transactions) == 1
    assert any("queue.tls_failed" in r.getMessage() for r in caplog.records)
    assert any("queue.tls_fallback" in r.getMessage() for r in caplog.records)


async def test_broken_starttls_is_temporary_when_required(
    config: Config, storage: Storage, alice: Directory
) -> None:
    async with FakeSmtp(broken_tls=True) as srv:
        svc = service(config, storage, alice, routes=routes(srv), tls="require")
        await inject(storage, ["bob@bob.test"])
        await run(svc)
    assert srv.transactions == []
    await assert_deferred(storage, "4.7.5 TLS handshake failed")


async def test_next_mx_is_tried_when_the_first_fails(
    config: Config, storage: Storage, alice: Directory
) -> None:
    async with FakeSmtp(host="127.0.0.4") as srv:

        class Mx:
            async def mx(self, domain: str) -> list[MxRecord]:
                assert domain == "bob.test"
                return [MxRecord(20, "backup.bob.test"), MxRecord(10, "dead.bob.test")]

            async def addresses(self, host: str) -> list[str]:
                return {"dead.bob.test": ["127.0.0.5"], "backup.bob.test": ["127.0.0.4"]}[host]

        svc = service(config, storage, alice, resolver=Mx(), smtp_port=srv.port)
        await inject(storage, ["bob@bob.test"])
        await run(svc)
    assert len(srv.transactions) == 1
    assert await entries(storage) == []


# ------------------------------------------------------------------------ bounces


async def test_permanent_failure_bounces_with_the_reply(
    config: Config, storage: Storage, alice: Directory
) -> None:
    replies = {
        "nobody@bob.test": b"550 5.1.1 <nobody@bob.test>: no such user",
        "quiet@bob.test": b"550 5.1.1 <quiet@bob.test>: no such user",
    }
    async with FakeSmtp(rcpt_replies=replies) as srv:
        svc = service(config, storage, alice, routes=routes(srv))
        await inject(
            storage,
            [
                QueueRecipient("nobody@bob.test", (), "rfc822;Nobody@bob.test"),
                QueueRecipient("quiet@bob.test", ("NEVER",)),
                QueueRecipient("bob@bob.test"),
            ],
        )
        await run(svc)
    assert len(srv.transactions) == 1 and len(srv.transactions[0].rcpts) == 1
    [dsn] = await inbox(storage, alice, "alice@alice.test")
    groups = report_fields(dsn)
    assert len(groups) == 2  # NOTIFY=NEVER: quiet@ is not reported
    rcpt = groups[1]
    assert rcpt["Original-Recipient"] == "rfc822; Nobody@bob.test"
    assert rcpt["Final-Recipient"] == "rfc822; nobody@bob.test"
    assert rcpt["Action"] == "failed" and rcpt["Status"] == "5.1.1"
    assert rcpt["Diagnostic-Code"] == "smtp; 550 5.1.1 <nobody@bob.test>: no such user"
    assert rcpt["Remote-MTA"] == "dns; 127.0.0.1"
    assert await entries(storage) == []


async def test_bounce_of_a_bounce_goes_to_the_postmaster(
    config: Config, storage: Storage, alice: Directory
) -> None:
    async with FakeSmtp(rcpt_replies={"bob@bob.test": b"550 5.1.1 gone"}) as srv:
        svc = service(config, storage, alice, routes=routes(srv))
        await inject(storage, ["bob@bob.test"], sender="")
        await run(svc)
    [dsn] = await inbox(storage, alice, "alice@alice.test")  # the postmaster account
    assert parsed(dsn)["To"] == "<alice@alice.test>"
    assert report_fields(dsn)[1]["Status"] == "5.1.1"
    assert await entries(storage) == []  # nothing queued: bounces never loop


async def test_eight_bit_body_is_downgraded_for_a_7bit_server(
    config: Config, storage: Storage, alice: Directory
) -> None:
    body = "Grüße aus Köln\r\n".encode()
    data = message("8bit", body, b"Content-Type: text/plain; charset=utf-8\r\n")
    async with FakeSmtp(caps=("PIPELINING",)) as srv:
        svc = service(config, storage, alice, routes=routes(srv))
        await inject(storage, ["bob@bob.test"], data)
        await run(svc)
    [txn] = srv.transactions
    assert "BODY=8BITMIME" not in txn.mail
    assert txn.data.isascii()
    assert b"Content-Transfer-Encoding: quoted-printable" in txn.data
    assert b"Gr=C3=BC=C3=9Fe aus K=C3=B6ln" in txn.data
    assert srv.connections == 1  # converted and resent on the same connection


async def test_eight_bit_body_is_sent_as_is_with_8bitmime(
    config: Config, storage: Storage, alice: Directory
) -> None:
    body = "Grüße\r\n".encode()
    async with FakeSmtp() as srv:
        svc = service(config, storage, alice, routes=routes(srv))
        await inject(storage, ["bob@bob.test"], message("8bit", body))
        await run(svc)
    [txn] = srv.transactions
    assert "BODY=8BITMIME" in txn.mail
    assert txn.data.endswith(body)


async def test_unconvertible_message_bounces_with_5_6_3(
    config: Config, storage: Storage, alice: Directory
) -> None:
    # 8-bit header that is not UTF-8 (so no SMTPUTF8 either): cannot be made 7-bit
    data = b"From: alice@alice.test\r\nSubject: K\xf6ln\r\n\r\nK\xf6ln\r\n"
    async with FakeSmtp(caps=("PIPELINING",)) as srv:
        svc = service(config, storage, alice, routes=routes(srv))
        await inject(storage, ["bob@bob.test"], data)
        await run(svc)
    assert srv.transactions == []
    [dsn] = await inbox(storage, alice, "alice@alice.test")
    rcpt = report_fields(dsn)[1]
    assert rcpt["Status"] == "5.6.3"
    assert "cannot be converted" in rcpt["Diagnostic-Code"]
    assert await entries(storage) == []


async def test_utf8_headers_need_smtputf8(
    config: Config, storage: Storage, alice: Directory
) -> None:
    data = "From: alice@alice.test\r\nSubject: Grüße\r\n\r\nhi\r\n".encode()
    async with FakeSmtp() as srv:  # 8BITMIME but no SMTPUTF8
        svc = service(config, storage, alice, routes=routes(srv))
        await inject(storage, ["bob@bob.test"], data)
        await run(svc)
    assert srv.transactions == []
    [dsn] = await inbox(storage, alice, "alice@alice.test")
    assert report_fields(dsn)[1]["Status"] == "5.6.7"
    async with FakeSmtp(caps=("8BITMIME", "SMTPUTF8")) as srv:
        svc = service(config, storage, alice, routes=routes(srv))
        await inject(storage, ["bob@bob.test"], data)
        await run(svc)
    [txn] = srv.transactions
    assert "SMTPUTF8" in txn.mail and "BODY=8BITMIME" in txn.mail


# ------------------------------------------------------------------------ stopping


async def test_stop_mid_session_releases_the_lease_and_a_restart_delivers_once(
    config: Config, storage: Storage, alice: Directory
) -> None:
    async with FakeSmtp(stall="greeting") as stalled:
        svc = service(config, storage, alice, routes=routes(stalled), command_timeout=30.0)
        await inject(storage, ["bob@bob.test"])
        await svc.start()
        svc.wake()
        for _ in range(100):
            if stalled.connections:
                break
            await asyncio.sleep(0.02)
        assert stalled.connections == 1
        await svc.aclose(grace=0.2)
    [entry] = await entries(storage)
    assert entry.attempts == 0  # released, not counted as an attempt
    async with FakeSmtp() as good:
        svc2 = service(config, storage, alice, routes=routes(good))
        assert await run(svc2) == 1  # claimable at once by a new owner
        await run(svc2)
    assert len(good.transactions) == 1
    assert await entries(storage) == []


async def test_scheduler_loop_delivers_after_wake(
    config: Config, storage: Storage, alice: Directory
) -> None:
    async with FakeSmtp() as srv:
        svc = service(config, storage, alice, routes=routes(srv), poll_interval=30.0)
        await svc.start()
        try:
            await asyncio.sleep(0.05)
            await inject(storage, ["bob@bob.test"])
            svc.wake()
            for _ in range(200):
                if srv.transactions and not svc.busy:
                    break
                await asyncio.sleep(0.02)
        finally:
            await svc.aclose()
    assert len(srv.transactions) == 1
    assert await entries(storage) == []


async def test_mail_claimed_later_rides_the_open_connection(
    config: Config, storage: Storage, alice: Directory
) -> None:
    async with FakeSmtp() as srv:
        svc = service(config, storage, alice, routes=routes(srv), connection_linger=0.5)
        await svc.start()
        try:
            for n in range(3):
                await inject(storage, ["bob@bob.test"], message(f"late {n}"))
                svc.wake()
                for _ in range(200):
                    if len(srv.transactions) > n:
                        break
                    await asyncio.sleep(0.01)
            assert len(srv.transactions) == 3
            assert srv.connections == 1  # one connection, kept open between messages
        finally:
            await svc.aclose(grace=3.0)
    assert await entries(storage) == []
