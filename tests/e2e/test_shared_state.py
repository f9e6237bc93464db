"""The workers' shared state (letterbird.server.shared_state): connection counts, IMAP
``\\Recent`` claims and sending limits in one shared-memory segment. Behaviour through several
views of one segment in this process, then across real worker-like processes (``subprocess``
with ``pass_fds``) driven line by line over pipes, including claims and records racing from
several processes, and last a real server with two workers enforcing one sending limit."""

from __future__ import annotations

import json
import os
import random
import re
import smtplib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import make_config
from serverutil import ServerProcess, admin, wait_for, write_config

from letterbird.config import SubmissionSettings
from letterbird.delivery.submission import SendingLimits
from letterbird.http.outgoing import sending_limits
from letterbird.imap.selected import RecentTracker, SelectedMailbox
from letterbird.imap.session import recent_tracker
from letterbird.server.app import App
from letterbird.server.shared_state import (
    HOST_WINDOW,
    LIMIT_BUCKETS,
    LIMIT_WINDOW,
    RECENT_WINDOW,
    SharedSendingLimits,
    SharedState,
)

REPO = Path(__file__).resolve().parents[2]
TIMEOUT = 60  # seconds for a child's reply: generous for a loaded 2-core machine

# A worker stand-in: attaches to the segment, then answers one JSON command per stdin line
# with one JSON reply per stdout line. "race" claims UIDs 1..n of one key one by one, after
# a "go" line, and replies with the ranges it was handed; "burst" records n messages of one
# account the same way. The sending limits are 5 messages and 8 recipients an hour.
CHILD = r"""
import json, sys
from letterbird.server.shared_state import SharedState

shared = SharedState.attach(int(sys.argv[1]), int(sys.argv[2]))
recent = shared.recent
limits = shared.sending_limits(5, 8)
print(json.dumps("attached"), flush=True)
for line in sys.stdin:
    cmd, *args = json.loads(line)
    if cmd == "enter":
        out = shared.enter(*args)
    elif cmd == "leave":
        out = shared.leave(*args)
    elif cmd == "count":
        out = shared.connection_count(*args)
    elif cmd == "claim":
        out = recent.claim(tuple(args[0]), args[1])
    elif cmd == "claimed":
        out = recent.claimed(tuple(args[0]))
    elif cmd == "forget":
        out = recent.forget(tuple(args[0]))
    elif cmd == "len":
        out = len(recent)
    elif cmd == "churn":  # n enter/leave pairs; the smallest count enter returned
        out = None
        for _ in range(args[0]):
            n = shared.enter(*args[1:])
            shared.leave(*args[1:])
            out = n if out is None else min(out, n)
    elif cmd == "race":
        key, n = tuple(args[0]), args[1]
        print(json.dumps("ready"), flush=True)
        sys.stdin.readline()  # ["go"]
        out = []
        for uid in range(1, n + 1):
            previous = recent.claim(key, uid)
            if previous < uid:
                out.append([previous, uid])
    elif cmd == "record":
        out = limits.record(*args)
    elif cmd == "usage":
        out = limits.usage(*args)
    elif cmd == "allowed":  # account, pending recipients, now
        out = [limits.message_allowed(args[0], args[2]), limits.recipient_allowed(*args)]
    elif cmd == "burst":
        account, n, now = args
        print(json.dumps("ready"), flush=True)
        sys.stdin.readline()  # ["go"]
        for _ in range(n):
            limits.record(account, 1, now)
        out = None
    elif cmd == "exit":
        break
    print(json.dumps(out), flush=True)
shared.close()
"""


class Worker:
    """One child process attached to the segment as worker ``index``."""

    def __init__(self, shared: SharedState, index: int) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(shared.fd), str(index)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            pass_fds=(shared.fd,),
            cwd=REPO,
            text=True,
        )
        assert self.read() == "attached"

    def send(self, *command: Any) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(command) + "\n")
        self.proc.stdin.flush()

    def read(self) -> Any:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()  # the child answers or dies (EOF): never hangs
        assert line, f"worker exited with {self.proc.wait(TIMEOUT)}"
        return json.loads(line)

    def __call__(self, *command: Any) -> Any:
        self.send(*command)
        return self.read()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.send("exit")
        assert self.proc.wait(TIMEOUT) == 0

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(TIMEOUT)


