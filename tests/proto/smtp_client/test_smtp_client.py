"""The sans-IO SMTP client core against scripted server byte streams."""

from __future__ import annotations

import ast
import dataclasses
import itertools
from collections.abc import Sequence
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from smtp_client_harness import (
    BYE,
    EHLO_FULL,
    EHLO_PLAIN,
    GO_AHEAD,
    GREETING,
    MAIL_OK,
    OK,
    QUEUED,
    RCPT_OK,
    TLS_MARK,
    pump,
    ready_client,
    run,
    split_bytes,
)

from letterbird.proto.smtp import client as client_module
from letterbird.proto.smtp.client import (
    CLOSED,
    CONNECTION_LOST,
    LOST_AFTER_DOT,
    NEED_DATA,
    Capabilities,
    Closed,
    ConnectionLost,
    DeliveryStatus,
    Envelope,
    MessageResult,
    NeedTls,
    ProtocolFailure,
    ReadyForMessage,
    Recipient,
    SendBody,
    ServerClosed,
    ServerRefused,
    SmtpClient,
    SmtpClientUsageError,
    TlsFailure,
    Waiting,
    diagnostic,
    parse_ehlo,
)
from letterbird.proto.smtp.replies import Reply

BODY = b"Subject: hi\r\n\r\nHello\r\n"
ENV = Envelope("alice@a.test", ["bob@b.test"], size=len(BODY))
ENV2 = Envelope("alice@a.test", ["bob@b.test", "carol@b.test", "dave@b.test"], size=len(BODY))
DELIVERED = DeliveryStatus.DELIVERED
TEMPORARY = DeliveryStatus.TEMPORARY
PERMANENT = DeliveryStatus.PERMANENT


def client(**kwargs: object) -> SmtpClient:
    kwargs.setdefault("tls_policy", "none")
    return SmtpClient("client.test", **kwargs)  # type: ignore[arg-type]


def waiting(c: SmtpClient) -> Waiting:
    """``c.waiting_for`` (a call, so mypy does not narrow it across client calls)."""
    return c.waiting_for


def statuses(result: MessageResult) -> list[tuple[str, DeliveryStatus, int]]:
    return [(r.recipient.address, r.status, r.reply.code) for r in result.recipients]


def only_result(events: Sequence[object]) -> MessageResult:
    results = [e for e in events if isinstance(e, MessageResult)]
    assert len(results) == 1, events
    return results[0]


# --------------------------------------------------------------------------- happy paths
def test_happy_path_with_pipelining_sends_one_batch() -> None:
    c = ready_client()
    assert c.capabilities is not None and c.capabilities.pipelining
    assert waiting(c) is Waiting.MESSAGE
    c.send_message(ENV2)
    assert c.data_to_send() == (
        b"MAIL FROM:<alice@a.test> SIZE=22\r\n"
        b"RCPT TO:<bob@b.test>\r\n"
        b"RCPT TO:<carol@b.test>\r\n"
        b"RCPT TO:<dave@b.test>\r\n"
        b"DATA\r\n"
    )
    assert waiting(c) is Waiting.MAIL
    assert pump(c, MAIL_OK + RCPT_OK) == []
    assert waiting(c) is Waiting.RCPT
    events = pump(c, RCPT_OK + RCPT_OK + GO_AHEAD)
    assert events == [SendBody(ENV2)]
    assert waiting(c) is Waiting.BODY
    assert c.encode_data(BODY) == BODY
    c.end_data()
    assert c.data_to_send() == b".\r\n"
    assert waiting(c) is Waiting.END_OF_DATA
    events = pump(c, QUEUED)
    result = events[0]
    assert isinstance(result, MessageResult)
    assert [r.status for r in result.recipients] == [DELIVERED] * 3
    assert result.delivered == result.recipients
    assert result.temporary_failures == result.permanent_failures == ()
    first = result.recipients[0]
    assert first.reply == Reply(250, "2.0.0", "Ok: queued as 12345")
    assert first.remote
    assert first.diagnostic_code == "smtp; 250 2.0.0 Ok: queued as 12345"
    assert first.enhanced_status == "2.0.0"
    assert not result.lost_after_dot and not result.needs_7bit
    assert isinstance(events[1], ReadyForMessage)
    c.quit()
    assert c.data_to_send() == b"QUIT\r\n"
    assert waiting(c) is Waiting.QUIT
    assert pump(c, BYE) == [Closed(None)]
    assert c.closed and waiting(c) is Waiting.NOTHING
    assert c.next_event() is CLOSED
    c.receive_data(b"250 ignored\r\n")
    assert c.next_event() is CLOSED
    assert c.data_to_send() == b""


def test_happy_path_without_pipelining_one_command_at_a_time() -> None:
    c = ready_client(EHLO_PLAIN)
    c.send_message(ENV2)
    assert c.data_to_send() == b"MAIL FROM:<alice@a.test>\r\n"  # no SIZE advertised
    assert pump(c, MAIL_OK) == []
    assert c.data_to_send() == b"RCPT TO:<bob@b.test>\r\n"
    assert pump(c, RCPT_OK) == []
    assert c.data_to_send() == b"RCPT TO:<carol@b.test>\r\n"
    assert pump(c, b"450 4.2.1 Mailbox busy\r\n") == []
    assert c.data_to_send() == b"RCPT TO:<dave@b.test>\r\n"
    assert pump(c, b"550 5.1.1 No such user\r\n") == []
    assert c.data_to_send() == b"DATA\r\n"
    assert pump(c, GO_AHEAD) == [SendBody(ENV2)]
    c.encode_data(BODY)
    c.end_data()
    events = pump(c, QUEUED)
    result = only_result(events)
    assert statuses(result) == [
        ("bob@b.test", DELIVERED, 250),
        ("carol@b.test", TEMPORARY, 450),
        ("dave@b.test", PERMANENT, 550),
    ]
    assert [r.recipient.address for r in result.temporary_failures] == ["carol@b.test"]
    assert [r.recipient.address for r in result.permanent_failures] == ["dave@b.test"]
    assert result.recipients[2].diagnostic_code == "smtp; 550 5.1.1 No such user"


def test_pipelining_can_be_turned_off() -> None:
    c = ready_client(use_pipelining=False)
    c.send_message(ENV2)
    assert c.data_to_send() == b"MAIL FROM:<alice@a.test> SIZE=22\r\n"


