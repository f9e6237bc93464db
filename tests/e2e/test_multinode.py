"""Many nodes, one database: real ``letterbird serve`` processes on different loopback addresses
sharing one PostgreSQL schema (DESIGN.md §3, §6, §7).

- mail delivered over SMTP on node A is read over POP3 and IMAP on node B;
- an IMAP IDLE on node B is woken by a delivery on node A (LISTEN/NOTIFY);
- a webmail login on node A is valid on node B (one session secret, in the database), and a
  logout on node B ends it on node A too (revocations in the database);
- the outgoing queue is shared: node A is SIGKILLed while it holds the lease of a message it is
  delivering; node B takes the message over when the lease expires and delivers it, once;
- behind a load balancer, PROXY protocol v1/v2 headers from trusted peers give every listener
  the real client address (these run on SQLite unless LETTERBIRD_TEST_STORAGE=postgresql).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import poplib
import re
import smtplib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pgutil
import pytest
from conftest import blob_of
from serverutil import ServerProcess, ServerThread, admin, server_config, write_config

from letterbird.config import ProxySettings
from letterbird.proto.proxy import encode_v1, encode_v2
from letterbird.storage.interface import OutgoingMessage, QueueRecipient
from letterbird.storage.pg_schema import SCHEMA_VERSION
from letterbird.storage.postgres import PgStorage

pytestmark = pytest.mark.e2e

PASSWORD = "node-secret"
MSG = (
    b"From: Alice <alice@alice.test>\r\nTo: Bob <bob@example.test>\r\n"
    b"Subject: across nodes\r\nMessage-ID: <mn1@alice.test>\r\n\r\nHello from node A.\r\n"
)


def node_config(
    tmp_path: Path,
    name: str,
    url: str,
    address: str,
    sink: tuple[str, int] | None = None,
    http: bool = False,
) -> Path:
    folder = tmp_path / name
    folder.mkdir(exist_ok=True)
    route = f'\n[delivery.routes]\n"remote.test" = "{sink[0]}:{sink[1]}"\n' if sink else ""
    body = f"""
