"""Webmail HTTP tests: login, sessions, CSRF, security headers, the session secret."""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from webutil import PASSWORD, WebEnv, csrf_of, make_env

from letterbird.http.sessions import SECRET_FILE, Sessions, load_secret


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


def test_session_secret_is_made_once_with_mode_0600(tmp_path: Path) -> None:
    first = load_secret(tmp_path / "d")
    path = tmp_path / "d" / SECRET_FILE
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert load_secret(tmp_path / "d") == first and len(first) == 32
    os.unlink(path)
    second = load_secret(tmp_path / "d")
    assert second != first
    path.write_bytes(b"short")
    with pytest.raises(ValueError, match="damaged session secret"):
        load_secret(tmp_path / "d")
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]


def test_sessions_unit() -> None:
    now = [1000.0]
    s = Sessions(b"k" * 32, lifetime=100, clock=lambda: now[0])
    value, session = s.issue(7, "hash")
    parsed = s.parse(value)
    assert parsed == session
    assert s.password_fingerprint("hash") == session.pwfp
    assert s.check_csrf(session, session.csrf) and not s.check_csrf(session, None)
    assert s.parse(value + "x") is None and s.parse(None) is None and s.parse("a" * 600) is None
    assert s.parse("1.2.3.4") is None
    forged_payload = "x.1000.n.p"
    assert s.parse(f"{forged_payload}.{s._mac('session', forged_payload)}") is None
    now[0] = 1100.0
    assert s.parse(value) is None  # expired
    now[0] = 1000.0
    s.revoke(session)
    assert s.parse(value) is None
    link = s.sign_link("/cid/1/2/3", 10)
    _, _, _, _, _, expires, sig = link.split("/")
    assert s.check_link("/cid/1/2/3", expires, sig)
    assert not s.check_link("/cid/1/2/4", expires, sig)
    assert not s.check_link("/cid/1/2/3", "x", sig)
    now[0] = 2000.0
    assert not s.check_link("/cid/1/2/3", expires, sig)
    assert Sessions.check_login_token("a", "a") and not Sessions.check_login_token("a", "b")
    assert not Sessions.check_login_token(None, "a") and not Sessions.check_login_token(
        "a" * 99, "a" * 99
    )


def test_revoked_set_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    import letterbird.http.sessions as mod

    monkeypatch.setattr(mod, "_MAX_REVOKED", 3)
    now = [0.0]
    s = Sessions(b"k" * 32, lifetime=10, clock=lambda: now[0])
    sessions = [s.issue(1, "h")[1] for _ in range(5)]
    for sess in sessions:
        s.revoke(sess)
    assert len(s._revoked) <= 3
    now[0] = 100.0
    s.revoke(s.issue(1, "h")[1])  # expired entries are pruned first
    assert len(s._revoked) == 1
