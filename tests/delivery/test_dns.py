"""Tests for letterbird.delivery.dns against the loopback test DNS server (tests/dnsserver.py)."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dns.asyncquery
import dns.asyncresolver
import dns.flags
import dns.message
import dns.opcode
import dns.rcode
import dns.resolver
import pytest
from dnsserver import DnsServer
from hypothesis import given, settings
from hypothesis import strategies as st

from letterbird.config import Config, DnsSettings
from letterbird.delivery.dns import (
    DnsBadName,
    DnsError,
    DnsNoData,
    DnsNxDomain,
    DnsTemporaryError,
    MxRecord,
    Resolver,
    TxtRecord,
    parse_nameserver,
)

NORMAL = 2.0  # lookup timeout for answers expected at once (loopback; generous for loaded CI)
SHORT = 0.3  # lookup timeout where a slow answer (DELAY 5 s) must time out
SLOW = 5.0
FAST_ENOUGH = 2.0  # generous bound for "returns within the timeout" checks

RECORDS: dict[str, dict[str, Any]] = {
    "bob.test": {"MX": [(20, "MX2.Bob.test."), (10, "mx1.bob.test"), (20, "mx3.bob.test")]},
    "mx1.bob.test": {"A": ["127.0.0.3", "127.0.0.4"], "AAAA": ["::1"]},
    "v6only.test": {"AAAA": ["2001:db8::25"]},
    "www.bob.test": {"CNAME": "mx1.bob.test"},
    "chain.bob.test": {"CNAME": "www.bob.test"},
    "dangling.bob.test": {"CNAME": "nothing.bob.test"},
    "a.deep.bob.test": {"A": ["127.0.0.8"]},  # deep.bob.test: an empty non-terminal
    "null.test": {"MX": [(0, ".")]},
    "txtonly.test": {"TXT": ["hello"]},
    "spf.test": {
        "TXT": [["v=spf1 ", "ip4:192.0.2.0/24 ", "-all"], "x" * 600, b"\xff\xfeoops"],
    },
    "big.test": {"TXT": ["y" * 3000]},
    "broken.test": {"SERVFAIL": True, "A": ["127.0.0.1"]},
    "half.test": {"A": ["127.0.0.5"], "SERVFAIL": ["AAAA"]},
    "nodata-tempfail.test": {"TXT": ["x"], "SERVFAIL": ["AAAA"]},
    "slow.test": {"A": ["127.0.0.9"], "MX": [(1, "mx1.bob.test")], "DELAY": SLOW},
    "silent.test": {"DROP": True},
    "bücher.test": {"MX": [(10, "mx.bücher.test")]},
    "mx.bücher.test": {"A": ["127.0.0.7"]},
    # Reverse zone
    "127.0.0.3": {"PTR": ["MX1.bob.test."]},
    "127.0.0.4": {"PTR": ["liar.test", "mx1.bob.test"]},
    "127.0.0.5": {"PTR": ["liar.test"]},
    "127.0.0.6": {"SERVFAIL": True},
    "127.0.0.7": {"PTR": ["slowname.test"]},
    "127.0.0.10": {"PTR": ["ghost.test"]},  # points at a name that does not exist
    "127.0.0.9": {"PTR": ["x.test"], "DELAY": SLOW},
    "::1": {"PTR": ["mx1.bob.test"]},
    "liar.test": {"A": ["192.0.2.1"]},
    "slowname.test": {"A": ["127.0.0.7"], "DELAY": SLOW},
}


@pytest.fixture(scope="module")
def server() -> Iterator[DnsServer]:
    with DnsServer(RECORDS) as srv:
        yield srv


def make_resolver(server: DnsServer, **kw: Any) -> Resolver:
    cache_size = kw.pop("cache_size", 0)
    settings = DnsSettings(
        nameservers=[server.nameserver],
        timeout=kw.pop("timeout", NORMAL),
        rdns_timeout=kw.pop("rdns_timeout", NORMAL),
    )
    assert not kw
    return Resolver(settings, cache_size=cache_size)


@pytest.fixture
def resolver(server: DnsServer) -> Resolver:
    return make_resolver(server)


# -- MX ---------------------------------------------------------------------------------------


async def test_mx_sorted_lowercase_without_final_dot(resolver: Resolver) -> None:
    records = await resolver.mx("bob.test")
    assert records[0] == MxRecord(10, "mx1.bob.test")
    assert sorted(records[1:], key=lambda r: r.exchange) == [
        MxRecord(20, "mx2.bob.test"),
        MxRecord(20, "mx3.bob.test"),
    ]
    assert not records[0].is_null


async def test_mx_case_insensitive_and_final_dot(resolver: Resolver) -> None:
    key = lambda r: (r.preference, r.exchange)  # noqa: E731
    assert sorted(await resolver.mx("BOB.Test."), key=key) == sorted(
        await resolver.mx("bob.test"), key=key
    )


async def test_null_mx(resolver: Resolver) -> None:
    records = await resolver.mx("null.test")
    assert records == [MxRecord(0, ".")]
    assert records[0].is_null


async def test_mx_nxdomain(resolver: Resolver) -> None:
    with pytest.raises(DnsNxDomain) as info:
        await resolver.mx("nope.bob.test")
    assert not info.value.temporary
    assert info.value.name == "nope.bob.test"
    assert info.value.rdtype == "MX"
    assert "NXDOMAIN" in str(info.value)


@pytest.mark.parametrize("name", ["txtonly.test", "deep.bob.test"])
async def test_mx_nodata(resolver: Resolver, name: str) -> None:
    with pytest.raises(DnsNoData) as info:
        await resolver.mx(name)
    assert not info.value.temporary


async def test_servfail_is_temporary(resolver: Resolver) -> None:
    with pytest.raises(DnsTemporaryError) as info:
        await resolver.mx("broken.test")
    assert info.value.temporary
    assert "SERVFAIL" in str(info.value)


async def test_refused_outside_served_zones_is_temporary(resolver: Resolver) -> None:
    with pytest.raises(DnsTemporaryError, match="REFUSED"):
        await resolver.mx("example.invalid")


@pytest.mark.parametrize("name", ["slow.test", "silent.test"])
async def test_timeout_is_temporary_and_bounded(server: DnsServer, name: str) -> None:
    resolver = make_resolver(server, timeout=SHORT)
    start = time.monotonic()
    with pytest.raises(DnsTemporaryError, match="timed out"):
        await resolver.mx(name)
    assert time.monotonic() - start < FAST_ENOUGH


@pytest.mark.parametrize("name", ["a" * 64 + ".test", "", "..", "bad..test", "a\x00b.test"])
async def test_bad_name(resolver: Resolver, name: str) -> None:
    with pytest.raises(DnsBadName) as info:
        await resolver.mx(name)
    assert not info.value.temporary


async def test_name_too_long(resolver: Resolver) -> None:
    # Every label is fine but the whole name is over 255 octets (RFC 1035 §2.3.4).
    with pytest.raises(DnsBadName):
        await resolver.mx(".".join(["a" * 60] * 5) + ".test")


async def test_yxdomain_is_a_bad_name(resolver: Resolver, monkeypatch: pytest.MonkeyPatch) -> None:
    async def yxdomain(*args: object, **kw: object) -> None:
        raise dns.resolver.YXDOMAIN()  # type: ignore[no-untyped-call]

    monkeypatch.setattr(resolver._resolver, "resolve", yxdomain)
    with pytest.raises(DnsBadName):
        await resolver.txt("dname.test")


async def test_idna_names(resolver: Resolver, server: DnsServer) -> None:
    expected = [MxRecord(10, "mx.xn--bcher-kva.test")]
    assert await resolver.mx("bücher.test") == expected
    assert await resolver.mx("XN--BCHER-KVA.test") == expected
    assert ("xn--bcher-kva.test", "MX") in server.queries
    assert await resolver.addresses("mx.bücher.test") == ["127.0.0.7"]


async def test_network_error_is_temporary(server: DnsServer) -> None:
    # A nameserver nobody listens on: ICMP port unreachable or a timeout, both temporary.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    r = Resolver(DnsSettings(nameservers=[f"127.0.0.1:{port}"], timeout=SHORT), cache_size=0)
    with pytest.raises(DnsTemporaryError):
        await r.mx("bob.test")


# -- addresses --------------------------------------------------------------------------------


async def test_addresses_a_then_aaaa(resolver: Resolver) -> None:
    # Within one RRset the server (like BIND) rotates the order; A always comes before AAAA.
    found = await resolver.addresses("mx1.bob.test")
    assert sorted(found[:2]) == ["127.0.0.3", "127.0.0.4"] and found[2:] == ["::1"]
    assert await resolver.addresses("v6only.test") == ["2001:db8::25"]


async def test_addresses_follow_cname(resolver: Resolver) -> None:
    found = await resolver.addresses("chain.bob.test")
    assert sorted(found[:2]) == ["127.0.0.3", "127.0.0.4"] and found[2:] == ["::1"]


async def test_ip_literal_needs_no_query(resolver: Resolver, server: DnsServer) -> None:
    before = len(server.queries)
    assert await resolver.addresses("192.0.2.7") == ["192.0.2.7"]
    assert await resolver.addresses("2001:DB8::0:1") == ["2001:db8::1"]
    assert len(server.queries) == before


async def test_addresses_errors(resolver: Resolver) -> None:
    with pytest.raises(DnsNxDomain):
        await resolver.addresses("nope.bob.test")
    with pytest.raises(DnsNxDomain):  # RFC 6604: the rcode describes the end of the chain
        await resolver.addresses("dangling.bob.test")
    with pytest.raises(DnsNoData):
        await resolver.addresses("txtonly.test")
    with pytest.raises(DnsTemporaryError):
        await resolver.addresses("broken.test")
    with pytest.raises(DnsBadName):
        await resolver.addresses("a" * 64 + ".test")


async def test_addresses_one_family_failing(resolver: Resolver) -> None:
    # AAAA fails but A answers: the A addresses are usable.
    assert await resolver.addresses("half.test") == ["127.0.0.5"]
    # A has no data and AAAA fails: the temporary failure wins (it may hide addresses).
    with pytest.raises(DnsTemporaryError):
        await resolver.addresses("nodata-tempfail.test")


# -- TXT --------------------------------------------------------------------------------------


async def test_txt_multiple_strings(resolver: Resolver) -> None:
    records = await resolver.txt("spf.test")
    by_data = {r.data[:6]: r for r in records}
    spf = by_data[b"v=spf1"]
    assert spf.strings == (b"v=spf1 ", b"ip4:192.0.2.0/24 ", b"-all")
    assert spf.text == "v=spf1 ip4:192.0.2.0/24 -all"
    long = by_data[b"xxxxxx"]
    assert [len(s) for s in long.strings] == [255, 255, 90]
    assert long.text == "x" * 600
    odd = by_data[b"\xff\xfeoops"]
    assert odd.text == "\ufffd\ufffdoops"


async def test_txt_large_answer_retried_over_tcp(resolver: Resolver, server: DnsServer) -> None:
    records = await resolver.txt("big.test")
    assert records == [TxtRecord(tuple([b"y" * 255] * 11 + [b"y" * 195]))]
    assert ("big.test", "TXT") in server.tcp_queries


async def test_txt_errors(resolver: Resolver) -> None:
    with pytest.raises(DnsNoData):
        await resolver.txt("mx1.bob.test")
    with pytest.raises(DnsNxDomain):
        await resolver.txt("_dmarc.nope.bob.test")


# -- PTR and forward-confirmed reverse DNS ----------------------------------------------------


async def test_ptr(resolver: Resolver) -> None:
    assert await resolver.ptr("127.0.0.3") == "mx1.bob.test"
    assert await resolver.ptr("::1") == "mx1.bob.test"
    # Two names: the first of the answer, whose order the server rotates.
    assert await resolver.ptr("127.0.0.4") in {"liar.test", "mx1.bob.test"}


@pytest.mark.parametrize("ip", ["127.0.0.200", "127.0.0.6", "not an ip", "", "10.0.0.1"])
async def test_ptr_failure_is_none(resolver: Resolver, ip: str) -> None:
    # unknown → NXDOMAIN, .6 → SERVFAIL, garbage, 10.x → REFUSED (not a served zone)
    assert await resolver.ptr(ip) is None


async def test_ptr_timeout_returns_none_fast(server: DnsServer) -> None:
    r = make_resolver(server, timeout=SLOW * 2, rdns_timeout=0.2)
    start = time.monotonic()
    assert await r.ptr("127.0.0.9") is None
    assert time.monotonic() - start < FAST_ENOUGH


async def test_ptr_never_raises_even_if_the_resolver_does(
    resolver: Resolver, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def explode(*args: object, **kw: object) -> None:
        raise OSError("network down")

    monkeypatch.setattr(resolver._resolver, "resolve", explode)
    assert await resolver.ptr("127.0.0.3") is None
    assert await resolver.forward_confirmed_rdns("127.0.0.3") is None


async def test_forward_confirmed_rdns(resolver: Resolver) -> None:
    assert await resolver.forward_confirmed_rdns("127.0.0.3") == "mx1.bob.test"
    assert await resolver.forward_confirmed_rdns("::1") == "mx1.bob.test"
    assert await resolver.forward_confirmed_rdns("0:0::1") == "mx1.bob.test"
    # Two PTR names: the first does not point back, the second does.
    assert await resolver.forward_confirmed_rdns("127.0.0.4") == "mx1.bob.test"


@pytest.mark.parametrize("ip", ["127.0.0.5", "127.0.0.10", "127.0.0.200", "127.0.0.6", "bogus"])
async def test_forward_confirmed_rdns_failures(resolver: Resolver, ip: str) -> None:
    assert await resolver.forward_confirmed_rdns(ip) is None


async def test_forward_confirmed_rdns_timeout_covers_both_steps(server: DnsServer) -> None:
    # The PTR answers at once, the forward lookup is slow: still bounded by rdns_timeout.
    r = make_resolver(server, timeout=SLOW * 2, rdns_timeout=0.3)
    start = time.monotonic()
    assert await r.forward_confirmed_rdns("127.0.0.7") is None
    assert time.monotonic() - start < FAST_ENOUGH


# -- configuration and cache ------------------------------------------------------------------


async def test_cache(server: DnsServer) -> None:
    cached = make_resolver(server, cache_size=100)
    before = server.queries.count(("mx1.bob.test", "A"))
    await cached.addresses("mx1.bob.test")
    await cached.addresses("mx1.bob.test")
    assert server.queries.count(("mx1.bob.test", "A")) == before + 1
    uncached = make_resolver(server, cache_size=0)
    await uncached.addresses("mx1.bob.test")
    await uncached.addresses("mx1.bob.test")
    assert server.queries.count(("mx1.bob.test", "A")) == before + 3


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("192.0.2.1", ("192.0.2.1", 53)),
        ("192.0.2.1:5353", ("192.0.2.1", 5353)),
        (" 192.0.2.1 ", ("192.0.2.1", 53)),
        ("2001:db8::1", ("2001:db8::1", 53)),
        ("[2001:DB8::1]", ("2001:db8::1", 53)),
        ("[2001:db8::1]:5353", ("2001:db8::1", 5353)),
    ],
)
def test_parse_nameserver(spec: str, expected: tuple[str, int]) -> None:
    assert parse_nameserver(spec) == expected


@pytest.mark.parametrize(
    "spec",
    ["", "ns.example.test", "192.0.2.1:", "192.0.2.1:0", "192.0.2.1:70000", "[::1", "[::1]x"],
)
def test_parse_nameserver_errors(spec: str) -> None:
    with pytest.raises(ValueError):
        parse_nameserver(spec)


@settings(deadline=None)
@given(st.ip_addresses(), st.integers(1, 65535))
def test_parse_nameserver_roundtrip(ip: Any, port: int) -> None:
    text = f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}"
    assert parse_nameserver(text) == (str(ip), port)


@settings(deadline=None)
@given(st.text(max_size=30))
def test_parse_nameserver_never_crashes(text: str) -> None:
    try:
        ip, port = parse_nameserver(text)
    except ValueError:
        return
    assert 0 < port <= 65535 and ip


def test_resolver_settings() -> None:
    settings_ = DnsSettings(nameservers=["192.0.2.1", "[2001:db8::1]:5353"], timeout=3.0)
    r = Resolver(settings_)
    assert r.nameservers == [("192.0.2.1", 53), ("2001:db8::1", 5353)]
    assert r._resolver.lifetime == 3.0
    assert r._resolver.timeout == 2.0  # per attempt
    assert Resolver.from_config(Config(hostname="h.test", dns=settings_)).nameservers == (
        r.nameservers
    )
    with pytest.raises(ValueError):
        Resolver(DnsSettings(nameservers=["ns.example.test"]))


def test_system_resolver(monkeypatch: pytest.MonkeyPatch) -> None:
    r = Resolver()  # reads /etc/resolv.conf when there is one, or falls back to 127.0.0.1
    assert r.nameservers

    real = dns.asyncresolver.Resolver

    def no_config(configure: bool = True) -> Any:
        if configure:
            raise dns.resolver.NoResolverConfiguration()  # type: ignore[no-untyped-call]
        return real(configure=False)

    monkeypatch.setattr(dns.asyncresolver, "Resolver", no_config)
    assert Resolver().nameservers == [("127.0.0.1", 53)]


def test_plain_string_nameservers_report_default_port() -> None:
    r = Resolver(DnsSettings(nameservers=["192.0.2.1"]))
    r._resolver.nameservers = ["192.0.2.9"]
    assert r.nameservers == [("192.0.2.9", 53)]


def test_errors_are_dns_errors() -> None:
    for cls in (DnsNxDomain, DnsNoData, DnsTemporaryError, DnsBadName):
        assert issubclass(cls, DnsError)
    assert DnsTemporaryError("n", "A", "x").temporary
    assert not DnsNxDomain("n", "A", "x").temporary


# -- the test server itself -------------------------------------------------------------------


async def _ask(server: DnsServer, name: str, rdtype: str, **kw: Any) -> dns.message.Message:
    q = dns.message.make_query(name, rdtype, **kw)
    return await dns.asyncquery.udp(q, "127.0.0.1", timeout=2, port=server.port)


async def test_server_truncates_without_edns_and_answers_over_tcp(server: DnsServer) -> None:
    reply = await _ask(server, "big.test", "TXT", use_edns=False)
    assert reply.flags & dns.flags.TC and not reply.answer
    q = dns.message.make_query("big.test", "TXT")
    reply = await dns.asyncquery.tcp(q, "127.0.0.1", timeout=2, port=server.port)
    assert not reply.flags & dns.flags.TC and reply.answer
    assert reply.flags & dns.flags.AA


async def test_server_negative_answers_carry_soa(server: DnsServer) -> None:
    reply = await _ask(server, "nope.bob.test", "A")
    assert reply.rcode() == dns.rcode.NXDOMAIN
    assert reply.authority and reply.authority[0].name.to_text() == "test."


async def test_server_ignores_garbage_and_refuses_other_opcodes(server: DnsServer) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.sendto(b"\x00garbage", ("127.0.0.1", server.port))
    q = dns.message.make_query("bob.test", "MX")
    q.set_opcode(dns.opcode.NOTIFY)
    reply = await dns.asyncquery.udp(q, "127.0.0.1", timeout=2, port=server.port)
    assert reply.rcode() == dns.rcode.NOTIMP
    assert server.answer(b"\x00") == (None, 0.0)


async def test_server_records_can_change() -> None:
    with DnsServer({"x.test": {"A": ["127.0.0.1"]}}, zones=["test"]) as srv:
        r = make_resolver(srv, timeout=SHORT)
        assert await r.addresses("x.test") == ["127.0.0.1"]
        srv.set("x.test", {"A": ["127.0.0.2"], "DELAY": {"AAAA": SLOW}})
        assert await r.addresses("x.test") == ["127.0.0.2"]  # AAAA times out: A is enough
        srv.set("x.test", None)
        with pytest.raises(DnsNxDomain):
            await r.addresses("x.test")


def test_server_in_a_separate_process(tmp_path: Path) -> None:
    records = tmp_path / "records.json"
    records.write_text(json.dumps({"sep.test": {"MX": [[5, "mx.sep.test"]]}}))
    script = Path(__file__).resolve().parent.parent / "dnsserver.py"
    proc = subprocess.Popen(
        [sys.executable, str(script), str(records)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("port ")
        port = int(line.split()[1])
        r = Resolver(DnsSettings(nameservers=[f"127.0.0.1:{port}"], timeout=2.0))
        assert asyncio.run(r.mx("sep.test")) == [MxRecord(5, "mx.sep.test")]
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        assert proc.wait(10) == 0
