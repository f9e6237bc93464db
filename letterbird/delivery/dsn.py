"""Delivery Status Notifications: the report the queue mails back (RFC 3464, RFC 3461, RFC 6533).

:func:`build_dsn` writes one ``multipart/report; report-type=delivery-status`` message
(RFC 6522 / RFC 3464 §2) with three parts:

1. ``text/plain``: what happened, for a person (UTF-8, quoted-printable when needed);
2. ``message/delivery-status``: the machine-readable fields, per message and per recipient;
3. the original: ``text/rfc822-headers`` (RET=HDRS, and the default) or the whole message as
   ``message/rfc822`` (RET=FULL, RFC 3461 §4.3).

RFC 3464 §2.2 and §2.3, the fields written::

    per-message-fields = [ original-envelope-id-field CRLF ]
                         reporting-mta-field CRLF
                         [ arrival-date-field CRLF ]
    reporting-mta-field = "Reporting-MTA" ":" mta-name-type ";" mta-name
    per-recipient-fields = [ original-recipient-field CRLF ]
                           final-recipient-field CRLF
                           action-field CRLF
                           status-field CRLF
                           [ remote-mta-field CRLF ]
                           [ diagnostic-code-field CRLF ]
                           [ last-attempt-date-field CRLF ]
                           [ will-retry-until-field CRLF ]
    action-value = "failed" / "delayed" / "delivered" / "relayed" / "expanded"
    status-code = DIGIT "." 1*3DIGIT "." 1*3DIGIT

The envelope id and ORCPT come in decoded (as the SMTP server core decodes their xtext) and are
written as text; a field that would carry a non-ASCII address makes the report a
``message/global-delivery-status`` with the ``utf-8`` address type (RFC 6533 §6), and original
headers that are not ASCII are returned as ``message/global-headers`` / ``message/global``.
Everything a remote server said is sanitised (no control characters) and folded so no line
exceeds RFC 5322's limits.

The DSN is sent with the null reverse path (RFC 3461 §6.1, RFC 5321 §4.5.5) by the queue
(:meth:`letterbird.delivery.queue.service.QueueService.notify`), which also decides *whether* to
send one (:func:`notify_wants`): NOTIFY=NEVER never, default FAILURE and DELAY, SUCCESS only when
asked.
"""

from __future__ import annotations

import binascii
import email.utils
import re
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Literal

from letterbird.mime.headers import header_section_end

__all__ = [
    "ACTIONS",
    "DsnRecipient",
    "build_dsn",
    "notify_wants",
]

#: RFC 3464 §2.3.3 action values.
ACTIONS: Final = frozenset({"failed", "delayed", "delivered", "relayed", "expanded"})

# RFC 3464 §2.3.4: status-code = DIGIT "." 1*3DIGIT "." 1*3DIGIT (the class is 2, 4 or 5).
_STATUS_RE = re.compile(r"[245]\.[0-9]{1,3}\.[0-9]{1,3}")
# RFC 3464 §2.1.2: address-type / mta-name-type / diagnostic-type = atom; a value that starts
# with "atom ;" already names its type.
_TYPED_RE = re.compile(r"[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~]+;")
_CONTROL_RE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
#: Longest diagnostic text kept (a remote reply may have hundreds of lines).
MAX_DIAGNOSTIC = 2000
_FOLD_AT = 76

Event = Literal["FAILURE", "DELAY", "SUCCESS"]


def notify_wants(notify: Sequence[str], event: Event) -> bool:
    """Whether a recipient's NOTIFY parameter (RFC 3461 §4.1) asks for a DSN on ``event``.

    No NOTIFY means FAILURE and DELAY (§4.1: "the default is FAILURE,DELAY" in practice, as
    Postfix and sendmail do); NEVER means none."""
    values = {v.upper() for v in notify}
    if not values:
        return event in ("FAILURE", "DELAY")
    if "NEVER" in values:
        return False
    return event in values


@dataclass(frozen=True, slots=True)
class DsnRecipient:
    """One recipient's line in a DSN.

    ``action``: one of :data:`ACTIONS`; ``status``: the RFC 3463 code (``5.1.1``);
    ``diagnostic``: the remote reply (``"smtp; 550 5.1.1 No such user"``; plain text gets the
    ``smtp;`` type added); ``remote_mta``: the host that answered; ``orcpt``: the ORCPT value
    as received, decoded (``"rfc822;bob@b.test"``); ``final_recipient``: defaults to
    ``rfc822;address``; times are seconds since the epoch. Invalid values raise ValueError.
    """

    address: str
    action: str
    status: str
    diagnostic: str | None = None
    remote_mta: str | None = None
    orcpt: str | None = None
    final_recipient: str | None = None
    last_attempt: float | None = None
    will_retry_until: float | None = None

    def __post_init__(self) -> None:
        if self.action not in ACTIONS:
            raise ValueError(f"invalid DSN action: {self.action!r}")
        if _STATUS_RE.fullmatch(self.status) is None:
            raise ValueError(f"invalid DSN status: {self.status!r}")


