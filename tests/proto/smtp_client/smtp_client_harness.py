"""A scripted edge for the SMTP client core: feeds canned server bytes, records what it sends."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from letterbird.proto.smtp.client import (
    CLOSED,
    NEED_DATA,
    ClientEvent,
    Closed,
    Envelope,
    MessageResult,
    NeedTls,
    ReadyForMessage,
    SendBody,
    SmtpClient,
)

GREETING = b"220 mx.b.test ESMTP ready\r\n"
EHLO_FULL = (
    b"250-mx.b.test hello\r\n"
    b"250-PIPELINING\r\n"
    b"250-SIZE 1000000\r\n"
    b"250-8BITMIME\r\n"
    b"250-SMTPUTF8\r\n"
    b"250-DSN\r\n"
    b"250-ENHANCEDSTATUSCODES\r\n"
    b"250 CHUNKING\r\n"
)
EHLO_PLAIN = b"250-mx.b.test hello\r\n250 ENHANCEDSTATUSCODES\r\n"
OK = b"250 2.0.0 OK\r\n"
MAIL_OK = b"250 2.1.0 Sender OK\r\n"
RCPT_OK = b"250 2.1.5 Recipient OK\r\n"
GO_AHEAD = b"354 End data with <CR><LF>.<CR><LF>\r\n"
QUEUED = b"250 2.0.0 Ok: queued as 12345\r\n"
BYE = b"221 2.0.0 Bye\r\n"
TLS_MARK = b"<TLS>"


@dataclass
class Run:
    """What one scripted session produced."""

    sent: bytes
    events: list[ClientEvent] = field(default_factory=list)

    @property
    def results(self) -> list[MessageResult]:
        return [e for e in self.events if isinstance(e, MessageResult)]

    @property
    def closed(self) -> Closed:
        last = self.events[-1]
        assert isinstance(last, Closed), self.events
        return last


def run(
    client: SmtpClient,
    server: Iterable[bytes],
    messages: Sequence[Envelope] = (),
    body: Sequence[bytes] = (b"Subject: hi\r\n\r\nHello\r\n",),
    *,
    eof: bool = True,
) -> Run:
    """Drive ``client`` like the asyncio edge: one server chunk per NEED_DATA, then EOF."""
    chunks = list(server)
    todo = list(messages)
    sent = bytearray()
    events: list[ClientEvent] = []
    for _ in range(100000):
        sent += client.data_to_send()
        event = client.next_event()
        if event is CLOSED:
            break
        if event is NEED_DATA:
            if chunks:
                client.receive_data(chunks.pop(0))
            elif eof:
                client.receive_data(b"")
            else:
                break
            continue
        assert not isinstance(event, type(CLOSED))
        events.append(event)
        if isinstance(event, NeedTls):
            sent += TLS_MARK
            client.tls_established()
        elif isinstance(event, ReadyForMessage):
            if todo:
                client.send_message(todo.pop(0))
            else:
                client.quit()
        elif isinstance(event, SendBody):
            for chunk in body:
                sent += client.encode_data(chunk)
            client.end_data()
    else:  # pragma: no cover - a loop in the client
        raise AssertionError("the session did not end")
    return Run(bytes(sent), events)


def split_bytes(data: bytes) -> list[bytes]:
    """``data`` one byte at a time."""
    return [data[i : i + 1] for i in range(len(data))]


def pump(client: SmtpClient, data: bytes | None = None) -> list[ClientEvent]:
    """Feed ``data`` (if any), then collect events until NEED_DATA or CLOSED."""
    if data is not None:
        client.receive_data(data)
    events: list[ClientEvent] = []
    while True:
        event = client.next_event()
        if event is NEED_DATA or event is CLOSED:
            return events
        assert not isinstance(event, type(CLOSED))
        events.append(event)
        if isinstance(event, NeedTls | SendBody):
            return events  # the edge must act before asking again


def ready_client(ehlo: bytes = EHLO_FULL, **kwargs: object) -> SmtpClient:
    """A client past EHLO whose ReadyForMessage has been returned (no TLS)."""
    kwargs.setdefault("tls_policy", "none")
    client = SmtpClient("client.test", **kwargs)  # type: ignore[arg-type]
    assert pump(client, GREETING) == []
    assert client.data_to_send() == b"EHLO client.test\r\n"
    events = pump(client, ehlo)
    assert len(events) == 1 and isinstance(events[0], ReadyForMessage)
    return client
