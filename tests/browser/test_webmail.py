"""The webmail in a real browser: Debian's Chromium driven by Playwright against `letterbird
serve` (in a thread, HTTP on loopback). Screenshots of the main pages land in
``test-artifacts/browser/``."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from browserutil import (
    PASSWORD,
    Canary,
    deliver,
    launch,
    needs_chromium,
    png,
    screenshot,
)
from playwright.sync_api import expect
from serverutil import ServerThread, server_config

pytestmark = [pytest.mark.browser, pytest.mark.e2e, needs_chromium]

ALICE = "alice@example.test"
BOB = "bob@example.test"


def plain_message(subject: str, body: str, sender: str = "Carol <carol@other.test>") -> bytes:
    return (
        f"From: {sender}\r\nTo: Alice <{ALICE}>\r\nSubject: {subject}\r\n"
        f"Date: Thu, 26 Nov 2026 10:00:00 +0000\r\n"
        f"Message-ID: <{abs(hash(subject))}@other.test>\r\n"
        f"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{body}\r\n"
    ).encode()


def related_message() -> bytes:
    import base64

    picture = base64.encodebytes(png(4, 3)).decode().replace("\n", "\r\n")
    pdf = base64.encodebytes(b"%PDF-1.4 fake report\n").decode().replace("\n", "\r\n")
    return (
        "From: News <news@other.test>\r\nTo: alice@example.test\r\n"
        "Subject: Newsletter with picture\r\n"
        "Date: Fri, 27 Nov 2026 09:00:00 +0000\r\nMIME-Version: 1.0\r\n"
        'Content-Type: multipart/mixed; boundary="outer"\r\n\r\n'
        "--outer\r\n"
        'Content-Type: multipart/related; boundary="rel"\r\n\r\n'
        "--rel\r\nContent-Type: text/html; charset=utf-8\r\n\r\n"
        '<h2 style="color: #1a5fb4">Monthly news</h2><p>Our logo: <img id="logo" '
        'src="cid:logo@news" alt="logo"></p><p><a href="https://example.org/">Visit</a></p>\r\n'
        "--rel\r\nContent-Type: image/png\r\nContent-ID: <logo@news>\r\n"
        "Content-Transfer-Encoding: base64\r\nContent-Disposition: inline\r\n\r\n"
        f"{picture}\r\n--rel--\r\n"
        '--outer\r\nContent-Type: application/pdf; name="../../etc/report.pdf"\r\n'
        'Content-Disposition: attachment; filename="../../etc/report.pdf"\r\n'
        f"Content-Transfer-Encoding: base64\r\n\r\n{pdf}\r\n--outer--\r\n"
    ).encode()


def hostile_message(canary: str) -> bytes:
    html = f"""<html><head><meta http-equiv="refresh" content="0;url={canary}/refresh">
