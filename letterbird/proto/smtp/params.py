"""ESMTP parameters of ``MAIL FROM`` and ``RCPT TO`` (pure parsing).

RFC 5321 §4.1.2 (extended by RFC 6531 §3.3 for esmtp-value)::

    Mail-parameters  = esmtp-param *(SP esmtp-param)
    Rcpt-parameters  = esmtp-param *(SP esmtp-param)
    esmtp-param    = esmtp-keyword ["=" esmtp-value]
    esmtp-keyword  = (ALPHA / DIGIT) *(ALPHA / DIGIT / "-")
    esmtp-value    = 1*(%d33-60 / %d62-126)
    esmtp-value    =/ UTF8-non-ascii                       ; RFC 6531

Parameters understood on MAIL:

* ``SIZE=n`` (RFC 1870): ``size-value ::= 1*20DIGIT``; over the server limit → ``552 5.3.4``.
* ``BODY=7BIT / 8BITMIME`` (RFC 6152); ``BINARYMIME`` (RFC 3030) is not offered → ``555``.
* ``SMTPUTF8`` (RFC 6531 §3.4), no value.
* ``AUTH=xtext`` (RFC 4954 §5): accepted and ignored.
* with DSN enabled (RFC 3461 §4.3, §4.4): ``RET=FULL / HDRS``, ``ENVID=xtext`` (≤ 100 chars).

Parameters understood on RCPT (only with DSN enabled, RFC 3461 §4.1, §4.2)::

    notify-esmtp-value  = "NEVER" / 1#notify-list-element
    notify-list-element = "SUCCESS" / "FAILURE" / "DELAY"
    orcpt-parameter = "ORCPT=" original-recipient-address
    original-recipient-address = addr-type ";" xtext
    addr-type = atom

xtext (RFC 3461 §4)::

    xtext = *( xchar / hexchar )
    xchar = any ASCII CHAR between "!" (33) and "~" (126) inclusive, except for "+" and "=".
    hexchar = ASCII "+" immediately followed by two upper case hexadecimal digits

Unknown parameters, or DSN parameters while DSN is disabled, give ``555 5.5.4``; malformed or
repeated ones ``501 5.5.4``. Errors are raised as :class:`ParamError` carrying the reply.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from . import replies
from .replies import Reply

__all__ = [
    "MailParams",
    "OriginalRecipient",
    "ParamError",
    "RcptParams",
    "decode_xtext",
    "parse_esmtp_params",
    "parse_mail_params",
    "parse_rcpt_params",
]

#: RFC 3461 §4.4: "The ENVID MUST consist of printable (graphic and white space) characters
#: from the US-ASCII repertoire" and is at most 100 characters long.
MAX_ENVID_LENGTH = 100
#: RFC 3461 §4.2: "the ORCPT parameter MUST NOT exceed 500 characters".
MAX_ORCPT_LENGTH = 500

# esmtp-keyword = (ALPHA / DIGIT) *(ALPHA / DIGIT / "-")
_KEYWORD_RE = re.compile("[A-Za-z0-9][A-Za-z0-9-]*")
# esmtp-value = 1*(%d33-60 / %d62-126) =/ UTF8-non-ascii
_VALUE_RE = re.compile("[\\x21-\\x3c\\x3e-\\x7e\\u0080-\\U0010ffff]+")
# size-value ::= 1*20DIGIT
_SIZE_RE = re.compile("[0-9]{1,20}")
# xtext = *( xchar / hexchar ) ; xchar = %d33-42 / %d44-60 / %d62-126 ; hexchar = "+" 2HEXDIG(upper)
_XTEXT_RE = re.compile("(?:[\\x21-\\x2a\\x2c-\\x3c\\x3e-\\x7e]|\\+[0-9A-F]{2})*")
_HEXCHAR_RE = re.compile("\\+([0-9A-F]{2})")
# addr-type = atom (RFC 5322 atext)
_ATOM_RE = re.compile("[A-Za-z0-9!#$%&'*+\\-/=?^_`{|}~]+")

_NOTIFY_LIST = frozenset({"SUCCESS", "FAILURE", "DELAY"})


class ParamError(Exception):
    """A parameter was refused; ``reply`` is what the server answers."""

    def __init__(self, reply: Reply) -> None:
        super().__init__(reply.text)
        self.reply = reply


@dataclass(frozen=True, slots=True)
class MailParams:
    """The understood parameters of one ``MAIL FROM`` command."""

    size: int | None = None
    body: str | None = None  # "7BIT" or "8BITMIME"
    smtputf8: bool = False
    ret: str | None = None  # "FULL" or "HDRS" (DSN)
    envid: str | None = None  # decoded xtext (DSN)


@dataclass(frozen=True, slots=True)
class OriginalRecipient:
    """RFC 3461 ORCPT: the address type (e.g. ``rfc822``) and the decoded address."""

    addr_type: str
    address: str


@dataclass(frozen=True, slots=True)
class RcptParams:
    """The understood parameters of one ``RCPT TO`` command."""

    notify: tuple[str, ...] | None = None  # ("NEVER",) or a subset of SUCCESS/FAILURE/DELAY
    orcpt: OriginalRecipient | None = None


def decode_xtext(text: str) -> str:
    """Decode RFC 3461 xtext; raises :class:`ValueError` when ``text`` is not xtext."""
    if _XTEXT_RE.fullmatch(text) is None:
        raise ValueError("not xtext")
    raw = _HEXCHAR_RE.sub(lambda m: chr(int(m.group(1), 16)), text)
    return raw


def parse_esmtp_params(text: str) -> list[tuple[str, str | None]]:
    """Split parameter text into ``(KEYWORD, value-or-None)`` pairs, keywords upper-cased.

    Several spaces between parameters are tolerated. Raises :class:`ParamError` (``501``) for
    malformed or repeated parameters.
    """
    result: list[tuple[str, str | None]] = []
    seen: set[str] = set()
    for item in text.split(" "):
        if not item:
            continue
        keyword, eq, value = item.partition("=")
        if _KEYWORD_RE.fullmatch(keyword) is None:
            raise ParamError(replies.BAD_PARAMETER)
        if eq and _VALUE_RE.fullmatch(value) is None:
            raise ParamError(replies.BAD_PARAMETER)
        keyword = keyword.upper()
        if keyword in seen:
            raise ParamError(replies.BAD_PARAMETER.with_text(f"Duplicate parameter {keyword}"))
        seen.add(keyword)
        result.append((keyword, value if eq else None))
    return result


def _require_value(keyword: str, value: str | None) -> str:
    if value is None:
        raise ParamError(replies.BAD_PARAMETER.with_text(f"{keyword} needs a value"))
    return value


def parse_mail_params(text: str, *, max_size: int, smtputf8: bool, dsn: bool) -> MailParams:
    """Parse ``Mail-parameters``; see the module docstring for what is understood."""
    size: int | None = None
    body: str | None = None
    utf8 = False
    ret: str | None = None
    envid: str | None = None
    for keyword, value in parse_esmtp_params(text):
        if keyword == "SIZE":
            value = _require_value(keyword, value)
            if _SIZE_RE.fullmatch(value) is None:
                raise ParamError(replies.BAD_PARAMETER.with_text("Bad SIZE value"))
            size = int(value)
            if size > max_size:
                raise ParamError(replies.MESSAGE_TOO_BIG)
        elif keyword == "BODY":
            value = _require_value(keyword, value).upper()
            if value not in ("7BIT", "8BITMIME"):
                raise ParamError(replies.UNKNOWN_PARAMETER.with_text(f"BODY={value} not supported"))
            body = value
        elif keyword == "SMTPUTF8" and smtputf8:
            if value is not None:
                raise ParamError(replies.BAD_PARAMETER.with_text("SMTPUTF8 takes no value"))
            utf8 = True
        elif keyword == "AUTH":
            # RFC 4954 §5: the server MAY ignore AUTH= when it does not trust the client.
            _require_value(keyword, value)
        elif keyword == "RET" and dsn:
            value = _require_value(keyword, value).upper()
            if value not in ("FULL", "HDRS"):
                raise ParamError(replies.BAD_PARAMETER.with_text("Bad RET value"))
            ret = value
        elif keyword == "ENVID" and dsn:
            try:
                envid = decode_xtext(_require_value(keyword, value))
            except ValueError:
                raise ParamError(replies.BAD_PARAMETER.with_text("Bad ENVID value")) from None
            if len(envid) > MAX_ENVID_LENGTH:
                raise ParamError(replies.BAD_PARAMETER.with_text("ENVID too long"))
        else:
            raise ParamError(replies.UNKNOWN_PARAMETER)
    return MailParams(size=size, body=body, smtputf8=utf8, ret=ret, envid=envid)


def parse_rcpt_params(text: str, *, dsn: bool) -> RcptParams:
    """Parse ``Rcpt-parameters``; only the DSN ones (when enabled) are understood."""
    notify: tuple[str, ...] | None = None
    orcpt: OriginalRecipient | None = None
    for keyword, value in parse_esmtp_params(text):
        if keyword == "NOTIFY" and dsn:
            items = tuple(v.upper() for v in _require_value(keyword, value).split(","))
            if items != ("NEVER",) and (
                not set(items) <= _NOTIFY_LIST or len(set(items)) != len(items)
            ):
                raise ParamError(replies.BAD_PARAMETER.with_text("Bad NOTIFY value"))
            notify = items
        elif keyword == "ORCPT" and dsn:
            value = _require_value(keyword, value)
            addr_type, semi, xtext = value.partition(";")
            if not semi or _ATOM_RE.fullmatch(addr_type) is None or len(value) > MAX_ORCPT_LENGTH:
                raise ParamError(replies.BAD_PARAMETER.with_text("Bad ORCPT value"))
            try:
                address = decode_xtext(xtext)
            except ValueError:
                raise ParamError(replies.BAD_PARAMETER.with_text("Bad ORCPT value")) from None
            orcpt = OriginalRecipient(addr_type, address)
        else:
            raise ParamError(replies.UNKNOWN_PARAMETER)
    return RcptParams(notify=notify, orcpt=orcpt)
