"""The relay between the worker processes of one machine (letterbird.server.relay): a hub and
links over real socketpairs in one event loop, and one link in a real subprocess.

- events a worker publishes (publish and publish_threadsafe) reach every other worker, never
  the sender; one frame per publish, big events split over several frames;
- wake frames reach the queue worker (0) only; with ``carry_events=False`` only wakes travel;
- a link that ends (worker removed, replaced, died; hub closed) makes the others resync;
- a slow worker's overflowing buffer gives way to a resync, keeping a pending wake; a worker
  whose own buffer overflowed makes the others resync through the hub.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import sys
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from letterbird.server.relay import FRAME_LIMIT, RESYNC, WAKE, RelayHub, RelayLink, _FrameLink
from letterbird.storage.events import (
    RESYNC_MAILBOX,
    ChangeBus,
    ChangeEvent,
    ChangeKind,
    Subscription,
)

pytestmark = pytest.mark.e2e

TIMEOUT = 30.0  # an upper bound for a loaded machine, never a latency assertion
ACCOUNT = 1


def ev(uid: int, modseq: int | None = None, account: int = ACCOUNT) -> ChangeEvent:
    return ChangeEvent(account, 2, ChangeKind.APPEND, (uid,), modseq or uid)


def is_resync(event: ChangeEvent) -> bool:
    return event.mailbox_id == RESYNC_MAILBOX and event.kind is ChangeKind.MAILBOX


async def next_event(sub: Subscription) -> ChangeEvent:
    return await asyncio.wait_for(sub.get(), TIMEOUT)


async def events(sub: Subscription, count: int) -> list[ChangeEvent]:
    return [await next_event(sub) for _ in range(count)]


async def until(predicate: Callable[[], object], what: str) -> None:
    """Poll a counter that no event announces (overflows), up to TIMEOUT seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + TIMEOUT
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


@dataclass
class Relay:
    hub: RelayHub
    buses: list[ChangeBus] = field(default_factory=list)
    links: list[RelayLink] = field(default_factory=list)
    woken: list[asyncio.Event] = field(default_factory=list)
    subs: list[Subscription] = field(default_factory=list)

    async def add(self, index: int, *, carry: bool = True) -> None:
        master_end, worker_end = socket.socketpair()
        self.hub.add_worker(index, master_end)
        bus = ChangeBus()
        bus.bind_loop(asyncio.get_running_loop())
        woken = asyncio.Event()
        link = RelayLink(bus, worker_end, index, woken.set, carry_events=carry)
        await link.start()
        self.buses.append(bus)
        self.links.append(link)
        self.woken.append(woken)
        self.subs.append(bus.subscribe(ACCOUNT))


@contextlib.asynccontextmanager
async def relay(workers: int = 3, *, carry: bool = True) -> AsyncIterator[Relay]:
    r = Relay(RelayHub())
    for index in range(workers):
        await r.add(index, carry=carry)
    try:
        yield r
    finally:
        for sub in r.subs:
            sub.close()
        for link in r.links:
            await link.aclose()
        await r.hub.aclose()


async def test_events_reach_every_other_worker_not_the_sender() -> None:
    async with relay() as r:
        batch = [ev(1), ev(2)]
        r.buses[1].publish(batch)
        assert r.links[1].sent == 1  # one frame per publish call, not per event
        assert await events(r.subs[0], 2) == batch
        assert await events(r.subs[2], 2) == batch
        assert r.subs[1].drain() == batch  # delivered locally, once
        # Anything echoed to worker 1 would come before what worker 2 publishes now.
        r.buses[2].publish([ev(3)])
        assert r.subs[2].drain() == [ev(3)]
        assert await next_event(r.subs[1]) == ev(3)
        assert r.subs[1].drain() == []
        assert await next_event(r.subs[0]) == ev(3)
        assert r.links[0].received == 3

        # The SQLite writer thread's path: publish_threadsafe schedules publish on the loop.
        writer = threading.Thread(target=r.buses[0].publish_threadsafe, args=([ev(4)],))
        writer.start()
        writer.join()
        assert await next_event(r.subs[1]) == ev(4)
        assert await next_event(r.subs[2]) == ev(4)
        assert await next_event(r.subs[0]) == ev(4)
        assert not any(sub.overflowed for sub in r.subs)


