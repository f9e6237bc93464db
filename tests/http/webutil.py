"""Fixtures for the webmail's HTTP-level tests: a real store (SQLite, or PostgreSQL when
``LETTERBIRD_TEST_STORAGE=postgresql``), the Starlette app, and Starlette's test client running
both in one event loop (its portal)."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import make_config
from starlette.testclient import TestClient

from letterbird.config import Config
from letterbird.directory.service import Directory
from letterbird.http.app import create_app
from letterbird.http.settings import WebSettings
from letterbird.mime import parse_message
from letterbird.server.app import App
from letterbird.server.tls import TlsManager
from letterbird.storage import open_storage_for
from letterbird.storage.interface import AppendTarget, BlobSource, Mailbox, Storage

PASSWORD = "correct horse"


def blob(data: bytes) -> BlobSource:
    return BlobSource(
        hashlib.sha256(data).hexdigest(), len(data), parse_message(data).to_json(), data=data
    )


@dataclass
class WebEnv:
    client: TestClient
    app: App
    storage: Storage
    config: Config

    def call(self, fn: Any, *args: Any) -> Any:
        return self.client.portal.call(fn, *args)  # type: ignore[union-attr]

    def add_user(self, address: str, password: str = PASSWORD) -> int:
        async def run() -> int:
            domain = address.rpartition("@")[2]
            if not await self.app.directory.is_local_domain(domain):
                await self.app.directory.add_domain(domain)
            return (await self.app.directory.add_user(address, password)).id

        return int(self.call(run))

    def deliver(
        self,
        account_id: int,
        data: bytes,
        mailbox: str = "INBOX",
        flags: frozenset[str] = frozenset(),
    ) -> tuple[int, int]:
        async def run() -> tuple[int, int]:
            out = await self.storage.deliver(blob(data), [AppendTarget(account_id, mailbox, flags)])
            return out[0]

        return self.call(run)  # type: ignore[no-any-return]

    def mailbox(self, account_id: int, name: str) -> Mailbox:
        async def run() -> Mailbox | None:
            return await self.storage.get_mailbox(account_id, name)

        mb = self.call(run)
        assert mb is not None
        return mb  # type: ignore[no-any-return]

    def flags(self, mailbox_id: int, uid: int) -> frozenset[str]:
        async def run() -> frozenset[str]:
            recs = await self.storage.fetch_messages(mailbox_id, [uid])
            return recs[0].flags if recs else frozenset({"<gone>"})

        return self.call(run)  # type: ignore[no-any-return]

    def uids(self, mailbox_id: int) -> list[int]:
        async def run() -> list[int]:
            return [r[0] for r in await self.storage.list_messages(mailbox_id)]

        return self.call(run)  # type: ignore[no-any-return]

    def raw(self, mailbox_id: int, uid: int) -> bytes:
        async def run() -> bytes:
            recs = await self.storage.fetch_messages(mailbox_id, [uid])
            return await self.storage.read_blob(recs[0].blob_id)

        return self.call(run)  # type: ignore[no-any-return]

    def login(self, address: str, password: str = PASSWORD) -> str:
        """Log in through the form; returns the CSRF token of the first page."""
        page = self.client.get("/login")
        token = re.search(r'name="login_token" value="([^"]+)"', page.text)
        assert token is not None
        r = self.client.post(
            "/login",
            data={"username": address, "password": password, "login_token": token.group(1)},
            follow_redirects=True,
        )
        assert r.status_code == 200, r.text
        return csrf_of(r.text)


def csrf_of(page: str) -> str:
    m = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert m is not None, page
    return m.group(1)


def make_env(
    tmp_path: Path,
    *,
    base_url: str = "http://testserver",
    settings: WebSettings | None = None,
    config: Config | None = None,
) -> Iterator[WebEnv]:
    config = config or make_config(tmp_path)
    storage = open_storage_for(config)  # make_config: SQLite in tmp_path, or a PG schema
    app = App(config, storage, Directory(storage, config), TlsManager(config))
    asgi = create_app(app, settings)
    with TestClient(asgi, base_url=base_url, follow_redirects=False) as client:
        client.portal.call(storage.open)  # type: ignore[union-attr]
        try:
            yield WebEnv(client, app, storage, config)
        finally:
            client.portal.call(storage.close)  # type: ignore[union-attr]


@pytest.fixture
def env(tmp_path: Path) -> Iterator[WebEnv]:
    yield from make_env(tmp_path)