def build_dsn(
    *,
    reporting_mta: str,
    sender: str,
    recipients: Sequence[DsnRecipient],
    original: bytes,
    envid: str | None = None,
    ret: str | None = None,
    arrival: float | None = None,
    subject: str | None = None,
    now: float | None = None,
    boundary: str | None = None,
) -> bytes:
    """The complete DSN message (CRLF line ends), addressed to ``sender``.

    ``original`` is the message the report is about (without our ``Return-Path:``); only its
    header section is returned unless ``ret`` is ``"FULL"``. ``now`` and ``boundary`` exist
    for reproducible tests."""
    if not recipients:
        raise ValueError("a DSN needs at least one recipient")
    when = time.time() if now is None else now
    mta = _clean_ascii(reporting_mta)
    full = (ret or "").upper() == "FULL"
    hend = header_section_end(original)
    headers = original[:hend]
    if not full:
        original = headers.rstrip(b"\r\n") + b"\r\n" if headers.strip() else b""
    global_status = not sender.isascii() or any(
        not r.address.isascii() or not (r.orcpt or "").isascii() for r in recipients
    )
    global_headers = not headers.isascii()
    mark = boundary or _boundary(original)
    actions = {r.action for r in recipients}

    head = [
        ("From", f"Mail Delivery System <MAILER-DAEMON@{mta}>"),
        ("To", f"<{sender}>" if sender else "<>"),
        ("Subject", subject or _subject(actions)),
        ("Date", email.utils.formatdate(when, localtime=True)),
        ("Message-ID", f"<{secrets.token_hex(12)}.dsn@{mta}>"),
        ("Auto-Submitted", "auto-replied"),
        ("MIME-Version", "1.0"),
        (
            "Content-Type",
            f'multipart/report; report-type=delivery-status;\r\n\tboundary="{mark}"',
        ),
    ]
    out = bytearray()
    for name, value in head:
        out += f"{name}: {value}\r\n".encode()
    out += b"\r\nThis is a MIME-encapsulated message.\r\n\r\n"

    # 1. for people
    text = _human_text(mta, recipients)
    out += f"--{mark}\r\n".encode()
    out += b"Content-Description: Notification\r\n"
    if text.isascii():
        out += b"Content-Type: text/plain; charset=us-ascii\r\n\r\n" + text.encode()
    else:
        encoded = binascii.b2a_qp(text.encode(), istext=True)
        out += b"Content-Type: text/plain; charset=utf-8\r\n"
        out += b"Content-Transfer-Encoding: quoted-printable\r\n\r\n" + encoded
    out += b"\r\n"

    # 2. for programs
    status_type = "message/global-delivery-status" if global_status else "message/delivery-status"
    out += f"--{mark}\r\nContent-Description: Delivery report\r\n".encode()
    out += f"Content-Type: {status_type}\r\n\r\n".encode()
    out += _status_fields(mta, recipients, envid, arrival, utf8=global_status)

    # 3. the original
    out += f"--{mark}\r\n".encode()
    if full:
        ctype = "message/global" if global_headers else "message/rfc822"
        out += f"Content-Description: Undelivered message\r\nContent-Type: {ctype}\r\n".encode()
        if not original.isascii():
            out += b"Content-Transfer-Encoding: 8bit\r\n"
    else:
        ctype = "message/global-headers" if global_headers else "text/rfc822-headers"
        out += f"Content-Description: Message headers\r\nContent-Type: {ctype}\r\n".encode()
        if global_headers:
            out += b"Content-Transfer-Encoding: 8bit\r\n"
    out += b"\r\n" + original
    if original and not original.endswith(b"\r\n"):
        out += b"\r\n"
    out += f"--{mark}--\r\n".encode()
    return bytes(out)


# -- pieces ---------------------------------------------------------------------------------


def _boundary(original: bytes) -> str:
    while True:
        mark = f"=_dsn_{secrets.token_hex(12)}"
        if mark.encode() not in original:
            return mark


def _subject(actions: set[str]) -> str:
    if "failed" in actions:
        return "Undelivered Mail Returned to Sender"
    if "delayed" in actions:
        return "Delayed Mail (still being retried)"
    return "Successful Mail Delivery Report"