async def test_big_events_are_split_like_notify_payloads() -> None:
    async with relay() as r:
        uids = tuple(range(1_000_000, 1_020_000))
        big = ChangeEvent(ACCOUNT, 2, ChangeKind.EXPUNGE, uids, 77)
        r.buses[2].publish([big, ev(5)])
        assert r.links[2].sent > len(str(uids)) // FRAME_LIMIT
        got: list[ChangeEvent] = []
        while not got or got[-1] != ev(5):
            got.append(await next_event(r.subs[0]))
        parts = got[:-1]
        assert len(parts) > 1
        assert {(e.mailbox_id, e.kind, e.modseq) for e in parts} == {(2, ChangeKind.EXPUNGE, 77)}
        assert tuple(u for e in parts for u in e.uids) == uids


async def test_wake_reaches_the_queue_worker_only() -> None:
    async with relay() as r:
        r.links[2].wake_queue()
        await asyncio.wait_for(r.woken[0].wait(), TIMEOUT)
        # A wake sent to 1 or 2 would arrive before this event does.
        r.buses[0].publish([ev(1)])
        await next_event(r.subs[1])
        await next_event(r.subs[2])
        assert not r.woken[1].is_set() and not r.woken[2].is_set()

        r.woken[0].clear()
        r.links[0].wake_queue()  # the queue worker wakes its own queue directly
        assert r.woken[0].is_set()


async def test_without_carrying_events_only_wakes_travel() -> None:
    async with relay(2, carry=False) as r:
        assert all(bus.forward is None for bus in r.buses)
        r.buses[1].publish([ev(1)])
        assert r.links[1].sent == 0
        r.links[1].wake_queue()
        await asyncio.wait_for(r.woken[0].wait(), TIMEOUT)
        assert r.subs[0].drain() == []


async def test_a_link_that_ends_makes_the_others_resync() -> None:
    async with relay() as r:
        # The master removes worker 1 (it died): the others may have missed its last events.
        r.hub.remove_worker(1)
        assert r.hub.workers == [0, 2]
        assert is_resync(await next_event(r.subs[0])) and r.subs[0].overflowed
        assert is_resync(await next_event(r.subs[2])) and r.subs[2].overflowed
        # ... and worker 1, cut off, resyncs its own subscribers and stops forwarding.
        await asyncio.wait_for(r.links[1].ended.wait(), TIMEOUT)
        assert is_resync(await next_event(r.subs[1]))
        assert r.buses[1].forward is None
        r.links[1].wake_queue()  # no-op once closed
        assert r.links[1].sent == 0

        # A respawned worker 1 gets a new link; events flow again.
        await r.add(1)
        r.buses[-1].publish([ev(7)])
        assert r.subs[-1].drain() == [ev(7)]
        assert await next_event(r.subs[0]) == ev(7)
        assert await next_event(r.subs[2]) == ev(7)

        # A worker process that dies without the master noticing yet: its socket closes.
        master_end, worker_end = socket.socketpair()
        r.hub.add_worker(3, master_end)
        worker_end.close()
        assert is_resync(await next_event(r.subs[0]))
        assert is_resync(await next_event(r.subs[2]))
        assert r.hub.workers == [0, 1, 2]

        # The master stops: every worker resyncs.
        await r.hub.aclose()
        for link, sub in zip(r.links, r.subs, strict=True):
            if link is not r.links[1]:
                await asyncio.wait_for(link.ended.wait(), TIMEOUT)
                assert is_resync(await next_event(sub))


async def test_a_slow_worker_gets_a_resync_instead_of_unbounded_frames() -> None:
    hub = RelayHub(buffer_limit=4096)
    fast_end, fast_worker = socket.socketpair()
    slow_end, slow_worker = socket.socketpair()
    slow_end.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    hub.add_worker(1, fast_end)
    hub.add_worker(2, slow_end)  # nobody reads slow_worker for now
    fast_bus, slow_bus = ChangeBus(), ChangeBus()
    fast = RelayLink(fast_bus, fast_worker, 1)
    slow = RelayLink(slow_bus, slow_worker, 2)
    try:
        await fast.start()
        sent = 0
        while hub.overflows == 0:
            assert sent < 200_000, "the hub never overflowed"
            fast_bus.publish([ev(sent + 1)])
            sent += 1
            if sent % 100 == 0:
                await asyncio.sleep(0)  # let the hub read and forward
        assert hub.workers == [1, 2]  # the slow worker keeps its link

        # The slow worker reads at last: what fitted, then the resync, then newer events.
        with slow_bus.subscribe(ACCOUNT) as sub:
            await slow.start()
            while not is_resync(got := await next_event(sub)):
                assert got.uids[0] <= sent
            assert sub.overflowed and slow.resyncs == 1
            fast_bus.publish([ev(sent + 1)])
            while (got := await next_event(sub)) != ev(sent + 1):
                assert got.uids[0] <= sent
    finally:
        await fast.aclose()
        await slow.aclose()
        await hub.aclose()


