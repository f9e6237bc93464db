"""Login sessions, CSRF tokens and signed links for the webmail.

A session is a signed cookie (HMAC-SHA256), so it needs no session table:

    cookie = account_id "." issued "." nonce "." pwfp "." signature

``pwfp`` is a fingerprint of the account's stored password hash: changing the password ends
every session of the account. The cookie is HttpOnly, SameSite=Lax, and under TLS ``Secure``
with the ``__Host-`` name prefix.

**One secret for every node.** The signing secret lives in the database (``meta`` row
``web_session_secret``), not on a node's disk: :meth:`Sessions.start` reads it, or, when there
is none yet, offers one with :meth:`Storage.init_meta` (insert unless present, then read), so
of several nodes starting at once the first to commit wins and all sign with its key. A cookie
issued by one node is accepted by every other (several nodes behind a load balancer,
docs/scaling-out.md), and survives restarts. Upgrading an installation that kept the secret in
``data_dir/web-session.key``: when the database has no secret yet, that file's secret is the
one offered, so sessions issued before the upgrade stay valid. After that the file is not read
again (it may be deleted).

**Logout is durable and seen by every node.** Logout records the cookie's nonce in the database
(:meth:`Storage.revoke_session`, committed before the logout response is sent) with the time the
cookie expires anyway; older revocations are pruned in that transaction. Every request whose
cookie has a valid signature and is not expired looks its nonce up
(:meth:`Storage.session_revoked`: one primary-key lookup, inline on SQLite) before the account
is read. We check the database on each request rather than cache revocations in memory and
publish them on the change bus: the bus drops notifications while a node's listener reconnects
and a node starting would have to load every live revocation, so a cache could miss a logout,
whereas the lookup is exact on every node at once and costs the same order as the
``get_account`` read each request does anyway. Forged and expired cookies never reach the
database. A revocation is kept until ``issued + session_lifetime`` as configured at logout:
raising ``[web] session_lifetime`` later could make a cookie that was logged out before and
whose old lifetime had passed valid again until its new one ends.

CSRF: every state-changing request carries a token derived from the session nonce
(``HMAC(secret, "csrf" nonce)``) in a form field or the ``X-CSRF-Token`` header. The login form,
which has no session yet, uses a double-submit token (a random cookie echoed in the form).

Signed links (:meth:`Sessions.sign_link`) let the sandboxed message frame, whose origin is
opaque and so sends no cookies, load the message's own inline (``cid:``) images.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from letterbird.logs import event
from letterbird.storage.interface import Storage, StorageError

__all__ = ["SECRET_FILE", "SECRET_META", "Session", "Sessions", "load_shared_secret"]

log = logging.getLogger("letterbird.http")

SECRET_FILE = "web-session.key"  # where versions before the shared secret kept it
SECRET_META = "web_session_secret"
_SECRET_BYTES = 32


def _legacy_secret(data_dir: Path | None) -> bytes | None:
    """The secret an older version kept in ``data_dir`` (None: no file). A damaged file
    (too short) raises ValueError: importing it would log everyone out and hide the problem."""
    if data_dir is None:
        return None
    path = data_dir / SECRET_FILE
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    if len(data) < _SECRET_BYTES:
        raise ValueError(f"{path}: damaged session secret (delete it to make a new one)")
    return data[:_SECRET_BYTES]


async def load_shared_secret(storage: Storage, data_dir: Path | None = None) -> bytes:
    """The webmail session secret every node shares: the database's, else (first start, or
    first start after an upgrade) the one this node offers — ``data_dir``'s old
    ``web-session.key`` when present, else a new random one — unless another node's offer
    was committed first."""
    stored = await storage.get_meta(SECRET_META)
    if stored is None:
        legacy = _legacy_secret(data_dir)
        offer = base64.b64encode(legacy or secrets.token_bytes(_SECRET_BYTES)).decode("ascii")
        stored = await storage.init_meta(SECRET_META, offer)
        if stored == offer:
            event(log, "web.session_secret", made="imported" if legacy else "new")
    try:
        secret = base64.b64decode(stored.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        secret = b""
    if len(secret) < _SECRET_BYTES:
        raise StorageError(f"damaged webmail session secret in the database (meta {SECRET_META})")
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
    """The webmail's sessions on ``storage`` (see the module docstring).

    :meth:`start` loads the shared secret (the HTTP service calls it before serving; the async
    methods call it too, so it is loaded on first use otherwise). The synchronous methods that
    sign need it loaded: they are used with a session :meth:`parse` returned.
    """

    def __init__(
        self,
        storage: Storage,
        *,
        lifetime: float,
        data_dir: Path | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.storage = storage
        self.lifetime = lifetime
        self._data_dir = data_dir
        self._clock = clock
        self._secret: bytes | None = None
        self._loading = asyncio.Lock()

    async def start(self) -> None:
        """Load the shared secret (once; later calls return at once)."""
        if self._secret is not None:
            return
        async with self._loading:
            if self._secret is None:
                self._secret = await load_shared_secret(self.storage, self._data_dir)

    # -- primitives ---------------------------------------------------------------------
    def _mac(self, purpose: str, payload: str) -> str:
        if self._secret is None:
            raise RuntimeError("the session secret is not loaded (await Sessions.start())")
        msg = purpose.encode() + b"\x00" + payload.encode()
        return _b64(hmac.new(self._secret, msg, hashlib.sha256).digest())

    def password_fingerprint(self, password_hash: str) -> str:
        return self._mac("pw", password_hash)[:16]

    # -- sessions -----------------------------------------------------------------------
    async def issue(self, account_id: int, password_hash: str) -> tuple[str, Session]:
        """A new session cookie value for the account."""
        await self.start()
        issued = int(self._clock())
        nonce = _b64(secrets.token_bytes(16))
        pwfp = self.password_fingerprint(password_hash)
        payload = f"{account_id}.{issued}.{nonce}.{pwfp}"
        value = f"{payload}.{self._mac('session', payload)}"
        return value, Session(account_id, issued, nonce, pwfp, self._mac("csrf", nonce))

    async def parse(self, value: str | None) -> Session | None:
        """The session a cookie value names, if its signature holds, it has not expired and
        it was not logged out (on any node).

        The caller must still compare ``pwfp`` with the account's current password hash.
        """
        if not value or len(value) > 512:
            return None
        await self.start()
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
        if await self.storage.session_revoked(nonce):
            return None
        return Session(account_id, issued, nonce, pwfp, self._mac("csrf", nonce))

    async def revoke(self, session: Session) -> None:
        """Log ``session`` out on every node; committed when this returns."""
        await self.storage.revoke_session(
            session.nonce, session.issued + self.lifetime, now=self._clock()
        )

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

    async def check_link(self, path: str, expires: str, sig: str) -> bool:
        if not expires.isdigit() or int(expires) < self._clock():
            return False
        await self.start()
        return hmac.compare_digest(sig, self._mac("link", f"{path}/{expires}"))
