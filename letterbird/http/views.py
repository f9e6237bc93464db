"""Webmail pages for reading and organising mail: login, folders, message lists, messages,
attachments, raw source, and the actions on messages (flag, mark read, move, delete).

Every route that names a folder checks that it belongs to the logged-in account and answers
404 otherwise, so another account's folder and message ids reveal nothing. Flags and folders are
the storage's own, so IMAP clients see every change (and the web sees theirs).
"""

from __future__ import annotations

import logging
import math
import re
from collections import OrderedDict
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response, StreamingResponse
from starlette.routing import Route

from letterbird.auth.results import verified_sender
from letterbird.directory.service import AuthOutcome
from letterbird.http.listing import SEARCH_FIELDS, SearchField, search_folder
from letterbird.http.mailview import (
    MessagePlan,
    PartRef,
    addresses,
    decoded_chunks,
    parse_section,
    part_text,
    plan_message,
)
from letterbird.http.sanitize import frame_csp, frame_document, sanitize_html, text_to_html
from letterbird.http.web import User, Web, folder_label
from letterbird.logs import event
from letterbird.mime import MessageInfo
from letterbird.storage import names
from letterbird.storage.interface import (
    FlagMode,
    Mailbox,
    MailboxExists,
    MessageRecord,
    NotFound,
    StorageError,
)

__all__ = ["NOTICES", "routes"]

NOTICES = {
    "sent": "Message sent.",
    "saved": "Draft saved.",
    "moved": "Moved.",
    "deleted": "Moved to Trash.",
    "purged": "Deleted permanently.",
    "flagged": "Flagged.",
    "unflagged": "Flag removed.",
    "read": "Marked as read.",
    "unread": "Marked as unread.",
    "created": "Folder created.",
    "renamed": "Folder renamed.",
    "folder-deleted": "Folder deleted.",
    "none": "Nothing was selected.",
    "choose-folder": "Choose a folder to move to.",
}

# Types a browser may show inline from the inline-image route (never SVG: it can carry script).
INLINE_IMAGE_TYPES = frozenset({"image/png", "image/jpeg", "image/gif", "image/webp"})
# Types downloads keep; anything else is sent as application/octet-stream.
DOWNLOAD_TYPES = frozenset(
    {*INLINE_IMAGE_TYPES, "application/pdf", "text/plain", "text/calendar", "application/zip"}
)
RAW_CHUNK = 1 << 20
#: Bytes of a message read to find our Authentication-Results field (the top of the header).
VERIFIED_HEAD = 65536
_SEARCH_CACHE = 32
_MAX_QUERY = 200
_LOG = logging.getLogger("letterbird.http")


@dataclass(frozen=True, slots=True)
class MessageRow:
    uid: int
    sender: str
    subject: str
    snippet: str
    date: float
    size: int
    unread: bool
    flagged: bool
    answered: bool
    draft: bool
    attachment: bool


def _int(value: Any, default: int) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def _list_query(params: Any) -> dict[str, str]:
    """The list-position parameters worth carrying from page to page."""
    out: dict[str, str] = {}
    page = _int(params.get("page"), 1)
    if page > 1:
        out["page"] = str(page)
    if params.get("sort") == "oldest":
        out["sort"] = "oldest"
    q = str(params.get("q") or "")[:_MAX_QUERY].strip()
    if q:
        out["q"] = q
        where = params.get("where")
        if where in SEARCH_FIELDS and where != "all":
            out["where"] = str(where)
    return out


def _qs(params: dict[str, str], **extra: str) -> str:
    merged = {**params, **extra}
    return ("?" + urlencode(merged)) if merged else ""


