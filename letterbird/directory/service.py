"""The directory: domains, accounts, aliases, recipient resolution and login verification.

Recipient resolution order for ``local@domain`` of a local domain: an account, an alias, the
same two for the base address when ``local`` has a subaddress (``user+tag``), ``postmaster``
(RFC 5321 §4.5.1: exists for every domain, routed to the configured ``postmaster``), then the
domain's catch-all alias (``@domain``). Alias targets may be local (resolved again, up to a depth
limit, each account once) or external addresses (forwarded through the queue).

Login verification (DESIGN.md hot-path notes): argon2id runs in a worker thread; successful
verifications are cached for ``auth.cache_ttl`` keyed by an HMAC (per-process secret) of the
account, its stored hash and the password, so a password change invalidates the cache; failures
are never cached as successes. Failures are throttled per account and per client address.
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
import hmac
import ipaddress
import secrets
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from letterbird.config import Config
from letterbird.directory.addresses import Address, InvalidAddress, normalise_domain, parse_address
from letterbird.directory.passwords import Passwords
from letterbird.storage.interface import Account, Alias, Domain, NotFound, Storage

__all__ = ["AuthOutcome", "AuthResult", "Directory", "Resolution", "is_loopback"]

MAX_ALIAS_DEPTH = 10
DOMAIN_CACHE_TTL = 2.0
#: How long a successful recipient resolution is reused (every RCPT asks; the admin CLI and
#: other nodes change accounts and aliases behind this process's back, so only briefly).
RESOLVE_CACHE_TTL = 2.0


def is_loopback(host: str | None) -> bool:
    if not host:
        return False
    try:
        return ipaddress.ip_address(host.split("%", 1)[0]).is_loopback
    except ValueError:
        return host == "localhost"


@dataclass
class Resolution:
    """Where mail for one recipient goes."""

    accounts: list[Account] = field(default_factory=list)
    forward: list[str] = field(default_factory=list)  # external addresses (via the queue)


class AuthOutcome(enum.Enum):
    OK = "ok"
    FAILED = "failed"
    THROTTLED = "throttled"


@dataclass(frozen=True, slots=True)
class AuthResult:
    outcome: AuthOutcome
    account: Account | None = None

    @property
    def ok(self) -> bool:
        return self.outcome is AuthOutcome.OK


class _FailureLog:
    """Timestamps of recent failures per key, bounded."""

    def __init__(self, window: float, limit: int) -> None:
        self.window = window
        self.limit = limit
        self._fails: dict[str, deque[float]] = {}

    def _recent(self, key: str, now: float) -> deque[float]:
        q = self._fails.get(key)
        if q is None:
            return deque()
        while q and q[0] <= now - self.window:
            q.popleft()
        if not q:
            del self._fails[key]
        return q

    def blocked_until(self, key: str, now: float, lockout: float) -> float | None:
        q = self._recent(key, now)
        if self.limit and len(q) >= self.limit:
            return q[-1] + lockout
        return None

    def add(self, key: str, now: float) -> None:
        q = self._fails.setdefault(key, deque(maxlen=max(self.limit, 1) * 2))
        q.append(now)
        if len(self._fails) > 100_000:  # bound memory under a spraying attack
            for k in list(self._fails)[:10_000]:
                del self._fails[k]

    def clear(self, key: str) -> None:
        self._fails.pop(key, None)


class Directory:
    def __init__(
        self,
        storage: Storage,
        config: Config,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], object] | None = None,
    ) -> None:
        self.storage = storage
        self.config = config
        self.passwords = Passwords(config.auth)
        self._clock = clock
        self._sleep = sleep or asyncio.sleep
        self._secret = secrets.token_bytes(32)
        self._cache: dict[bytes, float] = {}
        self._verifying: dict[bytes, asyncio.Future[bool]] = {}
        self._dummy_hash: str | None = None
        self._domains: dict[str, tuple[bool, float]] = {}
        self._resolved: dict[str, tuple[Resolution, float]] = {}
        a = config.auth
        self._failures = _FailureLog(a.failure_window, a.max_failures)

    # -- administration ---------------------------------------------------------------------
    async def add_domain(self, name: str) -> Domain:
        domain = await self.storage.add_domain(normalise_domain(name))
        self._domains.pop(domain.name, None)
        self._resolved.clear()
        return domain

    async def remove_domain(self, name: str) -> None:
        await self.storage.remove_domain(normalise_domain(name))
        self._domains.pop(normalise_domain(name), None)
        self._resolved.clear()

    async def add_user(self, address: str, password: str) -> Account:
        addr = parse_address(address)
        if self.config.recipient_delimiter and self.config.recipient_delimiter in addr.local:
            raise InvalidAddress(
                f"a user name may not contain the subaddress separator "
                f"{self.config.recipient_delimiter!r}"
            )
        _check_password(password)
        hashed = await self.passwords.hash_async(password)
        account = await self.storage.add_account(addr.local, addr.domain, hashed)
        self._resolved.clear()
        return account

    async def find_user(self, address: str) -> Account | None:
        try:
            addr = parse_address(address)
        except InvalidAddress:
            return None
        return await self.storage.find_account(addr.local, addr.domain)

    async def get_user(self, address: str) -> Account:
        account = await self.find_user(address)
        if account is None:
            raise NotFound(f"no user {address}")
        return account

    async def set_password(self, address: str, password: str) -> None:
        _check_password(password)
        account = await self.get_user(address)
        await self.storage.set_password(account.id, await self.passwords.hash_async(password))

    async def remove_user(self, address: str) -> None:
        account = await self.get_user(address)
        await self.storage.remove_account(account.id)
        self._resolved.clear()

    async def add_alias(self, alias: str, targets: list[str]) -> Alias:
        local, domain = _split_alias(alias)
        if not targets:
            raise InvalidAddress("an alias needs at least one target")
        norm_targets = [str(parse_address(t)) for t in targets]
        created = await self.storage.add_alias(local, domain, norm_targets)
        self._resolved.clear()
        return created

    async def remove_alias(self, alias: str) -> None:
        local, domain = _split_alias(alias)
        await self.storage.remove_alias(local, domain)
        self._resolved.clear()

    # -- resolution ----------------------------------------------------------------------
    async def is_local_domain(self, domain: str) -> bool:
        hit = self._domains.get(domain)  # already in normal form (the usual case): no IDNA work
        if hit is not None and hit[1] > self._clock():
            return hit[0]
        try:
            return await self._domain_exists(normalise_domain(domain))
        except InvalidAddress:
            return False

    async def _domain_exists(self, domain: str) -> bool:
        """Whether ``domain`` (A-label) is ours; cached for DOMAIN_CACHE_TTL seconds.

        Every RCPT asks this several times; the admin CLI may add or remove domains from
        another process, so the answer is only cached briefly.
        """
        now = self._clock()
        hit = self._domains.get(domain)
        if hit is not None and hit[1] > now:
            return hit[0]
        exists = await self.storage.get_domain(domain) is not None
        if len(self._domains) > 10_000:
            self._domains.clear()
        self._domains[domain] = (exists, now + DOMAIN_CACHE_TTL)
        return exists

    async def postmaster_account(self) -> Account | None:
        if self.config.postmaster:
            account = await self.find_user(self.config.postmaster)
            if account is not None:
                return account
        accounts = await self.storage.list_accounts()
        return min(accounts, key=lambda a: a.id) if accounts else None

    async def resolve(self, address: str) -> Resolution | None:
        """Resolve a recipient of a local domain; None when nobody receives it.

        ``Postmaster`` without a domain (RFC 5321 §4.1.1.3) is accepted too. A successful
        resolution is reused for RESOLVE_CACHE_TTL seconds (forgotten at once when this
        directory changes accounts, aliases or domains); failures are never cached. The
        accounts' ``used`` may then lag by as long: the storage enforces quotas at commit.
        """
        now = self._clock()
        hit = self._resolved.get(address)
        if hit is not None and hit[1] > now:
            return Resolution(list(hit[0].accounts), list(hit[0].forward))
        found = await self._resolve(address)
        if found is not None:
            if len(self._resolved) > 10_000:
                self._resolved.clear()
            kept = Resolution(list(found.accounts), list(found.forward))
            self._resolved[address] = (kept, now + RESOLVE_CACHE_TTL)
        return found

    async def _resolve(self, address: str) -> Resolution | None:
        if address.casefold() == "postmaster":
            pm = await self.postmaster_account()
            return Resolution(accounts=[pm]) if pm else None
        try:
            addr = parse_address(address)
        except InvalidAddress:
            return None
        if not await self._domain_exists(addr.domain):
            return None
        result = Resolution()
        seen: set[tuple[str, str]] = set()
        ok = await self._resolve_into(addr, result, seen, 0)
        if not ok:
            return None
        # one delivery per account
        unique: dict[int, Account] = {}
        for a in result.accounts:
            unique.setdefault(a.id, a)
        result.accounts = list(unique.values())
        result.forward = list(dict.fromkeys(result.forward))
        return result

    async def _resolve_into(
        self, addr: Address, result: Resolution, seen: set[tuple[str, str]], depth: int
    ) -> bool:
        if addr.key in seen:
            return True  # an alias loop: already expanded, contributes nothing more
        seen.add(addr.key)
        if depth > MAX_ALIAS_DEPTH:
            return False
        if not await self._domain_exists(addr.domain):
            result.forward.append(str(addr))
            return True
        candidates = [addr]
        base = addr.base(self.config.recipient_delimiter)
        if base != addr:
            candidates.append(base)
        for cand in candidates:
            account = await self.storage.find_account(cand.local, cand.domain)
            if account is not None:
                result.accounts.append(account)
                return True
            alias = await self.storage.find_alias(cand.local, cand.domain)
            if alias is not None:
                return await self._expand(alias, result, seen, depth)
        if base.local.casefold() == "postmaster":
            pm = await self.postmaster_account()
            if pm is not None:
                result.accounts.append(pm)
                return True
        catch_all = await self.storage.find_alias(None, addr.domain)
        if catch_all is not None:
            return await self._expand(catch_all, result, seen, depth)
        return False

    async def _expand(
        self, alias: Alias, result: Resolution, seen: set[tuple[str, str]], depth: int
    ) -> bool:
        any_ok = False
        for target in alias.targets:
            try:
                t = parse_address(target)
            except InvalidAddress:
                continue
            if await self._resolve_into(t, result, seen, depth + 1):
                any_ok = True
        return any_ok

    async def addresses_of(self, account: Account) -> list[str]:
        """The account's own address and every alias that points at it (sender identities)."""
        out = [account.address]
        key = (account.local.casefold(), account.domain)
        for alias in await self.storage.list_aliases():
            if alias.local is None:
                continue
            for t in alias.targets:
                try:
                    if parse_address(t).key == key:
                        out.append(alias.address)
                        break
                except InvalidAddress:
                    continue
        return out

    # -- authentication ------------------------------------------------------------------
    def _cache_key(self, account: Account, password: str) -> bytes:
        msg = f"{account.id}\x00{account.password_hash}\x00{password}".encode()
        return hmac.new(self._secret, msg, hashlib.sha256).digest()

    async def authenticate(self, username: str, password: str, client: str | None) -> AuthResult:
        """Verify a login. Slow on failure (throttling delay), fast on cached success."""
        now = self._clock()
        lockout = self.config.auth.lockout
        user_key = "u:" + username.casefold()
        ip_key = "ip:" + (client or "?")
        if await self._blocked((user_key, ip_key), now, lockout):
            await self._delay()
            return AuthResult(AuthOutcome.THROTTLED)
        account = await self.find_user(username)
        ok = False
        if account is not None:
            ck = self._cache_key(account, password)
            expiry = self._cache.get(ck)
            if expiry is not None and expiry > now:
                return AuthResult(AuthOutcome.OK, account)
            ok = await self._verify_shared(ck, account.password_hash, password)
            if ok:
                self._remember(ck, now)
        else:
            # Spend comparable time on unknown users so timing does not reveal them.
            if self._dummy_hash is None:
                self._dummy_hash = await self.passwords.hash_async(secrets.token_hex(8))
            await self.passwords.verify_async(self._dummy_hash, password)
        if ok and account is not None:
            await self._clear_failures(user_key)
            return AuthResult(AuthOutcome.OK, account)
        await self._add_failures((user_key, ip_key), now)
        await self._delay()
        return AuthResult(AuthOutcome.FAILED)

    async def _verify_shared(self, key: bytes, stored: str, password: str) -> bool:
        """One argon2id run at a time per cache key: logins with the same credentials that
        arrive together (a client opening several connections at once) share its result
        rather than each costing ~0.3 s of CPU and 64 MiB. A waiter that is cancelled does
        not cancel the run for the others."""
        running = self._verifying.get(key)
        if running is None:
            running = asyncio.ensure_future(self.passwords.verify_async(stored, password))
            self._verifying[key] = running
            running.add_done_callback(lambda _: self._verifying.pop(key, None))
        return await asyncio.shield(running)

    # Failed logins are counted in the storage, on the database clock, so every process and
    # node serving it sees every failure (SQLite: every process that opens the database file;
    # PostgreSQL: every node). The log in this process (``_failures``, on ``clock``) is only
    # for a storage that lacks the ``auth_failure_*`` methods.
    async def _blocked(self, keys: tuple[str, ...], now: float, lockout: float) -> bool:
        shared = getattr(self.storage, "auth_failure_status", None)
        if shared is None:
            for key in keys:
                until = self._failures.blocked_until(key, now, lockout)
                if until is not None and now < until:
                    return True
            return False
        a = self.config.auth
        status = await shared(keys, a.failure_window)
        return any(
            a.max_failures and count >= a.max_failures and since < lockout
            for count, since in status.values()
        )

    async def _add_failures(self, keys: tuple[str, ...], now: float) -> None:
        shared = getattr(self.storage, "auth_failure_add", None)
        if shared is None:
            for key in keys:
                self._failures.add(key, now)
            return
        await shared(keys, self.config.auth.failure_window)

    async def _clear_failures(self, key: str) -> None:
        shared = getattr(self.storage, "auth_failure_clear", None)
        if shared is None:
            self._failures.clear(key)
            return
        await shared(key)

    def _remember(self, key: bytes, now: float) -> None:
        if len(self._cache) > 50_000:
            self._cache = {k: v for k, v in self._cache.items() if v > now}
        self._cache[key] = now + self.config.auth.cache_ttl

    async def _delay(self) -> None:
        d = self.config.auth.failure_delay
        if d > 0:
            await self._sleep(d)  # type: ignore[misc]


def _check_password(password: str) -> None:
    if not password:
        raise InvalidAddress("the password must not be empty")
    if len(password) > 1024:
        raise InvalidAddress("the password is too long")
    if any(c in password for c in "\r\n\x00"):
        raise InvalidAddress("the password may not contain CR, LF or NUL")


def _split_alias(alias: str) -> tuple[str | None, str]:
    alias = alias.strip()
    if alias.startswith("@"):
        return None, normalise_domain(alias[1:])
    addr = parse_address(alias)
    return addr.local, addr.domain
