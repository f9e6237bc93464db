"""DMARC (RFC 7489): does the author's domain stand behind this message, and what does it ask
receivers to do when it does not?

* The **author domain** is the domain of the ``From:`` field (RFC 7489 §6.6.1); a message with
  no usable ``From:`` or with addresses in several domains gets ``permerror`` (§6.6.1 lets
  receivers reject such messages; we report it and apply no policy).
* **Policy discovery** (§6.6.3): the ``_dmarc.<author domain>`` TXT record, else the one at
  ``_dmarc.<organizational domain>``. The organizational domain (§3.2) is the public suffix
  plus one label, from the Public Suffix List shipped with ``publicsuffixlist`` (no network).
  Exactly one record starting ``v=DMARC1`` counts; a DNS failure is ``temperror``.
* **Identifier alignment** (§3.1): a passing DKIM signature whose ``d=``, or a passing SPF
  check whose domain (MAIL FROM, or HELO for the null sender), matches the author domain —
  exactly (``s``, strict) or by organizational domain (``r``, relaxed, the default).
* **Policy** (§6.3, §6.6.4): ``p``, ``sp`` for subdomains found through the organizational
  record, and ``pct`` sampling (a message left out of the sample gets the next milder policy).
  ``rua``/``ruf`` reports are not sent.

:func:`evaluate` is pure apart from the awaited lookups; randomness for ``pct`` is passed in.
"""

from __future__ import annotations

import functools
import random
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import StrEnum

from publicsuffixlist import PublicSuffixList

from letterbird.auth.dkim import DkimOutcome, DkimResult
from letterbird.auth.lookup import DnsLookup, DnsPermError, DnsTempError
from letterbird.auth.spf import SpfOutcome, SpfResult
from letterbird.directory.addresses import InvalidAddress, normalise_domain
from letterbird.mime.address import MISSING_DOMAIN, parse_addresses

__all__ = [
    "DmarcOutcome",
    "DmarcPolicy",
    "DmarcRecord",
    "DmarcResult",
    "DmarcSyntaxError",
    "author_domains",
    "evaluate",
    "organizational_domain",
    "parse_record",
]


class DmarcResult(StrEnum):
    """RFC 8601 §2.7.1 / RFC 7489 §11.2 DMARC results."""

    NONE = "none"
    PASS = "pass"
    FAIL = "fail"
    TEMPERROR = "temperror"
    PERMERROR = "permerror"


class DmarcPolicy(StrEnum):
    """Requested handling (RFC 7489 §6.3 ``p``/``sp``) and the disposition we applied."""

    NONE = "none"
    QUARANTINE = "quarantine"
    REJECT = "reject"


_MILDER = {
    DmarcPolicy.REJECT: DmarcPolicy.QUARANTINE,
    DmarcPolicy.QUARANTINE: DmarcPolicy.NONE,
    DmarcPolicy.NONE: DmarcPolicy.NONE,
}


class DmarcSyntaxError(ValueError):
    """Not a usable DMARC record."""


@dataclass(frozen=True, slots=True)
class DmarcRecord:
    """The tags we act on (RFC 7489 §6.3)."""

    policy: DmarcPolicy
    subdomain_policy: DmarcPolicy | None = None
    adkim: str = "r"
    aspf: str = "r"
    pct: int = 100


@dataclass(frozen=True, slots=True)
class DmarcOutcome:
    """The DMARC result for one message, and what should be done with it."""

    result: DmarcResult
    header_from: str = ""  # the author domain ("" when none could be found)
    policy: DmarcPolicy = DmarcPolicy.NONE  # the policy the domain requests (p or sp)
    disposition: DmarcPolicy = DmarcPolicy.NONE  # what applies after pct sampling
    reason: str = ""

    @property
    def reject(self) -> bool:
        return self.disposition is DmarcPolicy.REJECT

    @property
    def quarantine(self) -> bool:
        return self.disposition is DmarcPolicy.QUARANTINE


