"""Durable-acknowledgement SMTP baseline: aiosmtpd writing every message to a maildir.

This is the yardstick Letterbird's inbound SMTP benchmark compares against: the usual Python
SMTP server library (aiosmtpd, RFC 5321 as far as it goes: no PIPELINING/CHUNKING/DSN, whole
message buffered in memory) with the smallest handler that still gives the guarantee Letterbird
gives: **`250` is only sent after the message is on stable storage**.  For each message the
handler

1. writes the bytes (CRLF line endings as received, after a ``Return-Path:`` line) to
   ``MAILDIR/tmp/<unique>``, ``flush`` + ``os.fsync`` on the file,
2. ``os.rename``s it into ``MAILDIR/new/`` (the maildir delivery protocol), and
3. ``os.fsync``s the ``new/`` directory so the rename itself is durable,

then returns ``250 2.0.0 OK``.  The blocking file work runs in the default thread pool
(``asyncio.to_thread``) so concurrent sessions overlap their fsyncs instead of serialising the
event loop; that is the fairest simple aiosmtpd deployment.

Run it as::

    python -m bench.baseline_aiosmtpd --listen 127.0.0.1:2525 --maildir /tmp/md

(from the repository root, or with the root on ``PYTHONPATH``).  Port ``0`` picks a free port.
Once listening it prints one line ``READY <host>:<port>`` on stdout (flushed), which
``bench.peers.aiosmtpd_baseline`` waits for.  SIGTERM or SIGINT stop it cleanly (exit 0).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import signal
import socket
import sys
import time
from pathlib import Path

from aiosmtpd.smtp import SMTP, Envelope, Session

#: Reply sent once the message is durable (RFC 5321 §4.2.1, RFC 3463 X.0.0).
REPLY_OK = "250 2.0.0 OK: message stored"
#: Reply when the disk write failed: temporary, so the client retries (RFC 3463 4.3.0).
REPLY_STORAGE_ERROR = "451 4.3.0 Error: could not store message"
#: aiosmtpd's own default maximum message size (32 MiB).
DEFAULT_DATA_SIZE_LIMIT = 33_554_432
DEFAULT_HOSTNAME = "baseline.peer.test"


class MaildirHandler:
    """aiosmtpd handler storing each message durably in a maildir before acknowledging it."""

    def __init__(self, maildir: Path) -> None:
        self.maildir = maildir
        for sub in ("tmp", "new", "cur"):
            (maildir / sub).mkdir(parents=True, exist_ok=True)
        self._counter = itertools.count()
        self._host = socket.gethostname().replace("/", "\\057").replace(":", "\\072")
        self._new_fd = os.open(maildir / "new", os.O_RDONLY | os.O_DIRECTORY)
        self.stored = 0

    def close(self) -> None:
        os.close(self._new_fd)

    def _unique_name(self) -> str:
        now = time.time_ns()
        sec, usec = divmod(now // 1000, 1_000_000)
        return f"{sec}.M{usec:06d}P{os.getpid()}Q{next(self._counter)}.{self._host}"

    def store(self, sender: str, content: bytes) -> Path:
        """Write one message durably; return its final path.  Blocking: run off the loop."""
        name = self._unique_name()
        tmp_path = self.maildir / "tmp" / name
        new_path = self.maildir / "new" / name
        header = f"Return-Path: <{sender}>\r\n".encode("utf-8", "surrogateescape")
        fd = os.open(tmp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            view = memoryview(header + content)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp_path, new_path)
        os.fsync(self._new_fd)
        return new_path

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        content = envelope.original_content or b""
        sender = envelope.mail_from or ""
        try:
            await asyncio.to_thread(self.store, sender, content)
        except OSError:
            return REPLY_STORAGE_ERROR
        self.stored += 1
        return REPLY_OK


def parse_listen(listen: str) -> tuple[str, int]:
    """Split ``host:port`` or ``[v6]:port``."""
    host, sep, port = listen.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"listen address must be host:port, got {listen!r}")
    return host.strip("[]"), int(port)


async def serve(
    listen: str,
    maildir: Path,
    *,
    hostname: str = DEFAULT_HOSTNAME,
    data_size_limit: int = DEFAULT_DATA_SIZE_LIMIT,
) -> None:
    """Serve until SIGTERM/SIGINT; print ``READY host:port`` once listening."""
    host, port = parse_listen(listen)
    handler = MaildirHandler(maildir)
    loop = asyncio.get_running_loop()

    def factory() -> SMTP:
        return SMTP(
            handler,
            hostname=hostname,
            data_size_limit=data_size_limit,
            enable_SMTPUTF8=True,
            loop=loop,
        )

    server = await loop.create_server(factory, host, port, reuse_address=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    bound = server.sockets[0].getsockname()
    print(f"READY {host}:{bound[1]}", flush=True)
    try:
        await stop.wait()
    finally:
        server.close()
        await server.wait_closed()
        handler.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.baseline_aiosmtpd",
        description="aiosmtpd server that fsyncs each message into a maildir before 250.",
    )
    parser.add_argument("--listen", required=True, help="host:port (port 0 = any free port)")
    parser.add_argument("--maildir", required=True, type=Path, help="maildir to deliver into")
    parser.add_argument("--hostname", default=DEFAULT_HOSTNAME, help="name in greeting/EHLO")
    parser.add_argument(
        "--data-size-limit", type=int, default=DEFAULT_DATA_SIZE_LIMIT, help="max message bytes"
    )
    args = parser.parse_args(argv)
    try:
        parse_listen(args.listen)
    except ValueError as exc:
        parser.error(str(exc))
    asyncio.run(
        serve(
            args.listen,
            args.maildir,
            hostname=args.hostname,
            data_size_limit=args.data_size_limit,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
