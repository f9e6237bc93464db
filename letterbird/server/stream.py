"""What every asyncio protocol edge needs around its sans-IO core.

- reads with an idle timeout, writes with a bounded output buffer (a client that never reads
  its responses is disconnected, not buffered for without limit);
- STARTTLS/STLS upgrade in place, **discarding any plaintext bytes already buffered** after the
  command (CVE-2011-0411): asyncio's ``StreamWriter.start_tls`` keeps the StreamReader's buffer,
  so bytes a client pipelined after STARTTLS would otherwise be read as if they came over TLS;
- the TLS details for ``Received:`` headers and logs.
"""

from __future__ import annotations

import asyncio
import ssl

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

    async def read(self, timeout: float | None) -> bytes:
        """Up to READ_SIZE bytes; ``b""`` at end of stream; TimeoutError when idle too long."""
        if timeout is None:
            return await self.reader.read(READ_SIZE)
        # asyncio.timeout, not wait_for: on Python 3.11 wait_for wraps every read in a new
        # Task, which costs more than the read itself on the SMTP hot path.
        async with asyncio.timeout(timeout):
            return await self.reader.read(READ_SIZE)

    async def write(self, data: bytes) -> None:
        if not data or self.closed:
            return
        self.writer.write(data)
        transport = self.writer.transport
        if transport.get_write_buffer_size() > 65536:
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
        try:
            if not self.writer.is_closing():
                await asyncio.wait_for(self.writer.drain(), 5)
            self.writer.close()
            await asyncio.wait_for(self.writer.wait_closed(), 5)
        except (ConnectionError, TimeoutError, ssl.SSLError, OSError):
            pass
