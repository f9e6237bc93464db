"""The SQLite writer thread survives a batch that fails outside its jobs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from letterbird.storage.interface import StorageError
from letterbird.storage.sqlite import SqliteStorage


async def test_writer_survives_a_failing_batch(tmp_path: Path, monkeypatch: Any) -> None:
    storage = SqliteStorage(tmp_path / "mail.db")
    await storage.open()
    try:
        real = storage._transact
        calls = {"n": 0}

        def failing_once(conn: Any, batch: Any) -> Any:
            calls["n"] += 1
            if calls["n"] == 1:
                conn.execute("BEGIN IMMEDIATE")  # left open, as a failed SAVEPOINT would
                raise OSError("disk I/O error")
            return real(conn, batch)

        monkeypatch.setattr(storage, "_transact", failing_once)
        with pytest.raises(StorageError, match="write failed: disk I/O error"):
            await storage.add_domain("example.test")
        # the thread lives on, the open transaction was rolled back, the next write commits
        await storage.add_domain("example.test")
        assert [d.name for d in await storage.list_domains()] == ["example.test"]
    finally:
        await storage.close()
