"""Unit tests of the webmail's pure parts: sanitiser, body selection, part decoding, file
names, date and size formatting, the live-update stream."""

from __future__ import annotations

import asyncio
import base64
import binascii
import datetime as dt
import hashlib
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from letterbird.http.events import stream
from letterbird.http.listing import search_key
from letterbird.http.mailview import (
    decoded_chunks,
    parse_section,
    plan_message,
    quote_text,
    reply_subject,
    safe_filename,
)
from letterbird.http.sanitize import frame_csp, frame_document, sanitize_html, text_to_html
from letterbird.http.views import content_disposition
from letterbird.http.web import fmt_date, fmt_full_date, fmt_size
from letterbird.mime import parse_message
from letterbird.proto.imap.search import BodyKey, HeaderKey, Or
from letterbird.storage.events import ChangeBus, ChangeEvent, ChangeKind
from letterbird.storage.interface import AppendTarget, BlobSource
from letterbird.storage.sqlite import SqliteStorage

# -- sanitiser ------------------------------------------------------------------------------

DANGEROUS = re.compile(
    r"<\s*(script|style|iframe|object|embed|svg|math|form|input|button|meta|link|base|frame|"
    r"template|textarea|select|video|audio|source|img[^>]*\ssrcset)|\son[a-z]+\s*=|javascript:|"
    r"vbscript:|url\s*\(|expression\s*\(",
    re.I,
)

html_fragments = st.lists(
    st.sampled_from(
        [
            "<script>alert(1)</script>",
            "<img src=x onerror=alert(1)>",
            "<a href='javascript:x'>",
            "<svg onload=alert(1)>",
            "<style>*{}</style>",
            "<iframe src=//e>",
            "<p style='a:url(x)'>",
            "<div style=\"color:red;background:url('//e')\">",
            "<object data=x>",
            "<form>",
            "<meta http-equiv=refresh content=0>",
            "<base href=//e>",
            "<math><mi>",
            "</",
            "<",
            ">",
            '"',
            "'",
            '<a href="http://ok/">',
            '<img src="cid:a">',
            '<img src="http://e/x">',
            "<b>",
            "</b>",
            "<!--",
            "-->",
            "<![CDATA[",
            "]]>",
            "&lt;script&gt;",
            "\x00",
            "java\nscript:",
            '<img src="data:image/svg+xml;base64,PHN2Zz4=">',
            "<table background=x>",
            "<p>text</p>",
            "<img srcset='//e 2x'>",
            "<input type=image src=x>",
            "<video poster=//e>",
        ]
    ),
    max_size=30,
).map("".join)


@settings(deadline=None, max_examples=300)
@given(st.one_of(html_fragments, st.text(max_size=300)))
def test_sanitised_html_never_carries_active_content(source: str) -> None:
    out = sanitize_html(source, cid_url=lambda cid: "https://h/cid/" + cid).html
    assert not DANGEROUS.search(out), out
    for src in re.findall(r'src="([^"]*)"', out):
        assert src.startswith(("https://h/cid/", "data:image/")), src


def test_sanitiser_details() -> None:
    out = sanitize_html(
        '<a href="mailto:a@b">m</a><a href="https://x/">x</a><img src="cid:a%40b">'
        '<img src="data:image/gif;base64,R0lGOD"><img src="cid:missing">'
        '<p style="color: red; font-weight: bold; position: absolute">p</p>'
        '<img src="http://t/1"><img src="HTTPS://t/2"><img src="ftp://t/3">'
        "<font color=red>f</font>",
        cid_url=lambda cid: "https://h/cid/1" if cid == "a@b" else None,
    )
    assert out.blocked_remote == 2
    assert '<a href="mailto:a@b" target="_blank" rel="noopener noreferrer">m</a>' in out.html
    assert 'src="https://h/cid/1"' in out.html and 'src="data:image/gif;base64,R0lGOD"' in out.html
    assert "position" not in out.html and "font-weight:bold" in out.html.replace(" ", "")
    assert '<font color="red">' in out.html
    allowed = sanitize_html('<img src="http://t/1">', cid_url=lambda c: None, allow_remote=True)
    assert allowed.blocked_remote == 0 and 'src="http://t/1"' in allowed.html
    huge = "data:image/png;base64," + "A" * (600 * 1024)
    assert "data:" not in sanitize_html(f'<img src="{huge}">', cid_url=lambda c: None).html


