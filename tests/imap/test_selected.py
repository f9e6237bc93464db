"""The pure selected-mailbox state: sequence numbers, pending EXPUNGE/EXISTS/FETCH, \\Recent."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from letterbird.imap.selected import (
    RECENT,
    SYSTEM_FLAGS,
    RecentTracker,
    SelectedMailbox,
    check_flags,
    sort_flags,
    storable_flags,
)
from letterbird.proto.imap.seqset import SequenceSet

MB = 7
UV = 1000
SEEN = frozenset({"\\Seen"})
NONE: frozenset[str] = frozenset()


def make(
    uids: list[int],
    *,
    flags: dict[int, frozenset[str]] | None = None,
    uidnext: int | None = None,
    readonly: bool = False,
    tracker: RecentTracker | None = None,
    modseq: int = 10,
) -> SelectedMailbox:
    flags = flags or {}
    messages = [(u, 1, flags.get(u, NONE)) for u in uids]
    return SelectedMailbox(
        MB,
        UV,
        uidnext if uidnext is not None else (max(uids) + 1 if uids else 1),
        modseq,
        messages,
        readonly=readonly,
        tracker=tracker if tracker is not None else RecentTracker(),
    )


def lines(data: bytes) -> list[bytes]:
    return [line for line in data.split(b"\r\n") if line]


# -- the view --------------------------------------------------------------------------------


def test_view_and_sequence_numbers() -> None:
    sel = make([3, 5, 9], flags={5: SEEN})
    assert sel.exists == 3
    assert list(sel.uids) == [3, 5, 9]
    assert sel.key == (MB, UV)
    assert [sel.seq_of(u) for u in (3, 5, 9, 4, 10, 1)] == [1, 2, 3, None, None, None]
    assert sel.uidnext == 10
    assert sel.flags(5) == SEEN
    assert sel.flags(42) == NONE
    assert sel.first_unseen() == 1
    assert sel.search_bounds() == (3, 9)


def test_messages_at_or_above_uidnext_wait_for_the_next_sync() -> None:
    sel = make([1, 2, 3], uidnext=3)
    assert list(sel.uids) == [1, 2]
    assert sel.uidnext == 3


def test_unsorted_listing_is_sorted() -> None:
    sel = SelectedMailbox(
        MB, UV, 10, 1, [(5, 1, NONE), (2, 1, NONE)], readonly=False, tracker=RecentTracker()
    )
    assert list(sel.uids) == [2, 5]


def test_first_unseen_none_when_all_seen() -> None:
    assert make([1, 2], flags={1: SEEN, 2: SEEN}).first_unseen() is None
    assert make([]).first_unseen() is None


def test_empty_mailbox() -> None:
    sel = make([])
    assert sel.exists == 0
    assert sel.uidnext == 1
    assert sel.search_bounds() == (0, 0)
    assert sel.recent_count == 0


# -- resolving sets --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1", [(1, 10)]),
        ("2:3", [(2, 20), (3, 30)]),
        ("3:2", [(2, 20), (3, 30)]),  # reversed ranges are the same range (RFC 3501 §9)
        ("*", [(4, 40)]),
        ("3:*", [(3, 30), (4, 40)]),
        ("*:3", [(3, 30), (4, 40)]),
        ("1,1,2", [(1, 10), (2, 20)]),
        ("4,1", [(1, 10), (4, 40)]),
    ],
)
def test_resolve_seqs(text: str, expected: list[tuple[int, int]]) -> None:
    assert make([10, 20, 30, 40]).resolve_seqs(SequenceSet.parse(text)) == expected


@pytest.mark.parametrize("text", ["5", "1:5", "3,9", "4294967295"])
def test_resolve_seqs_beyond_exists_is_invalid(text: str) -> None:
    assert make([10, 20, 30, 40]).resolve_seqs(SequenceSet.parse(text)) is None


@pytest.mark.parametrize("text", ["*", "1:*", "1"])
def test_resolve_seqs_in_an_empty_mailbox_is_invalid(text: str) -> None:
    assert make([]).resolve_seqs(SequenceSet.parse(text)) is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("20", [(2, 20)]),
        ("15", []),  # unknown UIDs are ignored
        ("15:35", [(2, 20), (3, 30)]),
        ("*", [(4, 40)]),
        ("100:*", [(4, 40)]),  # RFC 3501 §6.4.8: n:* always includes the highest UID
        ("1:4294967295", [(1, 10), (2, 20), (3, 30), (4, 40)]),
    ],
)
def test_resolve_uids(text: str, expected: list[tuple[int, int]]) -> None:
    assert make([10, 20, 30, 40]).resolve_uids(SequenceSet.parse(text)) == expected


def test_resolve_uids_empty_mailbox() -> None:
    assert make([]).resolve_uids(SequenceSet.parse("1:*")) == []


# -- other sessions' changes -----------------------------------------------------------------


def test_new_messages_wait_for_exists() -> None:
    sel = make([1, 2])
    sel.apply_changes([(3, 11, NONE), (4, 11, SEEN)], [], 11)
    assert sel.exists == 2  # not yet told
    assert sel.uidnext == 5
    assert sel.resolve_seqs(SequenceSet.parse("*")) == [(2, 2)]
    assert sel.pending
    out = sel.updates(expunge=False)
    assert lines(out) == [b"* 4 EXISTS", b"* 4 RECENT"]
    assert sel.exists == 4
    assert sel.flags(4) == SEEN
    assert sel.highestmodseq == 11
    assert not sel.pending
    assert sel.updates(expunge=True) == b""


def test_flag_change_reported_once_as_fetch() -> None:
    sel = make([1, 2, 3])
    sel.apply_changes([(2, 12, SEEN)], [], 12)
    assert sel.flags(2) == SEEN
    assert lines(sel.updates(expunge=False)) == [b"* 2 FETCH (UID 2 FLAGS (\\Recent \\Seen))"]
    assert sel.updates(expunge=False) == b""


def test_same_flags_again_is_not_reported() -> None:
    sel = make([1, 2], flags={2: SEEN})
    sel.apply_changes([(2, 12, SEEN)], [], 12)  # e.g. our own STORE coming back
    assert sel.updates(expunge=True) == b""
    sel.apply_changes([(2, 12, SEEN)], [], 12)  # a repeat changes nothing
    assert sel.updates(expunge=True) == b""


def test_flag_change_of_a_pending_new_message_is_not_a_fetch() -> None:
    sel = make([1])
    sel.apply_changes([(2, 11, NONE)], [], 11)
    sel.apply_changes([(2, 12, SEEN)], [], 12)
    assert lines(sel.updates(expunge=True)) == [b"* 2 EXISTS", b"* 2 RECENT"]
    assert sel.flags(2) == SEEN


def test_unknown_uid_below_the_known_top_is_ignored() -> None:
    sel = make([1, 5])
    sel.apply_changes([(3, 11, NONE)], [], 11)
    assert sel.updates(expunge=True) == b""
    assert list(sel.uids) == [1, 5]


def test_expunge_held_back_while_not_allowed() -> None:
    sel = make([10, 20, 30, 40])
    sel.apply_changes([], [20, 99], 13)  # 99 was never known: ignored
    assert sel.is_gone(20)
    assert sel.exists == 4
    assert sel.seq_of(30) == 3  # sequence numbers stay stable
    assert sel.updates(expunge=False) == b""
    assert sel.pending
    assert lines(sel.updates(expunge=True)) == [b"* 2 EXPUNGE"]
    assert list(sel.uids) == [10, 30, 40]
    assert not sel.is_gone(20)
    assert sel.flags(20) == NONE


def test_expunges_are_numbered_as_each_one_leaves() -> None:
    sel = make([1, 2, 3, 4, 5, 6])
    sel.expunged([2, 3, 6])
    assert lines(sel.updates(expunge=True)) == [b"* 2 EXPUNGE", b"* 2 EXPUNGE", b"* 4 EXPUNGE"]
    assert list(sel.uids) == [1, 4, 5]


def test_flag_change_of_a_ghost_is_dropped() -> None:
    sel = make([1, 2])
    sel.apply_changes([(2, 11, SEEN)], [], 11)
    sel.expunged([2])
    sel.apply_changes([(2, 12, SEEN)], [], 12)
    assert lines(sel.updates(expunge=True)) == [b"* 2 EXPUNGE"]


def test_new_then_expunged_before_exists_never_shows() -> None:
    sel = make([1])
    sel.apply_changes([(2, 11, NONE), (3, 11, NONE)], [], 11)
    sel.apply_changes([], [2], 12)
    assert lines(sel.updates(expunge=False)) == [b"* 2 EXISTS", b"* 2 RECENT"]
    assert list(sel.uids) == [1, 3]


def test_order_expunge_exists_flags_fetch() -> None:
    sel = make([1, 2, 3])
    sel.apply_changes([(3, 11, frozenset({"$Work"})), (4, 11, NONE)], [1], 11)
    assert lines(sel.updates(expunge=True)) == [
        b"* 1 EXPUNGE",
        b"* 3 EXISTS",
        b"* 3 RECENT",
        b"* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $Work)",
        b"* OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $Work \\*)] "
        b"Flags permitted",
        b"* 2 FETCH (UID 3 FLAGS (\\Recent $Work))",
    ]


def test_new_message_with_a_new_keyword_announces_flags() -> None:
    sel = make([1])
    sel.apply_changes([(2, 11, frozenset({"$Junk"}))], [], 11)
    out = lines(sel.updates(expunge=True))
    assert out[:2] == [b"* 2 EXISTS", b"* 2 RECENT"]
    assert out[2].startswith(b"* FLAGS (") and b"$Junk" in out[2]
    assert sel.keywords == frozenset({"$Junk"})


def test_equal_flag_sets_are_shared() -> None:
    a = make([1, 2], flags={1: frozenset({"$x", "\\Seen"}), 2: frozenset({"\\Seen", "$x"})})
    assert a.flags(1) is a.flags(2)


def test_modseq_only_moves_forward() -> None:
    sel = make([1], modseq=20)
    sel.apply_changes([], [], 15)
    assert sel.highestmodseq == 20


# -- this session's own changes ------------------------------------------------------------


def test_stored_is_not_reported_again() -> None:
    sel = make([1, 2])
    sel.apply_changes([(1, 11, SEEN)], [], 11)  # another session's change, pending
    sel.stored(1, frozenset({"\\Seen", "\\Flagged"}))  # then ours, which we report
    assert sel.flags(1) == frozenset({"\\Seen", "\\Flagged"})
    assert sel.highestmodseq == 11  # never raised by our own STORE (others may lag)
    assert sel.updates(expunge=True) == b""


def test_stored_on_unknown_or_ghost_is_ignored() -> None:
    sel = make([1])
    sel.stored(5, SEEN)
    sel.expunged([1])
    sel.stored(1, SEEN)
    assert sel.flags(5) == NONE
    assert lines(sel.updates(expunge=True)) == [b"* 1 EXPUNGE"]


def test_reported_clears_a_pending_change() -> None:
    sel = make([1])
    sel.apply_changes([(1, 11, SEEN)], [], 11)
    sel.reported(1)
    assert sel.updates(expunge=True) == b""


def test_expunged_unknown_uid_is_ignored() -> None:
    sel = make([1])
    sel.expunged([7])
    assert not sel.pending


def test_flags_fetch_sorts_system_flags_first() -> None:
    sel = make([4], flags={4: frozenset({"zeta", "\\Seen", "$a", "\\Answered"})})
    assert sel.flags_fetch(1, 4) == (
        b"* 1 FETCH (UID 4 FLAGS (\\Recent \\Answered \\Seen $a zeta))\r\n"
    )


def test_new_keywords() -> None:
    sel = make([1], flags={1: frozenset({"$Old"})})
    assert sel.new_keywords(["\\Seen", "$Old"]) == b""
    out = lines(sel.new_keywords(["$New", "\\Flagged"]))
    assert out[0] == b"* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $New $Old)"
    assert sel.keywords == frozenset({"$New", "$Old"})
    assert sel.new_keywords(["$New"]) == b""


# -- SELECT responses ------------------------------------------------------------------------


def test_select_response_read_write() -> None:
    sel = make([1, 2, 3], flags={1: SEEN, 2: frozenset({"$Label"})}, uidnext=8)
    assert lines(sel.select_response()) == [
        b"* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $Label)",
        b"* OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $Label \\*)] "
        b"Flags permitted",
        b"* 3 EXISTS",
        b"* 3 RECENT",
        b"* OK [UNSEEN 2] First unseen: 2",
        b"* OK [UIDVALIDITY 1000] UIDs valid",
        b"* OK [UIDNEXT 8] Predicted next UID",
    ]


def test_select_response_read_only_and_all_seen() -> None:
    sel = make([1], flags={1: SEEN}, readonly=True)
    out = lines(sel.select_response())
    assert out[1] == b"* OK [PERMANENTFLAGS ()] Read-only mailbox"
    assert not any(b"UNSEEN" in line for line in out)


# -- \Recent ---------------------------------------------------------------------------------


def test_first_session_claims_recent() -> None:
    tracker = RecentTracker()
    first = make([1, 2, 3], tracker=tracker)
    assert first.recent_count == 3
    assert first.is_recent(2)
    assert first.client_flags(2) == frozenset({RECENT})
    second = make([1, 2, 3], tracker=tracker)
    assert second.recent_count == 0
    assert second.client_flags(2) == NONE
    assert tracker.claimed((MB, UV)) == 3
    assert len(tracker) == 1


def test_new_message_recent_only_for_the_first_session_to_learn_of_it() -> None:
    tracker = RecentTracker()
    a = make([1], tracker=tracker)
    b = make([1], tracker=tracker)
    b.apply_changes([(2, 11, NONE)], [], 11)  # b syncs first
    a.apply_changes([(2, 11, NONE)], [], 11)
    assert lines(b.updates(expunge=True)) == [b"* 2 EXISTS", b"* 1 RECENT"]
    assert lines(a.updates(expunge=True)) == [b"* 2 EXISTS", b"* 1 RECENT"]
    assert b.is_recent(2) and not a.is_recent(2)
    assert a.is_recent(1) and not b.is_recent(1)


def test_recent_ranges_merge() -> None:
    sel = make([1, 2])
    sel.apply_changes([(3, 11, NONE)], [], 11)
    sel.apply_changes([(4, 12, NONE)], [], 12)
    sel.updates(expunge=True)
    assert sel.recent_count == 4
    assert all(sel.is_recent(u) for u in (1, 2, 3, 4))
    assert not sel.is_recent(5)


def test_recent_after_expunge_counts_only_the_view() -> None:
    sel = make([1, 2, 3])
    sel.expunged([2])
    sel.updates(expunge=True)
    assert sel.recent_count == 2


def test_examine_sees_unclaimed_recent_without_claiming() -> None:
    tracker = RecentTracker()
    ro = make([1, 2], readonly=True, tracker=tracker)
    assert ro.recent_count == 2
    ro.apply_changes([(3, 11, NONE)], [], 11)
    ro.updates(expunge=True)
    assert ro.recent_count == 3
    assert tracker.claimed((MB, UV)) == 0
    rw = make([1, 2, 3], tracker=tracker)
    assert rw.recent_count == 3


def test_tracker_claim_and_forget() -> None:
    tracker = RecentTracker()
    assert tracker.claim((1, 1), 5) == 0
    assert tracker.claim((1, 1), 3) == 5  # never moves backwards
    assert tracker.claimed((1, 1)) == 5
    assert tracker.claimed((1, 2)) == 0  # another UIDVALIDITY is another mailbox
    tracker.forget((1, 1))
    tracker.forget((9, 9))
    assert tracker.claimed((1, 1)) == 0


def test_recent_gap_when_another_session_claimed_in_between() -> None:
    tracker = RecentTracker()
    a = make([1], tracker=tracker)  # claims 1
    tracker.claim((MB, UV), 3)  # someone else claims 2 and 3
    a.apply_changes([(2, 11, NONE), (3, 11, NONE), (4, 11, NONE)], [], 11)
    a.updates(expunge=True)
    assert [u for u in (1, 2, 3, 4) if a.is_recent(u)] == [1, 4]


# -- helpers ---------------------------------------------------------------------------------


def test_check_and_storable_flags() -> None:
    assert check_flags(["\\Seen", "$x", "\\Recent", *SYSTEM_FLAGS]) is None
    assert check_flags(["\\Seen", "\\Bogus"]) == "\\Bogus"
    assert storable_flags(["\\Recent", "\\Seen", "kw"]) == frozenset({"\\Seen", "kw"})


def test_sort_flags() -> None:
    assert sort_flags(["b", "\\Seen", "\\Recent", "a", "\\Answered"]) == [
        "\\Recent",
        "\\Answered",
        "\\Seen",
        "a",
        "b",
    ]


# -- a model check ---------------------------------------------------------------------------

_EXPUNGE = re.compile(rb"\* (\d+) EXPUNGE")
_EXISTS = re.compile(rb"\* (\d+) EXISTS")


@settings(deadline=None, max_examples=200)
@given(
    st.lists(
        st.one_of(
            st.tuples(st.just("new"), st.integers(1, 3)),
            st.tuples(st.just("gone"), st.integers(0, 30)),
            st.tuples(st.just("flag"), st.integers(0, 30)),
            st.tuples(st.just("report"), st.booleans()),
        ),
        max_size=40,
    )
)
def test_client_view_tracks_storage(ops: list[tuple[str, int]]) -> None:
    """Replaying the untagged responses on a client's copy of the UID list always gives the
    view, and after a report with expunges allowed the view equals storage."""
    storage = {1: NONE, 2: NONE, 3: NONE}
    next_uid = 4
    modseq = 10
    sel = make(sorted(storage))
    client = sorted(storage)
    for op, arg in ops:
        modseq += 1
        if op == "new":
            added = []
            for _ in range(arg):
                storage[next_uid] = NONE
                added.append((next_uid, modseq, NONE))
                next_uid += 1
            sel.apply_changes(added, [], modseq)
        elif op == "gone" and storage:
            uid = sorted(storage)[arg % len(storage)]
            del storage[uid]
            sel.apply_changes([], [uid], modseq)
        elif op == "flag" and storage:
            uid = sorted(storage)[arg % len(storage)]
            storage[uid] = SEEN if storage[uid] == NONE else NONE
            sel.apply_changes([(uid, modseq, storage[uid])], [], modseq)
        elif op == "report":
            data = sel.updates(expunge=bool(arg))
            for line in lines(data):
                m = _EXPUNGE.fullmatch(line)
                if m:
                    del client[int(m.group(1)) - 1]
                    continue
                m = _EXISTS.fullmatch(line)
                if m:
                    count = int(m.group(1))
                    assert count >= len(client)
                    client.extend(sel.uids[len(client) : count])
            assert client == list(sel.uids)
    sel.updates(expunge=True)
    assert list(sel.uids) == sorted(storage)
    for uid in storage:
        assert sel.flags(uid) == storage[uid]
