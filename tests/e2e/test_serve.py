"""`letterbird serve` as a real process: start-up, first run, signals, errors, crash safety."""

from __future__ import annotations

import asyncio
import signal
import smtplib
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from serverutil import DeliveryStream, ServerProcess, stored_subjects, write_config

from letterbird.config import load_config

pytestmark = pytest.mark.e2e

BASE = """
hostname = "mx.test"
[listen]
smtp = ["127.0.0.1:0"]
submission = []
submissions = []
imap = []
imaps = []
pop3 = []
pop3s = []
http = []
"""


def test_first_run_listeners_and_sigterm(tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "lb.toml", BASE)
    with ServerProcess(cfg) as srv:
        log = "\n".join(srv.log)
        assert "First run: created domain example.test and account demo@example.test" in log
        assert "with password " in log
        host, port = srv.bound["smtp"]
        assert host == "127.0.0.1" and port > 0
        with smtplib.SMTP(host, port) as s:
            assert (
                s.sendmail("a@alice.test", ["demo@example.test"], b"Subject: hi\r\n\r\nx\r\n") == {}
            )
        srv.signal(signal.SIGTERM)
        assert srv.wait() == 0
        assert any("server.stopped" in line for line in srv.log)
    # the second run does not create anything again, and the message is there
    with ServerProcess(cfg) as srv:
        assert not any("First run" in line for line in srv.log)
        srv.signal(signal.SIGINT)
        assert srv.wait() == 0
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "letterbird",
            "--config",
            str(cfg),
            "mailbox",
            "list",
            "demo@example.test",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert out.splitlines()[0].split()[:2] == ["INBOX", "1"]


def test_sighup_reloads_certificate(tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "lb.toml", BASE)
    with ServerProcess(cfg, "--no-demo") as srv:
        srv.signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while not any("tls.reloaded" in line for line in srv.log):
            assert time.monotonic() < deadline, srv.log
            time.sleep(0.05)
        srv.signal(signal.SIGTERM)
        assert srv.wait() == 0


def test_taken_port_and_bad_config_exit_nonzero(tmp_path: Path) -> None:
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen()
    port = blocker.getsockname()[1]
    try:
        cfg = write_config(tmp_path / "lb.toml", BASE.replace("127.0.0.1:0", f"127.0.0.1:{port}"))
        p = subprocess.run(
            [sys.executable, "-m", "letterbird", "--config", str(cfg), "serve", "--no-demo"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert p.returncode != 0
        assert f"smtp: cannot listen on 127.0.0.1:{port}" in p.stderr
    finally:
        blocker.close()
    bad = write_config(tmp_path / "bad.toml", BASE + "\n[limits]\nsmtp_recipients = 'many'\n")
    p = subprocess.run(
        [sys.executable, "-m", "letterbird", "--config", str(bad), "serve"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode != 0 and "limits.smtp_recipients" in p.stderr


def test_sigkill_loses_nothing_acknowledged(tmp_path: Path) -> None:
    """Several clients stream deliveries; SIGKILL the server mid-stream; every message that got
    250 is in the mailbox after restart (and nothing that did not get 250 is counted)."""
    cfg = write_config(tmp_path / "lb.toml", BASE)
    srv = ServerProcess(cfg, "--no-demo").start()
    subprocess.run(
        [sys.executable, "-m", "letterbird", "--config", str(cfg), "domain", "add", "example.test"],
        check=True,
        capture_output=True,
    )
    subprocess.run(
        [
            sys.executable,
            "-m",
            "letterbird",
            "--config",
            str(cfg),
            "user",
            "add",
            "bob@example.test",
            "--password-stdin",
        ],
        input="pw\n",
        text=True,
        check=True,
        capture_output=True,
    )
    stream = DeliveryStream(srv.bound["smtp"], ["bob@example.test"]).start()
    deadline = time.monotonic() + 20
    while len(stream.acked) < 300 and time.monotonic() < deadline:
        time.sleep(0.05)
    srv.kill()
    stream.stop()
    acked = stream.acked
    assert len(acked) >= 50
    # restart and count what is stored
    with ServerProcess(cfg, "--no-demo"):
        pass
    stored = set(asyncio.run(stored_subjects(load_config(cfg), "bob@example.test")))
    missing = [t for t in acked if t not in stored]
    assert missing == [], f"{len(missing)} acknowledged messages lost: {missing[:5]}"