hostname = "{name}.test"
data_dir = "data"
[storage]
url = "{url}"
[listen]
smtp = ["{address}:0"]
submission = []
submissions = []
imap = ["{address}:0"]
imaps = []
pop3 = ["{address}:0"]
pop3s = []
http = [{f'"{address}:0"' if http else ""}]
[delivery]
tls = "none"
lease = "2s"
poll_interval = "0.3s"
retry = ["1s"]
command_timeout = "60s"
{route}"""
    return write_config(folder / "lb.toml", body)


@pytest.fixture
def url() -> Iterator[str]:
    u = pgutil.new_url()
    yield u
    pgutil.drop_schema(u)


@pytest.fixture
def two_nodes(tmp_path: Path, url: str) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    cfg_a = node_config(tmp_path, "node-a", url, "127.0.0.1", http=True)
    cfg_b = node_config(tmp_path, "node-b", url, "127.0.0.2", http=True)
    assert admin(cfg_a, "migrate").strip() == f"schema migrated from version 0 to {SCHEMA_VERSION}"
    assert admin(cfg_b, "migrate").strip() == f"schema up to date (version {SCHEMA_VERSION})"
    admin(cfg_a, "domain", "add", "example.test")
    admin(cfg_b, "user", "add", "bob@example.test", "--password-stdin", stdin=PASSWORD + "\n")
    with ServerProcess(cfg_a, "--no-demo") as a, ServerProcess(cfg_b, "--no-demo") as b:
        assert a.bound["smtp"][0] == "127.0.0.1" and b.bound["smtp"][0] == "127.0.0.2"
        yield a, b


def send(node: ServerProcess, body: bytes = MSG) -> None:
    host, port = node.bound["smtp"]
    with smtplib.SMTP(host, port, local_hostname="client.test", timeout=30) as s:
        assert s.sendmail("alice@alice.test", ["bob@example.test"], body) == {}


@pytest.mark.pg
def test_deliver_on_one_node_read_on_another(
    two_nodes: tuple[ServerProcess, ServerProcess],
) -> None:
    a, b = two_nodes
    send(a)
    host, port = b.bound["pop3"]
    pop = poplib.POP3(host, port, timeout=30)
    try:
        pop.user("bob@example.test")
        pop.pass_(PASSWORD)
        count, _ = pop.stat()
        assert count == 1
        lines = pop.retr(1)[1]
        assert b"Hello from node A." in lines
    finally:
        pop.quit()
    from imapclient import IMAPClient

    host, port = b.bound["imap"]
    with IMAPClient(host, port, ssl=False, timeout=30) as imap:
        imap.login("bob@example.test", PASSWORD)
        imap.select_folder("INBOX")
        [uid] = imap.search("ALL")
        data = imap.fetch([uid], ["BODY.PEEK[]"])[uid][b"BODY[]"]
        assert data.endswith(b"Hello from node A.\r\n")


@pytest.mark.pg
def test_idle_on_one_node_woken_by_another(two_nodes: tuple[ServerProcess, ServerProcess]) -> None:
    from imapclient import IMAPClient

    a, b = two_nodes
    host, port = b.bound["imap"]
    with IMAPClient(host, port, ssl=False, timeout=30) as imap:
        imap.login("bob@example.test", PASSWORD)
        imap.select_folder("INBOX")
        imap.idle()
        try:
            send(a)
            deadline = time.monotonic() + 15
            responses: list[object] = []
            while time.monotonic() < deadline:
                responses = imap.idle_check(timeout=1)
                if any(r[1] == b"EXISTS" for r in responses if isinstance(r, tuple)):
                    break
            assert (1, b"EXISTS") in responses, responses
        finally:
            imap.idle_done()


def _web(node: ServerProcess) -> httpx.Client:
    host, port = node.bound["http"]
    return httpx.Client(base_url=f"http://{host}:{port}", timeout=30, follow_redirects=False)


def _csrf(page: str) -> str:
    m = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert m is not None, page
    return m.group(1)


@pytest.mark.pg
def test_webmail_session_across_nodes(
    tmp_path: Path, two_nodes: tuple[ServerProcess, ServerProcess]
) -> None:
    """Behind a load balancer a browser's requests land on any node: the session cookie one
    node issued is accepted by the other, and a logout on either ends it on both."""
    a, b = two_nodes
    with _web(a) as web_a, _web(b) as web_b:
        page = web_a.get("/login")
        token = re.search(r'name="login_token" value="([^"]+)"', page.text)
        assert token is not None
        r = web_a.post(
            "/login",
            data={"username": "bob@example.test", "password": PASSWORD, "login_token": token[1]},
        )
        assert r.status_code == 303 and r.headers["location"] == "/", r.text
        session = r.cookies["lb_session"]
        cookie = {"Cookie": f"lb_session={session}"}
        on_a = web_a.get("/folders", headers=cookie)
        on_b = web_b.get("/folders", headers=cookie)
        assert on_a.status_code == 200 and on_b.status_code == 200, (on_b.status_code, b.log)
        assert "Inbox" in on_b.text
        r = web_b.post("/logout", data={"csrf_token": _csrf(on_b.text)}, headers=cookie)
        assert r.status_code == 303 and r.headers["location"] == "/login"
        for web in (web_a, web_b):  # the same cookie, replayed after the logout
            r = web.get("/folders", headers=cookie)
            assert r.status_code == 303 and r.headers["location"] == "/login"
    # neither node keeps a secret of its own any more
    assert not list(tmp_path.glob("node-*/data/web-session.key"))


@pytest.mark.pg
def test_pop3_maildrop_lock_across_nodes(two_nodes: tuple[ServerProcess, ServerProcess]) -> None:
    a, b = two_nodes
    first = poplib.POP3(*a.bound["pop3"], timeout=30)
    try:
        first.user("bob@example.test")
        first.pass_(PASSWORD)
        second = poplib.POP3(*b.bound["pop3"], timeout=30)
        try:
            second.user("bob@example.test")
            with pytest.raises(poplib.error_proto, match="IN-USE"):
                second.pass_(PASSWORD)
        finally:
            second.close()
    finally:
        first.quit()
    again = poplib.POP3(*b.bound["pop3"], timeout=30)
    again.user("bob@example.test")
    again.pass_(PASSWORD)
    again.quit()


@pytest.mark.pg
def test_login_throttling_across_nodes(two_nodes: tuple[ServerProcess, ServerProcess]) -> None:
    a, b = two_nodes
    for i in range(10):  # [auth] max_failures = 10 by default, spread over both nodes
        node = (a, b)[i % 2]
        pop = poplib.POP3(*node.bound["pop3"], timeout=30)
        pop.user("bob@example.test")
        with pytest.raises(poplib.error_proto):
            pop.pass_("wrong")
        pop.close()
    pop = poplib.POP3(*a.bound["pop3"], timeout=30)
    pop.user("bob@example.test")
    with pytest.raises(poplib.error_proto):
        pop.pass_(PASSWORD)  # right password, but the account is locked out on every node
    pop.close()


class Sink:
    """A next hop for remote.test: the first connection is held silent (the delivering node
    stays in the middle of its attempt, lease held); later ones speak SMTP and keep messages."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.address = self.sock.getsockname()[:2]
        self.connections = 0
        self.messages: list[bytes] = []
        self.held = threading.Event()
        self._stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            first = self.connections == 1
            threading.Thread(target=self._serve, args=(conn, first), daemon=True).start()

    def _serve(self, conn: socket.socket, hold: bool) -> None:
        with conn:
            if hold:
                self.held.set()
                with contextlib.suppress(OSError):
                    while conn.recv(1024):
                        pass
                return
            f = conn.makefile("rb")
            conn.sendall(b"220 sink.test ESMTP\r\n")
            while True:
                line = f.readline()
                if not line:
                    return
                verb = line[:4].upper()
                if verb in (b"EHLO", b"HELO"):
                    conn.sendall(b"250-sink.test\r\n250 8BITMIME\r\n")
                elif verb == b"DATA":
                    conn.sendall(b"354 go ahead\r\n")
                    data = b""
                    while not data.endswith(b"\r\n.\r\n"):
                        chunk = f.readline()
                        if not chunk:
                            return
                        data += chunk
                    self.messages.append(data)
                    conn.sendall(b"250 2.0.0 queued\r\n")
                elif verb == b"QUIT":
                    conn.sendall(b"221 bye\r\n")
                    return
                else:
                    conn.sendall(b"250 2.0.0 ok\r\n")

    def close(self) -> None:
        self._stop = True
        self.sock.close()


