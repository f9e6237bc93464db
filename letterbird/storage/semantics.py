"""Mailbox semantics, once, above the backends (DESIGN.md §3; pymap's BaseSession idea).

The SQLite backend (sync functions on a writer thread) and the PostgreSQL backend (asyncpg)
differ in SQL dialect, locking and transactions; what a row means, which names are allowed,
when an operation is refused and with which error, how quota is counted and what a change
publishes are the same everywhere, and live here. Everything in this module is pure: it takes
rows and values and returns values or raises. A backend runs its own statements and hands
their results to these functions, so each backend only writes storage primitives.

Column lists are plain SQL both dialects read alike (no placeholders); the mappings read rows
by position, so a backend selects the columns in the order of the list it uses.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence, Sized
from dataclasses import dataclass
from typing import Any, TypeVar

from letterbird.storage import names
from letterbird.storage.events import ChangeEvent, ChangeKind
from letterbird.storage.interface import (
    Account,
    AccountExists,
    Alias,
    AppendTarget,
    Domain,
    FlagMode,
    Mailbox,
    MailboxExists,
    MailboxStatus,
    NotFound,
    Notification,
    OutgoingMessage,
    QueueEntry,
    QueueRecipient,
    QuotaExceeded,
    StorageError,
    StoreResult,
)

__all__ = [
    "ACCOUNT_COLS",
    "ALIAS_COLS",
    "ENTRY_COLS",
    "INTEGRITY_REFCOUNTS",
    "INTEGRITY_USAGE",
    "MAILBOX_COLS",
    "MESSAGE_COLS",
    "META_COLS",
    "NO_ACCOUNT",
    "NO_MAILBOX",
    "Rename",
    "account_exists",
    "account_of",
    "alias_exists",
    "alias_norm",
    "alias_of",
    "allocated",
    "blob_counts",
    "blob_refs",
    "charged",
    "check_domain_empty",
    "copied",
    "delete_name",
    "domain_exists",
    "domain_of",
    "entry_cols",
    "entry_of",
    "expunged",
    "flag_changes",
    "flags_stored",
    "inferior_exists",
    "json_to_rcpts",
    "mailbox_changed",
    "mailbox_exists",
    "mailbox_of",
    "need",
    "need_changed",
    "no_domain",
    "no_mailbox",
    "no_queued_message",
    "norm_local",
    "notification_to_store",
    "rcpts_by_domain",
    "rcpts_to_json",
    "refcount_problems",
    "removal",
    "rename_plan",
    "sorted_flags",
    "status_of",
    "usage_of",
    "usage_problems",
    "wants_delivery",
    "within",
]

R = TypeVar("R")
F = TypeVar("F")

# -- column lists and row → value mapping -----------------------------------------------------
ACCOUNT_COLS = (
    "a.id, a.local, d.name, a.password_hash, a.quota, a.used "
    "FROM accounts a JOIN domains d ON d.id = a.domain_id"
)
ALIAS_COLS = "a.id, a.local, d.name, a.targets FROM aliases a JOIN domains d ON d.id = a.domain_id"
MAILBOX_COLS = "id, account_id, name, role, uidvalidity, uidnext, highestmodseq, subscribed"
# a MessageRecord's columns, and fetch_meta's
MESSAGE_COLS = (
    "m.uid, m.modseq, m.flags, m.internaldate, m.size, b.hash, b.structure "
    "FROM messages m JOIN blobs b ON b.id = m.blob_id"
)
META_COLS = (
    "m.uid, m.modseq, m.internaldate, m.size, b.hash "
    "FROM messages m JOIN blobs b ON b.id = m.blob_id"
)
_ENTRY_FIELDS = (
    "e.id, e.queue_id, e.domain, e.recipients, e.due, e.attempts, e.last_error, e.owner, "
    "e.lease_until, e.created, e.warned, q.sender, q.envid, q.ret, b.hash, b.size"
)


def entry_cols(entries: str = "queue_entries") -> str:
    """The columns :func:`entry_of` reads, from ``entries`` (a table or a CTE with the
    ``queue_entries`` columns) as ``e`` joined to its message and blob."""
    return (
        f"{_ENTRY_FIELDS} FROM {entries} e JOIN queue_messages q ON q.id = e.queue_id "
        "JOIN blobs b ON b.id = q.blob_id"
    )


ENTRY_COLS = entry_cols()


def domain_of(row: Any) -> Domain:
    return Domain(row[0], row[1])


def account_of(row: Any) -> Account:
    return Account(row[0], row[1], row[2], row[3], row[4], row[5])


def alias_of(row: Any, targets: Iterable[str]) -> Alias:
    """An :data:`ALIAS_COLS` row; ``targets`` decoded from ``row[3]`` by the backend."""
    return Alias(row[0], row[1], row[2], tuple(t for t in targets if t))


def mailbox_of(row: Any) -> Mailbox:
    return Mailbox(row[0], row[1], row[2], row[3], row[4], row[5], row[6], bool(row[7]))


def status_of(row: Any, agg: Sequence[Any]) -> MailboxStatus:
    """A mailbox row and its ``(messages, octets, unseen, first unseen uid)``."""
    return MailboxStatus(mailbox_of(row), agg[0], agg[2], int(agg[1]), agg[3])


def entry_of(r: Any) -> QueueEntry:
    return QueueEntry(
        r[0],
        r[1],
        r[2],
        json_to_rcpts(r[3]),
        r[4],
        r[5],
        r[6],
        r[7],
        r[8],
        r[9],
        bool(r[10]),
        r[11],
        r[12],
        r[13],
        r[14],
        r[15],
    )


# -- stored forms --------------------------------------------------------------------------
def rcpts_to_json(rcpts: Sequence[QueueRecipient]) -> str:
    return json.dumps([[r.address, list(r.notify), r.orcpt] for r in rcpts])


def json_to_rcpts(text: str) -> tuple[QueueRecipient, ...]:
    return tuple(QueueRecipient(a, tuple(n), o) for a, n, o in json.loads(text))


def sorted_flags(flags: Iterable[str]) -> list[str]:
    """Flags as stored: each once, sorted."""
    return sorted(set(flags))


def norm_local(local: str) -> str:
    """An account's or alias's local part as compared (case-insensitively)."""
    return local.casefold()


def alias_norm(local: str | None) -> str:
    """:func:`norm_local`; the domain's catch-all (``None``) is stored as ``""``."""
    return "" if local is None else local.casefold()


