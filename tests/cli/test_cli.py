"""The `letterbird` command, run as a real process."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pgutil
import pytest
from serverutil import storage_toml

CONFIG = """
hostname = "mx.test"
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
def lb(tmp_path: Path):  # type: ignore[no-untyped-def]
    cfg = tmp_path / "lb.toml"
    cfg.write_text(CONFIG + storage_toml(tmp_path))  # PostgreSQL when the run asks for it

    def run(
        *args: str, stdin: str | None = None, ok: bool = True
    ) -> subprocess.CompletedProcess[str]:
        env = dict(os.environ, LETTERBIRD_CONFIG=str(cfg))
        p = subprocess.run(
            [sys.executable, "-m", "letterbird", *args],
            input=stdin,
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )
        if ok:
            assert p.returncode == 0, p.stderr
        else:
            assert p.returncode != 0, p.stdout
        return p

    return run


def test_admin_commands(lb, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    checked = lb("check-config").stdout
    assert "configuration OK" in checked
    assert re.search(r"^workers   [1-9]\d* \(", checked, re.M)  # processes serve config says
    lb("domain", "add", "Example.TEST")
    lb("domain", "add", "bücher.test")
    out = lb("domain", "list").stdout.splitlines()
    assert out == ["example.test", "xn--bcher-kva.test  (bücher.test)"]
    lb("user", "add", "bob@example.test", "--password-stdin", stdin="s3cret\n")
    lb("user", "add", "alice@example.test", "--password-stdin", stdin="pw\n")
    assert "bob@example.test" in lb("user", "list").stdout
    assert lb("user", "list", "example.test").stdout.count("@") == 2
    lb("alias", "add", "team@example.test", "bob@example.test", "alice@example.test")
    lb("alias", "add", "@bücher.test", "bob@example.test")
    aliases = lb("alias", "list").stdout
    assert "team@example.test  -> bob@example.test, alice@example.test" in aliases
    assert "@xn--bcher-kva.test  -> bob@example.test" in aliases
    mailboxes = lb("mailbox", "list", "bob@example.test").stdout.splitlines()
    assert mailboxes[0].split() == ["INBOX", "0"]
    assert {line.split()[0] for line in mailboxes} == {
        "INBOX",
        "Sent",
        "Drafts",
        "Trash",
        "Junk",
        "Archive",
    }
    lb("user", "passwd", "bob@example.test", "--password-stdin", stdin="n3w\n")
    lb("alias", "remove", "team@example.test")
    lb("user", "remove", "alice@example.test")
    assert "alice" not in lb("user", "list").stdout
    # the SQLite file is relative to the config file; on PostgreSQL there is none
    assert (tmp_path / "letterbird-data" / "mail.db").exists() is not pgutil.on_postgres()


def test_errors_go_to_stderr(lb, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    p = lb("user", "add", "x@nowhere.test", "--password-stdin", stdin="pw\n", ok=False)
    assert "no domain nowhere.test" in p.stderr and p.stdout == ""
    lb("domain", "add", "example.test")
    p = lb("domain", "add", "example.test", ok=False)
    assert "exists already" in p.stderr
    p = lb("user", "add", "bob@example.test", "--password-stdin", stdin="", ok=False)
    assert "no password" in p.stderr
    p = lb("mailbox", "list", "ghost@example.test", ok=False)
    assert "no user" in p.stderr
    p = lb("domain", "add", "bad..name", ok=False)
    assert "invalid domain" in p.stderr
    bad = tmp_path / "bad.toml"
    bad.write_text("[limits]\nsmtp_message_size = 'x'\n")
    p = lb("--config", str(bad), "check-config", ok=False)
    assert "limits.smtp_message_size" in p.stderr
