"""The storage contract every backend implements (DESIGN.md §3–§5).

Values are small frozen dataclasses; operations are ``async`` so one contract serves the SQLite
backend (a dedicated writer thread with group commit) and a PostgreSQL backend (asyncpg).

Semantics every backend guarantees:
- an ``append``/``deliver`` that returned has committed the blob and its mailbox entries
  durably (fsync'd); a failure raises :class:`StorageError` (or :class:`QuotaExceeded`)
  and leaves nothing half-written;
- UIDs and modseqs are allocated in commit order per mailbox, so they become visible in
  increasing order;
- message bytes are stored once per distinct content (content hash), reference-counted, and
  removed when the last reference goes;
- every change (new message, flag change, expunge, mailbox create/rename/delete) is published on
  the backend's :class:`~letterbird.storage.events.ChangeBus` after commit.
"""

from __future__ import annotations

import contextlib
import enum
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from letterbird.storage.events import ChangeBus

__all__ = [
    "SPECIAL_USE_DEFAULTS",
    "Account",
    "AccountExists",
    "Alias",
    "AppendTarget",
    "BlobSource",
    "Changes",
    "Domain",
    "FlagMode",
    "Mailbox",
    "MailboxExists",
    "MailboxStatus",
    "MessageRecord",
    "NotFound",
    "Notification",
    "OutgoingMessage",
    "QueueEntry",
    "QueueRecipient",
    "QuotaExceeded",
    "Storage",
    "StorageError",
    "StoreResult",
]


class StorageError(Exception):
    """A storage failure; SMTP answers ``451 4.3.0``, IMAP ``NO [SERVERBUG]``."""


class QuotaExceeded(StorageError):
    """The account is over its quota; SMTP answers ``452 4.2.2``, IMAP ``NO [OVERQUOTA]``."""


class NotFound(StorageError):
    """The named domain, account, alias, mailbox or message does not exist."""


class MailboxExists(StorageError):
    """A mailbox of that name exists already (IMAP ``NO [ALREADYEXISTS]``)."""


class AccountExists(StorageError):
    """An account, domain or alias of that name exists already."""


# Mailboxes every account has, created on first use, with their RFC 6154 roles.
SPECIAL_USE_DEFAULTS: tuple[tuple[str, str | None], ...] = (
    ("INBOX", None),
    ("Sent", "\\Sent"),
    ("Drafts", "\\Drafts"),
    ("Trash", "\\Trash"),
    ("Junk", "\\Junk"),
    ("Archive", "\\Archive"),
)


@dataclass(frozen=True, slots=True)
class Domain:
    id: int
    name: str  # IDNA A-label form, lowercase


@dataclass(frozen=True, slots=True)
class Account:
    id: int
    local: str  # as written at creation
    domain: str  # IDNA A-label form
    password_hash: str
    quota: int  # bytes, 0 = unlimited
    used: int  # bytes used by all the account's messages

    @property
    def address(self) -> str:
        return f"{self.local}@{self.domain}"


@dataclass(frozen=True, slots=True)
class Alias:
    id: int
    local: str | None  # None: the domain's catch-all
    domain: str
    targets: tuple[str, ...]

    @property
    def address(self) -> str:
        return f"{self.local}@{self.domain}" if self.local is not None else f"@{self.domain}"


@dataclass(frozen=True, slots=True)
class Mailbox:
    id: int
    account_id: int
    name: str  # UTF-8, "/" is the hierarchy delimiter, "INBOX" canonical
    role: str | None  # RFC 6154 special-use attribute such as "\\Sent"
    uidvalidity: int
    uidnext: int
    highestmodseq: int
    subscribed: bool


@dataclass(frozen=True, slots=True)
class MailboxStatus:
    mailbox: Mailbox
    messages: int
    unseen: int
    size: int  # total octets
    first_unseen_uid: int | None


@dataclass(frozen=True, slots=True)
class MessageRecord:
    """One message in one mailbox: metadata plus a reference to the shared blob."""

    mailbox_id: int
    uid: int
    modseq: int
    flags: frozenset[str]  # system flags ("\\Seen"…) and keywords, as stored
    internaldate: float  # seconds since the epoch
    size: int
    blob_id: str  # content hash (sha256 hex)
    structure: bytes  # MessageInfo JSON computed once at delivery


