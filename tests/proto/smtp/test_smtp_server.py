"""Byte-level tests of the sans-IO SMTP server core (letterbird.proto.smtp.server)."""

from __future__ import annotations

import ast
import base64
import itertools
import re
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from letterbird.proto.sasl import Credentials
from letterbird.proto.smtp import (
    CLOSED,
    NEED_DATA,
    AuthRequested,
    ConnectionClosing,
    DataAborted,
    DataChunk,
    DataComplete,
    Event,
    Hello,
    Mailbox,
    MailFrom,
    RcptTo,
    Reply,
    SmtpServerConfig,
    SmtpServerConnection,
    StartTlsRequested,
    replies,
)
from letterbird.proto.smtp.params import OriginalRecipient

GREETING = b"220 mx.test ESMTP Letterbird\r\n"
EHLO_REPLY = (
    b"250-mx.test\r\n250-PIPELINING\r\n250-SIZE 52428800\r\n250-8BITMIME\r\n"
    b"250-SMTPUTF8\r\n250-ENHANCEDSTATUSCODES\r\n250 CHUNKING\r\n"
)
ENVELOPE = b"EHLO client.test\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\n"
ENVELOPE_REPLIES = EHLO_REPLY + b"250 2.1.0 Sender OK\r\n250 2.1.5 Recipient OK\r\n"


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


class Peer:
    """Plays the asyncio edge: feeds bytes, answers events with a policy, records events."""

    def __init__(self, **config: object) -> None:
        config.setdefault("hostname", "mx.test")
        self.conn = SmtpServerConnection(SmtpServerConfig(**config))  # type: ignore[arg-type]
        assert self.conn.data_to_send() == GREETING
        self.events: list[Event] = []
        self.hello: Callable[[Hello], Reply | None] = lambda ev: None
        self.mail: Callable[[MailFrom], Reply] = lambda ev: replies.SENDER_OK
        self.rcpt: Callable[[RcptTo], Reply] = lambda ev: replies.RECIPIENT_OK
        self.data: Callable[[DataComplete], Reply] = lambda ev: replies.MESSAGE_ACCEPTED
        self.starttls: Reply = replies.TLS_READY
        self.auth: Callable[[AuthRequested], str | Reply] = lambda ev: ev.credentials.username

    def send(self, data: bytes) -> bytes:
        """Feed ``data`` and run the event loop until NEED_DATA or closing; return output."""
        self.conn.receive_data(data)
        return self.run()

    def run(self) -> bytes:
        out = b""
        while True:
            event = self.conn.next_event()
            if event is NEED_DATA or event is CLOSED:
                return out + self.conn.data_to_send()
            self.events.append(event)
            if isinstance(event, Hello):
                verdict = self.hello(event)
                if verdict is None:
                    self.conn.accept_hello()
                else:
                    self.conn.reply(verdict)
            elif isinstance(event, MailFrom):
                self.conn.reply(self.mail(event))
            elif isinstance(event, RcptTo):
                self.conn.reply(self.rcpt(event))
            elif isinstance(event, DataComplete):
                self.conn.reply(self.data(event))
            elif isinstance(event, StartTlsRequested):
                self.conn.reply(self.starttls)
            elif isinstance(event, AuthRequested):
                result = self.auth(event)
                if isinstance(result, Reply):
                    self.conn.auth_failed(result)
                else:
                    self.conn.auth_succeeded(result)
            elif isinstance(event, ConnectionClosing):
                out += self.conn.data_to_send()

    def body(self) -> bytes:
        return b"".join(e.data for e in self.events if isinstance(e, DataChunk))

    def of(self, kind: type[Event]) -> list[Event]:
        return [e for e in self.events if isinstance(e, kind)]


def ready(**config: object) -> Peer:
    peer = Peer(**config)
    assert peer.send(ENVELOPE).endswith(b"\r\n250 2.1.0 Sender OK\r\n250 2.1.5 Recipient OK\r\n")
    return peer


# ----------------------------------------------------------------------------- greeting, EHLO
def test_greeting_is_queued_at_once() -> None:
    conn = SmtpServerConnection(SmtpServerConfig(hostname="h.example", greeting="ready"))
    assert conn.data_to_send() == b"220 h.example ready\r\n"
    assert conn.data_to_send() == b""
    assert conn.next_event() is NEED_DATA


def test_ehlo_default_keywords() -> None:
    peer = Peer()
    assert peer.send(b"EHLO client.test\r\n") == EHLO_REPLY
    assert peer.events == [Hello("client.test", True)]
    assert peer.conn.helo_name == "client.test" and peer.conn.extended


def test_ehlo_all_keywords() -> None:
    peer = Peer(
        tls_available=True,
        auth_mechanisms=("PLAIN", "LOGIN"),
        auth_requires_tls=False,
        dsn_enabled=True,
        max_message_size=1000,
    )
    out = peer.send(b"ehlo [192.0.2.1]\r\n")
    assert out.endswith(
        b"250-SIZE 1000\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n250-ENHANCEDSTATUSCODES\r\n"
        b"250-CHUNKING\r\n250-STARTTLS\r\n250-AUTH PLAIN LOGIN\r\n250 DSN\r\n"
    )


def test_ehlo_minimal_keywords() -> None:
    peer = Peer(smtputf8=False, chunking=False, tls_available=True, tls_active=True)
    assert peer.send(b"EHLO c\r\n") == (
        b"250-mx.test\r\n250-PIPELINING\r\n250-SIZE 52428800\r\n250-8BITMIME\r\n"
        b"250 ENHANCEDSTATUSCODES\r\n"
    )


def test_auth_not_advertised_before_tls() -> None:
    peer = Peer(auth_mechanisms=("PLAIN",), tls_available=True)
    out = peer.send(b"EHLO c\r\n")
    assert b"AUTH" not in out and b"STARTTLS" in out
    peer = Peer(auth_mechanisms=("PLAIN",), tls_active=True)
    assert b"250 AUTH PLAIN\r\n" in peer.send(b"EHLO c\r\n")


def test_helo() -> None:
    peer = Peer()
    assert peer.send(b"HELO client.test\r\n") == b"250 mx.test\r\n"
    assert peer.events == [Hello("client.test", False)]
    assert not peer.conn.extended


@pytest.mark.parametrize(
    ("line", "reply"),
    [
        (b"EHLO\r\n", b"501 5.5.4 Syntax: EHLO hostname\r\n"),
        (b"EHLO   \r\n", b"501 5.5.4 Syntax: EHLO hostname\r\n"),
        (b"HELO\r\n", b"501 5.5.4 Syntax: HELO hostname\r\n"),
        (b"HELO a\tb\r\n", b"501 5.5.4 Syntax: HELO hostname\r\n"),
        (b"EHLO a b\r\n", b"501 5.5.4 Syntax: EHLO hostname\r\n"),
    ],
)
def test_hello_syntax(line: bytes, reply: bytes) -> None:
    peer = Peer()
    assert peer.send(line) == reply
    assert peer.events == []


def test_edge_rejects_hello() -> None:
    peer = Peer()
    peer.hello = lambda ev: replies.POLICY_REJECTED
    assert peer.send(b"EHLO bad\r\n") == b"550 5.7.1 Rejected by policy\r\n"
    assert peer.conn.helo_name is None
    assert peer.send(b"MAIL FROM:<a@b>\r\n") == b"503 5.5.1 Send EHLO or HELO first\r\n"


def test_ehlo_resets_transaction() -> None:
    peer = ready()
    assert peer.conn.envelope is not None
    assert peer.send(b"EHLO again\r\n") == EHLO_REPLY.replace(b"250-mx.test", b"250-mx.test")
    assert peer.conn.envelope is None
    assert peer.send(b"DATA\r\n") == b"503 5.5.1 Need MAIL command\r\n"


# ----------------------------------------------------------------------------- MAIL
def test_mail_before_hello() -> None:
    peer = Peer()
    assert peer.send(b"MAIL FROM:<a@b>\r\n") == b"503 5.5.1 Send EHLO or HELO first\r\n"


