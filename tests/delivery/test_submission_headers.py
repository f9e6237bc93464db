"""Submission policy helpers (letterbird.delivery.submission): header fixes while streaming,
sender identities and the per-account sending limits."""

from __future__ import annotations

import email.utils
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from letterbird.delivery.submission import HeaderFixer, Identities, SendingLimits

NOW = 1_800_000_000.0
IDS = Identities(["alice@alice.test", "Team@Alice.test", "bad address"])


def fix(
    message: bytes,
    *,
    chunk: int | None = None,
    identities: Identities = IDS,
    sender: str = "alice@alice.test",
    limit: int = 1 << 16,
) -> tuple[bytes, HeaderFixer]:
    fixer = HeaderFixer(
        identities=identities,
        sender=sender,
        hostname="mx.alice.test",
        now=NOW,
        max_header_size=limit,
    )
    out = bytearray()
    step = chunk or max(len(message), 1)
    for i in range(0, len(message), step):
        out += fixer.feed(message[i : i + step])
    out += fixer.finish()
    return bytes(out), fixer


COMPLETE = (
    b"From: Alice <alice@alice.test>\r\nTo: bob@bob.test\r\nSubject: hi\r\n"
    b"Date: Thu, 26 Nov 2026 10:00:00 +0000\r\nMessage-ID: <1@alice.test>\r\n\r\nBody\r\n"
)


def test_complete_message_passes_unchanged() -> None:
    for chunk in (None, 1, 7):
        out, fixer = fix(COMPLETE, chunk=chunk)
        assert out == COMPLETE
        assert fixer.from_ok and fixer.from_addresses == ["alice@alice.test"]
        assert fixer.added == [] and fixer.removed == []
        assert not fixer.too_large


def test_bcc_removed_and_date_message_id_added() -> None:
    msg = (
        b"From: alice@alice.test\r\nBcc: secret@x.test,\r\n  other@y.test\r\n"
        b"To: bob@bob.test\r\nBCC : third@z.test\r\nSubject: x\r\n\r\n"
        b"Bcc: in the body stays\r\n"
    )
    for chunk in (None, 1, 5):
        out, fixer = fix(msg, chunk=chunk)
        head, body = out.split(b"\r\n\r\n", 1)
        assert b"secret@" not in head and b"other@" not in head and b"third@" not in head
        assert body == b"Bcc: in the body stays\r\n"
        assert head.startswith(b"From: alice@alice.test\r\nTo: bob@bob.test\r\nSubject: x\r\n")
        assert fixer.removed == ["Bcc", "Bcc"]
        assert fixer.added == ["Date", "Message-ID"]
        date = re.search(rb"\r\nDate: ([^\r]+)", head)
        assert date is not None
        assert email.utils.parsedate_to_datetime(date.group(1).decode()).timestamp() == NOW
        assert re.search(rb"\r\nMessage-ID: <[0-9a-f]{24}@mx\.alice\.test>$", head)


def test_missing_from_gets_the_envelope_sender() -> None:
    out, fixer = fix(b"Subject: x\r\n\r\nhi\r\n", sender="team@alice.test")
    assert out.startswith(b"Subject: x\r\nFrom: <team@alice.test>\r\nDate: ")
    assert fixer.from_ok and fixer.added == ["From", "Date", "Message-ID"]
    _, fixer = fix(b"Subject: x\r\n\r\nhi\r\n", sender="")  # no sender to use: nothing added
    assert not fixer.from_ok and "From" not in fixer.added


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        (b"alice@alice.test", True),
        (b"Alice <ALICE@ALICE.TEST>", True),
        (b"<alice+news@alice.test>", True),  # a subaddress of an identity
        (b"team@alice.test", True),  # an alias of the account
        (b"=?utf-8?q?Al=C3=AFce?= <alice@alice.test> (comment)", True),
        (b"mallory@alice.test", False),
        (b"Alice <alice@alice.test.evil>", False),
        (b"alice@alice.test <mallory@evil.test>", False),  # the address is what is in <>
        (b"mallory@evil.test, alice@alice.test", True),  # any From address may match
        (b"Friends: alice@alice.test;", True),
        (b"undisclosed-recipients:;", False),
        (b"", False),
        (b"just a name", False),
        (b'"quoted"@alice.test', False),
    ],
)
def test_from_check(value: bytes, ok: bool) -> None:
    _, fixer = fix(b"From: " + value + b"\r\nSubject: x\r\n\r\nhi\r\n")
    assert fixer.from_ok is ok


