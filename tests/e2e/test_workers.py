"""`letterbird serve` with several worker processes (letterbird.server.workers).

Every test runs a real master with two workers and talks to it with real clients. Which worker
takes a connection is the kernel's choice (SO_REUSEPORT hashing), so tests that need both
workers open enough connections that each one is all but certain to get some, and the
assertions hold whichever worker served what.
"""

from __future__ import annotations

import asyncio
import imaplib
import os
import poplib
import re
import signal
import smtplib
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path

import httpx
import pytest
from aiosmtpd.controller import Controller
from serverutil import (
    DeliveryStream,
    ServerProcess,
    admin,
    follow_events,
    stored_subjects,
    wait_for,
    write_config,
)

from letterbird.config import load_config

pytestmark = pytest.mark.e2e

WORKERS = 2

BASE = """
hostname = "mx.test"
workers = 2
[listen]
smtp = ["127.0.0.1:0"]
submission = ["127.0.0.1:0"]
submissions = []
imap = ["127.0.0.1:0"]
imaps = []
pop3 = ["127.0.0.1:0"]
pop3s = []
http = ["127.0.0.1:0"]
"""


def worker_pids(srv: ServerProcess) -> dict[int, int]:
    """worker index -> pid of its latest start (from the master's log)."""
    pids: dict[int, int] = {}
    for line in srv.log:
        m = re.search(r"worker\.started worker=(\d+) pid=(\d+)", line)
        if m:
            pids[int(m.group(1))] = int(m.group(2))
    return pids


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie (exited, not yet reaped) counts as gone
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except OSError:
        return False


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[ServerProcess, Path]]:
    cfg = write_config(tmp_path / "lb.toml", BASE)
    with ServerProcess(cfg, "--no-demo") as srv:
        admin(cfg, "domain", "add", "example.test")
        for user in ("bob", "carol"):
            admin(cfg, "user", "add", f"{user}@example.test", "--password-stdin", stdin="pw\n")
        yield srv, cfg


def deliver(srv: ServerProcess, subjects: list[str], rcpt: str = "bob@example.test") -> None:
    """One message per subject, each over a new SMTP connection (so both workers take some)."""
    host, port = srv.bound["smtp"]
    for subject in subjects:
        with smtplib.SMTP(host, port, timeout=30) as s:
            s.sendmail("a@alice.test", [rcpt], f"Subject: {subject}\r\n\r\nx\r\n".encode())


def test_master_starts_workers_and_stops_them(server: tuple[ServerProcess, Path]) -> None:
    srv, cfg = server
    pids = worker_pids(srv)
    assert sorted(pids) == list(range(WORKERS))
    assert all(alive(p) for p in pids.values())
    ready = [line for line in srv.log if "server.ready" in line]
    assert len(ready) == 1 and "workers=2" in ready[0]
    # each address is logged once, by the master
    assert sum("smtp listening on" in line for line in srv.log) == 1
    # connections spread over both workers: the log names the worker of each session
    deliver(srv, [f"m{i}" for i in range(24)])
    wait_for(
        lambda: (
            {m.group(1) for ln in srv.log if (m := re.search(r"\[w(\d)\].*smtp\.accepted", ln))}
            == {"0", "1"}
        ),
        what="deliveries in both workers",
    )
    # the pid file names the master (`letterbird queue flush` signals it)
    assert (tmp_data(cfg) / "letterbird.pid").read_text().strip() == str(srv.proc.pid)  # type: ignore[union-attr]
    # SIGHUP to the master reloads the certificate in every worker
    srv.signal(signal.SIGHUP)
    wait_for(
        lambda: (
            {m.group(1) for ln in srv.log if (m := re.search(r"\[w(\d)\].*tls\.reloaded", ln))}
            == {"0", "1"}
        ),
        what="both workers reloaded",
    )
    srv.signal(signal.SIGTERM)
    assert srv.wait() == 0
    wait_for(lambda: not any(alive(p) for p in pids.values()), what="workers gone")
    assert any("server.stopped" in line for line in srv.log)


def tmp_data(cfg: Path) -> Path:
    return load_config(cfg).data_path


def test_idle_sees_deliveries_from_every_worker(server: tuple[ServerProcess, Path]) -> None:
    srv, _ = server
    host, port = srv.bound["imap"]
    imap = imaplib.IMAP4(host, port)
    imap.login("bob@example.test", "pw")
    imap.select("INBOX")
    tag = imap._new_tag().decode()  # type: ignore[attr-defined]
    imap.send(f"{tag} IDLE\r\n".encode())
    assert imap.readline().startswith(b"+")
    seen: list[int] = []

    def reader() -> None:
        while True:
            line = imap.readline()
            if not line:
                return
            m = re.match(rb"\* (\d+) EXISTS", line)
            if m:
                seen.append(int(m.group(1)))
                if int(m.group(1)) >= 20:
                    return

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    deliver(srv, [f"idle-{i}" for i in range(20)])
    t.join(30)
    assert seen and max(seen) == 20
    imap.send(b"DONE\r\n")
    imap.logout()