def test_mail_null_path_and_params() -> None:
    peer = Peer()
    peer.send(b"EHLO c\r\n")
    out = peer.send(b"mail from:<> SIZE=100 BODY=8BITMIME AUTH=<>\r\n")
    assert out == b"250 2.1.0 Sender OK\r\n"
    event = peer.of(MailFrom)[0]
    assert isinstance(event, MailFrom)
    assert event.address is None
    assert (event.params.size, event.params.body) == (100, "8BITMIME")


def test_mail_tolerates_space_after_colon() -> None:
    peer = Peer()
    peer.send(b"EHLO c\r\n")
    assert peer.send(b"MAIL FROM: <a@b.test>\r\n") == b"250 2.1.0 Sender OK\r\n"
    event = peer.of(MailFrom)[0]
    assert isinstance(event, MailFrom) and event.address == Mailbox("a", "b.test")


def test_nested_mail() -> None:
    peer = ready()
    assert peer.send(b"MAIL FROM:<c@d>\r\n") == b"503 5.5.1 Sender already specified\r\n"


@pytest.mark.parametrize(
    ("line", "reply"),
    [
        (b"MAIL\r\n", b"501 5.5.4 Syntax: MAIL FROM:<address> [parameters]\r\n"),
        (b"MAIL TO:<a@b>\r\n", b"501 5.5.4 Syntax: MAIL FROM:<address> [parameters]\r\n"),
        (b"MAIL FROM:a@b\r\n", b"501 5.1.7 Bad sender address syntax\r\n"),
        (b"MAIL FROM:<a@b\r\n", b"501 5.1.7 Bad sender address syntax\r\n"),
        (b"MAIL FROM:<a@-b>\r\n", b"501 5.1.7 Bad sender address syntax\r\n"),
        (b"MAIL FROM:<Postmaster>\r\n", b"501 5.1.7 Bad sender address syntax\r\n"),
        (b"MAIL FROM:<a@b>SIZE=1\r\n", b"501 5.1.7 Bad sender address syntax\r\n"),
        (b"MAIL FROM:<a@b> SIZE=99999999999\r\n", b"552 5.3.4 Message size exceeds"),
        (b"MAIL FROM:<a@b> BODY=BINARYMIME\r\n", b"555 5.5.4 BODY=BINARYMIME"),
        (b"MAIL FROM:<a@b> X-FOO\r\n", b"555 5.5.4 Parameter not recognized"),
        (b"MAIL FROM:<a@b> RET=FULL\r\n", b"555 5.5.4 Parameter not recognized"),
        (b"MAIL FROM:<a@b> ENVID=x\r\n", b"555 5.5.4 Parameter not recognized"),
        (b"MAIL FROM:<a@b> SIZE=x\r\n", b"501 5.5.4 Bad SIZE value"),
        ("MAIL FROM:<jörg@b>\r\n".encode(), b"553 5.6.7 Non-ASCII addresses"),
    ],
)
def test_mail_errors(line: bytes, reply: bytes) -> None:
    peer = Peer()
    peer.send(b"EHLO c\r\n")
    assert peer.send(line).startswith(reply)
    assert peer.of(MailFrom) == []
    assert peer.conn.envelope is None


def test_mail_params_refused_after_helo() -> None:
    peer = Peer()
    peer.send(b"HELO c\r\n")
    assert peer.send(b"MAIL FROM:<a@b> SIZE=10\r\n").startswith(b"555 5.5.4")
    assert peer.send(b"MAIL FROM:<a@b>\r\n") == b"250 2.1.0 Sender OK\r\n"
    assert peer.send(b"RCPT TO:<c@d> NOTIFY=NEVER\r\n").startswith(b"555 5.5.4")


def test_dsn_parameters_when_enabled() -> None:
    peer = Peer(dsn_enabled=True)
    peer.send(b"EHLO c\r\n")
    peer.send(b"MAIL FROM:<a@b> RET=HDRS ENVID=id+2B1\r\n")
    peer.send(b"RCPT TO:<c@d> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;c+2Bx@d\r\n")
    mail, rcpt = peer.of(MailFrom)[0], peer.of(RcptTo)[0]
    assert isinstance(mail, MailFrom) and isinstance(rcpt, RcptTo)
    assert (mail.params.ret, mail.params.envid) == ("HDRS", "id+1")
    assert rcpt.params.notify == ("SUCCESS", "FAILURE")
    assert rcpt.params.orcpt == OriginalRecipient("rfc822", "c+x@d")
    assert peer.send(b"RCPT TO:<e@f> NOTIFY=NEVER,DELAY\r\n").startswith(b"501 5.5.4")


def test_edge_rejects_mail() -> None:
    peer = Peer()
    peer.mail = lambda ev: replies.AUTH_REQUIRED
    peer.send(b"EHLO c\r\n")
    assert peer.send(b"MAIL FROM:<a@b>\r\n") == b"530 5.7.0 Authentication required\r\n"
    assert peer.conn.envelope is None
    assert peer.send(b"RCPT TO:<c@d>\r\n") == b"503 5.5.1 Need MAIL command\r\n"


# ----------------------------------------------------------------------------- RCPT
def test_rcpt_before_mail() -> None:
    peer = Peer()
    peer.send(b"EHLO c\r\n")
    assert peer.send(b"RCPT TO:<a@b>\r\n") == b"503 5.5.1 Need MAIL command\r\n"


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        (b"<Postmaster>", Mailbox("Postmaster", "")),
        (b"<postMASTER>", Mailbox("postMASTER", "")),
        (b"<@r1.test,@r2.test:u@d.test>", Mailbox("u", "d.test")),
        (b"<u@[192.0.2.1]>", Mailbox("u", "[192.0.2.1]")),
        (b"<u@[IPv6:2001:db8::1]>", Mailbox("u", "[IPv6:2001:db8::1]")),
        (b'<"odd \\" name"@d.test>', Mailbox('"odd \\" name"', "d.test")),
        (b"<User.Name@D.Test>", Mailbox("User.Name", "D.Test")),
    ],
)
def test_rcpt_addresses(path: bytes, expected: Mailbox) -> None:
    peer = Peer()
    peer.send(b"EHLO c\r\nMAIL FROM:<a@b>\r\n")
    assert peer.send(b"RCPT TO:" + path + b"\r\n") == b"250 2.1.5 Recipient OK\r\n"
    event = peer.of(RcptTo)[0]
    assert isinstance(event, RcptTo) and event.address == expected


@pytest.mark.parametrize(
    ("line", "reply"),
    [
        (b"RCPT\r\n", b"501 5.5.4 Syntax: RCPT TO:<address> [parameters]\r\n"),
        (b"RCPT FROM:<a@b>\r\n", b"501 5.5.4 Syntax: RCPT TO:<address> [parameters]\r\n"),
        (b"RCPT TO:<>\r\n", b"501 5.1.3 Bad recipient address syntax\r\n"),
        (b"RCPT TO:<a@b\r\n", b"501 5.1.3 Bad recipient address syntax\r\n"),
        (b"RCPT TO:<a..b@c>\r\n", b"501 5.1.3 Bad recipient address syntax\r\n"),
        (b"RCPT TO:<a@b> NOTIFY=NEVER\r\n", b"555 5.5.4 Parameter not recognized"),
        ("RCPT TO:<ü@b>\r\n".encode(), b"553 5.6.7 Non-ASCII"),
        ("RCPT TO:<u@bü.test>\r\n".encode(), b"553 5.6.7 Non-ASCII"),
    ],
)
def test_rcpt_errors(line: bytes, reply: bytes) -> None:
    peer = Peer()
    peer.send(b"EHLO c\r\nMAIL FROM:<a@b>\r\n")
    assert peer.send(line).startswith(reply)
    assert peer.of(RcptTo) == []


