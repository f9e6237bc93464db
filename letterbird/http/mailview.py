"""What a reader sees of a stored message: which parts are the body, which are attachments,
and their decoded contents — read from the cached structure and byte ranges, never by
re-parsing the message.

Body and attachment selection follows the JMAP algorithm (RFC 8621 §4.1.4, ``parseStructure``):
in ``multipart/alternative`` the HTML and plain-text versions are told apart, in
``multipart/related`` only the first part is body, a part with ``Content-Disposition:
attachment`` or a non-text type is an attachment, and inline images that belong to neither body
list are attachments too. Section numbers are IMAP's (RFC 3501 §6.4.5), so one part has the same
name in every protocol.
"""

from __future__ import annotations

import binascii
import mimetypes
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from letterbird.mime import BodyPart, MessageInfo, decode_words, find_part
from letterbird.mime.address import MISSING_DOMAIN, MISSING_MAILBOX, Address
from letterbird.mime.charsets import decode_text
from letterbird.mime.text import decode_transfer, html_to_text
from letterbird.storage.interface import Storage

__all__ = [
    "MessagePlan",
    "PartRef",
    "addresses",
    "decoded_chunks",
    "format_address",
    "parse_section",
    "part_text",
    "plan_message",
    "quote_text",
    "reply_subject",
    "safe_filename",
]

_SECTION = re.compile(r"^[1-9][0-9]{0,5}(?:\.[1-9][0-9]{0,5}){0,31}$")
_INLINE_MEDIA = ("image", "audio", "video")
_NOT_BASE64 = re.compile(rb"[^A-Za-z0-9+/]")


@dataclass(frozen=True, slots=True)
class PartRef:
    """One leaf part with its IMAP section path."""

    path: tuple[int, ...]
    part: BodyPart

    @property
    def section(self) -> str:
        return ".".join(str(n) for n in self.path)

    @property
    def mime_type(self) -> str:
        return f"{self.part.content_type}/{self.part.subtype}"

    @property
    def filename(self) -> str:
        name = self.part.filename
        if name:
            return safe_filename(decode_words(name))
        if self.part.content_type == "message" and self.part.subtype == "rfc822":
            return "message.eml"
        ext = mimetypes.guess_extension(self.mime_type, strict=False) or ".bin"
        return f"part-{self.section}{ext}"

    @property
    def decoded_size(self) -> int:
        """The size of the content once its transfer encoding is undone (estimated)."""
        size = self.part.size
        if self.part.encoding == "base64":
            return size * 3 // 4 - size * 3 // 4 // 39  # minus about 2 line-break bytes per 76
        return size

    @property
    def content_id(self) -> str | None:
        cid = self.part.content_id
        if not cid:
            return None
        cid = cid.strip()
        if cid.startswith("<") and cid.endswith(">"):
            cid = cid[1:-1]
        return cid.strip() or None


@dataclass(slots=True)
class MessagePlan:
    text_body: list[PartRef] = field(default_factory=list)
    html_body: list[PartRef] = field(default_factory=list)
    attachments: list[PartRef] = field(default_factory=list)
    by_cid: dict[str, PartRef] = field(default_factory=dict)

    @property
    def has_html(self) -> bool:
        return any(
            p.part.subtype == "html" and p.part.content_type == "text" for p in self.html_body
        )

    def visible_attachments(self, referenced: set[str]) -> list[PartRef]:
        """Attachments minus inline images the HTML body shows by ``cid:``."""
        return [p for p in self.attachments if p.content_id not in referenced or not self.has_html]


def _is_inline_media(part: BodyPart) -> bool:
    return part.content_type in _INLINE_MEDIA


def _walk_leaves(
    children: list[tuple[tuple[int, ...], BodyPart]],
    multipart_type: str,
    in_alternative: bool,
    html_body: list[PartRef] | None,
    text_body: list[PartRef] | None,
    attachments: list[PartRef],
) -> None:
    """RFC 8621 §4.1.4 ``parseStructure``. A body list of None means "no longer collecting"
    (the other version of a ``multipart/alternative`` was chosen at this level)."""
    text_length = len(text_body) if text_body is not None else -1
    html_length = len(html_body) if html_body is not None else -1
    for i, (path, part) in enumerate(children):
        is_multipart = bool(part.parts)
        disposition = part.disposition[0] if part.disposition else None
        is_text = part.content_type == "text" and part.subtype in ("plain", "html")
        is_inline = (
            disposition != "attachment"
            and (is_text or _is_inline_media(part))
            and (
                i == 0
                or (multipart_type != "related" and (_is_inline_media(part) or not part.filename))
            )
        )
        ref = PartRef(path, part)
        if is_multipart:
            sub = part.subtype
            inner = [((*path, j), child) for j, child in enumerate(part.parts, 1)]
            _walk_leaves(
                inner,
                sub,
                in_alternative or sub == "alternative",
                html_body,
                text_body,
                attachments,
            )
        elif is_inline:
            if multipart_type == "alternative":
                if is_text and part.subtype == "plain":
                    if text_body is not None:
                        text_body.append(ref)
                elif is_text and part.subtype == "html":
                    if html_body is not None:
                        html_body.append(ref)
                else:
                    attachments.append(ref)
                continue
            if in_alternative:
                if is_text and part.subtype == "plain":
                    html_body = None
                if is_text and part.subtype == "html":
                    text_body = None
            if text_body is not None:
                text_body.append(ref)
            if html_body is not None:
                html_body.append(ref)
            if (text_body is None or html_body is None) and _is_inline_media(part):
                attachments.append(ref)
        else:
            attachments.append(ref)
    if multipart_type == "alternative" and text_body is not None and html_body is not None:
        if text_length == len(text_body) and html_length != len(html_body):
            text_body.extend(html_body[html_length:])
        if html_length == len(html_body) and text_length != len(text_body):
            html_body.extend(text_body[text_length:])