def test_full_session_transcript() -> None:
    server = [GREETING, EHLO_FULL, MAIL_OK + RCPT_OK + GO_AHEAD, QUEUED, BYE]
    r = run(client(), server, [ENV])
    assert r.sent == (
        b"EHLO client.test\r\n"
        b"MAIL FROM:<alice@a.test> SIZE=22\r\nRCPT TO:<bob@b.test>\r\nDATA\r\n"
        + BODY
        + b".\r\nQUIT\r\n"
    )
    assert r.closed == Closed(None)
    assert statuses(r.results[0]) == [("bob@b.test", DELIVERED, 250)]


def test_quit_without_reply_is_still_clean() -> None:
    r = run(client(), [GREETING, EHLO_FULL], [])
    assert r.sent.endswith(b"QUIT\r\n")
    assert r.closed == Closed(None)


# --------------------------------------------------------------------------- EHLO / HELO
@pytest.mark.parametrize("code", [b"500", b"502"])
def test_ehlo_rejected_falls_back_to_helo(code: bytes) -> None:
    server = [GREETING, code + b" 5.5.1 What?\r\n", b"250 mx.b.test\r\n"]
    server += [MAIL_OK, RCPT_OK, GO_AHEAD, QUEUED, BYE]
    r = run(client(tls_policy="opportunistic"), server, [Envelope("a@a.test", ["b@b.test"])])
    assert r.sent.startswith(
        b"EHLO client.test\r\nHELO client.test\r\nMAIL FROM:<a@a.test>\r\nRCPT TO:<b@b.test>\r\n"
    )
    ready = r.events[0]
    assert isinstance(ready, ReadyForMessage)
    assert not ready.capabilities.extended and ready.capabilities.keywords == {}
    assert statuses(r.results[0]) == [("b@b.test", DELIVERED, 250)]


def test_helo_with_tls_required_fails() -> None:
    server = [GREETING, b"502 no\r\n", b"250 mx.b.test\r\n", BYE]
    r = run(client(tls_policy="require"), server, [ENV])
    assert r.sent == b"EHLO client.test\r\nHELO client.test\r\nQUIT\r\n"
    assert isinstance(r.closed.failure, TlsFailure)


def test_ehlo_refused_otherwise_ends_the_session() -> None:
    r = run(client(), [GREETING, b"554 5.7.1 Go away\r\n", BYE], [ENV])
    assert r.sent == b"EHLO client.test\r\nQUIT\r\n"
    failure = r.closed.failure
    assert isinstance(failure, ServerRefused)
    assert failure.reply == Reply(554, "5.7.1", "Go away") and failure.remote
    assert not failure.temporary
    assert r.results == []


def test_helo_refused_ends_the_session() -> None:
    r = run(client(), [GREETING, b"500 no\r\n", b"451 4.3.0 later\r\n"], [ENV])
    assert r.sent == b"EHLO client.test\r\nHELO client.test\r\nQUIT\r\n"
    failure = r.closed.failure
    assert isinstance(failure, ServerRefused) and failure.temporary


@pytest.mark.parametrize(
    "greeting", [b"554 5.3.2 No SMTP service here\r\n", b"450 busy\r\n"], ids=["554", "450"]
)
def test_error_greeting_is_refused_with_quit(greeting: bytes) -> None:
    r = run(client(), [greeting, BYE], [ENV])
    assert r.sent == b"QUIT\r\n"
    failure = r.closed.failure
    assert isinstance(failure, ServerRefused)
    assert failure.reply.code == int(greeting[:3])


def test_421_greeting_closes_without_quit() -> None:
    r = run(client(), [b"421 4.3.2 Too busy\r\n"], [ENV])
    assert r.sent == b""
    assert r.closed == Closed(ServerClosed(Reply(421, "4.3.2", "Too busy"), remote=True))
    assert r.closed.failure is not None and r.closed.failure.temporary


def test_multiline_greeting_and_capability_parsing() -> None:
    ehlo = (
        b"250-mx.b.test greets you\r\n"
        b"250-size 5000\r\n"
        b"250-AUTH PLAIN LOGIN\r\n"
        b"250-AUTH=LOGIN CRAM-MD5\r\n"
        b"250-8bitmime\r\n"
        b"250-!bogus line\r\n"
        b"250-\r\n"
        b"250-X-EXPS=LOGIN\r\n"
        b"250 starttls\r\n"
    )
    c = ready_client(ehlo)
    caps = c.capabilities
    assert caps is not None and caps.extended
    assert caps.size == 5000
    assert caps.eight_bit_mime and caps.starttls and caps.has("Size")
    assert not caps.pipelining and not caps.smtputf8 and not caps.dsn
    assert not caps.chunking and not caps.enhanced_status_codes
    assert caps.auth_mechanisms == frozenset({"PLAIN", "LOGIN", "CRAM-MD5"})
    assert caps.keywords["X-EXPS"] == ("LOGIN",)
    assert "!BOGUS" not in caps.keywords


@pytest.mark.parametrize(
    ("line", "size"), [("SIZE", 0), ("SIZE 0", 0), ("SIZE big", 0), ("SIZE 77", 77)]
)
def test_size_parameter_forms(line: str, size: int) -> None:
    caps = parse_ehlo(Reply.multiline(250, None, ["mx", line]))
    assert caps.size == size
    assert Capabilities(extended=False).size is None


def test_size_zero_means_no_limit_but_size_is_declared() -> None:
    c = ready_client(b"250-mx\r\n250 SIZE\r\n")
    c.send_message(Envelope("a@a.test", ["b@b.test"], size=10**9))
    assert c.data_to_send() == b"MAIL FROM:<a@a.test> SIZE=1000000000\r\n"


# --------------------------------------------------------------------------- STARTTLS
EHLO_TLS = b"250-mx.b.test\r\n250-STARTTLS\r\n250 8BITMIME\r\n"
EHLO_AFTER_TLS = b"250-mx.b.test\r\n250-PIPELINING\r\n250 8BITMIME\r\n"


def test_starttls_opportunistic() -> None:
    c = SmtpClient("client.test")
    pump(c, GREETING)
    c.data_to_send()
    assert pump(c, EHLO_TLS) == []
    assert c.data_to_send() == b"STARTTLS\r\n"
    assert waiting(c) is Waiting.STARTTLS
    assert pump(c, b"220 2.0.0 Ready to start TLS\r\n") == [NeedTls()]
    assert waiting(c) is Waiting.TLS_HANDSHAKE
    with pytest.raises(SmtpClientUsageError):
        c.next_event()
    c.tls_established()
    assert c.tls_active
    assert c.capabilities is None  # forgotten (RFC 3207 §4.2)
    assert c.data_to_send() == b"EHLO client.test\r\n"
    events = pump(c, EHLO_AFTER_TLS)
    assert len(events) == 1 and isinstance(events[0], ReadyForMessage)
    assert events[0].tls_active and events[0].capabilities.pipelining
    assert not events[0].capabilities.starttls


