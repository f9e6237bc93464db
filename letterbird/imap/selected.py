"""The selected-mailbox state of one IMAP session (RFC 3501 §5.2, §6.3.1, §7.3, §7.4.1; RFC 2180).

Pure bookkeeping, no storage, no I/O, no clock: the session feeds it what storage said (the
message list at SELECT, then :meth:`SelectedMailbox.apply_changes` with the result of
``changes_since``, and the results of its own STORE/EXPUNGE/MOVE) and asks it for the untagged
responses the client is owed (:meth:`SelectedMailbox.updates`).

The client's view of the mailbox is a list of UIDs; message sequence number = index + 1. The
view only changes when the client is told: a message expunged elsewhere stays in the view as a
*ghost* (its sequence number stays valid, its data is gone) until an untagged ``EXPUNGE`` is
allowed; new messages wait in a pending list until ``EXISTS`` announces them. So sequence
numbers are stable within a command, and ``EXPUNGE`` is never sent while the caller says it
must not be (during FETCH, STORE and SEARCH, RFC 3501 §7.4.1; allowed during the UID forms).

Flags changed by other sessions are remembered and reported as unsolicited ``FETCH (UID n
FLAGS (...))`` at the next opportunity; a keyword the client was never told about first causes
new ``FLAGS`` and ``PERMANENTFLAGS`` responses (RFC 3501 §7.2.6).

``\\Recent`` (RFC 3501 §2.3.2) is kept in process by :class:`RecentTracker`: per mailbox (id and
UIDVALIDITY) the highest UID a read-write session has already been told about. The first
session that selects the mailbox (or learns of a new message while it is selected) *claims*
the messages above it and sees them ``\\Recent``; later sessions do not. EXAMINE (read-only)
sessions see what is unclaimed as recent without claiming it (RFC 3501 §6.3.2). Nothing is
persisted: after a server restart the first session to select a mailbox sees all its messages
as ``\\Recent`` (no session of the new process has been notified of them), which RFC 3501
permits and which costs no storage write per SELECT. A session's recent messages are kept as a
few UID ranges, so a 100,000-message mailbox costs two integers, not a set.

Bulk paths for big mailboxes: sets resolve to index ranges (:meth:`SelectedMailbox.positions`),
flags of many messages are looked up at C speed (:meth:`SelectedMailbox.client_flags_list`), a
second SELECT of the same mailbox copies this view (:meth:`SelectedMailbox.reopened`), and the
session's own APPEND joins the view without asking storage when no other message can have
arrived before it (:meth:`SelectedMailbox.appended`).
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Sequence
from typing import Final

from letterbird.proto.imap import encoder
from letterbird.proto.imap.codes import ResponseCode
from letterbird.proto.imap.seqset import SequenceSet

__all__ = [
    "RECENT",
    "SYSTEM_FLAGS",
    "RecentTracker",
    "SelectedMailbox",
    "check_flags",
    "sort_flags",
    "storable_flags",
]

SYSTEM_FLAGS: Final = ("\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft")
"""The system flags a client may store (RFC 3501 §2.3.2), in the order FLAGS lists them."""
RECENT: Final = "\\Recent"
SEEN: Final = "\\Seen"
ALL_KEYWORDS: Final = "\\*"
"""PERMANENTFLAGS item meaning "new keywords may be created" (RFC 3501 §7.1)."""

_SYSTEM_SET: Final = frozenset(SYSTEM_FLAGS)
_EMPTY: Final[frozenset[str]] = frozenset()


class RecentTracker:
    """Which messages have been claimed as ``\\Recent`` by some session, per mailbox.

    The key is ``(mailbox_id, uidvalidity)`` so a mailbox deleted and re-created (which may
    reuse the id) starts afresh. One instance is shared by every session of the process.
    """

    def __init__(self) -> None:
        self._claimed: dict[tuple[int, int], int] = {}

    def claimed(self, key: tuple[int, int]) -> int:
        """The highest UID already claimed (0 when none)."""
        return self._claimed.get(key, 0)

    def claim(self, key: tuple[int, int], highest_uid: int) -> int:
        """Claim every UID up to ``highest_uid``; returns the previous high-water mark, so the
        caller's recent messages are those with ``previous < uid <= highest_uid``."""
        previous = self._claimed.get(key, 0)
        if highest_uid > previous:
            self._claimed[key] = highest_uid
        return previous

    def forget(self, key: tuple[int, int]) -> None:
        self._claimed.pop(key, None)

    def __len__(self) -> int:
        return len(self._claimed)


