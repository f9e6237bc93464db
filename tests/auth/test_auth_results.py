"""Authentication-Results (RFC 8601) writing, reading and forgery detection; the header-section
helpers signing and rewriting rely on."""

from __future__ import annotations

import email
import email.policy

from hypothesis import given, settings
from hypothesis import strategies as st

from letterbird.auth.message import HeaderSection, rebuild
from letterbird.auth.results import (
    MethodResult,
    authserv_id,
    claims,
    format_header,
    read,
)

RESULTS = [
    MethodResult(
        "dkim",
        "pass",
        (("header.d", "alice.test"), ("header.s", "lb1"), ("header.b", "abc/def+")),
    ),
    MethodResult("spf", "pass", (("smtp.mailfrom", "alice@alice.test"),), comment="matched ip4"),
    MethodResult("dmarc", "pass", (("header.from", "alice.test"),), comment="p=reject dis=none"),
]


def test_format_and_read_back() -> None:
    field = format_header("mx.bob.test", RESULTS)
    assert field == (
        b"Authentication-Results: mx.bob.test;\r\n"
        b'\tdkim=pass header.d=alice.test header.s=lb1 header.b="abc/def+";\r\n'
        b"\tspf=pass (matched ip4) smtp.mailfrom=alice@alice.test;\r\n"
        b"\tdmarc=pass (p=reject dis=none) header.from=alice.test\r\n"
    )
    value = field.split(b":", 1)[1]
    parsed = read([value], "MX.bob.test")
    assert parsed is not None
    assert parsed.authserv == "mx.bob.test"
    assert [(r.method, r.result) for r in parsed.results] == [
        ("dkim", "pass"),
        ("spf", "pass"),
        ("dmarc", "pass"),
    ]
    dkim = parsed.result("dkim")
    assert dkim is not None and dkim.get("header.b") == "abc/def+" and dkim.get("x") == ""
    assert parsed.verified_sender == "alice.test"
    assert parsed.result("arc") is None
    # the stdlib reads it as one field
    msg = email.message_from_bytes(field + b"\r\n", policy=email.policy.compat32)
    assert msg["Authentication-Results"].startswith("mx.bob.test;")


def test_none_and_failures() -> None:
    assert format_header("mx.test", []) == b"Authentication-Results: mx.test; none\r\n"
    value = b" mx.test; dmarc=fail (p=reject) header.from=evil.test"
    parsed = read([value], "mx.test")
    assert parsed is not None and parsed.verified_sender is None
    assert read([b" mx.test; spf=pass"], "mx.test").verified_sender is None  # type: ignore[union-attr]
    assert read([value], "other.test") is None


def test_hostile_values_cannot_break_the_field() -> None:
    evil = MethodResult(
        "spf",
        "pass",
        (("smtp.helo", 'x"\r\nX-Injected: yes'), ("smtp.mailfrom", "a b@c")),
        comment="(nested) \\ comment\r\n",
        reason='bad "reason"',
    )
    field = format_header("mx.test", [evil])
    assert field.count(b"\r\n") == 2  # the fold after the authserv-id, and the end
    assert b"X-Injected: yes" in field and b"\r\nX-Injected" not in field
    parsed = read([field.split(b":", 1)[1]], "mx.test")
    assert parsed is not None
    [spf] = parsed.results
    assert spf.get("smtp.helo") == 'x"X-Injected: yes'
    assert spf.get("smtp.mailfrom") == "a b@c"
    assert spf.reason == 'bad "reason"'


def test_authserv_id_and_claims() -> None:
    assert authserv_id(b" (comment (nested)) MX.Test 1; none") == "mx.test"
    assert authserv_id(b' "mx.test"; none') == "mx.test"
    assert claims(b" mx.test;\r\n\tspf=pass", "mx.test.")
    assert not claims(b" mx.test.evil; spf=pass", "mx.test")
    assert not claims(b"", "mx.test")