# -- record syntax (RFC 7489 §6.4) ------------------------------------------------------------
#   dmarc-record = dmarc-version dmarc-sep *(dmarc-tag dmarc-sep)
#   dmarc-version = "v" *WSP "=" *WSP %x44 %x4d %x41 %x52 %x43 %x31   ; "DMARC1"
#   dmarc-sep = *WSP %x3b *WSP
#   dmarc-request = "p" *WSP "=" *WSP ( "none" / "quarantine" / "reject" )
#   dmarc-srequest = "sp" *WSP "=" *WSP ( "none" / "quarantine" / "reject" )
#   dmarc-adkim = "adkim" *WSP "=" *WSP ( "r" / "s" ) ; dmarc-aspf likewise
#   dmarc-percent = "pct" *WSP "=" *WSP 1*3DIGIT
_VERSION_RE = re.compile(r"^v[ \t]*=[ \t]*DMARC1[ \t]*(?:;|$)")
_TAG_RE = re.compile(r"^[ \t]*([A-Za-z][A-Za-z0-9]*)[ \t]*=[ \t]*(.*?)[ \t]*$", re.S)
_POLICIES = {p.value: p for p in DmarcPolicy}
# dmarc-uri = URI [ "!" 1*DIGIT [ "k" / "m" / "g" / "t" ] ] ; only the shape is checked
_URI_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*:[^\s,!]+(?:![0-9]+[kmgt]?)?$")


def is_dmarc(text: str) -> bool:
    """§6.6.3: records that do not start with ``v=DMARC1`` are discarded."""
    return bool(_VERSION_RE.match(text))


def parse_record(text: str) -> DmarcRecord:
    """Parse a record; raises DmarcSyntaxError when it is not usable.

    §6.6.3 step 6: a record with no valid ``p`` (or a bad ``sp``) counts as ``p=none`` when
    it has a valid ``rua`` URI, and is otherwise unusable. Unknown tags are ignored; a bad
    ``adkim``/``aspf``/``pct`` value takes the default."""
    if not is_dmarc(text):
        raise DmarcSyntaxError("not a DMARC1 record")
    tags: dict[str, str] = {}
    for part in text.split(";")[1:]:
        if not part.strip():
            continue
        m = _TAG_RE.match(part)
        if m is None:
            continue
        tags.setdefault(m.group(1).lower(), m.group(2))
    policy = _POLICIES.get(tags.get("p", "").lower())
    sp_text = tags.get("sp")
    subdomain = _POLICIES.get(sp_text.lower()) if sp_text is not None else None
    if policy is None or (sp_text is not None and subdomain is None):
        rua = [u.strip() for u in tags.get("rua", "").split(",")]
        if not any(_URI_RE.match(u) for u in rua):
            raise DmarcSyntaxError("no valid p= tag")
        policy, subdomain = DmarcPolicy.NONE, None
    adkim = tags.get("adkim", "r").lower()
    aspf = tags.get("aspf", "r").lower()
    pct_text = tags.get("pct", "100")
    pct = int(pct_text) if pct_text.isdigit() and len(pct_text) <= 3 else 100
    return DmarcRecord(
        policy,
        subdomain,
        adkim if adkim in ("r", "s") else "r",
        aspf if aspf in ("r", "s") else "r",
        min(pct, 100),
    )


# -- organizational domain (§3.2) -------------------------------------------------------------


@functools.cache
def _psl() -> PublicSuffixList:
    return PublicSuffixList()


def organizational_domain(domain: str) -> str:
    """The registered domain: one label more than the public suffix (the domain itself when it
    is a public suffix)."""
    domain = domain.lower().rstrip(".")
    return _psl().privatesuffix(domain) or domain


