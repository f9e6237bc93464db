"""Hypothesis: the IMAP reader never crashes, stays bounded, and ignores how input is chunked."""

from __future__ import annotations

import ast
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import letterbird.proto.imap as imap_pkg
from letterbird.proto.imap.parser import (
    NEED_DATA,
    AuthenticateLine,
    Command,
    CommandError,
    CommandReader,
    ContinuationNeeded,
    Event,
    IdleDone,
    LiteralTooBig,
)

LIMITS = {"max_line": 64, "max_literal": 40, "max_command": 120, "max_literals": 3}


def run(chunks: list[bytes], **limits: int) -> list[Event]:
    reader = CommandReader(**limits)
    out: list[Event] = []
    chunk_max = max((len(c) for c in chunks), default=0)
    for chunk in chunks:
        reader.receive_data(chunk)
        while (event := reader.next_event()) is not NEED_DATA:
            out.append(event)
            if isinstance(event, Command) and event.name == "IDLE":
                reader.start_idle()
            elif isinstance(event, Command) and event.name == "AUTHENTICATE":
                reader.read_authenticate_line()
        # Incomplete input held back is bounded by the limits (plus the last chunk).
        assert reader.buffered <= limits.get("max_command", 0) + chunk_max + 2
    return out


EVENT_TYPES = (Command, ContinuationNeeded, CommandError, LiteralTooBig, IdleDone, AuthenticateLine)


def check(events: list[Event]) -> None:
    for e in events:
        assert isinstance(e, EVENT_TYPES)
        if isinstance(e, CommandError | LiteralTooBig | ContinuationNeeded):
            reply = e.reply()
            assert reply.endswith(b"\r\n") and reply.count(b"\r\n") == 1


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    out, prev = [], 0
    for p in points:
        out.append(data[prev:p])
        prev = p
    out.append(data[prev:])
    return out


@settings(deadline=None, max_examples=300)
@given(st.binary(max_size=400), st.lists(st.integers(0, 1000), max_size=12))
def test_arbitrary_bytes_never_crash_and_chunking_does_not_matter(
    data: bytes, cuts: list[int]
) -> None:
    whole = run([data], **LIMITS)
    check(whole)
    assert run(split(data, cuts), **LIMITS) == whole


VOCAB = [
    b"a",
    b"b1",
    b"*",
    b" ",
    b" ",
    b" ",
    b"\r\n",
    b"\n",
    b"(",
    b")",
    b"[",
    b"]",
    b"<0.5>",
    b'"',
    b'"x y"',
    b"\\",
    b"{3}\r\nabc",
    b"{2+}\r\nxy",
    b"{0}\r\n",
    b"~{1+}\r\nz",
    b"{99}\r\n",
    b"{9999+}\r\n",
    b"1",
    b"1:*",
    b"5:3,7",
    b"0",
    b"4294967296",
    b"NIL",
    b"UID",
    b"\\Seen",
    b"$kw",
    b"&U,BTFw-",
    b"&",
    b"\xc3\xa4",
    b"\xff",
    b"\x00",
    b'"17-Jul-1996 02:44:25 -0700"',
    b"1-Feb-1994",
    b"RETURN",
    b"CHARSET",
    b"UTF-8",
    b"HEADER.FIELDS",
    b"BODY.PEEK[1.2.HEADER.FIELDS (From)]",
    b"BODY[]",
    b"FLAGS",
    b"+FLAGS.SILENT",
    b"CONDSTORE",
    b"QRESYNC",
    b"CHANGEDSINCE",
    b"VANISHED",
    b"UNCHANGEDSINCE",
    b"STATUS",
    b"MESSAGES",
    b"OR",
    b"NOT",
    b"SEEN",
    b"FROM",
    b"SINCE",
    b"MODSEQ",
    b"DONE",
] + [
    name.encode()
    for name in [
        *("CAPABILITY", "NOOP", "LOGOUT", "STARTTLS", "AUTHENTICATE", "LOGIN", "SELECT"),
        *("EXAMINE", "CREATE", "DELETE", "RENAME", "SUBSCRIBE", "UNSUBSCRIBE", "LIST", "LSUB"),
        *("STATUS", "APPEND", "CHECK", "CLOSE", "EXPUNGE", "SEARCH", "FETCH", "STORE", "COPY"),
        *("MOVE", "IDLE", "NAMESPACE", "ENABLE", "UNSELECT", "ID"),
    ]
]


@settings(deadline=None, max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.sampled_from(VOCAB), max_size=40),
    st.lists(st.integers(0, 1000), max_size=6),
)
def test_token_soup(tokens: list[bytes], cuts: list[int]) -> None:
    data = b"t " + b"".join(tokens) + b"\r\n"
    whole = run([data], **LIMITS)
    check(whole)
    assert run(split(data, cuts), **LIMITS) == whole
    # Without literal markers the reader always recovers for the next command.
    if b"{" not in data:
        after = run([data + b"z NOOP\r\n"], **LIMITS)
        if not any(isinstance(e, Command) and e.name in ("IDLE", "AUTHENTICATE") for e in after):
            assert after[-1] == Command("z", "NOOP")


def test_core_is_sans_io() -> None:
    forbidden = {"socket", "asyncio", "threading", "selectors", "ssl", "time", "sqlite3"}
    root = Path(imap_pkg.__file__).parent
    for path in root.glob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                assert top not in forbidden, (path.name, name)
                assert not name.startswith(("letterbird.storage", "letterbird.server")), name
