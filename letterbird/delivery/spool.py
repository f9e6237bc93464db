"""Spooling an incoming message: bounded memory, hashed while it streams.

The SMTP edge writes the trace headers, then each data chunk as it arrives. Small messages stay
in memory; past ``memory_limit`` the bytes go to a temporary file in the spool folder, so a
50 MB message never sits in RAM while it is being received. :meth:`Spool.finish` parses the
message once (structure cached at delivery, DESIGN.md §4) and returns a
:class:`~letterbird.storage.interface.BlobSource` for one storage transaction.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import tempfile
from pathlib import Path

from letterbird.mime import parse_message
from letterbird.storage.interface import BlobSource

__all__ = ["Spool"]

MEMORY_LIMIT = 1 << 20
PARSE_IN_THREAD = 256 * 1024


class Spool:
    def __init__(self, folder: Path, memory_limit: int = MEMORY_LIMIT) -> None:
        self._folder = folder
        self._limit = memory_limit
        self._buf: list[bytes] = []
        self._buffered = 0
        self._file: tempfile._TemporaryFileWrapper[bytes] | None = None
        self._hash = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> None:
        if not data:
            return
        self._hash.update(data)
        self.size += len(data)
        if self._file is not None:
            self._file.write(data)
            return
        self._buf.append(data)
        self._buffered += len(data)
        if self._buffered > self._limit:
            self._folder.mkdir(parents=True, exist_ok=True)
            self._file = tempfile.NamedTemporaryFile(  # noqa: SIM115 - lives across calls
                dir=self._folder, prefix="in-", delete=False
            )
            self._file.write(b"".join(self._buf))
            self._buf = []

    @property
    def in_memory(self) -> bool:
        return self._file is None

    async def finish(self) -> BlobSource:
        """Close the spool and return the blob with its parsed structure."""
        digest = self._hash.hexdigest()
        if self._file is None:
            data = b"".join(self._buf)
            self._buf = [data]
            if len(data) > PARSE_IN_THREAD:
                info = await asyncio.to_thread(parse_message, data)
            else:
                info = parse_message(data)
            return BlobSource(digest, self.size, info.to_json(), data=data)
        self._file.flush()
        path = self._file.name
        self._file.close()

        def parse() -> bytes:
            with open(path, "rb") as fh:
                return parse_message(fh.read()).to_json()

        structure = await asyncio.to_thread(parse)
        return BlobSource(digest, self.size, structure, path=path)

    def discard(self) -> None:
        """Forget the message (aborted transaction, or after it was stored)."""
        self._buf = []
        if self._file is not None:
            name = self._file.name
            try:
                self._file.close()
            finally:
                try:
                    os.unlink(name)
                except FileNotFoundError:
                    pass
            self._file = None
