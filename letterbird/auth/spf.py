"""SPF (RFC 7208): may this client address send mail for this domain?

:func:`check_host` is the function of RFC 7208 §4; :func:`check_mail_from` and
:func:`check_helo` apply it to the two identities of §2.3/§2.4 (MAIL FROM, with
``postmaster@<HELO>`` for the null sender, and the HELO name). DNS comes in through a
:class:`~letterbird.auth.lookup.DnsLookup`, so the evaluation is pure apart from those awaited
questions, and tests drive it with a dictionary.

Written here rather than taken from pyspf, which is synchronous and calls deprecated dnspython
APIs (DESIGN.md, dependencies). What is implemented:

* record selection (§4.5): exactly one TXT record starting ``v=spf1``; none → ``none``, two or
  more → ``permerror``; a syntax error anywhere in the record → ``permerror`` before any
  mechanism is evaluated (§4.6);
* every mechanism (§5: all, include, a, mx, ptr, ip4, ip6, exists) with dual CIDR lengths, the
  ``redirect`` modifier (§6.1, ignored when the record has an ``all``), unknown modifiers
  (ignored), and macros (§7) with transformers, delimiters and URL escaping. ``exp=`` is
  checked for syntax but the explanation is not fetched (§6.2 allows that: we never quote it,
  since SPF alone never makes us refuse a message);
* the processing limits of §4.6.4: at most ``max_lookups`` (10) terms that cause DNS queries
  (include, a, mx, ptr, exists, redirect), at most ``max_void_lookups`` (2) lookups answered
  NXDOMAIN or empty, at most 10 MX names per ``mx`` and 10 PTR names per ``ptr``/``%{p}``;
  exceeding one is ``permerror``. A DNS failure is ``temperror``, as is running past the
  overall ``timeout`` (the caller's bound on the whole evaluation).

ABNF (RFC 7208 §12) is quoted beside the code that implements it.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

from letterbird.auth.lookup import DnsLookup, DnsPermError, DnsTempError
from letterbird.directory.addresses import InvalidAddress, normalise_domain

__all__ = [
    "DEFAULT_LIMITS",
    "SpfLimits",
    "SpfOutcome",
    "SpfResult",
    "SpfSyntaxError",
    "check_helo",
    "check_host",
    "check_mail_from",
    "parse_record",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class SpfResult(StrEnum):
    """The results of RFC 7208 §2.6 (also the A-R result keywords, RFC 8601 §2.7.2)."""

    NONE = "none"
    NEUTRAL = "neutral"
    PASS = "pass"
    FAIL = "fail"
    SOFTFAIL = "softfail"
    TEMPERROR = "temperror"
    PERMERROR = "permerror"


@dataclass(frozen=True, slots=True)
class SpfLimits:
    """RFC 7208 §4.6.4 processing limits (the RFC's values are the defaults)."""

    max_lookups: int = 10
    max_void_lookups: int = 2
    max_mx_names: int = 10
    max_ptr_names: int = 10


DEFAULT_LIMITS = SpfLimits()


@dataclass(frozen=True, slots=True)
class SpfOutcome:
    """The result of one check, with what was checked and a short reason for logs and the
    ``Authentication-Results`` comment."""

    result: SpfResult
    identity: Literal["mailfrom", "helo"]
    domain: str  # the domain whose policy was evaluated ("" when there was none to check)
    sender: str  # the <sender> of check_host: local@domain
    reason: str = ""
    lookups: int = 0


class SpfSyntaxError(ValueError):
    """The record is not valid RFC 7208 syntax (``permerror``)."""


# -- record syntax ----------------------------------------------------------------------------

# qualifier = "+" / "-" / "?" / "~"
_QUALIFIERS = {
    "+": SpfResult.PASS,
    "-": SpfResult.FAIL,
    "~": SpfResult.SOFTFAIL,
    "?": SpfResult.NEUTRAL,
}
# name = ALPHA *( ALPHA / DIGIT / "-" / "_" / "." )
_MODIFIER_RE = re.compile(r"^([A-Za-z][A-Za-z0-9\-_.]*)=(.*)$", re.DOTALL)
# mechanism names; a/mx/ptr take an optional ":" domain-spec, the others require one
_MECHANISM_RE = re.compile(r"^(all|include|a|mx|ptr|ip4|ip6|exists)(?=$|[:/])(.*)$", re.I | re.S)
# ip4-cidr-length  = "/" ("0" / %x31-39 0*1DIGIT) ; value range 0-32
# ip6-cidr-length  = "/" ("0" / %x31-39 0*2DIGIT) ; value range 0-128
# dual-cidr-length = [ ip4-cidr-length ] [ "/" ip6-cidr-length ]
_DUAL_CIDR_RE = re.compile(r"(?:/(0|[1-9][0-9]?))?(?://(0|[1-9][0-9]{0,2}))?$")
_CIDR4_RE = re.compile(r"/(0|[1-9][0-9]?)$")
_CIDR6_RE = re.compile(r"/(0|[1-9][0-9]{0,2})$")
# ip4-network = qnum "." qnum "." qnum "." qnum ; qnum = 0-255 without leading zeros
_QNUM = r"(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9][0-9]|[0-9])"
_IP4_RE = re.compile(rf"^{_QNUM}\.{_QNUM}\.{_QNUM}\.{_QNUM}$")
# macro-expand = ( "%{" macro-letter transformers *delimiter "}" ) / "%%" / "%_" / "%-"
# macro-letter = "s" / "l" / "o" / "d" / "i" / "p" / "h" / "c" / "r" / "t" / "v"
# transformers = *DIGIT [ "r" ] ; delimiter = "." / "-" / "+" / "," / "/" / "_" / "="
_MACRO_RE = re.compile(r"%\{([slodiphcrtvSLODIPHCRTV])([0-9]*)([rR]?)([.\-+,/_=]*)\}|%%|%_|%-")
# macro-literal = %x21-24 / %x26-7E ; visible characters except "%"
_LITERAL_RE = re.compile(r"[\x21-\x24\x26-\x7e]+")
# toplabel = ( *alphanum ALPHA *alphanum ) / ( 1*alphanum "-" *( alphanum / "-" ) alphanum )
_DOMAIN_END_RE = re.compile(
    r"\.(?:[a-z0-9]*[a-z][a-z0-9]*|[a-z0-9]+-[a-z0-9\-]*[a-z0-9])\.?$", re.IGNORECASE
)
#: Macro letters allowed only in explanation text (§7.2).
_EXP_ONLY = frozenset("crt")
#: RFC 7208 §4.8: a domain-spec longer than this after expansion loses labels on the left.
_MAX_DOMAIN = 253


@dataclass(frozen=True, slots=True)
class _Macro:
    letter: str  # lower case
    digits: int | None
    reverse: bool
    delimiters: str
    escape: bool  # an upper-case letter: URL-escape the result (§7.3)


_MacroPiece = str | _Macro


@dataclass(frozen=True, slots=True)
class _DomainSpec:
    pieces: tuple[_MacroPiece, ...]


@dataclass(frozen=True, slots=True)
class Directive:
    """One ``[qualifier] mechanism`` term of a record."""

    qualifier: SpfResult
    mechanism: str  # lower case
    domain: _DomainSpec | None = None
    network: ipaddress.IPv4Network | ipaddress.IPv6Network | None = None
    cidr4: int = 32
    cidr6: int = 128


@dataclass(frozen=True, slots=True)
class Record:
    """A parsed SPF record: its directives in order and the two modifiers we act on."""

    directives: tuple[Directive, ...]
    redirect: _DomainSpec | None = None
    explanation: _DomainSpec | None = None

    @property
    def has_all(self) -> bool:
        return any(d.mechanism == "all" for d in self.directives)


def _parse_macro_string(text: str, *, exp: bool = False) -> tuple[_MacroPiece, ...]:
    """macro-string = *( macro-expand / macro-literal )"""
    pieces: list[_MacroPiece] = []
    pos = 0
    while pos < len(text):
        m = _MACRO_RE.match(text, pos)
        if m:
            whole = m.group(0)
            if whole == "%%":
                pieces.append("%")
            elif whole == "%_":
                pieces.append(" ")
            elif whole == "%-":
                pieces.append("%20")
            else:
                letter = m.group(1)
                if letter.lower() in _EXP_ONLY and not exp:
                    raise SpfSyntaxError(f"macro %{{{letter}}} is allowed only in explanations")
                digits = int(m.group(2)) if m.group(2) else None
                if digits == 0:
                    raise SpfSyntaxError("a macro's digit transformer must not be 0")
                pieces.append(
                    _Macro(
                        letter.lower(),
                        digits,
                        bool(m.group(3)),
                        m.group(4) or ".",
                        letter.isupper(),
                    )
                )
            pos = m.end()
            continue
        lit = _LITERAL_RE.match(text, pos)
        if not lit:
            raise SpfSyntaxError(f"bad macro or character at {text[pos : pos + 10]!r}")
        pieces.append(lit.group(0))
        pos = lit.end()
    return tuple(pieces)


def _parse_domain_spec(text: str) -> _DomainSpec:
    """domain-spec = macro-string domain-end
    domain-end  = ( "." toplabel [ "." ] ) / macro-expand"""
    if not text:
        raise SpfSyntaxError("empty domain-spec")
    pieces = _parse_macro_string(text)
    last = pieces[-1]
    # A trailing "%%", "%_" or "%-" is a macro-expand in the grammar, but has become text here.
    ends_with_macro = isinstance(last, _Macro) or text.endswith(("%%", "%_", "%-"))
    if not ends_with_macro:
        tail = ""
        for piece in reversed(pieces):
            if isinstance(piece, _Macro):
                break
            tail = piece + tail
        if not _DOMAIN_END_RE.search(tail):
            raise SpfSyntaxError(f"{text!r} does not end in a top-level label")
    return _DomainSpec(pieces)


def _parse_directive(term: str) -> Directive:
    qualifier = SpfResult.PASS
    if term[0] in _QUALIFIERS:
        qualifier = _QUALIFIERS[term[0]]
        term = term[1:]
    m = _MECHANISM_RE.match(term)
    if not m:
        raise SpfSyntaxError(f"unknown mechanism {term!r}")
    name, rest = m.group(1).lower(), m.group(2)
    if name == "all":
        # all = "all"
        if rest:
            raise SpfSyntaxError(f"'all' takes no argument: {term!r}")
        return Directive(qualifier, name)
    if name in ("include", "exists"):
        # include = "include" ":" domain-spec ; exists = "exists" ":" domain-spec
        if not rest.startswith(":"):
            raise SpfSyntaxError(f"{name} needs ':domain'")
        return Directive(qualifier, name, _parse_domain_spec(rest[1:]))
    if name in ("ip4", "ip6"):
        return _parse_ip(qualifier, name, rest)
    if name == "ptr":
        # ptr = "ptr" [ ":" domain-spec ]
        if rest and not rest.startswith(":"):
            raise SpfSyntaxError(f"bad ptr term {term!r}")
        return Directive(qualifier, name, _parse_domain_spec(rest[1:]) if rest else None)
    # a  = "a"  [ ":" domain-spec ] [ dual-cidr-length ]
    # mx = "mx" [ ":" domain-spec ] [ dual-cidr-length ]
    cidr = _DUAL_CIDR_RE.search(rest)
    assert cidr is not None  # every part is optional: it always matches (maybe empty)
    spec_text = rest[: cidr.start()]
    cidr4 = int(cidr.group(1)) if cidr.group(1) else 32
    cidr6 = int(cidr.group(2)) if cidr.group(2) else 128
    if cidr4 > 32 or cidr6 > 128:
        raise SpfSyntaxError(f"CIDR length out of range in {term!r}")
    domain = None
    if spec_text:
        if not spec_text.startswith(":"):
            raise SpfSyntaxError(f"bad {name} term {term!r}")
        domain = _parse_domain_spec(spec_text[1:])
    return Directive(qualifier, name, domain, cidr4=cidr4, cidr6=cidr6)


def _parse_ip(qualifier: SpfResult, name: str, rest: str) -> Directive:
    """ip4 = "ip4" ":" ip4-network [ ip4-cidr-length ]
    ip6 = "ip6" ":" ip6-network [ ip6-cidr-length ]"""
    if not rest.startswith(":"):
        raise SpfSyntaxError(f"{name} needs ':address'")
    text = rest[1:]
    pattern = _CIDR4_RE if name == "ip4" else _CIDR6_RE
    m = pattern.search(text)
    length = 32 if name == "ip4" else 128
    if m:
        length = int(m.group(1))
        text = text[: m.start()]
    elif "/" in text:
        raise SpfSyntaxError(f"bad CIDR length in {name}:{rest[1:]}")
    try:
        if name == "ip4":
            if not _IP4_RE.match(text) or length > 32:
                raise ValueError
            net: ipaddress.IPv4Network | ipaddress.IPv6Network = ipaddress.IPv4Network(
                f"{text}/{length}", strict=False
            )
        else:
            if length > 128 or "%" in text:
                raise ValueError
            net = ipaddress.IPv6Network(f"{text}/{length}", strict=False)
    except ValueError:
        raise SpfSyntaxError(f"bad {name} network {rest[1:]!r}") from None
    return Directive(qualifier, name, network=net)


def parse_record(text: str) -> Record:
    """Parse one SPF record (``v=spf1 ...``); raises SpfSyntaxError.

    record = version terms *SP ; version = "v=spf1" ; terms = *( 1*SP ( directive / modifier ) )
    """
    if not _is_spf(text):
        raise SpfSyntaxError("not an SPF record")
    directives: list[Directive] = []
    redirect: _DomainSpec | None = None
    explanation: _DomainSpec | None = None
    for term in text[6:].split(" "):
        if not term:
            continue  # 1*SP between terms, *SP at the end
        m = _MODIFIER_RE.match(term)
        if m and not _MECHANISM_RE.match(term):
            name, value = m.group(1).lower(), m.group(2)
            if name == "redirect":
                # redirect = "redirect" "=" domain-spec
                if redirect is not None:
                    raise SpfSyntaxError("more than one redirect modifier")
                redirect = _parse_domain_spec(value)
            elif name == "exp":
                # explanation = "exp" "=" domain-spec
                if explanation is not None:
                    raise SpfSyntaxError("more than one exp modifier")
                explanation = _parse_domain_spec(value)
            else:
                # unknown-modifier = name "=" macro-string: ignored, but must be valid
                _parse_macro_string(value, exp=True)
            continue
        directives.append(_parse_directive(term))
    return Record(tuple(directives), redirect, explanation)


def _is_spf(text: str) -> bool:
    """§4.5: the record starts with "v=spf1" (any case) followed by a space or its end."""
    return text[:6].lower() == "v=spf1" and (len(text) == 6 or text[6] == " ")


# -- evaluation -------------------------------------------------------------------------------


class _Abort(Exception):
    def __init__(self, result: SpfResult, reason: str) -> None:
        super().__init__(reason)
        self.result = result
        self.reason = reason


def _valid_domain(domain: str, *, multi_label: bool = True) -> bool:
    """§4.3: a multi-label name with labels of 1 to 63 octets (after a final dot is removed).
    Names found by expanding a domain-spec may have one label."""
    if not domain or len(domain) > _MAX_DOMAIN:
        return False
    labels = domain.split(".")
    return len(labels) >= (2 if multi_label else 1) and all(0 < len(x) <= 63 for x in labels)


def _client_ip(ip: str) -> IPAddress:
    addr = ipaddress.ip_address(ip)
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped  # ::ffff:192.0.2.1 is checked as IPv4 (§5)
    return addr


class _Evaluation:
    """State shared by one check_host() and everything it includes or redirects to."""

    def __init__(
        self,
        lookup: DnsLookup,
        ip: IPAddress,
        sender: str,
        helo: str,
        limits: SpfLimits,
    ) -> None:
        self.lookup = lookup
        self.ip = ip
        self.sender = sender
        self.local, _, self.sender_domain = sender.rpartition("@")
        self.helo = helo
        self.limits = limits
        self.lookups = 0
        self.voids = 0
        self._validated: str | None = None

    # -- limits -------------------------------------------------------------------------------
    def count_lookup(self) -> None:
        self.lookups += 1
        if self.lookups > self.limits.max_lookups:
            raise _Abort(SpfResult.PERMERROR, "too many DNS lookups")

    def void(self, answers: list[str] | list[bytes]) -> None:
        if not answers:
            self.voids += 1
            if self.voids > self.limits.max_void_lookups:
                raise _Abort(SpfResult.PERMERROR, "too many void DNS lookups")

    # -- DNS ----------------------------------------------------------------------------------
    async def addresses(self, name: str) -> list[str]:
        """Addresses of the client's family (A for IPv4, AAAA for IPv6)."""
        try:
            if self.ip.version == 4:
                return await self.lookup.a(name)
            return await self.lookup.aaaa(name)
        except DnsTempError as exc:
            raise _Abort(SpfResult.TEMPERROR, f"DNS error: {exc}") from None
        except DnsPermError as exc:
            raise _Abort(SpfResult.PERMERROR, f"bad name: {exc}") from None

    def matches(self, addresses: list[str], cidr4: int, cidr6: int) -> bool:
        prefix = cidr4 if self.ip.version == 4 else cidr6
        for text in addresses:
            try:
                net = ipaddress.ip_network(f"{text}/{prefix}", strict=False)
            except ValueError:
                continue
            if self.ip in net:
                return True
        return False

    async def validated_names(self, target: str | None) -> list[str]:
        """§5.5: PTR names of the client whose addresses include it (at most 10 names).
        DNS errors make a name (or the whole lookup) not match; they are never temperror."""
        try:
            names = await self.lookup.ptr(str(self.ip))
        except (DnsTempError, DnsPermError):
            return []
        out: list[str] = []
        for name in names[: self.limits.max_ptr_names]:
            name = name.rstrip(".").lower()
            if target is not None and not (name == target or name.endswith("." + target)):
                continue
            try:
                if self.matches(await self.addresses(name), 32, 128):
                    out.append(name)
            except _Abort:
                continue  # "If a DNS error occurs ... that domain name is skipped" (§5.5)
        return out

    # -- macros (§7) --------------------------------------------------------------------------
    async def expand(self, spec: _DomainSpec, domain: str) -> str:
        out: list[str] = []
        for piece in spec.pieces:
            if isinstance(piece, str):
                out.append(piece)
                continue
            value = await self._macro_value(piece.letter, domain)
            parts = re.split("[" + re.escape(piece.delimiters) + "]", value)
            if piece.reverse:
                parts.reverse()
            if piece.digits is not None and piece.digits < len(parts):
                parts = parts[-piece.digits :]
            text = ".".join(parts)
            if piece.escape:
                text = _url_escape(text)
            out.append(text)
        name = "".join(out).rstrip(".")
        while len(name) > _MAX_DOMAIN and "." in name:  # §4.8: drop labels on the left
            name = name.split(".", 1)[1]
        return name.lower()

    async def _macro_value(self, letter: str, domain: str) -> str:
        if letter == "s":
            return self.sender
        if letter == "l":
            return self.local
        if letter == "o":
            return self.sender_domain
        if letter == "d":
            return domain
        if letter == "i":
            if self.ip.version == 4:
                return str(self.ip)
            return ".".join(self.ip.exploded.replace(":", ""))
        if letter == "v":
            return "in-addr" if self.ip.version == 4 else "ip6"
        if letter == "h":
            return self.helo or "unknown"
        # "p": the validated domain name of the client, preferring <domain> or a subdomain
        if self._validated is None:
            names = await self.validated_names(None)
            preferred = [n for n in names if n == domain or n.endswith("." + domain)]
            self._validated = (preferred or names or ["unknown"])[0]
        return self._validated

    # -- check_host (§4) ------------------------------------------------------------------------
    async def check_host(self, domain: str) -> tuple[SpfResult, str]:
        if not _valid_domain(domain):
            return SpfResult.NONE, f"{domain or '(empty)'} is not a valid domain"
        try:
            answers = await self.lookup.txt(domain)
        except DnsTempError as exc:
            return SpfResult.TEMPERROR, f"DNS error: {exc}"
        except DnsPermError:
            return SpfResult.NONE, f"{domain} is not a valid domain"
        texts = [a.decode("utf-8", "replace") for a in answers]
        records = [t for t in texts if _is_spf(t)]
        if not records:
            return SpfResult.NONE, f"no SPF record at {domain}"
        if len(records) > 1:
            return SpfResult.PERMERROR, f"several SPF records at {domain}"
        try:
            record = parse_record(records[0])
        except SpfSyntaxError as exc:
            return SpfResult.PERMERROR, f"{domain}: {exc}"
        try:
            for directive in record.directives:
                if await self._mechanism(directive, domain):
                    return directive.qualifier, f"{domain}: matched {directive.mechanism}"
            if record.redirect is not None and not record.has_all:
                self.count_lookup()
                target = await self.expand(record.redirect, domain)
                result, reason = await self.check_host(target)
                if result is SpfResult.NONE:
                    return SpfResult.PERMERROR, f"redirect to {target}: {reason}"
                return result, reason
        except _Abort as exc:
            return exc.result, exc.reason
        return SpfResult.NEUTRAL, f"{domain}: no mechanism matched"

    async def _target(self, directive: Directive, domain: str) -> str:
        if directive.domain is None:
            return domain
        target = await self.expand(directive.domain, domain)
        if not _valid_domain(target, multi_label=False):
            raise _Abort(SpfResult.PERMERROR, f"invalid domain {target!r} after expansion")
        return target

    async def _mechanism(self, d: Directive, domain: str) -> bool:
        name = d.mechanism
        if name == "all":
            return True
        if name in ("ip4", "ip6"):
            assert d.network is not None
            return d.network.version == self.ip.version and self.ip in d.network
        self.count_lookup()  # include, a, mx, ptr and exists query DNS (§4.6.4)
        target = await self._target(d, domain)
        if name == "include":
            result, reason = await self.check_host(target)
            if result is SpfResult.PASS:
                return True
            if result in (SpfResult.TEMPERROR, SpfResult.PERMERROR):
                raise _Abort(result, reason)
            if result is SpfResult.NONE:
                raise _Abort(SpfResult.PERMERROR, f"include:{target}: {reason}")
            return False
        if name == "a":
            addresses = await self.addresses(target)
            self.void(addresses)
            return self.matches(addresses, d.cidr4, d.cidr6)
        if name == "mx":
            return await self._mx(target, d)
        if name == "ptr":
            names = await self.validated_names(target)
            self.void(names)
            return bool(names)
        # exists: an A query whatever the client's family (§5.7)
        try:
            found = await self.lookup.a(target)
        except DnsTempError as exc:
            raise _Abort(SpfResult.TEMPERROR, f"DNS error: {exc}") from None
        except DnsPermError as exc:
            raise _Abort(SpfResult.PERMERROR, f"bad name: {exc}") from None
        self.void(found)
        return bool(found)

    async def _mx(self, target: str, d: Directive) -> bool:
        try:
            exchanges = await self.lookup.mx(target)
        except DnsTempError as exc:
            raise _Abort(SpfResult.TEMPERROR, f"DNS error: {exc}") from None
        except DnsPermError as exc:
            raise _Abort(SpfResult.PERMERROR, f"bad name: {exc}") from None
        self.void(exchanges)
        exchanges = [e for e in exchanges if e not in (".", "")]  # a null MX has no hosts
        if len(exchanges) > self.limits.max_mx_names:
            raise _Abort(SpfResult.PERMERROR, f"more than {self.limits.max_mx_names} MX names")
        for exchange in exchanges:
            if self.matches(await self.addresses(exchange), d.cidr4, d.cidr6):
                return True
        return False


def _url_escape(text: str) -> str:
    """§7.3: upper-case macro letters URL-escape characters outside the unreserved set."""
    out: list[str] = []
    for byte in text.encode("utf-8"):
        ch = chr(byte)
        if ch.isascii() and (ch.isalnum() or ch in "-._~"):
            out.append(ch)
        else:
            out.append(f"%{byte:02X}")
    return "".join(out)


# -- entry points -----------------------------------------------------------------------------


async def check_host(
    lookup: DnsLookup,
    ip: str,
    domain: str,
    sender: str,
    *,
    helo: str = "",
    identity: Literal["mailfrom", "helo"] = "mailfrom",
    limits: SpfLimits = DEFAULT_LIMITS,
    timeout: float | None = None,
) -> SpfOutcome:
    """RFC 7208 §4: the SPF result for client ``ip``, ``domain`` and ``sender``
    (``local@domain``). Never raises for bad input or DNS failures; past ``timeout`` seconds
    the result is ``temperror``."""
    try:
        addr = _client_ip(ip)
    except ValueError:
        return SpfOutcome(SpfResult.NONE, identity, domain, sender, f"bad client address {ip!r}")
    ev = _Evaluation(lookup, addr, sender, helo, limits)
    try:
        async with asyncio.timeout(timeout):
            result, reason = await ev.check_host(domain.lower().rstrip("."))
    except TimeoutError:
        result, reason = SpfResult.TEMPERROR, "SPF evaluation timed out"
    return SpfOutcome(result, identity, domain, sender, reason, ev.lookups)


def _a_label(domain: str) -> str | None:
    try:
        return normalise_domain(domain)
    except InvalidAddress:
        return None


async def check_mail_from(
    lookup: DnsLookup,
    ip: str,
    mail_from: str,
    helo: str,
    *,
    limits: SpfLimits = DEFAULT_LIMITS,
    timeout: float | None = None,
) -> SpfOutcome:
    """The MAIL FROM identity (§2.4): the envelope sender's domain, or for the null sender
    ``postmaster@<HELO name>`` (§2.4 / §4.3: a missing local part is "postmaster")."""
    if mail_from:
        local, _, domain = mail_from.rpartition("@")
    else:
        local, domain = "postmaster", helo
    local = local or "postmaster"
    a_label = _a_label(domain) if domain and not domain.startswith("[") else None
    if a_label is None:
        return SpfOutcome(
            SpfResult.NONE,
            "mailfrom",
            domain,
            f"{local}@{domain}",
            f"no domain to check in {mail_from or '<>'!r}",
        )
    return await check_host(
        lookup,
        ip,
        a_label,
        f"{local}@{a_label}",
        helo=helo,
        identity="mailfrom",
        limits=limits,
        timeout=timeout,
    )


async def check_helo(
    lookup: DnsLookup,
    ip: str,
    helo: str,
    *,
    limits: SpfLimits = DEFAULT_LIMITS,
    timeout: float | None = None,
) -> SpfOutcome:
    """The HELO identity (§2.3): ``postmaster@<HELO name>``; an address literal gives
    ``none``."""
    a_label = _a_label(helo) if helo and not helo.startswith("[") else None
    if a_label is None:
        return SpfOutcome(SpfResult.NONE, "helo", helo, f"postmaster@{helo}", "no HELO domain")
    return await check_host(
        lookup,
        ip,
        a_label,
        f"postmaster@{a_label}",
        helo=helo,
        identity="helo",
        limits=limits,
        timeout=timeout,
    )
