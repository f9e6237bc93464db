"""The IMAP hot paths' caches and batch evaluators, checked against the plain code paths.

* :class:`letterbird.imap.search.Searcher` (one context reused per SEARCH, header values and
  decoded text kept in a per-blob memo) must answer exactly what :func:`matches` answers, with
  or without a memo, whether the memo stood in for the bytes or not;
* :class:`letterbird.imap.session.InfoCache` bounds the structures and memo values it keeps;
* :class:`letterbird.imap.fetch.Renderer` and the memoised ENVELOPE/BODYSTRUCTURE items render
  exactly what :func:`letterbird.imap.fetch.render` renders;
* ``StateItems.line`` is ``encoder.fetch(seq, StateItems.render(...))``;
* the selected state's own-APPEND shortcut, re-SELECT snapshot and bulk ``reported_all``;
* the storage's light ``fetch_meta`` read (SQLite, and PostgreSQL when the suite runs there).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from conftest import blob_of, sample_message
from hypothesis import given, settings
from hypothesis import strategies as st
from test_fetch import MESSAGES as FETCH_MESSAGES
from test_search import INFOS, MESSAGES, NOW, PROGRAMS, key_of, message

from letterbird.imap import fetch
from letterbird.imap.search import Searcher, SearchMessage, blob_range, matches, needs
from letterbird.imap.selected import (
    _INTERNED,
    _MAX_INTERNED,
    RECENT,
    RecentTracker,
    SelectedMailbox,
)
from letterbird.imap.session import InfoCache, Memo, StateItems
from letterbird.mime import parse_message
from letterbird.mime.structure import envelope_from_json
from letterbird.proto.imap import encoder
from letterbird.proto.imap.fetchatt import FetchAtt, Section
from letterbird.proto.imap.search import SearchKey
from letterbird.proto.imap.seqset import SequenceSet
from letterbird.storage.interface import AppendTarget, Changes, FlagMode, MessageRecord, NotFound
from letterbird.storage.sqlite import SqliteStorage

# --- Searcher ---------------------------------------------------------------------------------


def searcher_hits(
    key: SearchKey, memos: dict[int, dict[str, object]] | None, reads: list[int] | None = None
) -> list[int]:
    """Evaluate like the session does with a Searcher: bytes only as blob_range says, given
    each message's memo (when ``memos`` is not None); ``reads`` collects what was read."""
    searcher = Searcher(key, largest_seq=4, largest_uid=40)
    structure, needs_bytes = needs(key)
    assert (searcher.needs_structure, searcher.needs_bytes) == (structure, needs_bytes)
    out = []
    for n, data in MESSAGES.items():
        msg = message(n)
        if not searcher.needs_record:
            hit = searcher.matches_state(msg.seq, msg.uid, msg.flags, msg.recent)
        else:
            info = INFOS[n] if structure or needs_bytes else None
            envelope = None
            if searcher.envelope_only:  # as the session does: the envelope alone
                info, envelope = None, INFOS[n].envelope
            memo = None if memos is None else memos.setdefault(n, {})
            start, end = searcher.blob_range(info, memo)
            assert (start, end) == blob_range(key, info, memo)
            blob = None
            if (start, end) != (0, 0):
                blob = data[start:end] if end is not None else data[start:]
                if reads is not None:
                    reads.append(n)
            hit = searcher.matches(
                msg.seq,
                msg.uid,
                msg.flags,
                msg.recent,
                msg.internaldate,
                msg.size,
                msg.modseq,
                info,
                memo,
                blob,
                envelope,
            )
        if hit:
            out.append(n)
    return out


@pytest.mark.parametrize(("program", "literals", "expected"), PROGRAMS)
def test_searcher_answers_the_recorded_programs(
    program: str, literals: tuple[bytes, ...], expected: list[int]
) -> None:
    key = key_of(program, literals)
    assert searcher_hits(key, None) == expected
    memos: dict[int, dict[str, object]] = {}
    reads: list[int] = []
    assert searcher_hits(key, memos) == expected  # fills the memos
    assert searcher_hits(key, memos, reads) == expected  # answered from them
    if needs(key)[1] and program.startswith(("BODY", "HEADER")):
        assert reads == []  # one key, evaluated for every message: the memos stand in