@pytest.mark.pg
def test_queue_lease_taken_over_after_sigkill(tmp_path: Path, url: str) -> None:
    sink = Sink()
    try:
        cfg_a = node_config(tmp_path, "node-a", url, "127.0.0.1", sink.address)
        cfg_b = node_config(tmp_path, "node-b", url, "127.0.0.2", sink.address)
        admin(cfg_a, "migrate")

        async def enqueue() -> None:
            s = PgStorage(url, listen=False)
            await s.open()
            try:
                out = OutgoingMessage("alice@example.test", (QueueRecipient("carol@remote.test"),))
                await s.deliver(blob_of(MSG), [], out, "QKILL0001")
            finally:
                await s.close()

        asyncio.run(enqueue())
        a = ServerProcess(cfg_a, "--no-demo").start()
        try:
            # node A claims the message and is stuck in the middle of delivering it
            assert sink.held.wait(20), a.log
            a.kill()
        finally:
            a.kill()
        with ServerProcess(cfg_b, "--no-demo") as b:
            deadline = time.monotonic() + 30
            while not sink.messages and time.monotonic() < deadline:
                time.sleep(0.1)
            assert len(sink.messages) == 1, b.log
            assert b"Hello from node A." in sink.messages[0]
            # node B finished the entry: the queue is empty, and nothing is sent twice
            deadline = time.monotonic() + 10
            while "QKILL0001" in admin(cfg_b, "queue", "list") and time.monotonic() < deadline:
                time.sleep(0.2)
            time.sleep(1.0)
            assert len(sink.messages) == 1
            assert any("queue.attempt" in line and "QKILL0001" in line for line in b.log), b.log
    finally:
        sink.close()


