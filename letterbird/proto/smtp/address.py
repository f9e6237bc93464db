"""SMTP envelope addresses: pure parsing of ``MAIL FROM``/``RCPT TO`` paths.

Implements the path grammar of RFC 5321 §4.1.2 and §4.1.3, extended for internationalised
addresses by RFC 6531 §3.3. Hand-written (regexes beside the ABNF they encode) because the
stdlib ``email`` parsers implement RFC 5322 header syntax, which differs from SMTP's (no
comments or folding, source routes, address literals), and because the server needs to tell
"bad syntax" (``501``) apart from "UTF-8 without SMTPUTF8" (``553 5.6.7``, RFC 6531 §3.5).

RFC 5321 §4.1.2::

    Reverse-path   = Path / "<>"
    Forward-path   = Path
    Path           = "<" [ A-d-l ":" ] Mailbox ">"
    A-d-l          = At-domain *( "," At-domain )
                   ; Note that this form, the so-called "source
                   ; route", MUST BE accepted, SHOULD NOT be
                   ; generated, and SHOULD be ignored.
    At-domain      = "@" Domain
    Domain         = sub-domain *("." sub-domain)
    sub-domain     = Let-dig [Ldh-str]
    Let-dig        = ALPHA / DIGIT
    Ldh-str        = *( ALPHA / DIGIT / "-" ) Let-dig
    Mailbox        = Local-part "@" ( Domain / address-literal )
    Local-part     = Dot-string / Quoted-string
                   ; MAY be case-sensitive
    Dot-string     = Atom *("."  Atom)
    Atom           = 1*atext
    Quoted-string  = DQUOTE *QcontentSMTP DQUOTE
    QcontentSMTP   = qtextSMTP / quoted-pairSMTP
    quoted-pairSMTP  = %d92 %d32-126
    qtextSMTP      = %d32-33 / %d35-91 / %d93-126

    rcpt = "RCPT TO:" ( "<Postmaster@" Domain ">" / "<Postmaster>" /
                Forward-path ) [SP Rcpt-parameters] CRLF
                ; "Postmaster" is case-insensitive here

RFC 5321 §4.1.3::

    address-literal  = "[" ( IPv4-address-literal /
                     IPv6-address-literal /
                     General-address-literal ) "]"
    IPv4-address-literal  = Snum 3("."  Snum)
    IPv6-address-literal  = "IPv6:" IPv6-addr
    General-address-literal  = Standardized-tag ":" 1*dcontent
    Standardized-tag  = Ldh-str
    dcontent       = %d33-90 / %d94-126
    Snum           = 1*3DIGIT  ; representing a decimal integer value in the range 0-255

RFC 5322 §3.2.3 (used by Atom)::

    atext = ALPHA / DIGIT / "!" / "#" / "$" / "%" / "&" / "'" / "*" / "+" / "-" / "/" /
            "=" / "?" / "^" / "_" / "`" / "{" / "|" / "}" / "~"

RFC 6531 §3.3::

    sub-domain   =/  U-label
    atext        =/  UTF8-non-ascii
    qtextSMTP    =/  UTF8-non-ascii

Because the RFC 6531 rules only add non-ASCII alternatives, one grammar serves both cases:
addresses are first checked for non-ASCII characters (refused with
:class:`NonAsciiAddressError` unless ``utf8=True``), then parsed with the extended grammar.
U-labels are checked loosely (letters, marks and digits of any script, LDH shape); full
IDNA2008 validation is the domain layer's job. Addresses are returned as written: the local part
keeps its quotes and case, the domain its case and form.
"""

from __future__ import annotations

import ipaddress
import re
import unicodedata
from dataclasses import dataclass

__all__ = [
    "AddressError",
    "Mailbox",
    "NonAsciiAddressError",
    "is_address_literal",
    "is_domain",
    "parse_forward_path",
    "parse_mailbox",
    "parse_path",
    "parse_reverse_path",
    "split_path_argument",
]

#: RFC 5321 §4.5.3.1.2: "The maximum total length of a domain name or number is 255 octets."
MAX_DOMAIN_OCTETS = 255
#: RFC 1035 §2.3.4: labels are 63 octets or less.
MAX_LABEL_OCTETS = 63
#: RFC 5321 §4.5.3.1.3 allows 256 octets for a path; senders (SRS, VERP) exceed that, so the
#: parser is more tolerant and only refuses absurd lengths (the command line is bounded anyway).
MAX_PATH_OCTETS = 1024


class AddressError(ValueError):
    """The text is not a valid SMTP path or mailbox."""


class NonAsciiAddressError(AddressError):
    """The address has non-ASCII characters but SMTPUTF8 was not requested (RFC 6531 §3.5)."""


