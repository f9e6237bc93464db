"""Webmail HTTP tests: folders, message lists, reading, attachments, actions, isolation."""

from __future__ import annotations

import base64
import re
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote

import pytest
from webutil import WebEnv, make_env

from letterbird.http.settings import WebSettings
from letterbird.storage.interface import Storage

ALICE = "alice@example.test"
EVE = "eve@example.test"


@pytest.fixture
def env(tmp_path: Path) -> Iterator[WebEnv]:
    yield from make_env(tmp_path, settings=WebSettings(page_size=3, upload_size=64 * 1024))


def text_mail(
    subject: str,
    body: str = "Hello.",
    sender: str = "Carol <carol@other.test>",
    to: str = ALICE,
    date: str = "Thu, 26 Nov 2026 10:00:00 +0000",
) -> bytes:
    return (
        f"From: {sender}\r\nTo: {to}\r\nSubject: {subject}\r\nDate: {date}\r\n"
        f"Message-ID: <{abs(hash(subject + body))}@other.test>\r\n"
        f"Content-Type: text/plain; charset=utf-8\r\n\r\n{body}\r\n"
    ).encode()


def b64(data: bytes) -> str:
    return base64.encodebytes(data).decode().replace("\n", "\r\n")


SVG = b'<svg xmlns="http://www.w3.org/2000/svg" onload="alert(1)"><script>alert(2)</script></svg>'
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
)


def rich_mail() -> bytes:
    return (
        "From: News <news@other.test>\r\nTo: alice@example.test\r\nSubject: Rich\r\n"
        "MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=OUT\r\n\r\n"
        "--OUT\r\nContent-Type: multipart/alternative; boundary=ALT\r\n\r\n"
        "--ALT\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nplain version\r\n"
        "--ALT\r\nContent-Type: multipart/related; boundary=REL\r\n\r\n"
        "--REL\r\nContent-Type: text/html; charset=utf-8\r\n\r\n"
        '<p>html version <img src="cid:pic@x"> <img src="cid:vector@x"> <img src="cid:none@x">'
        '<img src="data:image/png;base64,AAAA"><img src="data:text/html;base64,PHNjcmlwdD4=">'
        '<a href="/relative">rel</a></p>\r\n'
        "--REL\r\nContent-Type: image/png\r\nContent-ID: <pic@x>\r\n"
        f"Content-Transfer-Encoding: base64\r\n\r\n{b64(PNG)}\r\n"
        "--REL\r\nContent-Type: image/svg+xml\r\nContent-ID: <vector@x>\r\n"
        f"Content-Transfer-Encoding: base64\r\n\r\n{b64(SVG)}\r\n--REL--\r\n--ALT--\r\n"
        '--OUT\r\nContent-Type: application/x-evil; name="../../../etc/pass\\wd"\r\n'
        'Content-Disposition: attachment; filename="../../../etc/pass\\wd"\r\n'
        f"Content-Transfer-Encoding: base64\r\n\r\n{b64(b'secret stuff' * 100)}\r\n"
        "--OUT\r\nContent-Type: text/plain; name=notes.txt\r\n"
        "Content-Disposition: attachment; filename*=UTF-8''r%C3%A9sum%C3%A9.txt\r\n"
        "Content-Transfer-Encoding: quoted-printable\r\n\r\ncaf=C3=A9 =\r\nau lait\r\n--OUT--\r\n"
    ).encode()


HOSTILE = (
    b"From: Mallory <m@evil.test>\r\nSubject: Hostile\r\nMIME-Version: 1.0\r\n"
    b"Content-Type: text/html; charset=utf-8\r\n\r\n"
    b'<meta http-equiv="refresh" content="0;url=http://evil.test/"><base href="http://evil.test/">'
    b'<link rel=stylesheet href="http://evil.test/x.css"><style>body{background:url(http://e/)}</style>'
    b"<script>alert(1)</script><body onload=alert(2)><img src=x onerror=alert(3)>"
    b'<a href="javascript:alert(4)">js</a><a href=" JaVaScRiPt:alert(5)">js2</a>'
    b'<a href="http://ok.test/" onclick="alert(6)">ok</a>'
    b'<div style="background:url(http://evil.test/bg);color:red">css</div>'
    b'<p style="color: blue; position: fixed">fixed</p>'
    b'<form action="http://evil.test/"><input name=a><button>go</button></form>'
    b"<svg><script>alert(7)</script></svg><iframe src=http://evil.test/></iframe>"
    b'<object data="http://evil.test/"></object><embed src="http://evil.test/">'
    b'<img src="http://evil.test/track.gif"><img src="https://evil.test/t2.gif">'
    b'<table background="http://evil.test/t.png"><tr><td>cell</td></tr></table>'
    b"<math><mi xlink:href=javascript:alert(8)>m</mi></math><template><script>alert(9)</script>"
    b"</template><p>visible text</p>\r\n"
)