def test_reading_odd_fields() -> None:
    text = b' mx.test 1; dkim = pass (good (nested)) header.d = "x.test" reason="r;s"; junk; ='
    parsed = read([text], "mx.test")
    assert parsed is not None
    [dkim] = parsed.results
    assert (dkim.method, dkim.result, dkim.get("header.d"), dkim.reason) == (
        "dkim",
        "pass",
        "x.test",
        "r;s",
    )
    parsed = read([b" mx.test; spf=pass smtp.mailfrom", b" mx.test; x=y"], "mx.test")
    assert parsed is not None and parsed.results[0].properties == ()


@settings(deadline=None, max_examples=300)
@given(st.binary(max_size=120))
def test_reader_never_raises(value: bytes) -> None:
    read([b" mx.test;" + value], "mx.test")
    authserv_id(value)


# -- header sections --------------------------------------------------------------------------

MESSAGE = (
    b"Return-Path: <a@x.test>\r\n"
    b"Received: from x by mx.test;\r\n\tThu, 1 Jan 2026 00:00:00 +0000\r\n"
    b"Authentication-Results: mx.test; spf=pass\r\n"
    b"Subject: folded\r\n continued\r\n"
    b"From : a@x.test\r\n"
    b"\r\n"
    b"Body: not a field\r\n"
)


def test_header_section_fields() -> None:
    s = HeaderSection.parse(MESSAGE)
    assert [f.lname for f in s.fields] == [
        b"return-path",
        b"received",
        b"authentication-results",
        b"subject",
        b"from",
    ]
    assert s.fields[3].raw(MESSAGE) == b"Subject: folded\r\n continued\r\n"
    assert s.fields[4].value(MESSAGE) == b" a@x.test\r\n"
    assert MESSAGE[s.body_start :] == b"Body: not a field\r\n"
    assert s.trace_end() == s.fields[1].end
    assert [f.lname for f in s.named(b"from")] == [b"from"]


def test_header_section_edge_cases() -> None:
    assert HeaderSection.parse(b"\r\nbody").fields == ()
    junk = HeaderSection.parse(b"junk line\r\nA: b\r\nno colon here\r\n\r\n")
    assert [(f.name, f.start) for f in junk.fields] == [(b"", 0), (b"A", 11)]
    no_blank = HeaderSection.parse(b"A: b\r\nC: d")
    assert no_blank.body_start == 10 and no_blank.fields[-1].end == 10
    assert HeaderSection.parse(b"A: b\n\nbody").fields[0].end == 5
    assert HeaderSection.parse(b"X: y\r\n\r\n").trace_end() == 0
    assert HeaderSection.parse(b"Received: r\r\nX: y\r\n\r\n").trace_end() == 13


def test_rebuild() -> None:
    s = HeaderSection.parse(MESSAGE)

    def forged(f: object) -> bool:
        return getattr(f, "lname", b"") == b"authentication-results"

    out = rebuild(MESSAGE, s, b"New: field\r\n", at=s.trace_end(), drop=forged)
    assert b"spf=pass" not in out
    assert out.index(b"New: field") == s.fields[2].start
    assert out.endswith(b"\r\nBody: not a field\r\n")
    assert rebuild(MESSAGE, s, b"", at=0) is MESSAGE
    # insertion after a removed field, and dropping without inserting
    out = rebuild(MESSAGE, s, b"Z: z\r\n", at=s.fields[3].start, drop=forged)
    assert b"Z: z\r\nSubject" in out and b"spf=pass" not in out
    out = rebuild(MESSAGE, s, b"", at=0, drop=forged)
    assert out == MESSAGE.replace(b"Authentication-Results: mx.test; spf=pass\r\n", b"")
    # an insertion point inside a removed field moves past it
    out = rebuild(MESSAGE, s, b"Z: z\r\n", at=s.fields[2].start + 3, drop=forged)
    assert b"Z: z\r\nSubject" in out
