"""The mailbox semantics both backends share (``letterbird.storage.semantics``), as pure
functions; the contract suite (test_contract.py) checks each backend applies them."""

from __future__ import annotations

import dataclasses
import re

import pytest

from letterbird.storage import semantics as sem
from letterbird.storage.events import ChangeEvent, ChangeKind
from letterbird.storage.interface import (
    Account,
    AppendTarget,
    FlagMode,
    Mailbox,
    MailboxExists,
    NotFound,
    OutgoingMessage,
    QueueEntry,
    QueueRecipient,
    QuotaExceeded,
    StorageError,
    StoreResult,
)
from letterbird.storage.names import InvalidMailboxName


def _says(text: str) -> str:
    """A ``pytest.raises`` pattern for exactly ``text``."""
    return f"^{re.escape(text)}$"


def _columns(cols: str) -> int:
    return len(cols.split(" FROM ")[0].split(","))


def test_column_lists_match_the_mappings() -> None:
    assert _columns(sem.ACCOUNT_COLS) == len(dataclasses.fields(Account))
    assert _columns(sem.MAILBOX_COLS) == len(dataclasses.fields(Mailbox))
    assert _columns(sem.ENTRY_COLS) == len(dataclasses.fields(QueueEntry))
    assert _columns(sem.ALIAS_COLS) == 4
    row = (7, 1, "Work", None, 99, 5, 12, 0)
    assert sem.mailbox_of(row) == Mailbox(7, 1, "Work", None, 99, 5, 12, False)
    status = sem.status_of(row, (3, 300, 2, 1))  # messages, octets, unseen, first unseen
    assert (status.messages, status.size, status.unseen, status.first_unseen_uid) == (3, 300, 2, 1)
    alias = sem.alias_of((1, None, "example.test", ""), ["", "a@b.test", ""])
    assert alias.targets == ("a@b.test",)
    assert sem.entry_cols("upd").startswith("e.id, ")
    assert " FROM upd e JOIN " in sem.entry_cols("upd")


def test_queue_recipients_by_domain() -> None:
    rcpts = [
        QueueRecipient("a@Remote.test", ("NEVER",)),
        QueueRecipient("b@other.test", (), "rfc822;b@other.test"),
        QueueRecipient("c@remote.TEST"),
    ]
    by_domain = sem.rcpts_by_domain(rcpts)
    assert list(by_domain) == ["remote.test", "other.test"]  # first appearance, lower case
    assert sem.json_to_rcpts(by_domain["remote.test"]) == (rcpts[0], rcpts[2])
    assert sem.json_to_rcpts(by_domain["other.test"]) == (rcpts[1],)
    assert sem.sorted_flags(["b", "a", "b"]) == ["a", "b"]
    assert sem.norm_local("Bob") == "bob" and sem.alias_norm(None) == ""


def test_quota_charges() -> None:
    sem.charged((100, 0), 1, 50)  # no quota
    sem.charged((100, 100), 1, 50)  # exactly full
    sem.charged((150, 100), 1, -10)  # a release never refuses, even over quota
    with pytest.raises(QuotaExceeded, match=_says("account 1 is over its quota")):
        sem.charged((101, 100), 1, 1)
    with pytest.raises(NotFound, match=_says("no such account")):
        sem.charged(None, 1, 1)
    assert sem.usage_of((3, 10)) == (3, 10)
    with pytest.raises(NotFound):
        sem.usage_of(None)


def test_rename_plan() -> None:
    plan = sem.rename_plan("work", "Jobs")
    assert (plan.old, plan.new, plan.moves_inbox) == ("work", "Jobs", False)
    assert plan.prefix == "work/" and plan.inferior("work/2026/q1") == "Jobs/2026/q1"
    assert plan.check((5,), None) == (5,)
    with pytest.raises(NotFound, match=_says("no mailbox work")):
        plan.check(None, None)
    with pytest.raises(MailboxExists, match=_says("mailbox Jobs exists already")):
        plan.check((5,), (1,))
    assert sem.rename_plan("Inbox", "Old").moves_inbox
    with pytest.raises(InvalidMailboxName):
        sem.rename_plan("work", "bad//name")  # checked before any transaction


def test_delete_name() -> None:
    assert sem.delete_name("inbox/Sub") == "INBOX/Sub"
    with pytest.raises(StorageError, match=_says("INBOX cannot be deleted")):
        sem.delete_name("Inbox")


def test_flag_changes() -> None:
    rows = [(1, 5, "a"), (2, 9, "a b"), (3, 5, "")]
    decode = lambda text: frozenset(text.split())  # noqa: E731
    add = sem.flag_changes(rows, decode, FlagMode.ADD, frozenset({"b"}), None)
    assert add == [(1, frozenset({"a", "b"})), (3, frozenset({"b"}))]  # 2 has b already
    assert sem.flag_changes(rows, decode, FlagMode.ADD, frozenset({"b"}), 8) == add[:1] + add[1:]
    assert sem.flag_changes(rows, decode, FlagMode.REMOVE, frozenset({"a"}), 5) == [
        (1, frozenset())  # 2 changed after modseq 5: left alone
    ]
    assert sem.flag_changes(rows, decode, FlagMode.REPLACE, frozenset({"a"}), None) == [
        (2, frozenset({"a"})),
        (3, frozenset({"a"})),
    ]
    results, events = sem.flags_stored(4, 7, [(1, frozenset({"x"}))], 12)
    assert results == [StoreResult(1, 12, frozenset({"x"}))]
    assert events == [ChangeEvent(4, 7, ChangeKind.FLAGS, (1,), 12)]


def test_copies_and_expunges() -> None:
    mapping, events = sem.copied(4, 8, [3, 5, 9], 20, 31)
    assert mapping == [(3, 20), (5, 21), (9, 22)]
    assert events == [ChangeEvent(4, 8, ChangeKind.APPEND, (20, 21, 22), 31)]
    gone = ChangeEvent(4, 7, ChangeKind.EXPUNGE, (1, 2), 9)
    assert sem.expunged(4, 7, [1, 2], 9) == ([1, 2], [gone])
    assert sem.blob_counts([3, 1, 3]) == {3: 2, 1: 1}
    assert sem.mailbox_changed(4, 7) == [ChangeEvent(4, 7, ChangeKind.MAILBOX, (), 0)]
    with pytest.raises(NotFound, match=_says("no such mailbox")):
        sem.allocated(None, 1)
    assert sem.allocated((11, 40), 3) == (8, 40)  # uidnext after taking 3, highestmodseq
    assert sem.within(2, [1, 2], []) and not sem.within(1, [1, 2], [])


def test_what_a_delivery_stores() -> None:
    local = [AppendTarget(1), AppendTarget(2)]
    remote = OutgoingMessage("a@b.test", (QueueRecipient("x@remote.test"),))
    assert not sem.wants_delivery([], None, None)
    assert not sem.wants_delivery([], OutgoingMessage("a@b.test", ()), None)
    assert sem.wants_delivery(local, remote, "Q1")
    with pytest.raises(ValueError, match="queue id"):
        sem.wants_delivery(local, remote, None)
    assert sem.blob_refs(local, None) == 2 and sem.blob_refs(local, remote) == 3