def test_mailbox_page_lists_messages_with_markers(env: WebEnv) -> None:
    aid = env.add_user(ALICE)
    for n in range(1, 5):
        env.deliver(aid, text_mail(f"Subject {n}", f"snippet text {n}"))
    mb, _ = env.deliver(aid, rich_mail(), flags=frozenset({"\\Seen", "\\Flagged"}))
    env.login(ALICE)
    r = env.client.get(f"/mail/{mb}")
    assert r.status_code == 200
    assert "<title>Inbox · Letterbird</title>" in r.text
    subjects = re.findall(r'class="subject">([^<]*)<', r.text)
    assert subjects == ["Rich", "Subject 4", "Subject 3"]  # newest first, page of 3
    first = r.text[r.text.index('<li class="msg') :]
    assert first.startswith('<li class="msg flagged">')  # seen: not unread
    assert "Has attachments" in first.split("</li>")[0]
    assert 'class="msg unread"' in r.text
    assert "snippet text 4" in r.text
    assert "Page 1 of 2" in r.text and 'rel="next"' in r.text and 'rel="prev"' not in r.text
    assert re.search(r'title="4 unread">4<', r.text)
    r2 = env.client.get(f"/mail/{mb}?page=2")
    assert re.findall(r'class="subject">([^<]*)<', r2.text) == ["Subject 2", "Subject 1"]
    assert 'rel="prev"' in r2.text
    r3 = env.client.get(f"/mail/{mb}?sort=oldest")
    assert re.findall(r'class="subject">([^<]*)<', r3.text) == [
        "Subject 1",
        "Subject 2",
        "Subject 3",
    ]
    assert "Oldest first" in r3.text
    for bad in ("?page=-4", "?page=zz", "?page=99"):
        assert env.client.get(f"/mail/{mb}{bad}").status_code == 200
    frag = env.client.get(f"/mail/{mb}/list?page=2")
    assert frag.status_code == 200 and frag.text.startswith('<div id="msglist"')
    assert "<html" not in frag.text
    nav = env.client.get(f"/nav?current={mb}")
    assert 'aria-current="page"' in nav.text and "Manage folders" in nav.text


def test_sent_folder_lists_recipients(env: WebEnv) -> None:
    aid = env.add_user(ALICE)
    mb, _ = env.deliver(aid, text_mail("Out", to="Zed <zed@far.test>"), mailbox="Sent")
    env.login(ALICE)
    assert "To: Zed" in env.client.get(f"/mail/{mb}").text


def test_empty_folder_and_home(env: WebEnv) -> None:
    aid = env.add_user(ALICE)
    env.login(ALICE)
    r = env.client.get("/")
    assert r.status_code == 303 and r.headers["location"] == f"/mail/{env.mailbox(aid, 'INBOX').id}"
    assert "This folder is empty." in env.client.get(r.headers["location"]).text


@pytest.mark.parametrize(
    ("where", "query", "expected"),
    [
        ("from", "carol", ["Second", "First"]),
        ("from", "DAVE@", ["Third"]),
        ("to", "bob@", ["Second"]),
        ("subject", "irs", ["First"]),
        ("body", "pineapple", ["Third"]),
        ("all", "pineapple", ["Third"]),
        ("all", "nothing-like-this", []),
        ("bogus", "carol", ["Second", "First"]),
    ],
)
def test_search_within_a_folder(env: WebEnv, where: str, query: str, expected: list[str]) -> None:
    aid = env.add_user(ALICE)
    env.deliver(aid, text_mail("First", "apples"))
    env.deliver(aid, text_mail("Second", "pears", to="Bob <bob@x.test>"))
    mb, _ = env.deliver(aid, text_mail("Third", "a pineapple", sender="dave@other.test"))
    env.login(ALICE)
    r = env.client.get(f"/mail/{mb}", params={"q": query, "where": where})
    assert re.findall(r'class="subject">([^<]*)<', r.text) == expected
    if not expected:
        assert "No messages match." in r.text
    # the same search again is served from the cache, and sees new mail
    env.deliver(aid, text_mail("Fourth pineapple", "pineapple", sender="carol@other.test"))
    r = env.client.get(f"/mail/{mb}", params={"q": query, "where": where})
    assert r.status_code == 200


