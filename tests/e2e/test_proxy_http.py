"""The webmail listeners behind a trusted PROXY-protocol balancer (DESIGN.md §10, issue #9).

Real sockets to a real ``letterbird serve`` (in a thread): an httpx client whose connections
start with a PROXY v1/v2 header (as HAProxy's ``send-proxy`` would), raw sockets for the
malformed cases. The carried client address is what the web app sees: login throttling is keyed
on it and the ``web.login*`` lines log it. Peers are trusted by address: ``127.0.0.1`` is the
balancer, clients bound to ``127.0.0.2`` are outside it.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import socket
import ssl
import threading
import time
import typing
from collections.abc import Iterator
from pathlib import Path

import httpcore
import httpx
import pytest
from serverutil import ServerThread, follow_events, server_config

from letterbird.config import ProxySettings
from letterbird.proto.proxy import encode_v1, encode_v2

pytestmark = pytest.mark.e2e

PASSWORD = "pw-behind-proxy"
OUTSIDE = "127.0.0.2"  # a loopback address that is not the trusted balancer


class ProxyBackend(httpcore.NetworkBackend):
    """httpcore's socket backend, sending ``header`` first on every new connection (before
    TLS on https: httpcore starts TLS on the stream this returns)."""

    def __init__(self, header: bytes) -> None:
        self.header = header
        self.inner = httpcore.SyncBackend()
        self.connections = 0

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: typing.Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        stream = self.inner.connect_tcp(host, port, timeout, local_address, socket_options)
        self.connections += 1
        if self.header:
            stream.write(self.header, timeout)
        return stream

    def sleep(self, seconds: float) -> None:  # pragma: no cover - no retries configured
        self.inner.sleep(seconds)


def client(
    address: tuple[str, int],
    header: bytes = b"",
    *,
    https: bool = False,
    local_address: str | None = None,
) -> tuple[httpx.Client, ProxyBackend]:
    transport = httpx.HTTPTransport(verify=False, local_address=local_address)
    backend = ProxyBackend(header)
    transport._pool._network_backend = backend  # the one seam httpx leaves for this
    scheme = "https" if https else "http"
    c = httpx.Client(base_url=f"{scheme}://{address[0]}:{address[1]}", transport=transport)
    return c, backend


def login(c: httpx.Client, address: str, password: str = PASSWORD) -> httpx.Response:
    page = c.get("/login")
    assert page.status_code == 200
    token = re.search(r'name="login_token" value="([^"]+)"', page.text)
    assert token is not None
    return c.post(
        "/login",
        data={"username": address, "password": password, "login_token": token.group(1)},
    )


def messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records]


def wait_for_log(caplog: pytest.LogCaptureFixture, *parts: str) -> None:
    """The server thread may log just after the client saw the connection close."""
    deadline = time.monotonic() + 10
    while not any(all(p in m for p in parts) for m in messages(caplog)):
        assert time.monotonic() < deadline, (parts, messages(caplog))
        time.sleep(0.02)


def tls_context() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def read_all(sock: socket.socket | ssl.SSLSocket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


@pytest.fixture
def proxied(tmp_path: Path) -> Iterator[ServerThread]:
    cfg = server_config(tmp_path, http=["127.0.0.1:0"], https=["127.0.0.1:0"])
    cfg = dataclasses.replace(
        cfg,
        proxy=ProxySettings(trusted=["127.0.0.1/32"], timeout=2.0),
        auth=dataclasses.replace(cfg.auth, max_failures=3),
    )
    with ServerThread(cfg) as srv:
        srv.add_user("bob@example.test", PASSWORD)
        srv.add_user("ann@example.test", PASSWORD)
        yield srv


def test_carried_addresses_are_the_clients_login_throttling_sees(
    proxied: ServerThread, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    http = proxied.address("http")
    a, a_backend = client(http, encode_v1(("203.0.113.7", 40000), ("192.0.2.1", 80)))
    b, b_backend = client(http, encode_v2(("198.51.100.9", 5555), ("192.0.2.1", 80)))
    with a, b:
        # three failures (for three different accounts) lock client A out ...
        for i in range(3):
            assert login(a, f"nobody{i}@example.test", "wrong").status_code == 401
        assert login(a, "bob@example.test").status_code == 401  # even the right password
        # ... but not client B behind the same balancer
        r = login(b, "bob@example.test")
        assert r.status_code == 303, r.text
        assert b.get("/").headers["location"].startswith("/mail/")  # logged in
        # every request of a client went over its one kept-alive connection (one header)
        assert a_backend.connections == 1 and b_backend.connections == 1
    log = messages(caplog)
    assert any("web.login_failed" in m and "client=203.0.113.7" in m for m in log), log
    assert any(
        "web.login_failed" in m and "client=203.0.113.7" in m and "outcome=throttled" in m
        for m in log
    ), log
    assert any("web.login " in m and "client=198.51.100.9" in m for m in log), log
    assert not any("web.login" in m and "client=127.0.0.1" in m for m in log), log


def test_local_header_keeps_the_socket_address(
    proxied: ServerThread, caplog: pytest.LogCaptureFixture
) -> None:
    """v2 LOCAL (the balancer's own health check) and v1 UNKNOWN: the real endpoints."""
    caplog.set_level(logging.INFO)
    for header in (encode_v2(None, None), encode_v1(None, None)):
        c, _ = client(proxied.address("http"), header)
        with c:
            assert login(c, "nobody@example.test", "wrong").status_code == 401
    failed = [m for m in messages(caplog) if "web.login_failed" in m]
    assert len(failed) == 2 and all("client=127.0.0.1" in m for m in failed), failed


def test_https_reads_the_header_before_the_tls_handshake(
    proxied: ServerThread, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    c, backend = client(
        proxied.address("https"),
        encode_v2(("2001:db8::7", 443), ("2001:db8::1", 443)),
        https=True,
    )
    with c:
        page = c.get("/login")
        assert page.status_code == 200
        assert page.headers["set-cookie"].startswith("__Host-lb_login=")  # the app saw https
        assert login(c, "bob@example.test", "wrong").status_code == 401
        assert login(c, "bob@example.test").status_code == 303
        assert c.get("/").headers["location"].startswith("/mail/")  # logged in
        assert backend.connections == 1
    log = messages(caplog)
    assert any("web.login_failed" in m and "client=2001:db8::7" in m for m in log), log
    assert any("web.login " in m and "client=2001:db8::7" in m for m in log), log


def _handshake_with_early_hello(address: tuple[str, int], header: bytes, request: bytes) -> bytes:
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = tls_context().wrap_bio(incoming, outgoing, server_side=False)
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    with socket.create_connection(address, timeout=10) as sock:
        sock.sendall(header + outgoing.read())  # header and ClientHello in one write
        while True:
            try:
                obj.do_handshake()
                break
            except ssl.SSLWantReadError:
                if pending := outgoing.read():
                    sock.sendall(pending)
                data = sock.recv(65536)
                assert data, "closed during the handshake"
                incoming.write(data)
        obj.write(request)
        sock.sendall(outgoing.read())
        response = b""
        while b"\r\n\r\n" not in response:
            try:
                response += obj.read(65536)
            except ssl.SSLWantReadError:
                if pending := outgoing.read():
                    sock.sendall(pending)
                data = sock.recv(65536)
                if not data:
                    break
                incoming.write(data)
        return response


def test_header_and_first_bytes_in_one_write(proxied: ServerThread) -> None:
    """A balancer forwards the client's first bytes right behind the header: the request (or,
    on https, the ClientHello) that arrived with it reaches uvicorn (or the TLS layer)."""
    request = b"GET /login HTTP/1.1\r\nHost: mx.test\r\nConnection: close\r\n\r\n"
    header = encode_v1(("203.0.113.8", 1234), ("192.0.2.1", 80))
    with socket.create_connection(proxied.address("http"), timeout=10) as sock:
        sock.sendall(header + request)
        assert read_all(sock).startswith(b"HTTP/1.1 200 ")
    response = _handshake_with_early_hello(proxied.address("https"), header, request)
    assert response.startswith(b"HTTP/1.1 200 "), response


def test_trusted_peer_without_a_header_is_dropped(
    proxied: ServerThread, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    request = b"GET /login HTTP/1.1\r\nHost: mx.test\r\n\r\n"
    with socket.create_connection(proxied.address("http"), timeout=10) as sock:
        sock.sendall(request)
        assert read_all(sock) == b""  # closed without a response
    wait_for_log(caplog, "proxy.rejected", "protocol=http", "did not start")
    # TLS straight away (a balancer not sending the header): no handshake
    with (
        socket.create_connection(proxied.address("https"), timeout=10) as raw,
        pytest.raises((ssl.SSLError, ConnectionError, OSError)),
    ):
        tls_context().wrap_socket(raw)
    wait_for_log(caplog, "proxy.rejected", "protocol=https", "did not start")
    # nothing at all: closed after [proxy] timeout
    with socket.create_connection(proxied.address("http"), timeout=10) as sock:
        assert read_all(sock) == b""
    wait_for_log(caplog, "proxy.rejected", "protocol=http", "within 2s")
    # a malformed header
    with socket.create_connection(proxied.address("http"), timeout=10) as sock:
        sock.sendall(b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n" + request)
        assert read_all(sock) == b""
    wait_for_log(caplog, "proxy.rejected", "malformed PROXY v1 line")


def test_https_garbage_after_the_header_fails_the_handshake(
    proxied: ServerThread, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    header = encode_v1(("203.0.113.9", 1234), ("192.0.2.1", 443))
    with socket.create_connection(proxied.address("https"), timeout=10) as sock:
        sock.sendall(header + b"GET / HTTP/1.1\r\nHost: mx.test\r\n\r\n")
        assert read_all(sock) == b""
    wait_for_log(caplog, "proxy.tls_failed", "protocol=https", "client=203.0.113.9")


def test_untrusted_peers_are_never_parsed(
    proxied: ServerThread, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    header = encode_v1(("203.0.113.7", 40000), ("192.0.2.1", 80))
    request = b"GET /login HTTP/1.1\r\nHost: mx.test\r\nConnection: close\r\n\r\n"
    with socket.create_connection(
        proxied.address("http"), timeout=10, source_address=(OUTSIDE, 0)
    ) as sock:
        sock.sendall(header + request)
        assert read_all(sock).startswith(b"HTTP/1.1 400 ")  # just a bad HTTP request
    # plain HTTP and HTTPS from outside work as without a balancer; the socket is the client
    for key in ("http", "https"):
        c, _ = client(proxied.address(key), https=key == "https", local_address=OUTSIDE)
        with c:
            assert login(c, "nobody@example.test", "wrong").status_code == 401
    failed = [m for m in messages(caplog) if "web.login_failed" in m]
    assert len(failed) == 2 and all(f"client={OUTSIDE}" in m for m in failed), failed
    assert not any("proxy.rejected" in m for m in messages(caplog))


def test_live_updates_through_the_balancer_and_a_clean_stop(proxied: ServerThread) -> None:
    http = proxied.address("http")
    ann, _ = client(http, encode_v1(("203.0.113.10", 1000), ("192.0.2.1", 80)))
    ben, _ = client(http, encode_v2(("203.0.113.11", 1000), ("192.0.2.1", 80)))
    with ann, ben:
        assert login(ann, "ann@example.test").status_code == 303
        assert login(ben, "bob@example.test").status_code == 303
        page = ann.get("/compose")
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
        assert csrf is not None
        t, received = follow_events(ben)
        web = proxied.app.services["http"].asgi.state.web
        deadline = time.monotonic() + 10
        while not web.events_open:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        r = ann.post(
            "/compose",
            data={
                "csrf_token": csrf.group(1),
                "from": "ann@example.test",
                "to": "bob@example.test",
                "subject": "ping",
                "body": "hello",
                "action": "send",
            },
        )
        assert r.status_code == 303
        t.join(10)
        assert any(line.startswith("data:") and '"append"' in line for line in received)
        # a stream left open through the balancer does not prevent the stop
        ended = threading.Event()

        def hold() -> None:
            try:
                with ben.stream("GET", "/events", timeout=30) as r:
                    for _ in r.iter_lines():
                        pass
            except httpx.HTTPError:
                pass
            ended.set()

        holder = threading.Thread(target=hold, daemon=True)
        holder.start()
        deadline = time.monotonic() + 10
        while not web.events_open:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        proxied.stop()
        assert ended.wait(20)