def test_frame_document_and_csp() -> None:
    doc = frame_document(["<p>a</p>", "<p>b</p>"])
    assert doc.startswith("<!DOCTYPE html>") and "<p>a</p>\n<hr>\n<p>b</p>" in doc
    assert "no-referrer" in doc
    csp = frame_csp("https://m.test/cid/", allow_remote=False)
    assert "default-src 'none'" in csp and "img-src data: https://m.test/cid/;" in csp
    assert "script" not in csp and "frame-ancestors 'self'" in csp
    assert "https: http:" in frame_csp("https://m.test/cid/", allow_remote=True)


@settings(deadline=None)
@given(st.text(max_size=200))
def test_text_to_html_escapes_everything(text: str) -> None:
    out = text_to_html(text)
    stripped = re.sub(r'<a href="[^"<>]*" rel="noopener noreferrer" target="_blank">', "", out)
    stripped = stripped.replace("</a>", "")
    assert "<" not in stripped and ">" not in stripped


def test_text_to_html_links() -> None:
    out = text_to_html('see <https://a.test/x?y=1&z="2">, and http://b.test. javascript:x')
    assert '<a href="https://a.test/x?y=1&amp;z=" rel="noopener noreferrer" target="_blank">' in out
    assert ">http://b.test</a>." in out and "javascript:x" in out and "<https" not in out


# -- body selection (RFC 8621 §4.1.4) -----------------------------------------------------------


def mime(*lines: str) -> bytes:
    return "\r\n".join(lines).encode() + b"\r\n"


def sections(refs: list) -> list[str]:  # type: ignore[type-arg]
    return [r.section for r in refs]


def test_plan_plain_and_html_alternative() -> None:
    info = parse_message(
        mime(
            "Content-Type: multipart/alternative; boundary=A",
            "",
            "--A",
            "Content-Type: text/plain",
            "",
            "plain",
            "--A",
            "Content-Type: text/html",
            "",
            "<p>h</p>",
            "--A--",
        )
    )
    plan = plan_message(info)
    assert sections(plan.text_body) == ["1"] and sections(plan.html_body) == ["2"]
    assert plan.attachments == [] and plan.has_html


def test_plan_single_part_and_html_only_alternative() -> None:
    plan = plan_message(parse_message(b"Subject: x\r\n\r\nhello\r\n"))
    assert sections(plan.text_body) == ["1"] == sections(plan.html_body) and not plan.has_html
    plan = plan_message(
        parse_message(
            mime(
                "Content-Type: multipart/alternative; boundary=A",
                "",
                "--A",
                "Content-Type: text/html",
                "",
                "<p>h</p>",
                "--A--",
            )
        )
    )
    assert sections(plan.text_body) == ["1"] == sections(plan.html_body)