def rcpts_by_domain(recipients: Iterable[QueueRecipient]) -> dict[str, str]:
    """One queue entry per destination domain (DESIGN.md §6): domain → recipients JSON, in
    the order the domains first appear."""
    by_domain: dict[str, list[QueueRecipient]] = {}
    for r in recipients:
        by_domain.setdefault(r.address.rpartition("@")[2].lower(), []).append(r)
    return {d: rcpts_to_json(rs) for d, rs in by_domain.items()}


# -- refusals: one wording for every backend ------------------------------------------------
NO_ACCOUNT = "no such account"
NO_MAILBOX = "no such mailbox"


def need(value: R | None, what: str) -> R:
    """``value``, or :class:`NotFound` (``what``) when the lookup found nothing."""
    if value is None:
        raise NotFound(what)
    return value


def need_changed(count: int, what: str) -> None:
    """:class:`NotFound` (``what``) when a statement changed no row."""
    if not count:
        raise NotFound(what)


def no_domain(name: str, *, adding: bool = False) -> str:
    return f"no domain {name}; add it first" if adding else f"no domain {name}"


def no_mailbox(name: str) -> str:
    return f"no mailbox {name}"


def no_queued_message(queue_id: str) -> NotFound:
    return NotFound(f"no queued message {queue_id}")


def domain_exists(name: str) -> AccountExists:
    return AccountExists(f"domain {name} exists already")


def account_exists(local: str, domain: str) -> AccountExists:
    return AccountExists(f"account {local}@{domain} exists already")


def alias_exists(local: str | None, domain: str) -> AccountExists:
    return AccountExists(f"alias {local if local is not None else ''}@{domain} exists already")


def mailbox_exists(name: str) -> MailboxExists:
    return MailboxExists(f"mailbox {name} exists already")


def inferior_exists(new: str) -> MailboxExists:
    """A rename whose inferior would take a name in use (``A`` → ``B`` while ``A/x`` and
    ``B/x`` exist): refused, nothing renamed."""
    return MailboxExists(f"a mailbox under {new} exists already")


def check_domain_empty(name: str, accounts: int) -> None:
    """A domain is removed only when no account is left in it (aliases go with it)."""
    if accounts:
        raise StorageError(f"domain {name} still has {accounts} account(s); remove them first")