ATOMS = [
    "FROM juergen",
    'FROM "a@b.test"',
    "TO bob",
    'SUBJECT "gr"',
    'CC ""',
    'BODY "needle"',
    'BODY "haystack"',
    'BODY ""',
    'TEXT "inner subject"',
    'TEXT "mime-version"',
    'HEADER X-Custom ""',
    'HEADER X-Folded "one two"',
    'HEADER Sender ""',
    'HEADER FROM "Alice <alice"',
    "SENTBEFORE 1-Jan-2000",
    "LARGER 40",
    "SEEN",
    "UNSEEN",
    "2:3",
    "UID 30:*",
    "RECENT",
    "MODSEQ 2",
    "ALL",
]


@st.composite
def programs(draw: st.DrawFn, depth: int = 0) -> str:
    kind = draw(st.sampled_from(["atom", "atom", "not", "or", "and"] if depth < 3 else ["atom"]))
    if kind == "atom":
        return draw(st.sampled_from(ATOMS))
    if kind == "not":
        return "NOT " + draw(programs(depth + 1))
    left, right = draw(programs(depth + 1)), draw(programs(depth + 1))
    return f"OR ({left}) ({right})" if kind == "or" else f"({left} {right})"


@settings(deadline=None, max_examples=300)
@given(programs(), st.lists(st.sampled_from([1, 2, 3, 4]), max_size=4))
def test_searcher_agrees_with_matches(program: str, warm: list[int]) -> None:
    """Any program: the Searcher, cold or with memos partly filled by other programs, gives
    what matches() gives with the bytes passed as the session passes them."""
    key = key_of(program)
    expected = []
    structure, needs_bytes = needs(key)
    for n, data in MESSAGES.items():
        blob = None
        if needs_bytes:
            _, end = blob_range(key, INFOS[n])
            blob = data[:end] if end is not None else data
        msg = message(n, info=structure)
        if matches(key, msg, blob=blob, largest_seq=4, largest_uid=40):
            expected.append(n)
    assert searcher_hits(key, None) == expected
    memos: dict[int, dict[str, object]] = {}
    for n in warm:  # some messages already evaluated for other programs
        searcher_hits(key_of(ATOMS[n * 3]), memos)
    assert searcher_hits(key, memos) == expected
    assert searcher_hits(key, memos) == expected


def test_memo_holds_decoded_values() -> None:
    memo: dict[str, object] = {}
    searcher = Searcher(key_of("FROM juergen"), largest_seq=4, largest_uid=40)
    msg = message(2)
    args = (msg.seq, msg.uid, msg.flags, msg.recent, msg.internaldate, msg.size, msg.modseq)
    assert searcher.matches(*args, INFOS[2], memo, None)
    assert set(memo) == {"e:from"}
    memo["e:from"] = ["someone else"]  # the memo is believed
    assert not searcher.matches(*args, INFOS[2], memo, None)

    data = MESSAGES[2]
    body = Searcher(key_of('TEXT "inner subject"'), largest_seq=4, largest_uid=40)
    memo = {}
    assert body.blob_range(INFOS[2], memo) == (0, None)
    assert body.matches(*args, INFOS[2], memo, data)
    assert {"body", "headers"} <= set(memo)
    assert body.blob_range(INFOS[2], memo) == (0, 0)
    assert body.matches(*args, INFOS[2], memo, None)

    header = Searcher(key_of('HEADER X-Custom ""'), largest_seq=4, largest_uid=40)
    memo = {}
    assert header.blob_range(INFOS[2], memo) == (0, INFOS[2].body.body_start)
    assert header.matches(*args, INFOS[2], memo, data[: INFOS[2].body.body_start])
    assert set(memo) == {"h:x-custom"}
    assert header.blob_range(INFOS[2], memo) == (0, 0)
    assert header.matches(*args, INFOS[2], memo, None)
    # a program that needs bytes but got neither bytes nor a full memo matches nothing
    assert not header.matches(*args, INFOS[2], {}, None)


class Refusing(dict[str, object]):
    """A memo that keeps nothing (as a full cache may decline)."""

    def __setitem__(self, key: str, value: object) -> None:
        pass


def test_a_declining_memo_changes_nothing() -> None:
    for program, literals, expected in PROGRAMS:
        key = key_of(program, literals)
        memos: dict[int, Any] = {n: Refusing() for n in MESSAGES}
        assert searcher_hits(key, memos) == expected
        assert searcher_hits(key, memos) == expected