def test_starttls_discards_bytes_received_before_the_handshake() -> None:
    # CVE-2011-0411, client side: a man in the middle appends a forged EHLO reply to the 220.
    injected = b"250-evil\r\n250 PIPELINING\r\n"
    server = [
        GREETING,
        EHLO_TLS,
        b"220 2.0.0 Go ahead\r\n" + injected,
        b"250 DSN\r\n",  # arrives while the handshake runs: discarded too
    ]
    c = SmtpClient("client.test")
    for chunk in server[:3]:
        events = pump(c, chunk)
    assert events == [NeedTls()]
    c.receive_data(server[3])
    c.tls_established()
    assert c.data_to_send().endswith(b"EHLO client.test\r\n")
    events = pump(c, b"250 mx.b.test\r\n")
    assert isinstance(events[0], ReadyForMessage)
    assert events[0].capabilities.keywords == {}


def test_bytes_during_the_handshake_are_dropped_not_buffered() -> None:
    c = SmtpClient("client.test", max_buffer=4096)
    pump(c, GREETING)
    pump(c, EHLO_TLS)
    assert pump(c, b"220 go\r\n") == [NeedTls()]
    for _ in range(10):
        c.receive_data(b"250-junk\r\n" * 100)  # 10 x 1000 octets > max_buffer
    c.tls_established()
    events = pump(c, EHLO_AFTER_TLS)
    assert len(events) == 1 and isinstance(events[0], ReadyForMessage)


def test_starttls_discard_in_a_whole_run() -> None:
    server = [GREETING, EHLO_TLS, b"220 go\r\n421 forged\r\n", EHLO_AFTER_TLS, BYE]
    r = run(SmtpClient("client.test"), server, [])
    assert r.sent == (
        b"EHLO client.test\r\nSTARTTLS\r\n" + TLS_MARK + b"EHLO client.test\r\nQUIT\r\n"
    )
    assert r.closed == Closed(None)


def test_starttls_required_but_not_offered() -> None:
    r = run(SmtpClient("client.test", "require"), [GREETING, EHLO_FULL, BYE], [ENV])
    assert r.sent == b"EHLO client.test\r\nQUIT\r\n"
    failure = r.closed.failure
    assert isinstance(failure, TlsFailure)
    assert failure.reply.enhanced == "4.7.4" and failure.temporary and not failure.remote
    assert r.results == []


def test_starttls_required_but_refused() -> None:
    server = [GREETING, EHLO_TLS, b"454 4.7.0 TLS not available\r\n", BYE]
    r = run(SmtpClient("client.test", "require"), server, [ENV])
    assert r.sent == b"EHLO client.test\r\nSTARTTLS\r\nQUIT\r\n"
    failure = r.closed.failure
    assert isinstance(failure, TlsFailure) and failure.temporary
    assert "454 4.7.0 TLS not available" in failure.reply.text


def test_starttls_refused_opportunistic_continues_in_clear() -> None:
    server = [GREETING, EHLO_TLS, b"454 4.7.0 TLS not available\r\n", BYE]
    r = run(SmtpClient("client.test", "opportunistic"), server, [])
    assert r.sent == b"EHLO client.test\r\nSTARTTLS\r\nQUIT\r\n"
    ready = r.events[0]
    assert isinstance(ready, ReadyForMessage) and not ready.tls_active
    assert r.closed == Closed(None)


def test_tls_policy_none_and_implicit_tls_skip_starttls() -> None:
    r = run(SmtpClient("client.test", "none"), [GREETING, EHLO_TLS, BYE], [])
    assert r.sent == b"EHLO client.test\r\nQUIT\r\n"
    r = run(SmtpClient("client.test", "require", tls_active=True), [GREETING, EHLO_TLS, BYE])
    assert r.sent == b"EHLO client.test\r\nQUIT\r\n"
    ready = r.events[0]
    assert isinstance(ready, ReadyForMessage) and ready.tls_active


def test_tls_handshake_failure() -> None:
    c = SmtpClient("client.test")
    pump(c, GREETING)
    pump(c, EHLO_TLS)
    assert pump(c, b"220 go\r\n") == [NeedTls()]
    c.tls_failed("certificate verify failed\r\n")
    events = pump(c)
    failure = events[-1].failure if isinstance(events[-1], Closed) else None
    assert isinstance(failure, TlsFailure)
    assert failure.reply.enhanced == "4.7.5"
    assert failure.reply.text == "TLS handshake failed: certificate verify failed??"
    c2 = SmtpClient("client.test")
    pump(c2, GREETING)
    pump(c2, EHLO_TLS)
    pump(c2, b"220 go\r\n")
    c2.tls_failed()
    closed = pump(c2)[-1]
    assert isinstance(closed, Closed) and closed.failure is not None
    assert closed.failure.reply.text == "TLS handshake failed"


def test_connection_lost_during_handshake() -> None:
    c = SmtpClient("client.test")
    pump(c, GREETING)
    pump(c, EHLO_TLS)
    pump(c, b"220 go\r\n")
    c.connection_lost("reset by peer")
    events = pump(c)
    assert isinstance(events[-1], Closed)
    assert isinstance(events[-1].failure, ConnectionLost)
    assert events[-1].failure.reply.text == "Connection lost: reset by peer"


# --------------------------------------------------------------------------- local refusals
def test_size_too_big_fails_every_recipient_without_mail() -> None:
    c = ready_client()
    big = Envelope("a@a.test", ["b@b.test", "c@b.test"], size=1_000_001)
    c.send_message(big)
    assert c.data_to_send() == b""
    events = pump(c)
    result = only_result(events)
    assert [r.status for r in result.recipients] == [PERMANENT, PERMANENT]
    first = result.recipients[0]
    assert first.reply.code == 552 and first.enhanced_status == "5.3.4" and not first.remote
    assert first.diagnostic_code is None
    assert isinstance(events[1], ReadyForMessage)
    # the connection is still usable, and no RSET is needed
    c.send_message(ENV)
    assert c.data_to_send().startswith(b"MAIL FROM:<alice@a.test> SIZE=22\r\n")


def test_exact_size_is_allowed() -> None:
    c = ready_client()
    c.send_message(Envelope("a@a.test", ["b@b.test"], size=1_000_000))
    assert c.data_to_send().startswith(b"MAIL FROM:<a@a.test> SIZE=1000000\r\n")


