"""Directory: domains in IDNA form, recipient resolution, login verification and throttling."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import pytest

from letterbird.config import Config
from letterbird.directory.addresses import InvalidAddress, normalise_domain, parse_address
from letterbird.directory.service import AuthOutcome, Directory, is_loopback
from letterbird.storage.sqlite import SqliteStorage


def test_domains_idna2008() -> None:
    assert normalise_domain("Bücher.TEST") == "xn--bcher-kva.test"
    assert normalise_domain("xn--bcher-kva.test") == "xn--bcher-kva.test"
    assert normalise_domain("EXAMPLE.test.") == "example.test"
    # IDNA2008 (not 2003): "faß" keeps its sharp s instead of mapping to "fass"
    assert normalise_domain("faß.test") == "xn--fa-hia.test"
    for bad in ("", "-bad-.test", "a..b", "xn--zz.test"):
        with pytest.raises(InvalidAddress):
            normalise_domain(bad)


def test_parse_address() -> None:
    a = parse_address("<Bob.Smith@Example.TEST>")
    assert (a.local, a.domain) == ("Bob.Smith", "example.test")
    assert a.key == ("bob.smith", "example.test")
    assert str(a.base("+")) == "Bob.Smith@example.test"
    assert str(parse_address("bob+tag@example.test").base("+")) == "bob@example.test"
    assert str(parse_address("+tag@example.test").base("+")) == "+tag@example.test"
    for bad in ("nobody", "@x.test", "a b@x.test", "x" * 65 + "@x.test"):
        with pytest.raises(InvalidAddress):
            parse_address(bad)


def test_is_loopback() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("127.0.0.3") and is_loopback("::1")
    assert not is_loopback("192.0.2.1") and not is_loopback(None) and not is_loopback("x")


async def _setup(directory: Directory) -> None:
    await directory.add_domain("example.test")
    await directory.add_domain("bücher.test")
    await directory.add_user("Bob@example.test", "pw-bob")
    await directory.add_user("carol@example.test", "pw-carol")


async def test_resolution(directory: Directory) -> None:
    await _setup(directory)

    async def accounts(addr: str) -> list[str] | None:
        r = await directory.resolve(addr)
        return None if r is None else sorted(a.address for a in r.accounts) + r.forward

    assert await accounts("bob@EXAMPLE.test") == ["Bob@example.test"]
    assert await accounts("BOB+lists@example.test") == ["Bob@example.test"]
    assert await accounts("nobody@example.test") is None
    assert await accounts("bob@other.test") is None  # not a local domain
    # postmaster of every domain, and bare <Postmaster>
    assert await accounts("postmaster@example.test") == ["Bob@example.test"]
    assert await accounts("Postmaster@xn--bcher-kva.test") == ["Bob@example.test"]
    assert await accounts("Postmaster") == ["Bob@example.test"]
    # aliases: one-to-many, nested, with external targets, loops terminate
    await directory.add_alias("team@example.test", ["bob@example.test", "crew@example.test"])
    await directory.add_alias("crew@example.test", ["carol@example.test", "x@remote.test"])
    await directory.add_alias("loop@example.test", ["loop2@example.test"])
    await directory.add_alias("loop2@example.test", ["loop@example.test", "bob@example.test"])
    assert await accounts("team@example.test") == [
        "Bob@example.test",
        "carol@example.test",
        "x@remote.test",
    ]
    assert await accounts("team+x@example.test") == [
        "Bob@example.test",
        "carol@example.test",
        "x@remote.test",
    ]
    assert await accounts("loop@example.test") == ["Bob@example.test"]
    # catch-all, written in Unicode
    assert await accounts("anything@bücher.test") is None
    await directory.add_alias("@bücher.test", ["carol@example.test"])
    assert await accounts("anything@xn--bcher-kva.test") == ["carol@example.test"]
    bob = await directory.get_user("bob@example.test")
    assert await directory.addresses_of(bob) == [
        "Bob@example.test",
        "loop2@example.test",
        "team@example.test",
    ]


async def test_configured_postmaster(storage: SqliteStorage, config: Config) -> None:
    d = Directory(storage, dataclasses.replace(config, postmaster="carol@example.test"))
    await _setup(d)
    r = await d.resolve("postmaster@example.test")
    assert r is not None and [a.address for a in r.accounts] == ["carol@example.test"]


async def test_user_rules(directory: Directory) -> None:
    await _setup(directory)
    with pytest.raises(InvalidAddress):
        await directory.add_user("a+b@example.test", "pw")
    with pytest.raises(InvalidAddress):
        await directory.add_user("dave@example.test", "")
    stored = await directory.get_user("bob@example.test")
    assert stored.password_hash.startswith("$argon2id$")
    assert "pw-bob" not in stored.password_hash


async def test_authentication_and_cache(directory: Directory) -> None:
    await _setup(directory)
    r = await directory.authenticate("BOB@example.test", "pw-bob", "127.0.0.1")
    assert r.ok and r.account is not None and r.account.local == "Bob"
    calls = 0
    real = directory.passwords.verify_async

    async def counting(stored: str, pw: str) -> bool:
        nonlocal calls
        calls += 1
        return await real(stored, pw)

    directory.passwords.verify_async = counting  # type: ignore[method-assign]
    assert (await directory.authenticate("bob@example.test", "pw-bob", "127.0.0.1")).ok
    assert calls == 0  # served from the cache of successes
    r = await directory.authenticate("bob@example.test", "wrong", "127.0.0.1")
    assert r.outcome is AuthOutcome.FAILED and calls == 1  # failures always verified
    r = await directory.authenticate("ghost@example.test", "x", "127.0.0.1")
    assert r.outcome is AuthOutcome.FAILED
    # a password change invalidates the cached success
    await directory.set_password("bob@example.test", "new-pw")
    assert not (await directory.authenticate("bob@example.test", "pw-bob", "127.0.0.1")).ok
    assert (await directory.authenticate("bob@example.test", "new-pw", "127.0.0.1")).ok


class _WithoutSharedCounters:
    """The storage without ``auth_failure_*`` (as a backend that lacks them): the Directory
    then counts failed logins in its own process."""

    def __init__(self, storage: SqliteStorage) -> None:
        self._storage = storage

    def __getattr__(self, name: str) -> Any:
        if name.startswith("auth_failure_"):
            raise AttributeError(name)
        return getattr(self._storage, name)


@pytest.mark.parametrize("counted", ["in storage", "in process"])
async def test_throttling(storage: SqliteStorage, config: Config, counted: str) -> None:
    """In real time: the storage counts failures on the database clock, which a test cannot
    move. The lockout is long while the test checks it holds and short when it checks that
    it ends, so a slow machine cannot make the test fail."""
    shared = counted == "in storage"
    auth = dataclasses.replace(config.auth, max_failures=3, lockout=600.0, failure_window=600.0)
    cfg = dataclasses.replace(config, auth=auth)
    backend: Any = storage if shared else _WithoutSharedCounters(storage)
    d = Directory(backend, cfg)
    await _setup(d)
    for _ in range(3):
        assert (await d.authenticate("bob@example.test", "bad", "192.0.2.7")).outcome is (
            AuthOutcome.FAILED
        )
    # locked: even the right password is refused, from any address
    r = await d.authenticate("bob@example.test", "pw-bob", "192.0.2.8")
    assert r.outcome is AuthOutcome.THROTTLED
    # the attacking address is locked for other accounts too
    r = await d.authenticate("carol@example.test", "pw-carol", "192.0.2.7")
    assert r.outcome is AuthOutcome.THROTTLED
    # carol from elsewhere is fine
    assert (await d.authenticate("carol@example.test", "pw-carol", "192.0.2.9")).ok
    # the failures were counted where intended: in the storage, for every process and node
    # to see (a refused login is not one more failure), or only in this process
    status = await storage.auth_failure_status(["u:bob@example.test", "ip:192.0.2.7"], 600)
    counts = {key: n for key, (n, _) in status.items()}
    if shared:
        assert counts == {"u:bob@example.test": 3, "ip:192.0.2.7": 3}
        other_node = Directory(storage, cfg)
        r = await other_node.authenticate("bob@example.test", "pw-bob", "192.0.2.10")
        assert r.outcome is AuthOutcome.THROTTLED
    else:
        assert counts == {}
    # the lockout runs from the latest failure: once it has passed, the right password works
    # (the lockout is read on every login: shortened to 0.2 s, it has passed 0.3 s later)
    d.config = dataclasses.replace(cfg, auth=dataclasses.replace(auth, lockout=0.2))
    await asyncio.sleep(0.3)
    assert (await d.authenticate("bob@example.test", "pw-bob", "192.0.2.8")).ok