@dataclass(frozen=True, slots=True)
class Changes:
    """What changed in a mailbox after a modseq (CONDSTORE/QRESYNC, JMAP /changes)."""

    highestmodseq: int
    changed: list[tuple[int, int, frozenset[str]]]  # (uid, modseq, flags) of live messages
    expunged: list[int]  # uids expunged after the modseq


class FlagMode(enum.Enum):
    ADD = "+"
    REMOVE = "-"
    REPLACE = "="


@dataclass(frozen=True, slots=True)
class StoreResult:
    uid: int
    modseq: int
    flags: frozenset[str]


@dataclass(frozen=True, slots=True)
class BlobSource:
    """Message bytes to be stored: in memory, or a spool file the edge wrote while receiving.

    ``sha256`` is the hex digest of the bytes; ``structure`` the MessageInfo JSON.
    """

    sha256: str
    size: int
    structure: bytes
    data: bytes | None = None
    path: str | None = None


@dataclass(frozen=True, slots=True)
class AppendTarget:
    """One mailbox entry to create: by mailbox id, or by name/role inside an account."""

    account_id: int
    mailbox: str = "INBOX"  # name, created if missing (with its default role)
    flags: frozenset[str] = field(default_factory=frozenset)
    internaldate: float | None = None  # None: now
    mailbox_id: int | None = None  # when set, used instead of the name


@dataclass(frozen=True, slots=True)
class QueueRecipient:
    """One recipient of a queued message, with its DSN parameters (RFC 3461)."""

    address: str
    notify: tuple[str, ...] = ()  # () = default (FAILURE,DELAY); ("NEVER",) or a subset
    orcpt: str | None = None  # "rfc822;addr" as received


@dataclass(frozen=True, slots=True)
class OutgoingMessage:
    """What to queue for delivery to other servers, committed with the local deliveries."""

    sender: str  # reverse path; "" for a bounce
    recipients: tuple[QueueRecipient, ...]
    envid: str | None = None
    ret: str | None = None  # "FULL" | "HDRS" | None
    account_id: int | None = None  # the submitting account (sending limits), None for relayed


@dataclass(frozen=True, slots=True)
class Notification:
    """A message the server generates (a DSN), stored in the same transaction as the queue
    change that calls for it (:meth:`Storage.queue_update`, :meth:`Storage.queue_remove`):
    what :meth:`Storage.deliver` takes, i.e. ``blob`` in the mailboxes of ``targets`` and/or
    queued as ``outgoing`` under ``queue_id`` (required with ``outgoing``)."""

    blob: BlobSource
    targets: tuple[AppendTarget, ...] = ()
    outgoing: OutgoingMessage | None = None
    queue_id: str | None = None

    def check(self) -> None:
        """Raise ValueError for a notification :meth:`Storage.deliver` would refuse."""
        if self.outgoing is not None and not self.queue_id:
            raise ValueError("a queued notification needs a queue id")

    @property
    def empty(self) -> bool:
        """Nothing to store: no mailbox and no recipient."""
        return not self.targets and (self.outgoing is None or not self.outgoing.recipients)


@dataclass(frozen=True, slots=True)
class QueueEntry:
    """One destination domain of one queued message (DESIGN.md §6)."""

    id: int
    queue_id: str
    domain: str
    recipients: tuple[QueueRecipient, ...]
    due: float
    attempts: int
    last_error: str
    owner: str | None
    lease_until: float | None
    created: float
    warned: bool
    sender: str
    envid: str | None
    ret: str | None
    blob_id: str
    size: int