def test_read_plain_message_marks_seen(env: WebEnv) -> None:
    aid = env.add_user(ALICE)
    mb, uid = env.deliver(aid, text_mail("Hi <there>", "see https://example.org/a?b=1&c=2."))
    env.login(ALICE)
    assert "\\Seen" not in env.flags(mb, uid)
    r = env.client.get(f"/mail/{mb}/{uid}")
    assert r.status_code == 200
    assert "<title>Hi &lt;there&gt; · Letterbird</title>" in r.text
    assert '<a href="https://example.org/a?b=1&amp;c=2" rel="noopener noreferrer"' in r.text
    assert 'Carol <span class="email">&lt;carol@other.test&gt;</span>' in r.text
    assert "\\Seen" in env.flags(mb, uid)
    assert "<iframe" not in r.text


def test_rich_message_frame_images_and_attachments(env: WebEnv) -> None:
    aid = env.add_user(ALICE)
    mb, uid = env.deliver(aid, rich_mail())
    env.login(ALICE)
    page = env.client.get(f"/mail/{mb}/{uid}")
    assert f'src="/mail/{mb}/{uid}/frame"' in page.text
    assert 'sandbox="allow-popups allow-popups-to-escape-sandbox"' in page.text
    assert "allow-scripts" not in page.text and "allow-same-origin" not in page.text
    names = re.findall(r'<a href="[^"]+" download>([^<]*)</a>', page.text)
    # the inline PNG shown by cid: is not listed; the SVG (never shown inline) is
    assert names == ["part-1.2.2.png", "part-1.2.3.svg", "passwd", "résumé.txt"] or names == [
        "part-1.2.3.svg",
        "passwd",
        "résumé.txt",
    ]
    frame = env.client.get(f"/mail/{mb}/{uid}/frame")
    csp = frame.headers["content-security-policy"]
    assert csp.startswith("default-src 'none'; img-src data: http://testserver/cid/;")
    assert "sandbox" in csp and "script-src" not in csp
    assert "html version" in frame.text and "plain version" not in frame.text
    cids = re.findall(r'src="(http://testserver/cid/[^"]+)"', frame.text)
    assert len(cids) == 1  # the PNG; not the SVG, not the unknown cid
    assert 'src="data:image/png;base64,AAAA"' in frame.text
    assert "data:text/html" not in frame.text and "/relative" not in frame.text
    # the signed inline-image link works without cookies, only for that part
    env.client.cookies.clear()
    img = env.client.get(cids[0].replace("http://testserver", ""))
    assert img.status_code == 200 and img.content == PNG
    assert img.headers["content-type"] == "image/png"
    assert img.headers["cross-origin-resource-policy"] == "cross-origin"
    path = cids[0].replace("http://testserver", "")
    head, expires, sig = path.rsplit("/", 2)
    assert env.client.get(f"{head}/{expires}/{sig[:-2]}xx").status_code == 404
    assert env.client.get(f"{head.replace('1.2.2', '1.2.3')}/{expires}/{sig}").status_code == 404
    assert env.client.get(f"{head}/{int(expires) - 7200}/{sig}").status_code == 404