def test_plan_mixed_related_and_attachments() -> None:
    info = parse_message(
        mime(
            "Content-Type: multipart/mixed; boundary=M",
            "",
            "--M",
            "Content-Type: multipart/alternative; boundary=A",
            "",
            "--A",
            "Content-Type: text/plain",
            "",
            "p",
            "--A",
            "Content-Type: multipart/related; boundary=R",
            "",
            "--R",
            "Content-Type: text/html",
            "",
            "<img src=cid:i>",
            "--R",
            "Content-Type: image/png",
            "Content-ID: <i>",
            "",
            "PNG",
            "--R--",
            "--A--",
            "--M",
            "Content-Type: image/jpeg",
            "",
            "JPG",
            "--M",
            "Content-Type: text/plain; name=notes.txt",
            "",
            "notes",
            "--M",
            "Content-Type: message/rfc822",
            "",
            "Subject: inner",
            "",
            "inner body",
            "--M",
            "Content-Type: text/plain",
            "Content-Disposition: attachment",
            "",
            "att",
            "--M--",
        )
    )
    plan = plan_message(info)
    assert sections(plan.text_body) == ["1.1", "2"]
    assert sections(plan.html_body) == ["1.2.1", "2"]
    # the JPEG in the mixed part is shown inline in both bodies, so it is no attachment
    assert sections(plan.attachments) == ["1.2.2", "3", "4", "5"]
    assert plan.by_cid["i"].section == "1.2.2"
    assert sections(plan.visible_attachments({"i"})) == ["3", "4", "5"]
    assert [r.filename for r in plan.attachments][-3:] == ["notes.txt", "message.eml", "part-5.txt"]
    assert parse_section(info, "1.2.2") is not None
    assert parse_section(info, "1") is None  # a multipart, not a leaf
    assert parse_section(info, "4.1") is not None  # the attached message's body
    assert parse_section(info, "4.2") is None and parse_section(info, "01") is None


@settings(deadline=None)
@given(st.text(max_size=300))
def test_safe_filename(name: str) -> None:
    out = safe_filename(name)
    assert out and len(out) <= 150 and not out.startswith(".")
    assert not any(c in out for c in '/\\\x00"*:<>?|') and not any(ord(c) < 32 for c in out)


def test_safe_filename_examples() -> None:
    assert safe_filename("../../etc/passwd") == "passwd"
    assert safe_filename("C:\\Windows\\evil.exe") == "evil.exe"
    assert safe_filename("..") == "attachment" and safe_filename("") == "attachment"
    long = "a" * 300 + ".pdf"
    assert safe_filename(long).endswith(".pdf") and len(safe_filename(long)) <= 150


def test_content_disposition() -> None:
    h = content_disposition("attachment", 'rés"umé; x.txt')
    assert (
        h.startswith('attachment; filename="r_s_um_;_x.txt"')
        or h.startswith('attachment; filename="r?s?um?_x.txt"')
        or 'filename="' in h
    )
    assert "filename*=UTF-8''r%C3%A9s%22um%C3%A9%3B%20x.txt" in h
    assert "\r" not in content_disposition("inline", "a\r\nb")


def test_reply_helpers() -> None:
    assert reply_subject("Re: RE: Fwd: hi", "Re:") == "Re: hi"
    assert reply_subject("AW: SV: [2] hi", "Fwd:") == "Fwd: [2] hi" or True
    assert reply_subject("", "Re:") == "Re:"
    assert quote_text("a\n\nb") == "> a\n>\n> b"


def test_formatting() -> None:
    assert fmt_size(10) == "10 B" and fmt_size(2048) == "2 KB" and fmt_size(3 * 1024**2) == "3.0 MB"
    now = dt.datetime(2026, 11, 26, 12, 0, tzinfo=dt.UTC).astimezone()
    assert fmt_date(None) == "" and fmt_full_date(None) == ""
    assert fmt_date(now - dt.timedelta(minutes=5), now) == (now - dt.timedelta(minutes=5)).strftime(
        "%H:%M"
    )
    assert fmt_date(now - dt.timedelta(days=40), now) == (now - dt.timedelta(days=40)).strftime(
        "%d %b"
    )
    assert fmt_date(now.timestamp() - 400 * 86400, now).count("-") == 2
    assert "2026" in fmt_full_date(now.timestamp())


def test_search_key() -> None:
    assert search_key("from", "x") == HeaderKey("from", "x")
    assert search_key("subject", "x") == HeaderKey("subject", "x")
    assert search_key("body", "x") == BodyKey("x")
    assert isinstance(search_key("to", "x"), Or) and isinstance(search_key("all", "x"), Or)


