"""DMARC (RFC 7489): record parsing, organizational domains, alignment, policy and pct."""

from __future__ import annotations

from typing import Any

import pytest
from authdns import FakeDns
from hypothesis import given, settings
from hypothesis import strategies as st

from letterbird.auth.dkim import DkimOutcome, DkimResult
from letterbird.auth.dmarc import (
    DmarcPolicy,
    DmarcResult,
    DmarcSyntaxError,
    aligned,
    author_domains,
    evaluate,
    organizational_domain,
    parse_record,
)
from letterbird.auth.spf import SpfOutcome, SpfResult


def dkim_pass(domain: str) -> DkimOutcome:
    return DkimOutcome(DkimResult.PASS, domain=domain, selector="s")


def spf_of(result: SpfResult, domain: str) -> SpfOutcome:
    return SpfOutcome(result, "mailfrom", domain, f"x@{domain}")


REJECT = {"_dmarc.alice.test": {"TXT": ["v=DMARC1; p=reject"]}}


async def outcome(
    records: dict[str, dict[str, Any]],
    from_value: str | list[str] = "Alice <alice@alice.test>",
    dkim: list[DkimOutcome] | None = None,
    spf: SpfOutcome | None = None,
    sample: float = 0.5,
) -> Any:
    values = [from_value] if isinstance(from_value, str) else from_value
    return await evaluate(FakeDns(records), values, dkim or [], spf, sample=lambda: sample)


# -- records ----------------------------------------------------------------------------------


def test_parse_record() -> None:
    r = parse_record("v=DMARC1; p=quarantine; sp=reject; adkim=s; aspf=s; pct=20; rua=x")
    assert (r.policy, r.subdomain_policy, r.adkim, r.aspf, r.pct) == (
        DmarcPolicy.QUARANTINE,
        DmarcPolicy.REJECT,
        "s",
        "s",
        20,
    )
    r = parse_record("v = DMARC1 ;P=Reject;adkim=x;pct=abc;unknown=1;;")
    assert (r.policy, r.adkim, r.pct, r.subdomain_policy) == (DmarcPolicy.REJECT, "r", 100, None)
    assert parse_record("v=DMARC1; p=none; pct=250").pct == 100
    # no valid p=, but a valid rua: as if p=none (RFC 7489 §6.6.3 step 6)
    r = parse_record("v=DMARC1; p=bogus; rua=mailto:d@alice.test")
    assert r.policy is DmarcPolicy.NONE
    r = parse_record("v=DMARC1; p=reject; sp=bogus; rua=mailto:d@alice.test!10m")
    assert (r.policy, r.subdomain_policy) == (DmarcPolicy.NONE, None)


@pytest.mark.parametrize(
    "text",
    ["v=DMARC2; p=reject", "p=reject; v=DMARC1", "v=DMARC1", "v=DMARC1; p=bogus", "v=DMARC1x"],
)
def test_unusable_records(text: str) -> None:
    with pytest.raises(DmarcSyntaxError):
        parse_record(text)


@settings(deadline=None, max_examples=300)
@given(st.text(max_size=60))
def test_parser_only_raises_syntax_errors(tail: str) -> None:
    try:
        parse_record("v=DMARC1;" + tail)
    except DmarcSyntaxError:
        pass


def test_organizational_domain_and_alignment() -> None:
    assert organizational_domain("mail.alice.test") == "alice.test"
    assert organizational_domain("a.b.example.co.uk") == "example.co.uk"
    assert organizational_domain("co.uk") == "co.uk"
    assert organizational_domain("Example.COM.") == "example.com"
    assert aligned("mail.alice.test", "alice.test", "r")
    assert not aligned("mail.alice.test", "alice.test", "s")
    assert aligned("ALICE.test", "alice.test.", "s")
    assert not aligned("a.example.co.uk", "b.other.co.uk", "r")


def test_author_domains() -> None:
    assert author_domains(["Alice <alice@Alice.TEST>"]) == ["alice.test"]
    assert author_domains(["a@x.test, b@x.test"]) == ["x.test"]
    assert author_domains(["a@x.test", "b@y.test"]) == ["x.test", "y.test"]
    assert author_domains(["undisclosed-recipients:;", "no address"]) == []
    assert author_domains(["a@b\u00fccher.test"]) == ["xn--bcher-kva.test"]
    assert author_domains(["a@-bad-.test"]) == []


# -- evaluation -------------------------------------------------------------------------------


