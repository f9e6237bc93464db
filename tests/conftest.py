"""Shared fixtures: a cheap-hashing configuration in a temporary folder, and open storage."""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import pgutil
import pytest

from letterbird.config import AuthSettings, Config, ListenSettings, StorageSettings
from letterbird.directory.service import Directory
from letterbird.storage.interface import BlobSource
from letterbird.storage.postgres import PgStorage
from letterbird.storage.sqlite import SqliteStorage

CHEAP_AUTH = AuthSettings(
    argon2_time_cost=1, argon2_memory_kib=8, argon2_parallelism=1, failure_delay=0.0
)


def make_config(tmp_path: Path, **overrides: object) -> Config:
    """A configuration for tests: data in tmp_path, cheap argon2, every listener on port 0."""
    listen = ListenSettings(**{f.name: [] for f in dataclasses.fields(ListenSettings)})
    base = Config(
        hostname="mx.test",
        data_dir=str(tmp_path / "data"),
        auth=CHEAP_AUTH,
        listen=listen,
        base_dir=str(tmp_path),
    )
    if pgutil.on_postgres() and "storage" not in overrides:  # LETTERBIRD_TEST_STORAGE=postgresql
        overrides["storage"] = StorageSettings(url=pgutil.url_for_folder(tmp_path))
    return dataclasses.replace(base, **overrides)  # type: ignore[arg-type]


@pytest.fixture
def config(tmp_path: Path) -> Config:
    return make_config(tmp_path)


@pytest.fixture
async def storage(tmp_path: Path) -> AsyncIterator[SqliteStorage]:
    s = PgStorage(pgutil.new_url()) if pgutil.on_postgres() else SqliteStorage(tmp_path / "mail.db")
    await s.open()
    try:
        yield s  # type: ignore[misc]
    finally:
        await s.close()


@pytest.fixture
async def directory(storage: SqliteStorage, config: Config) -> Directory:
    return Directory(storage, config)


def blob_of(data: bytes) -> BlobSource:
    """A BlobSource for test message bytes, with its parsed structure."""
    from letterbird.mime import parse_message

    return BlobSource(
        sha256=hashlib.sha256(data).hexdigest(),
        size=len(data),
        structure=parse_message(data).to_json(),
        data=data,
    )


def sample_message(n: int = 1, body: str = "Hello Bob.") -> bytes:
    return (
        f"From: Alice <alice@alice.test>\r\nTo: bob@example.test\r\n"
        f"Subject: message {n}\r\nMessage-ID: <{n}@alice.test>\r\n"
        f"Date: Thu, 26 Nov 2026 10:00:00 +0000\r\n\r\n{body} #{n}\r\n"
    ).encode()
