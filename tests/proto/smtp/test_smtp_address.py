"""Tests of the SMTP path grammar (RFC 5321 §4.1.2-4.1.3, RFC 6531 §3.3)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from letterbird.proto.smtp import (
    AddressError,
    Mailbox,
    NonAsciiAddressError,
    parse_forward_path,
    parse_mailbox,
    parse_path,
    parse_reverse_path,
    split_path_argument,
)
from letterbird.proto.smtp.address import is_address_literal, is_domain


@pytest.mark.parametrize(
    ("path", "local", "domain"),
    [
        ("<user@example.com>", "user", "example.com"),
        ("<First.Last@Example.COM>", "First.Last", "Example.COM"),
        ("<a+tag@x-y.example>", "a+tag", "x-y.example"),
        ("<!#$%&'*+-/=?^_`{|}~@x>", "!#$%&'*+-/=?^_`{|}~", "x"),
        ('<"john doe"@example.com>', '"john doe"', "example.com"),
        ('<"a\\"b\\\\c"@example.com>', '"a\\"b\\\\c"', "example.com"),
        ('<"a>b@c"@example.com>', '"a>b@c"', "example.com"),
        ('<""@example.com>', '""', "example.com"),
        ("<u@[192.0.2.1]>", "u", "[192.0.2.1]"),
        ("<u@[IPv6:2001:db8::1]>", "u", "[IPv6:2001:db8::1]"),
        ("<u@[ipv6:::ffff:192.0.2.1]>", "u", "[ipv6:::ffff:192.0.2.1]"),
        ("<u@[x-tag:some.thing]>", "u", "[x-tag:some.thing]"),
        ("<@a.example,@b.example:u@d.example>", "u", "d.example"),
        ("<@relay.example:u@d.example>", "u", "d.example"),
        ("<1@2>", "1", "2"),
    ],
)
def test_valid_paths(path: str, local: str, domain: str) -> None:
    assert parse_path(path) == Mailbox(local, domain)


@pytest.mark.parametrize(
    "path",
    [
        "",
        "<",
        "<>",
        "user@example.com",
        "<user@example.com",
        "<user>",
        "<@example.com>",
        "<user@>",
        "<.user@x>",
        "<user.@x>",
        "<us..er@x>",
        "<us er@x>",
        "<user@-x.example>",
        "<user@x-.example>",
        "<user@x..example>",
        "<user@x.example.>",
        "<user@x_y.example>",
        '<"unterminated@x>',
        '<"a"b@x>',
        '<"a"@>',
        "<u@[192.0.2.256]>",
        "<u@[192.0.2]>",
        "<u@[IPv6:2001:db8::g]>",
        "<u@[IPv6:fe80::1%eth0]>",
        "<u@[IPv6:]>",
        "<u@[]>",
        "<u@[:x]>",
        "<u@[tag:]>",
        "<u@[tag:a[b]>",
        "<@a.example:>",
        "<@a.example,b.example:u@d>",
        "<@:u@d>",
        "<@a.example u@d>",
        "<u@" + "a" * 64 + ".example>",
        "<u@" + "a." * 130 + "b>",
        "<" + "a" * 1100 + "@x>",
        "<u@x\u2009y>",
    ],
)
def test_invalid_paths(path: str) -> None:
    with pytest.raises(AddressError):
        parse_path(path, utf8=True)


def test_utf8_requires_smtputf8() -> None:
    with pytest.raises(NonAsciiAddressError):
        parse_path("<jörg@example.com>")
    with pytest.raises(NonAsciiAddressError):
        parse_mailbox("u@bücher.example")
    assert parse_path("<jörg@bücher.example>", utf8=True) == Mailbox("jörg", "bücher.example")
    assert parse_path('<"δοκιμή x"@παράδειγμα.δοκιμή>', utf8=True).domain == "παράδειγμα.δοκιμή"


def test_u_label_rejects_symbols() -> None:
    assert not is_domain("a\u2603b.example")  # SNOWMAN is not a letter, mark or digit
    assert is_domain("xn--bcher-kva.example")
    assert not is_domain("")
    assert not is_domain("é-")


def test_address_literal_helper() -> None:
    assert is_address_literal("[127.0.0.1]")
    assert not is_address_literal("127.0.0.1")
    assert not is_address_literal("[IPv6:::１]")


def test_reverse_path_null() -> None:
    assert parse_reverse_path("<>") is None
    assert parse_reverse_path("<a@b>") == Mailbox("a", "b")


@pytest.mark.parametrize("text", ["<Postmaster>", "<postmaster>", "<POSTMASTER>"])
def test_bare_postmaster(text: str) -> None:
    mailbox = parse_forward_path(text)
    assert mailbox == Mailbox(text[1:-1], "")
    assert mailbox.is_bare_postmaster
    assert str(mailbox) == text[1:-1]


def test_forward_path_rules() -> None:
    assert parse_forward_path("<Postmaster@Example.com>") == Mailbox("Postmaster", "Example.com")
    with pytest.raises(AddressError):
        parse_forward_path("<>")
    with pytest.raises(AddressError):
        parse_forward_path("<someone>")


def test_mailbox_properties() -> None:
    quoted = parse_path('<"a\\"b c"@[10.0.0.1]>')
    assert quoted.unquoted_local_part == 'a"b c'
    assert quoted.is_address_literal and quoted.is_ascii
    plain = Mailbox("user", "example.com")
    assert plain.unquoted_local_part == "user"
    assert not plain.is_address_literal and not plain.is_bare_postmaster
    assert str(plain) == "user@example.com"
    assert not Mailbox("jörg", "x").is_ascii


@pytest.mark.parametrize(
    ("text", "path", "rest"),
    [
        ("<a@b>", "<a@b>", ""),
        ("<a@b> SIZE=10", "<a@b>", "SIZE=10"),
        ("<a@b>   SIZE=10  BODY=8BITMIME ", "<a@b>", "SIZE=10  BODY=8BITMIME"),
        ('<"x> y"@b> SIZE=1', '<"x> y"@b>', "SIZE=1"),
        ('<"x\\" >"@b>', '<"x\\" >"@b>', ""),
        ("<>", "<>", ""),
    ],
)
def test_split_path_argument(text: str, path: str, rest: str) -> None:
    assert split_path_argument(text) == (path, rest)


@pytest.mark.parametrize("text", ["", "a@b", "<a@b", "<a@b>SIZE=1", '<"a@b>'])
def test_split_path_argument_errors(text: str) -> None:
    with pytest.raises(AddressError):
        split_path_argument(text)


# ----------------------------------------------------------------------------- properties
_ATEXT = "abcXYZ019!#$%&'*+-/=?^_`{|}~"
_atom = st.text(st.sampled_from(_ATEXT), min_size=1, max_size=8)
_utf8_atom = st.text(st.sampled_from(_ATEXT) | st.sampled_from("äößéλжあ"), min_size=1, max_size=8)
_dot_string = st.lists(_atom, min_size=1, max_size=4).map(".".join)
_qchar = st.sampled_from([chr(c) for c in range(32, 127) if chr(c) not in '"\\'])
_qpair = st.sampled_from([chr(c) for c in range(32, 127)]).map(lambda c: "\\" + c)
_quoted = st.lists(_qchar | _qpair, max_size=10).map(lambda parts: '"' + "".join(parts) + '"')
_label = st.from_regex(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,10}[A-Za-z0-9])?", fullmatch=True)
_domain = st.lists(_label, min_size=1, max_size=4).map(".".join)
_ipv4 = st.tuples(*[st.integers(0, 255)] * 4).map(lambda t: "[" + ".".join(map(str, t)) + "]")
_ipv6 = st.ip_addresses(v=6).map(lambda a: f"[IPv6:{a}]")
_local = _dot_string | _quoted
_host = _domain | _ipv4 | _ipv6


@settings(deadline=None)
@given(_local, _host, st.lists(_domain, max_size=3))
def test_roundtrip_valid_addresses(local: str, host: str, route: list[str]) -> None:
    prefix = ",".join("@" + d for d in route) + ":" if route else ""
    mailbox = parse_path(f"<{prefix}{local}@{host}>")
    assert mailbox == Mailbox(local, host)
    assert parse_path(f"<{mailbox}>") == mailbox
    path, rest = split_path_argument(f"<{mailbox}> NOTIFY=NEVER")
    assert parse_forward_path(path) == mailbox and rest == "NOTIFY=NEVER"


@settings(deadline=None)
@given(st.lists(_utf8_atom, min_size=1, max_size=3).map(".".join), _domain)
def test_roundtrip_utf8_addresses(local: str, host: str) -> None:
    text = f"<{local}@{host}>"
    assert parse_path(text, utf8=True) == Mailbox(local, host)
    if not local.isascii():
        with pytest.raises(NonAsciiAddressError):
            parse_path(text)


@settings(deadline=None)
@given(st.text(max_size=80), st.booleans())
def test_never_crashes_on_arbitrary_text(text: str, utf8: bool) -> None:
    for func in (parse_path, parse_reverse_path, parse_forward_path, parse_mailbox):
        try:
            func(text, utf8=utf8)
        except AddressError:
            pass
    try:
        split_path_argument(text)
    except AddressError:
        pass


@settings(deadline=None)
@given(st.text(alphabet=st.sampled_from('<>@"\\.:,[] aZ9-é'), max_size=30))
def test_never_crashes_on_address_like_text(text: str) -> None:
    for candidate in (text, f"<{text}>"):
        try:
            parse_forward_path(candidate, utf8=True)
        except AddressError:
            pass


def _is_domain_by_labels(text: str) -> bool:
    """The per-label definition is_domain's all-ASCII regex must agree with."""
    if not text or len(text.encode("utf-8", "surrogatepass")) > 255:
        return False
    for label in text.split("."):
        if not label or len(label) > 63 or not label.isascii():
            return False
        if not (label[0].isalnum() and label[-1].isalnum()):
            return False
        if any(not (c.isalnum() or c == "-") for c in label):
            return False
    return True