# UTF8-non-ascii (RFC 6531 §3.3): text reaches us decoded, so any code point above U+007F.
_NON_ASCII = "\u0080-\U0010ffff"
# atext (RFC 5322 §3.2.3) =/ UTF8-non-ascii (RFC 6531 §3.3)
_ATEXT = "A-Za-z0-9!#$%&'*+\\-/=?^_`{|}~" + _NON_ASCII
# Dot-string = Atom *("." Atom) ; Atom = 1*atext
_DOT_STRING_RE = re.compile(f"[{_ATEXT}]+(?:\\.[{_ATEXT}]+)*")
# Quoted-string = DQUOTE *QcontentSMTP DQUOTE ; QcontentSMTP = qtextSMTP / quoted-pairSMTP
# qtextSMTP = %d32-33 / %d35-91 / %d93-126 =/ UTF8-non-ascii ; quoted-pairSMTP = %d92 %d32-126
_QUOTED_STRING_RE = re.compile(
    f'"(?:[\\x20\\x21\\x23-\\x5b\\x5d-\\x7e{_NON_ASCII}]|\\\\[\\x20-\\x7e])*"'
)
# sub-domain = Let-dig [Ldh-str] ; Ldh-str = *( ALPHA / DIGIT / "-" ) Let-dig
_LDH_LABEL_RE = re.compile("[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?")
# A whole all-ASCII Domain in one match: LDH labels of 1..63 octets (MAX_LABEL_OCTETS) joined
# by dots; the same answer as checking each label with _LDH_LABEL_RE and its length.
_LDH_LABEL_63 = "[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_ASCII_DOMAIN_RE = re.compile(f"{_LDH_LABEL_63}(?:\\.{_LDH_LABEL_63})*")
# sub-domain =/ U-label (RFC 6531 §3.3): same LDH shape, letters/marks/digits of any script.
_U_LABEL_RE = re.compile(
    f"[A-Za-z0-9{_NON_ASCII}](?:[A-Za-z0-9{_NON_ASCII}-]*[A-Za-z0-9{_NON_ASCII}])?"
)
# IPv4-address-literal = Snum 3("." Snum) ; Snum = 1*3DIGIT (0-255)
_IPV4_RE = re.compile("([0-9]{1,3})\\.([0-9]{1,3})\\.([0-9]{1,3})\\.([0-9]{1,3})")
# General-address-literal = Standardized-tag ":" 1*dcontent ; dcontent = %d33-90 / %d94-126
_GENERAL_LITERAL_RE = re.compile("[A-Za-z0-9-]*[A-Za-z0-9]:[\\x21-\\x5a\\x5e-\\x7e]+")
# "IPv6:" in ABNF is a case-insensitive string.
_IPV6_TAG = "ipv6:"
_POSTMASTER = "postmaster"


@dataclass(frozen=True, slots=True)
class Mailbox:
    """An envelope mailbox exactly as written: ``local_part`` keeps quotes and case.

    ``domain`` is a domain name or an address literal (with its brackets), as written; it is
    empty only for the special recipient ``<Postmaster>`` (RFC 5321 §4.1.1.3).
    """

    local_part: str
    domain: str

    def __str__(self) -> str:
        return f"{self.local_part}@{self.domain}" if self.domain else self.local_part

    @property
    def unquoted_local_part(self) -> str:
        """The local part with its quotes and quoted-pairs resolved (for matching)."""
        lp = self.local_part
        if len(lp) >= 2 and lp[0] == '"' and lp[-1] == '"':
            return re.sub(r"\\(.)", r"\1", lp[1:-1])
        return lp

    @property
    def is_bare_postmaster(self) -> bool:
        """True for ``<Postmaster>`` without a domain (RFC 5321 §4.1.1.3)."""
        return not self.domain

    @property
    def is_address_literal(self) -> bool:
        return self.domain.startswith("[")

    @property
    def is_ascii(self) -> bool:
        return self.local_part.isascii() and self.domain.isascii()


def _label_ok(label: str) -> bool:
    if label.isascii():
        return len(label) <= MAX_LABEL_OCTETS and _LDH_LABEL_RE.fullmatch(label) is not None
    if _U_LABEL_RE.fullmatch(label) is None:
        return False
    for char in label:
        if not char.isascii() and unicodedata.category(char)[0] not in "LMN":
            return False
    return True


def is_domain(text: str) -> bool:
    """``Domain = sub-domain *("." sub-domain)`` with RFC 6531 U-labels allowed."""
    if text.isascii():  # the common case: one regex, no per-label work
        return len(text) <= MAX_DOMAIN_OCTETS and _ASCII_DOMAIN_RE.fullmatch(text) is not None
    if len(text.encode("utf-8", "surrogatepass")) > MAX_DOMAIN_OCTETS:
        return False
    return all(_label_ok(label) for label in text.split("."))


