"""What every asyncio protocol edge needs around its sans-IO core.

- reads with an idle timeout, writes with a bounded output buffer (a client that never reads
  its responses is disconnected, not buffered for without limit). The timeout is one lazily
  re-armed timer per stream rather than a timer per read: on a busy connection a read costs a
  clock reading, and the timer fires at most once per timeout period;
- STARTTLS/STLS upgrade in place, **discarding any plaintext bytes already buffered** after the
  command (CVE-2011-0411): asyncio's ``StreamWriter.start_tls`` keeps the StreamReader's buffer,
  so bytes a client pipelined after STARTTLS would otherwise be read as if they came over TLS;
- the TLS details for ``Received:`` headers and logs.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Any

__all__ = ["OutputOverflow", "Stream"]

READ_SIZE = 65536


class OutputOverflow(ConnectionError):
    """The peer is not reading what we send."""


class Stream:
    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        write_timeout: float = 60.0,
        implicit_tls: bool = False,
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.write_timeout = write_timeout
        self.tls = implicit_tls
        self.closed = False
        self._deadline = 0.0  # of the read under way
        self._timer: asyncio.TimerHandle | None = None
        self._reading: asyncio.Task[Any] | None = None  # the task blocked in read(), if any
        self._expired = False

    async def read(self, timeout: float | None) -> bytes:
        """Up to READ_SIZE bytes; ``b""`` at end of stream; TimeoutError when idle too long."""
        reader = self.reader
        task = asyncio.current_task()
        if timeout is None or task is None:
            return await reader.read(READ_SIZE)
        # Not asyncio.timeout or wait_for: they schedule and cancel a timer (wait_for even a
        # Task) per read, which costs more than the read itself on the SMTP hot path.
        loop = asyncio.get_running_loop()
        deadline = self._deadline = loop.time() + timeout
        timer = self._timer
        if timer is None or timer.when() > deadline:
            if timer is not None:
                timer.cancel()
            self._timer = loop.call_at(deadline, self._check_deadline, loop)
        self._reading = task
        try:
            return await reader.read(READ_SIZE)
        except asyncio.CancelledError:
            if self._expired:
                self._expired = False
                if task.uncancel() == 0:  # not also cancelled from outside
                    raise TimeoutError from None
            raise
        finally:
            self._reading = None

    def cancel_timeout(self) -> None:
        """Drop the read timer now (when the connection is closed by other means than
        :meth:`close`), rather than when it next fires."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _check_deadline(self, loop: asyncio.AbstractEventLoop) -> None:
        """The timer: cancel a read that is past its deadline, else wait for the deadline."""
        self._timer = None
        task = self._reading
        if task is None:
            return  # not reading: the next read arms the timer again
        if self._deadline > loop.time() + 0.001:  # data came meanwhile: a later deadline
            self._timer = loop.call_at(self._deadline, self._check_deadline, loop)
            return
        self._expired = True
        task.cancel()

    async def write(self, data: bytes) -> None:
        if self.send(data):
            await self.drain()

    def send(self, data: bytes) -> bool:
        """:meth:`write` without the wait: True when the output buffer is past its bound and
        the caller must ``await drain()`` before writing more. Saves a coroutine per reply on
        hot paths, where the buffer is nearly always empty."""
        if not data or self.closed:
            return False
        self.writer.write(data)
        return self.writer.transport.get_write_buffer_size() > 65536

    async def drain(self) -> None:
        """Wait until the peer has read enough of our output; OutputOverflow if it does not."""
        try:
            await asyncio.wait_for(self.writer.drain(), self.write_timeout)
        except TimeoutError:
            raise OutputOverflow("peer does not read its responses") from None

    async def start_tls(self, context: ssl.SSLContext, timeout: float = 30.0) -> None:
        await self.writer.drain()
        # Discard plaintext the client sent after the STARTTLS command (CVE-2011-0411).
        buffer = getattr(self.reader, "_buffer", None)
        if isinstance(buffer, bytearray):
            buffer.clear()
        await asyncio.wait_for(self.writer.start_tls(context), timeout)
        self.tls = True

    def tls_description(self) -> str | None:
        """``TLS1.3 TLS_AES_256_GCM_SHA384 256`` style text, or None without TLS."""
        obj = self.writer.get_extra_info("ssl_object")
        if obj is None:
            return None
        cipher = obj.cipher()
        version = obj.version() or "TLS"
        if cipher is None:
            return version
        return f"version={version} cipher={cipher[0]} bits={cipher[2]}"

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.cancel_timeout()
        try:
            if not self.writer.is_closing():
                await asyncio.wait_for(self.writer.drain(), 5)
            self.writer.close()
            await asyncio.wait_for(self.writer.wait_closed(), 5)
        except (ConnectionError, TimeoutError, ssl.SSLError, OSError):
            pass
