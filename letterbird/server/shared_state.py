"""Process-wide state shared by the worker processes of one machine (the ``workers`` setting).

The master creates one shared-memory segment (:func:`os.memfd_create`, fixed size, mapped with
:mod:`mmap`) and passes its fd to every worker (``pass_fds``); each worker attaches with its
0-based index. The segment holds three things that used to live in one process's memory:

**Connection counts** (:meth:`SharedState.enter`, :meth:`SharedState.leave`,
:meth:`SharedState.connection_count`, standing in for the dict in :class:`App`). Each worker
writes only its own region, so no lock is needed: per connection group a total and an overflow
count, and an open-addressed table of ``(keyed 64-bit hash of group and host, count)`` probed
over a window of :data:`HOST_WINDOW` slots. Readers sum over every region. Counts are exact
except when two (group, host) pairs have the same 64-bit hash. The hash is keyed with a random
secret stored in the segment, so it is the same in every process yet a client cannot choose
addresses that collide or that crowd one window. When a worker's window for a host is full, the
connection is added to the group's overflow count instead, and the overflow count is added to
the count of *every* host of that group: a limit may then refuse a client too early, never too
late. Reads and writes of different workers are not synchronised: two workers admitting a
client at the same moment may each miss the other's new connection, so a per-host or per-group
limit can be exceeded by at most one connection per worker. :meth:`SharedState.reset_worker`
zeroes a dead worker's region (its connections are gone) before the master starts it again.

**IMAP ``\\Recent`` claims** (:attr:`SharedState.recent`, a :class:`SharedRecentTracker` with the
API of :class:`~letterbird.imap.selected.RecentTracker`): one table for all workers of
``(mailbox_id, uidvalidity, highest claimed UID)``, probed over :data:`RECENT_WINDOW` slots.
Claims are read-modify-write, serialised across processes by a POSIX record lock
(:func:`fcntl.lockf`) on the memfd; such locks belong to the process, so an inherited fd works,
and only the event-loop thread takes them. When a mailbox's window is full, one entry of the
window is evicted: the next session to select that mailbox sees its messages as ``\\Recent``
again, as after a server restart, which RFC 3501 §2.3.2 permits.

**Sending limits** (:meth:`SharedState.sending_limits`, a :class:`SharedSendingLimits` with the
API of :class:`~letterbird.delivery.submission.SendingLimits`): one table for all workers, so an
account cannot send N times its limit through N workers. Per account a slot, keyed by the
account id and probed over :data:`LIMIT_WINDOW` slots, holds the bucket of its latest activity
and a ring of time buckets, each ``window / LIMIT_BUCKETS`` long (a minute for the hour), of
(bucket number, messages, recipients); a bucket is reused once its number has left the window.
Usage is the sum of the buckets inside the window, so the window is exact to one bucket: a
message counts for at least the window and at most one bucket longer (a limit may refuse a
little too long, never let through too early). Reads and records take a second record lock.
When an account's probe window is full (every slot in use by an account with activity inside
the window; the others are free), the slot with the oldest latest activity is evicted: that
account's counts are forgotten and it may send up to its limits again. That takes more
accounts sending within the hour than the table has slots around one probe window; the table
is sized for thousands of active senders (:meth:`SharedState.create`).

Everything is synchronous and cheap (a few word reads and writes through a ``memoryview``,
a keyed BLAKE2b hash, and two ``fcntl`` calls per claim or sending-limit check): it runs on
the event loop, per connection, per SELECT and per MAIL, RCPT and accepted message.
"""

from __future__ import annotations

import fcntl
import hashlib
import mmap
import os
import secrets
import struct
from typing import Final, NamedTuple

from letterbird.delivery.submission import BaseSendingLimits
from letterbird.imap.selected import RecentTracker

__all__ = [
    "GROUP_SLOTS",
    "HOST_WINDOW",
    "LIMIT_BUCKETS",
    "LIMIT_WINDOW",
    "RECENT_WINDOW",
    "SharedRecentTracker",
    "SharedSendingLimits",
    "SharedState",
]