def test_smtputf8_addresses() -> None:
    peer = Peer()
    peer.send(b"EHLO c\r\n")
    assert peer.send("MAIL FROM:<jörg@bücher.test> SMTPUTF8\r\n".encode()).startswith(b"250")
    assert peer.send("RCPT TO:<用户@例子.测试>\r\n".encode()).startswith(b"250")
    mail, rcpt = peer.of(MailFrom)[0], peer.of(RcptTo)[0]
    assert isinstance(mail, MailFrom) and isinstance(rcpt, RcptTo)
    assert mail.params.smtputf8 and mail.address == Mailbox("jörg", "bücher.test")
    assert rcpt.address == Mailbox("用户", "例子.测试")


def test_smtputf8_disabled() -> None:
    peer = Peer(smtputf8=False)
    peer.send(b"EHLO c\r\n")
    assert peer.send(b"MAIL FROM:<a@b> SMTPUTF8\r\n").startswith(b"555 5.5.4")


def test_too_many_recipients() -> None:
    peer = Peer(max_recipients=2)
    peer.send(b"EHLO c\r\nMAIL FROM:<a@b>\r\n")
    out = peer.send(b"RCPT TO:<r1@d>\r\nRCPT TO:<r2@d>\r\nRCPT TO:<r3@d>\r\n")
    assert out == (
        b"250 2.1.5 Recipient OK\r\n250 2.1.5 Recipient OK\r\n452 4.5.3 Too many recipients\r\n"
    )
    assert len(peer.of(RcptTo)) == 2


def test_rejected_recipients_do_not_count() -> None:
    peer = Peer(max_recipients=1)
    peer.rcpt = lambda ev: replies.NO_SUCH_USER if ev.address.local_part == "x" else replies.OK
    peer.send(b"EHLO c\r\nMAIL FROM:<a@b>\r\n")
    out = peer.send(b"RCPT TO:<x@d>\r\nRCPT TO:<y@d>\r\nRCPT TO:<z@d>\r\n")
    assert out == b"550 5.1.1 No such user\r\n250 2.0.0 OK\r\n452 4.5.3 Too many recipients\r\n"
    envelope = peer.conn.envelope
    assert envelope is not None
    assert [r.address.local_part for r in envelope.recipients] == ["y"]


# ----------------------------------------------------------------------------- DATA
def test_data_sequence_errors() -> None:
    peer = Peer()
    peer.send(b"EHLO c\r\n")
    assert peer.send(b"DATA\r\n") == b"503 5.5.1 Need MAIL command\r\n"
    peer.rcpt = lambda ev: replies.NO_SUCH_USER
    peer.send(b"MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\n")
    assert peer.send(b"DATA\r\n") == b"554 5.5.1 No valid recipients\r\n"
    assert peer.send(b"DATA now\r\n") == b"501 5.5.4 Syntax error in parameters or arguments\r\n"


def test_data_transaction() -> None:
    peer = ready()
    out = peer.send(b"DATA\r\nSubject: hi\r\n\r\nbody\r\n.\r\n")
    assert out == b"354 End data with <CR><LF>.<CR><LF>\r\n250 2.0.0 OK: message accepted\r\n"
    assert peer.body() == b"Subject: hi\r\n\r\nbody\r\n"
    complete = peer.of(DataComplete)[0]
    assert isinstance(complete, DataComplete)
    assert complete.size == len(peer.body()) and complete.received_count == 0
    assert complete.envelope.mail_from.address == Mailbox("a", "x.test")
    assert [r.address for r in complete.envelope.recipients] == [Mailbox("b", "y.test")]
    # The transaction is over: a new one is needed.
    assert peer.conn.envelope is None
    assert peer.send(b"RCPT TO:<c@d>\r\n") == b"503 5.5.1 Need MAIL command\r\n"


def test_empty_message() -> None:
    peer = ready()
    assert peer.send(b"DATA\r\n.\r\n").endswith(b"250 2.0.0 OK: message accepted\r\n")
    assert peer.body() == b""
    complete = peer.of(DataComplete)[0]
    assert isinstance(complete, DataComplete) and complete.size == 0


def test_dot_unstuffing() -> None:
    peer = ready()
    peer.send(b"DATA\r\n..\r\n...x\r\n.y\r\na.b\r\n\r\n..\r\n.\r\n")
    assert peer.body() == b".\r\n..x\r\ny\r\na.b\r\n\r\n.\r\n"


@pytest.mark.parametrize(
    ("payload", "body"),
    [
        (b"a\n.\nb\r\n", b"a\r\n\r\nb\r\n"),
        (b"a\n.\r\nb\r\n", b"a\r\n\r\nb\r\n"),
        (b"a\r\n.\nb\r\n", b"a\r\n\r\nb\r\n"),
        (b"a\r.\rb\r\n", b"a\r\n\r\nb\r\n"),
        (b"a\r\n.\rb\r\n", b"a\r\n\r\nb\r\n"),
        (b"a\r\n.\r\r\nb\r\n", b"a\r\n\r\n\r\nb\r\n"),
        (b"a\r\n..\r\nb\r\n", b"a\r\n.\r\nb\r\n"),
        (b"a\r\n. \r\nb\r\n", b"a\r\n \r\nb\r\n"),
    ],
)
def test_smuggling_sequences_do_not_end_data(payload: bytes, body: bytes) -> None:
    peer = ready()
    smuggled = b"MAIL FROM:<evil@x>\r\nRCPT TO:<victim@y>\r\nDATA\r\nforged\r\n"
    out = peer.send(b"DATA\r\n" + payload + smuggled + b".\r\n")
    mails = peer.of(MailFrom)
    assert out == b"354 End data with <CR><LF>.<CR><LF>\r\n250 2.0.0 OK: message accepted\r\n"
    assert peer.body() == body + smuggled
    assert len(mails) == 1  # only the real MAIL FROM, nothing smuggled
    assert len(peer.of(DataComplete)) == 1


def test_real_crlf_dot_crlf_after_bare_cr_ends_data() -> None:
    # "a" CR, then CRLF "." CRLF: the octets CRLF.CRLF are there, so data ends (as anywhere).
    peer = ready()
    out = peer.send(b"DATA\r\na\r\r\n.\r\nNOOP\r\n")
    assert out.endswith(b"250 2.0.0 OK: message accepted\r\n250 2.0.0 OK\r\n")
    assert peer.body() == b"a\r\n\r\n"


def test_bare_lf_and_cr_are_normalised() -> None:
    peer = ready()
    peer.send(b"DATA\r\nA: 1\nB: 2\r\r\nbody\rmore\n\n\r\n.\r\n")
    assert peer.body() == b"A: 1\r\nB: 2\r\n\r\nbody\r\nmore\r\n\r\n\r\n"
    complete = peer.of(DataComplete)[0]
    assert isinstance(complete, DataComplete) and complete.size == len(peer.body())


def test_data_end_needs_crlf_before_dot() -> None:
    peer = ready()
    assert peer.send(b"DATA\r\nline\n.\r\n") == b"354 End data with <CR><LF>.<CR><LF>\r\n"
    assert peer.of(DataComplete) == []
    assert peer.send(b".\r\n").startswith(b"250")
    assert peer.body() == b"line\r\n\r\n"


def test_data_is_streamed_in_bounded_chunks() -> None:
    peer = ready(data_chunk_size=1000)
    peer.send(b"DATA\r\n")
    body = b"".join(b"line %05d\r\n" % i for i in range(2000))
    peer.send(body + b".\r\n")
    chunks = [e for e in peer.events if isinstance(e, DataChunk)]
    assert len(chunks) > 20
    assert all(0 < len(c.data) <= 2000 for c in chunks)
    assert peer.body() == body


def test_received_headers_are_counted() -> None:
    peer = ready()
    peer.send(
        b"DATA\r\nReceived: a\r\nRECEIVED : b\r\nX-Received: c\r\n received: d\r\n"
        b"received:e\r\n\r\nReceived: in body\r\n.\r\n"
    )
    complete = peer.of(DataComplete)[0]
    assert isinstance(complete, DataComplete) and complete.received_count == 3