# -- PROXY protocol from a trusted load balancer --------------------------------------------------
@pytest.fixture
def proxied(tmp_path: Path) -> Iterator[ServerThread]:
    cfg = server_config(tmp_path, smtp=["127.0.0.1:0"], pop3=["127.0.0.1:0"], pop3s=["127.0.0.1:0"])
    cfg = dataclasses.replace(cfg, proxy=ProxySettings(trusted=["127.0.0.0/8"], timeout=2.0))
    with ServerThread(cfg) as srv:
        srv.add_user("bob@example.test", PASSWORD)
        yield srv


def _connect(srv: ServerThread, key: str, header: bytes) -> socket.socket:
    sock = socket.create_connection(srv.address(key), timeout=10)
    sock.sendall(header)
    return sock


def _line(sock: socket.socket) -> bytes:
    data = b""
    while not data.endswith(b"\r\n"):
        chunk = sock.recv(1)
        if not chunk:
            return data
        data += chunk
    return data


def test_proxy_v1_gives_smtp_the_real_client(proxied: ServerThread) -> None:
    with _connect(proxied, "smtp", encode_v1(("203.0.113.7", 40000), ("192.0.2.1", 25))) as s:
        assert _line(s).startswith(b"220 ")
        for cmd, code in (
            (b"EHLO client.test", b"250 "),
            (b"MAIL FROM:<a@alice.test>", b"250 "),
            (b"RCPT TO:<bob@example.test>", b"250 "),
            (b"DATA", b"354 "),
        ):
            s.sendall(cmd + b"\r\n")
            line = _line(s)
            while line[3:4] == b"-":
                line = _line(s)
            assert line.startswith(code), (cmd, line)
        s.sendall(b"Subject: via proxy\r\n\r\nhi\r\n.\r\n")
        assert _line(s).startswith(b"250 ")
    [stored] = proxied.messages("bob@example.test")
    received = stored.split(b"\r\n\r\n", 1)[0]
    assert b"203.0.113.7" in received and b"127.0.0.1" not in received