def routes(web: Web) -> list[Route]:
    search_cache: OrderedDict[tuple[Any, ...], set[int]] = OrderedDict()

    # -- login ------------------------------------------------------------------------------
    async def login_form(request: Request) -> Response:
        if await web.current_user(request) is not None:
            return RedirectResponse("/", status_code=303)
        return _login_page(request, error=None, status=200)

    def _login_page(
        request: Request, *, error: str | None, status: int, username: str = ""
    ) -> Response:
        token = web.sessions.new_login_token()
        response = web.render(
            request,
            "login.html",
            {"title": "Log in", "login_token": token, "error": error, "username": username},
            status=status,
        )
        response.set_cookie(
            web.cookie_name(request, "lb_login"),
            token,
            max_age=3600,
            path="/",
            secure=web.secure(request),
            httponly=True,
            samesite="lax",
        )
        return response

    async def login(request: Request) -> Response:
        form = await web.form(request)
        if not web.sessions.check_login_token(
            request.cookies.get(web.cookie_name(request, "lb_login")),
            _str(form.get("login_token")),
        ):
            raise HTTPException(403, "The login form has expired. Reload the page and try again.")
        username = _str(form.get("username"))[:320].strip()
        password = _str(form.get("password"))[:1024]
        client = request.client.host if request.client else None
        result = None
        if username and password:
            result = await web.app.directory.authenticate(username, password, client)
        if result is None or result.account is None or result.outcome is not AuthOutcome.OK:
            outcome = result.outcome.value if result is not None else "empty"
            event(_LOG, "web.login_failed", client=client, user=username, outcome=outcome)
            return _login_page(
                request,
                error="Login failed: wrong address or password, or too many attempts. "
                "Try again in a while.",
                status=401,
                username=username,
            )
        value, _ = await web.sessions.issue(result.account.id, result.account.password_hash)
        event(_LOG, "web.login", client=client, user=result.account.address)
        response = RedirectResponse("/", status_code=303)
        response.set_cookie(
            web.cookie_name(request),
            value,
            max_age=int(web.settings.session_lifetime),
            path="/",
            secure=web.secure(request),
            httponly=True,
            samesite="lax",
        )
        response.delete_cookie(web.cookie_name(request, "lb_login"), path="/")
        return response

    async def logout(request: Request, user: User) -> Response:
        await web.sessions.revoke(user.session)  # committed, on every node, before we answer
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(
            web.cookie_name(request),
            path="/",
            secure=web.secure(request),
            httponly=True,
            samesite="lax",
        )
        return response

    async def home(request: Request, user: User) -> Response:
        for mb in await web.mailboxes(user):
            if mb.name == "INBOX":
                return RedirectResponse(f"/mail/{mb.id}", status_code=303)
        inbox = await web.storage.create_mailbox(user.id, "INBOX")
        return RedirectResponse(f"/mail/{inbox.id}", status_code=303)

    # -- message lists ------------------------------------------------------------------------
    async def list_context(request: Request, user: User, mb: Mailbox) -> dict[str, Any]:
        params = request.query_params
        query = _list_query(params)
        newest_first = query.get("sort") != "oldest"
        text = query.get("q", "")
        where: SearchField = query.get("where", "all")  # type: ignore[assignment]
        order = await web.index.ordered(mb)
        if text:
            key = (mb.id, mb.uidvalidity, mb.highestmodseq, where, text.casefold())
            found = search_cache.get(key)
            if found is None:
                found = await search_folder(
                    web.storage, mb, where, text, web.settings.search_results
                )
                search_cache[key] = found
                while len(search_cache) > _SEARCH_CACHE:
                    search_cache.popitem(last=False)
            selected: Sequence[int] = [u for u in order if u in found]
        else:
            selected = order
        total = len(selected)
        size = web.settings.page_size
        pages = max(1, math.ceil(total / size))
        page = min(max(1, _int(query.get("page"), 1)), pages)
        if newest_first:
            hi = total - (page - 1) * size
            page_uids = list(reversed(selected[max(0, hi - size) : hi]))
        else:
            page_uids = list(selected[(page - 1) * size : page * size])
        records = {r.uid: r for r in await web.storage.fetch_messages(mb.id, page_uids)}
        show_to = mb.role in ("\\Sent", "\\Drafts")
        rows = [_row(records[u], show_to) for u in page_uids if u in records]
        base = {k: v for k, v in query.items() if k != "page"}
        sort_params = {k: v for k, v in base.items() if k != "sort"}
        if newest_first:
            sort_params["sort"] = "oldest"
        return {
            "mailbox": mb,
            "folder_label": folder_label(mb),
            "rows": rows,
            "page": page,
            "pages": pages,
            "total": total,
            "query": query,
            "q": text,
            "where": where,
            "search_fields": SEARCH_FIELDS,
            "newest_first": newest_first,
            "prev_url": f"/mail/{mb.id}{_qs(base, page=str(page - 1))}" if page > 1 else None,
            "next_url": f"/mail/{mb.id}{_qs(base, page=str(page + 1))}" if page < pages else None,
            "sort_url": f"/mail/{mb.id}{_qs(sort_params)}",
            "list_url": f"/mail/{mb.id}/list{_qs(query)}",
            "back_query": _qs(query),
            "move_targets": [m for m in await web.mailboxes(user) if m.id != mb.id],
            "is_trash": mb.role == "\\Trash",
        }

    async def mailbox_page(request: Request, user: User) -> Response:
        mb = await web.mailbox(user, int(request.path_params["mbid"]))
        ctx = await list_context(request, user, mb)
        ctx.update(
            folders=await web.folders(user),
            current_folder=mb.id,
            title=ctx["folder_label"] + (f" — search “{ctx['q']}”" if ctx["q"] else ""),
            notice=_notice(request),
        )
        return web.render(request, "mailbox.html", ctx, user=user)

    async def mailbox_list(request: Request, user: User) -> Response:
        mb = await web.mailbox(user, int(request.path_params["mbid"]))
        ctx = await list_context(request, user, mb)
        return web.render(request, "_list.html", ctx, user=user)

    async def nav(request: Request, user: User) -> Response:
        current = _int(request.query_params.get("current"), 0)
        return web.render(
            request,
            "_nav.html",
            {"folders": await web.folders(user), "current_folder": current},
            user=user,
        )

    # -- one message -----------------------------------------------------------------------------
    async def load(user: User, mbid: int, uid: int) -> tuple[Mailbox, MessageRecord, MessageInfo]:
        mb = await web.mailbox(user, mbid)
        recs = await web.storage.fetch_messages(mb.id, [uid])
        if not recs:
            raise HTTPException(404, "No such message")
        try:
            info = MessageInfo.from_json(recs[0].structure)
        except ValueError:
            raise HTTPException(500, "This message's stored structure is damaged.") from None
        return mb, recs[0], info

    def cid_link(mb: Mailbox, uid: int, ref: PartRef) -> str:
        return web.sessions.sign_link(
            f"/cid/{mb.id}/{uid}/{ref.section}", web.settings.cid_token_lifetime
        )

    async def frame_html(
        request: Request, mb: Mailbox, rec: MessageRecord, plan: MessagePlan, *, remote: bool
    ) -> tuple[str, int, set[str]]:
        origin = f"{request.url.scheme}://{request.url.netloc}"
        referenced: set[str] = set()

        def cid_url(cid: str) -> str | None:
            ref = plan.by_cid.get(cid)
            if ref is None or ref.mime_type not in INLINE_IMAGE_TYPES:
                return None
            referenced.add(cid)
            return origin + cid_link(mb, rec.uid, ref)

        pieces: list[str] = []
        blocked = 0
        limit = web.settings.text_display_bytes
        for ref in plan.html_body:
            if ref.part.content_type == "text":
                text = await part_text(web.storage, rec.blob_id, ref.part, limit)
                if ref.part.subtype == "html":
                    clean = sanitize_html(text, cid_url=cid_url, allow_remote=remote)
                    blocked += clean.blocked_remote
                    pieces.append(clean.html)
                else:
                    pieces.append(f'<div class="lb-text">{text_to_html(text)}</div>')
            elif ref.mime_type in INLINE_IMAGE_TYPES:
                pieces.append(f'<p><img src="{origin}{cid_link(mb, rec.uid, ref)}" alt=""></p>')
        return frame_document(pieces), blocked, referenced

    async def message_page(request: Request, user: User) -> Response:
        mb, rec, info = await load(
            user, int(request.path_params["mbid"]), int(request.path_params["uid"])
        )
        if "\\Seen" not in rec.flags:
            await web.storage.store_flags(mb.id, [rec.uid], FlagMode.ADD, ["\\Seen"])
        plan = plan_message(info)
        remote = request.query_params.get("remote") == "1"
        texts: list[dict[str, str]] = []
        blocked = 0
        referenced: set[str] = set()
        if plan.has_html:
            _, blocked, referenced = await frame_html(request, mb, rec, plan, remote=remote)
        else:
            limit = web.settings.text_display_bytes
            for ref in plan.text_body:
                if ref.part.content_type == "text":
                    text = await part_text(web.storage, rec.blob_id, ref.part, limit)
                    texts.append({"html": text_to_html(text)})
                elif ref.mime_type in INLINE_IMAGE_TYPES:
                    texts.append({"image": cid_link(mb, rec.uid, ref)})
        env = info.envelope
        # the "verified sender" mark: DMARC passed, per our Authentication-Results field
        head = await web.storage.read_blob(rec.blob_id, 0, VERIFIED_HEAD)
        verified = verified_sender(head, web.app.config.hostname)
        back = _list_query(request.query_params)
        frame_url = f"/mail/{mb.id}/{rec.uid}/frame" + ("?remote=1" if remote else "")
        attachments = [
            {
                "name": ref.filename,
                "type": ref.mime_type,
                "size": ref.decoded_size,
                "url": f"/mail/{mb.id}/{rec.uid}/part/{ref.section}/{quote(ref.filename)}",
            }
            for ref in plan.visible_attachments(referenced)
        ]
        ctx = {
            "title": info.subject or "(no subject)",
            "mailbox": mb,
            "folder_label": folder_label(mb),
            "uid": rec.uid,
            "subject": info.subject or "(no subject)",
            "from_": addresses(env.from_),
            "verified": verified,
            "to": addresses(env.to),
            "cc": addresses(env.cc),
            "bcc": addresses(env.bcc),
            "reply_to": addresses(env.reply_to) if env.reply_to != env.from_ else [],
            "date": info.date or rec.internaldate,
            "flagged": "\\Flagged" in rec.flags,
            "is_draft": mb.role == "\\Drafts" or "\\Draft" in rec.flags,
            "has_html": plan.has_html,
            "frame_url": frame_url,
            "remote": remote,
            "blocked": blocked,
            "remote_url": f"/mail/{mb.id}/{rec.uid}?remote=1",
            "texts": texts,
            "attachments": attachments,
            "back_url": f"/mail/{mb.id}{_qs(back)}",
            "back_query": _qs(back),
            "move_targets": [m for m in await web.mailboxes(user) if m.id != mb.id],
            "is_trash": mb.role == "\\Trash",
            "folders": await web.folders(user),
            "current_folder": mb.id,
            "notice": _notice(request),
        }
        return web.render(request, "message.html", ctx, user=user)

    async def message_frame(request: Request, user: User) -> Response:
        mb, rec, info = await load(
            user, int(request.path_params["mbid"]), int(request.path_params["uid"])
        )
        remote = request.query_params.get("remote") == "1"
        doc, _, _ = await frame_html(request, mb, rec, plan_message(info), remote=remote)
        origin = f"{request.url.scheme}://{request.url.netloc}"
        return Response(
            doc,
            media_type="text/html; charset=utf-8",
            headers={
                "Content-Security-Policy": frame_csp(origin + "/cid/", allow_remote=remote),
                "Cache-Control": "no-store, private",
            },
        )

    async def message_raw(request: Request, user: User) -> Response:
        _, rec, _ = await load(
            user, int(request.path_params["mbid"]), int(request.path_params["uid"])
        )
        download = request.query_params.get("download") == "1"
        return StreamingResponse(
            _blob_chunks(web, rec.blob_id, rec.size),
            media_type="text/plain; charset=utf-8" if not download else "message/rfc822",
            headers={
                "Content-Length": str(rec.size),
                "Content-Disposition": ("attachment" if download else "inline")
                + f'; filename="message-{rec.uid}.eml"',
                "Content-Security-Policy": "sandbox; default-src 'none'",
            },
        )

    async def message_part(request: Request, user: User) -> Response:
        _, rec, info = await load(
            user, int(request.path_params["mbid"]), int(request.path_params["uid"])
        )
        ref = parse_section(info, str(request.path_params["section"]))
        if ref is None:
            raise HTTPException(404, "No such attachment")
        mime = ref.mime_type if ref.mime_type in DOWNLOAD_TYPES else "application/octet-stream"
        if ref.part.content_type == "message":
            mime = "message/rfc822"
        return StreamingResponse(
            decoded_chunks(web.storage, rec.blob_id, ref.part),
            media_type=mime,
            headers={
                "Content-Disposition": content_disposition("attachment", ref.filename),
                "Content-Security-Policy": "sandbox; default-src 'none'",
            },
        )

    async def inline_image(request: Request) -> Response:
        p = request.path_params
        mbid, uid, section = int(p["mbid"]), int(p["uid"]), str(p["section"])
        if not await web.sessions.check_link(
            f"/cid/{mbid}/{uid}/{section}", str(p["expires"]), str(p["sig"])
        ):
            raise HTTPException(404, "No such image")
        recs = await web.storage.fetch_messages(mbid, [uid])
        if not recs:
            raise HTTPException(404, "No such image")
        try:
            info = MessageInfo.from_json(recs[0].structure)
        except ValueError:
            raise HTTPException(404, "No such image") from None
        ref = parse_section(info, section)
        if ref is None or ref.mime_type not in INLINE_IMAGE_TYPES:
            raise HTTPException(404, "No such image")
        return StreamingResponse(
            decoded_chunks(web.storage, recs[0].blob_id, ref.part),
            media_type=ref.mime_type,
            headers={
                "Content-Disposition": "inline",
                "Content-Security-Policy": "sandbox; default-src 'none'",
                "Cache-Control": "private, max-age=3600",
                # The message frame has an opaque origin: let it load this (signed) image.
                "Cross-Origin-Resource-Policy": "cross-origin",
            },
        )

    # -- actions -----------------------------------------------------------------------------------
    async def act(request: Request, user: User) -> Response:
        mb = await web.mailbox(user, int(request.path_params["mbid"]))
        form = await web.form(request)
        uids = sorted({u for u in (_int(v, 0) for v in form.getlist("uid")) if u > 0})
        action = _str(form.get("action"))
        back = _list_query(form)
        single = _str(form.get("return_to")) == "message" and len(uids) == 1
        notice = action
        if not uids:
            notice = "none"
        elif action in ("read", "unread", "flag", "unflag"):
            flag = "\\Seen" if action in ("read", "unread") else "\\Flagged"
            mode = FlagMode.ADD if action in ("read", "flag") else FlagMode.REMOVE
            await web.storage.store_flags(mb.id, uids, mode, [flag])
            notice = {"flag": "flagged", "unflag": "unflagged"}.get(action, action)
            if action == "unread":
                single = False  # back to the list: showing it again would mark it read
        elif action == "move" and not _int(form.get("target"), 0):
            notice = "choose-folder"
        elif action == "move":
            target = await web.mailbox(user, _int(form.get("target"), 0))
            if target.id != mb.id:
                await web.storage.move_messages(mb.id, uids, target.id)
            notice, single = "moved", False
        elif action == "delete":
            if mb.role == "\\Trash":
                await web.storage.store_flags(mb.id, uids, FlagMode.ADD, ["\\Deleted"])
                await web.storage.expunge(mb.id, uids)
                notice = "purged"
            else:
                trash = await web.by_role(user, "\\Trash")
                if trash is None:
                    trash = await _create_trash(web, user)
                await web.storage.move_messages(mb.id, uids, trash.id)
                notice = "deleted"
            single = False
        else:
            raise HTTPException(400, "Unknown action")
        if request.headers.get("hx-request") and not single:
            return Response(status_code=204, headers={"HX-Refresh": "true"})
        if single:
            url = f"/mail/{mb.id}/{uids[0]}{_qs(back, notice=notice)}"
        else:
            url = f"/mail/{mb.id}{_qs(back, notice=notice)}"
        return RedirectResponse(url, status_code=303)

    # -- folders -------------------------------------------------------------------------------
    async def folders_page(
        request: Request, user: User, *, error: str | None = None, status: int = 200
    ) -> Response:
        return web.render(
            request,
            "folders.html",
            {
                "title": "Folders",
                "folders": await web.folders(user),
                "error": error,
                "notice": _notice(request),
            },
            user=user,
            status=status,
        )

    async def folders_get(request: Request, user: User) -> Response:
        return await folders_page(request, user)

    async def folder_create(request: Request, user: User) -> Response:
        form = await web.form(request)
        name = _str(form.get("name")).strip()
        parent = _int(form.get("parent"), 0)
        try:
            if parent:
                name = (await web.mailbox(user, parent)).name + names.DELIMITER + name
            await web.storage.create_mailbox(user.id, names.validate(name))
        except names.InvalidMailboxName as exc:
            return await folders_page(
                request, user, error=f"Cannot create “{name}”: {exc}.", status=400
            )
        except MailboxExists:
            return await folders_page(
                request, user, error=f"A folder “{name}” exists already.", status=409
            )
        return RedirectResponse("/folders?notice=created", status_code=303)

    async def folder_rename(request: Request, user: User) -> Response:
        mb = await web.mailbox(user, int(request.path_params["mbid"]))
        form = await web.form(request)
        new = _str(form.get("name")).strip()
        if mb.name == "INBOX" or mb.role is not None:
            return await folders_page(
                request, user, error="Special folders keep their names.", status=400
            )
        if "/" in mb.name and "/" not in new:
            new = mb.name.rsplit("/", 1)[0] + "/" + new
        try:
            await web.storage.rename_mailbox(user.id, mb.name, names.validate(new))
        except names.InvalidMailboxName as exc:
            return await folders_page(
                request, user, error=f"Cannot rename to “{new}”: {exc}.", status=400
            )
        except MailboxExists:
            return await folders_page(
                request, user, error=f"A folder “{new}” exists already.", status=409
            )
        except NotFound:
            raise HTTPException(404, "No such folder") from None
        return RedirectResponse("/folders?notice=renamed", status_code=303)

    async def folder_delete(request: Request, user: User) -> Response:
        mb = await web.mailbox(user, int(request.path_params["mbid"]))
        if mb.name == "INBOX" or mb.role is not None:
            return await folders_page(
                request, user, error="Special folders cannot be deleted.", status=400
            )
        try:
            await web.storage.delete_mailbox(user.id, mb.name)
        except NotFound:
            raise HTTPException(404, "No such folder") from None
        except StorageError as exc:
            return await folders_page(request, user, error=str(exc), status=400)
        web.index.forget(mb.id)
        return RedirectResponse("/folders?notice=folder-deleted", status_code=303)

    p = web.page
    return [
        Route("/", p(home), methods=["GET"]),
        Route("/login", login_form, methods=["GET"]),
        Route("/login", login, methods=["POST"]),
        Route("/logout", p(logout), methods=["POST"]),
        Route("/nav", p(nav), methods=["GET"]),
        Route("/folders", p(folders_get), methods=["GET"]),
        Route("/folders", p(folder_create), methods=["POST"]),
        Route("/folders/{mbid:int}/rename", p(folder_rename), methods=["POST"]),
        Route("/folders/{mbid:int}/delete", p(folder_delete), methods=["POST"]),
        Route("/mail/{mbid:int}", p(mailbox_page), methods=["GET"]),
        Route("/mail/{mbid:int}/list", p(mailbox_list), methods=["GET"]),
        Route("/mail/{mbid:int}/action", p(act), methods=["POST"]),
        Route("/mail/{mbid:int}/{uid:int}", p(message_page), methods=["GET"]),
        Route("/mail/{mbid:int}/{uid:int}/frame", p(message_frame), methods=["GET"]),
        Route("/mail/{mbid:int}/{uid:int}/raw", p(message_raw), methods=["GET"]),
        Route(
            "/mail/{mbid:int}/{uid:int}/part/{section}/{name:path}",
            p(message_part),
            methods=["GET"],
        ),
        Route("/cid/{mbid:int}/{uid:int}/{section}/{expires}/{sig}", inline_image, methods=["GET"]),
    ]


