"""Address lists (RFC 5322 §3.4, with the §4.4 obsolete forms) parsed for IMAP ENVELOPE.

Grammar (RFC 5322 §3.4):

    address-list = (address *("," address)) / obs-addr-list
    address      = mailbox / group
    mailbox      = name-addr / addr-spec
    name-addr    = [display-name] angle-addr
    angle-addr   = [CFWS] "<" addr-spec ">" [CFWS] / obs-angle-addr
    obs-angle-addr = [CFWS] "<" obs-route addr-spec ">" [CFWS]
    obs-route    = obs-domain-list ":"            ; "@a,@b:" — IMAP's addr-adl
    group        = display-name ":" [group-list] ";" [CFWS]
    addr-spec    = local-part "@" domain
    obs-addr-list = *([CFWS] ",") address *("," [address / CFWS])

Hand-written because mail in the wild breaks every rule: unterminated quotes and comments,
missing domains, stray ``;``. The parser never raises; what it cannot place becomes Dovecot's
placeholders ``MISSING_MAILBOX`` / ``MISSING_DOMAIN`` so a broken address is never mistaken for
IMAP group syntax (a NIL host means "group"). A phrase-less address with a trailing comment
(``a@b (Name)``) takes the comment as its name, as Dovecot does.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from letterbird.mime.headers import decode_words

__all__ = ["MISSING_DOMAIN", "MISSING_MAILBOX", "Address", "display_addresses", "parse_addresses"]

MISSING_MAILBOX = "MISSING_MAILBOX"
MISSING_DOMAIN = "MISSING_DOMAIN"

_SPECIALS = "<>@,;:."
_DELIMS = ' \t\r\n()"[' + _SPECIALS


@dataclass(frozen=True, slots=True)
class Address:
    """One RFC 3501 ``address``: ``(addr-name addr-adl addr-mailbox addr-host)``.

    Group syntax (RFC 3501 §7.4.2): a group start is ``Address(None, None, name, None)`` and its
    end ``Address(None, None, None, None)``. Values are raw: RFC 2047 words are not decoded.
    """

    name: str | None
    adl: str | None
    mailbox: str | None
    host: str | None

    @property
    def is_group_start(self) -> bool:
        return self.host is None and self.mailbox is not None

    @property
    def is_group_end(self) -> bool:
        return self.host is None and self.mailbox is None


@dataclass(slots=True)
class _Token:
    kind: str  # "atom", "quoted", "literal", "comment" or one of _SPECIALS
    text: str
    space_before: bool


def _tokenize(value: str) -> list[_Token]:
    tokens: list[_Token] = []
    i = 0
    n = len(value)
    space = False
    while i < n:
        c = value[i]
        if c in " \t\r\n":
            space = True
            i += 1
            continue
        if c == "(":
            text, i = _delimited(value, i, "(", ")")
            tokens.append(_Token("comment", text, True))
            space = True
            continue
        if c == '"':
            text, i = _delimited(value, i, '"', '"')
            tokens.append(_Token("quoted", text, space))
        elif c == "[":
            j = value.find("]", i)
            j = n if j < 0 else j + 1
            tokens.append(_Token("literal", value[i:j], space))
            i = j
        elif c in _SPECIALS:
            tokens.append(_Token(c, c, space))
            i += 1
        else:
            j = i + 1
            while j < n and value[j] not in _DELIMS:
                j += 1
            tokens.append(_Token("atom", value[i:j], space))
            i = j
        space = False
    return tokens


def _delimited(value: str, i: int, open_: str, close: str) -> tuple[str, int]:
    """Content of a quoted-string or (nested) comment starting at ``value[i] == open_``."""
    out: list[str] = []
    depth = 1
    n = len(value)
    i += 1
    while i < n:
        c = value[i]
        if c == "\\" and i + 1 < n:
            out.append(value[i + 1])
            i += 2
            continue
        if c == close and depth == 1:
            return "".join(out), i + 1
        if open_ != close and c == open_:
            depth += 1
        elif open_ != close and c == close:
            depth -= 1
        out.append(c)
        i += 1
    return "".join(out), n


def _phrase(tokens: list[_Token]) -> str | None:
    """A display-name: words joined as written (one space where there was white space)."""
    out: list[str] = []
    for t in tokens:
        if t.kind == "comment":
            continue
        if out and t.space_before:
            out.append(" ")
        out.append(t.text)
    text = "".join(out).strip()
    return text or None


def _joined(tokens: list[_Token]) -> str | None:
    """A local-part or domain: tokens concatenated, comments and white space dropped."""
    text = "".join(t.text for t in tokens if t.kind != "comment")
    return text or None


def _mailbox(tokens: list[_Token]) -> Address | None:
    """One mailbox from the tokens of one list element (no top-level "," left in it)."""
    # A stray ":" outside angle brackets (a nested group, an un-bracketed route): drop what
    # comes before it.
    depth = 0
    for i in range(len(tokens) - 1, -1, -1):
        kind = tokens[i].kind
        if kind == ">":
            depth += 1
        elif kind == "<":
            depth -= 1
        elif kind == ":" and depth <= 0:
            tokens = tokens[i + 1 :]
            break
    words = [t for t in tokens if t.kind != "comment"]
    if not words:
        return None
    kinds = [t.kind for t in words]
    if "<" in kinds:
        lt = kinds.index("<")
        name = _phrase(tokens[: tokens.index(words[lt])])
        inner = words[lt + 1 :]
        if ">" in [t.kind for t in inner]:
            inner = inner[: [t.kind for t in inner].index(">")]
        adl: str | None = None
        if inner and inner[0].kind == "@" and ":" in [t.kind for t in inner]:
            colon = [t.kind for t in inner].index(":")
            adl = _joined(inner[:colon])
            inner = inner[colon + 1 :]
        local, domain = _split_addr_spec(inner)
        return Address(name, adl, local, domain)
    if "@" in kinds:
        local, domain = _split_addr_spec(words)
        comments = [t.text for t in tokens if t.kind == "comment"]
        name = (comments[-1].strip() or None) if comments else None
        return Address(name, None, local, domain)
    # No "@" and no "<": one word is a bare local part, several words are a lone display name.
    if all(t.kind in ("atom", ".") for t in words) and not any(t.space_before for t in words[1:]):
        return Address(None, None, _joined(words), None)
    return Address(_phrase(tokens), None, None, None)


def _split_addr_spec(tokens: list[_Token]) -> tuple[str | None, str | None]:
    kinds = [t.kind for t in tokens]
    if "@" not in kinds:
        return _joined(tokens), None
    at = kinds.index("@")
    return _joined(tokens[:at]), _joined(tokens[at + 1 :])


def _finish(addr: Address) -> Address:
    """Fill the placeholders that keep a broken mailbox from looking like group syntax."""
    return Address(
        addr.name, addr.adl, addr.mailbox or MISSING_MAILBOX, addr.host or MISSING_DOMAIN
    )


# The common shapes of a one-address value, matched at C speed before the tokenizer runs:
# ``addr-spec``, ``<addr-spec>``, ``phrase <addr-spec>`` and ``"quoted" <addr-spec>`` with no
# comments, groups, routes, domain literals or escapes. ``_ATEXT`` is exactly what the tokenizer
# treats as atom characters, plus ".", so the tokenizer would give the same local part and
# domain (its tokens concatenated) and the same phrase (words joined by one space).
_ATEXT = r'[^ \t\r\n()"\[<>@,;:]+'
_SIMPLE = re.compile(
    rf"[ \t]*(?:"
    rf'(?:"(?P<quoted>[^"\\\r\n]*)"|(?P<phrase>{_ATEXT}(?:[ \t]+{_ATEXT})*))?'
    rf"[ \t]*<(?P<local>{_ATEXT})@(?P<domain>{_ATEXT})>"
    rf"|(?P<bare_local>{_ATEXT})@(?P<bare_domain>{_ATEXT})"
    rf")[ \t]*"
)
_WS_RUN = re.compile(r"[ \t]+")


def _simple(value: str) -> Address | None:
    """The one address of a simple value (see ``_SIMPLE``), or None to use the tokenizer."""
    m = _SIMPLE.fullmatch(value)
    if m is None:
        return None
    local = m.group("local")
    if local is None:
        return Address(None, None, m.group("bare_local"), m.group("bare_domain"))
    quoted = m.group("quoted")
    if quoted is not None:
        name = quoted.strip() or None
    else:
        phrase = m.group("phrase")
        name = (_WS_RUN.sub(" ", phrase).strip() or None) if phrase is not None else None
    return Address(name, None, local, m.group("domain"))


def parse_addresses(value: str, limit: int = 1000) -> list[Address]:
    """Parse one address-list header value into IMAP envelope addresses.

    Stops after ``limit`` entries (plus the group end that keeps a cut group balanced).
    """
    if limit > 0:
        simple = _simple(value)
        if simple is not None:
            return [simple]
    tokens = _tokenize(value)
    out: list[Address] = []
    i = 0
    n = len(tokens)
    in_group = False
    while i < n and len(out) < limit:
        # One element: up to a top-level "," or ";" (or a group's ":").
        j = i
        angle = False
        addressy = False  # after a "<" or "@", a ":" no longer starts a group
        group = False
        while j < n:
            kind = tokens[j].kind
            if kind == "<":
                angle = addressy = True
            elif kind == ">":
                angle = False
            elif kind == "@":
                addressy = True
            elif not angle and kind in (",", ";"):
                break
            elif kind == ":" and not (angle or addressy or in_group):
                group = True
                break
            j += 1
        if group:
            out.append(Address(None, None, _phrase(tokens[i:j]) or "", None))
            in_group = True
            i = j + 1
            continue
        addr = _mailbox(tokens[i:j])
        if addr is not None:
            out.append(_finish(addr))
        if j < n and tokens[j].kind == ";" and in_group:
            out.append(Address(None, None, None, None))
            in_group = False
        i = j + 1
    if in_group:  # unterminated group (or cut at the limit): keep the list balanced
        out.append(Address(None, None, None, None))
    return out


def display_addresses(addresses: list[Address]) -> str:
    """``Name <mailbox@host>, ...`` for display: names decoded, group markers left out."""
    shown: list[str] = []
    for a in addresses:
        if a.host is None:  # group start or end
            continue
        spec = "" if a.mailbox == MISSING_MAILBOX else a.mailbox or ""
        if a.host != MISSING_DOMAIN:
            spec = f"{spec}@{a.host}"
        name = decode_words(a.name) if a.name else ""
        if name and spec:
            shown.append(f"{name} <{spec}>")
        else:
            shown.append(name or spec)
    return ", ".join(s for s in shown if s)