@pytest.fixture
def shared() -> Iterator[SharedState]:
    state = SharedState.create(3)
    yield state
    state.close()


def view(shared: SharedState, worker: int) -> SharedState:
    """Another mapping of the segment, as worker ``worker`` of this process."""
    return SharedState.attach(os.dup(shared.fd), worker)


@pytest.fixture
def workers(shared: SharedState) -> Iterator[list[Worker]]:
    started: list[Worker] = []
    try:
        for index in range(3):
            started.append(Worker(shared, index))
        yield started
        for w in started:
            w.stop()
    finally:
        for w in started:
            if w.proc.poll() is None:
                w.kill()
            for pipe in (w.proc.stdin, w.proc.stdout):
                if pipe is not None:
                    pipe.close()


# -- one process, several views ---------------------------------------------------------------


def test_counts_are_summed_over_workers(shared: SharedState) -> None:
    w0, w1 = view(shared, 0), view(shared, 1)
    assert w0.enter("imap", "192.0.2.1") == 1
    assert w1.enter("imap", "192.0.2.1") == 2
    assert w0.enter("imap", "192.0.2.1") == 3
    assert w1.enter("imap", "192.0.2.2") == 1  # another host
    assert w1.enter("pop3", "192.0.2.1") == 1  # another group, same host
    assert w0.connection_count("imap") == w1.connection_count("imap") == 4
    assert shared.connection_count("pop3") == 1
    assert shared.connection_count("smtp") == 0
    w1.leave("imap", "192.0.2.1")
    assert w0.enter("imap", "192.0.2.1") == 3
    for _ in range(3):
        w0.leave("imap", "192.0.2.1")
    w1.leave("imap", "192.0.2.2")
    w1.leave("pop3", "192.0.2.1")
    assert shared.connection_count("imap") == shared.connection_count("pop3") == 0
    assert w1.enter("imap", "192.0.2.1") == 1
    w0.close()
    w1.close()


def test_leave_without_enter_never_goes_negative(shared: SharedState) -> None:
    w0 = view(shared, 0)
    w0.leave("smtp", "192.0.2.9")
    assert shared.connection_count("smtp") == 0
    assert w0.enter("smtp", "192.0.2.9") == 1
    w0.close()


def test_master_view_counts_no_connections(shared: SharedState) -> None:
    with pytest.raises(RuntimeError):
        shared.enter("imap", "192.0.2.1")
    assert shared.connection_count("imap") == 0


def test_attach_checks_the_segment(shared: SharedState) -> None:
    with pytest.raises(ValueError, match="out of range"):
        SharedState.attach(os.dup(shared.fd), 3)
    other = os.memfd_create("not-a-segment")
    os.ftruncate(other, 4096)
    with pytest.raises(ValueError, match="not a letterbird"):
        SharedState.attach(other, 0)
    os.close(other)
    with pytest.raises(ValueError):
        SharedState.create(0)


def test_close_is_idempotent() -> None:
    state = SharedState.create(1)
    fd = state.fd
    state.close()
    state.close()
    with pytest.raises(OSError):
        os.fstat(fd)


def test_reset_worker_forgets_its_connections(shared: SharedState) -> None:
    w0, w1 = view(shared, 0), view(shared, 1)
    w0.enter("imap", "192.0.2.1")
    w0.enter("imap", "192.0.2.1")
    w1.enter("imap", "192.0.2.1")
    shared.reset_worker(0)
    assert shared.connection_count("imap") == 1
    assert w1.enter("imap", "192.0.2.1") == 2
    assert w0.enter("imap", "192.0.2.1") == 3  # the respawned worker starts from zero
    with pytest.raises(ValueError):
        shared.reset_worker(3)
    w0.close()
    w1.close()


