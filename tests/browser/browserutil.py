"""Helpers for the webmail browser tests: a real server (`letterbird serve` in a thread with an
HTTP listener), Debian's Chromium driven by Playwright, a canary web server that must never be
contacted, and screenshots under ``test-artifacts/``."""

from __future__ import annotations

import hashlib
import http.server
import os
import struct
import threading
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from letterbird.mime import parse_message
from letterbird.storage.interface import AppendTarget, BlobSource

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "browser"
PASSWORD = "browser-secret"

needs_chromium = pytest.mark.skipif(
    not os.path.exists(CHROMIUM),
    reason=f"Debian's Chromium is not installed at {CHROMIUM} (apt-get install chromium)",
)

LAUNCH_ARGS = [
    "--no-sandbox",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]


def launch(playwright: Any) -> Any:
    return playwright.chromium.launch(
        executable_path=CHROMIUM, headless=True, args=LAUNCH_ARGS, chromium_sandbox=False
    )


def screenshot(page: Any, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


@dataclass
class Canary:
    """A web server on loopback that records every request it gets (there should be none)."""

    port: int = 0
    hits: list[str] = field(default_factory=list)
    _server: http.server.ThreadingHTTPServer | None = None

    def __enter__(self) -> Canary:
        hits = self.hits

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                hits.append(self.path)
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.end_headers()
                self.wfile.write(_PNG)

            do_POST = do_GET

            def log_message(self, *args: Any) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def png(width: int = 1, height: int = 1, rgb: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    """A valid PNG of one colour."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    row = b"\x00" + bytes(rgb) * width
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(row * height))
        + chunk(b"IEND", b"")
    )


_PNG = png()


def blob_of(data: bytes) -> BlobSource:
    return BlobSource(
        hashlib.sha256(data).hexdigest(), len(data), parse_message(data).to_json(), data=data
    )


def deliver(srv: Any, address: str, data: bytes, mailbox: str = "INBOX") -> tuple[int, int]:
    async def run() -> tuple[int, int]:
        account = await srv.app.directory.get_user(address)
        out = await srv.app.storage.deliver(blob_of(data), [AppendTarget(account.id, mailbox)])
        return out[0]

    result: tuple[int, int] = srv.call(run())
    return result
