"""The webmail's "verified sender" mark: shown when *our* Authentication-Results field says
DMARC passed, never for a field naming another server."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from letterbird.auth.results import verified_sender

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "http"))
from webutil import make_env

ALICE = "alice@mx.test"


def mail(results: str) -> bytes:
    return (
        f"Return-Path: <carol@other.test>\r\nReceived: from x by mx.test; now\r\n"
        f"Authentication-Results: {results}\r\n"
        "From: Carol <carol@other.test>\r\nTo: alice@mx.test\r\nSubject: hello\r\n"
        "Date: Thu, 26 Nov 2026 10:00:00 +0000\r\n\r\nHello.\r\n"
    ).encode()


PASS = "mx.test;\r\n\tdkim=pass header.d=other.test;\r\n\tdmarc=pass header.from=other.test"


def test_verified_sender_helper() -> None:
    assert verified_sender(mail(PASS), "mx.test") == "other.test"
    assert verified_sender(mail(PASS.replace("mx.test", "elsewhere.test")), "mx.test") is None
    assert verified_sender(mail("mx.test; dmarc=fail header.from=other.test"), "mx.test") is None
    assert verified_sender(b"From: a@b.test\r\n\r\nbody", "mx.test") is None


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Any]:
    yield from make_env(tmp_path)


def test_message_page_shows_the_mark(env: Any) -> None:
    aid = env.add_user(ALICE)
    mb, verified = env.deliver(aid, mail(PASS))
    _, other = env.deliver(aid, mail(PASS.replace("mx.test", "elsewhere.test", 1)))
    env.login(ALICE)
    page = env.client.get(f"/mail/{mb}/{verified}")
    assert page.status_code == 200
    assert 'class="verified"' in page.text and "other.test is verified" in page.text
    page = env.client.get(f"/mail/{mb}/{other}")
    assert page.status_code == 200 and 'class="verified"' not in page.text