HOST_WINDOW: Final = 8
"""Slots of a worker's host table probed for one (group, host)."""
RECENT_WINDOW: Final = 8
"""Slots of the ``\\Recent`` table probed for one mailbox."""
LIMIT_WINDOW: Final = 8
"""Slots of the sending-limits table probed for one account."""
LIMIT_BUCKETS: Final = 60
"""Buckets a sending-limit window is cut into (one minute each for the default hour). A slot
keeps one more, the bucket of the current time, which is only partly over."""
GROUP_SLOTS: Final = 32
"""Connection groups the segment can tell apart; the last slot is shared by any group beyond
the first ``GROUP_SLOTS - 1`` (their totals are then counted together: too high, never too low).
Groups are names fixed in the code (smtp, submission, imap, pop3), so this never fills."""

_MAGIC: Final = int.from_bytes(b"LBSHARE2", "little", signed=True)  # bumped per layout change
_KEY_BYTES: Final = 16

# Header words (8-byte signed ints, the unit of the whole segment).
_H_MAGIC: Final = 0
_H_WORKERS: Final = 1
_H_RECENT_SLOTS: Final = 2
_H_HOST_SLOTS: Final = 3
_H_RECENT_COUNT: Final = 4
_H_LIMIT_SLOTS: Final = 5
_H_KEY: Final = 8  # _KEY_BYTES of hash key from here
_HEADER_WORDS: Final = 16
_GROUPS_AT: Final = _HEADER_WORDS  # GROUP_SLOTS words: the group's hash, 0 when free
_RECENT_AT: Final = _GROUPS_AT + GROUP_SLOTS  # recent_slots x (mailbox_id, uidvalidity, high)
_RECENT_ENTRY: Final = 3
# After the recent table: limit_slots x (account_id, used, latest bucket), then limit_slots x
# _LIMIT_RING x (bucket number, messages, recipients), then the workers' regions.
_LIMIT_ENTRY: Final = 3
_LIMIT_RING: Final = LIMIT_BUCKETS + 1
_BUCKET_ENTRY: Final = 3
_SLOT_BUCKET_WORDS: Final = _LIMIT_RING * _BUCKET_ENTRY
_REGION_GROUP_WORDS: Final = 2 * GROUP_SLOTS  # per group: (total, overflow)
_HOST_ENTRY: Final = 2  # per host slot: (hash, count)

# Byte ranges locked with fcntl.lockf (any byte of the file will do; these are header bytes).
_RECENT_LOCK: Final = 0
_GROUP_LOCK: Final = 1
_LIMITS_LOCK: Final = 2


class _Layout(NamedTuple):
    """Where the tables of a segment start (word indexes): a segment for ``workers`` is
    ``regions_at + workers * region_words`` words long."""

    limits_at: int
    buckets_at: int
    regions_at: int
    region_words: int


def _layout(recent_slots: int, host_slots: int, limit_slots: int) -> _Layout:
    limits_at = _RECENT_AT + _RECENT_ENTRY * recent_slots
    buckets_at = limits_at + _LIMIT_ENTRY * limit_slots
    regions_at = buckets_at + _SLOT_BUCKET_WORDS * limit_slots
    region_words = _REGION_GROUP_WORDS + _HOST_ENTRY * host_slots
    return _Layout(limits_at, buckets_at, regions_at, region_words)


def _probe_start(data: bytes, hash_key: bytes, slots: int, window: int) -> int:
    """The first slot of the probe window of ``data`` in a table of ``slots`` slots (keyed
    hash: a client cannot choose keys that crowd one window)."""
    digest = hashlib.blake2b(data, digest_size=8, key=hash_key).digest()
    return int.from_bytes(digest, "little") % (slots - window + 1)


class _Lock:
    """An exclusive or shared POSIX record lock on one byte of the segment's fd."""

    __slots__ = ("_fd", "_mode", "_start")

    def __init__(self, fd: int, start: int, *, shared: bool = False) -> None:
        self._fd = fd
        self._start = start
        self._mode = fcntl.LOCK_SH if shared else fcntl.LOCK_EX

    def __enter__(self) -> None:
        fcntl.lockf(self._fd, self._mode, 1, self._start)

    def __exit__(self, *_: object) -> None:
        fcntl.lockf(self._fd, fcntl.LOCK_UN, 1, self._start)


