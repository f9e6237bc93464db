"""The ``Authentication-Results:`` header field (RFC 8601): writing ours, removing forgeries,
and reading it back for later features (filters, the webmail's "verified sender" mark).

We write exactly one field per incoming message, naming our hostname as the authserv-id::

    Authentication-Results: mx.bob.test;
        dkim=pass header.d=alice.test header.s=lb1 header.a=rsa-sha256 header.b=QUJDREVGR0hJ;
        spf=pass smtp.mailfrom=alice@alice.test;
        dmarc=pass (p=reject dis=none) header.from=alice.test

RFC 8601 §5: a border MTA MUST remove (or rename) any existing field that claims its own
authserv-id, since only it can have written one; :func:`claims` finds them. Readers must trust
only fields with our authserv-id (§7.1), which is what :func:`read` does.

Values that come from the network (a HELO name, a sender, a ``d=``) are written as RFC 2045
tokens when they can be and as quoted-strings otherwise, with control characters removed, so no
input can fold, end or add a field.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from letterbird.auth.message import HeaderSection

__all__ = [
    "HEADER_NAME",
    "AuthResults",
    "MethodResult",
    "authserv_id",
    "claims",
    "format_header",
    "read",
    "verified_sender",
]

HEADER_NAME = b"Authentication-Results"

# RFC 2045 §5.1: token := 1*<any (US-ASCII) CHAR except SPACE, CTLs, or tspecials>
#                tspecials := "(" / ")" / "<" / ">" / "@" / "," / ";" / ":" / "\" / <">
#                             "/" / "[" / "]" / "?" / "="
_TOKEN_RE = re.compile(r"^[!#$%&'*+\-.0-9A-Z^_`a-z{|}~]+$")
# RFC 8601 §2.2: pvalue = [CFWS] ( value / [ [ local-part ] "@" ] domain-name ) [CFWS]
# (a dot-atom local part and a domain name: written bare; anything else is quoted)
_ADDRESS_RE = re.compile(
    r"^(?:[!#$%&'*+\-/=?^_`{|}~0-9A-Za-z]+(?:\.[!#$%&'*+\-/=?^_`{|}~0-9A-Za-z]+)*)?"
    r"@?[0-9A-Za-z](?:[0-9A-Za-z\-]*[0-9A-Za-z])?(?:\.[0-9A-Za-z](?:[0-9A-Za-z\-]*[0-9A-Za-z])?)*$"
)
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
# comment text: no parentheses or backslashes to balance or escape
_COMMENT_RE = re.compile(r"[\x00-\x1f\x7f()\\]")
#: Longest value written; longer ones are cut (a HELO name can be long; the field stays sane).
MAX_VALUE = 255


def _value(text: str) -> str:
    """A ``value`` (token or quoted-string) for ``text``, controls removed."""
    text = _CONTROL_RE.sub("", text)[:MAX_VALUE]
    if _TOKEN_RE.match(text):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _pvalue(text: str) -> str:
    text = _CONTROL_RE.sub("", text)[:MAX_VALUE]
    if _ADDRESS_RE.match(text):
        return text
    return _value(text)


def _comment(text: str) -> str:
    return _COMMENT_RE.sub("", text)[:MAX_VALUE].strip()


@dataclass(frozen=True, slots=True)
class MethodResult:
    """One resinfo: ``method=result (comment) reason="..." ptype.property=value ...``."""

    method: str  # dkim, spf, dmarc, ...
    result: str
    properties: tuple[tuple[str, str], ...] = ()  # ("header.d", "alice.test"), ...
    comment: str = ""
    reason: str = ""

    def format(self) -> str:
        parts = [f"{self.method}={self.result}"]
        if self.comment and _comment(self.comment):
            parts.append(f"({_comment(self.comment)})")
        if self.reason:
            parts.append(f"reason={_value(self.reason)}")
        for name, value in self.properties:
            if value:
                parts.append(f"{name}={_pvalue(value)}")
        return " ".join(parts)

    def get(self, name: str) -> str:
        """A property value ("" when absent)."""
        for key, value in self.properties:
            if key == name:
                return value
        return ""


def format_header(authserv: str, results: Sequence[MethodResult]) -> bytes:
    """The whole ``Authentication-Results:`` field, folded one resinfo per line, CRLF-ended.

    authres-payload = [CFWS] authserv-id [ CFWS authres-version ]
                      ( no-result / 1*resinfo ) [CFWS] CRLF
    no-result = [CFWS] ";" [CFWS] "none"
    """
    head = f"Authentication-Results: {_value(authserv)}"
    if not results:
        return f"{head}; none\r\n".encode()
    body = ";\r\n\t".join(r.format() for r in results)
    return f"{head};\r\n\t{body}\r\n".encode()


# -- reading ----------------------------------------------------------------------------------


def _skip_cfws(text: str, pos: int) -> int:
    """Past whitespace and (nested) comments (RFC 5322 §3.2.2 CFWS)."""
    depth = 0
    while pos < len(text):
        ch = text[pos]
        if depth:
            if ch == "\\":
                pos += 1
            elif ch == "(":
                depth += 1
            elif ch == ")":
                depth -= 1
        elif ch == "(":
            depth = 1
        elif not ch.isspace():
            break
        pos += 1
    return pos


def _read_value(text: str, pos: int) -> tuple[str, int]:
    """A token or quoted-string at ``pos`` (after CFWS)."""
    pos = _skip_cfws(text, pos)
    if pos < len(text) and text[pos] == '"':
        out: list[str] = []
        pos += 1
        while pos < len(text) and text[pos] != '"':
            if text[pos] == "\\" and pos + 1 < len(text):
                pos += 1
            out.append(text[pos])
            pos += 1
        return "".join(out), pos + 1
    start = pos
    while pos < len(text) and not text[pos].isspace() and text[pos] not in ';()="':
        pos += 1
    return text[start:pos], pos


def authserv_id(value: bytes) -> str:
    """The authserv-id of an ``Authentication-Results`` field body (lower case)."""
    text = value.decode("utf-8", "replace")
    ident, _ = _read_value(text, 0)
    return ident.lower()


def claims(value: bytes, hostname: str) -> bool:
    """Whether a field body claims to come from ``hostname`` (a forgery when we did not write
    it, RFC 8601 §5)."""
    return authserv_id(value) == hostname.lower().rstrip(".")


@dataclass(frozen=True, slots=True)
class AuthResults:
    """A parsed ``Authentication-Results`` field of ours."""

    authserv: str
    results: tuple[MethodResult, ...] = field(default_factory=tuple)

    def result(self, method: str) -> MethodResult | None:
        """The first result of ``method``."""
        for r in self.results:
            if r.method == method:
                return r
        return None

    @property
    def verified_sender(self) -> str | None:
        """The author domain when DMARC passed (the "verified sender" mark), else None."""
        dmarc = self.result("dmarc")
        if dmarc is not None and dmarc.result == "pass":
            return dmarc.get("header.from") or None
        return None


def _parse(text: str) -> AuthResults:
    ident, pos = _read_value(text, 0)
    out: list[MethodResult] = []
    for part in _split_resinfo(text[pos:]):
        mr = _parse_resinfo(part)
        if mr is not None:
            out.append(mr)
    return AuthResults(ident.lower(), tuple(out))


def _split_resinfo(text: str) -> list[str]:
    """Split at ``;`` outside comments and quoted strings."""
    parts: list[str] = []
    depth = 0
    quoted = False
    start = 0
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "\\" and (quoted or depth):
            i += 2
            continue
        if quoted:
            quoted = ch != '"'
        elif ch == '"' and not depth:
            quoted = True
        elif ch == "(":
            depth += 1
        elif ch == ")" and depth:
            depth -= 1
        elif ch == ";" and not depth:
            parts.append(text[start:i])
            start = i + 1
        i += 1
    parts.append(text[start:])
    return parts[1:]  # what precedes the first ";" is the version, if any


def _parse_resinfo(text: str) -> MethodResult | None:
    """resinfo = [CFWS] ";" methodspec [ CFWS reasonspec ] [ CFWS 1*propspec ]
    methodspec = [CFWS] method [CFWS] "=" [CFWS] result"""
    method, pos = _read_value(text, 0)
    pos = _skip_cfws(text, pos)
    if not method or pos >= len(text) or text[pos] != "=":
        return None
    result, pos = _read_value(text, pos + 1)
    props: list[tuple[str, str]] = []
    reason = ""
    while True:
        name, pos = _read_value(text, pos)
        if not name:
            break
        pos = _skip_cfws(text, pos)
        if pos >= len(text) or text[pos] != "=":
            break
        value, pos = _read_value(text, pos + 1)
        if name.lower() == "reason":
            reason = value
        else:
            props.append((name.lower(), value))
    return MethodResult(method.lower(), result.lower(), tuple(props), reason=reason)


def read(values: Iterable[bytes], hostname: str) -> AuthResults | None:
    """The first ``Authentication-Results`` field body among ``values`` that carries our
    authserv-id, parsed; None when there is none (RFC 8601 §7.1: trust only our own)."""
    for value in values:
        if claims(value, hostname):
            text = value.decode("utf-8", "replace").replace("\r\n", " ")
            return _parse(text)
    return None


def verified_sender(message_head: bytes, hostname: str) -> str | None:
    """The author domain that passed DMARC according to *our* ``Authentication-Results``
    field in ``message_head`` (the start of a stored message), else None: the webmail's
    "verified sender" mark. Fields claiming our name that we did not write were removed at
    reception, so the first one naming us is ours."""
    section = HeaderSection.parse(message_head)
    values = [f.value(message_head) for f in section.named(b"authentication-results")]
    parsed = read(values, hostname)
    return parsed.verified_sender if parsed is not None else None