_INTERNED: dict[frozenset[str], frozenset[str]] = {}
_MAX_INTERNED: Final = 4096


def _intern(flags: frozenset[str]) -> frozenset[str]:
    """One shared object per distinct flag set (most messages have one of a few sets)."""
    found = _INTERNED.get(flags)
    if found is None:
        if len(_INTERNED) >= _MAX_INTERNED:
            _INTERNED.clear()
        found = _INTERNED[flags] = flags
    return found


def _flag_order(flag: str) -> tuple[int, str]:
    return (0, "") if flag == RECENT else (1 if flag.startswith("\\") else 2, flag)


def sort_flags(flags: Iterable[str]) -> list[str]:
    """System flags first (``\\Recent`` leading), then keywords, each group sorted."""
    return sorted(flags, key=_flag_order)


def _keywords_of(distinct: Iterable[frozenset[str]]) -> frozenset[str]:
    """The keywords (flags not starting with a backslash) in some flag sets."""
    out: set[str] = set()
    for flags in distinct:
        out.update(flags)
    return frozenset(f for f in out if not f.startswith("\\"))


class SelectedMailbox:
    """The view one session has of its selected mailbox (see the module docstring).

    ``messages`` are ``(uid, modseq, flags)`` as storage listed them after ``uidnext`` and
    ``highestmodseq`` were read; entries with ``uid >= uidnext`` are left out (they arrived
    after the mailbox was read and are picked up by the next :meth:`apply_changes`). Only
    UIDs and flags are kept (per-message modseqs are not: nothing advertised needs them), and
    equal flag sets are shared, so an idle session over 200 messages costs a few kB.
    """

    def __init__(
        self,
        mailbox_id: int,
        uidvalidity: int,
        uidnext: int,
        highestmodseq: int,
        messages: Iterable[tuple[int, int, frozenset[str]]],
        *,
        readonly: bool,
        tracker: RecentTracker,
    ) -> None:
        if len(_INTERNED) >= _MAX_INTERNED:
            _INTERNED.clear()
        share = _INTERNED.setdefault  # equal flag sets become one object
        flags = {uid: share(f, f) for uid, _, f in messages if uid < uidnext}
        if len(_INTERNED) > _MAX_INTERNED:  # a mailbox with very many distinct sets
            _INTERNED.clear()
        self._setup(mailbox_id, uidvalidity, uidnext, highestmodseq, flags, readonly, tracker)

    def reopened(self, uidnext: int, *, readonly: bool, tracker: RecentTracker) -> SelectedMailbox:
        """A new view of the same mailbox (SELECT or EXAMINE of it again), built from what
        this view knows of storage (call :meth:`apply_changes` with what changed first):
        every message not expunged, the ones not yet announced included, as a new view built
        from storage's list would hold them. ``uidnext`` is what the mailbox row says."""
        gone = self._gone
        if gone:
            flags = {u: f for u, f in self._flags.items() if u not in gone}
        else:
            flags = dict(self._flags)
        view = SelectedMailbox.__new__(SelectedMailbox)
        view._setup(
            self.mailbox_id,
            self.uidvalidity,
            max(uidnext, self.uidnext),
            self.highestmodseq,
            flags,
            readonly,
            tracker,
        )
        return view

    def _setup(
        self,
        mailbox_id: int,
        uidvalidity: int,
        uidnext: int,
        highestmodseq: int,
        flags: dict[int, frozenset[str]],
        readonly: bool,
        tracker: RecentTracker,
    ) -> None:
        self.mailbox_id = mailbox_id
        self.uidvalidity = uidvalidity
        self.readonly = readonly
        self.highestmodseq = highestmodseq
        self._uidnext = uidnext
        self._tracker = tracker
        self._uids: list[int] = sorted(flags)
        self._flags: dict[int, frozenset[str]] = flags
        self._gone: set[int] = set()  # ghosts: expunged in storage, still in the view
        self._new: list[int] = []  # in storage, not yet announced by EXISTS (ascending)
        self._changed: set[int] = set()  # in the view, flags changed and not yet reported
        self._recent: list[tuple[int, int]] = []  # (after, upto]: UIDs recent in this session
        self._with_recent: dict[frozenset[str], frozenset[str]] = {}
        if self._uids:
            self._mark_recent(self._uids[-1])
        self._keywords: frozenset[str] = _keywords_of(set(flags.values()))

    # -- the view ---------------------------------------------------------------------------

    @property
    def key(self) -> tuple[int, int]:
        return (self.mailbox_id, self.uidvalidity)

    @property
    def exists(self) -> int:
        """The message count the client knows (ghosts included)."""
        return len(self._uids)

    @property
    def uids(self) -> Sequence[int]:
        """The UIDs of the view in sequence-number order (do not modify)."""
        return self._uids

    @property
    def uidnext(self) -> int:
        """UIDNEXT as known: at least one above every UID seen."""
        highest = self._new[-1] if self._new else (self._uids[-1] if self._uids else 0)
        return max(self._uidnext, highest + 1)

    @property
    def keywords(self) -> frozenset[str]:
        """The keywords announced in the last FLAGS response."""
        return self._keywords

    def seq_of(self, uid: int) -> int | None:
        """The sequence number of ``uid`` in the view, or None."""
        i = bisect_left(self._uids, uid)
        if i < len(self._uids) and self._uids[i] == uid:
            return i + 1
        return None

    def is_gone(self, uid: int) -> bool:
        """Whether ``uid`` is a ghost: expunged, not yet reported."""
        return uid in self._gone

    def is_recent(self, uid: int) -> bool:
        recent = self._recent
        if not recent:  # the usual case: none, or one range
            return False
        if len(recent) == 1:
            return recent[0][0] < uid <= recent[0][1]
        return any(after < uid <= upto for after, upto in recent)

    @property
    def recent_count(self) -> int:
        count = 0
        for after, upto in self._recent:
            count += bisect_right(self._uids, upto) - bisect_right(self._uids, after)
        return count

    def flags(self, uid: int) -> frozenset[str]:
        """The stored flags of ``uid`` as last known (no ``\\Recent``)."""
        return self._flags.get(uid, frozenset())

    def client_flags(self, uid: int) -> frozenset[str]:
        """The flags to show the client: stored flags plus ``\\Recent`` when recent."""
        flags = self._flags.get(uid, _EMPTY)
        if not self.is_recent(uid):
            return flags
        return self._with_recent_flag(flags)

    def _with_recent_flag(self, flags: frozenset[str]) -> frozenset[str]:
        shown = self._with_recent.get(flags)
        if shown is None:  # few distinct flag sets exist: build each once
            if len(self._with_recent) > 1024:
                self._with_recent.clear()
            shown = self._with_recent[flags] = flags | {RECENT}
        return shown

    def flag_sets(self, uids: Iterable[int]) -> set[frozenset[str]]:
        """The distinct stored flag sets of ``uids`` (all in the view)."""
        return set(map(self._flags.__getitem__, uids))

    def client_flags_list(self, uids: Sequence[int]) -> list[frozenset[str]]:
        """:meth:`client_flags` of ``uids`` (ascending, all in the view), at C speed: one
        lookup each, and the recent ones found by bisection."""
        out = list(map(self._flags.__getitem__, uids))
        for after, upto in self._recent:
            lo = bisect_right(uids, after)
            hi = bisect_right(uids, upto, lo)
            if lo < hi:
                known, add = self._with_recent.get, self._with_recent_flag
                out[lo:hi] = [known(f) or add(f) for f in out[lo:hi]]
        return out

    def first_unseen(self) -> int | None:
        """Sequence number of the first message without ``\\Seen`` (for ``[UNSEEN n]``)."""
        for i, uid in enumerate(self._uids):
            if SEEN not in self._flags.get(uid, frozenset()):
                return i + 1
        return None

    # -- resolving sets ----------------------------------------------------------------------

    def resolve_seqs(self, seqset: SequenceSet) -> list[tuple[int, int]] | None:
        """``(seq, uid)`` pairs of a message-sequence set, ascending; None when the set names
        a message that does not exist (a number above EXISTS, or ``*`` in an empty mailbox),
        which the caller answers with ``BAD`` (RFC 9051 §6.4.5: only existing numbers)."""
        positions = self.positions(seqset, uid=False)
        return None if positions is None else self._pairs(positions)

    def positions(self, seqset: SequenceSet, *, uid: bool) -> list[tuple[int, int]] | None:
        """The index ranges ``[start, stop)`` of the view (sequence number = index + 1) that a
        UID set or a message-sequence set names, ascending; None as :meth:`resolve_seqs`."""
        if uid:
            return seqset.positions(self._uids)
        count = len(self._uids)
        if count == 0 and seqset.uses_star:
            return None
        ranges = seqset.resolve(count)
        if not ranges or ranges[-1][1] > count:
            return None
        return [(lo - 1, hi) for lo, hi in ranges]

    def _pairs(self, positions: list[tuple[int, int]]) -> list[tuple[int, int]]:
        uids = self._uids
        out: list[tuple[int, int]] = []
        for start, stop in positions:
            out.extend(zip(range(start + 1, stop + 1), uids[start:stop], strict=True))
        return out

    def resolve_uids(self, uidset: SequenceSet) -> list[tuple[int, int]]:
        """``(seq, uid)`` pairs of a UID set, ascending; UIDs not in the view are ignored
        (RFC 3501 §6.4.8), and ``*`` is the highest UID in the view."""
        return self._pairs(uidset.positions(self._uids))

    def search_bounds(self) -> tuple[int, int]:
        """``(largest_seq, largest_uid)``: what ``*`` means in a SEARCH."""
        return len(self._uids), (self._uids[-1] if self._uids else 0)

    # -- changes ------------------------------------------------------------------------------

    def apply_changes(
        self,
        changed: Iterable[tuple[int, int, frozenset[str]]],
        expunged: Iterable[int],
        highestmodseq: int,
    ) -> None:
        """Take in what storage reported since :attr:`highestmodseq` (``changes_since``):
        ``changed`` are ``(uid, modseq, flags)`` of live messages (new or with new flags),
        ``expunged`` UIDs removed. Unknown expunged UIDs are ignored; repeats are harmless."""
        known_top = self._new[-1] if self._new else (self._uids[-1] if self._uids else 0)
        fresh: list[int] = []
        for uid, _, flags in changed:
            if uid in self._flags:
                if uid not in self._gone and flags != self._flags[uid]:
                    self._flags[uid] = _intern(flags)
                    if self.seq_of(uid) is not None:
                        self._changed.add(uid)
            elif uid > known_top:
                self._flags[uid] = _intern(flags)
                fresh.append(uid)
            # An unknown UID below the known top cannot appear (UIDs are committed in order);
            # ignoring it keeps the view sorted.
        if fresh:
            fresh.sort()
            self._new.extend(fresh)
            self._uidnext = max(self._uidnext, fresh[-1] + 1)
            self._mark_recent(fresh[-1])
        for uid in expunged:
            self._forget(uid)
        if highestmodseq > self.highestmodseq:
            self.highestmodseq = highestmodseq

    def appended(self, uid: int, flags: frozenset[str]) -> bool:
        """This session's own APPEND stored ``uid`` with ``flags``. When ``uid`` is the next
        UID the view expects (:attr:`uidnext`), no other message can have been committed
        before it unseen, so it joins the view as if storage had reported it (announced by the
        next :meth:`updates`). Otherwise False: the caller must sync with storage, which also
        reports the messages in between."""
        if uid != self.uidnext:
            return False
        self.apply_changes([(uid, 0, flags)], (), self.highestmodseq)
        return True

    def expunged(self, uids: Iterable[int]) -> None:
        """This session's own EXPUNGE/MOVE removed ``uids``."""
        for uid in uids:
            self._forget(uid)

    def _forget(self, uid: int) -> None:
        if uid not in self._flags:
            return
        i = bisect_left(self._new, uid)
        if i < len(self._new) and self._new[i] == uid:
            del self._new[i]
            del self._flags[uid]
            return
        self._gone.add(uid)
        self._changed.discard(uid)

    def stored(self, uid: int, flags: frozenset[str]) -> None:
        """This session's own STORE (or implicit ``\\Seen``) set ``flags``; the caller reports
        it, so it is not queued as a change (a queued one is dropped: it would be stale)."""
        if uid not in self._flags or uid in self._gone:
            return
        self._flags[uid] = _intern(flags)
        self._changed.discard(uid)
        # highestmodseq is deliberately not raised here: changes by other sessions with a
        # lower modseq may not have been synced yet, and changes_since must still see them.

    def reported(self, uid: int) -> None:
        """The client was just sent ``uid``'s current flags: no separate update is owed."""
        self._changed.discard(uid)

    def reported_all(self, uids: Iterable[int]) -> None:
        """:meth:`reported` for many messages."""
        if self._changed:
            self._changed.difference_update(uids)

    def _mark_recent(self, highest: int) -> None:
        if self.readonly:
            after = self._tracker.claimed(self.key)
        else:
            after = self._tracker.claim(self.key, highest)
        if after >= highest:
            return
        if self._recent and self._recent[-1][1] >= after:
            first, _ = self._recent[-1]
            self._recent[-1] = (min(first, after), highest)
        else:
            self._recent.append((after, highest))

    # -- responses ----------------------------------------------------------------------------

    def _keywords_in(self, uids: Iterable[int]) -> frozenset[str]:
        return _keywords_of({self._flags[u] for u in uids if u in self._flags})

    def flags_response(self) -> bytes:
        """``* FLAGS (...)`` and ``* OK [PERMANENTFLAGS (...)]`` (empty when read-only)."""
        keywords = sorted(self._keywords)
        out = encoder.flags([*SYSTEM_FLAGS, *keywords])
        perm: list[str] = [] if self.readonly else [*SYSTEM_FLAGS, *keywords, ALL_KEYWORDS]
        text = "Read-only mailbox" if self.readonly else "Flags permitted"
        return out + encoder.untagged(encoder.OK, text, ResponseCode.permanentflags(perm))

    def select_response(self) -> bytes:
        """Everything SELECT/EXAMINE sends before its tagged OK (RFC 3501 §6.3.1)."""
        parts = [
            self.flags_response(),
            encoder.exists(len(self._uids)),
            encoder.recent(self.recent_count),
        ]
        unseen = self.first_unseen()
        if unseen is not None:
            parts.append(
                encoder.untagged(encoder.OK, f"First unseen: {unseen}", ResponseCode.unseen(unseen))
            )
        parts.append(
            encoder.untagged(encoder.OK, "UIDs valid", ResponseCode.uidvalidity(self.uidvalidity))
        )
        parts.append(
            encoder.untagged(encoder.OK, "Predicted next UID", ResponseCode.uidnext(self.uidnext))
        )
        return b"".join(parts)

    @property
    def pending(self) -> bool:
        """Whether :meth:`updates` with expunges allowed would say anything."""
        return bool(self._gone or self._new or self._changed)

    def updates(self, *, expunge: bool) -> bytes:
        """The untagged responses owed to the client, and the view updated to match.

        With ``expunge`` False (during FETCH, STORE, SEARCH) ghosts stay in the view; new
        messages and flag changes are reported either way. Order: EXPUNGE (ascending, each
        number as it is after the previous ones), EXISTS/RECENT, FLAGS/PERMANENTFLAGS when a
        new keyword appeared, then FETCH flag updates.
        """
        parts: list[bytes] = []
        if expunge and self._gone:
            parts.append(self._report_expunges())
        keywords = self._keywords
        if self._new:
            keywords = keywords | self._keywords_in(self._new)
            self._uids.extend(self._new)
            self._new = []
            parts.append(encoder.exists(len(self._uids)))
            parts.append(encoder.recent(self.recent_count))
        if self._changed:
            keywords = keywords | self._keywords_in(self._changed)
        if keywords != self._keywords:
            self._keywords = keywords
            parts.append(self.flags_response())
        if self._changed:
            changed = sorted(self._changed)
            self._changed.clear()
            for uid in changed:
                seq = self.seq_of(uid)
                if seq is not None:
                    parts.append(self.flags_fetch(seq, uid))
        return b"".join(parts)

    def flags_fetch(self, seq: int, uid: int) -> bytes:
        """``* seq FETCH (UID uid FLAGS (...))``."""
        return encoder.fetch(
            seq,
            (b"UID %d" % uid, b"FLAGS " + encoder.flag_list(sort_flags(self.client_flags(uid)))),
        )

    def new_keywords(self, flags: Iterable[str]) -> bytes:
        """FLAGS/PERMANENTFLAGS again when ``flags`` hold a keyword the client was not told
        about (before a STORE or FETCH shows it); empty otherwise."""
        extra = {f for f in flags if not f.startswith("\\")} - self._keywords
        if not extra:
            return b""
        self._keywords = self._keywords | extra
        return self.flags_response()

    def _report_expunges(self) -> bytes:
        gone = self._gone
        lines: list[bytes] = []
        kept: list[int] = []
        removed = 0
        for i, uid in enumerate(self._uids):
            if uid in gone:
                lines.append(encoder.expunge(i + 1 - removed))
                removed += 1
                del self._flags[uid]
            else:
                kept.append(uid)
        self._uids = kept
        self._gone = set()
        return b"".join(lines)


def check_flags(flags: Iterable[str]) -> str | None:
    """The first flag a client may not set, or None: an unknown ``\\Name`` (RFC 3501 §2.3.2:
    only the server defines system flags). ``\\Recent`` is accepted here and dropped by
    :func:`storable_flags` (the server alone maintains it)."""
    for flag in flags:
        if flag.startswith("\\") and flag not in _SYSTEM_SET and flag != RECENT:
            return flag
    return None


def storable_flags(flags: Iterable[str]) -> frozenset[str]:
    """The flags to write: everything but ``\\Recent``."""
    return frozenset(f for f in flags if f != RECENT)
