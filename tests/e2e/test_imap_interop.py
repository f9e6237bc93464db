"""IMAP interoperability with real clients: ``curl imap://``, ``mutt`` (an IMAP Fcc) and
``mbsync`` (isync, both directions), against a real server on 127.0.0.1.

Each test is skipped with a clear reason when its tool is not installed (Debian packages
``curl``, ``mutt``, ``isync``). What the tools did is checked in storage, byte for byte where
the tool moves message bytes.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import blob_of, sample_message
from serverutil import ServerThread, server_config

from letterbird.storage.interface import AppendTarget, MessageRecord

pytestmark = pytest.mark.e2e

BOB = "bob@example.test"
PASSWORD = "secret"
NESTED = (
    b"From: Alice <alice@alice.test>\r\nTo: bob@example.test\r\nSubject: nested parts\r\n"
    b"Date: Thu, 26 Nov 2026 10:00:00 +0000\r\nMessage-ID: <nested@alice.test>\r\n"
    b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=outer\r\n\r\n"
    b"--outer\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nfirst part\r\n"
    b"--outer\r\nContent-Type: message/rfc822\r\n\r\n"
    b"From: Eve <eve@example.test>\r\nSubject: inner\r\n\r\ninner body\r\n"
    b"--outer--\r\n"
)


def need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.skip(f"{tool} is not installed (Debian package: "
                    f"{ {'mbsync': 'isync'}.get(tool, tool)})")  # fmt: skip
    return path


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerThread]:
    cfg = server_config(tmp_path, imap=["127.0.0.1:0"])
    with ServerThread(cfg) as srv:
        srv.add_user(BOB, PASSWORD)
        yield srv


def imap_url(srv: ServerThread, path: str = "") -> str:
    host, port = srv.address("imap")
    return f"imap://{host}:{port}/{path}"


def deliver(srv: ServerThread, data: bytes, mailbox: str = "INBOX") -> int:
    """Store a message straight into a mailbox; returns its UID."""

    async def run() -> int:
        account = await srv.app.directory.get_user(BOB)
        [(_, uid)] = await srv.app.storage.append(
            blob_of(data), [AppendTarget(account.id, mailbox)]
        )
        return int(uid)

    uid: int = srv.call(run())
    return uid


def records(srv: ServerThread, mailbox: str = "INBOX") -> list[tuple[MessageRecord, bytes]]:
    async def run() -> list[tuple[MessageRecord, bytes]]:
        account = await srv.app.directory.get_user(BOB)
        mb = await srv.app.storage.get_mailbox(account.id, mailbox)
        if mb is None:
            return []
        recs = await srv.app.storage.fetch_messages(mb.id)
        return [(r, await srv.app.storage.read_blob(r.blob_id)) for r in recs]

    found: list[tuple[MessageRecord, bytes]] = srv.call(run())
    return found


def run(args: list[str], *, cwd: Path, env: dict[str, str] | None = None,
        stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:  # fmt: skip
    result = subprocess.run(
        args, cwd=cwd, input=stdin, capture_output=True, timeout=60, env=env, check=False
    )
    assert result.returncode == 0, (args, result.stdout[-2000:], result.stderr[-2000:])
    return result


# --- curl -------------------------------------------------------------------------------------


def curl(srv: ServerThread, tmp_path: Path, path: str, *extra: str) -> bytes:
    exe = need("curl")
    args = [exe, "-sS", "--user", f"{BOB}:{PASSWORD}", *extra, imap_url(srv, path)]
    return run(args, cwd=tmp_path).stdout


def test_curl_lists_mailboxes(server: ServerThread, tmp_path: Path) -> None:
    deliver(server, sample_message(1))
    out = curl(server, tmp_path, "")
    lines = out.decode().splitlines()
    assert any(line.startswith("* LIST") and line.endswith(" INBOX") for line in lines), out
    for name in ("Sent", "Drafts", "Trash"):
        assert any(line.endswith(f" {name}") for line in lines), (name, out)


def test_curl_fetches_messages_and_sections_by_uid(server: ServerThread, tmp_path: Path) -> None:
    deliver(server, sample_message(1))
    uid = deliver(server, NESTED)
    assert curl(server, tmp_path, f"INBOX;UID={uid}") == NESTED
    assert curl(server, tmp_path, f"INBOX;UID={uid};SECTION=1") == b"first part"
    assert curl(server, tmp_path, f"INBOX;UID={uid};SECTION=2.HEADER") == (
        b"From: Eve <eve@example.test>\r\nSubject: inner\r\n\r\n"
    )
    assert curl(server, tmp_path, f"INBOX;UID={uid};SECTION=2.1") == b"inner body"
    # curl FETCHes BODY[], not BODY.PEEK[]: the message is \Seen now.
    [(rec, _), (nested, _)] = records(server)
    assert "\\Seen" in nested.flags and "\\Seen" not in rec.flags


def test_curl_examine_and_search(server: ServerThread, tmp_path: Path) -> None:
    for n in range(3):
        deliver(server, sample_message(n + 1))
    out = curl(server, tmp_path, "INBOX", "-X", "EXAMINE INBOX").decode()
    assert "* 3 EXISTS" in out
    assert "[UIDVALIDITY " in out and "[UIDNEXT 4]" in out
    found = curl(server, tmp_path, "INBOX?SUBJECT%20%22message%202%22").decode()
    assert found.split() == ["*", "SEARCH", "2"]


def test_curl_appends(server: ServerThread, tmp_path: Path) -> None:
    message = sample_message(9, "uploaded with curl")
    (tmp_path / "upload.eml").write_bytes(message)
    curl(server, tmp_path, "INBOX", "-T", str(tmp_path / "upload.eml"))
    [(rec, data)] = records(server)
    assert data == message
    assert rec.size == len(message)


# --- mutt -------------------------------------------------------------------------------------


def test_mutt_saves_a_sent_copy_over_imap(server: ServerThread, tmp_path: Path) -> None:
    exe = need("mutt")
    host, port = server.address("imap")
    sink = tmp_path / "sendmail.sh"  # SMTP submission is not exercised: only the Fcc
    sink.write_text("#!/bin/sh\ncat > /dev/null\n")
    sink.chmod(0o755)
    user = BOB.replace("@", "%40")
    (tmp_path / "muttrc").write_text(
        f'set folder="imap://{user}:{PASSWORD}@{host}:{port}/"\n'
        'set record="=Sent"\n'
        "set copy=yes\n"
        f'set sendmail="{sink}"\n'
        f'set from="{BOB}"\n'
        'set realname="Bob"\n'
        "set use_from=yes\n"
        "set ssl_starttls=no\n"
        "set ssl_force_tls=no\n"
        'set header_cache=""\n'
        'set message_cachedir=""\n'
    )
    env = dict(os.environ, HOME=str(tmp_path))
    run(
        [exe, "-n", "-F", str(tmp_path / "muttrc"), "-s", "fcc over imap", "--",
         "carol@example.test"],
        cwd=tmp_path,
        env=env,
        stdin=b"Hello Carol, this copy goes to Sent.\n",
    )  # fmt: skip
    [(rec, data)] = records(server, "Sent")
    assert b"Subject: fcc over imap\r\n" in data
    assert b"Hello Carol, this copy goes to Sent.\r\n" in data
    assert b"\n" not in data.replace(b"\r\n", b"")  # stored with CRLF line ends
    assert "\\Seen" in rec.flags  # mutt appends its Fcc as read
    assert records(server) == []  # nothing in the INBOX


# --- mbsync -----------------------------------------------------------------------------------


def _mbsyncrc(srv: ServerThread, tmp_path: Path) -> Path:
    host, port = srv.address("imap")
    maildir = tmp_path / "maildir"
    maildir.mkdir(exist_ok=True)
    rc = tmp_path / "mbsyncrc"
    rc.write_text(
        f"IMAPAccount lb\nHost {host}\nPort {port}\nUser {BOB}\nPass {PASSWORD}\n"
        "SSLType None\nAuthMechs LOGIN\n\n"
        "IMAPStore remote\nAccount lb\n\n"
        f"MaildirStore local\nPath {maildir}/\nInbox {maildir}/INBOX\n\n"
        "Channel sync\nFar :remote:\nNear :local:\nPatterns INBOX\nCreate Both\n"
        "Expunge None\nSyncState *\nSync All\n"
    )
    return rc


_TUID = re.compile(rb"^X-TUID: [^\r\n]*\r?\n", re.M)


def _plain(data: bytes) -> bytes:
    """A message without mbsync's X-TUID tracking field, with CRLF line ends (mbsync writes
    maildir files with LF)."""
    data = _TUID.sub(b"", data, count=1)
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def _local_messages(tmp_path: Path) -> dict[str, bytes]:
    inbox = tmp_path / "maildir" / "INBOX"
    return {
        p.name: _plain(p.read_bytes()) for sub in ("cur", "new") for p in (inbox / sub).iterdir()
    }


def test_mbsync_both_ways(server: ServerThread, tmp_path: Path) -> None:
    exe = need("mbsync")
    first = sample_message(1, "first message")
    second = NESTED
    deliver(server, first)
    deliver(server, second)
    rc = _mbsyncrc(server, tmp_path)
    sync = [exe, "-c", str(rc), "-a"]

    # 1. Down: both messages arrive in the local maildir (as LF text; compared as CRLF).
    run(sync, cwd=tmp_path)
    local = _local_messages(tmp_path)
    assert sorted(local.values()) == sorted([first, second])

    # 2. Up: a flag set locally (maildir "S" = \Seen, "F" = \Flagged) and a new local message.
    inbox = tmp_path / "maildir" / "INBOX"
    name = next(n for n, data in local.items() if data == first)
    path = next((inbox / sub / name) for sub in ("cur", "new") if (inbox / sub / name).exists())
    base = name.split(":2,", 1)[0]
    path.rename(inbox / "cur" / f"{base}:2,FS")
    new_message = sample_message(3, "written offline")
    (inbox / "new" / "1700000000.local1.host").write_bytes(new_message)
    run(sync, cwd=tmp_path)
    remote = records(server)
    assert [_plain(data) for _, data in remote] == [first, second, new_message]
    flags = {_plain(data): rec.flags for rec, data in remote}
    assert {"\\Seen", "\\Flagged"} <= flags[first]
    assert "\\Flagged" not in flags[second]

    # 3. Down again: a flag change made on the server reaches the maildir.
    async def flag_second() -> None:
        from letterbird.storage.interface import FlagMode

        account = await server.app.directory.get_user(BOB)
        mb = await server.app.storage.get_mailbox(account.id, "INBOX")
        assert mb is not None
        uid = next(rec.uid for rec, data in remote if _plain(data) == second)
        await server.app.storage.store_flags(mb.id, [uid], FlagMode.ADD, ("\\Answered",))

    server.call(flag_second())
    run(sync, cwd=tmp_path)
    local = _local_messages(tmp_path)
    [name2] = [n for n, data in local.items() if data == second]
    assert "R" in name2.rsplit(":2,", 1)[1], name2
    assert len(local) == 3