def _human_text(mta: str, recipients: Sequence[DsnRecipient]) -> str:
    lines = [f"This is the mail system at host {mta}.", ""]
    groups: list[tuple[str, list[DsnRecipient]]] = [
        (
            "Your message could not be delivered to the following recipients. "
            "This is a permanent error; the message will not be retried.",
            [r for r in recipients if r.action == "failed"],
        ),
        (
            "Your message could not be delivered yet to the following recipients. "
            "It is still in the queue and will be retried; you need not send it again.",
            [r for r in recipients if r.action == "delayed"],
        ),
        (
            "Your message was delivered to the following recipients.",
            [r for r in recipients if r.action in ("delivered", "expanded")],
        ),
        (
            "Your message was passed on to the following recipients' mail servers, which do "
            "not send delivery reports; no further notice will come from them.",
            [r for r in recipients if r.action == "relayed"],
        ),
    ]
    for intro, members in groups:
        if not members:
            continue
        lines += [*_wrap(intro), ""]
        for r in members:
            line = f"<{r.address}>"
            if r.diagnostic:
                line += ": " + _diagnostic_text(r.diagnostic)
            if r.remote_mta:
                line += f" (at {_clean(_untyped(r.remote_mta))})"
            if r.will_retry_until is not None:
                line += f" [retried until {email.utils.formatdate(r.will_retry_until)}]"
            lines += _wrap(line, indent="    ")
        lines.append("")
    return "\r\n".join(lines) + "\r\n"


def _status_fields(
    mta: str,
    recipients: Sequence[DsnRecipient],
    envid: str | None,
    arrival: float | None,
    *,
    utf8: bool,
) -> bytes:
    out: list[str] = []
    if envid:
        out += _field("Original-Envelope-Id", _clean_ascii(envid))
    out += _field("Reporting-MTA", f"dns; {mta}")
    if arrival is not None:
        out += _field("Arrival-Date", email.utils.formatdate(arrival, localtime=True))
    for r in recipients:
        out.append("")
        if r.orcpt and _TYPED_RE.match(r.orcpt):
            out += _field("Original-Recipient", _address_value(r.orcpt, utf8))
        final = r.final_recipient or f"rfc822;{r.address}"
        out += _field("Final-Recipient", _address_value(final, utf8))
        out += _field("Action", r.action)
        out += _field("Status", r.status)
        if r.remote_mta:
            mta_value = r.remote_mta if _TYPED_RE.match(r.remote_mta) else f"dns; {r.remote_mta}"
            out += _field("Remote-MTA", _clean_ascii(mta_value))
        if r.diagnostic:
            diag = _clean_ascii(r.diagnostic[:MAX_DIAGNOSTIC])
            if not _TYPED_RE.match(diag):
                diag = f"smtp; {diag}"
            out += _field("Diagnostic-Code", diag)
        if r.last_attempt is not None:
            out += _field("Last-Attempt-Date", email.utils.formatdate(r.last_attempt, True))
        if r.will_retry_until is not None:
            out += _field("Will-Retry-Until", email.utils.formatdate(r.will_retry_until, True))
    return ("\r\n".join(out) + "\r\n\r\n").encode("utf-8")


def _address_value(value: str, utf8: bool) -> str:
    """``type;address`` → ``type; address``; non-ASCII addresses use the RFC 6533 ``utf-8``
    type (only inside message/global-delivery-status, where raw UTF-8 is allowed)."""
    kind, _, address = value.partition(";")
    address = _clean(address.strip())
    if not address.isascii() and utf8:
        return f"utf-8; {address}"
    return f"{kind.strip()}; {_clean_ascii(address)}"


def _field(name: str, value: str) -> list[str]:
    """One header-style field, folded at spaces so lines stay short (RFC 5322 §2.2.3)."""
    words = [w for w in value.split(" ") if w]
    lines: list[str] = []
    current = f"{name}:"
    for word in words:
        while len(word) > 900:  # an unbreakable run: split it hard (never over 998 octets)
            lines.append(current)
            current, word = f" {word[:900]}", word[900:]
        if len(current) + 1 + len(word) > _FOLD_AT and current.strip() != f"{name}:":
            lines.append(current)
            current = " " + word
        else:
            current += " " + word
    lines.append(current)
    return ["\r\n".join(lines)]


def _wrap(text: str, indent: str = "") -> list[str]:
    lines: list[str] = []
    current = indent
    words = [w[i : i + 900] for w in text.split(" ") for i in range(0, max(len(w), 1), 900)]
    for word in words:
        if len(current) + len(word) + 1 > _FOLD_AT and current.strip():
            lines.append(current.rstrip())
            current = indent + "  "
        current += word + " "
    lines.append(current.rstrip())
    return lines


def _diagnostic_text(diagnostic: str) -> str:
    return _clean(_untyped(diagnostic[:MAX_DIAGNOSTIC]))


def _untyped(value: str) -> str:
    match = _TYPED_RE.match(value)
    return value[match.end() :].strip() if match else value


def _clean(text: str) -> str:
    return _CONTROL_RE.sub(" ", text)


def _clean_ascii(text: str) -> str:
    return "".join(c if " " <= c <= "~" else "?" for c in _clean(text))