def test_mail_loop_is_refused() -> None:
    peer = ready(max_received_headers=2)
    out = peer.send(b"DATA\r\nReceived: 1\r\nReceived: 2\r\nReceived: 3\r\n\r\nx\r\n.\r\n")
    assert out.endswith(b"554 5.4.6 Too many Received header fields: mail loop\r\n")
    assert peer.of(DataComplete) == []
    assert peer.of(DataAborted) == [DataAborted(replies.MAIL_LOOP)]


def test_message_too_big_during_data() -> None:
    peer = ready(max_message_size=100)
    out = peer.send(b"DATA\r\n" + b"x" * 60 + b"\r\n" + b"y" * 60 + b"\r\n.\r\n")
    assert out.endswith(b"552 5.3.4 Message size exceeds fixed maximum message size\r\n")
    assert peer.of(DataAborted) == [DataAborted(replies.MESSAGE_TOO_BIG)]
    assert peer.of(DataComplete) == []
    # The session is still usable.
    assert peer.send(ENVELOPE[18:] + b"DATA\r\nsmall\r\n.\r\n").endswith(
        b"250 2.0.0 OK: message accepted\r\n"
    )


def test_message_exactly_at_size_limit() -> None:
    peer = ready(max_message_size=12)
    out = peer.send(b"DATA\r\n" + b"x" * 10 + b"\r\n.\r\n")
    assert out.endswith(b"250 2.0.0 OK: message accepted\r\n")
    peer.send(ENVELOPE[18:])
    assert peer.send(b"DATA\r\n" + b"x" * 11 + b"\r\n.\r\n").endswith(
        b"552 5.3.4 Message size exceeds fixed maximum message size\r\n"
    )


def test_size_limit_crossed_by_a_line_end() -> None:
    peer = ready(max_message_size=11)
    out = peer.send(b"DATA\r\n" + b"x" * 10 + b"\r\n.\r\n")
    assert out.endswith(b"552 5.3.4 Message size exceeds fixed maximum message size\r\n")


def test_size_limit_in_plain_body_run() -> None:
    peer = ready(max_message_size=1000)
    body = b"H: v\r\n\r\n" + b"x" * 98 + b"\r\n"
    out = peer.send(b"DATA\r\n" + body * 20 + b".\r\n")
    assert out.endswith(b"552 5.3.4 Message size exceeds fixed maximum message size\r\n")


def test_long_data_line_is_refused_at_the_end() -> None:
    peer = ready(max_data_line_length=50)
    payload = b"Subject: x\r\n\r\n" + b"a" * 51 + b"\r\nmore\r\n.\r\n"
    out = peer.send(b"DATA\r\n" + payload)
    assert out.endswith(b"554 5.6.0 Message rejected: line too long\r\n")
    assert peer.of(DataAborted) == [DataAborted(replies.DATA_LINE_TOO_LONG)]
    peer.events.clear()
    peer.send(ENVELOPE[18:] + b"DATA\r\nSubject: x\r\n\r\n" + b"a" * 50 + b"\r\n.\r\n")
    assert len(peer.of(DataComplete)) == 1


def test_long_line_in_plain_body_run() -> None:
    peer = ready(max_data_line_length=50)
    body = b"H: v\r\n\r\n" + (b"b" * 40 + b"\r\n") * 5 + b"c" * 60 + b"\r\n"
    out = peer.send(b"DATA\r\n" + body + b".\r\n")
    assert out.endswith(b"554 5.6.0 Message rejected: line too long\r\n")


def test_data_after_refusal_pipelined_commands_continue() -> None:
    peer = ready(max_message_size=10)
    out = peer.send(b"DATA\r\n" + b"z" * 20 + b"\r\n.\r\nNOOP\r\n")
    assert out.endswith(
        b"552 5.3.4 Message size exceeds fixed maximum message size\r\n250 2.0.0 OK\r\n"
    )


def test_storage_failure_reply() -> None:
    peer = ready()
    peer.data = lambda ev: replies.LOCAL_ERROR
    out = peer.send(b"DATA\r\nx\r\n.\r\n")
    assert out.endswith(b"451 4.3.0 Local error in processing, try again later\r\n")
    assert peer.conn.envelope is None


_MESSAGE = (
    b"Received: from a\r\nReceived: from b\nSubject: t\r\n\r\n"
    b"..dot\r\n.\n\r\nbare\rcr\nlf\r\n\r\n" + b"x" * 300 + b"\r\n.\r"
)


@settings(deadline=None, max_examples=200)
@given(st.lists(st.integers(0, len(_MESSAGE) + 5), max_size=12))
def test_data_split_anywhere_gives_same_output(cuts: list[int]) -> None:
    peer = ready(data_chunk_size=64)
    peer.send(b"DATA\r\n")
    stream = _MESSAGE + b"\r\n.\r\nNOOP\r\n"
    points = sorted({min(c, len(stream)) for c in cuts} | {0, len(stream)})
    out = b""
    for start, stop in itertools.pairwise(points):
        out += peer.send(stream[start:stop])
    assert peer.body() == (
        b"Received: from a\r\nReceived: from b\r\nSubject: t\r\n\r\n"
        b".dot\r\n\r\n\r\nbare\r\ncr\r\nlf\r\n\r\n" + b"x" * 300 + b"\r\n\r\n\r\n"
    )
    complete = peer.of(DataComplete)
    assert len(complete) == 1
    assert isinstance(complete[0], DataComplete) and complete[0].received_count == 2
    assert out.endswith(b"250 2.0.0 OK: message accepted\r\n250 2.0.0 OK\r\n")


@settings(deadline=None)
@given(st.binary(max_size=300), st.lists(st.integers(0, 310), max_size=6))
def test_data_never_ends_early_and_split_is_invisible(payload: bytes, cuts: list[int]) -> None:
    # Any payload without CRLF.CRLF gives the same body however it is split.
    payload = payload.replace(b"\r\n.\r\n", b"")
    whole = ready()
    whole.send(b"DATA\r\n" + payload)
    pieces = ready(data_chunk_size=7)
    pieces.send(b"DATA\r\n")
    points = sorted({min(c, len(payload)) for c in cuts} | {0, len(payload)})
    for start, stop in itertools.pairwise(points):
        pieces.send(payload[start:stop])
    if payload.startswith(b".\r\n"):
        return  # the very first line ends data (data starts after a CRLF)
    assert whole.of(DataComplete) == pieces.of(DataComplete) == []
    whole.send(b"\r\n.\r\n")
    pieces.send(b"\r\n.\r\n")
    assert whole.body() == pieces.body()
    assert b"\n" not in whole.body().replace(b"\r\n", b"")
    assert b"\r" not in whole.body().replace(b"\r\n", b"")


_LINE_RE = re.compile(b"([^\r\n]*)(\r\n|\r|\n|$)")


def reference_data(stream: bytes) -> bytes | None:
    """A slow, obviously-correct model of the DATA policy: the body, or None if no end."""
    out = b""
    genuine = True
    pos = 0
    while pos < len(stream):
        match = _LINE_RE.match(stream, pos)
        assert match is not None
        content, ending = match.group(1), match.group(2)
        pos = match.end()
        if content == b"." and ending == b"\r\n" and genuine:
            return out
        if content.startswith(b"."):
            content = content[1:]
        out += content + (b"\r\n" if ending else b"")
        genuine = ending == b"\r\n"
    return None


@settings(deadline=None, max_examples=300)
@given(
    st.lists(st.sampled_from([b"\r", b"\n", b".", b"x", b"\r\n", b"\r\n.", b"Received: "])).map(
        b"".join
    ),
    st.integers(1, 9),
)
def test_data_matches_reference_model(payload: bytes, chunk: int) -> None:
    stream = payload + b"\r\n.\r\n"
    expected = reference_data(stream)
    assert expected is not None
    peer = ready(data_chunk_size=chunk)
    peer.send(b"DATA\r\n")
    for index in range(0, len(stream), 3):
        peer.conn.receive_data(stream[index : index + 3])
        while True:
            event = peer.conn.next_event()
            if event is NEED_DATA or isinstance(event, DataComplete):
                break
            assert isinstance(event, DataChunk)
            peer.events.append(event)
        if isinstance(event, DataComplete):
            break
    assert isinstance(event, DataComplete)
    assert peer.body() == expected
    assert event.size == len(expected)