def test_full_host_window_overcounts_never_undercounts() -> None:
    # One window for the whole table: every host competes for the same HOST_WINDOW slots.
    state = SharedState.create(2, host_slots=HOST_WINDOW)
    w0, w1 = view(state, 0), view(state, 1)
    hosts = [f"192.0.2.{i}" for i in range(HOST_WINDOW)]
    for host in hosts:
        assert w0.enter("smtp", host) == 1
    # The window is full: the next host is counted for the group as a whole ...
    assert w0.enter("smtp", "198.51.100.1") == 1
    assert w0.enter("smtp", "198.51.100.1") == 2
    # ... so every host of the group now looks busier (refused early, never late).
    assert w0.enter("smtp", hosts[0]) == 4
    assert w1.enter("smtp", hosts[1]) == 4
    assert w1.enter("imap", hosts[1]) == 1  # other groups are unaffected
    assert state.connection_count("smtp") == HOST_WINDOW + 4  # group totals stay exact
    for host in [*hosts, "198.51.100.1", "198.51.100.1", hosts[0]]:
        w0.leave("smtp", host)
    w1.leave("smtp", hosts[1])
    w1.leave("imap", hosts[1])
    assert state.connection_count("smtp") == state.connection_count("imap") == 0
    assert w0.enter("smtp", "198.51.100.1") == 1
    assert w1.enter("smtp", hosts[0]) == 1
    w0.close()
    w1.close()
    state.close()


def test_recent_behaves_like_the_in_process_tracker(shared: SharedState) -> None:
    """A random sequence of operations gives the same answers as RecentTracker."""
    w0, w1 = view(shared, 0), view(shared, 1)
    reference = RecentTracker()
    rng = random.Random(3501)
    keys = [(rng.randrange(1, 1 << 40), rng.randrange(1, 1 << 32)) for _ in range(20)]
    for _ in range(2000):
        tracker = rng.choice((w0.recent, w1.recent, shared.recent))
        key = rng.choice(keys)
        op = rng.random()
        if op < 0.5:
            uid = rng.randrange(0, 200)
            assert tracker.claim(key, uid) == reference.claim(key, uid)
        elif op < 0.8:
            assert tracker.claimed(key) == reference.claimed(key)
        else:
            tracker.forget(key)
            reference.forget(key)
        assert len(tracker) == len(reference)
    w0.close()
    w1.close()


def test_full_recent_window_evicts_one_mailbox() -> None:
    state = SharedState.create(1, recent_slots=RECENT_WINDOW)  # one window for every key
    recent = state.recent
    keys = [(mailbox, 7) for mailbox in range(1, RECENT_WINDOW + 2)]
    for key in keys[:-1]:
        assert recent.claim(key, 10) == 0
    assert len(recent) == RECENT_WINDOW
    assert recent.claim(keys[-1], 5) == 0
    assert len(recent) == RECENT_WINDOW
    assert recent.claimed(keys[-1]) == 5
    lost = [key for key in keys[:-1] if recent.claimed(key) == 0]
    assert len(lost) == 1  # one mailbox shows its messages as \Recent again, as after a restart
    assert recent.claim(lost[0], 10) == 0
    state.close()


def test_app_and_imap_sessions_use_the_shared_state(shared: SharedState) -> None:
    w0 = view(shared, 0)
    app = App(config=None, storage=None, directory=None, tls=None, shared=w0)  # type: ignore[arg-type]
    assert app.enter("imap", "192.0.2.1") == 1
    assert app.connection_count("imap") == 1
    assert app.per_ip == {}
    app.leave("imap", "192.0.2.1")
    assert shared.connection_count("imap") == 0
    tracker = recent_tracker(app)
    assert tracker is w0.recent
    first = SelectedMailbox(
        5, 9, 4, 1, [(1, 1, frozenset()), (3, 1, frozenset())], readonly=False, tracker=tracker
    )
    assert first.recent_count == 2
    assert shared.recent.claimed((5, 9)) == 3
    w0.close()


# -- sending limits in one process ---------------------------------------------------------

HOUR = 3600.0
MINUTE = HOUR / LIMIT_BUCKETS  # one bucket of the default window
T0 = 28_333_333 * MINUTE  # a bucket boundary, in November 2023


def test_sending_limits_are_shared_by_workers(shared: SharedState) -> None:
    w0, w1 = view(shared, 0), view(shared, 1)
    one, two = w0.sending_limits(3, 5), w1.sending_limits(3, 5)
    assert isinstance(one, SharedSendingLimits)
    assert (one.max_messages, one.max_recipients, one.window) == (3, 5, HOUR)
    one.record(42, 2, T0)
    two.record(42, 2, T0 + 10)
    assert one.usage(42, T0 + 20) == two.usage(42, T0 + 20) == (2, 4)
    assert shared.sending_limits(3, 5).usage(42, T0 + 20) == (2, 4)  # the master sees them too
    assert one.usage(43, T0 + 20) == (0, 0)  # another account
    assert two.message_allowed(42, T0 + 20)
    assert two.recipient_allowed(42, 0, T0 + 20)
    assert not two.recipient_allowed(42, 1, T0 + 20)  # 4 sent + 1 pending: the 6th would pass 5
    one.record(42, 1, T0 + 30)
    assert not two.message_allowed(42, T0 + 40)  # 3 messages: two on each worker would be 4
    assert not one.message_allowed(42, T0 + 40)
    w0.close()
    w1.close()