# -- quota ----------------------------------------------------------------------------------
def charged(row: Any, account_id: int, size: int) -> None:
    """After charging an account ``size`` octets: ``row`` is its ``(used, quota)`` now (None:
    no such account). Over a quota (0 = none) refuses; a release (``size`` <= 0) never does."""
    if row is None:
        raise NotFound(NO_ACCOUNT)
    if size > 0 and row[1] and row[0] > row[1]:
        raise QuotaExceeded(f"account {account_id} is over its quota")


def usage_of(row: Any) -> tuple[int, int]:
    """:meth:`Storage.quota_usage` from the account's ``(used, quota)`` row."""
    if row is None:
        raise NotFound(NO_ACCOUNT)
    return int(row[0]), int(row[1])


# -- mailboxes ------------------------------------------------------------------------------
def mailbox_changed(account_id: int, mailbox_id: int) -> list[ChangeEvent]:
    """What a mailbox create, rename or delete publishes."""
    return [ChangeEvent(account_id, mailbox_id, ChangeKind.MAILBOX, (), 0)]


def delete_name(name: str) -> str:
    """The canonical name of a mailbox to delete; INBOX cannot be deleted."""
    name = names.normalise(name)
    if name == "INBOX":
        raise StorageError("INBOX cannot be deleted")
    return name


@dataclass(frozen=True, slots=True)
class Rename:
    """A checked RENAME (RFC 3501 §6.3.5), which a backend carries out in one transaction:

    - the mailbox ``old`` must exist (:class:`NotFound`) and ``new`` must not
      (:class:`MailboxExists`): :meth:`check`;
    - renaming INBOX (:attr:`moves_inbox`) creates ``new`` with no role and moves INBOX's
      messages there, leaving INBOX empty; inferior names are not renamed;
    - any other mailbox is renamed with its inferiors: every name under :attr:`prefix`
      becomes :meth:`inferior` of itself.
    """

    old: str  # canonical
    new: str  # validated

    @property
    def moves_inbox(self) -> bool:
        return self.old == "INBOX"

    @property
    def prefix(self) -> str:
        """What the names of ``old``'s inferiors start with."""
        return self.old + names.DELIMITER

    def inferior(self, name: str) -> str:
        """The new name of the inferior ``name`` (which starts with :attr:`prefix`)."""
        return self.new + names.DELIMITER + name[len(self.prefix) :]

    def check(self, found: R | None, taken: object) -> R:
        """``found``: the row of ``old`` (None: missing); ``taken``: whether ``new`` exists."""
        row = need(found, no_mailbox(self.old))
        if taken:
            raise mailbox_exists(self.new)
        return row


def rename_plan(old: str, new: str) -> Rename:
    """Names checked before any transaction (:class:`names.InvalidMailboxName`)."""
    return Rename(names.normalise(old), names.validate(new))


# -- messages -------------------------------------------------------------------------------
def wants_delivery(
    targets: Sequence[AppendTarget], outgoing: OutgoingMessage | None, queue_id: str | None
) -> bool:
    """Whether :meth:`Storage.deliver` has anything to store (no mailbox and no recipient:
    nothing); a queued message needs a queue id (ValueError)."""
    if not targets and (outgoing is None or not outgoing.recipients):
        return False
    if outgoing is not None and not queue_id:
        raise ValueError("a queued message needs a queue id")
    return True


def blob_refs(targets: Sequence[AppendTarget], outgoing: OutgoingMessage | None) -> int:
    """References a delivery takes on its blob: one per mailbox entry, one for the queue."""
    return len(targets) + (1 if outgoing is not None else 0)


def allocated(row: Any, uids: int) -> tuple[int, int]:
    """(first uid, modseq) from the ``(uidnext, highestmodseq)`` a mailbox bump of ``uids``
    UIDs and one modseq returned (None: no such mailbox)."""
    if row is None:
        raise NotFound(NO_MAILBOX)
    return int(row[0]) - uids, int(row[1])


def blob_counts(blob_ids: Iterable[int]) -> dict[int, int]:
    """References per blob id."""
    counts: dict[int, int] = {}
    for b in blob_ids:
        counts[b] = counts.get(b, 0) + 1
    return counts


