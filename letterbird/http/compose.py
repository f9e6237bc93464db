"""The compose page: new messages, reply, reply-all, forward (with the original's
attachments), drafts; Send and Save draft. Building and committing is in
:mod:`letterbird.http.outgoing`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from letterbird.http.mailview import (
    PartRef,
    addresses,
    body_as_text,
    decoded_chunks,
    format_address,
    parse_section,
    part_text,
    plan_message,
    quote_text,
    reply_subject,
    safe_filename,
)
from letterbird.http.outgoing import (
    Attachment,
    ComposeError,
    Draft,
    guess_type,
    identities,
    one_line,
    parse_recipients,
    send,
    store_draft,
)
from letterbird.http.web import User, Web, fmt_full_date
from letterbird.logs import event
from letterbird.mime import MessageInfo
from letterbird.storage.interface import (
    FlagMode,
    Mailbox,
    MessageRecord,
    QuotaExceeded,
    StorageError,
)

log = logging.getLogger("letterbird.http")

__all__ = ["routes"]

_QUOTE_LIMIT = 256 * 1024
_MAX_REFERENCES = 50


@dataclass
class Form:
    sender: str = ""
    to: str = ""
    cc: str = ""
    bcc: str = ""
    subject: str = ""
    body: str = ""
    in_reply_to: str = ""
    references: str = ""
    reply_of: str = ""
    forward_of: str = ""
    draft: str = ""
    keep: list[dict[str, Any]] = field(default_factory=list)  # attachments carried over


def _ref(value: str) -> tuple[int, int] | None:
    """``"mailbox:uid"`` → the pair, or None."""
    a, sep, b = value.partition(":")
    if not sep or not a.isdigit() or not b.isdigit() or len(value) > 40:
        return None
    return int(a), int(b)


def _field(form: Any, name: str, limit: int = 998) -> str:
    value = form.get(name)
    return value[:limit] if isinstance(value, str) else ""


def _join(people: list[tuple[str, str]]) -> str:
    return ", ".join(format_address(n, a) for n, a in people)


def routes(web: Web) -> list[Route]:
    async def load(
        user: User, ref: tuple[int, int] | None
    ) -> tuple[Mailbox, MessageRecord, MessageInfo]:
        if ref is None:
            raise HTTPException(404, "No such message")
        mb = await web.mailbox(user, ref[0])
        recs = await web.storage.fetch_messages(mb.id, [ref[1]])
        if not recs:
            raise HTTPException(404, "No such message")
        try:
            return mb, recs[0], MessageInfo.from_json(recs[0].structure)
        except ValueError:
            raise HTTPException(404, "No such message") from None

    async def body_text(rec: MessageRecord, info: MessageInfo) -> str:
        plan = plan_message(info)
        parts = [p for p in plan.text_body if p.part.content_type == "text"]
        out = []
        for ref in parts:
            text = await part_text(web.storage, rec.blob_id, ref.part, _QUOTE_LIMIT)
            text = body_as_text(ref.part.subtype, text)
            out.append(text.replace("\r\n", "\n").replace("\r", "\n"))
        return "\n".join(out).strip("\n")

    def keep_entry(mb: Mailbox, rec: MessageRecord, ref: PartRef) -> dict[str, Any]:
        return {
            "value": f"{mb.id}:{rec.uid}:{ref.section}",
            "name": ref.filename,
            "size": ref.decoded_size,
            "checked": True,
        }

    async def own_addresses(user: User) -> list[str]:
        return await identities(web.app, user.account)

    async def prefill(request: Request, user: User) -> Form:
        q = request.query_params
        own = await own_addresses(user)
        own_keys = {a.casefold() for a in own}
        form = Form(sender=user.account.address)
        if q.get("to"):
            form.to = one_line(q["to"], 2000)
        for mode in ("reply", "replyall", "forward", "draft"):
            if mode in q:
                break
        else:
            return form
        mb, rec, info = await load(user, _ref(q[mode]))
        env = info.envelope
        everyone = addresses(env.to) + addresses(env.cc)
        for _, addr in everyone:  # answer from the address the message was sent to
            if addr.casefold() in own_keys:
                form.sender = next(a for a in own if a.casefold() == addr.casefold())
                break
        plan = plan_message(info)
        if mode == "draft":
            form.to, form.cc, form.bcc = (_join(addresses(x)) for x in (env.to, env.cc, env.bcc))
            if env.from_ and addresses(env.from_):
                sender = addresses(env.from_)[0][1]
                if sender.casefold() in own_keys:
                    form.sender = sender
            form.subject = info.subject
            form.body = await body_text(rec, info)
            form.in_reply_to = info.in_reply_to or ""
            form.references = " ".join(info.references)
            form.draft = f"{mb.id}:{rec.uid}"
            form.keep = [keep_entry(mb, rec, r) for r in plan.attachments]
            return form
        original = await body_text(rec, info)
        who = ", ".join(n or a for n, a in addresses(env.from_)) or "someone"
        when = fmt_full_date(info.date or rec.internaldate)
        if mode == "forward":
            form.subject = reply_subject(info.subject, "Fwd:")
            header = [
                "",
                "",
                "---------- Forwarded message ----------",
                f"From: {_join(addresses(env.from_))}",
                f"Date: {when}",
                f"Subject: {info.subject}",
            ]
            if env.to:
                header.append(f"To: {_join(addresses(env.to))}")
            form.body = "\n".join(header) + "\n\n" + original
            form.forward_of = f"{mb.id}:{rec.uid}"
            form.keep = [keep_entry(mb, rec, r) for r in plan.attachments]
            return form
        reply_to = addresses(env.reply_to) or addresses(env.from_)
        form.to = _join(reply_to)
        if mode == "replyall":
            seen = {a.casefold() for _, a in reply_to} | own_keys
            to_more = [(n, a) for n, a in addresses(env.to) if a.casefold() not in seen]
            seen |= {a.casefold() for _, a in to_more}
            cc = [(n, a) for n, a in addresses(env.cc) if a.casefold() not in seen]
            form.to = _join(reply_to + to_more)
            form.cc = _join(cc)
        form.subject = reply_subject(info.subject, "Re:")
        form.body = f"\n\nOn {when}, {who} wrote:\n{quote_text(original)}\n"
        if info.message_id:
            form.in_reply_to = info.message_id
            refs = [*info.references, info.message_id][-_MAX_REFERENCES:]
            form.references = " ".join(refs)
        form.reply_of = f"{mb.id}:{rec.uid}"
        return form

    def render(
        request: Request,
        user: User,
        form: Form,
        own: list[str],
        *,
        errors: dict[str, str] | None = None,
        status: int = 200,
        folders: Any = None,
    ) -> Response:
        title = form.subject or "New message"
        return web.render(
            request,
            "compose.html",
            {
                "title": f"Compose: {title}" if form.subject else "New message",
                "form": form,
                "identities": own,
                "errors": errors or {},
                "folders": folders or [],
                "upload_limit": web.settings.upload_size,
                "notice": {"saved": "Draft saved."}.get(request.query_params.get("notice", "")),
            },
            user=user,
            status=status,
        )

    async def compose_get(request: Request, user: User) -> Response:
        form = await prefill(request, user)
        return render(
            request, user, form, await own_addresses(user), folders=await web.folders(user)
        )

    async def read_form(request: Request, user: User) -> tuple[Form, list[UploadFile]]:
        data = await web.form(request)
        form = Form(
            sender=_field(data, "from", 320).strip(),
            to=_field(data, "to", 64 * 1024),
            cc=_field(data, "cc", 64 * 1024),
            bcc=_field(data, "bcc", 64 * 1024),
            subject=_field(data, "subject"),
            body=_field(data, "body", web.settings.upload_size),
            in_reply_to=_field(data, "in_reply_to", 998).strip(),
            references=_field(data, "references", 16 * 1024).strip(),
            reply_of=_field(data, "reply_of", 40),
            forward_of=_field(data, "forward_of", 40),
            draft=_field(data, "draft", 40),
        )
        for value in data.getlist("keep"):
            if isinstance(value, str) and len(value) < 200:
                form.keep.append({"value": value, "name": "", "size": 0, "checked": True})
        uploads = [
            f for f in data.getlist("attachments") if isinstance(f, UploadFile) and f.filename
        ]
        return form, uploads

    async def collect_attachments(
        user: User, form: Form, uploads: list[UploadFile]
    ) -> list[Attachment]:
        out: list[Attachment] = []
        total = 0
        limit = web.settings.message_size
        if len(uploads) + len(form.keep) > web.settings.max_attachments:
            raise ComposeError(f"Too many attachments (at most {web.settings.max_attachments}).")
        for entry in form.keep:
            value = str(entry["value"])
            head, _, section = value.rpartition(":")
            _, rec, info = await load(user, _ref(head))
            ref = parse_section(info, section)
            if ref is None:
                raise ComposeError("An attachment of the original message is gone.")
            chunks = []
            async for chunk in decoded_chunks(web.storage, rec.blob_id, ref.part):
                total += len(chunk)
                if total > limit:
                    raise ComposeError("The attachments are too large.")
                chunks.append(chunk)
            entry.update(name=ref.filename, size=sum(len(c) for c in chunks))
            out.append(Attachment(ref.filename, ref.mime_type, b"".join(chunks)))
        for up in uploads:
            data = await up.read(limit - total + 1)
            total += len(data)
            if total > limit:
                raise ComposeError("The attachments are too large.")
            name = safe_filename(up.filename or "")
            out.append(Attachment(name, guess_type(name, up.content_type), data))
        return out

    async def to_draft(form: Form, own: list[str]) -> Draft:
        limit = web.settings.max_recipients
        errors: dict[str, str] = {}
        lists: dict[str, list[tuple[str, str]]] = {}
        for name in ("to", "cc", "bcc"):
            try:
                lists[name] = parse_recipients(getattr(form, name), name, limit)
            except ComposeError as exc:
                errors[name] = str(exc)
                lists[name] = []
        if form.sender.casefold() not in {a.casefold() for a in own}:
            errors["from"] = "Choose one of your addresses."
        if errors:
            raise _FieldErrors(errors)
        refs = tuple(r.strip("<>") for r in form.references.split() if r.strip("<>"))
        return Draft(
            sender=form.sender,
            to=lists["to"],
            cc=lists["cc"],
            bcc=lists["bcc"],
            subject=form.subject,
            body=form.body,
            in_reply_to=form.in_reply_to.strip("<>") or None,
            references=refs[-_MAX_REFERENCES:],
        )

    async def compose_post(request: Request, user: User) -> Response:
        form, uploads = await read_form(request, user)
        action = _field(await web.form(request), "action", 10)
        own = await own_addresses(user)
        try:
            draft = await to_draft(form, own)
            if action == "send" and len(draft.recipients) > web.settings.max_recipients:
                raise ComposeError(
                    f"Too many recipients (at most {web.settings.max_recipients}).", "to"
                )
            draft.attachments = await collect_attachments(user, form, uploads)
            if action == "save":
                drafts = await web.by_role(user, "\\Drafts")
                mbid, uid = await store_draft(
                    web.app, user.account, draft, drafts, max_size=web.settings.message_size
                )
                await _drop_draft(web, user, form.draft)
                return RedirectResponse(
                    f"/compose?draft={mbid}:{uid}&notice=saved", status_code=303
                )
            if action != "send":
                raise HTTPException(400, "Unknown action")
            sent = await web.by_role(user, "\\Sent")
            queue_id, _ = await send(
                web.app, user.account, draft, sent, max_size=web.settings.message_size
            )
        except _FieldErrors as exc:
            return render(
                request,
                user,
                form,
                own,
                errors=exc.errors,
                status=400,
                folders=await web.folders(user),
            )
        except ComposeError as exc:
            errors = {exc.field or "form": str(exc)}
            if uploads:
                errors["attachments"] = "Attach your files again."
            return render(
                request, user, form, own, errors=errors, status=400, folders=await web.folders(user)
            )
        except QuotaExceeded:
            return render(
                request,
                user,
                form,
                own,
                status=507,
                errors={"form": "A mailbox is full (yours or a recipient's)."},
                folders=await web.folders(user),
            )
        except StorageError as exc:
            event(log, "web.send_failed", level=logging.ERROR, user=user.account.address, error=exc)
            return render(
                request,
                user,
                form,
                own,
                status=503,
                errors={"form": "The message could not be stored. Try again."},
                folders=await web.folders(user),
            )
        event(log, "web.sent", user=user.account.address, id=queue_id, rcpts=len(draft.recipients))
        await _mark(web, user, form.reply_of, "\\Answered")
        await _mark(web, user, form.forward_of, "$Forwarded")
        await _drop_draft(web, user, form.draft)
        inbox = next((m for m in await web.mailboxes(user) if m.name == "INBOX"), None)
        url = f"/mail/{inbox.id}?notice=sent" if inbox else "/?notice=sent"
        return RedirectResponse(url, status_code=303)

    p = web.page
    return [
        Route("/compose", p(compose_get), methods=["GET"]),
        Route("/compose", p(compose_post), methods=["POST"]),
    ]


class _FieldErrors(Exception):
    def __init__(self, errors: dict[str, str]) -> None:
        super().__init__("invalid form")
        self.errors = errors


async def _mark(web: Web, user: User, ref: str, flag: str) -> None:
    pair = _ref(ref)
    if pair is None:
        return
    try:
        mb = await web.mailbox(user, pair[0])
        await web.storage.store_flags(mb.id, [pair[1]], FlagMode.ADD, [flag])
    except (HTTPException, StorageError):
        pass  # the original was moved or deleted meanwhile: nothing to mark


async def _drop_draft(web: Web, user: User, ref: str) -> None:
    pair = _ref(ref)
    if pair is None:
        return
    try:
        mb = await web.mailbox(user, pair[0])
        if mb.role != "\\Drafts":
            return
        await web.storage.store_flags(mb.id, [pair[1]], FlagMode.ADD, ["\\Deleted"])
        await web.storage.expunge(mb.id, [pair[1]])
    except (HTTPException, StorageError):
        pass