async def _create_trash(web: Web, user: User) -> Mailbox:
    try:
        trash = await web.storage.create_mailbox(user.id, "Trash", "\\Trash")
    except MailboxExists:
        found = await web.storage.get_mailbox(user.id, "Trash")
        if found is None:  # pragma: no cover - it was there a moment ago
            raise HTTPException(500, "Cannot find the Trash folder") from None
        return found
    user.mailboxes = None
    return trash


def _row(rec: MessageRecord, show_to: bool) -> MessageRow:
    try:
        info = MessageInfo.from_json(rec.structure)
    except ValueError:
        return MessageRow(
            rec.uid,
            "",
            "(damaged message)",
            "",
            rec.internaldate,
            rec.size,
            "\\Seen" not in rec.flags,
            "\\Flagged" in rec.flags,
            False,
            False,
            False,
        )
    if show_to:
        people = ", ".join(n or a for n, a in addresses(info.envelope.to))
        sender = f"To: {people}" if people else "(no recipient)"
    else:
        shown = addresses(info.envelope.from_)
        sender = ", ".join(n or a for n, a in shown) or info.from_display or "(unknown sender)"
    return MessageRow(
        uid=rec.uid,
        sender=sender,
        subject=info.subject or "(no subject)",
        snippet=info.snippet,
        date=rec.internaldate,
        size=rec.size,
        unread="\\Seen" not in rec.flags,
        flagged="\\Flagged" in rec.flags,
        answered="\\Answered" in rec.flags,
        draft="\\Draft" in rec.flags,
        attachment=info.has_attachment,
    )


def _str(value: object) -> str:
    return value if isinstance(value, str) else ""


def _notice(request: Request) -> str | None:
    return NOTICES.get(request.query_params.get("notice", ""))


async def _blob_chunks(web: Web, blob_id: str, size: int) -> AsyncIterator[bytes]:
    for start in range(0, size, RAW_CHUNK):
        yield await web.storage.read_blob(blob_id, start, min(size, start + RAW_CHUNK))


_TOKEN_SAFE = re.compile(r"[^A-Za-z0-9!#$&+.^_`|~-]")


def content_disposition(kind: str, filename: str) -> str:
    """RFC 6266 header with an ASCII fallback and the RFC 8187 ``filename*`` form."""
    ascii_name = _TOKEN_SAFE.sub("_", filename.encode("ascii", "replace").decode("ascii"))
    return f"{kind}; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(filename, safe='')}"