def test_8bit_without_8bitmime_needs_7bit_then_downgraded_resend() -> None:
    c = ready_client(EHLO_PLAIN)
    eight = Envelope("a@a.test", ["b@b.test"], eight_bit=True)
    c.send_message(eight)
    assert c.data_to_send() == b""
    events = pump(c)
    result = only_result(events)
    assert result.needs_7bit
    assert result.recipients[0].reply.enhanced == "5.6.3"
    assert result.recipients[0].status is PERMANENT
    c.send_message(dataclasses.replace(eight, eight_bit=False))
    assert c.data_to_send() == b"MAIL FROM:<a@a.test>\r\n"


def test_8bit_with_8bitmime_declares_body() -> None:
    c = ready_client()
    c.send_message(Envelope("a@a.test", ["b@b.test"], eight_bit=True, size=5))
    assert c.data_to_send().startswith(b"MAIL FROM:<a@a.test> SIZE=5 BODY=8BITMIME\r\n")


def test_smtputf8_missing_fails_only_the_non_ascii_recipients() -> None:
    c = ready_client(EHLO_PLAIN)
    env = Envelope("a@a.test", ["bob@b.test", "jösé@b.test", "ann@bücher.test"])
    c.send_message(env)
    assert c.data_to_send() == b"MAIL FROM:<a@a.test>\r\n"
    pump(c, MAIL_OK)
    assert c.data_to_send() == b"RCPT TO:<bob@b.test>\r\n"
    pump(c, RCPT_OK)
    # the Unicode domain is sent as its A-label; the Unicode local part cannot be sent
    assert c.data_to_send() == b"RCPT TO:<ann@xn--bcher-kva.test>\r\n"
    pump(c, RCPT_OK)
    assert c.data_to_send() == b"DATA\r\n"
    pump(c, GO_AHEAD)
    c.end_data()
    result = only_result(pump(c, QUEUED))
    assert statuses(result) == [
        ("bob@b.test", DELIVERED, 250),
        ("jösé@b.test", PERMANENT, 553),
        ("ann@bücher.test", DELIVERED, 250),
    ]
    assert result.recipients[1].enhanced_status == "5.6.7"


@pytest.mark.parametrize(
    "env",
    [
        Envelope("jösé@a.test", ["bob@b.test"]),
        Envelope("a@a.test", ["bob@b.test"], smtputf8=True),
        Envelope("a@a.test", ["jösé@b.test", "ü@ü.test"]),
        Envelope("a@a.test", ["x@bad_ü.test"]),
    ],
    ids=["sender", "content", "all-recipients", "bad-idna"],
)
def test_smtputf8_missing_fails_everyone_when_needed(env: Envelope) -> None:
    c = ready_client(EHLO_PLAIN)
    c.send_message(env)
    assert c.data_to_send() == b""
    result = only_result(pump(c))
    assert all(r.reply.enhanced == "5.6.7" for r in result.recipients)


def test_smtputf8_offered_is_used() -> None:
    c = ready_client()
    c.send_message(Envelope("jösé@a.test", ["bob@bücher.test"]))
    assert c.data_to_send() == (
        "MAIL FROM:<jösé@a.test> SMTPUTF8\r\nRCPT TO:<bob@bücher.test>\r\nDATA\r\n".encode()
    )
    c2 = ready_client()
    c2.send_message(Envelope("a@a.test", ["b@b.test"], smtputf8=True))
    assert c2.data_to_send().startswith(b"MAIL FROM:<a@a.test> SMTPUTF8\r\n")
    c3 = ready_client()
    c3.send_message(Envelope("a@a.test", ["b@b.test", "ü@b.test"]))
    assert c3.data_to_send().startswith(b"MAIL FROM:<a@a.test> SMTPUTF8\r\n")


# --------------------------------------------------------------------------- DSN
def test_dsn_parameters_when_offered() -> None:
    c = ready_client()
    env = Envelope(
        "",
        [
            Recipient("bob@b.test", notify=("success", "failure"), orcpt=("rfc822", "b+o=b@b")),
            Recipient("ann@b.test", notify=("NEVER",), orcpt=("rfc822", "änn@b.test")),
        ],
        ret="HDRS",
        envid="QQ+id=1",
    )
    c.send_message(env)
    assert c.data_to_send() == (
        b"MAIL FROM:<> RET=HDRS ENVID=QQ+2Bid+3D1\r\n"
        b"RCPT TO:<bob@b.test> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;b+2Bo+3Db@b\r\n"
        b"RCPT TO:<ann@b.test> NOTIFY=NEVER ORCPT=utf-8;\\x{E4}nn@b.test\r\n"
        b"DATA\r\n"
    )


def test_dsn_parameters_dropped_when_not_offered() -> None:
    c = ready_client(b"250-mx\r\n250 PIPELINING\r\n")
    env = Envelope(
        "a@a.test",
        [Recipient("bob@b.test", notify=("DELAY",), orcpt=("rfc822", "bob@b.test"))],
        ret="FULL",
        envid="x",
    )
    c.send_message(env)
    assert c.data_to_send() == b"MAIL FROM:<a@a.test>\r\nRCPT TO:<bob@b.test>\r\nDATA\r\n"


# --------------------------------------------------------------------------- failures
def test_final_dot_failure_applies_to_accepted_recipients() -> None:
    c = ready_client()
    c.send_message(ENV2)
    c.data_to_send()
    pump(c, MAIL_OK + RCPT_OK + b"550 5.1.1 unknown\r\n" + RCPT_OK + GO_AHEAD)
    c.end_data()
    assert c.data_to_send() == b".\r\n"
    result = only_result(pump(c, b"451-4.7.1 Greylisted,\r\n451 4.7.1 try later\r\n"))
    assert statuses(result) == [
        ("bob@b.test", TEMPORARY, 451),
        ("carol@b.test", PERMANENT, 550),
        ("dave@b.test", TEMPORARY, 451),
    ]
    assert result.recipients[0].reply == Reply(451, "4.7.1", "Greylisted,\ntry later")
    assert result.recipients[0].diagnostic_code == "smtp; 451 4.7.1 Greylisted, try later"
    # the transaction ended with the final reply: no RSET before the next one
    c.send_message(ENV)
    assert c.data_to_send().startswith(b"MAIL FROM:")


def test_final_dot_permanent_failure() -> None:
    r = run(
        client(),
        [GREETING, EHLO_FULL, MAIL_OK + RCPT_OK + GO_AHEAD, b"554 5.7.1 Spam\r\n", BYE],
        [ENV],
    )
    assert statuses(r.results[0]) == [("bob@b.test", PERMANENT, 554)]


