"""Tests for letterbird.delivery.mx: next hops per RFC 5321 §5.1 and RFC 7505, over the
loopback test DNS server (tests/dnsserver.py), plus properties checked with a fake resolver."""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from typing import Any

import pytest
from dnsserver import DnsServer
from hypothesis import given, settings
from hypothesis import strategies as st

from letterbird.config import DnsSettings
from letterbird.delivery.dns import DnsNoData, DnsNxDomain, MxRecord, Resolver
from letterbird.delivery.mx import (
    STATUS_BAD_DOMAIN,
    STATUS_DNS_TEMPORARY,
    STATUS_MAIL_LOOP,
    STATUS_NO_ROUTE,
    STATUS_NULL_MX,
    NextHop,
    NextHopError,
    NextHops,
    parse_route,
    resolve_next_hops,
)

NORMAL = 2.0  # lookup timeout for answers expected at once (loopback; generous for loaded CI)
SHORT = 0.3  # lookup timeout where a slow answer (DELAY 5 s) must time out
SLOW = 5.0

RECORDS: dict[str, dict[str, Any]] = {
    # Ordering: preferences out of order, one host with both families.
    "bob.test": {"MX": [(20, "mx2.bob.test"), (10, "mx1.bob.test"), (30, "mx3.bob.test")]},
    "mx1.bob.test": {"A": ["127.0.0.11"], "AAAA": ["::11"]},
    "mx2.bob.test": {"A": ["127.0.0.12"]},
    "mx3.bob.test": {"AAAA": ["::13"]},
    # Shuffling: three at 10 behind one at 5.
    "many.test": {
        "MX": [(10, "a.many.test"), (10, "b.many.test"), (10, "c.many.test"), (5, "first.test")]
    },
    "a.many.test": {"A": ["127.0.1.1"]},
    "b.many.test": {"A": ["127.0.1.2"]},
    "c.many.test": {"A": ["127.0.1.3"]},
    "first.test": {"A": ["127.0.1.5"]},
    # Implicit MX.
    "implicit.test": {"A": ["127.0.0.20"], "AAAA": ["::20"]},
    "noaddr.test": {"TXT": ["no MX, no address"]},
    # Null MX (RFC 7505), and a "." wrongly mixed with a real MX.
    "null.test": {"MX": [(0, ".")]},
    "mixednull.test": {"MX": [(0, "."), (10, "mx1.bob.test")]},
    # Failures.
    "broken.test": {"SERVFAIL": True},
    "slow.test": {"MX": [(10, "mx1.bob.test")], "DELAY": SLOW},
    "deadmx.test": {"MX": [(10, "gone.test"), (20, "noaddr.test")]},
    "flakymx.test": {"MX": [(10, "gone.test"), (20, "broken.test")]},
    "halfmx.test": {"MX": [(10, "broken.test"), (20, "mx2.bob.test")]},
    "implicit-broken.test": {"SERVFAIL": ["A", "AAAA"]},
    # Loops: we are "self.test" / 127.0.0.99.
    "self.test": {"A": ["127.0.0.99"]},
    "loop1.test": {
        "MX": [(10, "mx1.bob.test"), (20, "SELF.test"), (20, "mx2.bob.test"), (30, "mx3.bob.test")]
    },
    "loop2.test": {"MX": [(10, "mx2.bob.test"), (20, "alias-of-self.test")]},
    "alias-of-self.test": {"A": ["127.0.0.99"]},
    "loop3.test": {"MX": [(10, "self.test"), (20, "mx2.bob.test")]},
    "loop4.test": {"MX": [(10, "mx2.bob.test"), (10, "alias-of-self.test")]},
    "shared.test": {"MX": [(10, "mx2.bob.test"), (20, "mx2b.test")]},
    "mx2b.test": {"A": ["127.0.0.12", "127.0.0.13"]},
    # IDNA.
    "bücher.test": {"MX": [(10, "mx.bücher.test")]},
    "mx.bücher.test": {"A": ["127.0.0.30"]},
    # Routes point here.
    "relay.test": {"A": ["127.0.0.40"], "AAAA": ["::40"]},
    "wide.test": {"MX": [(i, f"h{i}.wide.test") for i in range(15)]},
    **{f"h{i}.wide.test": {"A": [f"127.0.2.{i}", f"127.0.3.{i}"]} for i in range(15)},
}


