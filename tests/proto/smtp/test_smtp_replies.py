"""Tests of SMTP reply values and their wire encoding (RFC 5321 §4.2, RFC 2034)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from letterbird.proto.smtp import Reply, encode, replies


def test_single_line_with_enhanced_code() -> None:
    assert encode(replies.OK) == b"250 2.0.0 OK\r\n"


def test_enhanced_code_can_be_disabled() -> None:
    assert encode(replies.NO_SUCH_USER, enhanced_enabled=False) == b"550 No such user\r\n"


def test_reply_without_enhanced_code() -> None:
    assert encode(replies.START_DATA) == b"354 End data with <CR><LF>.<CR><LF>\r\n"


def test_multiline_reply_prefixes_every_line() -> None:
    reply = Reply.multiline(250, "2.0.0", ["first", "second", "last"])
    assert reply.lines == ("first", "second", "last")
    assert encode(reply) == b"250-2.0.0 first\r\n250-2.0.0 second\r\n250 2.0.0 last\r\n"
    assert encode(Reply.multiline(250, None, ["a", "b"])) == b"250-a\r\n250 b\r\n"


def test_control_characters_cannot_inject_lines() -> None:
    reply = Reply(550, "5.1.1", "bad\r\x00user\tok")
    assert encode(reply) == b"550 5.1.1 bad??user\tok\r\n"


def test_utf8_text_is_encoded() -> None:
    assert encode(Reply(250, None, "grüß")) == "250 grüß\r\n".encode()


def test_with_text_keeps_codes() -> None:
    reply = replies.MESSAGE_ACCEPTED.with_text("queued as 42")
    assert (reply.code, reply.enhanced, reply.text) == (250, "2.0.0", "queued as 42")


def test_classification() -> None:
    assert replies.OK.is_positive and not replies.OK.is_error
    assert replies.LOCAL_ERROR.is_error and not replies.LOCAL_ERROR.is_positive
    assert not replies.START_DATA.is_positive and not replies.START_DATA.is_error


@pytest.mark.parametrize(
    ("code", "enhanced"),
    [(199, None), (600, None), (250, "5.0.0"), (250, "2.0"), (250, "2.0.0000"), (354, "3.0.0")],
)
def test_invalid_replies_raise(code: int, enhanced: str | None) -> None:
    with pytest.raises(ValueError):
        Reply(code, enhanced, "x")


def test_invalid_reply_raises_every_time() -> None:
    # The code check is cached for valid pairs only: a bad pair is refused again, and a valid
    # one built many times stays valid.
    for _ in range(3):
        with pytest.raises(ValueError):
            Reply(250, "4.0.0", "x")
        assert Reply(250, "2.0.0", "x").enhanced == "2.0.0"


def test_multiline_needs_lines() -> None:
    with pytest.raises(ValueError):
        Reply.multiline(250, None, [])


def test_required_constants() -> None:
    expected = {
        "SYNTAX_ERROR": (500, "5.5.2"),
        "BAD_SEQUENCE": (503, "5.5.1"),
        "LINE_TOO_LONG": (500, "5.5.2"),
        "MESSAGE_TOO_BIG": (552, "5.3.4"),
        "NO_SUCH_USER": (550, "5.1.1"),
        "RELAY_DENIED": (550, "5.7.1"),
        "TOO_MANY_RECIPIENTS": (452, "4.5.3"),
        "BAD_RCPT_SYNTAX": (501, "5.1.3"),
        "BAD_MAIL_SYNTAX": (501, "5.1.7"),
        "LOCAL_ERROR": (451, "4.3.0"),
        "OVER_QUOTA": (452, "4.2.2"),
        "MAIL_LOOP": (554, "5.4.6"),
        "AUTH_OK": (235, "2.7.0"),
        "AUTH_FAILED": (535, "5.7.8"),
        "ENCRYPTION_REQUIRED": (538, "5.7.11"),
        "AUTH_REQUIRED": (530, "5.7.0"),
        "TLS_NOT_AVAILABLE": (454, "4.7.0"),
        "TOO_MANY_ERRORS": (421, "4.7.0"),
        "TIMEOUT": (421, "4.4.2"),
        "SERVICE_CLOSING": (221, "2.0.0"),
        "SHUTTING_DOWN": (421, "4.3.2"),
        "UNKNOWN_COMMAND": (500, "5.5.1"),
        "UNKNOWN_PARAMETER": (555, "5.5.4"),
        "UTF8_NOT_PERMITTED": (553, "5.6.7"),
        "NO_VALID_RECIPIENTS": (554, "5.5.1"),
        "AUTH_CANCELLED": (501, "5.0.0"),
        "AUTH_BAD_BASE64": (501, "5.5.2"),
        "VRFY_CANNOT_VERIFY": (252, "2.5.0"),
    }
    for name, (code, enhanced) in expected.items():
        reply = getattr(replies, name)
        assert (reply.code, reply.enhanced) == (code, enhanced), name


def _encode_by_lines(reply: Reply, enhanced_enabled: bool) -> bytes:
    """The general line-by-line form encode's single-line shortcut must agree with."""
    prefix = f"{reply.enhanced} " if (enhanced_enabled and reply.enhanced) else ""
    lines = reply.text.split("\n")
    out = []
    for index, line in enumerate(lines):
        clean = "".join("?" if (ord(c) < 32 and c != "\t") or c == "\x7f" else c for c in line)
        sep = " " if index == len(lines) - 1 else "-"
        out.append(f"{reply.code}{sep}{prefix}{clean}\r\n")
    return "".join(out).encode("utf-8", "replace")


@settings(max_examples=500)
@given(
    st.text(st.sampled_from("ab \t\r\n\x00\x7f\u00e9\ud800"), max_size=12),
    st.sampled_from([(250, "2.0.0"), (550, None), (451, "4.3.0")]),
    st.booleans(),
)
def test_encode_matches_line_by_line(text: str, codes: tuple[int, str | None], ext: bool) -> None:
    reply = Reply(codes[0], codes[1], text)
    assert encode(reply, enhanced_enabled=ext) == _encode_by_lines(reply, ext)