def test_no_recipient_accepted_without_pipelining_sends_no_data_and_rsets() -> None:
    c = ready_client(EHLO_PLAIN)
    env = Envelope("a@a.test", ["x@b.test", "y@b.test"])
    c.send_message(env)
    c.data_to_send()
    pump(c, MAIL_OK)
    c.data_to_send()
    pump(c, b"550 5.1.1 no\r\n")
    c.data_to_send()
    events = pump(c, b"450 4.1.1 later\r\n")
    assert c.data_to_send() == b""  # no DATA
    result = only_result(events)
    assert statuses(result) == [("x@b.test", PERMANENT, 550), ("y@b.test", TEMPORARY, 450)]
    assert isinstance(events[-1], ReadyForMessage)
    c.send_message(ENV)
    assert c.data_to_send() == b"RSET\r\n"
    assert waiting(c) is Waiting.RSET
    assert pump(c, OK) == []
    assert c.data_to_send() == b"MAIL FROM:<alice@a.test>\r\n"


def test_no_recipient_accepted_with_pipelining_data_refused() -> None:
    c = ready_client()
    c.send_message(Envelope("a@a.test", ["x@b.test"]))
    c.data_to_send()
    events = pump(c, MAIL_OK + b"550 5.1.1 no\r\n" + b"554 5.5.1 No valid recipients\r\n")
    assert c.data_to_send() == b""
    result = only_result(events)
    assert statuses(result) == [("x@b.test", PERMANENT, 550)]
    c.send_message(ENV)
    # RSET alone first, then the pipelined batch
    assert c.data_to_send() == b"RSET\r\n"
    pump(c, OK)
    assert c.data_to_send() == (
        b"MAIL FROM:<alice@a.test> SIZE=22\r\nRCPT TO:<bob@b.test>\r\nDATA\r\n"
    )


def test_no_recipient_accepted_but_data_accepted_sends_lone_dot() -> None:
    c = ready_client()
    c.send_message(Envelope("a@a.test", ["x@b.test"]))
    c.data_to_send()
    assert pump(c, MAIL_OK + b"550 5.1.1 no\r\n" + GO_AHEAD) == []
    assert c.data_to_send() == b".\r\n"
    assert waiting(c) is Waiting.END_OF_DATA
    result = only_result(pump(c, b"554 5.5.1 empty\r\n"))
    assert statuses(result) == [("x@b.test", PERMANENT, 550)]
    c.send_message(ENV)
    assert c.data_to_send().startswith(b"MAIL")  # transaction closed by the dot


def test_lone_dot_then_connection_lost_is_not_lost_after_dot() -> None:
    c = ready_client()
    c.send_message(Envelope("a@a.test", ["x@b.test"]))
    pump(c, MAIL_OK + b"550 5.1.1 no\r\n" + GO_AHEAD)
    events = pump(c, b"")
    result = only_result(events)
    assert not result.lost_after_dot
    assert statuses(result) == [("x@b.test", PERMANENT, 550)]


def test_mail_refused_pipelined_applies_to_all() -> None:
    c = ready_client()
    c.send_message(ENV2)
    c.data_to_send()
    replies = b"550 5.7.1 Sender rejected\r\n" + b"503 5.5.1 need MAIL\r\n" * 3
    assert pump(c, replies) == []
    events = pump(c, b"503 5.5.1 need MAIL\r\n")
    result = only_result(events)
    assert [r.reply.enhanced for r in result.recipients] == ["5.7.1"] * 3
    assert [r.status for r in result.recipients] == [PERMANENT] * 3
    c.send_message(ENV)
    assert c.data_to_send().startswith(b"MAIL")  # no RSET after a refused MAIL


def test_mail_refused_pipelined_but_data_accepted() -> None:
    c = ready_client()
    c.send_message(ENV)
    c.data_to_send()
    events = pump(c, b"451 4.3.0 later\r\n" + RCPT_OK + GO_AHEAD)
    assert events == []
    assert c.data_to_send() == b".\r\n"
    result = only_result(pump(c, QUEUED))
    assert statuses(result) == [("bob@b.test", TEMPORARY, 451)]


def test_mail_refused_without_pipelining() -> None:
    c = ready_client(EHLO_PLAIN)
    c.send_message(ENV2)
    c.data_to_send()
    events = pump(c, b"452 4.3.1 Insufficient storage\r\n")
    assert c.data_to_send() == b""
    result = only_result(events)
    assert [r.status for r in result.recipients] == [TEMPORARY] * 3


def test_data_refused_without_pipelining() -> None:
    c = ready_client(EHLO_PLAIN)
    c.send_message(ENV)
    pump(c, MAIL_OK)
    pump(c, RCPT_OK)
    assert c.data_to_send().endswith(b"DATA\r\n")
    result = only_result(pump(c, b"451 4.3.0 Try later\r\n"))
    assert statuses(result) == [("bob@b.test", TEMPORARY, 451)]
    c.send_message(ENV)
    assert c.data_to_send() == b"RSET\r\n"


def test_rset_refused_is_a_protocol_failure() -> None:
    c = ready_client(EHLO_PLAIN)
    c.send_message(ENV)
    pump(c, MAIL_OK)
    pump(c, b"550 no\r\n")
    c.send_message(ENV)
    events = pump(c, b"500 5.5.1 what\r\n")
    result = only_result(events)
    assert statuses(result) == [("bob@b.test", TEMPORARY, 451)]
    closed = events[-1]
    assert isinstance(closed, Closed) and isinstance(closed.failure, ProtocolFailure)
    assert "RSET refused" in closed.failure.reply.text


def test_421_mid_session() -> None:
    c = ready_client()
    c.send_message(ENV2)
    c.data_to_send()
    events = pump(c, MAIL_OK + b"550 5.1.1 no\r\n" + b"421 4.4.2 Shutting down\r\n")
    result = only_result(events)
    assert statuses(result) == [
        ("bob@b.test", PERMANENT, 550),
        ("carol@b.test", TEMPORARY, 421),
        ("dave@b.test", TEMPORARY, 421),
    ]
    assert result.recipients[1].remote
    assert result.recipients[1].diagnostic_code == "smtp; 421 4.4.2 Shutting down"
    closed = events[-1]
    assert isinstance(closed, Closed) and isinstance(closed.failure, ServerClosed)
    assert c.data_to_send() == b""  # no QUIT after 421


def test_421_after_the_dot() -> None:
    r = run(
        client(),
        [GREETING, EHLO_FULL, MAIL_OK + RCPT_OK + GO_AHEAD, b"421 4.3.0 crash\r\n"],
        [ENV],
    )
    assert statuses(r.results[0]) == [("bob@b.test", TEMPORARY, 421)]
    assert not r.results[0].lost_after_dot


