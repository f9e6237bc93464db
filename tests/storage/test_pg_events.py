"""The cross-node change bus without a database: NOTIFY payloads and the resync signal."""

from __future__ import annotations

import asyncio
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from letterbird.storage.events import ChangeEvent, ChangeKind
from letterbird.storage.pg_events import (
    MAX_PAYLOAD,
    RESYNC_MAILBOX,
    PgChangeBus,
    decode_payload,
    encode_events,
)

events = st.builds(
    ChangeEvent,
    st.integers(1, 2**40),
    st.integers(1, 2**40),
    st.sampled_from(list(ChangeKind)),
    st.lists(st.integers(1, 2**32 - 1), max_size=3000).map(tuple),
    st.integers(0, 2**62),
)


@settings(deadline=None, max_examples=60)
@given(st.lists(events, max_size=6))
def test_payloads_round_trip_under_the_limit(evs: list[ChangeEvent]) -> None:
    payloads = encode_events("node-1", evs)
    assert all(len(p.encode()) <= MAX_PAYLOAD for p in payloads)
    back: list[ChangeEvent] = []
    for p in payloads:
        node, part = decode_payload(p)
        assert node == "node-1"
        back.extend(part)

    # every UID arrives exactly once, with its event's account, mailbox, kind and modseq
    def flat(items: list[ChangeEvent]) -> list[tuple[object, ...]]:
        return [(e.account_id, e.mailbox_id, e.kind, u, e.modseq) for e in items for u in e.uids]

    assert flat(back) == flat(evs)
    assert [e for e in back if not e.uids] == [e for e in evs if not e.uids]


def test_a_big_event_is_split() -> None:
    ev = ChangeEvent(1, 2, ChangeKind.EXPUNGE, tuple(range(1_000_000, 1_004_000)), 9)
    payloads = encode_events("n", [ev])
    assert len(payloads) > 1
    assert max(len(p) for p in payloads) <= MAX_PAYLOAD


@pytest.mark.parametrize(
    "bad", ["", "not json", "[1]", '["n", [[1, 2, "?", [], 0]]]', '["n", [[1, "x", "a", [], 0]]]']
)
def test_bad_payloads(bad: str) -> None:
    with pytest.raises(ValueError):
        decode_payload(bad)


async def test_notifications_from_other_nodes_only() -> None:
    bus = PgChangeBus(node="me")
    with bus.subscribe(7) as sub:
        mine = encode_events("me", [ChangeEvent(7, 1, ChangeKind.APPEND, (1,), 2)])[0]
        theirs = encode_events("them", [ChangeEvent(7, 1, ChangeKind.APPEND, (2,), 3)])[0]
        other_account = encode_events("them", [ChangeEvent(8, 1, ChangeKind.APPEND, (2,), 3)])[0]
        for p in (mine, theirs, other_account, "garbage"):
            bus._on_notify(None, 0, "c", p)
        assert sub.drain() == [ChangeEvent(7, 1, ChangeKind.APPEND, (2,), 3)]
        assert bus.received == 2


async def test_resync_marks_and_wakes_every_subscriber() -> None:
    bus = PgChangeBus(node="me", queue_size=1)
    a, b = bus.subscribe(1), bus.subscribe(2)
    b._put(ChangeEvent(2, 5, ChangeKind.FLAGS, (1,), 4))  # b's queue is full already
    waiter = asyncio.ensure_future(a.get())
    bus.resync_all()
    ev = await asyncio.wait_for(waiter, 1)
    assert ev.mailbox_id == RESYNC_MAILBOX and a.overflowed
    assert b.overflowed
    a.close()
    b.close()


def test_payload_is_compact_json() -> None:
    [p] = encode_events("n", [ChangeEvent(1, 2, ChangeKind.FLAGS, (3, 4), 5)])
    assert json.loads(p) == ["n", [[1, 2, "f", [3, 4], 5]]]
    assert " " not in p