def test_webmail_live_updates_from_every_worker(server: tuple[ServerProcess, Path]) -> None:
    """Live-update streams opened on new connections (so on both workers) all hear of a
    delivery, whichever worker stored it; the session cookie is good on every worker."""
    srv, _ = server
    host, port = srv.bound["http"]
    base = f"http://{host}:{port}"
    with httpx.Client(base_url=base, timeout=30, follow_redirects=False) as web:
        page = web.get("/login")
        token = re.search(r'name="login_token" value="([^"]+)"', page.text)
        assert token is not None
        r = web.post(
            "/login",
            data={"username": "bob@example.test", "password": "pw", "login_token": token[1]},
        )
        assert r.status_code == 303 and r.headers["location"] == "/", r.text
        cookie = {"Cookie": f"lb_session={r.cookies['lb_session']}"}
    clients = [httpx.Client(base_url=base, timeout=30, headers=cookie) for _ in range(6)]
    try:
        for c in clients:
            assert c.get("/folders").status_code == 200
        streams = [follow_events(c) for c in clients]
        deliver(srv, ["live"])
        for thread, lines in streams:
            thread.join(30)
            assert any(line.startswith("data:") for line in lines), lines
    finally:
        for c in clients:
            c.close()


def test_connection_limit_per_address_holds_across_workers(tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "lb.toml", BASE + "[limits]\nimap_connections_per_ip = 6\n")
    with ServerProcess(cfg, "--no-demo") as srv:
        host, port = srv.bound["imap"]
        held = []
        for _ in range(6):
            s = socket.create_connection((host, port), timeout=30)
            assert s.recv(200).startswith(b"* OK")
            held.append(s)
        # the seventh is refused whichever worker takes it (each holds some of the six)
        for _ in range(4):
            with socket.create_connection((host, port), timeout=30) as s:
                assert s.recv(200).startswith(b"* BYE")
        for s in held[:2]:
            s.close()

        # the two closed ones are forgotten by the worker that had them
        def two_free() -> bool:
            with socket.create_connection((host, port), timeout=30) as s:
                return s.recv(200).startswith(b"* OK")

        wait_for(two_free, what="a freed slot")
        for s in held[2:]:
            s.close()


def test_pop3_maildrop_lock_across_workers(server: tuple[ServerProcess, Path]) -> None:
    srv, _ = server
    deliver(srv, ["pop"])
    host, port = srv.bound["pop3"]
    holder = poplib.POP3(host, port, timeout=30)
    holder.user("bob@example.test")
    holder.pass_("pw")
    # every other session, on whichever worker, is refused while the holder is in
    for _ in range(6):
        other = poplib.POP3(host, port, timeout=30)
        other.user("bob@example.test")
        with pytest.raises(poplib.error_proto, match="IN-USE"):
            other.pass_("pw")
        other.close()
    holder.quit()
    again = poplib.POP3(host, port, timeout=30)
    again.user("bob@example.test")
    again.pass_("pw")
    assert again.stat()[0] == 1
    again.quit()


def test_recent_is_claimed_once_across_workers(server: tuple[ServerProcess, Path]) -> None:
    srv, _ = server
    host, port = srv.bound["imap"]
    for round_ in range(3):
        deliver(srv, [f"r{round_}"])
        recents = []
        for _ in range(6):  # six sessions, spread over both workers, one after the other
            imap = imaplib.IMAP4(host, port)
            imap.login("bob@example.test", "pw")
            imap.select("INBOX")
            recents.append(int(imap.response("RECENT")[1][0] or 0))
            imap.logout()
        assert recents == [1, 0, 0, 0, 0, 0], recents


class _Sink:
    def __init__(self) -> None:
        self.received: list[bytes] = []

    async def handle_DATA(self, server: object, session: object, envelope: object) -> str:
        self.received.append(envelope.content)  # type: ignore[attr-defined]
        return "250 OK"


