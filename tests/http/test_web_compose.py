"""Webmail HTTP tests: compose, reply, reply-all, forward, drafts, Send and its limits."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import make_config
from webutil import WebEnv, make_env

from letterbird.config import SubmissionSettings
from letterbird.http.settings import WebSettings
from letterbird.mime import parse_message

ALICE = "alice@example.test"
BOB = "bob@example.test"


@pytest.fixture
def env(tmp_path: Path) -> Iterator[WebEnv]:
    yield from make_env(
        tmp_path, settings=WebSettings(upload_size=200 * 1024, message_size=150 * 1024)
    )


def original(to: str = f"Alice <{ALICE}>", cc: str = "Bob <bob@example.test>, x@far.test") -> bytes:
    return (
        "From: Carol <carol@other.test>\r\nReply-To: Carol Work <carol@work.test>\r\n"
        f"To: {to}\r\nCc: {cc}\r\nSubject: Re: Fwd: Plans\r\n"
        "Date: Thu, 26 Nov 2026 10:00:00 +0000\r\nMessage-ID: <orig@other.test>\r\n"
        "References: <a@x> <b@x>\r\nMIME-Version: 1.0\r\n"
        "Content-Type: multipart/mixed; boundary=B\r\n\r\n"
        "--B\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nLine one\r\nLine two\r\n"
        "--B\r\nContent-Type: application/pdf; name=plan.pdf\r\n"
        "Content-Disposition: attachment; filename=plan.pdf\r\n"
        "Content-Transfer-Encoding: base64\r\n\r\nJVBERi0xLjQgcGxhbg==\r\n--B--\r\n"
    ).encode()


def form_value(page: str, name: str) -> str:
    m = re.search(rf'name="{name}" value="([^"]*)"', page)
    assert m is not None, name
    import html

    return html.unescape(m.group(1))


def textarea(page: str) -> str:
    import html

    m = re.search(r'<textarea id="c-body" name="body" rows="16">(.*?)</textarea>', page, re.S)
    assert m is not None
    return html.unescape(m.group(1))


def send(env: WebEnv, csrf: str, files: Any = None, **fields: Any) -> Any:
    data = {"csrf_token": csrf, "from": ALICE, "action": "send", **fields}
    return env.client.post("/compose", data=data, files=files)


def stored(env: WebEnv, account: int, mailbox: str) -> list[bytes]:
    mb = env.mailbox(account, mailbox)
    return [env.raw(mb.id, u) for u in env.uids(mb.id)]


def test_compose_page(env: WebEnv) -> None:
    env.add_user(ALICE)
    env.login(ALICE)
    r = env.client.get("/compose?to=bob@example.test")
    assert r.status_code == 200 and "<title>New message · Letterbird</title>" in r.text
    assert form_value(r.text, "to") == "bob@example.test"
    for label in ("From", "To", "Cc", "Bcc", "Subject", "Message text"):
        assert f">{label}</label>" in r.text
    assert 'enctype="multipart/form-data"' in r.text


def test_send_to_local_and_remote_with_attachment(env: WebEnv) -> None:
    aid = env.add_user(ALICE)
    bid = env.add_user(BOB)
    csrf = env.login(ALICE)
    r = send(
        env,
        csrf,
        files=[
            ("attachments", ("../../secret/My Report.txt", b"report body", "text/plain")),
            ("attachments", ("data.bin", b"\x00\x01", "bogus type")),
        ],
        to="Bob <bob@example.test>, far@remote.test",
        cc="",
        bcc="hidden@remote2.test",
        subject="Hello\r\nBcc: injected@evil.test",
        body="Héllo Bob\n" + "x" * 2000,
    )
    assert r.status_code == 303 and r.headers["location"].endswith("?notice=sent")
    [delivered] = stored(env, bid, "INBOX")
    [copy] = stored(env, aid, "Sent")
    assert delivered == copy
    info = parse_message(delivered)
    assert info.subject == "Hello Bcc: injected@evil.test"
    assert b"\r\nBcc:" not in delivered and b"hidden@remote2.test" not in delivered
    assert info.message_id and info.message_id.endswith("@example.test")
    assert info.envelope.date
    assert b"\n" not in delivered.replace(b"\r\n", b"")
    assert all(len(line) <= 998 for line in delivered.split(b"\r\n"))
    assert b'filename="My Report.txt"' in delivered
    assert b"Content-Type: application/octet-stream" in delivered
    sent = env.mailbox(aid, "Sent")
    assert env.flags(sent.id, env.uids(sent.id)[0]) == {"\\Seen"}

    async def queued() -> Any:
        return await env.storage.queue_entries()

    entries = env.call(queued)
    assert sorted(r.address for e in entries for r in e.recipients) == [
        "far@remote.test",
        "hidden@remote2.test",
    ]
    assert all(e.sender == ALICE for e in entries)


@pytest.mark.parametrize(
    ("fields", "field", "message"),
    [
        ({"to": ""}, "to", "Add at least one recipient."),
        ({"to": "not an address"}, "to", "not a valid"),
        ({"to": "a@b@c"}, "to", ""),
        ({"to": "ok@example.test", "cc": "bad@@x"}, "cc", ""),
        ({"to": "x@-bad-.test"}, "to", "invalid domain"),
        ({"to": ".dot@example.test"}, "to", "not a valid address"),
        ({"to": "nobody@example.test"}, "to", "There is no mailbox nobody@example.test here."),
        (
            {"to": "bob@example.test", "from": "carol@other.test"},
            "from",
            "Choose one of your addresses.",
        ),
    ],
)
def test_send_refusals(env: WebEnv, fields: dict[str, str], field: str, message: str) -> None:
    aid = env.add_user(ALICE)
    env.add_user(BOB)
    csrf = env.login(ALICE)
    r = send(env, csrf, subject="s", body="b", **fields)
    assert r.status_code == 400
    if field == "form":
        assert f'class="error" role="alert">{message}' in r.text
    else:
        assert f'id="err-{field}" role="alert">' in r.text
        assert message in r.text
    assert form_value(r.text, "subject") == "s" and textarea(r.text) == "b"
    assert stored(env, aid, "Sent") == []


def test_too_many_recipients(tmp_path: Path) -> None:
    for env in make_env(tmp_path, settings=WebSettings(max_recipients=2)):
        env.add_user(ALICE)
        csrf = env.login(ALICE)
        r = send(env, csrf, to="a@x.test, b@x.test, c@x.test")
        assert r.status_code == 400 and "Too many recipients (at most 2)." in r.text
        r = send(env, csrf, to="a@x.test, b@x.test", bcc="c@x.test")
        assert r.status_code == 400 and "Too many recipients" in r.text


def test_sending_limit_is_shared_with_submission(tmp_path: Path) -> None:
    config = dataclasses.replace(
        make_config(tmp_path), submission=SubmissionSettings(max_messages_per_hour=1)
    )
    for env in make_env(tmp_path, config=config):
        env.add_user(ALICE)
        csrf = env.login(ALICE)
        assert send(env, csrf, to="x@far.test", subject="1").status_code == 303
        r = send(env, csrf, to="x@far.test", subject="2")
        assert r.status_code == 400 and "Sending limit reached" in r.text


def test_message_size_limit_and_upload_limit(env: WebEnv) -> None:
    aid = env.add_user(ALICE)
    csrf = env.login(ALICE)
    r = send(
        env,
        csrf,
        to="x@far.test",
        files=[("attachments", ("big.bin", b"\x00" * (120 * 1024), "application/zip"))],
    )
    assert r.status_code == 400 and "too large" in r.text
    assert "Attach your files again." in r.text
    r = send(
        env,
        csrf,
        to="x@far.test",
        files=[("attachments", ("huge.bin", b"\x00" * (300 * 1024), "application/zip"))],
    )
    assert r.status_code == 413
    assert "The upload is too large: the limit is 200 KB per request." in r.text
    assert "<title>Too large · Letterbird</title>" in r.text

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it streams
        yield b"csrf_token=" + csrf.encode() + b"&body="
        for _ in range(30):
            yield b"y" * 10240

    r = env.client.post(
        "/compose", content=chunks(), headers={"Content-Type": "application/x-www-form-urlencoded"}
    )
    assert r.status_code == 413
    assert stored(env, aid, "Sent") == []


def test_reply_and_reply_all(env: WebEnv) -> None:
    aid = env.add_user(ALICE)
    env.add_user(BOB)
    env.call(env.app.directory.add_alias, "ali@example.test", [ALICE])
    mb, uid = env.deliver(aid, original(to="Ali <ali@example.test>"))
    csrf = env.login(ALICE)
    page = env.client.get(f"/compose?reply={mb}:{uid}").text
    assert form_value(page, "to") == "Carol Work <carol@work.test>"
    assert form_value(page, "subject") == "Re: Plans"
    assert form_value(page, "in_reply_to") == "orig@other.test"
    assert form_value(page, "references") == "a@x b@x orig@other.test"
    assert '<option value="ali@example.test" selected>' in page  # answered as addressed
    assert "Carol wrote:\n> Line one\n> Line two" in textarea(page)
    page = env.client.get(f"/compose?replyall={mb}:{uid}").text
    assert form_value(page, "to") == "Carol Work <carol@work.test>"
    assert form_value(page, "cc") == "Bob <bob@example.test>, x@far.test"
    r = send(
        env,
        csrf,
        **{"from": "ali@example.test"},
        to="carol@work.test",
        subject="Re: Plans",
        body="ok",
        in_reply_to="orig@other.test",
        references="a@x b@x orig@other.test",
        reply_of=f"{mb}:{uid}",
    )
    assert r.status_code == 303
    [copy] = stored(env, aid, "Sent")
    info = parse_message(copy)
    assert info.in_reply_to == "orig@other.test"
    assert info.references == ("a@x", "b@x", "orig@other.test")
    assert info.envelope.from_[0].mailbox == "ali"
    assert "\\Answered" in env.flags(mb, uid)


def test_forward_with_attachments(env: WebEnv) -> None:
    aid = env.add_user(ALICE)
    bid = env.add_user(BOB)
    mb, uid = env.deliver(aid, original())
    csrf = env.login(ALICE)
    page = env.client.get(f"/compose?forward={mb}:{uid}").text
    assert form_value(page, "subject") == "Fwd: Plans"
    assert "---------- Forwarded message ----------" in textarea(page)
    assert re.search(rf'name="keep" value="{mb}:{uid}:2" checked> plan.pdf', page)
    r = send(
        env,
        csrf,
        to=BOB,
        subject="Fwd: Plans",
        body="see below",
        keep=f"{mb}:{uid}:2",
        forward_of=f"{mb}:{uid}",
    )
    assert r.status_code == 303
    [got] = stored(env, bid, "INBOX")
    assert b'filename="plan.pdf"' in got and b"JVBERi0xLjQgcGxhbg==" in got
    assert "$Forwarded" in env.flags(mb, uid)
    r = send(env, csrf, to=BOB, keep=f"{mb}:{uid}:7")
    assert r.status_code == 400 and "is gone" in r.text


def test_drafts_save_edit_send(env: WebEnv) -> None:
    aid = env.add_user(ALICE)
    bid = env.add_user(BOB)
    csrf = env.login(ALICE)
    r = env.client.post(
        "/compose",
        data={
            "csrf_token": csrf,
            "from": ALICE,
            "action": "save",
            "to": BOB,
            "bcc": "b@far.test",
            "subject": "Draft 1",
            "body": "v1",
        },
        files=[("attachments", ("a.txt", b"attached", "text/plain"))],
    )
    assert r.status_code == 303
    m = re.match(r"/compose\?draft=(\d+):(\d+)&notice=saved", r.headers["location"])
    assert m is not None
    drafts = env.mailbox(aid, "Drafts")
    assert int(m.group(1)) == drafts.id
    first = int(m.group(2))
    assert env.flags(drafts.id, first) == {"\\Draft", "\\Seen"}
    assert b"Bcc: b@far.test" in env.raw(drafts.id, first)  # drafts keep Bcc
    page = env.client.get(r.headers["location"]).text
    assert "Draft saved." in page
    assert form_value(page, "bcc") == "b@far.test" and textarea(page) == "v1"
    assert form_value(page, "draft") == f"{drafts.id}:{first}"
    assert re.search(rf'name="keep" value="{drafts.id}:{first}:2" checked> a.txt', page)
    # save again: the old draft is replaced
    r = env.client.post(
        "/compose",
        data={
            "csrf_token": csrf,
            "from": ALICE,
            "action": "save",
            "to": BOB,
            "subject": "Draft 2",
            "body": "v2",
            "draft": f"{drafts.id}:{first}",
            "keep": f"{drafts.id}:{first}:2",
        },
    )
    second = int(r.headers["location"].split(":")[1].split("&")[0])
    assert env.uids(drafts.id) == [second]
    page = env.client.get(f"/mail/{drafts.id}/{second}").text
    assert "Edit draft" in page and ">Reply<" not in page
    r = send(
        env,
        csrf,
        to=BOB,
        subject="Final",
        body="v3",
        draft=f"{drafts.id}:{second}",
        keep=f"{drafts.id}:{second}:2",
    )
    assert r.status_code == 303
    assert env.uids(drafts.id) == []
    [got] = stored(env, bid, "INBOX")
    assert b"attached" not in got  # base64 in the message
    assert b"YXR0YWNoZWQ=" in got
    r = env.client.post("/compose", data={"csrf_token": csrf, "from": ALICE, "action": "what"})
    assert r.status_code == 400


def test_unknown_compose_reference(env: WebEnv) -> None:
    env.add_user(ALICE)
    env.login(ALICE)
    for q in ("reply=abc", "reply=1", "forward=1:999", "draft=" + "9" * 50):
        assert env.client.get(f"/compose?{q}").status_code == 404, q