def test_sending_limits_window_slides_exact_to_one_bucket(shared: SharedState) -> None:
    limits = shared.sending_limits(2, 0)
    limits.record(7, 1, T0 + 10)  # early in its bucket
    limits.record(7, 1, T0 + 50)  # late in the same bucket
    assert not limits.message_allowed(7, T0 + HOUR - 1)
    # a message counts for at least the window ...
    assert limits.usage(7, T0 + 50 + HOUR - 1) == (2, 2)
    # ... and at most one bucket longer
    assert limits.usage(7, T0 + 10 + HOUR + MINUTE) == (0, 0)
    assert limits.message_allowed(7, T0 + HOUR + MINUTE)
    limits.record(7, 3, T0 + 2 * HOUR)  # its bucket's old numbers are reused
    assert limits.usage(7, T0 + 2 * HOUR) == (1, 3)
    # a record from a worker whose clock is more than a window behind is dropped, not misfiled
    limits.record(7, 5, T0 + HOUR - MINUTE)
    limits.record(7, 5, T0 + HOUR - 30 * MINUTE)
    assert limits.usage(7, T0 + 2 * HOUR) == (1, 3)


def test_sending_limits_behave_like_the_in_process_ones(shared: SharedState) -> None:
    """Recorded at the end of a bucket and read at the start of one, the shared limits are
    exact: random traffic gives the same answers as SendingLimits."""
    w0, w1 = view(shared, 0), view(shared, 1)
    views = [w0.sending_limits(6, 15), w1.sending_limits(6, 15), shared.sending_limits(6, 15)]
    reference = SendingLimits(6, 15)
    rng = random.Random(6409)
    accounts = [1, 2, 3, 1 << 40, -5]
    bucket = 0
    for _ in range(1500):
        bucket += rng.choice((1, 1, 1, 2, 5, 20))  # after the last record: time only advances
        now = T0 + bucket * MINUTE
        for account in accounts:
            limits = rng.choice(views)
            assert limits.usage(account, now) == reference.usage(account, now)
            pending = rng.randrange(3)
            assert limits.recipient_allowed(account, pending, now) == (
                reference.recipient_allowed(account, pending, now)
            )
        sent_at = now + MINUTE - 0.5
        for account in rng.sample(accounts, rng.randrange(3)):
            if reference.message_allowed(account, sent_at):
                recipients = rng.randrange(1, 4)
                rng.choice(views).record(account, recipients, sent_at)
                reference.record(account, recipients, sent_at)
    w0.close()
    w1.close()


def test_sending_limits_of_zero_disable(shared: SharedState) -> None:
    off = shared.sending_limits(0, 0)
    for i in range(5):
        assert off.message_allowed(9, T0 + i)
        assert off.recipient_allowed(9, 10_000, T0 + i)
        off.record(9, 100, T0 + i)
    assert off.usage(9, T0 + 5) == (0, 0)  # nothing recorded when both are off
    only_recipients = shared.sending_limits(0, 10)
    for i in range(20):
        assert only_recipients.message_allowed(9, T0 + i)
        only_recipients.record(9, 1, T0 + i)
    assert only_recipients.usage(9, T0 + 20) == (20, 20)
    assert not only_recipients.recipient_allowed(9, 0, T0 + 20)
    with pytest.raises(ValueError):
        shared.sending_limits(-1, 0)
    with pytest.raises(ValueError):
        shared.sending_limits(1, 1, window=0)