@pytest.fixture(scope="module")
def server() -> Iterator[DnsServer]:
    with DnsServer(RECORDS) as srv:
        yield srv


@pytest.fixture
def resolver(server: DnsServer) -> Resolver:
    settings_ = DnsSettings(nameservers=[server.nameserver], timeout=NORMAL)
    return Resolver(settings_, cache_size=1000)


async def hops(domain: str, resolver: Resolver, **kw: Any) -> NextHops:
    kw.setdefault("rng", random.Random(1))
    return await resolve_next_hops(domain, resolver, **kw)


def assert_error(result: NextHops, status: str, temporary: bool) -> NextHopError:
    assert result.hops == ()
    assert not result.ok
    assert result.error is not None
    assert result.error.status == status
    assert result.error.temporary is temporary
    assert str(result.error).startswith(status + " ")
    return result.error


# -- MX ordering ------------------------------------------------------------------------------


async def test_mx_sorted_by_preference_a_then_aaaa(resolver: Resolver) -> None:
    result = await hops("bob.test", resolver, port=2525)
    assert result.ok and result.source == "mx" and result.domain == "bob.test"
    assert result.hops == (
        NextHop("mx1.bob.test", "127.0.0.11", 2525),
        NextHop("mx1.bob.test", "::11", 2525),
        NextHop("mx2.bob.test", "127.0.0.12", 2525),
        NextHop("mx3.bob.test", "::13", 2525),
    )
    assert result.mx_hosts == ("mx1.bob.test", "mx2.bob.test", "mx3.bob.test")
    assert result.hops[0] == ("mx1.bob.test", "127.0.0.11", 2525)  # plain tuples too
    assert (await resolve_next_hops("bob.test", resolver)).hops[0].port == 25


async def test_equal_preferences_shuffled_reproducibly(resolver: Resolver) -> None:
    orders = set()
    for seed in range(12):
        first = await hops("many.test", resolver, rng=random.Random(seed))
        again = await hops("many.test", resolver, rng=random.Random(seed))
        assert first.hops == again.hops
        assert first.mx_hosts[0] == "first.test"
        assert sorted(first.mx_hosts[1:]) == ["a.many.test", "b.many.test", "c.many.test"]
        orders.add(first.mx_hosts)
    assert len(orders) > 1
    assert (await resolve_next_hops("many.test", resolver)).mx_hosts[0] == "first.test"


async def test_limits(resolver: Resolver) -> None:
    result = await hops("wide.test", resolver, max_mx=3, max_hops=5)
    assert result.mx_hosts == ("h0.wide.test", "h1.wide.test", "h2.wide.test")
    assert len(result.hops) == 5
    assert [h.mx for h in result.hops] == ["h0.wide.test"] * 2 + ["h1.wide.test"] * 2 + [
        "h2.wide.test"
    ]
    assert len((await hops("wide.test", resolver)).hops) == 20  # DEFAULT_MAX_HOPS
    assert len((await hops("wide.test", resolver)).mx_hosts) == 10  # DEFAULT_MAX_MX


async def test_same_address_listed_once(resolver: Resolver) -> None:
    result = await hops("shared.test", resolver)
    assert [h.ip for h in result.hops] == ["127.0.0.12", "127.0.0.13"]
    assert [h.mx for h in result.hops] == ["mx2.bob.test", "mx2b.test"]


# -- implicit MX, null MX, errors -------------------------------------------------------------


async def test_implicit_mx(resolver: Resolver) -> None:
    result = await hops("implicit.test", resolver, port=26)
    assert result.source == "implicit"
    assert result.hops == (
        NextHop("implicit.test", "127.0.0.20", 26),
        NextHop("implicit.test", "::20", 26),
    )


async def test_implicit_mx_without_address_is_permanent(resolver: Resolver) -> None:
    assert_error(await hops("noaddr.test", resolver), STATUS_NO_ROUTE, False)


async def test_implicit_mx_temporary_address_failure(resolver: Resolver) -> None:
    assert_error(await hops("implicit-broken.test", resolver), STATUS_DNS_TEMPORARY, True)


