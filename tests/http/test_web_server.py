"""The webmail served by `letterbird serve`: HTTP and HTTPS listeners in the server's own
event loop, live updates over a real connection, start-up errors, clean stops."""

from __future__ import annotations

import contextlib
import re
import socket
import threading
import time
from pathlib import Path

import httpx
import pytest
from serverutil import ServerThread, follow_events, server_config

from letterbird.http.settings import WebSettings
from letterbird.server.supervisor import StartupError, start_server

pytestmark = pytest.mark.e2e

PASSWORD = "pw-for-web"


def login(client: httpx.Client, address: str) -> str:
    page = client.get("/login")
    token = re.search(r'name="login_token" value="([^"]+)"', page.text)
    assert token is not None
    r = client.post(
        "/login",
        data={"username": address, "password": PASSWORD, "login_token": token.group(1)},
        follow_redirects=True,
    )
    assert r.status_code == 200
    m = re.search(r'name="csrf_token" value="([^"]+)"', r.text)
    assert m is not None
    return m.group(1)


def test_http_and_https_listeners_live_updates_and_stop(tmp_path: Path) -> None:
    cfg = server_config(tmp_path, http=["127.0.0.1:0"], https=["127.0.0.1:0"])
    srv = ServerThread(cfg)
    with srv:
        srv.add_user("ann@example.test", PASSWORD)
        srv.add_user("ben@example.test", PASSWORD)
        host, port = srv.address("http")
        shost, sport = srv.address("https")
        with httpx.Client(base_url=f"https://{shost}:{sport}", verify=False) as tls:
            page = tls.get("/login")
            assert page.status_code == 200
            assert page.headers["set-cookie"].startswith("__Host-lb_login=")
            assert "Secure" in page.headers["set-cookie"]
            assert "server" not in page.headers  # no uvicorn banner
            login(tls, "ann@example.test")
        with (
            httpx.Client(base_url=f"http://{host}:{port}") as ann,
            httpx.Client(base_url=f"http://{host}:{port}") as ben,
        ):
            csrf = login(ann, "ann@example.test")
            login(ben, "ben@example.test")
            t, received = follow_events(ben)
            web = srv.app.services["http"].asgi.state.web
            deadline = time.monotonic() + 5
            while not web.events_open and time.monotonic() < deadline:
                time.sleep(0.02)
            r = ann.post(
                "/compose",
                data={
                    "csrf_token": csrf,
                    "from": "ann@example.test",
                    "to": "ben@example.test",
                    "subject": "ping",
                    "body": "hello",
                    "action": "send",
                },
            )
            assert r.status_code == 303
            t.join(10)
            data = [line for line in received if line.startswith("data:")]
            assert data and '"append"' in data[0]
            assert received[0] == "retry: 3000"

            # a stream left open does not hold up the stop
            def hold() -> None:
                # Ends when the server stops, or when the client is closed under it.
                with contextlib.suppress(httpx.HTTPError, httpx.StreamError):
                    list(ben.stream("GET", "/events", timeout=30).__enter__().iter_lines())

            holder = threading.Thread(target=hold, daemon=True)
            holder.start()
            time.sleep(0.3)
            started = time.monotonic()
        srv.stop()
        assert time.monotonic() - started < 8


def test_event_streams_per_account_are_limited(tmp_path: Path) -> None:
    cfg = server_config(tmp_path, http=["127.0.0.1:0"])
    with ServerThread(cfg) as srv:
        srv.add_user("ann@example.test", PASSWORD)
        host, port = srv.address("http")
        web = srv.app.services["http"].asgi.state.web
        web.settings = WebSettings(events_per_account=1)
        with httpx.Client(base_url=f"http://{host}:{port}") as client:
            login(client, "ann@example.test")
            with client.stream("GET", "/events", timeout=10) as first:
                lines = first.iter_lines()  # kept: dropping it would close the stream
                assert next(lines) == "retry: 3000"
                second = client.get("/events")
                assert second.status_code == 429
            deadline = time.monotonic() + 5
            while web.events_open and time.monotonic() < deadline:
                time.sleep(0.02)
            assert not web.events_open  # the closed stream gave its place back


def test_taken_port_is_a_clear_startup_error(tmp_path: Path) -> None:
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    port = busy.getsockname()[1]
    try:
        cfg = server_config(tmp_path, http=[f"127.0.0.1:{port}"])
        import asyncio

        async def run() -> str:
            try:
                await start_server(cfg, demo=False)
            except StartupError as exc:
                return str(exc)
            return "started"

        message = asyncio.run(run())
        assert message.startswith(f"http: cannot listen on 127.0.0.1:{port}")
    finally:
        busy.close()
