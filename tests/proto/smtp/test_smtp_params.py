"""Tests of MAIL/RCPT parameter parsing (RFC 1870, 6152, 6531, 4954, 3461)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from letterbird.proto.smtp import (
    MailParams,
    OriginalRecipient,
    ParamError,
    RcptParams,
    decode_xtext,
    parse_mail_params,
    parse_rcpt_params,
    replies,
)
from letterbird.proto.smtp.params import parse_esmtp_params


def mail(text: str, *, max_size: int = 1000, smtputf8: bool = True, dsn: bool = True) -> MailParams:
    return parse_mail_params(text, max_size=max_size, smtputf8=smtputf8, dsn=dsn)


def mail_error(text: str, **kw: bool) -> tuple[int, str | None]:
    with pytest.raises(ParamError) as info:
        parse_mail_params(
            text,
            max_size=1000,
            smtputf8=bool(kw.get("smtputf8", True)),
            dsn=bool(kw.get("dsn", True)),
        )
    return info.value.reply.code, info.value.reply.enhanced


def test_xtext() -> None:
    assert decode_xtext("") == ""
    assert decode_xtext("a+2Bb+3Dc") == "a+b=c"
    assert decode_xtext("user@example.com") == "user@example.com"
    for bad in ("a+2b", "a+", "a+G0", "a=b", "a b", "é"):
        with pytest.raises(ValueError):
            decode_xtext(bad)


@settings(deadline=None)
@given(st.binary(max_size=40))
def test_xtext_roundtrip(raw: bytes) -> None:
    encoded = "".join(
        chr(b) if 33 <= b <= 126 and b not in (0x2B, 0x3D) else f"+{b:02X}" for b in raw
    )
    assert decode_xtext(encoded) == raw.decode("latin-1")


def test_esmtp_param_splitting() -> None:
    assert parse_esmtp_params("") == []
    assert parse_esmtp_params("size=10  x-Foo  body=8bitmime") == [
        ("SIZE", "10"),
        ("X-FOO", None),
        ("BODY", "8bitmime"),
    ]
    for bad in ("-x", "a=", "a=b=c", "a=\x01", "a_b", "SIZE=1 size=2"):
        with pytest.raises(ParamError) as info:
            parse_esmtp_params(bad)
        assert info.value.reply.code == 501


def test_mail_params_values() -> None:
    assert mail("") == MailParams()
    assert mail("SIZE=1000 BODY=8bitmime SMTPUTF8 AUTH=<> RET=hdrs ENVID=QQ+2B1") == MailParams(
        size=1000, body="8BITMIME", smtputf8=True, ret="HDRS", envid="QQ+1"
    )
    assert mail("body=7BIT").body == "7BIT"
    assert mail("RET=FULL").ret == "FULL"


def test_mail_params_errors() -> None:
    assert mail_error("SIZE=1001") == (552, "5.3.4")
    assert mail_error("SIZE=abc") == (501, "5.5.4")
    assert mail_error("SIZE=123456789012345678901") == (501, "5.5.4")
    assert mail_error("SIZE") == (501, "5.5.4")
    assert mail_error("BODY=BINARYMIME") == (555, "5.5.4")
    assert mail_error("BODY") == (501, "5.5.4")
    assert mail_error("SMTPUTF8=yes") == (501, "5.5.4")
    assert mail_error("SMTPUTF8", smtputf8=False) == (555, "5.5.4")
    assert mail_error("AUTH") == (501, "5.5.4")
    assert mail_error("RET=ALL") == (501, "5.5.4")
    assert mail_error("RET=FULL", dsn=False) == (555, "5.5.4")
    assert mail_error("ENVID=a+zz") == (501, "5.5.4")
    assert mail_error("ENVID=" + "a" * 101) == (501, "5.5.4")
    assert mail_error("ENVID=x", dsn=False) == (555, "5.5.4")
    assert mail_error("X-UNKNOWN=1") == (555, "5.5.4")


def test_rcpt_params() -> None:
    assert parse_rcpt_params("", dsn=False) == RcptParams()
    assert parse_rcpt_params("NOTIFY=success,Delay ORCPT=rfc822;a+2Bb@x", dsn=True) == RcptParams(
        notify=("SUCCESS", "DELAY"), orcpt=OriginalRecipient("rfc822", "a+b@x")
    )
    assert parse_rcpt_params("NOTIFY=never", dsn=True).notify == ("NEVER",)


@pytest.mark.parametrize(
    ("text", "dsn", "code"),
    [
        ("NOTIFY=NEVER", False, 555),
        ("ORCPT=rfc822;a@b", False, 555),
        ("X=1", True, 555),
        ("NOTIFY=NEVER,SUCCESS", True, 501),
        ("NOTIFY=SUCCESS,SUCCESS", True, 501),
        ("NOTIFY=SOMETIMES", True, 501),
        ("NOTIFY", True, 501),
        ("ORCPT=rfc822", True, 501),
        ("ORCPT=;a@b", True, 501),
        ("ORCPT=rfc822;a+zz", True, 501),
        ("ORCPT=rfc822;" + "a" * 500, True, 501),
    ],
)
def test_rcpt_param_errors(text: str, dsn: bool, code: int) -> None:
    with pytest.raises(ParamError) as info:
        parse_rcpt_params(text, dsn=dsn)
    assert info.value.reply.code == code
    assert info.value.reply is not replies.OK


@settings(deadline=None)
@given(st.text(max_size=60), st.booleans())
def test_params_never_crash(text: str, dsn: bool) -> None:
    for parse in (
        lambda: parse_mail_params(text, max_size=10, smtputf8=True, dsn=dsn),
        lambda: parse_rcpt_params(text, dsn=dsn),
    ):
        try:
            parse()
        except ParamError:
            pass