def test_full_limits_window_evicts_the_least_recent_sender() -> None:
    state = SharedState.create(1, limit_slots=LIMIT_WINDOW)  # one window for every account
    limits = state.sending_limits(10, 0)
    accounts = list(range(1, LIMIT_WINDOW + 1))
    for minute, account in enumerate(accounts):
        limits.record(account, 1, T0 + minute * MINUTE)
    limits.record(accounts[0], 1, T0 + LIMIT_WINDOW * MINUTE)  # now the 2nd is least recent
    now = T0 + (LIMIT_WINDOW + 1) * MINUTE
    limits.record(1000, 1, now)
    assert limits.usage(1000, now) == (1, 1)
    assert limits.usage(accounts[1], now) == (0, 0)  # forgotten: it may send again
    assert limits.usage(accounts[0], now) == (2, 2)
    assert all(limits.usage(a, now) == (1, 1) for a in accounts[2:])
    # slots whose latest activity left the window are free: nobody active is evicted
    later = T0 + (LIMIT_WINDOW + 2) * MINUTE + HOUR
    limits.record(1000, 1, later - 10 * MINUTE)  # the one account still active
    for account in range(2000, 2000 + LIMIT_WINDOW - 1):
        limits.record(account, 1, later)
    assert limits.usage(1000, later) == (1, 1)
    assert all(limits.usage(a, later) == (1, 1) for a in range(2000, 2000 + LIMIT_WINDOW - 1))
    state.close()


def test_segment_size_covers_the_limits_table() -> None:
    small = SharedState.create(2, recent_slots=16, host_slots=16, limit_slots=16)
    big = SharedState.create(2, recent_slots=16, host_slots=16, limit_slots=32)
    per_slot = (os.fstat(big.fd).st_size - os.fstat(small.fd).st_size) // 16
    assert per_slot == 8 * (3 + 3 * (LIMIT_BUCKETS + 1))  # (account, used, latest) + buckets
    truncated = os.dup(big.fd)
    os.ftruncate(truncated, os.fstat(small.fd).st_size)
    with pytest.raises(ValueError, match="wrong size"):
        SharedState.attach(truncated, 0)
    os.close(truncated)
    with pytest.raises(ValueError):
        SharedState.create(1, limit_slots=0)
    small.close()
    big.close()


def test_app_sending_limits_use_the_shared_state(shared: SharedState, tmp_path: Path) -> None:
    config = make_config(tmp_path, submission=SubmissionSettings(max_messages_per_hour=2))
    w0, w1 = view(shared, 0), view(shared, 1)
    apps = [
        App(config=config, storage=None, directory=None, tls=None, shared=w)  # type: ignore[arg-type]
        for w in (w0, w1)
    ]
    first, second = (sending_limits(app) for app in apps)
    assert isinstance(first, SharedSendingLimits)
    assert sending_limits(apps[0]) is first  # built once per process
    first.record(5, 1, T0)
    first.record(5, 1, T0)
    assert not second.message_allowed(5, T0)
    alone = App(config=config, storage=None, directory=None, tls=None)  # type: ignore[arg-type]
    assert type(sending_limits(alone)) is SendingLimits  # no workers: in this process
    w0.close()
    w1.close()


# -- real processes -------------------------------------------------------------------------


def test_counts_across_processes(shared: SharedState, workers: list[Worker]) -> None:
    w0, w1, w2 = workers
    assert w0("enter", "imap", "192.0.2.1") == 1
    assert w1("enter", "imap", "192.0.2.1") == 2
    assert w2("enter", "imap", "192.0.2.1") == 3
    assert w2("enter", "pop3", "192.0.2.1") == 1
    assert [w("count", "imap") for w in workers] == [3, 3, 3]
    w1("leave", "imap", "192.0.2.1")
    assert w0("enter", "imap", "192.0.2.1") == 3
    assert shared.connection_count("imap") == 3
    w2.kill()  # dies with its connections counted
    assert w0("count", "imap") == 3
    shared.reset_worker(2)
    assert w0("count", "imap") == 2
    assert w0("count", "pop3") == 0
    workers[2] = Worker(shared, 2)  # respawned in its old region
    assert workers[2]("enter", "imap", "192.0.2.1") == 3


def test_counts_settle_after_concurrent_churn(shared: SharedState, workers: list[Worker]) -> None:
    for w in workers:
        w.send("churn", 3000, "smtp", "192.0.2.1")
    for w in workers:
        assert w.read() >= 1  # every enter counted at least its own connection
    assert shared.connection_count("smtp") == 0
    assert workers[0]("enter", "smtp", "192.0.2.1") == 1