def test_proxy_v2_client_address_decides_plaintext_auth(
    proxied: ServerThread, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    # an outside client behind the proxy: no plaintext password before STLS (DESIGN.md §10)
    with _connect(proxied, "pop3", encode_v2(("198.51.100.9", 5555), ("192.0.2.1", 110))) as s:
        assert _line(s).startswith(b"+OK")
        s.sendall(b"USER bob@example.test\r\n")
        assert _line(s).startswith(b"-ERR")
    assert any("client=198.51.100.9" in r.getMessage() for r in caplog.records)
    # a loopback client behind the proxy may log in in plaintext
    with _connect(proxied, "pop3", encode_v2(("127.0.0.5", 5555), ("127.0.0.1", 110))) as s:
        assert _line(s).startswith(b"+OK")
        s.sendall(b"USER bob@example.test\r\n")
        assert _line(s).startswith(b"+OK")
        s.sendall(f"PASS {PASSWORD}\r\n".encode())
        assert _line(s).startswith(b"+OK")
        s.sendall(b"QUIT\r\n")
        assert _line(s).startswith(b"+OK")
    # LOCAL (a health check) keeps the real endpoints
    with _connect(proxied, "pop3", encode_v2(None, None)) as s:
        assert _line(s).startswith(b"+OK")


def test_implicit_tls_listener_reads_the_header_first(proxied: ServerThread) -> None:
    """With trusted proxies configured, pop3s/imaps/submissions listen in plain TCP: the
    header comes first, then the TLS handshake; a trusted peer that starts TLS without a
    header is a misconfigured balancer and is dropped."""
    import ssl

    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with socket.create_connection(proxied.address("pop3s"), timeout=10) as raw:
        raw.sendall(encode_v1(("198.51.100.21", 999), ("192.0.2.1", 995)))
        with ctx.wrap_socket(raw) as s:
            assert _line(s).startswith(b"+OK")  # type: ignore[arg-type]
            s.sendall(b"QUIT\r\n")
    with (
        socket.create_connection(proxied.address("pop3s"), timeout=10) as raw,
        pytest.raises((ssl.SSLError, ConnectionError, OSError)),
        ctx.wrap_socket(raw) as s,
    ):
        _line(s)  # type: ignore[arg-type]


def test_implicit_tls_after_the_header_on_a_plain_socket(
    proxied: ServerThread, caplog: pytest.LogCaptureFixture
) -> None:
    """A plain listening socket for an implicit-TLS protocol: header first, then TLS."""
    import ssl

    from letterbird.server.app import PROTOCOLS

    caplog.set_level(logging.INFO)
    app = proxied.app

    async def listen() -> asyncio.Server:
        return await asyncio.start_server(
            lambda r, w: app.run_connection(PROTOCOLS["pop3s"], r, w), "127.0.0.1", 0
        )

    server = proxied.call(listen())
    try:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        address = server.sockets[0].getsockname()[:2]
        with socket.create_connection(address, timeout=10) as raw:
            raw.sendall(encode_v1(("198.51.100.20", 999), ("192.0.2.1", 995)))
            with ctx.wrap_socket(raw) as s:
                assert _line(s).startswith(b"+OK")  # type: ignore[arg-type]
                s.sendall(b"QUIT\r\n")
                assert _line(s).startswith(b"+OK")  # type: ignore[arg-type]
        with socket.create_connection(address, timeout=10) as raw:  # no TLS after the header
            raw.sendall(encode_v1(("198.51.100.21", 999), ("192.0.2.1", 995)) + b"USER x\r\n")
            raw.settimeout(40)
            assert raw.recv(100) == b""
    finally:

        async def close() -> None:  # on the server's loop: Server.close is not thread-safe
            server.close()

        proxied.call(close())
    deadline = time.monotonic() + 10  # the server thread logs after closing the socket
    while not any("TLS handshake failed" in r.getMessage() for r in caplog.records):
        assert time.monotonic() < deadline, [r.getMessage() for r in caplog.records]
        time.sleep(0.05)
    assert any("client=198.51.100.20" in r.getMessage() for r in caplog.records)


def test_trusted_peer_without_a_header_is_dropped(
    proxied: ServerThread, caplog: pytest.LogCaptureFixture
) -> None:
    with _connect(proxied, "smtp", b"EHLO client.test\r\n") as s:
        assert s.recv(100) == b""  # closed without a greeting
    with _connect(proxied, "pop3", b"") as s:  # nothing at all: closed after the timeout
        s.settimeout(10)
        assert s.recv(100) == b""
    messages = [r.getMessage() for r in caplog.records]
    assert any("proxy.rejected" in m and "did not start" in m for m in messages)
    assert any("proxy.rejected" in m and "within" in m for m in messages)


def test_untrusted_peers_are_never_parsed(tmp_path: Path) -> None:
    cfg = server_config(tmp_path, smtp=["127.0.0.1:0"])
    cfg = dataclasses.replace(cfg, proxy=ProxySettings(trusted=["10.0.0.0/8"]))
    with ServerThread(cfg) as srv, _connect(srv, "smtp", b"") as s:
        assert _line(s).startswith(b"220 ")  # we speak first: no header expected
        s.sendall(encode_v1(("203.0.113.7", 1), ("192.0.2.1", 25)))
        assert _line(s).startswith(b"500 ")  # just an unknown command