async def test_null_mx(resolver: Resolver, server: DnsServer) -> None:
    before = len(server.queries)
    error = assert_error(await hops("null.test", resolver), STATUS_NULL_MX, False)
    assert "does not accept mail" in error.message
    assert server.queries[before:] == [("null.test", "MX")]  # no address lookups


async def test_null_mx_mixed_with_real_mx_is_ignored(resolver: Resolver) -> None:
    result = await hops("mixednull.test", resolver)
    assert result.mx_hosts == ("mx1.bob.test",)
    assert result.hops[0].ip == "127.0.0.11"


async def test_nxdomain_is_permanent(resolver: Resolver) -> None:
    assert_error(await hops("nope.test", resolver), STATUS_BAD_DOMAIN, False)


async def test_invalid_domain_is_permanent(resolver: Resolver) -> None:
    assert_error(await hops("a" * 64 + ".test", resolver), STATUS_BAD_DOMAIN, False)
    assert_error(await hops("", resolver), STATUS_BAD_DOMAIN, False)
    assert_error(await hops("bad..test", resolver), STATUS_BAD_DOMAIN, False)
    # Labels fine, whole name over 255 octets: refused by the DNS layer.
    too_long = ".".join(["a" * 60] * 5) + ".test"
    assert_error(await hops(too_long, resolver), STATUS_BAD_DOMAIN, False)


async def test_servfail_is_temporary(resolver: Resolver) -> None:
    assert_error(await hops("broken.test", resolver), STATUS_DNS_TEMPORARY, True)


async def test_timeout_is_temporary(server: DnsServer) -> None:
    resolver = Resolver(DnsSettings(nameservers=[server.nameserver], timeout=SHORT))
    start = time.monotonic()
    assert_error(await hops("slow.test", resolver), STATUS_DNS_TEMPORARY, True)
    assert time.monotonic() - start < 2.0


async def test_no_mx_host_resolves_is_permanent(resolver: Resolver) -> None:
    result = await hops("deadmx.test", resolver)
    assert_error(result, STATUS_NO_ROUTE, False)
    assert result.mx_hosts == ("gone.test", "noaddr.test")
    assert len(result.skipped) == 2 and result.skipped[0].startswith("gone.test: ")


async def test_mx_host_temporary_failure_is_temporary(resolver: Resolver) -> None:
    assert_error(await hops("flakymx.test", resolver), STATUS_DNS_TEMPORARY, True)


async def test_failing_mx_host_skipped(resolver: Resolver) -> None:
    result = await hops("halfmx.test", resolver)
    assert result.ok
    assert result.hops == (NextHop("mx2.bob.test", "127.0.0.12", 25),)
    assert result.mx_hosts == ("broken.test", "mx2.bob.test")
    assert result.skipped and result.skipped[0].startswith("broken.test: ")


# -- loops ------------------------------------------------------------------------------------


async def test_self_by_name_prunes_equal_and_less_preferred(resolver: Resolver) -> None:
    result = await hops("loop1.test", resolver, local_hostnames=["Self.Test."])
    assert result.mx_hosts == ("mx1.bob.test",)
    assert {h.mx for h in result.hops} == {"mx1.bob.test"}
    # Not ourselves: every MX is kept.
    other = await hops("loop1.test", resolver, local_hostnames=["other.test", "bad..name"])
    assert len(other.mx_hosts) == 4


async def test_self_by_address(resolver: Resolver) -> None:
    result = await hops("loop2.test", resolver, local_addresses=["127.0.0.99", "junk"])
    assert result.mx_hosts == ("mx2.bob.test",)
    assert_error(
        await hops("loop4.test", resolver, local_addresses=["127.0.0.99"]), STATUS_MAIL_LOOP, False
    )


async def test_self_as_best_mx_is_a_loop(resolver: Resolver) -> None:
    error = assert_error(
        await hops("loop3.test", resolver, local_hostnames=["self.test"]), STATUS_MAIL_LOOP, False
    )
    assert "loops" in error.message


async def test_implicit_mx_to_self_is_a_loop(resolver: Resolver) -> None:
    result = await hops("self.test", resolver, local_addresses=["127.0.0.99"])
    assert_error(result, STATUS_MAIL_LOOP, False)
    assert result.source == "implicit"
    assert_error(await hops("self.test", resolver, local_hostnames=["self.test"]), "5.4.6", False)