def test_searcher_state_keys_need_no_record() -> None:
    for program in ("ALL", "SEEN", "NOT (OR 1:2 UID 40)", "RECENT UNKEYWORD $x"):
        assert not Searcher(key_of(program), largest_seq=1, largest_uid=1).needs_record
    for program in ("LARGER 1", "SINCE 1-Jan-2020", "MODSEQ 1", "NOT FROM x", "BODY x"):
        assert Searcher(key_of(program), largest_seq=1, largest_uid=1).needs_record
    searcher = Searcher(key_of("OR (2:* SEEN) RECENT"), largest_seq=3, largest_uid=30)
    assert searcher.matches_state(3, 30, frozenset({"\\Seen"}), False)
    assert not searcher.matches_state(1, 10, frozenset({"\\Seen"}), False)
    assert searcher.matches_state(1, 10, frozenset(), True)
    assert not searcher.matches_state(2, 20, frozenset(), False)


def test_matches_still_takes_a_search_message() -> None:
    msg = SearchMessage(1, 1, frozenset(), NOW, 10, 1, False, None)
    assert matches(key_of("ALL"), msg, blob=None, largest_seq=1, largest_uid=1)


# --- InfoCache ----------------------------------------------------------------------------


def record(n: int, structure: bytes | None = None) -> MessageRecord:
    data = sample_message(n)
    return MessageRecord(
        1,
        n,
        1,
        frozenset(),
        0.0,
        len(data),
        f"hash{n}",
        parse_message(data).to_json() if structure is None else structure,
    )