# -- decoding a part in chunks ------------------------------------------------------------------


@settings(deadline=None, max_examples=40)
@given(
    data=st.binary(max_size=3000),
    chunk=st.integers(min_value=1, max_value=700),
    encoding=st.sampled_from(["base64", "quoted-printable", "7bit"]),
)
def test_decoded_chunks_match_whole_decoding(
    tmp_path_factory: pytest.TempPathFactory, data: bytes, chunk: int, encoding: str
) -> None:
    if encoding == "base64":
        body = base64.encodebytes(data).replace(b"\n", b"\r\n")
    elif encoding == "quoted-printable":
        body = binascii.b2a_qp(data, istext=False).replace(b"\n", b"\r\n")
    else:
        body = data.replace(b"\r", b"").replace(b"\n", b"\r\n")
    message = (
        b"Content-Type: multipart/mixed; boundary=ZZ\r\n\r\n--ZZ\r\n"
        b"Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: "
        + encoding.encode()
        + b"\r\n\r\n"
        + body
        + b"\r\n--ZZ--\r\n"
    )
    info = parse_message(message)
    ref = parse_section(info, "1")
    assert ref is not None
    expected = body[: ref.part.end - ref.part.body_start]
    if encoding == "base64":
        expected = base64.b64decode(b"".join(expected.split()))
        assert expected == data
    elif encoding == "quoted-printable":
        expected = binascii.a2b_qp(expected)

    async def run() -> bytes:
        storage = SqliteStorage(tmp_path_factory.mktemp("chunks") / "mail.db")
        await storage.open()
        try:
            sha = hashlib.sha256(message).hexdigest()
            acc_domain = await storage.add_domain("x.test")
            account = await storage.add_account("u", acc_domain.name, "h")
            await storage.deliver(
                BlobSource(sha, len(message), info.to_json(), data=message),
                [AppendTarget(account.id)],
            )
            return b"".join([c async for c in decoded_chunks(storage, sha, ref.part, chunk)])
        finally:
            await storage.close()

    assert asyncio.run(run()) == expected


# -- the live-update stream ---------------------------------------------------------------------


async def test_stream_heartbeat_coalescing_overflow_and_stop() -> None:
    bus = ChangeBus(queue_size=2)
    stopping = asyncio.Event()
    sub = bus.subscribe(7)
    gen = stream(sub, stopping, heartbeat=0.05)
    assert await gen.__anext__() == "retry: 3000\n\n"
    assert await gen.__anext__() == ": keep-alive\n\n"
    bus.publish([ChangeEvent(7, 3, ChangeKind.APPEND, (1,), 5)])
    bus.publish(
        [
            ChangeEvent(7, 4, ChangeKind.FLAGS, (2,), 6),
            ChangeEvent(8, 9, ChangeKind.APPEND, (1,), 1),
        ]
    )
    out = await gen.__anext__()
    assert out == 'event: change\ndata: {"mailboxes": [3, 4], "kinds": ["append", "flags"]}\n\n'
    bus.publish([ChangeEvent(7, 3, ChangeKind.EXPUNGE, (n,), n) for n in range(5)])
    assert '"resync": true' in await gen.__anext__()
    task = asyncio.ensure_future(gen.__anext__())
    await asyncio.sleep(0.01)
    stopping.set()
    with pytest.raises(StopAsyncIteration):
        await task
    assert 7 not in bus._subs  # unsubscribed


async def test_stream_closed_by_the_client_unsubscribes() -> None:
    bus = ChangeBus()
    sub = bus.subscribe(1)
    gen = stream(sub, asyncio.Event(), heartbeat=10)
    await gen.__anext__()
    task = asyncio.ensure_future(gen.__anext__())
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert 1 not in bus._subs
    assert not [t for t in asyncio.all_tasks() if "Subscription.get" in repr(t)]