def test_folded_and_utf8_from() -> None:
    msg = "From: Zoë\r\n <alice@alice.test>\r\nSubject: ü\r\n\r\nÄ\r\n".encode()
    out, fixer = fix(msg, chunk=3)
    assert fixer.from_ok
    assert out.startswith(msg.split(b"\r\n\r\n")[0] + b"\r\nDate: ")
    ids = Identities(["jürgen@bücher.test"])
    _, fixer = fix("From: <jürgen@xn--bcher-kva.test>\r\n\r\n".encode(), identities=ids)
    assert fixer.from_ok


def test_two_from_fields_any_matches() -> None:
    _, fixer = fix(b"From: x@evil.test\r\nFrom: alice@alice.test\r\n\r\n")
    assert fixer.from_ok and fixer.from_addresses == ["x@evil.test", "alice@alice.test"]


def test_no_body_and_header_without_blank_line() -> None:
    out, fixer = fix(b"From: alice@alice.test\r\nSubject: only headers\r\n")
    assert out.startswith(b"From: alice@alice.test\r\nSubject: only headers\r\nDate: ")
    assert out.endswith(b"@mx.alice.test>\r\n") and b"\r\n\r\n" not in out
    assert fixer.from_ok
    out, _ = fix(b"")  # an empty message gets the missing fields
    assert out.startswith(b"From: <alice@alice.test>\r\nDate: ")
    # a last line without CRLF (the core never produces one; still handled)
    out, _ = fix(b"From: alice@alice.test\r\nSubject: x")
    assert out.startswith(b"From: alice@alice.test\r\nSubject: x\r\nDate: ")


def test_text_without_blank_line_gets_one() -> None:
    msg = b"From: alice@alice.test\r\nthis is text, not a field\r\nmore\r\n"
    out, _ = fix(msg, chunk=4)
    head, body = out.split(b"\r\n\r\n", 1)
    assert head.startswith(b"From: alice@alice.test\r\nDate: ")
    assert body == b"this is text, not a field\r\nmore\r\n"
    out, _ = fix(b" starts with a space\r\n")  # a continuation with nothing to continue
    assert out.endswith(b"\r\n\r\n starts with a space\r\n")
    out, _ = fix(b"\r\nbody only\r\n")  # an empty header section
    assert out.startswith(b"From: <alice@alice.test>\r\nDate: ")
    assert out.endswith(b"\r\n\r\nbody only\r\n")


def test_header_size_limit() -> None:
    big = b"X-Filler: " + b"x" * 200 + b"\r\n"
    msg = b"From: alice@alice.test\r\n" + big * 10 + b"\r\nbody\r\n"
    out, fixer = fix(msg, limit=1000)
    assert fixer.too_large and out == b""
    assert fixer.feed(b"more") == b""
    # one line that never ends is bounded as well
    fixer = HeaderFixer(identities=IDS, sender="", hostname="h", now=NOW, max_header_size=100)
    assert fixer.feed(b"Subject: " + b"y" * 50) == b""
    assert fixer.feed(b"y" * 100) == b""
    assert fixer.too_large and fixer.finish() == b""
    # exactly at the limit is fine
    msg = b"Subject: x\r\n\r\n"
    out, fixer = fix(msg, limit=len(msg))
    assert not fixer.too_large and out.endswith(b"\r\n\r\n")
    with pytest.raises(ValueError):
        HeaderFixer(identities=IDS, sender="", hostname="h", now=NOW, max_header_size=0)


def test_body_streams_without_buffering() -> None:
    fixer = HeaderFixer(identities=IDS, sender="alice@alice.test", hostname="h", now=NOW)
    first = fixer.feed(COMPLETE[:20])
    assert first == b""  # the header is held back...
    rest = fixer.feed(COMPLETE[20:])
    assert first + rest == COMPLETE
    chunk = b"z" * 100000
    assert fixer.feed(chunk) is chunk  # ...the body is passed on as is
    assert fixer.finish() == b""


