"""Login sessions, CSRF tokens and signed links for the webmail.

A session is a signed cookie (HMAC-SHA256 with a secret generated once and kept in the data
folder, mode 0600), so it survives restarts and needs no table:

    cookie = account_id "." issued "." nonce "." pwfp "." signature

``pwfp`` is a fingerprint of the account's stored password hash: changing the password ends
every session of the account. Logout revokes the cookie's nonce (in memory, until the cookie
would have expired). The cookie is HttpOnly, SameSite=Lax, and under TLS ``Secure`` with the
``__Host-`` name prefix.

CSRF: every state-changing request carries a token derived from the session nonce
(``HMAC(secret, "csrf" nonce)``) in a form field or the ``X-CSRF-Token`` header. The login form,
which has no session yet, uses a double-submit token (a random cookie echoed in the form).

Signed links (:meth:`Sessions.sign_link`) let the sandboxed message frame, whose origin is
opaque and so sends no cookies, load the message's own inline (``cid:``) images.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Session", "Sessions", "load_secret"]

SECRET_FILE = "web-session.key"
_SECRET_BYTES = 32
_MAX_REVOKED = 100_000


def load_secret(data_dir: Path) -> bytes:
    """The session secret: read from ``data_dir``, or generated there once (mode 0600).

    Raises ValueError when the file exists but is damaged (too short): replacing it silently
    would log everyone out and hide the problem.
    """
    path = data_dir / SECRET_FILE
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        pass
    else:
        if len(data) < _SECRET_BYTES:
            raise ValueError(f"{path}: damaged session secret (delete it to make a new one)")
        return data[:_SECRET_BYTES]
    data_dir.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_bytes(_SECRET_BYTES)
    tmp = path.with_name(f".{SECRET_FILE}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(secret)
        fh.flush()
        os.fsync(fh.fileno())
    try:
        os.link(tmp, path)  # never overwrite a secret another process wrote meanwhile
    except FileExistsError:
        return load_secret(data_dir)
    finally:
        os.unlink(tmp)
    return secret


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


@dataclass(frozen=True, slots=True)
class Session:
    account_id: int
    issued: int
    nonce: str
    pwfp: str
    csrf: str


class Sessions:
    def __init__(
        self,
        secret: bytes,
        *,
        lifetime: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._secret = secret
        self.lifetime = lifetime
        self._clock = clock
        self._revoked: dict[str, float] = {}

    # -- primitives ---------------------------------------------------------------------
    def _mac(self, purpose: str, payload: str) -> str:
        msg = purpose.encode() + b"\x00" + payload.encode()
        return _b64(hmac.new(self._secret, msg, hashlib.sha256).digest())

    def password_fingerprint(self, password_hash: str) -> str:
        return self._mac("pw", password_hash)[:16]

    # -- sessions -----------------------------------------------------------------------
    def issue(self, account_id: int, password_hash: str) -> tuple[str, Session]:
        """A new session cookie value for the account."""
        issued = int(self._clock())
        nonce = _b64(secrets.token_bytes(16))
        pwfp = self.password_fingerprint(password_hash)
        payload = f"{account_id}.{issued}.{nonce}.{pwfp}"
        value = f"{payload}.{self._mac('session', payload)}"
        return value, Session(account_id, issued, nonce, pwfp, self._mac("csrf", nonce))

    def parse(self, value: str | None) -> Session | None:
        """The session a cookie value names, if its signature holds and it is still valid.

        The caller must still compare ``pwfp`` with the account's current password hash.
        """
        if not value or len(value) > 512:
            return None
        payload, _, sig = value.rpartition(".")
        if not hmac.compare_digest(sig, self._mac("session", payload)):
            return None
        parts = payload.split(".")
        if len(parts) != 4 or not parts[0].isdigit() or not parts[1].isdigit():
            return None
        account_id, issued, nonce, pwfp = int(parts[0]), int(parts[1]), parts[2], parts[3]
        now = self._clock()
        if not issued - 60 <= now < issued + self.lifetime:
            return None
        if nonce in self._revoked:
            return None
        return Session(account_id, issued, nonce, pwfp, self._mac("csrf", nonce))

    def revoke(self, session: Session) -> None:
        now = self._clock()
        if len(self._revoked) >= _MAX_REVOKED:
            self._revoked = {n: t for n, t in self._revoked.items() if t > now}
            while len(self._revoked) >= _MAX_REVOKED:  # still full: forget the oldest
                self._revoked.pop(next(iter(self._revoked)))
        self._revoked[session.nonce] = session.issued + self.lifetime

    def check_csrf(self, session: Session, token: str | None) -> bool:
        return bool(token) and hmac.compare_digest(str(token), session.csrf)

    # -- login form (no session yet): double submit -------------------------------------------
    @staticmethod
    def new_login_token() -> str:
        return _b64(secrets.token_bytes(18))

    @staticmethod
    def check_login_token(cookie: str | None, field: str | None) -> bool:
        if not cookie or not field or len(cookie) > 64:
            return False
        return hmac.compare_digest(cookie, field)

    # -- signed links ---------------------------------------------------------------------
    def sign_link(self, path: str, lifetime: float) -> str:
        """``path`` with an expiry and a signature appended as two path segments."""
        expires = int(self._clock() + lifetime)
        payload = f"{path}/{expires}"
        return f"{payload}/{self._mac('link', payload)}"

    def check_link(self, path: str, expires: str, sig: str) -> bool:
        if not expires.isdigit() or int(expires) < self._clock():
            return False
        return hmac.compare_digest(sig, self._mac("link", f"{path}/{expires}"))
