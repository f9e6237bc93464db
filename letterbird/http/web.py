"""The webmail's shared state and plumbing: who is logged in, CSRF checks, page rendering,
security headers and the request-body limit. Routes live in :mod:`letterbird.http.views` and
:mod:`letterbird.http.compose`; :func:`letterbird.http.app.create_app` puts them together.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import html
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from letterbird.http.listing import FolderIndex, StatusCache
from letterbird.http.sessions import Session, Sessions
from letterbird.http.settings import WebSettings
from letterbird.server.app import App
from letterbird.storage.interface import Account, Mailbox, NotFound, StorageError

log = logging.getLogger("letterbird.http")

__all__ = [
    "PAGE_CSP",
    "BodyLimitMiddleware",
    "FolderView",
    "SecurityHeadersMiddleware",
    "User",
    "Web",
    "sort_folders",
]

HERE = Path(__file__).parent
TEMPLATES = HERE / "templates"
STATIC = HERE / "static"

# The CSP of our own pages: our scripts and styles only, nothing inline, frames only from us.
PAGE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-src 'self'; form-action 'self'; base-uri 'none'; "
    "frame-ancestors 'self'"
)

ROLE_LABELS = {
    "\\Sent": "Sent",
    "\\Drafts": "Drafts",
    "\\Trash": "Trash",
    "\\Junk": "Junk",
    "\\Archive": "Archive",
}

Handler = Callable[[Request, "User"], Awaitable[Response]]
Endpoint = Callable[[Request], Awaitable[Response]]


@dataclass
class User:
    account: Account
    session: Session
    mailboxes: list[Mailbox] | None = None

    @property
    def id(self) -> int:
        return self.account.id


@dataclass(frozen=True, slots=True)
class FolderView:
    id: int
    name: str
    label: str
    depth: int
    role: str | None
    messages: int
    unread: int


_ROLE_ORDER = {"\\Drafts": 1, "\\Sent": 2, "\\Archive": 3, "\\Junk": 4, "\\Trash": 5}


def sort_folders(mailboxes: list[Mailbox]) -> list[Mailbox]:
    """Inbox, then the special-use folders in the usual order, then the rest by name; each
    folder's subfolders stay right below it."""
    top_rank: dict[str, int] = {}
    for mb in mailboxes:
        if "/" not in mb.name:
            top_rank[mb.name] = 0 if mb.name == "INBOX" else _ROLE_ORDER.get(mb.role or "", 6)

    def key(mb: Mailbox) -> tuple[int, str]:
        return top_rank.get(mb.name.split("/", 1)[0], 6), mb.name

    return sorted(mailboxes, key=key)


def folder_label(mailbox: Mailbox) -> str:
    if mailbox.name == "INBOX":
        return "Inbox"
    return mailbox.name.rsplit("/", 1)[-1]


@dataclass
class Web:
    app: App
    settings: WebSettings = field(default_factory=WebSettings)

    def __post_init__(self) -> None:
        self.storage = self.app.storage
        self.sessions = Sessions(
            self.storage,
            lifetime=self.settings.session_lifetime,
            data_dir=self.app.config.data_path,  # an older version's secret, to import once
        )
        self.index = FolderIndex(self.storage, self.settings.index_mailboxes)
        self.status = StatusCache(self.storage)
        self.env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(TEMPLATES),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.static_version = _static_version()
        self.env.globals.update(
            static=lambda name: f"/static/{name}?v={self.static_version}",
            fmt_size=fmt_size,
            fmt_date=fmt_date,
            fmt_full_date=fmt_full_date,
        )
        self.events_open: dict[int, int] = {}

    # -- who is asking -----------------------------------------------------------------------
    @staticmethod
    def secure(request: Request) -> bool:
        return request.url.scheme == "https"

    def cookie_name(self, request: Request, base: str = "lb_session") -> str:
        return f"__Host-{base}" if self.secure(request) else base

    async def current_user(self, request: Request) -> User | None:
        session = await self.sessions.parse(request.cookies.get(self.cookie_name(request)))
        if session is None:
            return None
        account = await self.storage.get_account(session.account_id)
        if account is None:
            return None
        if self.sessions.password_fingerprint(account.password_hash) != session.pwfp:
            return None
        return User(account, session)

    async def mailboxes(self, user: User) -> list[Mailbox]:
        if user.mailboxes is None:
            user.mailboxes = sort_folders(await self.storage.list_mailboxes(user.id))
        return user.mailboxes

    async def mailbox(self, user: User, mailbox_id: int) -> Mailbox:
        """The user's folder with that id; 404 for anyone else's (never reveal it exists)."""
        for mb in await self.mailboxes(user):
            if mb.id == mailbox_id:
                return mb
        raise HTTPException(404, "No such folder")

    async def by_role(self, user: User, role: str) -> Mailbox | None:
        for mb in await self.mailboxes(user):
            if mb.role == role:
                return mb
        return None

    async def folders(self, user: User) -> list[FolderView]:
        out = []
        for mb in await self.mailboxes(user):
            counts = self.index.counts(mb)
            if counts is None:
                st = await self.status.status(mb)
                counts = st.messages, st.unseen
            out.append(
                FolderView(mb.id, mb.name, folder_label(mb), mb.name.count("/"), mb.role, *counts)
            )
        return out

    async def form(self, request: Request) -> FormData:
        """The request's form, parsed within the upload limits (cached per request)."""
        s = self.settings
        return await request.form(
            max_files=s.max_attachments,
            max_fields=1000,
            max_part_size=min(s.upload_size, 8 * 1024 * 1024),
        )

    # -- guards -------------------------------------------------------------------------------
    def page(self, handler: Handler) -> Endpoint:
        """Wrap a route: a logged-in user is required; a POST needs a valid CSRF token."""

        async def endpoint(request: Request) -> Response:
            user = await self.current_user(request)
            if user is None:
                return self.login_redirect(request)
            if request.method not in ("GET", "HEAD"):
                token = request.headers.get("x-csrf-token")
                if token is None:
                    value = (await self.form(request)).get("csrf_token")
                    token = value if isinstance(value, str) else None
                if not self.sessions.check_csrf(user.session, token):
                    raise HTTPException(403, "The form has expired or did not come from this site.")
            return await handler(request, user)

        return endpoint

    def login_redirect(self, request: Request) -> Response:
        if request.headers.get("hx-request"):
            return Response(status_code=401, headers={"HX-Redirect": "/login"})
        if request.method in ("GET", "HEAD"):
            return RedirectResponse("/login", status_code=303)
        raise HTTPException(403, "You are not logged in.")

    # -- rendering ------------------------------------------------------------------------------
    def render(
        self,
        request: Request,
        template: str,
        context: dict[str, Any],
        *,
        status: int = 200,
        user: User | None = None,
        headers: dict[str, str] | None = None,
    ) -> HTMLResponse:
        ctx: dict[str, Any] = {
            "request": request,
            "user": user,
            "csrf": user.session.csrf if user else "",
            "folders": [],
            "current_folder": None,
            "notice": None,
        }
        ctx.update(context)
        body = self.env.get_template(template).render(ctx)
        return HTMLResponse(body, status_code=status, headers=headers)

    async def error_page(self, request: Request, exc: Exception) -> Response:
        if isinstance(exc, HTTPException):
            status, detail = exc.status_code, exc.detail
        elif isinstance(exc, NotFound):
            status, detail = 404, "Not found: it may have been moved or deleted meanwhile."
        elif isinstance(exc, StorageError):
            log.error("storage error: %s", exc)
            status, detail = 503, "The mail store is not available right now. Try again."
        else:
            status, detail = 500, "Something went wrong."
        if request.headers.get("hx-request"):
            return HTMLResponse(html.escape(str(detail)), status_code=status)
        user = None
        if status != 401:
            try:
                user = await self.current_user(request)
            except Exception:  # the error page must render even when storage does not
                user = None
        titles = {
            400: "Bad request",
            403: "Forbidden",
            404: "Not found",
            413: "Too large",
            503: "Unavailable",
        }
        return self.render(
            request,
            "error.html",
            {"title": titles.get(status, "Error"), "status": status, "detail": detail},
            status=status,
            user=user,
        )