def test_attachment_download_names_are_safe(env: WebEnv) -> None:
    aid = env.add_user(ALICE)
    mb, uid = env.deliver(aid, rich_mail())
    env.login(ALICE)
    page = env.client.get(f"/mail/{mb}/{uid}")
    links = re.findall(r'<a href="([^"]+)" download>', page.text)
    evil = next(link for link in links if "/part/2/" in link)
    r = env.client.get(evil)
    assert r.status_code == 200
    assert r.content == b"secret stuff" * 100
    assert r.headers["content-type"] == "application/octet-stream"  # not the declared type
    disposition = r.headers["content-disposition"]
    assert disposition.startswith('attachment; filename="passwd"')
    assert ".." not in disposition and "/" not in unquote(disposition.split("''")[1])
    assert r.headers["content-security-policy"] == "sandbox; default-src 'none'"
    # the name in the URL is decoration: traversal there changes nothing
    r = env.client.get(f"/mail/{mb}/{uid}/part/2/..%2F..%2Fetc%2Fshadow")
    assert r.status_code == 200 and r.content == b"secret stuff" * 100
    qp = env.client.get(next(link for link in links if "/part/3/" in link))
    assert qp.content == "café au lait".encode()  # the CRLF before the boundary is not content
    assert "filename*=UTF-8''r%C3%A9sum%C3%A9.txt" in qp.headers["content-disposition"]
    for section in ("0", "9", "1.2.9", "../2", "1..2", "2.", "x", "1.2"):
        assert env.client.get(f"/mail/{mb}/{uid}/part/{section}/f").status_code == 404, section


def test_raw_source(env: WebEnv) -> None:
    aid = env.add_user(ALICE)
    data = rich_mail()
    mb, uid = env.deliver(aid, data)
    env.login(ALICE)
    r = env.client.get(f"/mail/{mb}/{uid}/raw")
    assert r.status_code == 200 and r.content == data
    assert r.headers["content-type"].startswith("text/plain")
    assert r.headers["content-security-policy"] == "sandbox; default-src 'none'"
    r = env.client.get(f"/mail/{mb}/{uid}/raw?download=1")
    assert r.headers["content-disposition"].startswith("attachment")


def test_hostile_html_is_sanitised(env: WebEnv) -> None:
    aid = env.add_user(ALICE)
    mb, uid = env.deliver(aid, HOSTILE)
    env.login(ALICE)
    page = env.client.get(f"/mail/{mb}/{uid}")
    assert "2 remote images blocked" in page.text
    assert f'href="/mail/{mb}/{uid}?remote=1"' in page.text
    doc = env.client.get(f"/mail/{mb}/{uid}/frame").text
    body = doc.split("<body>", 1)[1]
    lowered = body.lower()
    for needle in (
        "<script",
        "onload",
        "onerror",
        "onclick",
        "javascript:",
        "<meta",
        "<base",
        "<link",
        "<style",
        "<form",
        "<input",
        "<svg",
        "<iframe",
        "<object",
        "<embed",
        "url(",
        "evil.test",
        "position",
        "<template",
        "<math",
        "alert(",
    ):
        assert needle not in lowered, needle
    assert "visible text" in body and "color:blue" in body.replace(" ", "")
    assert "css</div>" in body and "color:red" not in body  # a style with url( goes whole
    assert 'href="http://ok.test/"' in body and 'target="_blank"' in body
    assert 'rel="noopener noreferrer"' in body
    remote = env.client.get(f"/mail/{mb}/{uid}/frame?remote=1")
    assert 'src="http://evil.test/track.gif"' in remote.text
    assert (
        "img-src data: http://testserver/cid/ https: http:;"
        in remote.headers["content-security-policy"]
    )
    assert "<script" not in remote.text.lower()
    page = env.client.get(f"/mail/{mb}/{uid}?remote=1")
    assert "?remote=1" in page.text and "remote images blocked" not in page.text