async def test_aligned_dkim_or_spf_passes() -> None:
    o = await outcome(REJECT, dkim=[dkim_pass("alice.test")])
    assert (o.result, o.header_from, o.policy, o.disposition) == (
        DmarcResult.PASS,
        "alice.test",
        DmarcPolicy.REJECT,
        DmarcPolicy.NONE,
    )
    o = await outcome(REJECT, spf=spf_of(SpfResult.PASS, "bounces.alice.test"))
    assert o.result is DmarcResult.PASS and "SPF" in o.reason
    o = await outcome(REJECT, dkim=[dkim_pass("mail.alice.test")])
    assert o.result is DmarcResult.PASS  # relaxed alignment


async def test_forged_from_is_rejected() -> None:
    o = await outcome(
        REJECT,
        dkim=[dkim_pass("evil.test")],
        spf=spf_of(SpfResult.PASS, "evil.test"),
    )
    assert o.result is DmarcResult.FAIL and o.reject and not o.quarantine
    o = await outcome(REJECT, spf=spf_of(SpfResult.SOFTFAIL, "alice.test"))
    assert o.result is DmarcResult.FAIL
    failing = DkimOutcome(DkimResult.FAIL, domain="alice.test")
    o = await outcome(REJECT, dkim=[failing])
    assert o.reject


async def test_strict_alignment() -> None:
    strict = {"_dmarc.alice.test": {"TXT": ["v=DMARC1; p=quarantine; adkim=s; aspf=s"]}}
    o = await outcome(strict, dkim=[dkim_pass("mail.alice.test")])
    assert o.result is DmarcResult.FAIL and o.quarantine
    o = await outcome(strict, spf=spf_of(SpfResult.PASS, "mail.alice.test"))
    assert o.result is DmarcResult.FAIL
    o = await outcome(strict, spf=spf_of(SpfResult.PASS, "alice.test"))
    assert o.result is DmarcResult.PASS


async def test_organizational_record_and_subdomain_policy() -> None:
    records = {"_dmarc.alice.test": {"TXT": ["v=DMARC1; p=reject; sp=quarantine"]}}
    o = await outcome(records, "x@news.alice.test")
    assert (o.result, o.policy, o.disposition) == (
        DmarcResult.FAIL,
        DmarcPolicy.QUARANTINE,
        DmarcPolicy.QUARANTINE,
    )
    o = await outcome(records, "x@alice.test")
    assert o.policy is DmarcPolicy.REJECT
    # a record at the subdomain itself wins, and its p= applies
    records["_dmarc.news.alice.test"] = {"TXT": ["v=DMARC1; p=none"]}
    o = await outcome(records, "x@news.alice.test")
    assert o.policy is DmarcPolicy.NONE
    # no sp=: p= applies to subdomains
    o = await outcome(REJECT, "x@news.alice.test")
    assert o.policy is DmarcPolicy.REJECT


async def test_pct_sampling() -> None:
    records = {"_dmarc.alice.test": {"TXT": ["v=DMARC1; p=reject; pct=10"]}}
    sampled = await outcome(records, sample=0.05)
    assert sampled.disposition is DmarcPolicy.REJECT
    left_out = await outcome(records, sample=0.5)
    assert (left_out.policy, left_out.disposition) == (DmarcPolicy.REJECT, DmarcPolicy.QUARANTINE)
    q = {"_dmarc.alice.test": {"TXT": ["v=DMARC1; p=quarantine; pct=0"]}}
    assert (await outcome(q, sample=0.0)).disposition is DmarcPolicy.NONE


async def test_no_policy_and_errors() -> None:
    assert (await outcome({})).result is DmarcResult.NONE
    two = {"_dmarc.alice.test": {"TXT": ["v=DMARC1; p=reject", "v=DMARC1; p=none"]}}
    assert (await outcome(two)).result is DmarcResult.NONE
    junk = {"_dmarc.alice.test": {"TXT": ["v=DMARC1; p=bogus", "hello"]}}
    assert (await outcome(junk)).result is DmarcResult.NONE
    temp = {"_dmarc.alice.test": {"TEMPFAIL": True}}
    o = await outcome(temp)
    assert (o.result, o.header_from) == (DmarcResult.TEMPERROR, "alice.test")
    perm = {"_dmarc.alice.test": {"PERMFAIL": True}}
    assert (await outcome(perm)).result is DmarcResult.NONE
    assert (await outcome(REJECT, "no address here")).result is DmarcResult.PERMERROR
    o = await outcome(REJECT, ["a@alice.test", "b@evil.test"])
    assert o.result is DmarcResult.PERMERROR and not o.reject