def is_address_literal(text: str) -> bool:
    """``address-literal`` (RFC 5321 §4.1.3), brackets included."""
    if len(text) < 3 or text[0] != "[" or text[-1] != "]":
        return False
    inner = text[1:-1]
    match = _IPV4_RE.fullmatch(inner)
    if match is not None:
        return all(int(part) <= 255 for part in match.groups())
    if inner[:5].lower() == _IPV6_TAG:
        addr = inner[5:]
        # IPv6-addr per RFC 5321 §4.1.3; no zone index ("%eth0") is part of that grammar.
        if not addr or "%" in addr or not addr.isascii():
            return False
        try:
            ipaddress.IPv6Address(addr)
        except ValueError:
            return False
        return True
    # A General-address-literal tag must be registered with IANA (none are, besides IPv6);
    # accept the syntax, the edge decides what to do with such a mailbox.
    return _GENERAL_LITERAL_RE.fullmatch(inner) is not None


def _check_ascii(text: str, utf8: bool) -> None:
    if not utf8 and not text.isascii():
        raise NonAsciiAddressError("non-ASCII address without SMTPUTF8")


def parse_mailbox(text: str, *, utf8: bool = False) -> Mailbox:
    """``Mailbox = Local-part "@" ( Domain / address-literal )``, without angle brackets."""
    _check_ascii(text, utf8)
    if text.startswith('"'):
        match = _QUOTED_STRING_RE.match(text)
        if match is None:
            raise AddressError("unterminated or invalid quoted local part")
        at = match.end()
        if at >= len(text) or text[at] != "@":
            raise AddressError("expected @ after the quoted local part")
    else:
        at = text.find("@")
        if at < 0:
            raise AddressError("missing @")
        if _DOT_STRING_RE.fullmatch(text, 0, at) is None:
            raise AddressError("invalid local part")
    local, domain = text[:at], text[at + 1 :]
    if not (is_domain(domain) or is_address_literal(domain)):
        raise AddressError("invalid domain")
    return Mailbox(local, domain)


def parse_path(text: str, *, utf8: bool = False) -> Mailbox:
    """``Path = "<" [ A-d-l ":" ] Mailbox ">"``; a source route is checked and dropped."""
    _check_ascii(text, utf8)
    if len(text) > MAX_PATH_OCTETS:
        raise AddressError("path too long")
    if len(text) < 2 or text[0] != "<" or text[-1] != ">":
        raise AddressError("a path must be enclosed in <>")
    inner = text[1:-1]
    if inner.startswith("@"):
        colon = inner.find(":")
        if colon < 0:
            raise AddressError("source route without ':'")
        for at_domain in inner[:colon].split(","):
            if not at_domain.startswith("@") or not is_domain(at_domain[1:]):
                raise AddressError("invalid source route")
        inner = inner[colon + 1 :]
    return parse_mailbox(inner, utf8=utf8)


def parse_reverse_path(text: str, *, utf8: bool = False) -> Mailbox | None:
    """``Reverse-path = Path / "<>"``; the null reverse-path gives ``None``."""
    if text == "<>":
        return None
    return parse_path(text, utf8=utf8)


def parse_forward_path(text: str, *, utf8: bool = False) -> Mailbox:
    """``Forward-path``, or the bare ``<Postmaster>`` (any case) of RFC 5321 §4.1.1.3."""
    if text[:1] == "<" and text[-1:] == ">" and text[1:-1].lower() == _POSTMASTER:
        return Mailbox(text[1:-1], "")
    return parse_path(text, utf8=utf8)


def split_path_argument(text: str) -> tuple[str, str]:
    """Split ``<path> [SP parameters]`` into the path (with brackets) and the parameter text.

    The closing ``>`` is found outside quoted strings, so a quoted local part may hold ``>``
    or spaces. Raises :class:`AddressError` when no complete ``<…>`` starts the text.
    """
    if not text.startswith("<"):
        raise AddressError("a path must start with <")
    in_quote = False
    index = 1
    end = len(text)
    while index < end:
        char = text[index]
        if in_quote:
            if char == "\\":
                index += 1
            elif char == '"':
                in_quote = False
        elif char == '"':
            in_quote = True
        elif char == ">":
            rest = text[index + 1 :]
            if rest and not rest.startswith(" "):
                raise AddressError("expected a space after the path")
            return text[: index + 1], rest.strip(" ")
        index += 1
    raise AddressError("unterminated path")
