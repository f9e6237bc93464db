"""8-bit to 7-bit MIME downgrade (RFC 6152 §3, RFC 2045 §6): what is converted, what refuses."""

from __future__ import annotations

import email
import email.message
import email.policy

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from letterbird.delivery.mime7bit import DowngradeImpossible, downgrade


def parse(data: bytes) -> email.message.Message:
    return email.message_from_bytes(data, policy=email.policy.compat32)


def parts(msg: email.message.Message) -> list[email.message.Message]:
    """The sub-parts of a multipart (or message/*) part."""
    payload = msg.get_payload()
    assert isinstance(payload, list)
    return [p for p in payload if isinstance(p, email.message.Message)]


def test_ascii_is_unchanged() -> None:
    data = b"Subject: x\r\n\r\nplain\r\n"
    assert downgrade(data) is data


def test_single_text_part_becomes_quoted_printable() -> None:
    data = "From: a@a.test\r\nSubject: x\r\n\r\nGrüße\r\nzweite Zeile\r\n".encode()
    out = downgrade(data)
    assert out.isascii()
    assert out.startswith(b"MIME-Version: 1.0\r\nFrom: a@a.test\r\nSubject: x\r\n")
    assert b"Content-Transfer-Encoding: quoted-printable\r\n\r\nGr=C3=BC=C3=9Fe\r\n" in out
    assert parse(out).get_payload(decode=True) == "Grüße\r\nzweite Zeile\r\n".encode()


def test_existing_encoding_header_is_replaced() -> None:
    data = (
        "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
        "Content-Transfer-Encoding: 8bit\r\n\r\nÄ\r\n"
    ).encode()
    out = downgrade(data)
    assert out.count(b"Content-Transfer-Encoding") == 1
    assert out.count(b"MIME-Version") == 1
    assert parse(out).get_payload(decode=True) == "Ä\r\n".encode()


def test_nested_multipart_with_attachment_and_message() -> None:
    binary = bytes(range(256)) * 3
    inner = b"Subject: inner\r\nContent-Type: text/plain; charset=latin-1\r\n\r\nK\xf6ln\r\n"
    data = (
        b"From: a@a.test\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/mixed; boundary="outer"\r\n'
        b"Content-Transfer-Encoding: 8bit\r\n\r\n"
        b"preamble\r\n--outer\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\n\r\nh\xc3\xa9\r\n"
        b"--outer\r\nContent-Type: application/octet-stream\r\n"
        b"Content-Transfer-Encoding: binary\r\n\r\n" + binary + b"\r\n"
        b"--outer\r\nContent-Type: message/rfc822\r\n\r\n" + inner + b"--outer\r\n"
        b"Content-Type: text/plain\r\n\r\nascii only\r\n--outer--\r\n"
    )
    out = downgrade(data)
    assert out.isascii()
    msg = parse(out)
    assert msg["Content-Transfer-Encoding"] == "7bit"
    text, attachment, message, plain = parts(msg)
    assert text.get_payload(decode=True) == "hé".encode()  # the CRLF belongs to the boundary
    assert attachment["Content-Transfer-Encoding"] == "base64"
    assert attachment.get_payload(decode=True) == binary
    [embedded] = parts(message)
    assert embedded["Subject"] == "inner"
    assert embedded["Content-Transfer-Encoding"] == "quoted-printable"
    assert embedded.get_payload(decode=True) == b"K\xf6ln"
    assert plain.get_payload() == "ascii only"
    assert b"Content-Transfer-Encoding: quoted-printable" not in out.split(b"ascii only")[1]


def test_message_global_is_base64_encoded() -> None:
    data = (
        b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n"
        b"Content-Type: message/global\r\n\r\nSubject: Gr\xc3\xbc\xc3\x9fe\r\n\r\nx\r\n--b--\r\n"
    )
    out = downgrade(data)
    part = parts(parse(out))[0]
    assert part["Content-Transfer-Encoding"] == "base64"


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        ("Subject: Grüße\r\n\r\nx\r\n".encode(), "header"),
        (b"Content-Transfer-Encoding: base64\r\n\r\nK\xf6ln\r\n", "base64"),
        (
            b"Content-Type: multipart/mixed; boundary=b\r\n\r\n"
            b"pre\xe9\r\n--b\r\n\r\nx\r\n--b--\r\n",
            "outside",
        ),
        (
            b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n"
            b"Content-Type: message/partial; id=1\r\n\r\n\xe9\r\n--b--\r\n",
            "message/partial",
        ),
    ],
)
def test_impossible(data: bytes, reason: str) -> None:
    with pytest.raises(DowngradeImpossible, match=reason):
        downgrade(data)


def test_containers_past_the_parser_limits_are_refused() -> None:
    data = b"Content-Type: multipart/mixed; boundary=b0\r\n\r\n"
    for depth in range(1, 40):
        data += (
            f"--b{depth - 1}\r\nContent-Type: multipart/mixed; boundary=b{depth}\r\n\r\n".encode()
        )
    data += b"--b39\r\n\r\n\xe9\r\n"
    with pytest.raises(DowngradeImpossible):
        downgrade(data)


@settings(deadline=None, max_examples=150)
@given(
    body=st.binary(max_size=2000),
    text=st.booleans(),
)
def test_any_leaf_body_roundtrips(body: bytes, text: bool) -> None:
    body = body.replace(b"\r", b"").replace(b"\n", b"\r\n")  # stored messages are CRLF
    ctype = b"text/plain; charset=utf-8" if text else b"application/octet-stream"
    data = b"MIME-Version: 1.0\r\nContent-Type: " + ctype + b"\r\n\r\n" + body
    try:
        out = downgrade(data)
    except DowngradeImpossible:  # pragma: no cover - never for a leaf body
        raise
    assert out.isascii()
    decoded = parse(out).get_payload(decode=True)
    assert decoded == body