def test_first_refusal_wins() -> None:
    peer = ready(max_data_line_length=20, max_received_headers=1)
    long_header = b"X-Long: " + b"v" * 30 + b"\r\n"
    out = peer.send(b"DATA\r\n" + long_header + b"Received: a\r\nReceived: b\r\n\r\n.\r\n")
    assert out.endswith(b"554 5.6.0 Message rejected: line too long\r\n")


# ----------------------------------------------------------------------------- BDAT
def test_bdat_single_last_chunk() -> None:
    peer = ready()
    out = peer.send(b"BDAT 12 LAST\r\nSubject: x\r\n")
    assert out == b"250 2.0.0 OK: message accepted\r\n"
    assert peer.body() == b"Subject: x\r\n"
    complete = peer.of(DataComplete)[0]
    assert isinstance(complete, DataComplete) and complete.size == 12
    assert peer.conn.envelope is None


def test_bdat_multiple_chunks_no_unstuffing() -> None:
    peer = ready()
    out = peer.send(b"BDAT 5\r\n.\r\n.x")
    assert out == b"250 2.0.0 5 octets received\r\n"
    out = peer.send(b"bdat 3 last\r\n\r\n.")
    assert out == b"250 2.0.0 OK: message accepted\r\n"
    assert peer.body() == b".\r\n.x\r\n."


def test_bdat_zero_last() -> None:
    peer = ready()
    out = peer.send(b"BDAT 4\r\nab\r\nBDAT 0 LAST\r\n")
    assert out == b"250 2.0.0 4 octets received\r\n250 2.0.0 OK: message accepted\r\n"
    assert peer.body() == b"ab\r\n"


def test_bdat_zero_non_last() -> None:
    peer = ready()
    assert peer.send(b"BDAT 0\r\n") == b"250 2.0.0 0 octets received\r\n"


def test_bdat_cr_lf_across_chunks() -> None:
    peer = ready()
    peer.send(b"BDAT 3\r\nab\r")
    peer.send(b"BDAT 3\r\n\ncd")
    peer.send(b"BDAT 2 LAST\r\n\n\r")
    assert peer.body() == b"ab\r\ncd\r\n\r\n"
    complete = peer.of(DataComplete)[0]
    assert isinstance(complete, DataComplete) and complete.size == 10


def test_bdat_bare_cr_then_other_chunk() -> None:
    peer = ready()
    peer.send(b"BDAT 2\r\na\r")
    peer.send(b"BDAT 1 LAST\r\nb")
    assert peer.body() == b"a\r\nb"


@settings(deadline=None)
@given(st.binary(max_size=200), st.lists(st.integers(0, 200), max_size=6))
def test_bdat_chunking_is_invisible(payload: bytes, cuts: list[int]) -> None:
    whole = ready()
    whole.send(b"BDAT %d LAST\r\n" % len(payload) + payload)
    pieces = ready(data_chunk_size=5)
    points = sorted({min(c, len(payload)) for c in cuts} | {0, len(payload)})
    for start, stop in itertools.pairwise(points):
        pieces.send(b"BDAT %d\r\n" % (stop - start))
        pieces.send(payload[start:stop])
    pieces.send(b"BDAT 0 LAST\r\n")
    assert whole.body() == pieces.body()
    assert len(whole.of(DataComplete)) == len(pieces.of(DataComplete)) == 1


def test_bdat_without_mail_consumes_chunk() -> None:
    peer = Peer()
    peer.send(b"EHLO c\r\n")
    out = peer.send(b"BDAT 6\r\nQUIT\r\nNOOP\r\n")
    assert out == b"503 5.5.1 Need MAIL command\r\n250 2.0.0 OK\r\n"
    assert peer.of(DataChunk) == []


def test_bdat_without_recipients_resets() -> None:
    peer = Peer()
    peer.rcpt = lambda ev: replies.NO_SUCH_USER
    peer.send(b"EHLO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\n")
    out = peer.send(b"BDAT 3\r\nabcBDAT 2 LAST\r\nde")
    assert out == b"554 5.5.1 No valid recipients\r\n503 5.5.1 Need MAIL command\r\n"
    assert peer.conn.envelope is None
    assert peer.of(DataChunk) == []


def test_data_and_rcpt_after_bdat() -> None:
    peer = ready()
    peer.send(b"BDAT 2\r\nab")
    assert peer.send(b"DATA\r\n") == b"503 5.5.1 DATA not allowed after BDAT\r\n"
    assert peer.send(b"RCPT TO:<z@d>\r\n") == b"503 5.5.1 RCPT not allowed after BDAT\r\n"
    assert peer.send(b"BDAT 1 LAST\r\nc").endswith(b"250 2.0.0 OK: message accepted\r\n")
    assert peer.body() == b"abc"


def test_bdat_over_size_detected_from_announced_size() -> None:
    peer = ready(max_message_size=10)
    out = peer.send(b"BDAT 11\r\n" + b"x" * 11 + b"BDAT 1 LAST\r\ny")
    assert out == (
        b"552 5.3.4 Message size exceeds fixed maximum message size\r\n"
        b"503 5.5.1 Need MAIL command\r\n"
    )
    assert peer.of(DataChunk) == []
    assert peer.of(DataAborted) == [DataAborted(replies.MESSAGE_TOO_BIG)]


def test_bdat_over_size_by_normalisation_on_last() -> None:
    peer = ready(max_message_size=10)
    out = peer.send(b"BDAT 10 LAST\r\n" + b"\n" * 10)
    assert out == b"552 5.3.4 Message size exceeds fixed maximum message size\r\n"
    assert peer.of(DataComplete) == []


def test_bdat_long_line_in_middle_chunk() -> None:
    peer = ready(max_data_line_length=5)
    out = peer.send(b"BDAT 8\r\n123456\r\n")
    assert out == b"554 5.6.0 Message rejected: line too long\r\n"
    assert peer.conn.envelope is None


def test_bdat_loop_detection() -> None:
    peer = ready(max_received_headers=1)
    payload = b"Received: a\r\nReceived: b"
    out = peer.send(b"BDAT %d LAST\r\n" % len(payload) + payload)
    assert out == b"554 5.4.6 Too many Received header fields: mail loop\r\n"


def test_bdat_body_lines_fast_path() -> None:
    peer = ready()
    payload = b"Subject: s\r\n\r\n" + b"line\r\n" * 50 + b".dot\n"
    peer.send(b"BDAT %d LAST\r\n" % len(payload) + payload)
    assert peer.body() == payload.replace(b".dot\n", b".dot\r\n")


def test_bdat_received_count_on_unterminated_last_line() -> None:
    peer = ready()
    payload = b"Received: a"
    peer.send(b"BDAT %d LAST\r\n" % len(payload) + payload)
    complete = peer.of(DataComplete)[0]
    assert isinstance(complete, DataComplete) and complete.received_count == 1


@pytest.mark.parametrize("arg", [b"", b" x", b" 1 MORE", b" -1", b" 1LAST", b" " + b"9" * 21])
def test_bdat_syntax_error_closes(arg: bytes) -> None:
    peer = ready()
    out = peer.send(b"BDAT" + arg + b"\r\nNOOP\r\n")
    assert out == b"501 5.5.4 Syntax: BDAT chunk-size [LAST]\r\n"
    assert peer.conn.closing
    assert peer.of(ConnectionClosing) == [ConnectionClosing(replies.BDAT_SYNTAX)]


def test_bdat_when_chunking_disabled() -> None:
    peer = ready(chunking=False)
    assert peer.send(b"BDAT 1 LAST\r\n") == b"500 5.5.1 Command unrecognized\r\n"