def test_421_while_idle() -> None:
    c = ready_client()
    events = pump(c, b"421 4.4.2 Idle timeout\r\n")
    assert events == [Closed(ServerClosed(Reply(421, "4.4.2", "Idle timeout"), remote=True))]


def test_unsolicited_reply_while_idle_is_a_protocol_failure() -> None:
    c = ready_client()
    events = pump(c, b"250 surprise\r\n")
    assert len(events) == 1 and isinstance(events[0], Closed)
    assert isinstance(events[0].failure, ProtocolFailure)


def test_eof_while_idle() -> None:
    c = ready_client()
    events = pump(c, b"")
    assert len(events) == 1 and isinstance(events[0], Closed)
    failure = events[0].failure
    assert isinstance(failure, ConnectionLost) and failure.temporary and not failure.remote
    assert failure.reply.enhanced == "4.4.2"


# --------------------------------------------------------------------------- garbage
GARBAGE = [
    b"hello there\r\n",
    b"2500 too many digits\r\n",
    b"199 not a reply code\r\n",
    b"600 not a reply code\r\n",
    b"260 second digit out of range\r\n",
    b"250\tTab instead of space\r\n",
    b"\r\n",
]


@pytest.mark.parametrize("line", GARBAGE)
def test_garbage_reply_lines(line: bytes) -> None:
    c = ready_client()
    c.send_message(ENV)
    c.data_to_send()
    events = pump(c, line)
    result = only_result(events)
    assert statuses(result) == [("bob@b.test", TEMPORARY, 451)]
    assert result.recipients[0].reply.enhanced == "4.5.0"
    closed = events[-1]
    assert isinstance(closed, Closed) and isinstance(closed.failure, ProtocolFailure)
    assert closed.failure.temporary and not closed.failure.remote
    assert c.data_to_send() == b""  # dropped without QUIT


@pytest.mark.parametrize("line", GARBAGE)
def test_garbage_greeting(line: bytes) -> None:
    r = run(client(), [line])
    assert isinstance(r.closed.failure, ProtocolFailure)
    assert r.sent == b""


def test_inconsistent_continuation_code() -> None:
    r = run(client(), [GREETING, b"250-mx\r\n251 PIPELINING\r\n"])
    failure = r.closed.failure
    assert isinstance(failure, ProtocolFailure)
    assert "reply code changed from 250 to 251" in failure.reply.text


def test_overlong_line_without_line_end() -> None:
    c = client()
    assert pump(c, b"220 " + b"x" * 2044) == []  # exactly 2048 octets: still waiting
    events = pump(c, b"x")
    assert isinstance(events[-1], Closed) and isinstance(events[-1].failure, ProtocolFailure)
    assert "too long" in events[-1].failure.reply.text


def test_overlong_line_with_line_end() -> None:
    r = run(client(), [b"220 " + b"x" * 2045 + b"\r\n"])
    assert isinstance(r.closed.failure, ProtocolFailure)
    r = run(client(), [b"220 " + b"x" * 2044 + b"\r\n", EHLO_PLAIN, BYE])
    assert r.closed == Closed(None)


def test_line_limit_is_a_setting() -> None:
    r = run(client(max_line_length=600), [b"220 " + b"x" * 600 + b"\r\n"])
    assert isinstance(r.closed.failure, ProtocolFailure)


def test_too_many_lines_in_one_reply() -> None:
    r = run(client(max_reply_lines=3), [GREETING, b"250-mx\r\n250-A\r\n250 B\r\n", BYE])
    assert r.closed == Closed(None)
    r = run(client(max_reply_lines=3), [GREETING, b"250-mx\r\n250-A\r\n250-B\r\n250 C\r\n"])
    assert isinstance(r.closed.failure, ProtocolFailure)


def test_buffer_limit() -> None:
    c = client(max_buffer=4096, max_line_length=1024)
    c.receive_data(b"220-x\r\n" * 500)
    c.receive_data(b"220-x\r\n" * 500)
    events = pump(c)
    assert isinstance(events[-1], Closed) and isinstance(events[-1].failure, ProtocolFailure)


def test_unexpected_reply_classes() -> None:
    # 3yz to MAIL
    c = ready_client()
    c.send_message(ENV)
    events = pump(c, b"354 what\r\n")
    assert isinstance(events[-1], Closed) and isinstance(events[-1].failure, ProtocolFailure)
    # 2yz to DATA
    c = ready_client()
    c.send_message(ENV)
    events = pump(c, MAIL_OK + RCPT_OK + b"250 data ok?\r\n")
    assert isinstance(events[-1], Closed) and isinstance(events[-1].failure, ProtocolFailure)
    # 3yz greeting
    r = run(client(), [b"354 hi\r\n"])
    assert isinstance(r.closed.failure, ProtocolFailure)


def test_bare_lf_and_8bit_text_are_tolerated() -> None:
    server = [b"220 mx \xff\x00ok\n", b"250-mx\n250 PIPELINING\n", b"250 ok\n" * 2 + b"354 go\n"]
    server += [b"250 2.0.0 queued\n", b"221 bye\n"]
    r = run(client(), server, [ENV])
    assert statuses(r.results[0]) == [("bob@b.test", DELIVERED, 250)]
    assert r.closed == Closed(None)


def test_reply_without_text_and_enhanced_code_parsing() -> None:
    c = ready_client()
    c.send_message(ENV2)
    replies = (
        b"250\r\n"  # no text at all
        b"550-5.1.1 first\r\n550-5.1.1 second\r\n550 third\r\n"  # code on some lines
        b"450 5.1.1 class mismatch\r\n"  # not an enhanced code for a 4yz reply
        b"550 5.1.1\r\n"  # only the code
        b"354 go\r\n"
    )
    assert pump(c, replies) == []  # no accepted recipient: lone dot
    result = only_result(pump(c, b"250-\r\n250 \r\n"))
    replies_seen = [r.reply for r in result.recipients]
    assert replies_seen[0] == Reply(550, "5.1.1", "first\nsecond\nthird")
    assert replies_seen[1] == Reply(450, None, "5.1.1 class mismatch")
    assert replies_seen[2] == Reply(550, "5.1.1", "")
    assert result.recipients[1].enhanced_status == "4.0.0"
    assert diagnostic(replies_seen[2]) == "550 5.1.1"
    assert diagnostic(Reply(250, None, "")) == "250"


