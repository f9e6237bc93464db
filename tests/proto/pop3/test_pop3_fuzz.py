"""Hypothesis: no client input makes the POP3 core raise, and replies stay well-formed."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st
from pop3_harness import Edge

import letterbird.proto.pop3 as pop3_package
from letterbird.proto.pop3 import CloseConnection, ServerConfig
from letterbird.proto.pop3.grammar import parse_command

CONFIGS = st.builds(
    ServerConfig,
    tls_available=st.booleans(),
    tls_active=st.booleans(),
    plaintext_allowed=st.booleans(),
    max_errors=st.integers(min_value=1, max_value=20),
)

WORDS = [
    b"USER alice",
    b"PASS secret",
    b"PASS wrong",
    b"AUTH",
    b"AUTH PLAIN",
    b"AUTH PLAIN AGFsaWNlAHNlY3JldA==",
    b"AUTH LOGIN",
    b"YWxpY2U=",
    b"c2VjcmV0",
    b"*",
    b"STLS",
    b"CAPA",
    b"STAT",
    b"LIST",
    b"LIST 2",
    b"UIDL",
    b"UIDL 9",
    b"RETR 1",
    b"RETR 2",
    b"TOP 3 1",
    b"TOP 2 x",
    b"DELE 1",
    b"DELE 2",
    b"RSET",
    b"NOOP",
    b"QUIT",
    b"x" * 600,
    b"\xff\xfe",
    b"",
]
SCRIPTS = st.lists(st.one_of(st.sampled_from(WORDS), st.binary(max_size=40)), max_size=30).map(
    lambda lines: b"".join(line + b"\r\n" for line in lines)
)


@settings(deadline=None, max_examples=300)
@given(CONFIGS, SCRIPTS, st.lists(st.integers(min_value=1, max_value=64), max_size=20))
def test_arbitrary_sessions_never_raise(
    config: ServerConfig, script: bytes, cuts: list[int]
) -> None:
    edge = Edge(config)
    out = [edge.greeting]
    pos = 0
    for size in [*cuts, len(script)]:
        chunk = edge.send(script[pos : pos + size])
        if edge.conn.closed:
            closed_output = edge.send(b"NOOP\r\n")
            assert closed_output == b""
        assert chunk == b"" or chunk.endswith(b"\r\n")
        out.append(chunk)
        pos += size
        edge.handshake()
    data = b"".join(out)
    assert data.startswith(b"+OK ")
    closes = [e for e in edge.events if isinstance(e, CloseConnection)]
    assert len(closes) <= 1
    if closes:
        assert edge.conn.closed


MESSAGE_PIECES = st.sampled_from([b".", b"..", b"\r\n", b"\n", b"\r", b"a", b"\r\n\r\n", b": "])
MESSAGE_SETS = st.lists(
    st.one_of(st.binary(max_size=80), st.lists(MESSAGE_PIECES, max_size=30).map(b"".join)),
    min_size=3,
    max_size=3,
)
RETRIEVALS = st.lists(
    st.sampled_from([b"RETR 1", b"RETR 2", b"RETR 3", b"TOP 1 0", b"TOP 2 1", b"TOP 3 2"]),
    max_size=8,
).map(lambda lines: b"".join(line + b"\r\n" for line in lines))


@settings(deadline=None, max_examples=300)
@given(MESSAGE_SETS, st.one_of(SCRIPTS, RETRIEVALS), st.integers(min_value=1, max_value=40))
def test_streamed_answers_equal_whole_answers(
    messages: list[bytes], script: bytes, chunk: int
) -> None:
    """Answering RETR/TOP part by part (any part size) gives the bytes of one send_message."""
    outputs = []
    for size in (None, chunk):
        edge = Edge(messages=messages, chunk=size)
        edge.login()
        outputs.append(edge.send(script))
        edge.handshake()
        outputs.append(edge.send(b"RETR 2\r\nTOP 3 1\r\n"))
    assert outputs[:2] == outputs[2:]


@settings(deadline=None, max_examples=300)
@given(st.binary(max_size=2000))
def test_arbitrary_bytes_never_raise(data: bytes) -> None:
    for config in (ServerConfig(), ServerConfig(plaintext_allowed=True)):
        edge = Edge(config)
        edge.send(data)
        edge.send(b"\r\n")
        edge.conn.timeout()
        assert edge.pump().endswith(b"\r\n") or edge.conn.closed


@settings(deadline=None, max_examples=200)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_in_transaction_never_raise(data: bytes) -> None:
    edge = Edge(ServerConfig(plaintext_allowed=True))
    edge.login()
    edge.send(data + b"\r\n")


def reference_parse(line: bytes) -> tuple[str, tuple[str, ...] | None, str | None] | None:
    """parse_command as first written (a regex per parameter), to check the one-regex form."""
    head, sep, tail = line.partition(b" ")
    if re.fullmatch(rb"[\x21-\x7e]{3,4}", head) is None:
        return None
    keyword = head.decode("ascii").upper()
    if not sep:
        return (keyword, (), None)
    try:
        text = tail.decode("utf-8")
    except UnicodeDecodeError:
        return (keyword, None, None)
    rest = text if re.fullmatch(r"[^\x00-\x1f\x7f]+", text) else None
    params = tuple(text.split(" "))
    if not all(re.fullmatch(r"[^\x00-\x20\x7f]+", p) for p in params):
        return (keyword, None, rest)
    return (keyword, params, rest)


@settings(deadline=None, max_examples=500)
@given(
    st.one_of(
        st.binary(max_size=40),
        st.lists(
            st.sampled_from([b"USER", b"PASS", b"pass", b" ", b"  ", b"a", b"\xc3\xa9", b"\t"]),
            max_size=8,
        ).map(b"".join),
        st.text(max_size=20).map(lambda t: ("PASS " + t).encode()),
    )
)
def test_command_grammar_matches_the_reference(line: bytes) -> None:
    command = parse_command(line)
    expected = reference_parse(line)
    assert (None if command is None else tuple(command)) == expected


def test_core_is_sans_io() -> None:
    """The POP3 core imports only pure stdlib modules and other sans-IO cores."""
    allowed = {"__future__", "base64", "binascii", "collections", "dataclasses", "enum", "re"}
    allowed |= {"typing"}
    folder = Path(pop3_package.__file__).parent
    for path in folder.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                assert top in allowed or name.startswith("letterbird.proto"), (path, name)
                assert not name.startswith("letterbird.proto.") or name.split(".")[2] in {
                    "pop3",
                    "sasl",
                    "errors",
                }, (path, name)