# ----------------------------------------------------------------------------- simple commands
@pytest.mark.parametrize(
    ("line", "reply"),
    [
        (b"NOOP\r\n", b"250 2.0.0 OK\r\n"),
        (b"noop whatever\r\n", b"250 2.0.0 OK\r\n"),
        (b"VRFY someone\r\n", b"252 2.5.0 Cannot VRFY user"),
        (b"VRFY\r\n", b"501 5.5.4 Syntax: VRFY address\r\n"),
        (b"EXPN list\r\n", b"502 5.5.1 Command not implemented\r\n"),
        (b"HELP\r\n", b"214 2.0.0 See RFC 5321"),
        (b"HELP MAIL\r\n", b"214 2.0.0 See RFC 5321"),
        (b"RSET extra\r\n", b"501 5.5.4 Syntax error in parameters or arguments\r\n"),
        (b"FOO\r\n", b"500 5.5.1 Command unrecognized\r\n"),
        (b"\r\n", b"500 5.5.1 Command unrecognized\r\n"),
        (b" NOOP\r\n", b"500 5.5.1 Command unrecognized\r\n"),
        (b"NOOP   \r\n", b"250 2.0.0 OK\r\n"),
        (b"NOOP\n", b"250 2.0.0 OK\r\n"),
    ],
)
def test_simple_commands(line: bytes, reply: bytes) -> None:
    peer = Peer()
    assert peer.send(line).startswith(reply)


def test_rset_clears_transaction() -> None:
    peer = ready()
    assert peer.send(b"RSET\r\n") == b"250 2.0.0 Reset OK\r\n"
    assert peer.conn.envelope is None
    assert peer.send(b"MAIL FROM:<a@b>\r\n").startswith(b"250")


def test_quit() -> None:
    peer = Peer()
    out = peer.send(b"QUIT\r\nNOOP\r\n")
    assert out == b"221 2.0.0 Bye\r\n"
    assert peer.conn.closing
    assert peer.of(ConnectionClosing) == [ConnectionClosing(replies.SERVICE_CLOSING)]
    assert peer.conn.next_event() is CLOSED
    peer.conn.receive_data(b"NOOP\r\n")
    assert peer.conn.next_event() is CLOSED
    assert peer.conn.data_to_send() == b""


# ----------------------------------------------------------------------------- line limits
def test_command_line_at_limit_is_accepted() -> None:
    peer = Peer(max_line_length=64)
    line = b"NOOP " + b"x" * 59
    assert peer.send(line + b"\r\n") == b"250 2.0.0 OK\r\n"


def test_command_line_over_limit_with_line_end_present() -> None:
    peer = Peer(max_line_length=64)
    line = b"NOOP " + b"x" * 60
    assert peer.send(line + b"\nNOOP\r\n") == b"500 5.5.2 Line too long\r\n250 2.0.0 OK\r\n"


def test_long_line_end_in_same_input() -> None:
    peer = Peer(max_line_length=64)
    assert peer.send(b"X" * 200 + b"\r\nNOOP\r\n") == b"500 5.5.2 Line too long\r\n250 2.0.0 OK\r\n"


def test_long_line_is_discarded_without_buffering() -> None:
    peer = Peer(max_line_length=64)
    out = peer.send(b"MAIL FROM:<" + b"a" * 100)
    assert out == b"500 5.5.2 Line too long\r\n"
    for _ in range(100):  # a megabyte more of the same line: no further reply, no growth
        assert peer.send(b"b" * 10_000) == b""
    assert peer.send(b"tail>\r\nNOOP\r\n") == b"250 2.0.0 OK\r\n"
    assert peer.conn.error_count == 1


def test_partial_line_waits_for_more() -> None:
    peer = Peer(max_line_length=64)
    assert peer.send(b"NOOP" + b" " * 60 + b"\r") == b""
    assert peer.send(b"\n") == b"250 2.0.0 OK\r\n"


def test_nul_and_invalid_utf8() -> None:
    peer = Peer()
    assert peer.send(b"NO\x00OP\r\n") == b"500 5.5.2 NUL character not allowed\r\n"
    assert peer.send(b"HELO \xff\xfe\r\n") == b"500 5.5.2 Command is not valid UTF-8\r\n"


# ----------------------------------------------------------------------------- error limit
def test_error_limit_closes_connection() -> None:
    peer = Peer(max_errors=3)
    out = peer.send(b"FOO\r\nBAR\r\nBAZ\r\nNOOP\r\n")
    assert out == (
        b"500 5.5.1 Command unrecognized\r\n" * 3
        + b"421 4.7.0 Too many errors, closing connection\r\n"
    )
    assert peer.of(ConnectionClosing) == [ConnectionClosing(replies.TOO_MANY_ERRORS)]
    assert peer.conn.closing and peer.conn.error_count == 3


def test_edge_errors_count_too() -> None:
    peer = Peer(max_errors=2)
    peer.rcpt = lambda ev: replies.NO_SUCH_USER
    out = peer.send(
        b"EHLO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<x@d>\r\nRCPT TO:<y@d>\r\nRCPT TO:<z@d>\r\n"
    )
    assert out.endswith(
        b"550 5.1.1 No such user\r\n550 5.1.1 No such user\r\n"
        b"421 4.7.0 Too many errors, closing connection\r\n"
    )
    assert len(peer.of(RcptTo)) == 2


def test_edge_421_closes() -> None:
    peer = Peer()
    peer.mail = lambda ev: replies.SHUTTING_DOWN
    out = peer.send(b"EHLO c\r\nMAIL FROM:<a@b>\r\nNOOP\r\n")
    assert out.endswith(b"421 4.3.2 Service shutting down, closing connection\r\n")
    assert peer.of(ConnectionClosing) == [ConnectionClosing(replies.SHUTTING_DOWN)]


# ----------------------------------------------------------------------------- pipelining
def test_pipelined_transaction_replies_in_order() -> None:
    peer = Peer()
    out = peer.send(
        b"EHLO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<r1@d>\r\nRCPT TO:<r2@d>\r\nDATA\r\n"
        b"hello\r\n.\r\nRSET\r\nNOOP\r\nQUIT\r\n"
    )
    assert out == (
        EHLO_REPLY + b"250 2.1.0 Sender OK\r\n250 2.1.5 Recipient OK\r\n"
        b"250 2.1.5 Recipient OK\r\n354 End data with <CR><LF>.<CR><LF>\r\n"
        b"250 2.0.0 OK: message accepted\r\n250 2.0.0 Reset OK\r\n250 2.0.0 OK\r\n"
        b"221 2.0.0 Bye\r\n"
    )
    kinds = [type(e).__name__ for e in peer.events]
    assert kinds == [
        "Hello",
        "MailFrom",
        "RcptTo",
        "RcptTo",
        "DataChunk",
        "DataComplete",
        "ConnectionClosing",
    ]


def test_later_command_waits_for_answer() -> None:
    conn = SmtpServerConnection(SmtpServerConfig(hostname="mx.test"))
    conn.data_to_send()
    conn.receive_data(b"EHLO c\r\nNOOP\r\nMAIL FROM:<a@b>\r\nNOOP\r\n")
    assert conn.next_event() == Hello("c", True)
    assert conn.data_to_send() == b""
    with pytest.raises(RuntimeError):
        conn.next_event()
    conn.accept_hello()
    event = conn.next_event()
    assert isinstance(event, MailFrom)
    # The NOOP before MAIL was answered; the one after is not processed yet.
    assert conn.data_to_send() == EHLO_REPLY + b"250 2.0.0 OK\r\n"
    conn.reply(replies.SENDER_OK)
    assert conn.next_event() is NEED_DATA
    assert conn.data_to_send() == b"250 2.1.0 Sender OK\r\n250 2.0.0 OK\r\n"


# ----------------------------------------------------------------------------- STARTTLS
def test_starttls_not_available() -> None:
    peer = Peer()
    peer.send(b"EHLO c\r\n")
    assert peer.send(b"STARTTLS\r\n") == b"454 4.7.0 TLS not available\r\n"