def test_recent_claims_across_processes(shared: SharedState, workers: list[Worker]) -> None:
    w0, w1, w2 = workers
    key = [12, 345]
    assert w0("claim", key, 10) == 0
    assert w1("claimed", key) == 10
    assert w2("claim", key, 15) == 10
    assert w0("claim", key, 12) == 15  # a lower mark never lowers the claim
    assert w1("len") == 1
    assert shared.recent.claimed((12, 345)) == 15
    w2("forget", key)
    assert w0("claimed", key) == 0
    assert w1("len") == 0


def test_racing_claims_hand_each_uid_to_one_process(
    shared: SharedState, workers: list[Worker]
) -> None:
    count = 10_000  # enough for an unlocked claim to hand some UIDs out twice
    key = [77, 1]
    for w in workers:
        w.send("race", key, count)
    for w in workers:
        assert w.read() == "ready"
    for w in workers:
        w.send("go")  # released together, the claims overlap in time
    handed: list[int] = []
    for w in workers:
        for previous, uid in w.read():
            handed.extend(range(previous + 1, uid + 1))
    assert sorted(handed) == list(range(1, count + 1))  # every UID once, to one process
    assert shared.recent.claimed((77, 1)) == count


def test_sending_limits_across_processes(shared: SharedState, workers: list[Worker]) -> None:
    w0, w1, w2 = workers
    w0("record", 21, 3, T0)
    w1("record", 21, 4, T0 + 1)
    assert w2("usage", 21, T0 + 2) == [2, 7]
    assert w2("allowed", 21, 0, T0 + 2) == [True, True]
    assert w2("allowed", 21, 1, T0 + 2) == [True, False]  # 7 + 1 pending: the 9th is over 8
    for w in (w0, w1, w2):
        w("record", 21, 0, T0 + 3)
    assert w0("allowed", 21, 0, T0 + 3) == [False, True]  # 5 messages
    assert shared.sending_limits(5, 8).usage(21, T0 + 3) == (5, 7)
    assert w1("usage", 21, T0 + 3 + HOUR + MINUTE) == [0, 0]


def test_racing_records_are_all_counted(shared: SharedState, workers: list[Worker]) -> None:
    count = 5000  # enough for an unlocked read-modify-write to lose some
    for w in workers:
        w.send("burst", 33, count, T0)
    for w in workers:
        assert w.read() == "ready"
    for w in workers:
        w.send("go")
    for w in workers:
        assert w.read() is None
    total = len(workers) * count
    assert shared.sending_limits(5, 8).usage(33, T0) == (total, total)


# -- a real server with two workers -------------------------------------------------------------

SERVER = """
hostname = "mx.test"
workers = 2
[listen]
smtp = []
submission = ["127.0.0.1:0"]
submissions = []
imap = []
imaps = []
pop3 = []
pop3s = []
http = []
[submission]
max_messages_per_hour = 0
max_recipients_per_hour = 3
"""


@pytest.mark.e2e
def test_server_workers_share_one_sending_limit(tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "lb.toml", SERVER)
    with ServerProcess(cfg, "--no-demo") as srv:
        admin(cfg, "domain", "add", "example.test", stdin="")
        admin(cfg, "user", "add", "bob@example.test", "--password-stdin", stdin="pw\n")
        host, port = srv.bound["submission"]

        def session() -> smtplib.SMTP:  # a new connection: the kernel picks the worker
            s = smtplib.SMTP(host, port, timeout=30)
            s.login("bob@example.test", "pw")
            assert s.mail("bob@example.test")[0] == 250
            return s

        for _ in range(3):
            with session() as s:
                assert s.rcpt("bob@example.test")[0] == 250
                assert s.data(b"Subject: hi\r\n\r\nhello\r\n")[0] == 250

        def refusals() -> list[str]:
            """The worker index of each logged refusal."""
            return [
                m.group(1) for ln in srv.log if (m := re.search(r"\[w(\d)\].*rate_limited", ln))
            ]

        # Whichever worker takes a session refuses it. Until both have refused one (each
        # holds fewer than 3 of the recipients itself, or one holds all 3 and the other
        # none), keep trying: a new session is a coin toss between them.
        for attempt in range(1, 41):
            with session() as s:
                code, text = s.rcpt("bob@example.test")
                assert (code, text[:5]) == (450, b"4.7.1")
            wait_for(lambda n=attempt: len(refusals()) == n, what="the refusal in the log")
            if set(refusals()) == {"0", "1"}:
                break
        assert set(refusals()) == {"0", "1"}, "both workers should have refused a session"