async def test_a_worker_that_drops_its_events_makes_the_others_resync() -> None:
    worker_end, master_end = socket.socketpair()
    worker_end.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    bus = ChangeBus()
    link = RelayLink(bus, worker_end, 1, buffer_limit=2048)
    async with relay(1) as r:
        try:
            await link.start()
            sent = 0
            while link.overflows == 0:  # the master does not read yet
                assert sent < 200_000, "the link never overflowed"
                bus.publish([ev(sent + 1)])
                sent += 1
            # The master reads at last: worker 0 gets what fitted, then a resync.
            r.hub.add_worker(1, master_end)
            while not is_resync(await next_event(r.subs[0])):
                pass
            assert r.links[0].resyncs == 1
        finally:
            await link.aclose()


async def test_an_overflowing_buffer_keeps_one_wake() -> None:
    a, b = socket.socketpair()
    link = _FrameLink(a, "test", lambda _f: None, lambda: None, buffer_limit=100)
    try:
        link.send(WAKE)
        link.send(WAKE)  # coalesced
        for n in range(5):  # 2 + 4 * 24 bytes fit, the fifth frame overflows
            link.send(b"e" + b"x" * 20 + str(n).encode() + b"\n")
        assert list(link._pending) == [RESYNC, WAKE]
        assert link.overflows == 1
        link.send(b"e1\n")
        assert list(link._pending) == [RESYNC, WAKE, b"e1\n"]
    finally:
        link.close()
        b.close()


CHILD = r"""
import asyncio, json, socket, sys, threading
from letterbird.server.relay import RelayLink
from letterbird.storage.events import ChangeBus, ChangeEvent, ChangeKind

async def main(fd):
    bus = ChangeBus()
    bus.bind_loop(asyncio.get_running_loop())
    link = RelayLink(bus, socket.socket(fileno=fd), 1)
    await link.start()
    with bus.subscribe(7) as sub:
        bus.publish([ChangeEvent(5, 2, ChangeKind.APPEND, (10, 11), 3)])
        batch = [ChangeEvent(5, 2, ChangeKind.FLAGS, (10,), 4)]
        writer = threading.Thread(target=bus.publish_threadsafe, args=(batch,))
        writer.start()
        writer.join()
        link.wake_queue()
        ev = await asyncio.wait_for(sub.get(), 60)
    print(json.dumps([ev.account_id, ev.mailbox_id, ev.kind.value, list(ev.uids), ev.modseq]))
    await link.aclose()

asyncio.run(main(int(sys.argv[1])))
"""


async def test_a_worker_process_relays_through_the_hub() -> None:
    async with relay(1) as r:
        master_end, child_end = socket.socketpair()
        r.hub.add_worker(1, master_end)
        with r.buses[0].subscribe(5) as sub:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-c",
                CHILD,
                str(child_end.fileno()),
                pass_fds=[child_end.fileno()],
                cwd=Path(__file__).resolve().parents[2],
                stdout=asyncio.subprocess.PIPE,
            )
            child_end.close()
            try:
                assert await events(sub, 2) == [
                    ChangeEvent(5, 2, ChangeKind.APPEND, (10, 11), 3),
                    ChangeEvent(5, 2, ChangeKind.FLAGS, (10,), 4),
                ]
                await asyncio.wait_for(r.woken[0].wait(), TIMEOUT)
                r.buses[0].publish([ChangeEvent(7, 3, ChangeKind.EXPUNGE, (1, 2), 9)])
                out, _ = await asyncio.wait_for(proc.communicate(), TIMEOUT * 2)
            finally:
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
            assert proc.returncode == 0
            assert json.loads(out) == [7, 3, "expunge", [1, 2], 9]
            # The worker exited: the hub dropped its link and told the others to resync.
            assert is_resync(await next_event(sub))
            assert r.hub.workers == [0]
