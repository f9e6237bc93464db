"""Webmail HTTP tests: login, sessions, CSRF, security headers, the session secret."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import os
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from conftest import make_config
from webutil import PASSWORD, WebEnv, csrf_of, make_env

from letterbird.http.sessions import SECRET_FILE, SECRET_META, Sessions, load_shared_secret
from letterbird.storage.interface import StorageError
from letterbird.storage.sqlite import SqliteStorage


@pytest.fixture
def env(tmp_path: Path) -> Iterator[WebEnv]:
    yield from make_env(tmp_path)


def login_token(env: WebEnv) -> str:
    page = env.client.get("/login")
    m = re.search(r'name="login_token" value="([^"]+)"', page.text)
    assert m is not None
    return m.group(1)


def test_unauthenticated_requests_go_to_login(env: WebEnv) -> None:
    for path in ("/", "/mail/1", "/mail/1/1", "/folders", "/compose", "/events", "/nav"):
        r = env.client.get(path)
        assert r.status_code == 303 and r.headers["location"] == "/login", path
    r = env.client.get("/mail/1/list", headers={"HX-Request": "true"})
    assert r.status_code == 401 and r.headers["HX-Redirect"] == "/login"
    r = env.client.post("/mail/1/action", data={"action": "read", "uid": "1"})
    assert r.status_code == 403
    assert "not logged in" in r.text


def test_login_page_and_good_login(env: WebEnv) -> None:
    env.add_user("bob@example.test")
    page = env.client.get("/login")
    assert page.status_code == 200
    assert "<title>Log in · Letterbird</title>" in page.text
    assert '<label for="username">' in page.text and '<label for="password">' in page.text
    cookie = page.headers["set-cookie"]
    assert cookie.startswith("lb_login=") and "HttpOnly" in cookie and "SameSite=lax" in cookie
    token = login_token(env)
    r = env.client.post(
        "/login",
        data={"username": "Bob@Example.test", "password": PASSWORD, "login_token": token},
    )
    assert r.status_code == 303 and r.headers["location"] == "/"
    cookie = r.headers["set-cookie"]
    assert cookie.startswith("lb_session=")
    assert "HttpOnly" in cookie and "SameSite=lax" in cookie and "Secure" not in cookie
    r = env.client.get("/", follow_redirects=True)
    assert r.status_code == 200 and "<title>Inbox · Letterbird</title>" in r.text
    assert env.client.get("/login").headers["location"] == "/"  # logged in already


@pytest.mark.parametrize(
    ("username", "password"),
    [("bob@example.test", "wrong"), ("nobody@example.test", PASSWORD), ("", ""), ("x", "")],
)
def test_failed_login_is_generic(env: WebEnv, username: str, password: str) -> None:
    env.add_user("bob@example.test")
    r = env.client.post(
        "/login",
        data={"username": username, "password": password, "login_token": login_token(env)},
    )
    assert r.status_code == 401
    assert "Login failed: wrong address or password, or too many attempts." in r.text
    assert "lb_session" not in r.headers.get("set-cookie", "")


def test_login_is_throttled_with_the_same_message(env: WebEnv) -> None:
    env.add_user("bob@example.test")
    for _ in range(env.config.auth.max_failures):
        r = env.client.post(
            "/login",
            data={
                "username": "bob@example.test",
                "password": "bad",
                "login_token": login_token(env),
            },
        )
        assert r.status_code == 401
    r = env.client.post(
        "/login",
        data={
            "username": "bob@example.test",
            "password": PASSWORD,
            "login_token": login_token(env),
        },
    )
    assert r.status_code == 401
    assert "Login failed: wrong address or password, or too many attempts." in r.text


def test_login_needs_its_form_token(env: WebEnv) -> None:
    env.add_user("bob@example.test")
    env.client.get("/login")
    r = env.client.post("/login", data={"username": "bob@example.test", "password": PASSWORD})
    assert r.status_code == 403
    r = env.client.post(
        "/login",
        data={"username": "bob@example.test", "password": PASSWORD, "login_token": "forged"},
    )
    assert r.status_code == 403
    assert "login form has expired" in r.text


def test_logout_revokes_the_session(env: WebEnv) -> None:
    env.add_user("bob@example.test")
    csrf = env.login("bob@example.test")
    stolen = env.client.cookies.get("lb_session")
    assert stolen
    assert env.client.post("/logout", data={}).status_code == 403  # CSRF
    r = env.client.post("/logout", data={"csrf_token": csrf})
    assert r.status_code == 303 and r.headers["location"] == "/login"
    assert 'lb_session=""' in r.headers["set-cookie"] or "Max-Age=0" in r.headers["set-cookie"]
    env.client.cookies.set("lb_session", stolen)
    assert env.client.get("/folders").status_code == 303


def test_password_change_ends_sessions(env: WebEnv) -> None:
    env.add_user("bob@example.test")
    env.login("bob@example.test")
    assert env.client.get("/folders").status_code == 200
    env.call(env.app.directory.set_password, "bob@example.test", "new password")
    assert env.client.get("/folders").status_code == 303


def test_removed_account_session_is_void(env: WebEnv) -> None:
    env.add_user("bob@example.test")
    env.login("bob@example.test")
    env.call(env.app.directory.remove_user, "bob@example.test")
    assert env.client.get("/folders").status_code == 303


def test_tampered_session_cookie(env: WebEnv) -> None:
    env.add_user("bob@example.test")
    aid2 = env.add_user("eve@example.test")
    env.login("bob@example.test")
    value = env.client.cookies.get("lb_session")
    assert value
    parts = value.split(".")
    parts[0] = str(aid2)  # claim to be eve
    env.client.cookies.set("lb_session", ".".join(parts))
    assert env.client.get("/folders").status_code == 303


@pytest.mark.parametrize(
    ("method", "path", "data"),
    [
        ("post", "/logout", {}),
        ("post", "/folders", {"name": "X"}),
        ("post", "/folders/{trash}/rename", {"name": "Y"}),
        ("post", "/folders/{trash}/delete", {}),
        ("post", "/mail/{inbox}/action", {"action": "read", "uid": "1"}),
        ("post", "/compose", {"action": "save", "from": "bob@example.test"}),
    ],
)
@pytest.mark.parametrize("token", [None, "", "forged-token"])
def test_every_state_change_needs_the_csrf_token(
    env: WebEnv, method: str, path: str, data: dict[str, str], token: str | None
) -> None:
    aid = env.add_user("bob@example.test")
    env.login("bob@example.test")
    inbox = env.mailbox(aid, "INBOX")
    trash = env.mailbox(aid, "Trash")
    form = dict(data)
    if token is not None:
        form["csrf_token"] = token
    url = path.format(inbox=inbox.id, trash=trash.id)
    r = getattr(env.client, method)(url, data=form)
    assert r.status_code == 403, url
    assert "did not come from this site" in r.text
    assert env.mailbox(aid, "Trash").name == "Trash"  # nothing changed


def test_csrf_token_in_header_is_accepted(env: WebEnv) -> None:
    aid = env.add_user("bob@example.test")
    csrf = env.login("bob@example.test")
    mb, uid = env.deliver(aid, b"Subject: x\r\n\r\nbody\r\n")
    r = env.client.post(
        f"/mail/{mb}/action",
        data={"action": "flag", "uid": str(uid)},
        headers={"X-CSRF-Token": csrf, "HX-Request": "true"},
    )
    assert r.status_code == 204 and r.headers["HX-Refresh"] == "true"
    assert "\\Flagged" in env.flags(mb, uid)
    r = env.client.post(
        f"/mail/{mb}/action",
        data={"action": "unflag", "uid": str(uid)},
        headers={"X-CSRF-Token": "nope"},
    )
    assert r.status_code == 403


def test_security_headers(env: WebEnv) -> None:
    env.add_user("bob@example.test")
    env.login("bob@example.test")
    r = env.client.get("/folders")
    h = r.headers
    assert "script-src 'self'" in h["content-security-policy"]
    assert "frame-ancestors 'self'" in h["content-security-policy"]
    assert "unsafe-inline" not in h["content-security-policy"]
    assert h["x-content-type-options"] == "nosniff"
    assert h["referrer-policy"] == "no-referrer"
    assert h["x-frame-options"] == "SAMEORIGIN"
    assert h["cache-control"] == "no-store, private"
    s = env.client.get("/static/htmx.min.js")
    assert s.status_code == 200 and s.headers["cache-control"].startswith("public")
    assert s.text.startswith("/*! htmx.org 2.0.11") and "Zero-Clause BSD" in s.text.split("\n")[0]
    assert env.client.get("/static/app.css").status_code == 200
    assert env.client.get("/static/app.js").status_code == 200
    assert env.client.get("/static/../web.py").status_code == 404


def test_unknown_page_is_404_with_title(env: WebEnv) -> None:
    r = env.client.get("/no/such/page")
    assert r.status_code == 404
    assert "<title>Not found · Letterbird</title>" in r.text


def test_secure_cookies_under_tls(tmp_path: Path) -> None:
    for env in make_env(tmp_path, base_url="https://testserver"):
        env.add_user("bob@example.test")
        page = env.client.get("/login")
        assert page.headers["set-cookie"].startswith("__Host-lb_login=")
        assert "Secure" in page.headers["set-cookie"]
        token = re.search(r'name="login_token" value="([^"]+)"', page.text)
        assert token is not None
        r = env.client.post(
            "/login",
            data={
                "username": "bob@example.test",
                "password": PASSWORD,
                "login_token": token.group(1),
            },
        )
        cookie = r.headers["set-cookie"]
        assert cookie.startswith("__Host-lb_session=")
        assert "Secure" in cookie and "HttpOnly" in cookie and "Path=/" in cookie
        assert "Domain" not in cookie
        assert env.client.get("/folders").status_code == 200
        csrf_of(env.client.get("/folders").text)


# -- the session secret and logouts live in the database ------------------------------------
@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStorage]:
    s = SqliteStorage(tmp_path / "sessions.db")
    await s.open()
    try:
        yield s
    finally:
        await s.close()


def old_cookie(key: bytes, account_id: int, password_hash: str, issued: int) -> str:
    """A cookie as the version with ``data_dir/web-session.key`` signed it (written out here
    independently of the module, so the format is pinned)."""

    def mac(purpose: str, payload: str) -> str:
        digest = hmac.new(key, purpose.encode() + b"\x00" + payload.encode(), hashlib.sha256)
        return base64.urlsafe_b64encode(digest.digest()).rstrip(b"=").decode()

    payload = f"{account_id}.{issued}.oldnonce.{mac('pw', password_hash)[:16]}"
    return f"{payload}.{mac('session', payload)}"


async def test_sessions_unit(store: SqliteStorage) -> None:
    now = [1000.0]
    s = Sessions(store, lifetime=100, clock=lambda: now[0])
    with pytest.raises(RuntimeError, match="not loaded"):
        s.password_fingerprint("hash")
    value, session = await s.issue(7, "hash")
    parsed = await s.parse(value)
    assert parsed == session
    assert s.password_fingerprint("hash") == session.pwfp
    assert s.check_csrf(session, session.csrf) and not s.check_csrf(session, None)
    assert await s.parse(value + "x") is None and await s.parse(None) is None
    assert await s.parse("a" * 600) is None and await s.parse("1.2.3.4") is None
    forged_payload = "x.1000.n.p"
    assert await s.parse(f"{forged_payload}.{s._mac('session', forged_payload)}") is None
    now[0] = 1100.0
    assert await s.parse(value) is None  # expired
    now[0] = 1000.0
    await s.revoke(session)
    assert await s.parse(value) is None
    assert await store.session_revoked(session.nonce)  # committed when revoke returned
    link = s.sign_link("/cid/1/2/3", 10)
    _, _, _, _, _, expires, sig = link.split("/")
    assert await s.check_link("/cid/1/2/3", expires, sig)
    assert not await s.check_link("/cid/1/2/4", expires, sig)
    assert not await s.check_link("/cid/1/2/3", "x", sig)
    now[0] = 2000.0
    assert not await s.check_link("/cid/1/2/3", expires, sig)
    assert Sessions.check_login_token("a", "a") and not Sessions.check_login_token("a", "b")
    assert not Sessions.check_login_token(None, "a") and not Sessions.check_login_token(
        "a" * 99, "a" * 99
    )


async def test_the_secret_and_logouts_are_shared_through_the_database(
    store: SqliteStorage, tmp_path: Path
) -> None:
    """Two Sessions on one database (two nodes, or one node before and after a restart)."""
    data = tmp_path / "data"
    a = Sessions(store, lifetime=3600, data_dir=data)
    b = Sessions(store, lifetime=3600, data_dir=tmp_path / "other")
    await asyncio.gather(a.start(), b.start())
    secret = await store.get_meta(SECRET_META)
    assert secret is not None and len(base64.b64decode(secret)) == 32
    assert a._secret == b._secret == base64.b64decode(secret)
    assert not data.exists()  # nothing written on the node's disk any more
    value, session = await a.issue(7, "hash")
    assert await b.parse(value) == session
    await b.revoke(session)
    assert await a.parse(value) is None
    await a.start()  # loaded once
    assert a._secret == b._secret


async def test_revocations_are_pruned_once_the_cookie_expired(store: SqliteStorage) -> None:
    now = [1000.0]
    s = Sessions(store, lifetime=100, clock=lambda: now[0])
    _, first = await s.issue(1, "h")
    await s.revoke(first)
    now[0] = 1050.0
    _, second = await s.issue(1, "h")
    await s.revoke(second)  # the first cookie is still valid until 1100: kept
    assert await store.session_revoked(first.nonce)
    now[0] = 1101.0
    _, third = await s.issue(1, "h")
    await s.revoke(third)
    assert not await store.session_revoked(first.nonce)  # expired anyway: forgotten
    assert await store.session_revoked(second.nonce) and await store.session_revoked(third.nonce)


async def test_old_secret_file_is_imported_once(store: SqliteStorage, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    key = os.urandom(32)
    (data / SECRET_FILE).write_bytes(key)
    old = old_cookie(key, 7, "hash", 1000)
    now = [1010.0]
    s = Sessions(store, lifetime=100, data_dir=data, clock=lambda: now[0])
    parsed = await s.parse(old)  # a session from before the upgrade survives it
    assert parsed is not None and parsed.account_id == 7 and parsed.nonce == "oldnonce"
    assert await store.get_meta(SECRET_META) == base64.b64encode(key).decode()
    # the database's secret wins from now on: another node's (different) file is ignored,
    # and so is a damaged one
    other = tmp_path / "other"
    other.mkdir()
    (other / SECRET_FILE).write_bytes(b"short")
    s2 = Sessions(store, lifetime=100, data_dir=other, clock=lambda: now[0])
    assert await s2.parse(old) == parsed


async def test_damaged_secrets_are_refused(store: SqliteStorage, tmp_path: Path) -> None:
    (tmp_path / SECRET_FILE).write_bytes(b"short")
    with pytest.raises(ValueError, match="damaged session secret"):
        await Sessions(store, lifetime=10, data_dir=tmp_path).start()
    assert await store.get_meta(SECRET_META) is None  # nothing replaced it silently
    await store.init_meta(SECRET_META, "not base64!")
    with pytest.raises(StorageError, match="damaged webmail session secret"):
        await Sessions(store, lifetime=10).start()
    with pytest.raises(StorageError, match="damaged webmail session secret"):
        await load_shared_secret(store)


def test_logout_holds_after_a_restart(tmp_path: Path) -> None:
    """A cookie used after logout is refused by a server restarted on the same data."""
    config = make_config(tmp_path)
    for env in make_env(tmp_path, config=config):
        env.add_user("bob@example.test")
        csrf = env.login("bob@example.test")
        stolen = env.client.cookies.get("lb_session")
        assert stolen
        assert env.client.post("/logout", data={"csrf_token": csrf}).status_code == 303
        env.client.cookies.set("lb_session", stolen)
        assert env.client.get("/folders").status_code == 303
        env.client.cookies.clear()
        env.login("bob@example.test")
        kept = env.client.cookies.get("lb_session")  # a second session, still logged in
        assert kept and kept != stolen
    for env in make_env(tmp_path, config=config):  # a new process on the same data
        env.client.cookies.set("lb_session", stolen)
        assert env.client.get("/folders").status_code == 303
        env.client.cookies.clear()
        env.client.cookies.set("lb_session", kept)
        assert env.client.get("/folders").status_code == 200  # the secret survived too
