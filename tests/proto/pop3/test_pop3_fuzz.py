"""Hypothesis: no client input makes the POP3 core raise, and replies stay well-formed."""

from __future__ import annotations

import ast
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st
from pop3_harness import Edge

import letterbird.proto.pop3 as pop3_package
from letterbird.proto.pop3 import CloseConnection, ServerConfig

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
