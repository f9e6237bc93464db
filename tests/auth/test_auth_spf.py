"""SPF (RFC 7208): record syntax, every mechanism, macros, the processing limits, DNS errors."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest
from authdns import FakeDns
from hypothesis import given, settings
from hypothesis import strategies as st

from letterbird.auth.spf import (
    SpfLimits,
    SpfResult,
    SpfSyntaxError,
    check_helo,
    check_host,
    check_mail_from,
    parse_record,
)

IP = "192.0.2.10"


async def result(
    record: str | list[str] | None,
    ip: str = IP,
    extra: dict[str, dict[str, Any]] | None = None,
    domain: str = "example.test",
    sender: str = "alice@example.test",
    **kw: Any,
) -> SpfResult:
    records: dict[str, dict[str, Any]] = dict(extra or {})
    if record is not None:
        entry = dict(records.get(domain, {}))
        entry["TXT"] = record if isinstance(record, list) else [record]
        records[domain] = entry
    out = await check_host(FakeDns(records), ip, domain, sender, **kw)
    return out.result


# -- syntax -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "record",
    [
        "v=spf1",
        "v=spf1 -all",
        "V=SPF1 +ALL",
        "v=spf1 ip4:192.0.2.0/24 ip6:2001:db8::/32 a mx ptr -all",
        "v=spf1 a:mail.example.test/24//64 mx:example.test//48 ~all",
        "v=spf1 include:_spf.example.test exists:%{i}.%{l1r-}.ex.test ?all",
        "v=spf1 redirect=_spf.example.test",
        "v=spf1 exp=explain.example.test -all",
        "v=spf1 moo.cow-x_y=%{l}.test -all",
        "v=spf1 a:%{d}",
        "v=spf1 include:foo.%%%_%-.test -all",
        "v=spf1 a:example.test. -all",
        "v=spf1 ptr:example.test  -all  ",
        "v=spf1 ip4:0.0.0.0/0",
        "v=spf1 ip6:::1",
    ],
)
def test_valid_records_parse(record: str) -> None:
    parse_record(record)


@pytest.mark.parametrize(
    "record",
    [
        "v=spf10",
        "spf1 -all",
        "v=spf1 foo",
        "v=spf1 ip4:1.2.3",
        "v=spf1 ip4:1.2.3.4/33",
        "v=spf1 ip4:01.2.3.4",
        "v=spf1 ip4:1.2.3.4/024",
        "v=spf1 ip4:1.2.3.4/",
        "v=spf1 ip4",
        "v=spf1 ip6:zz::/64",
        "v=spf1 ip6:2001:db8::/129",
        "v=spf1 ip6:fe80::1%eth0",
        "v=spf1 a:example",
        "v=spf1 a/33",
        "v=spf1 a//129",
        "v=spf1 a:foo.test/24//129",
        "v=spf1 a/123",
        "v=spf1 ab",
        "v=spf1 mx-foo",
        "v=spf1 include",
        "v=spf1 include:",
        "v=spf1 exists",
        "v=spf1 all:foo",
        "v=spf1 -all/24",
        "v=spf1 ptr/24",
        "v=spf1 ptrx",
        "v=spf1 redirect=a.test redirect=b.test",
        "v=spf1 exp=a.test exp=b.test",
        "v=spf1 %{z}",
        "v=spf1 include:%{c}.test",
        "v=spf1 include:%{d0}.test",
        "v=spf1 include:%{x}.test",
        "v=spf1 include:%.test",
        "v=spf1 foo=%{z}",
        "v=spf1 redirect=",
        "v=spf1 a:ex\u00e9.test",
        "v=spf1 -redirect=a.test",
    ],
)
def test_invalid_records_are_syntax_errors(record: str) -> None:
    with pytest.raises(SpfSyntaxError):
        parse_record(record)


def test_parsed_record_shape() -> None:
    r = parse_record("v=spf1 -ip4:192.0.2.1/24 ~a:x.test/28//64 mx redirect=r.test")
    first, second, third = r.directives
    assert first.qualifier is SpfResult.FAIL and first.mechanism == "ip4"
    assert first.network == ipaddress.ip_network("192.0.2.0/24")
    assert second.qualifier is SpfResult.SOFTFAIL and (second.cidr4, second.cidr6) == (28, 64)
    assert third.qualifier is SpfResult.PASS and third.domain is None
    assert r.redirect is not None and not r.has_all


@settings(deadline=None, max_examples=300)
@given(st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=80))
def test_parser_only_raises_syntax_errors(tail: str) -> None:
    try:
        parse_record("v=spf1 " + tail)
    except SpfSyntaxError:
        pass


@settings(deadline=None, max_examples=150)
@given(
    st.lists(
        st.sampled_from(
            [
                "a",
                "mx",
                "ptr",
                "-all",
                "~all",
                "?all",
                "include:b.test",
                "include:c.test",
                "exists:%{i}.e.test",
                "a:%{l}.%{d2}",
                "ip4:192.0.2.0/24",
                "ip6:2001:db8::/32",
                "redirect=b.test",
                "exp=x.test",
                "mx:%{ir}.test/24",
                "a//64",
                "%{",
                "x=y",
            ]
        ),
        max_size=8,
    ),
    st.sampled_from(["192.0.2.10", "2001:db8::5", "::ffff:192.0.2.10"]),
)
async def test_evaluation_never_raises(terms: list[str], ip: str) -> None:
    dns = FakeDns(
        {
            "a.test": {"TXT": ["v=spf1 " + " ".join(terms)], "A": ["192.0.2.9"]},
            "b.test": {"TXT": ["v=spf1 include:a.test ~all"]},
            "c.test": {"TEMPFAIL": ["A"], "TXT": ["v=spf1 a -all"]},
        }
    )
    out = await check_host(dns, ip, "a.test", "x@a.test")
    assert out.result in SpfResult
    assert out.lookups <= 11


# -- results --------------------------------------------------------------------------------


async def test_no_record_is_none_and_other_txt_ignored() -> None:
    assert await result(None) is SpfResult.NONE
    assert await result(["some text", "v=spf10 -all"]) is SpfResult.NONE


async def test_several_records_are_permerror() -> None:
    assert await result(["v=spf1 -all", "v=spf1 +all"]) is SpfResult.PERMERROR


async def test_syntax_error_is_permerror_even_after_a_match() -> None:
    assert await result("v=spf1 +all foo") is SpfResult.PERMERROR


@pytest.mark.parametrize(
    ("record", "expected"),
    [
        ("v=spf1 +all", SpfResult.PASS),
        ("v=spf1 all", SpfResult.PASS),
        ("v=spf1 -all", SpfResult.FAIL),
        ("v=spf1 ~all", SpfResult.SOFTFAIL),
        ("v=spf1 ?all", SpfResult.NEUTRAL),
        ("v=spf1", SpfResult.NEUTRAL),
        ("v=spf1 ip4:192.0.2.0/24 -all", SpfResult.PASS),
        ("v=spf1 ip4:192.0.2.11 -all", SpfResult.FAIL),
        ("v=spf1 -ip4:192.0.2.10 +all", SpfResult.FAIL),
        ("v=spf1 ip6:2001:db8::/32 -all", SpfResult.FAIL),
        ("v=spf1 ip4:0.0.0.0/0", SpfResult.PASS),
    ],
)
async def test_qualifiers_and_ip4(record: str, expected: SpfResult) -> None:
    assert await result(record) is expected


async def test_ip6_and_mapped_clients() -> None:
    record = "v=spf1 ip6:2001:db8::/32 ip4:192.0.2.0/24 -all"
    assert await result(record, ip="2001:db8::1") is SpfResult.PASS
    assert await result(record, ip="2001:db9::1") is SpfResult.FAIL
    assert await result(record, ip="::ffff:192.0.2.7") is SpfResult.PASS


async def test_a_mechanism_with_cidr() -> None:
    extra = {
        "example.test": {"A": ["192.0.2.1"], "AAAA": ["2001:db8::1"]},
        "other.test": {"A": ["198.51.100.1"]},
    }
    assert await result("v=spf1 a -all", extra=extra) is SpfResult.FAIL
    assert await result("v=spf1 a/24 -all", extra=extra) is SpfResult.PASS
    assert await result("v=spf1 a:other.test/24 -all", extra=extra) is SpfResult.FAIL
    assert await result("v=spf1 a:other.test/8 -all", extra=extra) is SpfResult.FAIL
    assert await result("v=spf1 a//64 -all", extra=extra, ip="2001:db8::99") is SpfResult.PASS
    assert await result("v=spf1 a -all", extra=extra, ip="2001:db8::99") is SpfResult.FAIL
    # a bad address in DNS is skipped, not an error
    bad = {"example.test": {"A": ["not-an-ip", "192.0.2.10"]}}
    assert await result("v=spf1 a -all", extra=bad) is SpfResult.PASS


async def test_mx_mechanism() -> None:
    extra = {
        "example.test": {"MX": ["mx1.example.test", "mx2.example.test"]},
        "mx1.example.test": {"A": ["198.51.100.1"]},
        "mx2.example.test": {"A": [IP]},
        "null.test": {"MX": ["."]},
    }
    assert await result("v=spf1 mx -all", extra=extra) is SpfResult.PASS
    assert await result("v=spf1 mx:null.test -all", extra=extra) is SpfResult.FAIL
    many = {"example.test": {"MX": [f"mx{i}.example.test" for i in range(11)]}}
    assert await result("v=spf1 mx -all", extra=many) is SpfResult.PERMERROR
    ten = {"example.test": {"MX": [f"mx{i}.example.test" for i in range(10)]}}
    ten["mx9.example.test"] = {"A": [IP]}
    assert await result("v=spf1 mx -all", extra=ten) is SpfResult.PASS


async def test_include() -> None:
    extra: dict[str, dict[str, Any]] = {
        "pass.test": {"TXT": ["v=spf1 ip4:192.0.2.0/24 -all"]},
        "fail.test": {"TXT": ["v=spf1 -all"]},
        "none.test": {},
        "temp.test": {"TEMPFAIL": True},
        "perm.test": {"TXT": ["v=spf1 bogus"]},
    }
    assert await result("v=spf1 include:pass.test -all", extra=extra) is SpfResult.PASS
    assert await result("v=spf1 include:fail.test ~all", extra=extra) is SpfResult.SOFTFAIL
    assert await result("v=spf1 include:none.test ~all", extra=extra) is SpfResult.PERMERROR
    assert await result("v=spf1 include:temp.test ~all", extra=extra) is SpfResult.TEMPERROR
    assert await result("v=spf1 include:perm.test ~all", extra=extra) is SpfResult.PERMERROR
    assert await result("v=spf1 -include:pass.test +all", extra=extra) is SpfResult.FAIL


async def test_redirect() -> None:
    extra: dict[str, dict[str, Any]] = {
        "r.test": {"TXT": ["v=spf1 ip4:192.0.2.10 -all"]},
        "empty.test": {},
    }
    assert await result("v=spf1 redirect=r.test", extra=extra) is SpfResult.PASS
    assert await result("v=spf1 redirect=r.test", ip="192.0.2.11", extra=extra) is (SpfResult.FAIL)
    # ignored when the record has "all" (RFC 7208 §6.1)
    assert await result("v=spf1 ?all redirect=r.test", extra=extra) is SpfResult.NEUTRAL
    assert await result("v=spf1 redirect=empty.test", extra=extra) is SpfResult.PERMERROR
    # a mechanism that matches wins over redirect
    assert await result("v=spf1 -ip4:192.0.2.10 redirect=r.test", extra=extra) is SpfResult.FAIL


async def test_exists_and_ptr() -> None:
    extra = {
        "10.2.0.192.in.test": {"A": ["127.0.0.2"]},
        IP: {"PTR": ["mail.example.test", "other.test"]},
        "mail.example.test": {"A": [IP]},
        "other.test": {"A": ["198.51.100.1"]},
    }
    record = "v=spf1 exists:%{ir}.in.test -all"
    assert await result(record, extra=extra) is SpfResult.PASS
    assert await result(record, ip="192.0.2.11", extra=extra) is SpfResult.FAIL
    # exists always asks A, even for IPv6 clients
    v6 = {"ok.test": {"A": ["127.0.0.2"]}}
    assert await result("v=spf1 exists:ok.test -all", ip="2001:db8::1", extra=v6) is (
        SpfResult.PASS
    )
    assert await result("v=spf1 ptr -all", extra=extra) is SpfResult.PASS
    assert await result("v=spf1 ptr:other.test -all", extra=extra) is SpfResult.FAIL
    # DNS errors in ptr are "no match", never temperror (RFC 7208 §5.5)
    broken = {IP: {"TEMPFAIL": True}}
    assert await result("v=spf1 ptr ~all", extra=broken) is SpfResult.SOFTFAIL
    broken2 = {IP: {"PTR": ["mail.example.test"]}, "mail.example.test": {"TEMPFAIL": True}}
    assert await result("v=spf1 ptr ~all", extra=broken2) is SpfResult.SOFTFAIL


async def test_lookup_limit() -> None:
    extra: dict[str, dict[str, Any]] = {}
    for i in range(12):
        extra[f"i{i}.test"] = {"TXT": [f"v=spf1 include:i{i + 1}.test"]}
    extra["i12.test"] = {"TXT": ["v=spf1 +all"]}
    assert await result("v=spf1 include:i0.test -all", extra=extra) is SpfResult.PERMERROR
    # ten is fine
    ok = {f"i{i}.test": {"TXT": [f"v=spf1 include:i{i + 1}.test"]} for i in range(9)}
    ok["i9.test"] = {"TXT": ["v=spf1 +all"]}
    assert await result("v=spf1 include:i0.test -all", extra=ok) is SpfResult.PASS
    # ip4/ip6/all do not count; a, mx, exists, redirect do
    terms = " ".join(["a:x.test"] * 10)
    extra2 = {"x.test": {"A": ["198.51.100.1"]}}
    assert await result(f"v=spf1 {terms} -all", extra=extra2) is SpfResult.FAIL
    assert await result(f"v=spf1 {terms} a:x.test -all", extra=extra2) is SpfResult.PERMERROR
    custom = SpfLimits(max_lookups=2)
    assert await result("v=spf1 a:x.test a:x.test a:x.test", extra=extra2, limits=custom) is (
        SpfResult.PERMERROR
    )


async def test_void_lookup_limit() -> None:
    record = "v=spf1 a:v1.test a:v2.test exists:v3.test -all"
    assert await result(record) is SpfResult.PERMERROR
    assert await result("v=spf1 a:v1.test a:v2.test -all") is SpfResult.FAIL
    assert await result("v=spf1 mx:v1.test mx:v2.test ptr:v3.test -all") is SpfResult.PERMERROR


async def test_dns_errors_are_temperror() -> None:
    assert await result(None, extra={"example.test": {"TEMPFAIL": True}}) is SpfResult.TEMPERROR
    temp_a = {"example.test": {"TEMPFAIL": ["A"]}}
    assert await result("v=spf1 a -all", extra=temp_a) is SpfResult.TEMPERROR
    temp_mx = {"example.test": {"TEMPFAIL": ["MX"]}}
    assert await result("v=spf1 mx -all", extra=temp_mx) is SpfResult.TEMPERROR
    mx_host = {"example.test": {"MX": ["m.test"]}, "m.test": {"TEMPFAIL": True}}
    assert await result("v=spf1 mx -all", extra=mx_host) is SpfResult.TEMPERROR
    ex = {"e.test": {"TEMPFAIL": True}}
    assert await result("v=spf1 exists:e.test -all", extra=ex) is SpfResult.TEMPERROR
    bad = {"e.test": {"PERMFAIL": True}}
    assert await result("v=spf1 exists:e.test -all", extra=bad) is SpfResult.PERMERROR
    assert await result("v=spf1 a:e.test -all", extra=bad) is SpfResult.PERMERROR
    assert await result("v=spf1 mx:e.test -all", extra=bad) is SpfResult.PERMERROR
    assert await result(None, extra={"example.test": {"PERMFAIL": True}}) is SpfResult.NONE


async def test_overall_timeout_is_temperror() -> None:
    slow = {"example.test": {"DELAY": 5, "TXT": ["v=spf1 +all"]}}
    assert await result(None, extra=slow, timeout=0.05) is SpfResult.TEMPERROR


async def test_invalid_domains_and_clients() -> None:
    dns = FakeDns()
    for domain in ("localhost", "", "a..test", "x" * 64 + ".test"):
        out = await check_host(dns, IP, domain, f"a@{domain}")
        assert out.result is SpfResult.NONE
    out = await check_host(dns, "not-an-ip", "example.test", "a@example.test")
    assert out.result is SpfResult.NONE
    extra = {"bad.test": {"TXT": ["v=spf1 a:%{l}.test -all"]}}
    out = await check_host(FakeDns(extra), IP, "bad.test", "a..b@bad.test")
    assert out.result is SpfResult.PERMERROR  # the expanded name is not a domain


# -- macros ---------------------------------------------------------------------------------


async def expands_to(spec: str, expected: str, ip: str = IP, **kw: Any) -> None:
    """``exists:<spec>`` matches exactly when it expands to ``expected``."""
    records: dict[str, dict[str, Any]] = {
        "email.example.com": {"TXT": [f"v=spf1 exists:{spec} -all"]},
        IP: {"PTR": ["mx.example.com"]},
        "mx.example.com": {"A": [IP]},
    }
    records.setdefault(expected, {})["A"] = ["127.0.0.2"]
    dns = FakeDns(records)
    out = await check_host(
        dns,
        ip,
        "email.example.com",
        kw.pop("sender", "strong-bad@email.example.com"),
        helo=kw.pop("helo", "mx.example.org"),
    )
    assert out.result is SpfResult.PASS, (spec, expected, out, dns.queries)


@pytest.mark.parametrize(
    ("spec", "expected"),
    [  # RFC 7208 §7.4 examples (IPv4 client 192.0.2.3 there; ours is 192.0.2.10)
        ("%{s}", "strong-bad@email.example.com"),
        ("%{o}", "email.example.com"),
        ("%{d}", "email.example.com"),
        ("%{d4}", "email.example.com"),
        ("%{d3}", "email.example.com"),
        ("%{d2}", "example.com"),
        ("%{d1}", "com"),
        ("%{dr}", "com.example.email"),
        ("%{d2r}", "example.email"),
        ("%{l}", "strong-bad"),
        ("%{l-}", "strong.bad"),
        ("%{lr}", "strong-bad"),
        ("%{lr-}", "bad.strong"),
        ("%{l1r-}", "strong"),
        ("%{ir}.%{v}._spf.%{d2}", "10.2.0.192.in-addr._spf.example.com"),
        ("%{lr-}.lp._spf.%{d2}", "bad.strong.lp._spf.example.com"),
        ("%{lr-}.lp.%{ir}.%{v}._spf.%{d2}", "bad.strong.lp.10.2.0.192.in-addr._spf.example.com"),
        ("%{ir}.%{v}.%{l1r-}.lp._spf.%{d2}", "10.2.0.192.in-addr.strong.lp._spf.example.com"),
        ("%{d2}.trusted-domains.example.net", "example.com.trusted-domains.example.net"),
        ("%{h}.h.test", "mx.example.org.h.test"),
        ("%{p}.p.test", "mx.example.com.p.test"),
        ("%{d100}", "email.example.com"),
        ("%{l+}.x.test", "strong-bad.x.test"),
    ],
)
async def test_macro_expansion(spec: str, expected: str) -> None:
    await expands_to(spec, expected)


async def test_macro_ipv6_and_escapes() -> None:
    await expands_to(
        "%{ir}.%{v}._spf.%{d2}",
        "1.0.b.c.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6._spf.example.com",
        ip="2001:db8::cb01",
    )
    await expands_to(
        "%{S}.x.test", "a%2Bb%40email.example.com.x.test", sender="a+b@email.example.com"
    )
    await expands_to("a%%b.x.test", "a%b.x.test")
    await expands_to("a%-b.x.test", "a%20b.x.test")
    await expands_to("a%_b.x.test", "a b.x.test")


async def test_p_macro_unknown_without_validated_name() -> None:
    dns = FakeDns(
        {
            "d.test": {"TXT": ["v=spf1 exists:%{p}.p.test -all"]},
            "unknown.p.test": {"A": ["127.0.0.2"]},
        }
    )
    out = await check_host(dns, IP, "d.test", "a@d.test")
    assert out.result is SpfResult.PASS


async def test_long_expansion_is_cut_from_the_left() -> None:
    local = ".".join(["abcdefghij"] * 30)
    spec = "%{l}.x.test"
    expanded = f"{local}.x.test"
    while len(expanded) > 253:
        expanded = expanded.split(".", 1)[1]
    dns = FakeDns(
        {"d.test": {"TXT": [f"v=spf1 exists:{spec} -all"]}, expanded: {"A": ["127.0.0.2"]}}
    )
    out = await check_host(dns, IP, "d.test", f"{local}@d.test")
    assert out.result is SpfResult.PASS


# -- identities -------------------------------------------------------------------------------


async def test_mail_from_and_helo_identities() -> None:
    dns = FakeDns(
        {
            "example.test": {"TXT": ["v=spf1 ip4:192.0.2.10 -all"]},
            "helo.test": {"TXT": ["v=spf1 exists:%{l}.%{d} -all"]},
            "postmaster.helo.test": {"A": ["127.0.0.2"]},
            "xn--bcher-kva.test": {"TXT": ["v=spf1 +all"]},
        }
    )
    out = await check_mail_from(dns, IP, "alice@example.test", "helo.test")
    assert (out.result, out.identity, out.domain) == (SpfResult.PASS, "mailfrom", "example.test")
    # the null sender is checked as postmaster@<HELO>
    out = await check_mail_from(dns, IP, "", "helo.test")
    assert (out.result, out.sender) == (SpfResult.PASS, "postmaster@helo.test")
    out = await check_mail_from(dns, IP, "@example.test", "helo.test")
    assert out.sender == "postmaster@example.test"
    out = await check_helo(dns, IP, "helo.test")
    assert (out.result, out.identity) == (SpfResult.PASS, "helo")
    assert (await check_helo(dns, IP, "[192.0.2.10]")).result is SpfResult.NONE
    assert (await check_helo(dns, IP, "")).result is SpfResult.NONE
    assert (await check_mail_from(dns, IP, "", "[192.0.2.1]")).result is SpfResult.NONE
    assert (await check_mail_from(dns, IP, "a@b\u00fccher.test", "h")).result is SpfResult.PASS
    assert (await check_mail_from(dns, IP, "a@-bad-.test", "h")).result is SpfResult.NONE