def test_other_accounts_messages_are_404(env: WebEnv) -> None:
    aid = env.add_user(ALICE)
    eid = env.add_user(EVE)
    mb, uid = env.deliver(aid, rich_mail())
    trash = env.mailbox(aid, "Trash")
    eve_inbox = env.mailbox(eid, "INBOX")
    csrf = env.login(EVE)
    for path in (
        f"/mail/{mb}",
        f"/mail/{mb}/list",
        f"/mail/{mb}/{uid}",
        f"/mail/{mb}/{uid}/frame",
        f"/mail/{mb}/{uid}/raw",
        f"/mail/{mb}/{uid}/part/2/x",
        f"/compose?reply={mb}:{uid}",
        f"/compose?forward={mb}:{uid}",
        f"/compose?draft={mb}:{uid}",
        "/mail/999999",
        f"/mail/{eve_inbox.id}/{uid + 50}",
    ):
        r = env.client.get(path)
        assert r.status_code == 404, path
        assert "Rich" not in r.text and "secret" not in r.text, path
    for action in ("read", "flag", "delete"):
        r = env.client.post(
            f"/mail/{mb}/action", data={"csrf_token": csrf, "action": action, "uid": str(uid)}
        )
        assert r.status_code == 404
    # moving one's own message into someone else's folder
    _, eve_uid = env.deliver(eid, text_mail("Eve's"))
    r = env.client.post(
        f"/mail/{eve_inbox.id}/action",
        data={"csrf_token": csrf, "action": "move", "uid": str(eve_uid), "target": str(trash.id)},
    )
    assert r.status_code == 404
    for path in (f"/folders/{trash.id}/rename", f"/folders/{trash.id}/delete"):
        assert env.client.post(path, data={"csrf_token": csrf, "name": "x"}).status_code == 404
    r = env.client.post(
        "/compose",
        data={
            "csrf_token": csrf,
            "action": "send",
            "from": EVE,
            "to": EVE,
            "subject": "steal",
            "keep": f"{mb}:{uid}:2",
        },
    )
    assert r.status_code == 404
    assert env.flags(mb, uid) == frozenset()
    assert env.uids(mb) == [uid]


def test_actions_flag_read_move_delete(env: WebEnv) -> None:
    aid = env.add_user(ALICE)
    inbox = env.mailbox(aid, "INBOX").id
    uids = [env.deliver(aid, text_mail(f"M{n}"))[1] for n in range(4)]
    archive = env.mailbox(aid, "Archive").id
    trash = env.mailbox(aid, "Trash").id
    csrf = env.login(ALICE)

    def act(mbid: int, action: str, *ids: int, **extra: str) -> str:
        data: dict[str, object] = {
            "csrf_token": csrf,
            "action": action,
            "uid": [str(i) for i in ids],
        }
        data.update(extra)
        r = env.client.post(f"/mail/{mbid}/action", data=data)
        assert r.status_code == 303, r.text
        return str(r.headers["location"])

    assert act(inbox, "flag", uids[0], uids[1], page="2", q="M") == (
        f"/mail/{inbox}?page=2&q=M&notice=flagged"
    )
    assert "\\Flagged" in env.flags(inbox, uids[0]) and "\\Flagged" in env.flags(inbox, uids[1])
    act(inbox, "unflag", uids[1])
    assert "\\Flagged" not in env.flags(inbox, uids[1])
    act(inbox, "read", *uids)
    assert all("\\Seen" in env.flags(inbox, u) for u in uids)
    assert act(inbox, "unread", uids[0], return_to="message") == f"/mail/{inbox}?notice=unread"
    assert "\\Seen" not in env.flags(inbox, uids[0])
    assert act(inbox, "flag", uids[2], return_to="message") == (
        f"/mail/{inbox}/{uids[2]}?notice=flagged"
    )
    assert act(inbox, "move", uids[0]).endswith("notice=choose-folder")
    act(inbox, "move", uids[0], uids[1], target=str(archive))
    assert len(env.uids(archive)) == 2 and uids[0] not in env.uids(inbox)
    act(inbox, "move", uids[2], target=str(inbox))  # to itself: nothing happens
    assert uids[2] in env.uids(inbox)
    assert act(inbox, "delete", uids[2]).endswith("notice=deleted")
    assert env.uids(inbox) == [uids[3]] and len(env.uids(trash)) == 1
    assert act(trash, "delete", *env.uids(trash)).endswith("notice=purged")
    assert env.uids(trash) == []
    assert act(inbox, "read").endswith("notice=none")
    r = env.client.post(
        f"/mail/{inbox}/action", data={"csrf_token": csrf, "action": "explode", "uid": str(uids[3])}
    )
    assert r.status_code == 400
    notice = env.client.get(f"/mail/{inbox}?notice=deleted").text
    assert 'role="status">Moved to Trash.' in notice
    assert (
        "<script" not in env.client.get(f"/mail/{inbox}?notice=<script>").text.split("</header>")[1]
    )