class SharedRecentTracker(RecentTracker):
    """:class:`~letterbird.imap.selected.RecentTracker` over the shared segment: every worker
    of the machine sees the same claims (see the module docstring for eviction).

    A subclass only so the sessions' type annotations accept it: none of the parent's
    in-process state is used. Keys must fit in signed 64-bit integers.
    """

    __slots__ = ("_exclusive", "_hash_key", "_shared", "_slots", "_window", "_words")

    def __init__(self, words: memoryview, fd: int, slots: int, hash_key: bytes) -> None:
        super().__init__()
        self._words = words
        self._slots = slots
        self._window = min(RECENT_WINDOW, slots)
        self._hash_key = hash_key
        self._exclusive = _Lock(fd, _RECENT_LOCK)
        self._shared = _Lock(fd, _RECENT_LOCK, shared=True)

    def _window_start(self, key: tuple[int, int]) -> int:
        """The word index of the first slot of ``key``'s probe window."""
        mailbox_id, uidvalidity = key
        data = mailbox_id.to_bytes(8, "little", signed=True) + uidvalidity.to_bytes(
            8, "little", signed=True
        )
        slot = _probe_start(data, self._hash_key, self._slots, self._window)
        return _RECENT_AT + _RECENT_ENTRY * slot

    def _find(self, start: int, key: tuple[int, int]) -> int:
        """The word index of ``key``'s entry in the window at ``start``, or -1."""
        words = self._words
        mailbox_id, uidvalidity = key
        end = start + _RECENT_ENTRY * self._window
        for at in range(start, end, _RECENT_ENTRY):
            if words[at + 2] and words[at] == mailbox_id and words[at + 1] == uidvalidity:
                return at
        return -1

    def claimed(self, key: tuple[int, int]) -> int:
        """The highest UID already claimed (0 when none)."""
        start = self._window_start(key)
        with self._shared:
            at = self._find(start, key)
            return self._words[at + 2] if at >= 0 else 0

    def claim(self, key: tuple[int, int], highest_uid: int) -> int:
        """Claim every UID up to ``highest_uid``; returns the previous high-water mark, so the
        caller's recent messages are those with ``previous < uid <= highest_uid``. Atomic
        across processes: no two callers are handed the same UID."""
        start = self._window_start(key)
        words = self._words
        with self._exclusive:
            at = self._find(start, key)
            previous = words[at + 2] if at >= 0 else 0
            if highest_uid > previous:
                if at < 0:
                    at = self._free_or_evicted(start)
                    words[at] = key[0]
                    words[at + 1] = key[1]
                words[at + 2] = highest_uid
            return previous

    def _free_or_evicted(self, start: int) -> int:
        """A free slot in the window at ``start`` (counted as used), else its first slot, whose
        mailbox loses its claims (called with the lock held)."""
        words = self._words
        for at in range(start, start + _RECENT_ENTRY * self._window, _RECENT_ENTRY):
            if not words[at + 2]:
                words[_H_RECENT_COUNT] += 1
                return at
        return start

    def forget(self, key: tuple[int, int]) -> None:
        start = self._window_start(key)
        words = self._words
        with self._exclusive:
            at = self._find(start, key)
            if at >= 0:
                words[at + 2] = 0
                words[_H_RECENT_COUNT] -= 1

    def __len__(self) -> int:
        with self._shared:
            return self._words[_H_RECENT_COUNT]