@pytest.mark.parametrize(
    ("setup", "line", "reply"),
    [
        (b"", b"STARTTLS\r\n", b"503 5.5.1 Send EHLO first\r\n"),
        (
            b"EHLO c\r\n",
            b"STARTTLS now\r\n",
            b"501 5.5.4 Syntax error in parameters or arguments\r\n",
        ),
        (
            b"EHLO c\r\nMAIL FROM:<a@b>\r\n",
            b"STARTTLS\r\n",
            b"503 5.5.1 Mail transaction in progress\r\n",
        ),
    ],
)
def test_starttls_refusals(setup: bytes, line: bytes, reply: bytes) -> None:
    peer = Peer(tls_available=True)
    if setup:
        peer.send(setup)
    assert peer.send(line) == reply


def test_starttls_when_tls_active() -> None:
    peer = Peer(tls_available=True, tls_active=True)
    peer.send(b"EHLO c\r\n")
    assert peer.send(b"STARTTLS\r\n") == b"503 5.5.1 TLS already active\r\n"


def test_starttls_discards_pipelined_input() -> None:
    peer = Peer(tls_available=True, auth_mechanisms=("PLAIN",))
    peer.send(b"EHLO c\r\n")
    out = peer.send(b"STARTTLS\r\nMAIL FROM:<evil@x>\r\nRCPT TO:<v@y>\r\n")
    assert out == b"220 2.0.0 Ready to start TLS\r\n"
    assert peer.conn.awaiting_tls
    assert peer.of(StartTlsRequested) == [StartTlsRequested()]
    # Plaintext that arrives before the handshake completes is dropped too.
    peer.conn.receive_data(b"NOOP\r\n")
    assert peer.conn.next_event() is NEED_DATA
    peer.conn.tls_established()
    assert peer.conn.tls_active and not peer.conn.awaiting_tls
    assert peer.conn.helo_name is None
    assert peer.send(b"MAIL FROM:<a@b>\r\n") == b"503 5.5.1 Send EHLO or HELO first\r\n"
    assert peer.of(MailFrom) == []
    out = peer.send(b"EHLO c\r\n")
    assert b"STARTTLS" not in out and b"250 AUTH PLAIN\r\n" in out


def test_starttls_discards_partial_long_line_state() -> None:
    peer = Peer(tls_available=True, max_line_length=64)
    peer.send(b"EHLO c\r\n")
    assert peer.send(b"STARTTLS\r\n" + b"x" * 100) == b"220 2.0.0 Ready to start TLS\r\n"
    peer.conn.tls_established()
    assert peer.send(b"NOOP\r\n") == b"250 2.0.0 OK\r\n"


def test_eof_while_awaiting_tls_handshake() -> None:
    peer = Peer(tls_available=True)
    peer.send(b"EHLO c\r\nSTARTTLS\r\n")
    assert peer.conn.awaiting_tls
    peer.conn.receive_data(b"")
    assert peer.run() == b""
    assert peer.of(ConnectionClosing) == [ConnectionClosing(None)]
    assert not peer.conn.awaiting_tls


def test_starttls_refused_by_edge() -> None:
    peer = Peer(tls_available=True)
    peer.starttls = replies.TLS_NOT_AVAILABLE
    peer.send(b"EHLO c\r\n")
    assert peer.send(b"STARTTLS\r\nNOOP\r\n") == b"454 4.7.0 TLS not available\r\n250 2.0.0 OK\r\n"
    assert not peer.conn.awaiting_tls
    with pytest.raises(RuntimeError):
        peer.conn.tls_established()


def test_starttls_resets_authentication() -> None:
    peer = Peer(tls_available=True, auth_mechanisms=("PLAIN",), auth_requires_tls=False)
    peer.send(b"EHLO c\r\n")
    peer.send(f"AUTH PLAIN {b64(chr(0) + 'u' + chr(0) + 'p')}\r\n".encode())
    assert peer.conn.authenticated_user == "u"
    peer.send(b"STARTTLS\r\n")
    peer.conn.tls_established()
    assert peer.conn.authenticated_user is None


# ----------------------------------------------------------------------------- AUTH
def auth_peer(**config: object) -> Peer:
    config.setdefault("auth_mechanisms", ("PLAIN", "LOGIN"))
    config.setdefault("tls_active", True)
    peer = Peer(**config)
    peer.send(b"EHLO c\r\n")
    return peer


def test_auth_plain_initial_response() -> None:
    peer = auth_peer()
    out = peer.send(f"AUTH PLAIN {b64('admin' + chr(0) + 'user' + chr(0) + 'pw')}\r\n".encode())
    assert out == b"235 2.7.0 Authentication successful\r\n"
    assert peer.of(AuthRequested) == [AuthRequested("PLAIN", Credentials("admin", "user", "pw"))]
    assert peer.conn.authenticated_user == "user"
    assert peer.send(b"AUTH PLAIN\r\n") == b"503 5.5.1 Already authenticated\r\n"


def test_auth_plain_with_challenge() -> None:
    peer = auth_peer()
    assert peer.send(b"auth plain\r\n") == b"334 \r\n"
    assert peer.send(f"{b64(chr(0) + 'u' + chr(0) + 'p')}\r\n".encode()).startswith(b"235")


def test_auth_login() -> None:
    peer = auth_peer()
    assert peer.send(b"AUTH LOGIN\r\n") == b"334 VXNlcm5hbWU6\r\n"
    assert peer.send(f"{b64('user')}\r\n".encode()) == b"334 UGFzc3dvcmQ6\r\n"
    assert peer.send(f"{b64('secret')}\r\n".encode()).startswith(b"235")
    assert peer.of(AuthRequested) == [AuthRequested("LOGIN", Credentials("", "user", "secret"))]


def test_auth_login_initial_username() -> None:
    peer = auth_peer()
    assert peer.send(f"AUTH LOGIN {b64('user')}\r\n".encode()) == b"334 UGFzc3dvcmQ6\r\n"
    assert peer.send(f"{b64('pw')}\r\n".encode()).startswith(b"235")


def test_auth_failure() -> None:
    peer = auth_peer()
    peer.auth = lambda ev: replies.AUTH_FAILED
    out = peer.send(f"AUTH PLAIN {b64(chr(0) + 'u' + chr(0) + 'bad')}\r\n".encode())
    assert out == b"535 5.7.8 Authentication credentials invalid\r\n"
    assert peer.conn.authenticated_user is None
    assert peer.conn.error_count == 1


@pytest.mark.parametrize(
    ("lines", "reply"),
    [
        ([b"AUTH PLAIN *"], b"501 5.0.0 Authentication cancelled\r\n"),
        ([b"AUTH PLAIN", b"*"], b"501 5.0.0 Authentication cancelled\r\n"),
        ([b"AUTH LOGIN", b"*"], b"501 5.0.0 Authentication cancelled\r\n"),
        ([b"AUTH PLAIN !!!"], b"501 5.5.2 Cannot decode base64 response\r\n"),
        ([b"AUTH PLAIN", b"abc"], b"501 5.5.2 Cannot decode base64 response\r\n"),
        (["AUTH PLAIN dé".encode()], b"501 5.5.2 Cannot decode base64 response\r\n"),
        ([b"AUTH PLAIN ="], b"501 5.5.2 Malformed authentication response\r\n"),
        ([b"AUTH PLAIN " + b64("no-nuls").encode()], b"501 5.5.2 Malformed authentication"),
        ([b"AUTH LOGIN", b"//8="], b"501 5.5.2 Malformed authentication response\r\n"),
        ([b"AUTH LOGIN", b64("u").encode(), b"="], b"501 5.5.2 Malformed authentication"),
        ([b"AUTH LOGIN ="], b"334 UGFzc3dvcmQ6\r\n"),
        ([b"AUTH CRAM-MD5"], b"504 5.5.4 Unrecognized authentication mechanism\r\n"),
        ([b"AUTH"], b"501 5.5.4 Syntax error in parameters or arguments\r\n"),
        ([b"AUTH PLAIN a b"], b"501 5.5.4 Syntax error in parameters or arguments\r\n"),
    ],
)
def test_auth_errors(lines: list[bytes], reply: bytes) -> None:
    peer = auth_peer()
    out = b""
    for line in lines:
        out = peer.send(line + b"\r\n")
    assert out.startswith(reply)
    assert peer.of(AuthRequested) == []