<link rel="stylesheet" href="{canary}/link.css"><base href="{canary}/base/">
<style>@import url({canary}/import.css); body {{ background: url({canary}/style-bg) }}</style>
<script>alert('script')</script></head>
<body onload="alert('onload')">
<h1>Totally normal mail</h1>
<img src="x" onerror="alert('onerror')">
<img src="{canary}/remote.png" alt="tracker">
<img srcset="{canary}/srcset.png 2x">
<a id="js" href="javascript:alert('js-url')">click me</a>
<a href="{canary}/ping-target" ping="{canary}/ping">ping link</a>
<div style="background-image: url({canary}/inline-bg); position: fixed; top: 0">css</div>
<table background="{canary}/table-bg.png"><tr><td>cell</td></tr></table>
<form action="{canary}/form" method="post"><input name="q" value="x">
<button id="go">Go</button></form>
<svg onload="alert('svg-onload')"><script>alert('svg-script')</script>
<image href="{canary}/svg.png"/></svg>
<iframe src="{canary}/frame"></iframe>
<iframe srcdoc="<script>parent.alert('srcdoc')</script>"></iframe>
<object data="{canary}/object"></object><embed src="{canary}/embed">
<video poster="{canary}/poster.png" src="{canary}/video.mp4"></video>
<audio src="{canary}/audio.mp3" autoplay></audio>
<math><mi xlink:href="javascript:alert('math')">m</mi></math>
<input type="image" src="{canary}/input.png">
<p style="width: expression(alert('expr'))">old IE</p>
</body></html>"""
    return (
        "From: Mallory <mallory@evil.test>\r\nTo: alice@example.test\r\nSubject: Hostile HTML\r\n"
        "Date: Sat, 28 Nov 2026 08:00:00 +0000\r\nMIME-Version: 1.0\r\n"
        "Content-Type: text/html; charset=utf-8\r\n\r\n" + html.replace("\n", "\r\n") + "\r\n"
    ).encode()


@pytest.fixture(scope="module")
def canary() -> Iterator[Canary]:
    with Canary() as c:
        yield c


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, canary: Canary) -> Iterator[ServerThread]:
    tmp = tmp_path_factory.mktemp("web")
    with ServerThread(server_config(tmp, http=["127.0.0.1:0"])) as srv:
        srv.add_user(ALICE, PASSWORD)
        srv.add_user(BOB, PASSWORD)
        deliver(srv, ALICE, plain_message("Welcome to Letterbird", "Hello Alice,\r\nwelcome!"))
        deliver(srv, ALICE, related_message())
        deliver(srv, ALICE, hostile_message(canary.base))
        yield srv


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = launch(p)
        yield b
        b.close()


class Watch:
    """Everything a page did that a hostile message might trigger."""

    def __init__(self, page: Any, base: str) -> None:
        self.base = base
        self.dialogs: list[str] = []
        self.confirms: list[str] = []
        self.accept_confirms = False
        self.requests: list[str] = []
        page.on("dialog", self._dialog)
        page.context.on("request", lambda req: self.requests.append(req.url))

    def _dialog(self, dialog: Any) -> None:
        if dialog.type == "confirm" and self.accept_confirms:
            self.confirms.append(dialog.message)  # our own "are you sure?" question
            dialog.accept()
            return
        self.dialogs.append(dialog.message)
        dialog.dismiss()

    def foreign(self) -> list[str]:
        return [u for u in self.requests if not u.startswith(self.base) and u != "about:blank"]


@pytest.fixture
def page(browser: Any, server: ServerThread) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1200, "height": 860})
    pg = context.new_page()
    host, port = server.address("http")
    pg.base = f"http://{host}:{port}"
    pg.watch = Watch(pg, pg.base)
    yield pg
    context.close()


def login(page: Any, address: str = ALICE, password: str = PASSWORD) -> None:
    page.goto(page.base + "/login")
    page.get_by_label("Address").fill(address)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Log in").click()


def test_login_inbox_and_read_plain_message(page: Any) -> None:
    login(page, password="wrong password")
    assert page.get_by_role("alert").inner_text().startswith("Login failed")
    assert page.title() == "Log in · Letterbird"
    screenshot(page, "01-login-failed")
    login(page)
    page.wait_for_url(re.compile(r"/mail/\d+$"))
    assert page.title() == "Inbox · Letterbird"
    rows = page.locator("li.msg")
    assert rows.count() == 3
    assert rows.nth(0).locator(".subject").inner_text() == "Hostile HTML"  # newest first
    assert "unread" in (rows.nth(0).get_attribute("class") or "")
    assert page.locator("#nav a[aria-current=page] .count").inner_text().startswith("3")
    screenshot(page, "02-inbox")
    page.get_by_role("link", name=re.compile("Welcome to Letterbird")).click()
    page.wait_for_url(re.compile(r"/mail/\d+/\d+"))
    assert page.title() == "Welcome to Letterbird · Letterbird"
    assert "welcome!" in page.locator(".body.text").inner_text()
    assert page.get_by_role("heading", level=1).inner_text() == "Welcome to Letterbird"
    screenshot(page, "03-message-plain")
    page.get_by_role("link", name="← Back to Inbox").click()
    row = page.locator("li.msg", has_text="Welcome to Letterbird")
    assert "unread" not in (row.get_attribute("class") or "")
    # every control on the page has an accessible name
    for el in page.locator("button, input:not([type=hidden]), select, a").all():
        name = el.evaluate(
            "e => e.labels && e.labels.length ? e.labels[0].innerText : "
            "(e.getAttribute('aria-label') || e.innerText || e.value || '')"
        )
        assert name.strip(), el.evaluate("e => e.outerHTML")


def test_html_message_inline_image_and_attachment(page: Any, tmp_path: Path) -> None:
    login(page)
    page.get_by_role("link", name=re.compile("Newsletter with picture")).click()
    frame = page.frame_locator("iframe[title='Message body']")
    frame.locator("h2").wait_for()
    assert frame.locator("h2").inner_text() == "Monthly news"
    logo = frame.locator("#logo, img[alt=logo]").first
    logo.wait_for()
    deadline = time.monotonic() + 5
    while logo.evaluate("i => i.naturalWidth") == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert logo.evaluate("i => [i.naturalWidth, i.naturalHeight]") == [4, 3]
    link = frame.get_by_role("link", name="Visit")
    assert link.get_attribute("target") == "_blank"
    assert "noopener" in (link.get_attribute("rel") or "")
    # the inline image is not listed as an attachment; the PDF is, with a safe name
    attachments = page.locator(".attachments li")
    assert attachments.count() == 1
    assert attachments.locator("a").inner_text() == "report.pdf"
    screenshot(page, "04-message-html")
    with page.expect_download() as info:
        attachments.locator("a").click()
    download = info.value
    assert download.suggested_filename == "report.pdf"
    target = tmp_path / "report.pdf"
    download.save_as(str(target))
    assert target.read_bytes() == b"%PDF-1.4 fake report\n"
    assert page.watch.foreign() == []


def test_hostile_html_runs_nothing_and_loads_nothing(page: Any, canary: Canary) -> None:
    login(page)
    canary.hits.clear()
    page.get_by_role("link", name=re.compile("Hostile HTML")).click()
    frame = page.frame_locator("iframe[title='Message body']")
    frame.locator("h1").wait_for()
    assert frame.locator("h1").inner_text() == "Totally normal mail"
    notice = page.locator(".remote-notice")
    assert "remote image" in notice.inner_text()
    # try what a reader might do: click the links and the form button
    frame.locator("#js, a:has-text('click me')").first.click()
    page.wait_for_timeout(700)
    body = frame.locator("body")
    assert (
        body.evaluate("b => b.querySelectorAll('script, iframe, object, embed, form').length") == 0
    )
    screenshot(page, "05-message-hostile")
    assert page.watch.dialogs == []
    assert page.watch.foreign() == []
    assert canary.hits == []
    # "Load remote images" loads exactly the remote image, still nothing runs
    notice.get_by_role("link", name="Load remote images").click()
    frame = page.frame_locator("iframe[title='Message body']")
    frame.locator("h1").wait_for()
    deadline = time.monotonic() + 5
    while not canary.hits and time.monotonic() < deadline:
        time.sleep(0.05)
    page.wait_for_timeout(300)
    assert canary.hits == ["/remote.png"]
    assert page.watch.dialogs == []


def imap_flags(server: ServerThread, address: str, mailbox: str) -> dict[str, set[str]]:
    """Subject -> flags of every message in a folder, as storage (and so IMAP) has them."""

    async def run() -> dict[str, set[str]]:
        from letterbird.mime import MessageInfo

        account = await server.app.directory.get_user(address)
        mb = await server.app.storage.get_mailbox(account.id, mailbox)
        if mb is None:
            return {}
        recs = await server.app.storage.fetch_messages(mb.id)
        return {MessageInfo.from_json(r.structure).subject: set(r.flags) for r in recs}

    result: dict[str, set[str]] = server.call(run())
    return result


def select(page: Any, subject: str) -> None:
    page.get_by_label(re.compile(f"Select message from .*: {re.escape(subject)}$")).check()


def test_organise_flag_move_delete_search_and_folders(page: Any, server: ServerThread) -> None:
    for n in (1, 2, 3):
        deliver(
            server, ALICE, plain_message(f"Org message {n}", f"organise me {n} zebra" * (n == 2))
        )
    login(page)
    page.watch.accept_confirms = True
    # flag two messages at once
    select(page, "Org message 1")
    select(page, "Org message 3")
    page.get_by_role("button", name="Flag", exact=True).click()
    expect(page.get_by_role("status")).to_have_text("Flagged.")
    expect(page.locator("li.msg.flagged")).to_have_count(2)
    inbox = imap_flags(server, ALICE, "INBOX")
    assert "\\Flagged" in inbox["Org message 1"] and "\\Flagged" in inbox["Org message 3"]
    assert "\\Flagged" not in inbox["Org message 2"]
    # mark read / unread in bulk
    select(page, "Org message 2")
    page.get_by_role("button", name="Mark read").click()
    expect(page.get_by_role("status")).to_have_text("Marked as read.")
    assert "\\Seen" in imap_flags(server, ALICE, "INBOX")["Org message 2"]

    # a change made elsewhere (as an IMAP client would) shows on the next page load
    async def unflag_elsewhere() -> None:
        from letterbird.storage.interface import FlagMode

        account = await server.app.directory.get_user(ALICE)
        mb = await server.app.storage.get_mailbox(account.id, "INBOX")
        assert mb is not None
        uids = [u for u, _, f in await server.app.storage.list_messages(mb.id) if "\\Flagged" in f]
        await server.app.storage.store_flags(mb.id, uids[:1], FlagMode.REMOVE, ["\\Flagged"])

    server.call(unflag_elsewhere())
    page.reload()
    expect(page.locator("li.msg.flagged")).to_have_count(1)
    # move two messages to Archive with the folder picker
    select(page, "Org message 1")
    select(page, "Org message 2")
    page.get_by_label("Move selected to folder").select_option(label="Archive")
    page.get_by_role("button", name="Move", exact=True).click()
    expect(page.get_by_role("status")).to_have_text("Moved.")
    assert set(imap_flags(server, ALICE, "Archive")) == {"Org message 1", "Org message 2"}
    assert "Org message 1" not in imap_flags(server, ALICE, "INBOX")
    # search within a folder: by subject, and by body
    page.get_by_role("link", name="Archive").click()
    page.get_by_label("Search in Archive").fill("zebra")
    page.get_by_label("Search in field").select_option("body")
    page.get_by_role("button", name="Search").click()
    expect(page.locator("li.msg .subject")).to_have_text(["Org message 2"])
    screenshot(page, "06-search")
    page.get_by_label("Search in Archive").fill("message 1")
    page.get_by_label("Search in field").select_option("subject")
    page.get_by_role("button", name="Search").click()
    expect(page.locator("li.msg .subject")).to_have_text(["Org message 1"])
    # delete from a message page: to Trash; in Trash, delete permanently
    page.get_by_role("link", name=re.compile("Org message 1")).click()
    page.get_by_role("button", name="Delete", exact=True).click()
    expect(page.get_by_role("status")).to_have_text("Moved to Trash.")
    assert "Org message 1" in imap_flags(server, ALICE, "Trash")
    page.get_by_role("link", name="Trash").click()
    select(page, "Org message 1")
    page.get_by_role("button", name="Delete permanently").click()
    expect(page.get_by_role("status")).to_have_text("Deleted permanently.")
    assert "Org message 1" not in imap_flags(server, ALICE, "Trash")
    assert page.watch.confirms == ["Delete the selected messages permanently?"]
    # folders: create (nested), rename, delete
    page.get_by_role("link", name="Manage folders").click()
    assert page.title() == "Folders · Letterbird"
    page.get_by_label("New folder name").fill("Projects")
    page.get_by_role("button", name="Create folder").click()
    expect(page.get_by_role("status")).to_have_text("Folder created.")
    page.get_by_label("New folder name").fill("2026")
    page.get_by_label("Inside").select_option(label="Projects")
    page.get_by_role("button", name="Create folder").click()
    expect(page.locator("#nav").get_by_role("link", name="2026")).to_have_count(1)
    page.get_by_label("New name for Projects", exact=True).fill("Work")
    page.get_by_role("button", name="Rename Projects", exact=True).click()
    expect(page.get_by_role("status")).to_have_text("Folder renamed.")
    expect(page.get_by_role("row", name=re.compile(r"^Work\/2026"))).to_have_count(1)
    screenshot(page, "07-folders")
    page.get_by_role("button", name="Delete Work/2026").click()
    expect(page.get_by_role("status")).to_have_text("Folder deleted.")
    expect(page.get_by_role("row", name=re.compile(r"^Work\/2026"))).to_have_count(0)
    assert page.watch.dialogs == []


def open_as(browser: Any, server: ServerThread, address: str) -> Any:
    context = browser.new_context(viewport={"width": 1100, "height": 860})
    pg = context.new_page()
    host, port = server.address("http")
    pg.base = f"http://{host}:{port}"
    pg.watch = Watch(pg, pg.base)
    login(pg, address)
    pg.wait_for_url(re.compile(r"/mail/\d+"))
    return pg


def test_compose_send_reply_with_attachment_forward_and_drafts(
    page: Any, browser: Any, server: ServerThread, tmp_path: Path
) -> None:
    login(page)
    # address validation
    page.get_by_role("link", name="Compose").click()
    assert page.title() == "New message · Letterbird"
    page.get_by_label("To", exact=True).fill("bob@example.test, not an address")
    page.get_by_label("Subject").fill("Lunch?")
    page.get_by_role("button", name="Send").click()
    expect(page.locator("#err-to")).to_contain_text("not a valid")
    assert page.get_by_label("To", exact=True).get_attribute("aria-invalid") == "true"
    # send to a local user
    page.get_by_label("To", exact=True).fill("Bob <bob@example.test>")
    page.get_by_label("Message text").fill("Shall we have lunch on Friday?\nAlice")
    screenshot(page, "08-compose")
    page.get_by_role("button", name="Send").click()
    expect(page.get_by_role("status")).to_have_text("Message sent.")
    assert "Lunch?" in imap_flags(server, ALICE, "Sent")
    assert imap_flags(server, ALICE, "Sent")["Lunch?"] == {"\\Seen"}
    # Bob reads it and replies with an attachment
    bob = open_as(browser, server, BOB)
    try:
        bob.get_by_role("link", name=re.compile("Lunch\\?")).click()
        assert "lunch on Friday" in bob.locator(".body.text").inner_text()
        bob.get_by_role("link", name="Reply", exact=True).click()
        assert bob.get_by_label("To", exact=True).input_value() == "alice@example.test"
        assert bob.get_by_label("Subject").input_value() == "Re: Lunch?"
        assert "> Shall we have lunch on Friday?" in bob.get_by_label("Message text").input_value()
        menu = tmp_path / "menu.txt"
        menu.write_text("soup, bread\n")
        bob.get_by_label(re.compile("^Add files")).set_input_files(str(menu))
        body = bob.get_by_label("Message text")
        body.fill("Yes! Menu attached.\n\n" + body.input_value())
        bob.get_by_role("button", name="Send").click()
        expect(bob.get_by_role("status")).to_have_text("Message sent.")
        assert "\\Answered" in imap_flags(server, BOB, "INBOX")["Lunch?"]
    finally:
        bob.context.close()
    page.reload()
    page.get_by_role("link", name=re.compile("Re: Lunch\\?")).click()
    assert "Menu attached" in page.locator(".body.text").inner_text()
    expect(page.locator(".attachments a")).to_have_text(["menu.txt"])
    # forward a message with its attachments
    page.get_by_role("link", name="← Back to Inbox").click()
    page.get_by_role("link", name=re.compile("Newsletter with picture")).click()
    page.get_by_role("link", name="Forward").click()
    assert page.get_by_label("Subject").input_value() == "Fwd: Newsletter with picture"
    assert page.get_by_label(re.compile(r"report\.pdf")).is_checked()
    page.get_by_label("To", exact=True).fill("bob@example.test")
    page.get_by_role("button", name="Send").click()
    expect(page.get_by_role("status")).to_have_text("Message sent.")
    assert "$Forwarded" in imap_flags(server, ALICE, "INBOX")["Newsletter with picture"]
    # a draft: save, find it in Drafts, edit, send; the draft is gone afterwards
    page.get_by_role("link", name="Compose").click()
    page.get_by_label("To", exact=True).fill("bob@example.test")
    page.get_by_label("Bcc").fill("carol@other.test")
    page.get_by_label("Subject").fill("Plans")
    page.get_by_label("Message text").fill("first version")
    page.get_by_role("button", name="Save draft").click()
    expect(page.get_by_role("status")).to_have_text("Draft saved.")
    assert imap_flags(server, ALICE, "Drafts")["Plans"] == {"\\Draft", "\\Seen"}
    page.locator("#nav").get_by_role("link", name="Drafts").click()
    page.get_by_role("link", name=re.compile("Plans")).click()
    page.get_by_role("link", name="Edit draft").click()
    assert page.get_by_label("Bcc").input_value() == "carol@other.test"
    assert page.get_by_label("Message text").input_value() == "first version"
    page.get_by_label("Message text").fill("final version")
    page.get_by_label("Bcc").fill("")
    page.get_by_role("button", name="Send").click()
    expect(page.get_by_role("status")).to_have_text("Message sent.")
    assert "Plans" not in imap_flags(server, ALICE, "Drafts")
    assert page.watch.dialogs == []


def wait_for_stream(server: ServerThread, address: str, timeout: float = 10) -> None:
    """Until the account has a live-update stream open on the server."""
    web = server.app.services["http"].asgi.state.web

    async def account_id() -> int:
        return int((await server.app.directory.get_user(address)).id)

    aid = server.call(account_id())
    deadline = time.monotonic() + timeout
    while not web.events_open.get(aid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert web.events_open.get(aid), "the page did not open its event stream"


def test_live_update_new_mail_appears_without_reload(
    page: Any, browser: Any, server: ServerThread
) -> None:
    bob = open_as(browser, server, BOB)
    try:
        bob.evaluate("window.__stayed = true")
        before = bob.locator("li.msg").count()
        unread = bob.locator("#nav a[aria-current=page] .count")
        before_unread = int(unread.inner_text().split()[0]) if unread.count() else 0
        # wait until the live-update stream is connected
        wait_for_stream(server, BOB)
        login(page)
        page.get_by_role("link", name="Compose").click()
        page.get_by_label("To", exact=True).fill("bob@example.test")
        page.get_by_label("Subject").fill("Live news")
        page.get_by_label("Message text").fill("This should appear by itself.")
        page.get_by_role("button", name="Send").click()
        expect(page.get_by_role("status")).to_have_text("Message sent.")
        expect(bob.locator("li.msg .subject").first).to_have_text("Live news", timeout=10_000)
        assert bob.locator("li.msg").count() == before + 1
        assert bob.evaluate("window.__stayed") is True  # no reload happened
        expect(bob.locator("#nav a[aria-current=page] .count")).to_contain_text(
            str(before_unread + 1)
        )
        screenshot(bob, "09-live-update")
        # a flag set elsewhere (another client) shows up too
        page.goto(page.base + "/")
        assert bob.locator("li.msg.flagged", has_text="Live news").count() == 0

        async def flag_it() -> None:
            from letterbird.storage.interface import FlagMode

            account = await server.app.directory.get_user(BOB)
            mb = await server.app.storage.get_mailbox(account.id, "INBOX")
            assert mb is not None
            last = max(u for u, _, _ in await server.app.storage.list_messages(mb.id))
            await server.app.storage.store_flags(mb.id, [last], FlagMode.ADD, ["\\Flagged"])

        server.call(flag_it())
        expect(bob.locator("li.msg.flagged", has_text="Live news")).to_have_count(1, timeout=10_000)
        assert bob.evaluate("window.__stayed") is True
        assert bob.watch.dialogs == []
    finally:
        bob.context.close()


UNNAMED_CONTROLS = """() => {
  const bad = [];
  const controls = 'button, input:not([type=hidden]), select, textarea, a[href], iframe';
  for (const el of document.querySelectorAll(controls)) {
    let name = el.getAttribute('aria-label') || el.getAttribute('title') || '';
    if (!name && el.labels && el.labels.length) {
      name = Array.from(el.labels).map(l => l.innerText).join(' ');
    }
    if (!name && !['INPUT', 'SELECT', 'TEXTAREA'].includes(el.tagName)) name = el.innerText;
    if (!name.trim()) bad.push(el.outerHTML.slice(0, 120));
  }
  return bad;
}"""


def test_phone_width_titles_and_accessible_names(browser: Any, server: ServerThread) -> None:
    context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True)
    page = context.new_page()
    host, port = server.address("http")
    page.base = f"http://{host}:{port}"
    try:
        login(page)
        page.wait_for_url(re.compile(r"/mail/\d+"))
        inbox_url = page.url
        screenshot(page, "10-phone-inbox")
        page.get_by_role("link", name=re.compile("Newsletter with picture")).click()
        page.frame_locator("iframe[title='Message body']").locator("h2").wait_for()
        screenshot(page, "11-phone-message")
        message_url = page.url
        visited = []
        for url in (
            inbox_url,
            message_url,
            page.base + "/compose",
            page.base + "/folders",
            inbox_url + "?q=news&where=all",
        ):
            page.goto(url)
            title = page.title()
            assert title.endswith(" · Letterbird") and len(title) > len(" · Letterbird"), url
            assert page.evaluate(UNNAMED_CONTROLS) == [], url
            # nothing wider than the phone: no sideways scrolling
            width = page.evaluate("() => document.documentElement.scrollWidth")
            assert width <= 390, (url, width)
            visited.append(title)
        screenshot(page, "12-phone-search")
        assert len(set(visited)) == 5
    finally:
        context.close()