def test_submission_in_any_worker_wakes_the_queue(tmp_path: Path) -> None:
    sink = _Sink()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        sink_port = probe.getsockname()[1]
    controller = Controller(sink, hostname="127.0.0.1", port=sink_port)
    controller.start()
    try:
        extra = (
            '[delivery]\npoll_interval = "10m"\nretry = ["10m"]\n'
            f'[delivery.routes]\n"remote.test" = "127.0.0.1:{sink_port}"\n'
        )
        cfg = write_config(tmp_path / "lb.toml", BASE + extra)
        with ServerProcess(cfg, "--no-demo") as srv:
            admin(cfg, "domain", "add", "example.test")
            admin(cfg, "user", "add", "bob@example.test", "--password-stdin", stdin="pw\n")
            host, port = srv.bound["submission"]
            for i in range(8):  # new connections: some land on the worker without the queue
                msg = EmailMessage()
                msg["From"] = "bob@example.test"
                msg["To"] = "x@remote.test"
                msg["Subject"] = f"out-{i}"
                msg.set_content("hello")
                with smtplib.SMTP(host, port, timeout=30) as s:
                    s.login("bob@example.test", "pw")
                    s.send_message(msg)
                # delivered long before the 10-minute poll
                wait_for(lambda n=i: len(sink.received) == n + 1, 20, f"message {i} relayed")
            served = {
                m.group(1) for ln in srv.log if (m := re.search(r"\[w(\d)\].*smtp\.accepted", ln))
            }
            assert served == {"0", "1"}, "both workers should have taken submissions"
            # the next hop goes away: the attempt fails and is retried in 10 minutes ...
            controller.stop()
            msg = EmailMessage()
            msg["From"] = "bob@example.test"
            msg["To"] = "x@remote.test"
            msg["Subject"] = "late"
            msg.set_content("hello")
            with smtplib.SMTP(host, port, timeout=30) as s:
                s.login("bob@example.test", "pw")
                s.send_message(msg)
            tried = re.compile(r"<bob@example\.test>\s+x@remote\.test\s+1\s")
            wait_for(lambda: tried.search(admin(cfg, "queue", "list")), 30, "a failed attempt")
            # ... unless `queue flush` (SIGUSR1 to the master, passed to worker 0) says now
            controller = Controller(sink, hostname="127.0.0.1", port=sink_port)
            controller.start()
            assert "woke the server" in admin(cfg, "queue", "flush")
            wait_for(lambda: len(sink.received) == 9, 30, "the flushed message relayed")
    finally:
        controller.stop()


def test_dead_worker_is_replaced(server: tuple[ServerProcess, Path]) -> None:
    srv, _ = server
    pids = worker_pids(srv)
    os.kill(pids[1], signal.SIGKILL)
    wait_for(lambda: worker_pids(srv)[1] != pids[1], what="worker 1 restarted")
    wait_for(lambda: any("worker.ready worker=1" in ln for ln in srv.log[-50:]), 30, "ready")
    assert any("worker.died" in ln and "worker=1" in ln for ln in srv.log)
    deliver(srv, [f"after-{i}" for i in range(10)])
    assert alive(pids[0])
    srv.signal(signal.SIGTERM)
    assert srv.wait() == 0


def test_killed_master_takes_its_workers_along(server: tuple[ServerProcess, Path]) -> None:
    srv, _ = server
    pids = worker_pids(srv)
    srv.kill()
    wait_for(lambda: not any(alive(p) for p in pids.values()), 30, "workers gone")


def test_sigkill_of_every_process_loses_nothing_acknowledged(
    server: tuple[ServerProcess, Path],
) -> None:
    """Both workers write the one SQLite file (or PostgreSQL) at once; kill all of them at
    once mid-stream: every message that got 250 is there after a restart."""
    srv, cfg = server
    # a new connection every 5 messages, so both workers write
    rcpts = ["bob@example.test", "carol@example.test"]
    stream = DeliveryStream(srv.bound["smtp"], rcpts, per_connection=5).start()
    wait_for(lambda: len(stream.acked) >= 200, 30, "deliveries under way")
    for pid in [*worker_pids(srv).values()]:
        os.kill(pid, signal.SIGKILL)
    srv.kill()
    stream.stop()
    acked = stream.acked
    with ServerProcess(cfg, "--no-demo"):
        pass
    for rcpt in ("bob@example.test", "carol@example.test"):
        stored = set(asyncio.run(stored_subjects(load_config(cfg), rcpt)))
        missing = [t for t in acked if t not in stored]
        assert missing == [], f"{len(missing)} acknowledged messages lost for {rcpt}"


def test_a_second_server_cannot_share_the_ports(
    tmp_path: Path, server: tuple[ServerProcess, Path]
) -> None:
    """SO_REUSEPORT must not let a second `letterbird serve` (same user) join our ports."""
    srv, _ = server
    host, port = srv.bound["smtp"]
    other = tmp_path / "other"
    other.mkdir()
    cfg = write_config(
        other / "lb.toml", BASE.replace('smtp = ["127.0.0.1:0"]', f'smtp = ["{host}:{port}"]')
    )
    p = subprocess.run(
        [sys.executable, "-m", "letterbird", "--config", str(cfg), "serve", "--no-demo"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode != 0
    assert f"smtp: cannot listen on {host}:{port}" in p.stderr
    deliver(srv, ["still ours"])  # the first server is untouched


def test_ctrl_c_stops_master_and_workers_quietly(tmp_path: Path) -> None:
    """Ctrl-C in a terminal signals the whole process group: the master alone acts on it and
    stops the workers; nothing is logged as a dying worker or a lost link."""
    cfg = write_config(tmp_path / "lb.toml", BASE)
    proc = subprocess.Popen(
        [sys.executable, "-m", "letterbird", "--config", str(cfg), "serve", "--no-demo"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        pid_file = tmp_data(cfg) / "letterbird.pid"
        wait_for(pid_file.exists, 60, "the server ready")
        os.killpg(proc.pid, signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
    assert proc.returncode == 0, out
    assert out.count("server.stopped") == WORKERS + 1, out
    assert "WARNING" not in out and "ERROR" not in out, out