def test_auth_login_empty_username_refused_at_password() -> None:
    peer = auth_peer()
    peer.send(b"AUTH LOGIN =\r\n")
    out = peer.send(f"{b64('pw')}\r\n".encode())
    assert out == b"501 5.5.2 Malformed authentication response\r\n"


def test_auth_response_line_too_long() -> None:
    peer = auth_peer(max_line_length=64)
    peer.send(b"AUTH PLAIN\r\n")
    assert (
        peer.send(b"A" * 200 + b"\r\n") == b"500 5.5.6 Authentication exchange line is too long\r\n"
    )
    assert peer.send(b"NOOP\r\n") == b"250 2.0.0 OK\r\n"


def test_auth_requires_tls() -> None:
    peer = auth_peer(tls_active=False)
    out = peer.send(b"AUTH PLAIN\r\n")
    assert out == b"538 5.7.11 Encryption required for requested authentication mechanism\r\n"


def test_auth_on_loopback_without_tls() -> None:
    peer = auth_peer(tls_active=False, auth_requires_tls=False)
    assert peer.send(b"AUTH PLAIN\r\n") == b"334 \r\n"


def test_auth_not_configured() -> None:
    peer = Peer()
    peer.send(b"EHLO c\r\n")
    assert peer.send(b"AUTH PLAIN\r\n") == b"502 5.5.1 Authentication not available\r\n"


def test_auth_needs_ehlo() -> None:
    peer = Peer(auth_mechanisms=("PLAIN",), tls_active=True)
    peer.send(b"HELO c\r\n")
    assert peer.send(b"AUTH PLAIN\r\n") == b"503 5.5.1 Send EHLO first\r\n"


def test_auth_during_transaction() -> None:
    peer = auth_peer()
    peer.send(b"MAIL FROM:<a@b>\r\n")
    assert peer.send(b"AUTH PLAIN\r\n") == b"503 5.5.1 Mail transaction in progress\r\n"


def test_auth_only_offered_mechanisms() -> None:
    peer = auth_peer(auth_mechanisms=("PLAIN",))
    assert peer.send(b"AUTH LOGIN\r\n").startswith(b"504 5.5.4")


# ----------------------------------------------------------------------------- answers API
def test_answer_misuse_raises() -> None:
    conn = SmtpServerConnection(SmtpServerConfig())
    with pytest.raises(RuntimeError):
        conn.reply(replies.OK)
    with pytest.raises(RuntimeError):
        conn.accept_hello()
    with pytest.raises(RuntimeError):
        conn.auth_succeeded("u")
    with pytest.raises(RuntimeError):
        conn.auth_failed()
    conn.receive_data(b"EHLO c\r\n")
    assert isinstance(conn.next_event(), Hello)
    with pytest.raises(RuntimeError):
        conn.reply(replies.OK)  # a Hello is accepted with accept_hello()
    with pytest.raises(RuntimeError):
        conn.reply(replies.START_DATA)
    conn.accept_hello()
    conn.receive_data(b"MAIL FROM:<a@b>\r\n")
    assert isinstance(conn.next_event(), MailFrom)
    with pytest.raises(RuntimeError):
        conn.reply(Reply(334, None, ""))
    with pytest.raises(RuntimeError):
        conn.accept_hello()


def test_starttls_answer_must_be_220() -> None:
    conn = SmtpServerConnection(SmtpServerConfig(tls_available=True))
    conn.receive_data(b"EHLO c\r\n")
    conn.next_event()
    conn.accept_hello()
    conn.receive_data(b"STARTTLS\r\n")
    assert conn.next_event() == StartTlsRequested()
    with pytest.raises(RuntimeError):
        conn.reply(replies.OK)


def test_auth_answer_misuse() -> None:
    conn = SmtpServerConnection(SmtpServerConfig(auth_mechanisms=("PLAIN",), tls_active=True))
    conn.receive_data(b"EHLO c\r\n")
    conn.next_event()
    conn.accept_hello()
    conn.receive_data(f"AUTH PLAIN {b64(chr(0) + 'u' + chr(0) + 'p')}\r\n".encode())
    assert isinstance(conn.next_event(), AuthRequested)
    with pytest.raises(RuntimeError):
        conn.reply(replies.AUTH_OK)
    with pytest.raises(RuntimeError):
        conn.auth_failed(replies.AUTH_OK)
    conn.auth_failed(replies.AUTH_TEMPORARY_FAILURE)
    assert conn.data_to_send().endswith(b"454 4.7.0 Temporary authentication failure\r\n")


# ----------------------------------------------------------------------------- closing
def test_timeout_reply() -> None:
    peer = Peer()
    peer.conn.timeout_reply()
    assert peer.conn.closing
    assert peer.run() == b"421 4.4.2 Timeout exceeded, closing connection\r\n"
    assert peer.of(ConnectionClosing) == [ConnectionClosing(replies.TIMEOUT)]
    peer.conn.shutdown_reply()  # already closing: nothing more
    assert peer.conn.data_to_send() == b""


def test_shutdown_while_event_pending_drops_late_answers() -> None:
    conn = SmtpServerConnection(SmtpServerConfig())
    conn.data_to_send()
    conn.receive_data(b"EHLO c\r\n")
    assert isinstance(conn.next_event(), Hello)
    conn.shutdown_reply()
    conn.accept_hello()  # ignored: the session is closing
    conn.reply(replies.OK)
    conn.auth_succeeded("u")
    conn.auth_failed()
    assert conn.data_to_send() == b"421 4.3.2 Service shutting down, closing connection\r\n"
    assert conn.next_event() == ConnectionClosing(replies.SHUTTING_DOWN)
    assert conn.next_event() is CLOSED


def test_eof_processes_buffered_commands_first() -> None:
    peer = Peer()
    peer.conn.receive_data(b"NOOP\r\nNOOP")
    peer.conn.receive_data(b"")
    assert peer.run() == b"250 2.0.0 OK\r\n"
    assert peer.of(ConnectionClosing) == [ConnectionClosing(None)]
    assert peer.conn.closing


def test_eof_during_data_abandons_message() -> None:
    peer = ready()
    peer.send(b"DATA\r\npartial")
    peer.conn.receive_data(b"")
    assert peer.run() == b""
    assert peer.of(DataComplete) == []
    assert peer.of(ConnectionClosing) == [ConnectionClosing(None)]


def test_eof_during_bdat() -> None:
    peer = ready()
    peer.send(b"BDAT 10\r\nabc")
    peer.conn.receive_data(b"")
    peer.run()
    assert peer.of(ConnectionClosing) == [ConnectionClosing(None)]


def test_error_limit_during_data_abort() -> None:
    peer = ready(max_errors=1, max_message_size=5)
    out = peer.send(b"DATA\r\n123456\r\n.\r\n")
    assert out.endswith(
        b"552 5.3.4 Message size exceeds fixed maximum message size\r\n"
        b"421 4.7.0 Too many errors, closing connection\r\n"
    )
    assert [type(e).__name__ for e in peer.events[-2:]] == ["DataAborted", "ConnectionClosing"]


# ----------------------------------------------------------------------------- configuration
@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_line_length": 10},
        {"max_message_size": 0},
        {"max_errors": 0},
        {"data_chunk_size": 0},
        {"auth_mechanisms": ("CRAM-MD5",)},
        {"hostname": ""},
        {"hostname": "a b"},
    ],
)
def test_invalid_config(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        SmtpServerConfig(**kwargs)  # type: ignore[arg-type]


def test_sentinel_repr() -> None:
    assert repr(NEED_DATA) == "NEED_DATA" and repr(CLOSED) == "CLOSED"


def test_core_is_sans_io() -> None:
    import letterbird.proto.smtp as package

    forbidden = {"socket", "asyncio", "threading", "time", "ssl", "selectors", "subprocess"}
    for path in Path(package.__file__).parent.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                root = name.split(".")[0]
                assert root not in forbidden, f"{path.name} imports {name}"
                assert not name.startswith(("letterbird.storage", "letterbird.server")), name