def flag_changes(
    rows: Iterable[tuple[int, int, F]],
    decode: Callable[[F], frozenset[str]],
    mode: FlagMode,
    flags: frozenset[str],
    unchanged_since: int | None,
) -> list[tuple[int, frozenset[str]]]:
    """STORE: the ``(uid, new flags)`` of the ``(uid, modseq, stored flags)`` rows that change.
    A message modified after ``unchanged_since`` (CONDSTORE) is left alone."""
    changes: list[tuple[int, frozenset[str]]] = []
    for uid, modseq, stored in rows:
        if unchanged_since is not None and modseq > unchanged_since:
            continue
        cur = decode(stored)
        if mode is FlagMode.ADD:
            new = cur | flags
        elif mode is FlagMode.REMOVE:
            new = cur - flags
        else:
            new = flags
        if new != cur:
            changes.append((uid, new))
    return changes


def flags_stored(
    account_id: int, mailbox_id: int, changes: Sequence[tuple[int, frozenset[str]]], modseq: int
) -> tuple[list[StoreResult], list[ChangeEvent]]:
    """What :meth:`Storage.store_flags` returns and publishes once ``changes`` are written
    under one new ``modseq``."""
    results = [StoreResult(u, modseq, f) for u, f in changes]
    uids = tuple(u for u, _ in changes)
    return results, [ChangeEvent(account_id, mailbox_id, ChangeKind.FLAGS, uids, modseq)]


def copied(
    account_id: int, mailbox_id: int, src_uids: Iterable[int], first: int, modseq: int
) -> tuple[list[tuple[int, int]], list[ChangeEvent]]:
    """COPY into ``mailbox_id``: the source uids (ascending) get consecutive uids from
    ``first``; returns ``(source uid, new uid)`` pairs and what the copy publishes."""
    mapping = [(u, first + i) for i, u in enumerate(src_uids)]
    uids = tuple(m[1] for m in mapping)
    return mapping, [ChangeEvent(account_id, mailbox_id, ChangeKind.APPEND, uids, modseq)]


def expunged(
    account_id: int, mailbox_id: int, gone: list[int], modseq: int
) -> tuple[list[int], list[ChangeEvent]]:
    """What an expunge of the (ascending) uids ``gone`` returns and publishes."""
    return gone, [ChangeEvent(account_id, mailbox_id, ChangeKind.EXPUNGE, tuple(gone), modseq)]


def within(limit: int, *parts: Sized) -> bool:
    """:meth:`Storage.changes_since_bounded`: every part holds at most ``limit`` items."""
    return all(len(p) <= limit for p in parts)


# -- the queue ------------------------------------------------------------------------------
def notification_to_store(n: Notification | None) -> Notification | None:
    """The notification a queue change stores in its transaction (None: nothing to store)."""
    if n is None or n.empty:
        return None
    n.check()
    return n


def removal(
    rows: Iterable[Any], report: Callable[[list[QueueEntry]], Notification | None] | None
) -> tuple[list[QueueEntry], Notification | None]:
    """:meth:`Storage.queue_remove`: the removed entries (:data:`ENTRY_COLS` rows) and the
    notification ``report`` makes of them."""
    removed = [entry_of(r) for r in rows]
    return removed, report(removed) if report is not None else None


# -- maintenance ------------------------------------------------------------------------------
# Plain SQL both backends run as is: (blob id, refcount, references) and (account id, used,
# octets of its messages).
INTEGRITY_REFCOUNTS = (
    "SELECT b.id, b.refcount, (SELECT count(*) FROM messages m WHERE m.blob_id=b.id) "
    "+ (SELECT count(*) FROM queue_messages q WHERE q.blob_id=b.id) FROM blobs b"
)
INTEGRITY_USAGE = (
    "SELECT a.id, a.used, (SELECT coalesce(sum(m.size),0) FROM messages m JOIN "
    "mailboxes x ON x.id=m.mailbox_id WHERE x.account_id=a.id) FROM accounts a"
)


def refcount_problems(rows: Iterable[Any]) -> list[str]:
    return [
        f"blob {bid}: refcount {refcount} but {actual} references"
        for bid, refcount, actual in rows
        if refcount != actual
    ]


def usage_problems(rows: Iterable[Any]) -> list[str]:
    return [
        f"account {aid}: used {used} but messages sum to {actual}"
        for aid, used, actual in rows
        if used != actual
    ]