# --------------------------------------------------------------------------- splitting
def _session_script() -> list[bytes]:
    return [
        b"220-mx.b.test ESMTP\r\n220-second line\r\n220 third line\r\n",
        EHLO_FULL,
        MAIL_OK + RCPT_OK + b"550-5.1.1 unknown\r\n550 5.1.1 user\r\n" + RCPT_OK + GO_AHEAD,
        b"250-2.0.0 accepted\r\n250 2.0.0 as 1\r\n",
        MAIL_OK + b"550 5.1.1 no\r\n" + RCPT_OK + RCPT_OK + GO_AHEAD,
        QUEUED,
        BYE,
    ]


def _two_messages() -> list[Envelope]:
    return [ENV2, Envelope("x@a.test", ["p@b.test", "q@b.test", "r@b.test"], size=9)]


def test_replies_split_at_every_byte() -> None:
    script = _session_script()
    whole = run(client(), script, _two_messages())
    assert len(whole.results) == 2 and whole.closed == Closed(None)
    by_byte = run(client(), split_bytes(b"".join(script)), _two_messages())
    assert by_byte == whole
    one_chunk = run(client(), [b"".join(script)], _two_messages())
    assert one_chunk == whole


def test_replies_split_at_each_single_position() -> None:
    data = b"".join(_session_script())
    whole = run(client(), [data], _two_messages())
    for cut in range(1, len(data)):
        assert run(client(), [data[:cut], data[cut:]], _two_messages()) == whole


@settings(deadline=None, max_examples=150)
@given(st.lists(st.integers(min_value=0, max_value=600), max_size=40))
def test_replies_split_anywhere(cuts: list[int]) -> None:
    data = b"".join(_session_script())
    points = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    chunks = [data[a:b] for a, b in itertools.pairwise(points)]
    whole = run(client(), [data], _two_messages())
    assert run(client(), chunks, _two_messages()) == whole


# --------------------------------------------------------------------------- lost connection
def test_connection_lost_before_the_dot() -> None:
    c = ready_client()
    c.send_message(ENV2)
    c.data_to_send()
    pump(c, MAIL_OK + RCPT_OK + b"550 no\r\n")
    events = pump(c, b"")
    result = only_result(events)
    assert statuses(result) == [
        ("bob@b.test", TEMPORARY, 451),
        ("carol@b.test", PERMANENT, 550),
        ("dave@b.test", TEMPORARY, 451),
    ]
    assert result.recipients[0].reply == CONNECTION_LOST.with_text(
        "Connection lost: connection closed by the server"
    )
    assert not result.lost_after_dot
    closed = events[-1]
    assert isinstance(closed, Closed) and isinstance(closed.failure, ConnectionLost)


def test_connection_lost_while_streaming_the_body() -> None:
    c = ready_client()
    c.send_message(ENV)
    assert pump(c, MAIL_OK + RCPT_OK + GO_AHEAD) == [SendBody(ENV)]
    c.encode_data(b"partial")
    with pytest.raises(SmtpClientUsageError):
        c.next_event()
    c.connection_lost("write failed")
    events = pump(c)
    result = only_result(events)
    assert not result.lost_after_dot
    assert result.recipients[0].reply.text == "Connection lost: write failed"


def test_early_reply_during_body_then_close() -> None:
    c = ready_client()
    c.send_message(ENV)
    pump(c, MAIL_OK + RCPT_OK + GO_AHEAD)
    c.receive_data(b"554 5.3.4 too big\r\n")
    c.receive_data(b"")
    events = pump(c)
    assert isinstance(events[-1], Closed) and isinstance(events[-1].failure, ProtocolFailure)
    c = ready_client()
    c.send_message(ENV)
    pump(c, MAIL_OK + RCPT_OK + GO_AHEAD)
    c.receive_data(b"421 4.3.0 bye\r\n")
    c.connection_lost()
    events = pump(c)
    assert isinstance(events[-1], Closed) and isinstance(events[-1].failure, ServerClosed)


def test_connection_lost_after_the_dot() -> None:
    c = ready_client()
    c.send_message(ENV2)
    pump(c, MAIL_OK + RCPT_OK + b"550 5.1.1 no\r\n" + RCPT_OK + GO_AHEAD)
    c.encode_data(BODY)
    c.end_data()
    events = pump(c, b"")
    result = only_result(events)
    assert result.lost_after_dot
    assert statuses(result) == [
        ("bob@b.test", TEMPORARY, 451),
        ("carol@b.test", PERMANENT, 550),
        ("dave@b.test", TEMPORARY, 451),
    ]
    assert result.recipients[0].reply == LOST_AFTER_DOT
    assert not result.recipients[0].remote
    closed = events[-1]
    assert isinstance(closed, Closed) and isinstance(closed.failure, ConnectionLost)


def test_connection_lost_after_dot_with_partial_reply() -> None:
    r = run(client(), [GREETING, EHLO_FULL, MAIL_OK + RCPT_OK + GO_AHEAD, b"250 2.0"], [ENV])
    assert r.results[0].lost_after_dot


def test_connection_lost_during_setup() -> None:
    r = run(client(), [b"220-partial\r\n"])
    assert isinstance(r.closed.failure, ConnectionLost)
    r = run(client(), [])
    assert isinstance(r.closed.failure, ConnectionLost)


def test_eof_while_quitting_after_refusal() -> None:
    r = run(client(), [b"554 no service\r\n"])
    assert isinstance(r.closed.failure, ServerRefused)


def test_feeding_after_eof_or_close_is_ignored() -> None:
    c = ready_client()
    c.receive_data(b"")
    c.receive_data(b"250 late\r\n")
    c.connection_lost("again")
    events = pump(c)
    assert len(events) == 1 and isinstance(events[0], Closed)
    assert isinstance(events[0].failure, ConnectionLost)
    assert events[0].failure.reply.text.endswith("connection closed by the server")
    c.connection_lost("after close")
    assert c.next_event() is CLOSED