def _static_version() -> str:
    h = hashlib.sha256()
    for p in sorted(STATIC.glob("*")):
        if p.is_file():
            h.update(p.name.encode())
            h.update(p.read_bytes())
    return h.hexdigest()[:10]


# -- formatting -----------------------------------------------------------------------------------


def fmt_size(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    if n < 1024 * 1024:
        return f"{n / 1024:.0f} KB"
    return f"{n / 1024 / 1024:.1f} MB"


def fmt_date(ts: float | dt.datetime | None, now: dt.datetime | None = None) -> str:
    """Short date for lists: the time today, day and month this year, else the full date."""
    if ts is None:
        return ""
    when = ts if isinstance(ts, dt.datetime) else dt.datetime.fromtimestamp(ts, dt.UTC)
    when = when.astimezone()
    now = now or dt.datetime.now().astimezone()
    if when.date() == now.date():
        return when.strftime("%H:%M")
    if when.year == now.year:
        return when.strftime("%d %b")
    return when.strftime("%Y-%m-%d")


def fmt_full_date(ts: float | dt.datetime | None) -> str:
    if ts is None:
        return ""
    when = ts if isinstance(ts, dt.datetime) else dt.datetime.fromtimestamp(ts, dt.UTC)
    return when.astimezone().strftime("%a, %d %b %Y %H:%M")


# -- middleware -----------------------------------------------------------------------------------


class SecurityHeadersMiddleware:
    """Adds the security headers every response needs unless the route set its own."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        static = str(scope.get("path", "")).startswith("/static/")

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {k.lower() for k, _ in headers}
                defaults = [
                    (b"x-content-type-options", b"nosniff"),
                    (b"referrer-policy", b"no-referrer"),
                    (b"x-frame-options", b"SAMEORIGIN"),
                    (b"cross-origin-opener-policy", b"same-origin"),
                    (b"cross-origin-resource-policy", b"same-origin"),
                    (b"content-security-policy", PAGE_CSP.encode()),
                    (
                        b"cache-control",
                        b"public, max-age=86400" if static else b"no-store, private",
                    ),
                ]
                headers.extend((k, v) for k, v in defaults if k not in present)
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


class BodyLimitMiddleware:
    """Refuses request bodies over ``limit`` bytes with 413 (a clear page, via HTTPException):
    at once when Content-Length says so, else as soon as the streamed body passes it."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit
        for key, value in scope.get("headers", []):
            if key == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = -1
                if declared > limit or declared < 0:
                    scope["letterbird.too_large"] = True
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            if scope.get("letterbird.too_large"):
                raise HTTPException(413, _too_large(limit))
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise HTTPException(413, _too_large(limit))
            return message

        await self.app(scope, limited_receive, send)


def _too_large(limit: int) -> str:
    return (
        f"The upload is too large: the limit is {fmt_size(limit)} per request. "
        "Remove some attachments and try again."
    )