# -- routes -----------------------------------------------------------------------------------


async def test_route_to_ip_bypasses_dns(resolver: Resolver, server: DnsServer) -> None:
    before = len(server.queries)
    routes = {"Routed.Test": "127.0.0.50:2526", "v6.test": "[::1]:2527"}
    result = await hops("routed.TEST.", resolver, routes=routes)
    assert result.source == "route"
    assert result.hops == (NextHop("127.0.0.50", "127.0.0.50", 2526),)
    assert (await hops("v6.test", resolver, routes=routes)).hops == (NextHop("::1", "::1", 2527),)
    assert len(server.queries) == before


async def test_route_to_host_resolves_only_the_host(resolver: Resolver, server: DnsServer) -> None:
    before = len(server.queries)
    result = await hops("bob.test", resolver, routes={"bob.test": "relay.test"}, port=587)
    assert result.hops == (
        NextHop("relay.test", "127.0.0.40", 587),
        NextHop("relay.test", "::40", 587),
    )
    assert {q[0] for q in server.queries[before:]} == {"relay.test"}


async def test_route_idna_both_ways(resolver: Resolver) -> None:
    by_unicode = await hops("xn--bcher-kva.test", resolver, routes={"BÜCHER.test": "127.0.0.2:25"})
    assert by_unicode.hops == (NextHop("127.0.0.2", "127.0.0.2", 25),)
    by_alabel = await hops("bücher.test", resolver, routes={"xn--bcher-kva.test": "127.0.0.3"})
    assert by_alabel.hops == (NextHop("127.0.0.3", "127.0.0.3", 25),)


async def test_wildcard_route_is_a_smarthost(resolver: Resolver) -> None:
    routes = {"*": "127.0.0.60:10025", "bob.test": "127.0.0.61:25", "bad..key": "127.0.0.62"}
    assert (await hops("anything.test", resolver, routes=routes)).hops[0].ip == "127.0.0.60"
    assert (await hops("bob.test", resolver, routes=routes)).hops[0].ip == "127.0.0.61"
    # Without a matching route, MX resolution applies.
    assert (await hops("bob.test", resolver, routes={"x.test": "127.0.0.1"})).source == "mx"


@pytest.mark.parametrize("target", ["relay.test:99999", "[relay.test]:25", "nope.test", ""])
async def test_broken_route_is_temporary(resolver: Resolver, target: str) -> None:
    error = assert_error(
        await hops("bob.test", resolver, routes={"bob.test": target}), STATUS_DNS_TEMPORARY, True
    )
    assert "route" in error.message


# -- IDNA and address literals ----------------------------------------------------------------


async def test_idna_domain(resolver: Resolver, server: DnsServer) -> None:
    result = await hops("BÜCHER.test", resolver)
    assert result.domain == "xn--bcher-kva.test"
    assert result.hops == (NextHop("mx.xn--bcher-kva.test", "127.0.0.30", 25),)
    assert ("xn--bcher-kva.test", "MX") in server.queries


async def test_address_literals(resolver: Resolver) -> None:
    v4 = await hops("[192.0.2.5]", resolver, port=26)
    assert v4.source == "literal" and v4.hops == (NextHop("192.0.2.5", "192.0.2.5", 26),)
    v6 = await hops("[IPv6:2001:DB8::5]", resolver)
    assert v6.hops == (NextHop("2001:db8::5", "2001:db8::5", 25),)
    for bad in ["[2001:db8::5]", "[IPv6:192.0.2.5]", "[bob.test]", "[]"]:
        assert_error(await hops(bad, resolver), STATUS_BAD_DOMAIN, False)
    assert_error(
        await hops("[127.0.0.99]", resolver, local_addresses=["127.0.0.99"]),
        STATUS_MAIL_LOOP,
        False,
    )


# -- parse_route ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("relay.test:2525", ("relay.test", 2525)),
        ("Relay.Test", ("relay.test", 25)),
        ("bücher.test:26", ("xn--bcher-kva.test", 26)),
        ("192.0.2.1", ("192.0.2.1", 25)),
        ("192.0.2.1:587", ("192.0.2.1", 587)),
        ("2001:db8::1", ("2001:db8::1", 25)),
        ("[2001:db8::1]", ("2001:db8::1", 25)),
        ("[2001:db8::1]:587", ("2001:db8::1", 587)),
    ],
)
def test_parse_route(target: str, expected: tuple[str, int]) -> None:
    assert parse_route(target, 25) == expected