# --------------------------------------------------------------------------- several messages
def test_several_messages_on_one_connection_with_rset() -> None:
    env_fail = Envelope("a@a.test", ["x@b.test"])
    server = [
        GREETING,
        EHLO_PLAIN,
        MAIL_OK,
        RCPT_OK,
        GO_AHEAD,
        QUEUED,  # message 1 delivered
        MAIL_OK,
        b"550 5.1.1 no\r\n",  # message 2: no recipient
        OK,  # RSET
        MAIL_OK,
        RCPT_OK,
        GO_AHEAD,
        QUEUED,  # message 3
        BYE,
    ]
    r = run(client(), server, [ENV, env_fail, ENV])
    assert r.sent == (
        b"EHLO client.test\r\n"
        b"MAIL FROM:<alice@a.test>\r\nRCPT TO:<bob@b.test>\r\nDATA\r\n" + BODY + b".\r\n"
        b"MAIL FROM:<a@a.test>\r\nRCPT TO:<x@b.test>\r\n"
        b"RSET\r\n"
        b"MAIL FROM:<alice@a.test>\r\nRCPT TO:<bob@b.test>\r\nDATA\r\n" + BODY + b".\r\n"
        b"QUIT\r\n"
    )
    assert [statuses(m)[0][1] for m in r.results] == [DELIVERED, PERMANENT, DELIVERED]
    assert sum(isinstance(e, ReadyForMessage) for e in r.events) == 4
    assert r.closed == Closed(None)


# --------------------------------------------------------------------------- API misuse
def test_usage_errors() -> None:
    c = client()
    with pytest.raises(SmtpClientUsageError):
        c.send_message(ENV)
    with pytest.raises(SmtpClientUsageError):
        c.quit()
    with pytest.raises(SmtpClientUsageError):
        c.encode_data(b"x")
    with pytest.raises(SmtpClientUsageError):
        c.end_data()
    with pytest.raises(SmtpClientUsageError):
        c.tls_established()
    with pytest.raises(SmtpClientUsageError):
        c.tls_failed()
    assert waiting(c) is Waiting.GREETING
    c = ready_client()
    c.quit()
    with pytest.raises(SmtpClientUsageError):
        c.quit()
    # ReadyForMessage queued but not yet returned: not ready yet
    c = client()
    assert pump(c, GREETING) == []
    c.receive_data(EHLO_FULL)  # not parsed until next_event()
    with pytest.raises(SmtpClientUsageError):
        c.send_message(ENV)


def test_ready_event_must_be_taken_before_sending() -> None:
    c = ready_client()
    c.send_message(Envelope("a@a.test", ["b@b.test"], size=10**7))  # refused locally
    with pytest.raises(SmtpClientUsageError):
        c.send_message(ENV)
    events = pump(c)
    assert isinstance(events[-1], ReadyForMessage)
    c.send_message(ENV)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"helo_name": ""},
        {"helo_name": "two words"},
        {"helo_name": "bad\x00"},
        {"helo_name": "ünicode.test"},
        {"tls_policy": "maybe"},
        {"max_line_length": 100},
        {"max_reply_lines": 0},
        {"max_buffer": 600},
    ],
)
def test_constructor_validation(kwargs: dict[str, object]) -> None:
    kwargs.setdefault("helo_name", "client.test")
    with pytest.raises(ValueError):
        SmtpClient(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "make",
    [
        lambda: Envelope("a@a.test", []),
        lambda: Envelope("a@a.test", "b@b.test"),
        lambda: Envelope("a b@a.test", ["b@b.test"]),
        lambda: Envelope("a@a.test", ["b@b.test>"]),
        lambda: Envelope("a@a.test", ["b@b.test\r\nRSET"]),
        lambda: Envelope("a@a.test", [""]),
        lambda: Envelope("a@a.test", ["b@b.test"], size=-1),
        lambda: Envelope("a@a.test", ["b@b.test"], ret="ALL"),  # type: ignore[arg-type]
        lambda: Envelope("a@a.test", ["b@b.test"], envid=""),
        lambda: Envelope("a@a.test", ["b@b.test"], envid="x" * 101),
        lambda: Envelope("a@a.test", ["b@b.test"], envid="é"),
        lambda: Envelope("a@a.test", ["b@b.test"], envid="a\tb"),
        lambda: Recipient("b@b.test", notify=("SOMETIMES",)),
        lambda: Recipient("b@b.test", notify=("NEVER", "DELAY")),
        lambda: Recipient("b@b.test", notify=("DELAY", "delay")),
        lambda: Recipient("b@b.test", orcpt=("rfc 822", "b@b.test")),
        lambda: Recipient("b@b.test", orcpt=("rfc822", "")),
    ],
)
def test_envelope_validation(make: object) -> None:
    with pytest.raises(ValueError):
        make()  # type: ignore[operator]


def test_valid_unusual_addresses() -> None:
    env = Envelope("", ['"john doe"@a.test', "Postmaster", "x@[192.0.2.1]"])
    assert [r.address for r in env.recipients] == [
        '"john doe"@a.test',
        "Postmaster",
        "x@[192.0.2.1]",
    ]
    c = ready_client()
    c.send_message(env)
    assert c.data_to_send() == (
        b'MAIL FROM:<>\r\nRCPT TO:<"john doe"@a.test>\r\nRCPT TO:<Postmaster>\r\n'
        b"RCPT TO:<x@[192.0.2.1]>\r\nDATA\r\n"
    )


def test_sentinel_repr() -> None:
    assert repr(NEED_DATA) == "NEED_DATA" and repr(CLOSED) == "CLOSED"


# --------------------------------------------------------------------------- robustness
@settings(deadline=None, max_examples=300)
@given(st.binary(max_size=400), st.booleans())
def test_arbitrary_server_bytes_never_raise(data: bytes, pipelining: bool) -> None:
    ehlo = EHLO_FULL if pipelining else EHLO_PLAIN
    r = run(client(), [GREETING, ehlo, data], [ENV2, ENV])
    assert isinstance(r.events[-1], Closed)
    for result in r.results:
        assert len(result.recipients) == len(result.envelope.recipients)


@settings(deadline=None, max_examples=200)
@given(
    st.lists(
        st.sampled_from(
            [b"250 ok\r\n", b"550 5.1.1 no\r\n", b"451 later\r\n", b"354 go\r\n", b"421 bye\r\n"]
        ),
        max_size=20,
    )
)
def test_arbitrary_reply_sequences_resolve_every_recipient(replies: list[bytes]) -> None:
    for ehlo in (EHLO_FULL, EHLO_PLAIN):
        r = run(client(), [GREETING, ehlo, *replies], [ENV2, ENV])
        assert isinstance(r.events[-1], Closed)
        for result in r.results:
            assert len(result.recipients) == len(result.envelope.recipients)


def test_core_is_sans_io() -> None:
    """The client imports only pure modules: no sockets, asyncio, threads, time or storage."""
    allowed = {"__future__", "collections", "dataclasses", "enum", "re", "typing", "idna"}
    tree = ast.parse(Path(client_module.__file__).read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [("." * node.level) + (node.module or "")]
        else:
            continue
        for name in names:
            assert name.split(".")[0] in allowed or name == ".replies", name