def test_delete_without_a_trash_folder_creates_one(env: WebEnv) -> None:
    aid = env.add_user(ALICE)
    env.call(env.storage.delete_mailbox, aid, "Trash")
    mb, uid = env.deliver(aid, text_mail("bye"))
    csrf = env.login(ALICE)
    r = env.client.post(
        f"/mail/{mb}/action", data={"csrf_token": csrf, "action": "delete", "uid": str(uid)}
    )
    assert r.status_code == 303
    trash = env.mailbox(aid, "Trash")
    assert trash.role == "\\Trash" and len(env.uids(trash.id)) == 1


def test_folder_management(env: WebEnv) -> None:
    aid = env.add_user(ALICE)
    csrf = env.login(ALICE)
    page = env.client.get("/folders")
    assert page.status_code == 200 and "<title>Folders · Letterbird</title>" in page.text
    post = env.client.post
    r = post("/folders", data={"csrf_token": csrf, "name": "Projects"})
    assert r.status_code == 303 and r.headers["location"] == "/folders?notice=created"
    projects = env.mailbox(aid, "Projects")
    r = post("/folders", data={"csrf_token": csrf, "name": "2026", "parent": str(projects.id)})
    assert r.status_code == 303
    assert env.mailbox(aid, "Projects/2026").role is None
    r = post("/folders", data={"csrf_token": csrf, "name": "Projects"})
    assert r.status_code == 409 and "exists already" in r.text
    for bad in ("a*b", "", "/x", "a//b", "x" * 600):
        r = post("/folders", data={"csrf_token": csrf, "name": bad})
        assert r.status_code == 400 and "Cannot create" in r.text, bad
    sub = env.mailbox(aid, "Projects/2026")
    r = post(f"/folders/{sub.id}/rename", data={"csrf_token": csrf, "name": "2027"})
    assert r.status_code == 303 and env.mailbox(aid, "Projects/2027").id == sub.id
    r = post(f"/folders/{projects.id}/rename", data={"csrf_token": csrf, "name": "Work"})
    assert r.status_code == 303 and env.mailbox(aid, "Work/2027").id == sub.id
    r = post(f"/folders/{projects.id}/rename", data={"csrf_token": csrf, "name": "bad%"})
    assert r.status_code == 400
    env.call(env.storage.create_mailbox, aid, "Other")
    r = post(f"/folders/{projects.id}/rename", data={"csrf_token": csrf, "name": "Other"})
    assert r.status_code == 409
    for special in ("INBOX", "Sent", "Trash"):
        mb = env.mailbox(aid, special)
        r = post(f"/folders/{mb.id}/rename", data={"csrf_token": csrf, "name": "Nope"})
        assert r.status_code == 400 and "keep their names" in r.text
        r = post(f"/folders/{mb.id}/delete", data={"csrf_token": csrf})
        assert r.status_code == 400 and "cannot be deleted" in r.text
    env.deliver(aid, text_mail("in work"), mailbox="Work/2027")
    r = post(f"/folders/{sub.id}/delete", data={"csrf_token": csrf})
    assert r.status_code == 303 and r.headers["location"] == "/folders?notice=folder-deleted"
    assert env.client.get(f"/mail/{sub.id}").status_code == 404
    assert env.client.get("/folders?notice=folder-deleted").text.count("Folder deleted.") == 1


