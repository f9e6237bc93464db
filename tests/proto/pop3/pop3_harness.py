"""A fake edge for the POP3 core: answers events from in-memory users and messages."""

from __future__ import annotations

from collections.abc import Sequence

from letterbird.proto.pop3 import (
    NEED_DATA,
    CloseConnection,
    Event,
    LoginFailure,
    LoginRequested,
    RetrieveRequested,
    ServerConfig,
    ServerConnection,
    StlsRequested,
    UpdateRequested,
)

MESSAGES: tuple[bytes, ...] = (
    b"Subject: one\r\n\r\nHello\r\n",
    b"Subject: two\r\n\r\n.starts with dot\r\nline\r\n..two dots\r\n.\r\nend\r\n",
    b"Subject: three\r\nX-A: b\r\n\r\nbody 1\r\nbody 2\r\nno final crlf",
)
UIDS: tuple[str, ...] = ("uid-1", "uid-2", "uid-3")
USERS = {"alice": "secret", "bob": "pass with spaces "}


class Edge:
    """Plays the asyncio edge: feeds bytes, answers every event, collects the output."""

    def __init__(
        self,
        config: ServerConfig | None = None,
        *,
        messages: Sequence[bytes] = MESSAGES,
        uids: Sequence[str] = UIDS,
        chunk: int | None = None,
    ) -> None:
        """``chunk``: answer RETR/TOP with ``send_message_part`` in parts of this size, as the
        asyncio edge streams a blob (``None``: one ``send_message`` with the whole message)."""
        self.conn = ServerConnection(config or ServerConfig(plaintext_allowed=True))
        self.chunk = chunk
        self.parts_given = 0  # octets handed to send_message_part (what the edge "read")
        self.greeting = self.conn.data_to_send()
        self.messages = list(messages)
        self.uids = list(uids)
        self.store = dict(zip(uids, messages, strict=True))
        self.events: list[Event] = []
        self.login_failure: LoginFailure | None = None
        self.stls_ok = True
        self.update_ok = True
        self.vanished: set[str] = set()
        self.tls_pending = False
        self.written: list[bytes] = []  # output written between the parts of a message

    def maildrop(self) -> list[tuple[int, str]]:
        return [(len(m), u) for m, u in zip(self.messages, self.uids, strict=True)]

    def send(self, data: bytes) -> bytes:
        self.conn.receive_data(data)
        return self.pump()

    def pump(self) -> bytes:
        while True:
            event = self.conn.next_event()
            if event is NEED_DATA:
                out = b"".join(self.written) + self.conn.data_to_send()
                self.written.clear()
                return out
            self.events.append(event)
            self.answer(event)

    def answer(self, event: Event) -> None:
        conn = self.conn
        if isinstance(event, LoginRequested):
            if self.login_failure is not None:
                conn.login_failed(self.login_failure)
            elif USERS.get(event.username) == event.password:
                conn.login_succeeded(self.maildrop())
            else:
                conn.login_failed()
        elif isinstance(event, StlsRequested):
            if self.stls_ok:
                conn.reply_stls_ok()
                self.tls_pending = True
            else:
                conn.reply_stls_failed()
        elif isinstance(event, RetrieveRequested):
            if event.uid in self.vanished:
                conn.message_vanished()
            elif self.chunk is None:
                conn.send_message(self.store[event.uid])
            else:
                self.stream(self.store[event.uid], self.chunk)
        elif isinstance(event, UpdateRequested):
            conn.update_done(self.update_ok)
        else:
            assert isinstance(event, CloseConnection)

    def stream(self, data: bytes, chunk: int) -> None:
        """Answer a RetrieveRequested part by part, reading no further once the core is done;
        between parts the output is collected as the edge writes it."""
        pos = 0
        while True:
            part = data[pos : pos + chunk]
            pos += len(part)
            self.parts_given += len(part)
            if self.conn.send_message_part(part, last=pos >= len(data)):
                return
            self.written.append(self.conn.data_to_send())

    def handshake(self) -> None:
        """Complete the TLS handshake a successful STLS started."""
        if self.tls_pending:
            self.tls_pending = False
            self.conn.tls_established()

    def login(self) -> bytes:
        return self.send(b"USER alice\r\nPASS secret\r\n")

    @property
    def last(self) -> Event:
        return self.events[-1]


def logged_in(config: ServerConfig | None = None) -> Edge:
    e = Edge(config)
    e.login()
    return e
