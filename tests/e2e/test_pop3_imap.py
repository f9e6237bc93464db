"""POP3 and IMAP on the same mailbox: the same bytes, and POP3 deletions seen by IMAP."""

from __future__ import annotations

import imaplib
import poplib
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import sample_message
from serverutil import ServerThread, server_config

pytestmark = pytest.mark.e2e

BOB = "bob@example.test"
PASSWORD = "secret-pw"

DOTTY = (
    b"From: a@alice.test\r\nSubject: dots\r\n\r\n.leading dot\r\n..two dots\r\n.\r\n"
    b"caf\xc3\xa9 8-bit\r\nno final newline"
)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerThread]:
    cfg = server_config(tmp_path, smtp=["127.0.0.1:0"], pop3=["127.0.0.1:0"], imap=["127.0.0.1:0"])
    with ServerThread(cfg) as srv:
        srv.add_user(BOB, PASSWORD)
        yield srv


def test_same_bytes_and_pop3_deletions_expunge_for_imap(server: ServerThread) -> None:
    import smtplib

    with smtplib.SMTP(*server.address("smtp")) as s:
        for n in range(3):
            s.sendmail("a@alice.test", [BOB], sample_message(n))
        s.sendmail("a@alice.test", [BOB], DOTTY + b"\r\n")
    imap = imaplib.IMAP4(*server.address("imap"))
    imap.login(BOB, PASSWORD)
    imap.select("INBOX")
    _, data = imap.fetch("1:*", "(BODY.PEEK[])")
    via_imap = [part[1] for part in data if isinstance(part, tuple)]
    assert len(via_imap) == 4

    pop = poplib.POP3(*server.address("pop3"), timeout=10)
    pop.user(BOB)
    pop.pass_(PASSWORD)
    via_pop = []
    for i in range(1, 5):
        _, lines, octets = pop.retr(i)
        body = b"\r\n".join(lines) + b"\r\n"
        assert octets == len(body)
        via_pop.append(body)
    assert via_pop == via_imap  # byte for byte (poplib un-stuffs the dots)
    assert via_imap[3].endswith(b"no final newline\r\n")
    pop.dele(2)
    pop.dele(4)
    pop.quit()  # deletions are applied at QUIT, in one transaction

    typ, _ = imap.noop()
    assert typ == "OK"
    # messages 2 and 4 went away: EXPUNGE 2 then 3 (renumbered), or 4 then 2
    expunged = [int(x) for x in imap.untagged_responses.pop("EXPUNGE", [])]
    assert expunged in ([2, 3], [4, 2])
    imap.untagged_responses.clear()
    _, uids = imap.uid("SEARCH", "ALL")
    assert uids[0].split() == [b"1", b"3"]
    # RETR marked the messages \Seen (pop3_marks_seen), visible to IMAP
    _, seen = imap.uid("SEARCH", "SEEN")
    assert seen[0].split() == [b"1", b"3"]
    imap.logout()