def test_info_cache_entries_and_memo_accounting() -> None:
    records = [record(n) for n in range(4)]
    size = len(records[0].structure)
    cache = InfoCache(budget=size * 3 + 300)
    entries = [cache.entry(r) for r in records[:3]]
    assert len(cache) == 3 and cache.used == sum(len(r.structure) for r in records[:3])
    assert cache.peek("hash0") is entries[0]  # now the most recently used
    memo = entries[0].memo
    assert isinstance(memo, Memo)
    memo["ENVELOPE"] = b"x" * 100
    assert memo["ENVELOPE"] == b"x" * 100 and cache.used > 3 * size
    memo["e:from"] = ["alice"]
    memo["other"] = 5  # any other value is charged a small fixed cost
    assert "e:from" in memo and memo["other"] == 5
    memo["big"] = "y" * (cache.budget // 8 + 1)  # too large to keep
    assert "big" not in memo
    cache.entry(records[3])  # over budget: the least recently used (hash1) goes
    assert cache.peek("hash1") is None and cache.peek("hash0") is entries[0]
    assert cache.used <= cache.budget
    stale = entries[1].memo
    stale["ENVELOPE"] = b"z"  # its entry was evicted: nothing is kept or charged
    assert "ENVELOPE" not in stale
    # a new entry for the same blob does not take charges for the old memo
    again = cache.entry(records[1])
    assert again is not entries[1]
    stale["ENVELOPE"] = b"z"
    assert "ENVELOPE" not in stale and "ENVELOPE" not in again.memo
    cache.clear()
    assert len(cache) == 0 and cache.used == 0


def test_entries_decode_lazily() -> None:
    rec = record(1)
    cache = InfoCache(budget=100 * len(rec.structure))
    entry = cache.entry(rec)
    assert entry._info is None and entry._envelope is None  # nothing decoded yet
    envelope = entry.envelope
    assert envelope == parse_message(sample_message(1)).envelope
    assert entry._info is None  # the envelope alone
    info = entry.info
    assert info == parse_message(sample_message(1))
    assert entry.info is info and entry.envelope is info.envelope
    assert cache.get(rec) is info
    assert cache.used == len(rec.structure)


def test_info_cache_damaged_and_oversized_entries(caplog: pytest.LogCaptureFixture) -> None:
    cache = InfoCache(budget=10_000)
    damaged = cache.load("bad", b"{")
    assert damaged.info is None and damaged.envelope is None
    other = cache.load("bad2", b'{"v": 1}')
    assert other.envelope is None and other.info is None  # found by the envelope first
    assert sum("damaged" in r.message for r in caplog.records) == 2  # once each
    assert cache.get(record(9, b"not json")) is None
    rec = record(1)
    tiny = InfoCache(budget=10)
    entry = tiny.entry(rec)
    assert entry.info is not None and len(tiny) == 0  # decoded, not kept
    entry.memo["ENVELOPE"] = b"x"
    assert "ENVELOPE" not in entry.memo  # a memo of an entry not kept keeps nothing
    assert cache.get(rec) is cache.get(rec)


def test_envelope_from_json() -> None:
    for data in [*MESSAGES.values(), *FETCH_MESSAGES.values()]:
        info = parse_message(data)
        assert envelope_from_json(info.to_json()) == info.envelope
    for bad in (b"{", b"[]", b'{"v": 2, "env": []}', b'{"v": 1}', b'{"v": 1, "env": [1]}'):
        with pytest.raises(ValueError):
            envelope_from_json(bad)


def test_memo_growth_evicts_other_entries() -> None:
    records = [record(n) for n in range(3)]
    cache = InfoCache(budget=sum(len(r.structure) for r in records) + 100)
    first, second, third = (cache.entry(r) for r in records)
    third.memo["v"] = "x" * 100  # the charge pushes the oldest entry out, not this one
    assert "v" in third.memo
    assert cache.peek(records[0].blob_id) is None and cache.peek(records[2].blob_id) is third
    assert cache.used <= cache.budget
    del first, second


def test_envelope_only_programs() -> None:
    for program, only in [
        ("FROM x", True),
        ('OR SUBJECT x NOT TO "y"', True),
        ('HEADER Message-ID "x"', True),
        ("SENTBEFORE 1-Jan-2020 FROM x", False),
        ('FROM x HEADER X-Spam ""', False),
        ("FROM x BODY y", False),
        ("SEEN", False),
        ("LARGER 5", False),
    ]:
        assert Searcher(key_of(program), largest_seq=1, largest_uid=1).envelope_only is only
    for program, literals, expected in PROGRAMS:
        key = key_of(program, literals)
        searcher = Searcher(key, largest_seq=4, largest_uid=40)
        if not searcher.envelope_only:
            continue
        hits = []
        for n in MESSAGES:
            msg = message(n)
            envelope = INFOS[n].envelope
            args = (msg.seq, msg.uid, msg.flags, msg.recent, msg.internaldate, msg.size, 1)
            if searcher.matches(*args, None, {}, None, envelope):
                hits.append(n)
        assert hits == expected, program


# --- FETCH rendering ----------------------------------------------------------------------

ATTS = [
    [FetchAtt("UID"), FetchAtt("FLAGS"), FetchAtt("ENVELOPE")],
    [FetchAtt("BODYSTRUCTURE"), FetchAtt("BODY"), FetchAtt("RFC822.SIZE")],
    [FetchAtt("INTERNALDATE"), FetchAtt("MODSEQ"), FetchAtt("ENVELOPE"), FetchAtt("ENVELOPE")],
    [FetchAtt("BODY", Section((1,)), partial=(0, 5)), FetchAtt("BODYSTRUCTURE")],
    [FetchAtt("RFC822.HEADER"), FetchAtt("FLAGS")],
]


@pytest.mark.parametrize("atts", ATTS)
def test_renderer_renders_like_render(atts: list[FetchAtt]) -> None:
    renderer = fetch.Renderer(atts)
    assert renderer.plan == fetch.plan(atts)
    for n, data in FETCH_MESSAGES.items():
        info = parse_message(data)
        start, end = renderer.byte_range(info)
        assert (start, end) == fetch.byte_range(atts, info)
        blob = data[start:end] if end is not None else data[start:]
        kwargs: dict[str, Any] = {
            "uid": n,
            "flags": frozenset({"\\Seen", "$x"}),
            "internaldate": NOW + n,
            "size": len(data),
            "modseq": 7,
            "info": info,
            "blob": blob,
            "blob_start": start,
        }
        expected = fetch.render(atts, **kwargs)
        memo: dict[str, object] = {}
        args = (n, kwargs["flags"], NOW + n, len(data), 7, info, blob, start)
        assert renderer.render(*args) == expected
        assert renderer.render(*args, memo) == expected  # fills the memo
        assert renderer.render(*args, memo) == expected  # from the memo
        assert fetch.render(atts, **kwargs, memo=memo) == expected


def test_render_takes_encoded_items_from_the_memo() -> None:
    data = FETCH_MESSAGES[1]
    info = parse_message(data)
    atts = [FetchAtt("ENVELOPE"), FetchAtt("BODY"), FetchAtt("BODYSTRUCTURE")]
    memo: dict[str, object] = {
        "ENVELOPE": b"ENVELOPE memo",
        "BODY": b"BODY memo",
        "BODYSTRUCTURE": b"BODYSTRUCTURE memo",
    }
    args: dict[str, Any] = {
        "uid": 1,
        "flags": (),
        "internaldate": NOW,
        "size": len(data),
        "modseq": 1,
        "blob": data,
    }
    assert fetch.render(atts, info=info, memo=memo, **args) == [
        b"ENVELOPE memo",
        b"BODY memo",
        b"BODYSTRUCTURE memo",
    ]
    # without the cached structure (parsed from the bytes here) the memo is not used
    out = fetch.render(atts, info=None, memo=memo, **args)
    assert out == fetch.render(atts, info=info, **args)


@settings(deadline=None, max_examples=200)
@given(
    st.floats(min_value=-2e9, max_value=2e10, allow_nan=False),
    st.lists(
        st.sampled_from(["\\Seen", "\\Answered", "$a", "Zed", "\\Recent"]), max_size=5, unique=True
    ),
)
def test_cached_flag_and_date_items(when: float, flags: list[str]) -> None:
    atts = [FetchAtt("INTERNALDATE"), FetchAtt("FLAGS")]
    expected_date = b"INTERNALDATE " + encoder.internaldate(datetime.fromtimestamp(when, UTC))
    for flag_set in (frozenset(flags), list(flags)):
        for _ in range(2):  # encoded once, then from the caches
            out = fetch.render(
                atts,
                uid=1,
                flags=flag_set,
                internaldate=when,
                size=0,
                modseq=0,
                info=None,
                blob=None,
            )
            assert out[0] == expected_date
            order = sorted(flags, key=lambda f: (not f.startswith("\\"), f))
            assert out[1] == b"FLAGS " + encoder.flag_list(order)


def test_item_caches_are_bounded() -> None:
    for n in range(fetch._MAX_FLAG_ITEMS + 5):
        fetch.render(
            [FetchAtt("FLAGS")],
            uid=1,
            flags=frozenset({f"k{n}"}),
            internaldate=float(n),
            size=0,
            modseq=0,
            info=None,
            blob=None,
        )
    for n in range(fetch._MAX_DATE_ITEMS + 5):
        fetch.render(
            [FetchAtt("INTERNALDATE")],
            uid=1,
            flags=(),
            internaldate=float(n),
            size=0,
            modseq=0,
            info=None,
            blob=None,
        )
    assert len(fetch._FLAG_ITEMS) <= fetch._MAX_FLAG_ITEMS
    assert len(fetch._DATE_ITEMS) <= fetch._MAX_DATE_ITEMS


@settings(deadline=None, max_examples=200)
@given(
    st.lists(st.sampled_from(["UID", "FLAGS"]), min_size=1, max_size=4),
    st.frozensets(st.sampled_from(["\\Seen", "\\Recent", "$a%d", "100%", "b"])),
    st.integers(1, 2**32 - 1),
    st.integers(1, 2**32 - 1),
)
def test_state_line_is_the_encoded_fetch(
    names: list[str], flags: frozenset[str], seq: int, uid: int
) -> None:
    items = StateItems([FetchAtt(n) for n in names])
    for _ in range(2):  # the template is built once per flag set
        assert items.line(seq, uid, flags) == encoder.fetch(seq, items.render(uid, flags))


# --- selected state -------------------------------------------------------------------------


def selected(uids: list[int], uidnext: int, claimed: int = 0) -> SelectedMailbox:
    tracker = RecentTracker()
    tracker.claim((1, 7), claimed)
    return SelectedMailbox(
        1,
        7,
        uidnext,
        10,
        [(u, 1, frozenset()) for u in uids],
        readonly=False,
        tracker=tracker,
    )


def test_own_append_joins_the_view_when_nothing_can_precede_it() -> None:
    sel = selected([1, 2, 3], 4)
    assert sel.appended(4, frozenset({"\\Seen"}))
    assert sel.updates(expunge=True) == b"* 4 EXISTS\r\n* 4 RECENT\r\n"  # a new tracker
    assert sel.flags(4) == frozenset({"\\Seen"}) and sel.highestmodseq == 10
    sel.expunged([4])
    sel.updates(expunge=True)
    assert sel.uidnext == 5  # an expunged UID is never used again
    assert sel.appended(5, frozenset())
    assert not sel.appended(7, frozenset())  # 6 may exist: sync with storage instead
    assert sel.exists == 3 and sel.flags(7) == frozenset()  # not taken in


def test_reopened_view_and_reported_all() -> None:
    sel = selected([1, 2, 3], 4, claimed=3)
    assert not sel.is_recent(1)  # no recent messages at all
    sel.apply_changes([(2, 11, frozenset({"$x"})), (5, 12, frozenset())], [3], 12)
    assert sel.pending
    sel.reported_all([2])
    out = sel.updates(expunge=False)
    assert b"FETCH" not in out and b"* 4 EXISTS" in out
    sel.reported_all([1])  # nothing pending: nothing to do
    assert not sel.is_recent(1) and sel.is_recent(5)
    tracker = RecentTracker()
    tracker.claim((1, 7), 5)
    again = sel.reopened(4, readonly=True, tracker=tracker)
    fresh = SelectedMailbox(
        1,
        7,
        6,
        12,
        [(1, 1, frozenset()), (2, 11, frozenset({"$x"})), (5, 12, frozenset())],
        readonly=True,
        tracker=tracker,
    )
    assert again.uids == fresh.uids == [1, 2, 5]  # the ghost is gone, nothing is pending
    assert again.select_response() == fresh.select_response()
    assert (again.highestmodseq, again.uidnext, again.keywords) == (12, 6, frozenset({"$x"}))
    assert not again.pending and again.readonly
    assert sel.reopened(9, readonly=False, tracker=tracker).uidnext == 9
    sel.updates(expunge=True)  # without ghosts the flags are taken as they are
    assert sel.reopened(4, readonly=False, tracker=tracker).uids == [1, 2, 5]


# --- storage: fetch_meta --------------------------------------------------------------------


async def test_fetch_meta(storage: SqliteStorage) -> None:
    await storage.add_domain("example.test")
    account = await storage.add_account("bob", "example.test", "x")
    blobs = [blob_of(sample_message(n)) for n in range(5)]
    uids = []
    for n, blob in enumerate(blobs):
        target = AppendTarget(account.id, internaldate=1000.0 + n)
        [(mailbox_id, uid)] = await storage.append(blob, [target])
        uids.append(uid)
    records = {r.uid: r for r in await storage.fetch_messages(mailbox_id)}
    expected = [(r.uid, r.modseq, r.internaldate, r.size, r.blob_id) for r in records.values()]
    assert await storage.fetch_meta(mailbox_id, uids) == expected
    assert await storage.fetch_meta(mailbox_id, list(reversed(uids))) == expected
    assert await storage.fetch_meta(mailbox_id, [uids[3], uids[1], 999]) == [
        expected[1],
        expected[3],
    ]
    assert await storage.fetch_meta(mailbox_id, [uids[0], uids[0]]) == [expected[0]]
    assert await storage.fetch_meta(mailbox_id, []) == []
    assert await storage.fetch_meta(mailbox_id + 100, uids) == []
    for uid, _, internaldate, size, blob_id in expected:
        assert isinstance(internaldate, float) and size == blobs[uid - uids[0]].size
        assert blob_id == blobs[uid - uids[0]].sha256


@settings(deadline=None, max_examples=100)
@given(
    st.lists(st.integers(1, 60), min_size=1, max_size=30, unique=True),
    st.integers(0, 70),
    st.lists(st.integers(61, 90), max_size=5, unique=True),
    st.sampled_from(["1:*", "2,4:6", "*", "3:2", "1", "7:*"]),
)
def test_bulk_lookups_agree_with_the_single_ones(
    uids: list[int], claimed: int, later: list[int], text: str
) -> None:
    uids.sort()
    sel = selected(uids, 61, claimed=claimed)
    if later:  # a second recent range, after another session claimed some in between
        sel._tracker.claim((1, 7), 61)
        sel.apply_changes([(u, 20, frozenset({"$new"})) for u in later], [], 20)
        sel.updates(expunge=True)
    view = list(sel.uids)
    assert sel.client_flags_list(view) == [sel.client_flags(u) for u in view]
    assert sel.flag_sets(view) == {sel.flags(u) for u in view}
    seqset = SequenceSet.parse(text)
    for uid in (False, True):
        positions = sel.positions(seqset, uid=uid)
        pairs = sel.resolve_uids(seqset) if uid else sel.resolve_seqs(seqset)
        if positions is None:
            assert pairs is None
            continue
        assert pairs == [(i + 1, view[i]) for start, stop in positions for i in range(start, stop)]
    items = StateItems([FetchAtt("UID"), FetchAtt("FLAGS")])
    flags = sel.client_flags_list(view)
    assert items.lines(range(1, len(view) + 1), view, flags) == b"".join(
        items.line(i + 1, u, f) for i, (u, f) in enumerate(zip(view, flags, strict=True))
    )
    only_flags = StateItems([FetchAtt("FLAGS")])
    assert only_flags.lines(range(1, len(view) + 1), view, flags) == b"".join(
        only_flags.line(i + 1, u, f) for i, (u, f) in enumerate(zip(view, flags, strict=True))
    )


def test_flag_sets_are_shared_and_the_table_stays_bounded() -> None:
    a = selected([1, 2], 3)
    b = SelectedMailbox(
        1,
        7,
        3,
        10,
        [(1, 1, frozenset({"$x"})), (2, 1, frozenset({"$x"}))],
        readonly=True,
        tracker=RecentTracker(),
    )
    assert b.flags(1) is b.flags(2)
    many = [(u, 1, frozenset({f"k{u}"})) for u in range(1, _MAX_INTERNED + 10)]
    big = SelectedMailbox(1, 7, len(many) + 1, 10, many, readonly=True, tracker=RecentTracker())
    assert big.exists == len(many) and len(_INTERNED) <= _MAX_INTERNED
    for n in range(_MAX_INTERNED + 5):  # changes intern too, within the same bound
        big.apply_changes([(1, 11 + n, frozenset({f"j{n}"}))], [], 11 + n)
    assert len(_INTERNED) <= _MAX_INTERNED
    _INTERNED.update({frozenset({f"z{n}"}): frozenset({f"z{n}"}) for n in range(_MAX_INTERNED)})
    assert SelectedMailbox(1, 7, 3, 10, [], readonly=True, tracker=RecentTracker()).exists == 0
    assert len(_INTERNED) < _MAX_INTERNED  # a full table starts again
    assert a.exists == 2


def test_recent_flag_sets_table_is_bounded() -> None:
    sel = selected(list(range(1, 4)), 4)  # all recent
    for n in range(1100):
        sel.apply_changes([(1, 11 + n, frozenset({f"k{n}"}))], [], 11 + n)
        assert RECENT in sel.client_flags(1)
    assert len(sel._with_recent) <= 1025
    # a recent range holding none of the messages asked about
    assert sel.client_flags_list([]) == []


async def test_changes_since_bounded(storage: SqliteStorage) -> None:
    await storage.add_domain("example.test")
    account = await storage.add_account("bob", "example.test", "x")
    uids = []
    for n in range(4):
        [(mailbox_id, uid)] = await storage.append(
            blob_of(sample_message(n)), [AppendTarget(account.id)]
        )
        uids.append(uid)
    mailbox = await storage.get_mailbox_by_id(mailbox_id)
    assert mailbox is not None
    start = mailbox.highestmodseq
    assert await storage.changes_since_bounded(mailbox_id, start, 10) == Changes(start, [], [])
    assert await storage.changes_since_bounded(mailbox_id, 0, 3) is None  # 4 new messages
    assert await storage.changes_since_bounded(mailbox_id, 0, 4) == await storage.changes_since(
        mailbox_id, 0
    )
    await storage.store_flags(mailbox_id, uids[:3], FlagMode.ADD, ["\\Deleted"])
    await storage.expunge(mailbox_id, uids[:2])
    full = await storage.changes_since(mailbox_id, start)
    assert len(full.changed) == 1 and len(full.expunged) == 2
    assert await storage.changes_since_bounded(mailbox_id, start, 2) == full
    assert await storage.changes_since_bounded(mailbox_id, start, 1) is None  # 2 expunged
    with pytest.raises(NotFound):
        await storage.changes_since_bounded(mailbox_id + 100, 0, 5)
