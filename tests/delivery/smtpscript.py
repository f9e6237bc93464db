"""A small scripted SMTP server on loopback for queue tests: well-behaved by default, with knobs
for the misbehaviours the queue must survive (stalling, dropping mid-DATA, garbage, replies split
across packets, STARTTLS followed by a failed handshake, 421, lost after the final dot).

It runs in the test's own event loop (``async with FakeSmtp(...) as server``) and records every
transaction: the MAIL and RCPT command lines and the unstuffed message data.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from dataclasses import dataclass, field
from types import TracebackType

import trustme

_CA = trustme.CA()
_CERT = _CA.issue_cert("mx.fake.test", "127.0.0.1")


def server_tls() -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    _CERT.configure_cert(ctx)
    return ctx


@dataclass
class Transaction:
    mail: str
    rcpts: list[str]
    data: bytes


@dataclass
class FakeSmtp:
    host: str = "127.0.0.1"
    port: int = 0
    #: EHLO keywords offered.
    caps: tuple[str, ...] = ("PIPELINING", "8BITMIME", "SIZE 10000000", "ENHANCEDSTATUSCODES")
    greeting: bytes = b"220 mx.fake.test ESMTP\r\n"
    #: "greeting": never greet; "data": never answer the final dot (after reading it).
    stall: str | None = None
    #: Close the connection after this many octets of message data (before the final dot).
    drop_in_data: int | None = None
    #: Close the connection right after reading the final dot (no reply: lost after dot).
    drop_after_dot: bool = False
    #: Answer EHLO with this instead of SMTP.
    garbage: bytes | None = None
    #: Send replies one octet at a time.
    split: bool = False
    #: Accept STARTTLS, then break the handshake.
    broken_tls: bool = False
    #: Reply per RCPT address (lower case), e.g. {"nobody@b.test": b"550 5.1.1 No such user"}.
    rcpt_replies: dict[str, bytes] = field(default_factory=dict)
    transactions: list[Transaction] = field(default_factory=list)
    connections: int = 0
    tls_sessions: int = 0
    _server: asyncio.Server | None = None
    _handlers: set[asyncio.Task[None]] = field(default_factory=set)

    async def __aenter__(self) -> FakeSmtp:
        self._server = await asyncio.start_server(self._handle, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            for task in list(self._handlers):
                task.cancel()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)
            self._server = None

    @property
    def route(self) -> str:
        return f"{self.host}:{self.port}"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        self.connections += 1
        try:
            await self._session(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError, OSError):
            pass
        except asyncio.CancelledError:  # close(): end quietly
            pass
        finally:
            self._handlers.discard(task)
            writer.close()

    async def _send(self, writer: asyncio.StreamWriter, data: bytes) -> None:
        if self.split:
            for i in range(len(data)):
                writer.write(data[i : i + 1])
                await writer.drain()
                await asyncio.sleep(0)
        else:
            writer.write(data)
            await writer.drain()

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.stall == "greeting":
            await asyncio.sleep(3600)
        await self._send(writer, self.greeting)
        if not self.greeting.startswith(b"220"):
            return
        mail = ""
        rcpts: list[str] = []
        tls = False
        while True:
            line = await reader.readline()
            if not line:
                return
            verb = line[:4].upper()
            if verb in (b"EHLO", b"HELO"):
                if self.garbage is not None:
                    await self._send(writer, self.garbage)
                    continue
                caps = list(self.caps)
                if not tls and (self.broken_tls or "STARTTLS" in caps):
                    caps = [c for c in caps if c != "STARTTLS"] + ["STARTTLS"]
                if tls:
                    caps = [c for c in caps if c != "STARTTLS"]
                lines = ["mx.fake.test hello", *caps]
                text = "".join(
                    f"250{'-' if i < len(lines) - 1 else ' '}{x}\r\n" for i, x in enumerate(lines)
                )
                await self._send(writer, text.encode())
            elif line.upper().startswith(b"STARTTLS"):
                await self._send(writer, b"220 2.0.0 Ready to start TLS\r\n")
                if self.broken_tls:
                    await self._send(writer, b"this is not a TLS server hello\r\n" * 4)
                    return
                await writer.start_tls(server_tls())
                tls = True
                self.tls_sessions += 1
            elif verb == b"MAIL":
                mail = line.decode().strip()
                rcpts = []
                await self._send(writer, b"250 2.1.0 Sender OK\r\n")
            elif verb == b"RCPT":
                text = line.decode().strip()
                address = text.split("<", 1)[1].split(">", 1)[0].lower()
                reply = self.rcpt_replies.get(address, b"250 2.1.5 Recipient OK")
                if reply.startswith(b"2"):
                    rcpts.append(text)
                await self._send(writer, reply + b"\r\n")
            elif verb == b"DATA":
                if not rcpts:
                    await self._send(writer, b"554 5.5.1 No valid recipients\r\n")
                    continue
                await self._send(writer, b"354 Go ahead\r\n")
                data = await self._read_data(reader)
                if data is None:
                    return
                if self.stall == "data":
                    await asyncio.sleep(3600)
                if self.drop_after_dot:
                    return
                self.transactions.append(Transaction(mail, rcpts, data))
                await self._send(writer, b"250 2.0.0 Ok: queued\r\n")
            elif verb == b"RSET":
                mail, rcpts = "", []
                await self._send(writer, b"250 2.0.0 Ok\r\n")
            elif verb == b"QUIT":
                await self._send(writer, b"221 2.0.0 Bye\r\n")
                return
            else:
                await self._send(writer, b"502 5.5.2 Command not implemented\r\n")

    async def _read_data(self, reader: asyncio.StreamReader) -> bytes | None:
        lines: list[bytes] = []
        size = 0
        while True:
            line = await reader.readline()
            if not line:
                return None
            size += len(line)
            if self.drop_in_data is not None and size > self.drop_in_data:
                return None
            if line == b".\r\n":
                return b"".join(lines)
            lines.append(line[1:] if line.startswith(b".") else line)