def test_many_from_addresses_are_capped() -> None:
    many = b", ".join(b"u%d@evil.test" % i for i in range(300))
    _, fixer = fix(b"From: " + many + b"\r\nFrom: alice@alice.test\r\n\r\n")
    assert len(fixer.from_addresses) == 100 and not fixer.from_ok


_MSGID = re.compile(rb"<[0-9a-f]{24}@mx\.alice\.test>")
_field_line = st.from_regex(r"[A-Za-z][A-Za-z0-9-]{0,15}: [ -~]{0,40}\r\n", fullmatch=True)


@settings(deadline=None, max_examples=150)
@given(
    fields=st.lists(_field_line, max_size=12),
    body=st.binary(max_size=300).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"\r\n")),
    chunk=st.integers(1, 64),
)
def test_chunking_never_changes_the_result(fields: list[str], body: bytes, chunk: int) -> None:
    msg = "".join(fields).encode() + b"\r\n" + body
    whole, f1 = fix(msg)
    pieces, f2 = fix(msg, chunk=chunk)
    assert _MSGID.sub(b"", whole) == _MSGID.sub(b"", pieces)  # generated ids differ
    assert (f1.from_ok, f1.added, f1.removed) == (f2.from_ok, f2.added, f2.removed)
    head, rest = whole.split(b"\r\n\r\n", 1)
    assert rest == body  # the body is never touched
    kept = [f for f in fields if not f.lower().startswith("bcc:")]
    assert head.startswith("".join(kept).encode().rstrip(b"\r\n"))
    assert b"\r\nbcc:" not in (b"\r\n" + head).lower()
    for name in (b"date:", b"message-id:"):
        assert (b"\r\n" + head).lower().count(b"\r\n" + name) >= 1


@settings(deadline=None, max_examples=200)
@given(st.binary(max_size=400), st.integers(1, 50))
def test_arbitrary_input_never_raises(data: bytes, chunk: int) -> None:
    out, fixer = fix(data, chunk=chunk, limit=300)
    assert fixer.too_large or len(out) >= len(data) - data.lower().count(b"bcc") * 400


def test_identities() -> None:
    ids = Identities(["Alice@Alice.Test", "team@bücher.test", "not-an-address"], delimiter="+")
    assert len(ids) == 2
    assert "alice@alice.test" in ids
    assert "ALICE+tag@ALICE.TEST" in ids
    assert "team@xn--bcher-kva.test" in ids
    assert "team@BÜCHER.test" in ids
    assert "alice@other.test" not in ids
    assert "" not in ids and 42 not in ids and "garbage" not in ids
    no_sub = Identities(["alice@alice.test"], delimiter="")
    assert "alice+tag@alice.test" not in no_sub


def test_sending_limits_sliding_window() -> None:
    limits = SendingLimits(max_messages=3, max_recipients=5, window=3600)
    t = 1000.0
    assert limits.message_allowed(1, t) and limits.usage(1, t) == (0, 0)
    limits.record(1, 2, t)
    limits.record(1, 2, t + 10)
    assert limits.usage(1, t + 20) == (2, 4)
    assert limits.recipient_allowed(1, 0, t + 20)  # a fifth recipient is fine
    assert not limits.recipient_allowed(1, 1, t + 20)  # a sixth is not
    limits.record(1, 1, t + 30)
    assert not limits.message_allowed(1, t + 40)
    assert limits.message_allowed(2, t + 40)  # per account
    # the first message leaves the window an hour later
    assert limits.message_allowed(1, t + 3600)
    assert limits.usage(1, t + 3600) == (2, 3)
    assert limits.usage(1, t + 3630) == (0, 0)
    assert limits._sent == {} and limits._recipients == {}  # forgotten entirely


def test_sending_limits_zero_means_unlimited() -> None:
    limits = SendingLimits(0, 0)
    for i in range(1000):
        limits.record(1, 100, float(i))
    assert limits.message_allowed(1, 1000.0) and limits.recipient_allowed(1, 10**6, 1000.0)
    assert limits._sent == {}  # nothing kept when nothing is limited
    only_rcpts = SendingLimits(0, 10)
    only_rcpts.record(1, 10, 0.0)
    assert only_rcpts.message_allowed(1, 1.0) and not only_rcpts.recipient_allowed(1, 0, 1.0)
    with pytest.raises(ValueError):
        SendingLimits(-1, 0)
    with pytest.raises(ValueError):
        SendingLimits(1, 1, window=0)