class Storage(Protocol):
    """The operations every backend provides. See the module docstring for guarantees."""

    @property
    def bus(self) -> ChangeBus: ...

    async def open(self) -> None: ...
    async def close(self) -> None: ...

    # -- directory --------------------------------------------------------------------
    async def add_domain(self, name: str) -> Domain: ...
    async def remove_domain(self, name: str) -> None: ...
    async def list_domains(self) -> list[Domain]: ...
    async def get_domain(self, name: str) -> Domain | None: ...

    async def add_account(self, local: str, domain: str, password_hash: str) -> Account: ...
    async def remove_account(self, account_id: int) -> None: ...
    async def set_password(self, account_id: int, password_hash: str) -> None: ...
    async def set_quota(self, account_id: int, quota: int) -> None: ...
    async def get_account(self, account_id: int) -> Account | None: ...
    async def find_account(self, local: str, domain: str) -> Account | None: ...
    async def list_accounts(self, domain: str | None = None) -> list[Account]: ...

    async def add_alias(self, local: str | None, domain: str, targets: Sequence[str]) -> Alias: ...
    async def remove_alias(self, local: str | None, domain: str) -> None: ...
    async def find_alias(self, local: str | None, domain: str) -> Alias | None: ...
    async def list_aliases(self, domain: str | None = None) -> list[Alias]: ...

    # -- mailboxes --------------------------------------------------------------------
    async def list_mailboxes(self, account_id: int) -> list[Mailbox]: ...
    async def get_mailbox(self, account_id: int, name: str) -> Mailbox | None: ...
    async def get_mailbox_by_id(self, mailbox_id: int) -> Mailbox | None: ...
    async def create_mailbox(
        self, account_id: int, name: str, role: str | None = None
    ) -> Mailbox: ...
    async def rename_mailbox(self, account_id: int, old: str, new: str) -> None: ...
    async def delete_mailbox(self, account_id: int, name: str) -> None: ...
    async def set_subscribed(self, account_id: int, name: str, subscribed: bool) -> None: ...
    async def mailbox_status(self, mailbox_id: int) -> MailboxStatus: ...

    # -- messages ---------------------------------------------------------------------
    async def append(
        self, blob: BlobSource, targets: Sequence[AppendTarget]
    ) -> list[tuple[int, int]]:
        """Store ``blob`` once and create one entry per target, all in one transaction.

        Returns ``(mailbox_id, uid)`` per target, in order.
        """
        ...

    async def deliver(
        self,
        blob: BlobSource,
        targets: Sequence[AppendTarget],
        outgoing: OutgoingMessage | None = None,
        queue_id: str | None = None,
    ) -> list[tuple[int, int]]:
        """One transaction: the blob, a mailbox entry per local target and, when ``outgoing``
        is given, a queued message (``queue_id``) with one entry per destination domain.

        This is the commit behind SMTP's final ``250`` (DESIGN.md §5).
        """
        ...

    async def list_messages(self, mailbox_id: int) -> list[tuple[int, int, frozenset[str]]]: ...
    async def fetch_messages(
        self, mailbox_id: int, uids: Iterable[int] | None = None
    ) -> list[MessageRecord]: ...
    async def fetch_meta(
        self, mailbox_id: int, uids: Sequence[int]
    ) -> list[tuple[int, int, float, int, str]]:
        """``(uid, modseq, internaldate, size, blob_id)`` of the given messages, ascending by
        uid; unknown uids are left out. :meth:`fetch_messages` without flags and structure,
        as plain tuples: for readers that keep flags themselves and decoded structure cached
        per blob (IMAP SEARCH), so a query over a whole mailbox moves no JSON."""
        ...

    async def read_blob(self, blob_id: str, start: int = 0, end: int | None = None) -> bytes: ...
    async def store_flags(
        self,
        mailbox_id: int,
        uids: Sequence[int],
        mode: FlagMode,
        flags: Iterable[str],
        unchanged_since: int | None = None,
    ) -> list[StoreResult]: ...
    async def copy_messages(
        self, src_mailbox_id: int, uids: Sequence[int], dst_mailbox_id: int
    ) -> list[tuple[int, int]]: ...
    async def move_messages(
        self, src_mailbox_id: int, uids: Sequence[int], dst_mailbox_id: int
    ) -> list[tuple[int, int]]: ...
    async def expunge(self, mailbox_id: int, uids: Sequence[int] | None = None) -> list[int]:
        """Remove messages flagged ``\\Deleted`` (only those among ``uids`` when given)."""
        ...

    async def delete_messages(self, mailbox_id: int, uids: Sequence[int]) -> list[int]:
        """Remove the given messages whatever their flags (POP3 DELE+QUIT, web delete)."""
        ...

    async def changes_since(self, mailbox_id: int, modseq: int) -> Changes: ...
    async def changes_since_bounded(
        self, mailbox_id: int, modseq: int, limit: int
    ) -> Changes | None:
        """:meth:`changes_since` when at most ``limit`` messages changed and at most ``limit``
        were expunged after ``modseq``, else None (the caller then asks :meth:`changes_since`).
        A bounded read, so the SQLite backend answers it inline rather than on a reader thread:
        the usual resync (nothing or a few changes) costs no thread hop."""
        ...

    async def quota_usage(self, account_id: int) -> tuple[int, int]: ...

    # -- the outgoing queue (DESIGN.md §6) ----------------------------------------------
    # Time on the queue: leases (``lease_until``) are always set and compared on the
    # database clock, inside the statement (PostgreSQL's ``clock_timestamp()``; SQLite's is the
    # one machine's clock, read inside the writer transaction), never on a caller's clock, so
    # nodes with skewed clocks cannot steal or instantly expire each other's leases. Due times
    # are compared on the database clock too; ``now`` arguments only override that comparison
    # (tests and tools).
    async def queue_claim(
        self, owner: str, lease: float, limit: int, now: float | None = None
    ) -> list[QueueEntry]:
        """Lease up to ``limit`` entries that are due (``due <= now``, default the database
        clock) and not leased (``lease_until`` passed on the database clock) to ``owner``
        until the database clock + ``lease``."""
        ...

    async def queue_renew(self, entry_ids: Sequence[int], owner: str, lease: float) -> int:
        """Extend ``owner``'s leases to the database clock + ``lease`` (negative: release);
        returns how many it still holds."""
        ...

    async def queue_update(
        self,
        entry_id: int,
        owner: str,
        remaining: Sequence[QueueRecipient],
        due: float,
        last_error: str,
        warned: bool = False,
        *,
        relative_to: float | None = None,
        notification: Notification | None = None,
    ) -> bool:
        """Finish an attempt in one transaction: keep ``remaining`` recipients for another try
        at ``due`` (none left: the entry is done, and with the message's last entry the
        message), release the lease and store ``notification`` (the DSN the attempt calls
        for). ``relative_to``: the caller's clock reading ``due`` was computed from; the entry
        is then due at the database clock + (``due`` - ``relative_to``).

        Returns False, changing nothing and storing no notification, when ``owner`` no longer
        holds the entry (another node claimed it after the lease expired). A lease that expired
        but that nobody took is still held (nobody else can be delivering the entry: taking it
        over changes the owner). A notification
        that cannot be stored (e.g. :class:`QuotaExceeded`, :class:`NotFound`) raises, and
        the entry is left as it was."""
        ...

    async def queue_entries(self, queue_id: str | None = None) -> list[QueueEntry]: ...
    async def queue_remove(
        self,
        queue_id: str,
        report: Callable[[list[QueueEntry]], Notification | None] | None = None,
    ) -> list[QueueEntry]:
        """Delete a queued message (all its entries); returns what was removed. ``report``
        is called, inside the transaction, with the entries being removed and its
        notification is stored in that transaction (it must be a pure function: it may run
        on another thread, and more than once). :class:`NotFound` when no such message."""
        ...

    async def queue_flush(self, now: float | None = None) -> int: ...
    async def queue_next_wait(self) -> float | None:
        """Seconds, on the database clock, until the earliest entry becomes claimable (0:
        now); None when the queue is empty."""
        ...

    # -- installation settings (the ``meta`` table) --------------------------------------
    async def get_meta(self, key: str) -> str | None:
        """The installation setting ``key`` (None: not set)."""
        ...

    async def init_meta(self, key: str, value: str) -> str:
        """Store ``value`` under ``key`` unless the key has a value already; returns the stored
        value, committed. Atomic across every node sharing the storage: of concurrent callers
        the first to commit wins and all of them get its value (a secret made once)."""
        ...

    # -- webmail sessions that were logged out (letterbird.http.sessions) ----------------
    async def revoke_session(self, nonce: str, expires: float, now: float | None = None) -> None:
        """Record, committed on return, that the session ``nonce`` is void until ``expires``
        (seconds since the epoch: when its cookie expires anyway). Revocations whose expiry is
        before ``now`` (default: the database clock) are forgotten in the same transaction."""
        ...

    async def session_revoked(self, nonce: str) -> bool:
        """Whether the session ``nonce`` was revoked (one primary-key lookup)."""
        ...

    # -- POP3 maildrop locks (RFC 1939 §8), held across every node sharing the storage ------
    async def maildrop_lock(
        self, account_id: int
    ) -> contextlib.AbstractAsyncContextManager[None] | None:
        """Take the account's maildrop lock for one session: an async context manager that
        releases it on exit (enter it at once), or None when another session holds it."""
        ...