def aligned(a: str, b: str, mode: str) -> bool:
    """§3.1: strict mode needs the same domain; relaxed the same organizational domain."""
    a, b = a.lower().rstrip("."), b.lower().rstrip(".")
    if mode == "s":
        return a == b
    return a == b or organizational_domain(a) == organizational_domain(b)


# -- the author domain (§6.6.1) ----------------------------------------------------------------


def author_domains(from_values: Iterable[str]) -> list[str]:
    """The distinct domains (A-label, lower case) of the addresses in the ``From:`` fields."""
    out: list[str] = []
    for value in from_values:
        for addr in parse_addresses(value, limit=100):
            if addr.host is None or addr.host == MISSING_DOMAIN:
                continue
            try:
                domain = normalise_domain(addr.host)
            except InvalidAddress:
                continue
            if domain not in out:
                out.append(domain)
    return out


# -- evaluation -------------------------------------------------------------------------------


async def _lookup_record(lookup: DnsLookup, domain: str) -> DmarcRecord | None:
    """The one DMARC record at ``_dmarc.<domain>``, or None; raises DnsTempError."""
    try:
        answers = await lookup.txt(f"_dmarc.{domain}")
    except DnsPermError:
        return None
    records = [t for t in (a.decode("utf-8", "replace") for a in answers) if is_dmarc(t)]
    if len(records) != 1:
        return None  # none, or several: "no policy" (§6.6.3 step 5)
    try:
        return parse_record(records[0])
    except DmarcSyntaxError:
        return None


async def discover(lookup: DnsLookup, domain: str) -> tuple[DmarcRecord | None, bool]:
    """§6.6.3: (the record, whether it came from the organizational domain). Raises
    DnsTempError."""
    record = await _lookup_record(lookup, domain)
    if record is not None:
        return record, False
    org = organizational_domain(domain)
    if org != domain:
        record = await _lookup_record(lookup, org)
        if record is not None:
            return record, True
    return None, False


async def evaluate(
    lookup: DnsLookup,
    from_values: Iterable[str],
    dkim: Iterable[DkimOutcome],
    spf: SpfOutcome | None,
    *,
    sample: Callable[[], float] = random.random,
) -> DmarcOutcome:
    """The DMARC outcome of a message whose ``From:`` field bodies are ``from_values``.

    ``spf`` is the MAIL FROM check (its domain is the MAIL FROM domain, or the HELO name for
    the null sender); ``sample()`` returns a float in [0, 1) for ``pct``."""
    domains = author_domains(from_values)
    if not domains:
        return DmarcOutcome(DmarcResult.PERMERROR, reason="no From domain")
    if len(domains) > 1:
        return DmarcOutcome(
            DmarcResult.PERMERROR, domains[0], reason="From has addresses in several domains"
        )
    author = domains[0]
    try:
        record, from_org = await discover(lookup, author)
    except DnsTempError as exc:
        return DmarcOutcome(DmarcResult.TEMPERROR, author, reason=f"DNS error: {exc}")
    if record is None:
        return DmarcOutcome(DmarcResult.NONE, author, reason="no DMARC record")
    policy = record.policy
    if from_org and record.subdomain_policy is not None:
        policy = record.subdomain_policy
    dkim_ok = any(
        o.result is DkimResult.PASS and aligned(o.domain, author, record.adkim) for o in dkim
    )
    spf_ok = (
        spf is not None
        and spf.result is SpfResult.PASS
        and aligned(spf.domain, author, record.aspf)
    )
    if dkim_ok or spf_ok:
        how = "DKIM" if dkim_ok else "SPF"
        return DmarcOutcome(
            DmarcResult.PASS, author, policy, DmarcPolicy.NONE, f"aligned {how} pass"
        )
    disposition = policy
    if record.pct < 100 and sample() * 100 >= record.pct:
        disposition = _MILDER[policy]  # §6.6.4: not sampled, the next milder policy
    return DmarcOutcome(
        DmarcResult.FAIL, author, policy, disposition, "no aligned DKIM or SPF pass"
    )