class SharedSendingLimits(BaseSendingLimits):
    """:class:`~letterbird.delivery.submission.BaseSendingLimits` counted in the shared
    segment: every worker of the machine sees the same counts (see the module docstring).

    The window is exact to one bucket (``window / LIMIT_BUCKETS``, a minute for the hour): a
    message counts from :meth:`record` for at least ``window`` seconds and at most one bucket
    longer. Eviction from a full probe window can forget an account's counts (only with more
    active senders than slots; see the module docstring). Every user of one segment must use
    the same window (it is not a setting), as buckets are numbered by it. Account ids must fit
    in signed 64-bit integers.
    """

    def __init__(
        self,
        words: memoryview,
        fd: int,
        layout: _Layout,
        slots: int,
        hash_key: bytes,
        max_messages: int,
        max_recipients: int,
        *,
        window: float = 3600.0,
    ) -> None:
        super().__init__(max_messages, max_recipients, window=window)
        self._words = words
        self._slots = slots
        self._probe = min(LIMIT_WINDOW, slots)
        self._limits_at = layout.limits_at
        self._buckets_at = layout.buckets_at
        self._hash_key = hash_key
        self._bucket_seconds = window / LIMIT_BUCKETS
        self._exclusive = _Lock(fd, _LIMITS_LOCK)
        self._shared = _Lock(fd, _LIMITS_LOCK, shared=True)

    def usage(self, account_id: int, now: float) -> tuple[int, int]:
        current = self._bucket(now)
        slot = self._first_slot(account_id)
        with self._shared:
            found = self._find(slot, account_id)
            if found < 0:
                return 0, 0
            return self._sum(found, current)

    def record(self, account_id: int, recipients: int, now: float) -> None:
        if not self.counting:
            return
        current = self._bucket(now)
        slot = self._first_slot(account_id)
        words = self._words
        with self._exclusive:
            found = self._find(slot, account_id)
            if found < 0:
                found = self._claim_slot(slot, account_id, current)
            entry = self._limits_at + _LIMIT_ENTRY * found
            if current < words[entry + 2] - LIMIT_BUCKETS:
                return  # before the window of the latest record: ``now`` lags another worker's
            at = (
                self._buckets_at
                + _SLOT_BUCKET_WORDS * found
                + _BUCKET_ENTRY * (current % _LIMIT_RING)
            )
            if words[at] < current:  # reused: its bucket has left the window
                words[at] = current
                words[at + 1] = words[at + 2] = 0
            words[at + 1] += 1
            words[at + 2] += recipients
            words[entry + 2] = max(words[entry + 2], current)

    def _bucket(self, now: float) -> int:
        """The number of the bucket holding the time ``now``."""
        return int(now // self._bucket_seconds)

    def _first_slot(self, account_id: int) -> int:
        """The first slot of ``account_id``'s probe window."""
        data = account_id.to_bytes(8, "little", signed=True)
        return _probe_start(data, self._hash_key, self._slots, self._probe)

    def _find(self, first: int, account_id: int) -> int:
        """The slot of ``account_id`` in the probe window from slot ``first``, or -1."""
        words = self._words
        for slot in range(first, first + self._probe):
            at = self._limits_at + _LIMIT_ENTRY * slot
            if words[at + 1] and words[at] == account_id:
                return slot
        return -1

    def _sum(self, slot: int, current: int) -> tuple[int, int]:
        """(messages, recipients) of the buckets of ``slot`` inside the window that ends with
        bucket ``current``."""
        start = self._buckets_at + _SLOT_BUCKET_WORDS * slot
        ring = self._words[start : start + _SLOT_BUCKET_WORDS].tolist()
        oldest = current - LIMIT_BUCKETS
        messages = recipients = 0
        for at in range(0, _SLOT_BUCKET_WORDS, _BUCKET_ENTRY):
            if oldest <= ring[at] <= current:
                messages += ring[at + 1]
                recipients += ring[at + 2]
        return messages, recipients

    def _claim_slot(self, first: int, account_id: int, current: int) -> int:
        """A slot for ``account_id`` in the probe window from slot ``first``, emptied: a free
        one (unused, or whose latest activity has left the window), else the one with the
        oldest latest activity, whose account's counts are lost (called with the lock held)."""
        words = self._words
        oldest = current - LIMIT_BUCKETS
        victim, victim_latest = first, None
        for slot in range(first, first + self._probe):
            at = self._limits_at + _LIMIT_ENTRY * slot
            latest = words[at + 2]
            if not words[at + 1] or latest < oldest:
                victim = slot
                break
            if victim_latest is None or latest < victim_latest:
                victim, victim_latest = slot, latest
        at = self._limits_at + _LIMIT_ENTRY * victim
        words[at] = account_id
        words[at + 1] = 1
        words[at + 2] = current
        start = self._buckets_at + _SLOT_BUCKET_WORDS * victim
        words[start : start + _SLOT_BUCKET_WORDS] = _EMPTY_RING
        return victim


_EMPTY_RING: Final = memoryview(bytes(8 * _SLOT_BUCKET_WORDS)).cast("q")


class SharedState:
    """The shared segment, as the master (:meth:`create`) or worker ``worker``
    (:meth:`attach`) sees it. See the module docstring for the layout and its guarantees."""

    def __init__(self, fd: int, worker: int | None) -> None:
        self.fd = fd
        """The memfd: the master passes it to workers (``pass_fds``)."""
        self.worker = worker
        """This process's worker index; None in the master, which counts no connections."""
        size = os.fstat(fd).st_size
        self._map = mmap.mmap(fd, size)
        self._words = memoryview(self._map).cast("q")
        words = self._words
        if len(words) < _HEADER_WORDS or words[_H_MAGIC] != _MAGIC:
            self._release()
            raise ValueError(f"fd {fd} is not a letterbird shared-state segment")
        self.workers = words[_H_WORKERS]
        self._host_slots = words[_H_HOST_SLOTS]
        self._host_window = min(HOST_WINDOW, self._host_slots)
        recent_slots = words[_H_RECENT_SLOTS]
        self._limit_slots = words[_H_LIMIT_SLOTS]
        self._layout = _layout(recent_slots, self._host_slots, self._limit_slots)
        self._regions_at = self._layout.regions_at
        self._region_words = self._layout.region_words
        if len(words) != self._regions_at + self.workers * self._region_words:
            self._release()
            raise ValueError(f"shared-state segment of fd {fd} has the wrong size")
        if worker is not None and not 0 <= worker < self.workers:
            self._release()
            raise ValueError(f"worker {worker} out of range (segment for {self.workers})")
        key_at = _H_KEY * 8
        self._hash_key = bytes(self._map[key_at : key_at + _KEY_BYTES])
        self._groups: dict[str, int] = {}  # group name -> slot (cache of the shared registry)
        self.recent = SharedRecentTracker(words, fd, recent_slots, self._hash_key)
        """The machine-wide ``\\Recent`` claims (the API of RecentTracker)."""

    @classmethod
    def create(
        cls,
        workers: int,
        *,
        recent_slots: int = 65536,
        host_slots: int = 16384,
        limit_slots: int = 8192,
    ) -> SharedState:
        """A new zeroed segment for ``workers`` workers (in the master).

        The sending-limits table dominates its size: ``limit_slots`` x 1.5 KB (12 MB by
        default, for thousands of accounts sending within one hour); the ``\\Recent`` table
        takes ``recent_slots`` x 24 bytes, each worker ``host_slots`` x 16 bytes. Memory is
        only committed for the pages written to.
        """
        if workers < 1 or recent_slots < 1 or host_slots < 1 or limit_slots < 1:
            raise ValueError("workers and the table sizes must be positive")
        layout = _layout(recent_slots, host_slots, limit_slots)
        fd = os.memfd_create("letterbird-shared")  # close-on-exec; pass_fds hands it on
        try:
            os.ftruncate(fd, 8 * (layout.regions_at + workers * layout.region_words))
            header = struct.pack(
                f"={_H_KEY}q{_KEY_BYTES}s",
                _MAGIC,
                workers,
                recent_slots,
                host_slots,
                0,  # _H_RECENT_COUNT
                limit_slots,
                *(0 for _ in range(_H_KEY - 6)),
                secrets.token_bytes(_KEY_BYTES),
            )
            os.pwrite(fd, header, 0)
            return cls(fd, None)
        except BaseException:
            os.close(fd)
            raise

    @classmethod
    def attach(cls, fd: int, worker: int) -> SharedState:
        """Map the segment behind ``fd`` (inherited from the master) as worker ``worker``.
        The instance owns ``fd`` from now on: :meth:`close` closes it (on ValueError, for a
        foreign segment or a worker index out of range, the caller still owns it)."""
        return cls(fd, worker)

    def close(self) -> None:
        """Unmap the segment and close the fd (idempotent)."""
        if self.fd < 0:
            return
        self._release()
        os.close(self.fd)
        self.fd = -1

    def _release(self) -> None:
        self._words.release()  # the tracker's and the limits' view too: the same object
        self._map.close()

    def sending_limits(
        self, max_messages: int, max_recipients: int, *, window: float = 3600.0
    ) -> SharedSendingLimits:
        """The machine-wide sending limits (the API of SendingLimits). Every call gives a new
        object over the same counts: keep one."""
        return SharedSendingLimits(
            self._words,
            self.fd,
            self._layout,
            self._limit_slots,
            self._hash_key,
            max_messages,
            max_recipients,
            window=window,
        )

    # -- connection counts -------------------------------------------------------------------

    def enter(self, group: str, host: str) -> int:
        """Count a new connection from ``host`` in ``group``; returns how many connections
        (group, host) has on all workers, this one included."""
        words = self._words
        g = self._group_slot(group)
        own = self._own_region()
        words[own + 2 * g] += 1
        host_hash = self._hash(group, host)
        start = self._host_start(host_hash)
        at = self._find_host(own + start, host_hash)
        if at < 0:
            at = self._free_host(own + start)
        if at >= 0:
            words[at] = host_hash  # the hash first: readers check the count, then the hash
            words[at + 1] += 1
        else:
            words[own + 2 * g + 1] += 1  # window full: counted for every host of the group
        return self._host_total(g, start, host_hash)

    def leave(self, group: str, host: str) -> None:
        """The connection counted by :meth:`enter` ended."""
        words = self._words
        g = self._group_slot(group)
        own = self._own_region()
        if words[own + 2 * g] > 0:
            words[own + 2 * g] -= 1
        host_hash = self._hash(group, host)
        at = self._find_host(own + self._host_start(host_hash), host_hash)
        if at >= 0:
            words[at + 1] -= 1
        elif words[own + 2 * g + 1] > 0:
            words[own + 2 * g + 1] -= 1

    def connection_count(self, group: str) -> int:
        """Connections in ``group`` on all workers."""
        words = self._words
        at = self._regions_at + 2 * self._group_slot(group)
        total = 0
        for _ in range(self.workers):
            total += words[at]
            at += self._region_words
        return total

    def reset_worker(self, worker: int) -> None:
        """Forget every connection of ``worker`` (in the master, once it has exited)."""
        if not 0 <= worker < self.workers:
            raise ValueError(f"worker {worker} out of range (segment for {self.workers})")
        start = self._regions_at + worker * self._region_words
        byte_start = 8 * start
        byte_end = 8 * (start + self._region_words)
        self._map[byte_start:byte_end] = bytes(byte_end - byte_start)

    def _own_region(self) -> int:
        if self.worker is None:
            raise RuntimeError("the master's view of the shared state counts no connections")
        return self._regions_at + self.worker * self._region_words

    def _hash(self, group: str, host: str) -> int:
        data = f"{group}\0{host}".encode("utf-8", "surrogatepass")
        digest = hashlib.blake2b(data, digest_size=8, key=self._hash_key).digest()
        return int.from_bytes(digest, "little", signed=True)

    def _host_start(self, host_hash: int) -> int:
        """Offset (in words, from a region's start) of the host's probe window."""
        slot = host_hash % (self._host_slots - self._host_window + 1)
        return _REGION_GROUP_WORDS + _HOST_ENTRY * slot

    def _find_host(self, start: int, host_hash: int) -> int:
        """Word index of the live slot for ``host_hash`` in the window at ``start``, or -1."""
        words = self._words
        for at in range(start, start + _HOST_ENTRY * self._host_window, _HOST_ENTRY):
            if words[at + 1] > 0 and words[at] == host_hash:
                return at
        return -1

    def _free_host(self, start: int) -> int:
        """Word index of a free slot in the window at ``start``, or -1 when it is full."""
        words = self._words
        for at in range(start, start + _HOST_ENTRY * self._host_window, _HOST_ENTRY):
            if words[at + 1] <= 0:
                return at
        return -1

    def _host_total(self, g: int, start: int, host_hash: int) -> int:
        """Connections of the host with ``host_hash`` (group slot ``g``) on all workers,
        including each worker's overflow count for the group."""
        words = self._words
        window_words = _HOST_ENTRY * self._host_window
        total = 0
        region = self._regions_at
        for _ in range(self.workers):
            total += words[region + 2 * g + 1]
            first = region + start
            for at in range(first, first + window_words, _HOST_ENTRY):
                count = words[at + 1]
                if count > 0 and words[at] == host_hash:
                    total += count
            region += self._region_words
        return total

    def _group_slot(self, group: str) -> int:
        """The slot of ``group`` in every region (registered in the segment on first use)."""
        slot = self._groups.get(group)
        if slot is None:
            slot = self._groups[group] = self._register_group(group)
        return slot

    def _register_group(self, group: str) -> int:
        words = self._words
        group_hash = self._hash(group, "") or 1  # 0 marks a free registry slot
        with _Lock(self.fd, _GROUP_LOCK):
            for slot in range(GROUP_SLOTS - 1):
                found = words[_GROUPS_AT + slot]
                if found == group_hash:
                    return slot
                if found == 0:
                    words[_GROUPS_AT + slot] = group_hash
                    return slot
        return GROUP_SLOTS - 1