@pytest.mark.parametrize(
    "target", ["", "relay.test:", "relay.test:0", "relay.test:x", "[::1", "[::1]x", "[a.test]"]
)
def test_parse_route_errors(target: str) -> None:
    with pytest.raises(ValueError):
        parse_route(target, 25)


@settings(deadline=None)
@given(st.ip_addresses(), st.integers(1, 65535))
def test_parse_route_ip_roundtrip(ip: Any, port: int) -> None:
    text = f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}"
    assert parse_route(text, 25) == (str(ip), port)


@settings(deadline=None)
@given(st.text(max_size=40))
def test_parse_route_never_crashes(text: str) -> None:
    try:
        host, port = parse_route(text, 25)
    except ValueError:
        return
    assert host and 0 < port <= 65535


# -- properties over a fake resolver ----------------------------------------------------------


class FakeResolver:
    """Every host ``hN`` has address ``10.0.0.N``; the MX set is given."""

    def __init__(self, records: list[MxRecord] | None, exc: Exception | None = None) -> None:
        self.records = records
        self.exc = exc

    async def mx(self, domain: str) -> list[MxRecord]:
        if self.exc is not None:
            raise self.exc
        assert self.records is not None
        return self.records

    async def addresses(self, host: str) -> list[str]:
        if host.startswith("nx"):
            raise DnsNxDomain(host, "A", "gone")
        return [f"10.0.0.{host[1:]}"] if host.startswith("h") else []


mx_sets = st.lists(
    st.tuples(st.integers(0, 5), st.integers(0, 30)),
    min_size=1,
    max_size=12,
    unique_by=lambda t: t[1],
)


@settings(deadline=None, max_examples=100)
@given(mx_sets, st.sets(st.integers(0, 30), max_size=3), st.integers(0, 2**32))
async def test_property_order_and_pruning(
    mx: list[tuple[int, int]], selves: set[int], seed: int
) -> None:
    records = [MxRecord(pref, f"h{n}") for pref, n in mx]
    result = await resolve_next_hops(
        "d.test",
        FakeResolver(records),
        local_hostnames=[f"h{n}" for n in selves if n % 2 == 0],
        local_addresses=[f"10.0.0.{n}" for n in selves if n % 2 == 1],
        rng=random.Random(seed),
        max_mx=100,
        max_hops=100,
    )
    pref_of = {f"h{n}": pref for pref, n in mx}
    self_prefs = [pref for pref, n in mx if n in selves]
    expected = {f"h{n}" for pref, n in mx if not self_prefs or pref < min(self_prefs)}
    if not expected:
        assert result.error is not None and result.error.status == STATUS_MAIL_LOOP
        return
    assert set(result.mx_hosts) == expected
    prefs = [pref_of[h.mx] for h in result.hops]
    assert prefs == sorted(prefs)
    assert [h.ip for h in result.hops] == [f"10.0.0.{h[1:]}" for h in result.mx_hosts]


async def test_fake_resolver_errors_and_empty_answers() -> None:
    nx = await resolve_next_hops("d.test", FakeResolver(None, DnsNxDomain("d.test", "MX", "x")))
    assert_error(nx, STATUS_BAD_DOMAIN, False)
    # An empty MX list (possible from a custom resolver) is the same as no MX: implicit MX.
    empty = await resolve_next_hops("h7", FakeResolver([]))
    assert empty.source == "implicit" and empty.hops == (NextHop("h7", "10.0.0.7", 25),)
    nodata = await resolve_next_hops("h8", FakeResolver(None, DnsNoData("h8", "MX", "x")))
    assert nodata.hops == (NextHop("h8", "10.0.0.8", 25),)
    # The MX lookup said the name exists, then the address lookup says it does not.
    vanished = await resolve_next_hops("nx.test", FakeResolver(None, DnsNoData("nx", "MX", "x")))
    assert_error(vanished, STATUS_BAD_DOMAIN, False)
    nulls = await resolve_next_hops("d.test", FakeResolver([MxRecord(0, "."), MxRecord(5, ".")]))
    assert_error(nulls, STATUS_NULL_MX, False)