_DOMAIN_CHARS = st.sampled_from("aZ09-._\n \u00e9")


@given(
    st.one_of(
        st.text(_DOMAIN_CHARS, max_size=80),
        st.lists(
            st.text(st.sampled_from("ab-9"), min_size=0, max_size=66), min_size=1, max_size=6
        ).map(".".join),
    )
)
@settings(max_examples=800)
def test_is_domain_ascii_fast_path_matches_label_rules(text: str) -> None:
    if text.isascii():
        assert is_domain(text) == _is_domain_by_labels(text)


def test_is_domain_ascii_lengths() -> None:
    assert is_domain("a" * 63 + ".example")
    assert not is_domain("a" * 64 + ".example")
    assert is_domain(".".join(["a" * 63] * 4))  # 255 octets
    assert not is_domain(".".join(["a" * 63] * 4) + "a")
    assert not is_domain("example.")
    assert not is_domain("a..b")
    assert not is_domain("-a.example")
    assert not is_domain("a-.example")
    assert not is_domain("exa mple.test")


def test_is_domain_non_ascii_length_in_octets() -> None:
    label = "é" * 31  # 62 octets in UTF-8
    assert is_domain(".".join([label] * 4))  # 251 octets
    assert not is_domain(".".join([label] * 4) + "ééé")  # 257 octets, 130 characters