def test_large_folder_paging_uses_the_index(env: WebEnv) -> None:
    aid = env.add_user(ALICE)
    mb = 0
    for n in range(10):
        mb, _ = env.deliver(aid, text_mail(f"N{n}"))
    env.login(ALICE)
    web = env.client.app.state.web  # type: ignore[attr-defined]
    calls = {"list": 0, "changes": 0, "status": 0}
    storage = env.storage
    originals = (storage.list_messages, storage.changes_since, storage.mailbox_status)

    async def listing(mailbox_id: int):  # type: ignore[no-untyped-def]
        calls["list"] += 1
        return await originals[0](mailbox_id)

    async def changes(mailbox_id: int, modseq: int):  # type: ignore[no-untyped-def]
        calls["changes"] += 1
        return await originals[1](mailbox_id, modseq)

    async def status(mailbox_id: int):  # type: ignore[no-untyped-def]
        calls["status"] += 1
        return await originals[2](mailbox_id)

    storage.list_messages = listing  # type: ignore[method-assign]
    storage.changes_since = changes  # type: ignore[method-assign]
    storage.mailbox_status = status  # type: ignore[method-assign]
    web.index.forget(mb)
    env.client.get(f"/mail/{mb}")
    env.client.get(f"/mail/{mb}?page=2")
    env.client.get(f"/mail/{mb}?page=3")
    assert calls == {"list": 1, "changes": 0, "status": 0}  # unchanged: served from memory
    # a new message, a flag change, an old message appended, an expunge: incremental updates
    env.deliver(aid, text_mail("N10"))
    r = env.client.get(f"/mail/{mb}")
    assert calls == {"list": 1, "changes": 1, "status": 0}
    assert re.findall(r'class="subject">([^<]*)<', r.text)[0] == "N10"
    assert re.search(r'title="11 unread">11<', r.text)

    async def older() -> None:
        from webutil import blob

        from letterbird.storage.interface import AppendTarget

        await storage.deliver(
            blob(text_mail("Old one")), [AppendTarget(aid, "INBOX", internaldate=1.0)]
        )

    env.call(older)
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', r.text)
    assert csrf is not None
    uids = [row[0] for row in env.call(originals[0], mb)]  # not counted
    env.client.post(
        f"/mail/{mb}/action",
        data={"csrf_token": csrf.group(1), "action": "read", "uid": [str(uids[0]), str(uids[1])]},
    )
    env.client.post(
        f"/mail/{mb}/action",
        data={"csrf_token": csrf.group(1), "action": "delete", "uid": str(uids[2])},
    )
    r = env.client.get(f"/mail/{mb}?sort=oldest")
    assert re.findall(r'class="subject">([^<]*)<', r.text) == ["Old one", "N0", "N1"]
    assert re.search(r'title="9 unread">9<', r.text)  # 12 - 2 read - 1 deleted
    assert "11 messages" in r.text
    assert calls["list"] == 1 and calls["status"] <= 2  # Trash's count, not the inbox's


def test_storage_failures_become_pages(env: WebEnv) -> None:
    from letterbird.storage.interface import NotFound, StorageError

    aid = env.add_user(ALICE)
    mb, uid = env.deliver(aid, text_mail("x"))
    env.login(ALICE)
    original = env.storage.store_flags

    async def gone(*args: object, **kw: object) -> None:
        raise NotFound("no such mailbox")

    async def broken(*args: object, **kw: object) -> None:
        raise StorageError("disk on fire")

    env.storage.store_flags = gone  # type: ignore[method-assign,assignment]
    r = env.client.get(f"/mail/{mb}/{uid}")
    assert r.status_code == 404 and "moved or deleted meanwhile" in r.text
    env.storage.store_flags = broken  # type: ignore[method-assign,assignment]
    r = env.client.get(f"/mail/{mb}/{uid}")
    assert r.status_code == 503 and "<title>Unavailable · Letterbird</title>" in r.text
    assert "disk on fire" not in r.text
    env.storage.store_flags = original  # type: ignore[method-assign]


async def test_concurrent_index_refreshes_do_not_duplicate(storage: Storage) -> None:
    """FolderIndex on the storage the run uses (SQLite, or PostgreSQL in PG mode)."""
    import asyncio

    from webutil import blob

    from letterbird.http.listing import FolderIndex
    from letterbird.storage.interface import AppendTarget

    await storage.add_domain("example.test")
    account = await storage.add_account("alice", "example.test", "h")
    for n in range(5):
        await storage.deliver(blob(text_mail(f"a{n}")), [AppendTarget(account.id)])
    index = FolderIndex(storage, capacity=1)
    mb = await storage.get_mailbox(account.id, "INBOX")
    assert mb is not None
    assert len(await index.ordered(mb)) == 5
    for n in range(3):
        await storage.deliver(blob(text_mail(f"b{n}")), [AppendTarget(account.id)])
    mb = await storage.get_mailbox(account.id, "INBOX")
    assert mb is not None
    results = await asyncio.gather(*(index.ordered(mb) for _ in range(4)))
    assert all(r == list(range(1, 9)) for r in results)
    assert index.counts(mb) == (8, 8)
    other = await storage.get_mailbox(account.id, "Sent")
    assert other is not None
    await index.ordered(other)  # capacity 1: the inbox is evicted
    assert index.counts(mb) is None
