"""Address lists for IMAP ENVELOPE.

The well-formed cases' expected addresses are Dovecot 2.3.19.1's ENVELOPE output for the same
header (recorded once; 300 random well-formed lists also matched it exactly when this was
written). Malformed input has our own documented expectations.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from letterbird.mime import Address
from letterbird.mime.address import (
    MISSING_DOMAIN,
    MISSING_MAILBOX,
    display_addresses,
    parse_addresses,
)

A = Address
GROUP_END = A(None, None, None, None)

DOVECOT_ADDRESSES = [
    (
        "Fred Foobar <foobar@Blurdybloop.example>",
        [A("Fred Foobar", None, "foobar", "Blurdybloop.example")],
    ),
    ('"john doe"@example.com', [A(None, None, "john doe", "example.com")]),
    ("Joe Q. Public <x@y>", [A("Joe Q. Public", None, "x", "y")]),
    ('"a\\"b" <c@d>', [A('a"b', None, "c", "d")]),
    ("x@[1.2.3.4]", [A(None, None, "x", "[1.2.3.4]")]),
    (
        "a@b.c (Comment) , d@e (one) (two)",
        [A("Comment", None, "a", "b.c"), A("two", None, "d", "e")],
    ),
    ("Mary <mary@x>  (c)", [A("Mary", None, "mary", "x")]),
    (
        "Pete(A nice \\) chap) <pete(his account)@silly.test(his host)>",
        [A("Pete", None, "pete", "silly.test")],
    ),
    ("<@a,@b:x@y>", [A(None, "@a,@b", "x", "y")]),
    ("=?utf-8?q?J=C3=BCrgen?= <j@x>", [A("=?utf-8?q?J=C3=BCrgen?=", None, "j", "x")]),
    ("a.b.@c", [A(None, None, "a.b.", "c")]),
    ("A. B. <ab@x>", [A("A. B.", None, "ab", "x")]),
    (
        '"Giant; \\"Big\\" Box" <sysservices@example.net>',
        [A('Giant; "Big" Box', None, "sysservices", "example.net")],
    ),
    (
        "A Group:Ed Jones <c@a.test>,joe@where.test,John <jdoe@one.test>;,"
        " Undisclosed recipients:;",
        [
            A(None, None, "A Group", None),
            A("Ed Jones", None, "c", "a.test"),
            A(None, None, "joe", "where.test"),
            A("John", None, "jdoe", "one.test"),
            GROUP_END,
            A(None, None, "Undisclosed recipients", None),
            GROUP_END,
        ],
    ),
    (
        "g1: a@b; g2: ;, x@y",
        [
            A(None, None, "g1", None),
            A(None, None, "a", "b"),
            GROUP_END,
            A(None, None, "g2", None),
            GROUP_END,
            A(None, None, "x", "y"),
        ],
    ),
    ("x <a@b> y <c@d>", [A("x", None, "a", "b")]),
    ("a@b, <c@d> e@f", [A(None, None, "a", "b"), A(None, None, "c", "d")]),
    ("x", [A(None, None, "x", MISSING_DOMAIN)]),
    ("@dom", [A(None, None, MISSING_MAILBOX, "dom")]),
    ("<>", [A(None, None, MISSING_MAILBOX, MISSING_DOMAIN)]),
    ("noat <foo>", [A("noat", None, "foo", MISSING_DOMAIN)]),
    ("phrase only", [A("phrase only", None, MISSING_MAILBOX, MISSING_DOMAIN)]),
]


@pytest.mark.parametrize(
    ("value", "expected"), DOVECOT_ADDRESSES, ids=[v for v, _ in DOVECOT_ADDRESSES]
)
def test_addresses(value: str, expected: list[Address]) -> None:
    assert parse_addresses(value) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("", []),
        (" , ,, ", []),
        ('"unterminated <x@y>', [A("unterminated <x@y>", None, MISSING_MAILBOX, MISSING_DOMAIN)]),
        ("x@y (unterminated comment", [A("unterminated comment", None, "x", "y")]),
        ("a@b@c", [A(None, None, "a", "b@c")]),
        (
            "Group: nested: x@y;;",
            [A(None, None, "Group", None), A(None, None, "x", "y"), GROUP_END],
        ),
        ("a@b.c; d@e.f", [A(None, None, "a", "b.c"), A(None, None, "d", "e.f")]),
        (
            "@route1,@route2:someone@example.com",
            [A(None, None, MISSING_MAILBOX, "route1"), A(None, None, "someone", "example.com")],
        ),
        (
            "open group: a@b",
            [A(None, None, "open group", None), A(None, None, "a", "b"), GROUP_END],
        ),
        ('"": ;', [A(None, None, "", None), GROUP_END]),
        ("x@[unterminated", [A(None, None, "x", "[unterminated")]),
        ("<a@b> (c) trailing", [A(None, None, "a", "b")]),
        ("(only a comment)", []),
        ("a@b (outer (inner) x)", [A("outer (inner) x", None, "a", "b")]),
        ("first last <fl@x.y", [A("first last", None, "fl", "x.y")]),  # Dovecot: SYNTAX_ERROR
        ("a\\", [A(None, None, "a\\", MISSING_DOMAIN)]),
    ],
)
def test_malformed_addresses(value: str, expected: list[Address]) -> None:
    assert parse_addresses(value) == expected


def test_limit_keeps_groups_balanced() -> None:
    many = ", ".join(f"u{i}@x" for i in range(10))
    assert len(parse_addresses(many, limit=3)) == 3
    grouped = parse_addresses(f"g: {many};", limit=3)
    assert grouped[0] == A(None, None, "g", None) and grouped[-1] == GROUP_END
    assert len(grouped) == 4


def test_group_markers() -> None:
    start, member, end = parse_addresses("g: a@b;")
    assert start.is_group_start and not start.is_group_end
    assert end.is_group_end and not end.is_group_start
    assert not member.is_group_start and not member.is_group_end


def test_display() -> None:
    addresses = parse_addresses(
        '=?utf-8?q?J=C3=BCrgen?= <j@x>, team: a@b;, bare@host, "Name Only", x, <>'
    )
    assert display_addresses(addresses) == "Jürgen <j@x>, a@b, bare@host, Name Only, x"
    assert display_addresses([]) == ""


@settings(deadline=None, max_examples=300)
@given(st.text(alphabet='ab @<>,;:."()[]\\ \t\r\n=?', max_size=60))
def test_never_raises_and_groups_balance(value: str) -> None:
    depth = 0
    for a in parse_addresses(value):
        if a.host is None:
            depth += 1 if a.mailbox is not None else -1
            assert depth in (0, 1)
        else:
            assert a.mailbox  # never NIL outside group syntax
    assert depth == 0
