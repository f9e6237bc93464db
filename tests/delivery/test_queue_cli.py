"""``letterbird queue list|show|flush|remove`` against a database with queued mail."""

from __future__ import annotations

import asyncio
import subprocess
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import blob_of
from queueutil import TRACE, message

from letterbird.cli.main import cli
from letterbird.config import load_config
from letterbird.delivery.queue.service import new_queue_id
from letterbird.directory.service import Directory
from letterbird.storage import open_storage_for
from letterbird.storage.interface import OutgoingMessage, QueueRecipient

CONFIG = """
hostname = "mx.alice.test"
data_dir = "{data}"
[auth]
argon2_time_cost = 1
argon2_memory_kib = 8
argon2_parallelism = 1
failure_delay = 0
[listen]
smtp = []
submission = []
submissions = []
imap = []
imaps = []
pop3 = []
pop3s = []
http = []
"""


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Path, str]:
    """A config file and a database with one queued message that failed once."""
    path = tmp_path / "lb.toml"
    path.write_text(CONFIG.format(data=tmp_path / "data"))
    cfg = load_config(path)
    queue_id = new_queue_id()

    async def fill() -> None:
        storage = open_storage_for(cfg)
        await storage.open()
        try:
            directory = Directory(storage, cfg)
            await directory.add_domain("alice.test")
            await directory.add_user("alice@alice.test", "pw")
            out = OutgoingMessage(
                "alice@alice.test",
                (
                    QueueRecipient("bob@bob.test", ("SUCCESS", "FAILURE"), "rfc822;bob@bob.test"),
                    QueueRecipient("carol@carol.test"),
                ),
                envid="ENV1",
                ret="HDRS",
            )
            await storage.deliver(blob_of(TRACE + message("queued")), [], out, queue_id)
            claimed = await storage.queue_claim("test", 60.0, 2, now=time.time() + 1)
            [entry] = [e for e in claimed if e.domain == "bob.test"]
            [other] = [e for e in claimed if e.domain == "carol.test"]
            await storage.queue_renew([other.id], "test", -1.0)  # released untouched
            await storage.queue_update(
                entry.id,
                "test",
                entry.recipients,
                time.time() + 3600,
                "mx.bob.test[127.0.0.3]:25: 451 4.4.1 Connection failed: refused",
            )
        finally:
            await storage.close()

    asyncio.run(fill())
    return path, queue_id


def lb(path: Path, *args: str, ok: bool = True) -> str:
    result = CliRunner().invoke(cli, ["--config", str(path), "queue", *args])
    assert (result.exit_code == 0) == ok, result.output
    return result.output


def test_list(setup: tuple[Path, str]) -> None:
    path, queue_id = setup
    out = lb(path, "list").splitlines()
    assert out[0].split()[:3] == ["ID", "SENDER", "RECIPIENTS"]
    rows = [line for line in out if line.startswith(queue_id)]
    assert len(rows) == 2  # one per destination domain
    bob = next(r for r in rows if "bob@bob.test" in r)
    assert "<alice@alice.test>" in bob
    assert " 1 " in bob  # attempts
    assert time.strftime("%Y-%m-%d") in bob or "now" in bob or time.strftime("%Y") in bob
    assert bob.endswith("451 4.4.1 Connection failed: refused")
    carol = next(r for r in rows if "carol@carol.test" in r)
    assert " 0 " in carol and "now" in carol
    assert out[-1] == "1 message(s), 2 destination(s)"


def test_show(setup: tuple[Path, str]) -> None:
    path, queue_id = setup
    out = lb(path, "show", queue_id)
    assert f"id          {queue_id}" in out
    assert "sender      <alice@alice.test>" in out
    assert "envid       ENV1" in out and "ret         HDRS" in out
    assert "destination bob.test" in out and "destination carol.test" in out
    assert "rcpt      <bob@bob.test>  NOTIFY=SUCCESS,FAILURE  ORCPT=rfc822;bob@bob.test" in out
    assert "error     mx.bob.test[127.0.0.3]:25: 451 4.4.1" in out
    assert "header      Subject: queued" in out
    assert "header      From: Alice <alice@alice.test>" in out
    assert "Return-Path" not in out
    assert "no queued message NOPE" in lb(path, "show", "NOPE", ok=False)


def test_flush_without_a_server(setup: tuple[Path, str], tmp_path: Path) -> None:
    path, _ = setup
    # a stale pid file naming a process that is not Letterbird is not signalled
    with subprocess.Popen(["sleep", "30"]) as other:
        try:
            (tmp_path / "data" / "letterbird.pid").write_text(f"{other.pid}\n")
            out = lb(path, "flush")
            assert other.poll() is None
        finally:
            other.kill()
    assert "1 queued destination(s) made due now" in out
    assert "no running server found" in out
    assert "now" in next(r for r in lb(path, "list").splitlines() if "bob@bob.test" in r)


def test_remove_bounces_then_silent(setup: tuple[Path, str]) -> None:
    path, queue_id = setup
    out = lb(path, "remove", queue_id)
    assert f"removed {queue_id} (2 recipient(s)), sender told" in out
    assert lb(path, "list").strip() == "the queue is empty"
    mailbox = CliRunner().invoke(
        cli, ["--config", str(path), "mailbox", "list", "alice@alice.test"]
    )
    assert mailbox.output.split()[:2] == ["INBOX", "1"]  # the failure notice
    assert "no queued message" in lb(path, "remove", queue_id, ok=False)


def test_remove_silent(setup: tuple[Path, str]) -> None:
    path, queue_id = setup
    assert "sender told" not in lb(path, "remove", "--silent", queue_id)
    mailbox = CliRunner().invoke(
        cli, ["--config", str(path), "mailbox", "list", "alice@alice.test"]
    )
    assert "INBOX" not in mailbox.output or mailbox.output.split()[:2] == ["INBOX", "0"]