def plan_message(info: MessageInfo) -> MessagePlan:
    root = info.body
    plan = MessagePlan()
    children: list[tuple[tuple[int, ...], BodyPart]]
    if root.parts:
        children = [((i,), child) for i, child in enumerate(root.parts, 1)]
        kind = root.subtype
    else:
        children = [((1,), root)]
        kind = "mixed"
    _walk_leaves(
        children, kind, kind == "alternative", plan.html_body, plan.text_body, plan.attachments
    )
    for path, part in _leaves(children):
        ref = PartRef(path, part)
        cid = ref.content_id
        if cid and cid not in plan.by_cid:
            plan.by_cid[cid] = ref
    return plan


def _leaves(
    children: list[tuple[tuple[int, ...], BodyPart]],
) -> list[tuple[tuple[int, ...], BodyPart]]:
    out: list[tuple[tuple[int, ...], BodyPart]] = []
    for path, part in children:
        if part.parts:
            out.extend(_leaves([((*path, j), c) for j, c in enumerate(part.parts, 1)]))
        else:
            out.append((path, part))
    return out


def parse_section(info: MessageInfo, section: str) -> PartRef | None:
    """The leaf part named by an IMAP section number such as ``"1.2"``; None if none."""
    if not _SECTION.match(section):
        return None
    path = tuple(int(n) for n in section.split("."))
    part = find_part(info.body, path)
    if part is None or part.parts:
        return None
    return PartRef(path, part)


# -- contents ---------------------------------------------------------------------------------


async def part_text(storage: Storage, blob_id: str, part: BodyPart, limit: int) -> str:
    """The decoded text of a ``text/*`` part, cut to about ``limit`` characters."""
    encoded_limit = limit * 2 if part.encoding in ("base64", "quoted-printable") else limit
    stop = min(part.end, part.body_start + encoded_limit)
    raw = await storage.read_blob(blob_id, part.body_start, stop)
    truncated = stop < part.end
    data = decode_transfer(raw, part.encoding, truncated=truncated)
    text = decode_text(data, part.param("charset") or "", final=not truncated)
    if truncated:
        text += "\n[…]"
    return text


async def decoded_chunks(
    storage: Storage, blob_id: str, part: BodyPart, chunk: int = 1 << 20
) -> AsyncIterator[bytes]:
    """The part's content with its transfer encoding undone, in bounded chunks."""
    pos = part.body_start
    carry = b""
    encoding = part.encoding
    while pos < part.end:
        stop = min(part.end, pos + chunk)
        data = carry + await storage.read_blob(blob_id, pos, stop)
        pos = stop
        last = pos >= part.end
        if encoding == "base64":
            # As decode_transfer does for the whole part: padding and every other character
            # outside the alphabet are ignored; whole 4-character groups decode on their own.
            clean = _NOT_BASE64.sub(b"", data)
            keep = len(clean) if last else len(clean) - len(clean) % 4
            carry = clean[keep:]
            out = decode_transfer(clean[:keep], "base64")
        elif encoding == "quoted-printable":
            cut = len(data) if last else data.rfind(b"\n") + 1
            carry = data[cut:]
            out = binascii.a2b_qp(data[:cut])
        else:
            carry = b""
            out = data
        if out:
            yield out


# -- addresses and replies -----------------------------------------------------------------------


def addresses(addrs: tuple[Address, ...]) -> list[tuple[str, str]]:
    """``(display name, address)`` pairs, names decoded, group markers left out."""
    out: list[tuple[str, str]] = []
    for a in addrs:
        if a.host is None:
            continue
        mailbox = "" if a.mailbox in (None, MISSING_MAILBOX) else a.mailbox or ""
        spec = mailbox if a.host == MISSING_DOMAIN else f"{mailbox}@{a.host}"
        name = " ".join(decode_words(a.name).split()) if a.name else ""
        out.append((name, spec))
    return out


def format_address(name: str, spec: str) -> str:
    """``"Name" <spec>`` for an address field of a message being composed."""
    if not name:
        return spec
    if re.fullmatch(r"[\w .'-]*", name) and "." not in name:
        return f"{name} <{spec}>"
    quoted = name.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{quoted}" <{spec}>'


_PREFIX = re.compile(r"^\s*((re|aw|sv|fwd?|wg|tr)\s*(\[\d+\])?\s*:\s*)+", re.I)


def reply_subject(subject: str, prefix: str) -> str:
    """``Re: subject`` / ``Fwd: subject`` with earlier reply or forward prefixes folded away."""
    base = _PREFIX.sub("", subject).strip()
    return f"{prefix} {base}".strip()


def quote_text(text: str) -> str:
    return "\n".join("> " + line if line else ">" for line in text.splitlines())


def body_as_text(kind: str, text: str) -> str:
    return html_to_text(text) if kind == "html" else text


_UNSAFE_NAME = re.compile(r"[\x00-\x1f\x7f\"*:<>?|]")


def safe_filename(name: str, default: str = "attachment") -> str:
    """A file name safe to offer for download: no folders, no control or reserved characters."""
    name = name.replace("\\", "/").rsplit("/", 1)[-1]
    name = _UNSAFE_NAME.sub("_", name).strip().lstrip(".").strip()
    if len(name) > 150:
        stem, dot, ext = name.rpartition(".")
        name = (stem[: 140 - len(ext)] + dot + ext) if dot and len(ext) <= 10 else name[:150]
    return name or default
