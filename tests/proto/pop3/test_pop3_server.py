"""The sans-IO POP3 server core, driven through its public API with plain bytes."""

from __future__ import annotations

import base64
import time
import tracemalloc
from collections.abc import Callable

import pytest
from pop3_harness import MESSAGES, Edge, logged_in

from letterbird.proto.pop3 import (
    NEED_DATA,
    CloseConnection,
    LoginFailure,
    LoginRequested,
    Pop3UsageError,
    RetrieveRequested,
    ServerConfig,
    ServerConnection,
    State,
    StlsRequested,
    UpdateRequested,
)

SIZES = [len(m) for m in MESSAGES]
TOTAL = sum(SIZES)
UNKNOWN = b"-ERR unknown command\r\n"
WRONG_STATE = b"-ERR command not valid in this state\r\n"
SYNTAX = b"-ERR syntax error\r\n"
NO_SUCH = b"-ERR no such message\r\n"
LOGGED_IN = b"+OK maildrop has 3 messages (%d octets)\r\n" % TOTAL
AUTH_FAILED = b"-ERR [AUTH] authentication failed\r\n"
PLAINTEXT_DISABLED = b"-ERR [AUTH] plaintext authentication disallowed without TLS, use STLS\r\n"


def b64(data: bytes) -> bytes:
    return base64.b64encode(data)


def plain(user: str, password: str, authzid: str = "") -> bytes:
    return b64(f"{authzid}\0{user}\0{password}".encode())


# --- configuration -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs",
    [
        {"implementation": ""},
        {"implementation": "bad\r\nname"},
        {"implementation": "x" * 201},
        {"greeting": "ready <1.2@host>"},
        {"greeting": "caf\u00e9"},
        {"max_line_length": 254},
        {"max_auth_line_length": 300},
        {"max_buffer_size": 8000},
        {"max_errors": 0},
        {"expire": "SOON"},
        {"expire": "1 USER"},
        {"login_delay": -1},
    ],
)
def test_invalid_config_is_refused(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        ServerConfig(**kwargs)  # type: ignore[arg-type]


def test_defaults_are_secure_and_rfc_sized() -> None:
    config = ServerConfig()
    assert config.plaintext_allowed is False
    assert config.max_line_length == 512
    assert config.expire == "NEVER"
    assert config.login_delay == 0
    assert ServerConnection().config == config


# --- greeting and AUTHORIZATION ------------------------------------------------------------------
def test_greeting_is_queued_on_construction() -> None:
    conn = ServerConnection(ServerConfig(greeting="mail.example POP3 ready"))
    assert conn.state is State.AUTHORIZATION
    assert conn.next_event() is NEED_DATA
    assert conn.data_to_send() == b"+OK mail.example POP3 ready\r\n"
    assert conn.data_to_send() == b""


def test_user_pass_login() -> None:
    edge = Edge()
    assert edge.greeting == b"+OK POP3 server ready\r\n"
    assert edge.send(b"USER alice\r\n") == b"+OK send PASS\r\n"
    assert edge.events == []
    assert edge.send(b"PASS secret\r\n") == LOGGED_IN
    assert edge.events == [LoginRequested("alice", "secret", "USER")]
    assert edge.conn.state is State.TRANSACTION


def test_password_keeps_its_spaces_and_is_not_in_repr() -> None:
    edge = Edge()
    assert edge.send(b"USER bob\r\nPASS pass with spaces \r\n").endswith(LOGGED_IN)
    event = edge.last
    assert isinstance(event, LoginRequested)
    assert event.password == "pass with spaces "
    assert "spaces" not in repr(event)


def test_commands_are_case_insensitive() -> None:
    edge = Edge()
    assert edge.send(b"user alice\r\npAsS secret\r\nstat\r\n").endswith(b"+OK 3 %d\r\n" % TOTAL)


def test_pass_must_follow_user_immediately() -> None:
    edge = Edge()
    assert edge.send(b"PASS secret\r\n") == b"-ERR give USER first\r\n"
    out = edge.send(b"USER alice\r\nCAPA\r\nPASS secret\r\n")
    assert out.endswith(b"-ERR give USER first\r\n")
    assert edge.events == []


@pytest.mark.parametrize(
    ("line", "reply"),
    [
        (b"USER\r\n", SYNTAX),
        (b"USER a b\r\n", SYNTAX),
        (b"USER \r\n", SYNTAX),
        (b"USER a\x01b\r\n", SYNTAX),
        (b"USER \xff\r\n", SYNTAX),
    ],
)
def test_user_syntax_errors(line: bytes, reply: bytes) -> None:
    assert Edge().send(line) == reply


@pytest.mark.parametrize(
    ("line", "reply"),
    [
        (b"PASS\r\n", SYNTAX),
        (b"PASS \r\n", AUTH_FAILED),
        (b"PASS \xff\xfe\r\n", AUTH_FAILED),
        (b"PASS a\x00b\r\n", AUTH_FAILED),
    ],
)
def test_pass_errors(line: bytes, reply: bytes) -> None:
    edge = Edge()
    edge.send(b"USER alice\r\n")
    assert edge.send(line) == reply
    assert edge.events == []


def test_pass_cannot_be_retried_without_user() -> None:
    edge = Edge()
    assert edge.send(b"USER alice\r\nPASS wrong\r\nPASS secret\r\n") == (
        b"+OK send PASS\r\n" + AUTH_FAILED + b"-ERR give USER first\r\n"
    )


def test_utf8_username_is_passed_on() -> None:
    edge = Edge()
    edge.send("USER j\u00f6rg\r\nPASS pw\r\n".encode())
    assert edge.events == [LoginRequested("j\u00f6rg", "pw", "USER")]


def test_wrong_password_stays_in_authorization_and_can_retry() -> None:
    edge = Edge()
    assert edge.send(b"USER alice\r\nPASS wrong\r\n") == b"+OK send PASS\r\n" + AUTH_FAILED
    assert edge.conn.state is State.AUTHORIZATION
    assert edge.login() == b"+OK send PASS\r\n" + LOGGED_IN


@pytest.mark.parametrize(
    ("code", "reply"),
    [
        (LoginFailure.AUTH, AUTH_FAILED),
        ("AUTH", AUTH_FAILED),
        ("IN-USE", b"-ERR [IN-USE] maildrop is locked by another session\r\n"),
        (LoginFailure.LOGIN_DELAY, b"-ERR [LOGIN-DELAY] logged in too recently, try later\r\n"),
        ("SYS/TEMP", b"-ERR [SYS/TEMP] temporary system problem, try later\r\n"),
        ("SYS/PERM", b"-ERR [SYS/PERM] permanent system problem\r\n"),
    ],
)
def test_login_failure_codes(code: LoginFailure | str, reply: bytes) -> None:
    conn = ServerConnection(ServerConfig(plaintext_allowed=True))
    conn.receive_data(b"USER alice\r\nPASS secret\r\n")
    assert isinstance(conn.next_event(), LoginRequested)
    conn.login_failed(code)
    assert conn.next_event() is NEED_DATA
    assert conn.data_to_send().endswith(b"+OK send PASS\r\n" + reply)
    assert conn.state is State.AUTHORIZATION


def test_unknown_login_failure_code_raises_and_leaves_the_event_pending() -> None:
    conn = ServerConnection(ServerConfig(plaintext_allowed=True))
    conn.receive_data(b"USER alice\r\nPASS secret\r\n")
    conn.next_event()
    with pytest.raises(ValueError):
        conn.login_failed("NOPE")
    conn.login_failed("AUTH")
    assert conn.next_event() is NEED_DATA


@pytest.mark.parametrize(
    "maildrop",
    [
        [(-1, "a")],
        [("12", "a")],
        [(1, "")],
        [(1, "has space")],
        [(1, "x" * 71)],
        [(1, "caf\u00e9")],
        [(1, 5)],
        [(1, "a"), (2, "a")],
    ],
)
def test_invalid_maildrop_raises_and_leaves_the_event_pending(
    maildrop: list[tuple[object, object]],
) -> None:
    conn = ServerConnection(ServerConfig(plaintext_allowed=True))
    conn.receive_data(b"USER alice\r\nPASS secret\r\n")
    conn.next_event()
    with pytest.raises(ValueError):
        conn.login_succeeded(maildrop)  # type: ignore[arg-type]
    assert conn.state.name == "AUTHORIZATION"
    conn.login_succeeded([(1, "x" * 70), (0, "!~")])
    assert conn.state.name == "TRANSACTION"


@pytest.mark.parametrize(
    "line",
    [b"STAT", b"LIST", b"LIST 1", b"RETR 1", b"DELE 1", b"NOOP", b"RSET", b"TOP 1 1", b"UIDL"],
)
def test_transaction_commands_refused_in_authorization(line: bytes) -> None:
    assert Edge().send(line + b"\r\n") == WRONG_STATE


@pytest.mark.parametrize(
    "line",
    [b"", b"XYZZY", b"AB", b"ABCDE", b"APOP alice 0123456789abcdef", b"\xc3\xa9AB", b" USER a"],
)
def test_unknown_commands(line: bytes) -> None:
    assert Edge().send(line + b"\r\n") == UNKNOWN
    assert logged_in().send(line + b"\r\n") == UNKNOWN


def test_quit_in_authorization_closes_without_update() -> None:
    edge = Edge()
    assert edge.send(b"QUIT\r\n") == b"+OK POP3 server signing off\r\n"
    assert edge.events == [CloseConnection("quit")]
    assert edge.conn.closed
    assert edge.conn.state is State.CLOSED
    assert edge.send(b"USER alice\r\n") == b""
    assert edge.conn.next_event() is NEED_DATA


def test_quit_with_argument_is_a_syntax_error() -> None:
    assert Edge().send(b"QUIT now\r\n") == SYNTAX
    assert logged_in().send(b"QUIT now\r\n") == SYNTAX


def test_bare_lf_line_endings_are_accepted() -> None:
    edge = Edge()
    assert edge.send(b"USER alice\nPASS secret\n") == b"+OK send PASS\r\n" + LOGGED_IN


# --- plaintext policy ----------------------------------------------------------------------------
def test_plaintext_refused_before_tls() -> None:
    edge = Edge(ServerConfig(tls_available=True))
    assert edge.send(b"USER alice\r\n") == PLAINTEXT_DISABLED
    assert edge.send(b"PASS secret\r\n") == b"-ERR give USER first\r\n"
    assert edge.send(b"AUTH PLAIN " + plain("alice", "secret") + b"\r\n") == PLAINTEXT_DISABLED
    assert edge.send(b"AUTH LOGIN\r\n") == PLAINTEXT_DISABLED
    assert edge.send(b"AUTH\r\n") == b"+OK supported SASL mechanisms follow\r\n.\r\n"
    capa = edge.send(b"CAPA\r\n")
    assert b"USER" not in capa
    assert b"SASL" not in capa
    assert b"\r\nSTLS\r\n" in capa
    assert edge.events == []


def test_plaintext_allowed_on_an_implicit_tls_connection() -> None:
    edge = Edge(ServerConfig(tls_active=True, tls_available=True))
    assert edge.conn.tls_active
    capa = edge.send(b"CAPA\r\n")
    assert b"\r\nUSER\r\n" in capa
    assert b"STLS" not in capa
    assert edge.send(b"STLS\r\n") == b"-ERR TLS already active\r\n"
    assert edge.login() == b"+OK send PASS\r\n" + LOGGED_IN


# --- SASL (RFC 5034) ----------------------------------------------------------------------------
def test_auth_lists_mechanisms() -> None:
    assert Edge().send(b"AUTH\r\n") == (
        b"+OK supported SASL mechanisms follow\r\nPLAIN\r\nLOGIN\r\n.\r\n"
    )


def test_auth_plain_with_initial_response() -> None:
    edge = Edge()
    assert edge.send(b"AUTH PLAIN " + plain("alice", "secret") + b"\r\n") == LOGGED_IN
    assert edge.events == [LoginRequested("alice", "secret", "PLAIN", "")]


def test_auth_plain_with_continuation_and_authzid() -> None:
    edge = Edge()
    assert edge.send(b"auth plain\r\n") == b"+ \r\n"
    assert edge.send(plain("alice", "secret", "admin") + b"\r\n") == LOGGED_IN
    assert edge.events == [LoginRequested("alice", "secret", "PLAIN", "admin")]


def test_auth_plain_continuation_success() -> None:
    edge = Edge()
    assert edge.send(b"AUTH PLAIN\r\n") == b"+ \r\n"
    assert edge.send(plain("alice", "secret") + b"\r\n") == LOGGED_IN


@pytest.mark.parametrize(
    ("exchange", "reply"),
    [
        ([b"AUTH PLAIN *"], b"-ERR authentication cancelled\r\n"),
        ([b"AUTH PLAIN", b"*"], b"-ERR authentication cancelled\r\n"),
        ([b"AUTH PLAIN !!!"], b"-ERR invalid base64 in SASL response\r\n"),
        ([b"AUTH PLAIN", b"not base64!"], b"-ERR invalid base64 in SASL response\r\n"),
        ([b"AUTH PLAIN \xc3\xa9"], b"-ERR invalid base64 in SASL response\r\n"),
        ([b"AUTH PLAIN ="], b"-ERR [AUTH] malformed SASL response\r\n"),
        ([b"AUTH PLAIN " + b64(b"alice\0secret")], b"-ERR [AUTH] malformed SASL response\r\n"),
        ([b"AUTH PLAIN", b64(b"\0\0secret")], b"-ERR [AUTH] malformed SASL response\r\n"),
        ([b"AUTH LOGIN", b"*"], b"-ERR authentication cancelled\r\n"),
        ([b"AUTH LOGIN ="], b"-ERR [AUTH] malformed SASL response\r\n"),
        ([b"AUTH LOGIN", b64(b"\xff")], b"-ERR [AUTH] malformed SASL response\r\n"),
        ([b"AUTH LOGIN", b64(b"alice"), b"*"], b"-ERR authentication cancelled\r\n"),
        ([b"AUTH LOGIN", b64(b"alice"), b"="], b"-ERR [AUTH] malformed SASL response\r\n"),
        ([b"AUTH CRAM-MD5"], b"-ERR unsupported authentication mechanism\r\n"),
        ([b"AUTH PLAIN a b"], SYNTAX),
        ([b"AUTH PLAIN\x01"], SYNTAX),
        ([b"AUTH\x01"], UNKNOWN),
        ([b"AUTH \xff"], SYNTAX),
    ],
)
def test_auth_errors(exchange: list[bytes], reply: bytes) -> None:
    edge = Edge()
    out = b"".join(edge.send(line + b"\r\n") for line in exchange)
    assert out.endswith(reply)
    assert edge.events == []
    # the exchange is over: the next line is a command again
    assert edge.send(b"NOOP\r\n") == WRONG_STATE


def test_auth_login_with_prompts() -> None:
    edge = Edge()
    assert edge.send(b"AUTH LOGIN\r\n") == b"+ VXNlcm5hbWU6\r\n"
    assert edge.send(b64(b"alice") + b"\r\n") == b"+ UGFzc3dvcmQ6\r\n"
    assert edge.send(b64(b"secret") + b"\r\n") == LOGGED_IN
    assert edge.events == [LoginRequested("alice", "secret", "LOGIN")]


def test_auth_login_with_initial_response() -> None:
    edge = Edge()
    assert edge.send(b"AUTH login " + b64(b"alice") + b"\r\n") == b"+ UGFzc3dvcmQ6\r\n"
    assert edge.send(b64(b"secret") + b"\r\n") == LOGGED_IN


def test_auth_lines_may_exceed_the_command_limit() -> None:
    password = "p" * 250
    response = plain("u" * 250, password, "z" * 250)
    assert len(response) > 600
    edge = Edge()
    edge.send(b"AUTH PLAIN " + response + b"\r\n")
    assert edge.events == [LoginRequested("u" * 250, password, "PLAIN", "z" * 250)]
    edge = Edge()
    assert edge.send(b"AUTH PLAIN\r\n") == b"+ \r\n"
    edge.send(response[:300])
    edge.send(response[300:] + b"\r\n")
    assert edge.events == [LoginRequested("u" * 250, password, "PLAIN", "z" * 250)]


def test_overlong_sasl_response_aborts_the_exchange() -> None:
    edge = Edge()
    edge.send(b"AUTH PLAIN\r\n")
    assert edge.send(b"A" * 9000 + b"\r\n") == b"-ERR line too long\r\n"
    assert edge.send(b"AUTH PLAIN " + plain("alice", "secret") + b"\r\n") == LOGGED_IN


def test_auth_in_transaction_is_refused() -> None:
    edge = logged_in()
    for line in (b"AUTH\r\n", b"AUTH PLAIN\r\n", b"USER a\r\n", b"PASS b\r\n", b"STLS\r\n"):
        assert edge.send(line) == WRONG_STATE


# --- STLS (RFC 2595) -----------------------------------------------------------------------------
def test_stls_discards_pipelined_and_pre_handshake_input() -> None:
    edge = Edge(ServerConfig(tls_available=True))
    out = edge.send(b"STLS\r\nUSER mallory\r\nPASS x\r\n")
    assert out == b"+OK Begin TLS negotiation\r\n"
    assert edge.events == [StlsRequested()]
    # bytes arriving before the handshake completes are dropped too
    edge.conn.receive_data(b"USER mallory\r\n")
    assert edge.conn.next_event() is NEED_DATA
    edge.conn.tls_established()
    assert edge.conn.tls_active
    assert edge.send(b"PASS x\r\n") == b"-ERR give USER first\r\n"
    capa = edge.send(b"CAPA\r\n")
    assert b"STLS" not in capa
    assert b"\r\nUSER\r\n" in capa
    assert edge.send(b"STLS\r\n") == b"-ERR TLS already active\r\n"
    assert edge.login() == b"+OK send PASS\r\n" + LOGGED_IN


def test_stls_partial_line_before_handshake_is_discarded() -> None:
    edge = Edge(ServerConfig(tls_available=True))
    edge.send(b"STLS\r\nUSER mal")
    edge.conn.tls_established()
    assert edge.send(b"lory\r\n") == UNKNOWN


def test_stls_forgets_a_pending_user() -> None:
    edge = Edge(ServerConfig(tls_available=True, plaintext_allowed=True))
    edge.send(b"USER alice\r\nSTLS\r\n")
    edge.conn.tls_established()
    assert edge.send(b"PASS secret\r\n") == b"-ERR give USER first\r\n"


def test_stls_refused_by_the_edge() -> None:
    edge = Edge(ServerConfig(tls_available=True))
    edge.stls_ok = False
    assert edge.send(b"STLS\r\n") == b"-ERR [SYS/TEMP] TLS not available now, try later\r\n"
    assert not edge.conn.tls_active
    assert edge.send(b"USER alice\r\n") == PLAINTEXT_DISABLED


def test_stls_errors() -> None:
    assert Edge().send(b"STLS\r\n") == b"-ERR STLS not available\r\n"
    assert Edge(ServerConfig(tls_available=True)).send(b"STLS now\r\n") == SYNTAX
    assert (
        logged_in(ServerConfig(tls_available=True, plaintext_allowed=True)).send(b"STLS\r\n")
        == WRONG_STATE
    )


def test_tls_established_out_of_turn_raises() -> None:
    conn = ServerConnection(ServerConfig(tls_available=True))
    with pytest.raises(Pop3UsageError):
        conn.tls_established()


# --- CAPA (RFC 2449) -----------------------------------------------------------------------------
def test_capa_in_authorization() -> None:
    config = ServerConfig(
        implementation="Letterbird 0.1",
        tls_available=True,
        plaintext_allowed=True,
        expire="30",
        login_delay=900,
    )
    assert Edge(config).send(b"CAPA\r\n") == (
        b"+OK capability list follows\r\n"
        b"TOP\r\nUIDL\r\nUSER\r\nSASL PLAIN LOGIN\r\nRESP-CODES\r\nAUTH-RESP-CODE\r\n"
        b"PIPELINING\r\nEXPIRE 30\r\nLOGIN-DELAY 900\r\nIMPLEMENTATION Letterbird 0.1\r\n"
        b"STLS\r\n.\r\n"
    )


def test_capa_in_transaction_has_no_stls() -> None:
    edge = logged_in(ServerConfig(tls_available=True, plaintext_allowed=True))
    assert edge.send(b"CAPA\r\n") == (
        b"+OK capability list follows\r\n"
        b"TOP\r\nUIDL\r\nUSER\r\nSASL PLAIN LOGIN\r\nRESP-CODES\r\nAUTH-RESP-CODE\r\n"
        b"PIPELINING\r\nEXPIRE NEVER\r\nLOGIN-DELAY 0\r\nIMPLEMENTATION Letterbird\r\n.\r\n"
    )
    assert edge.send(b"CAPA x\r\n") == SYNTAX


# --- TRANSACTION ---------------------------------------------------------------------------------
def test_stat_list_uidl() -> None:
    edge = logged_in()
    assert edge.send(b"STAT\r\n") == b"+OK 3 %d\r\n" % TOTAL
    assert edge.send(b"LIST\r\n") == (
        b"+OK 3 messages (%d octets)\r\n1 %d\r\n2 %d\r\n3 %d\r\n.\r\n" % (TOTAL, *SIZES)
    )
    assert edge.send(b"LIST 2\r\n") == b"+OK 2 %d\r\n" % SIZES[1]
    assert edge.send(b"UIDL\r\n") == (
        b"+OK unique-id listing follows\r\n1 uid-1\r\n2 uid-2\r\n3 uid-3\r\n.\r\n"
    )
    assert edge.send(b"UIDL 3\r\n") == b"+OK 3 uid-3\r\n"
    assert edge.send(b"NOOP\r\n") == b"+OK\r\n"


def test_dele_rset_and_deleted_messages() -> None:
    edge = logged_in()
    assert edge.send(b"DELE 2\r\n") == b"+OK message 2 deleted\r\n"
    left = TOTAL - SIZES[1]
    assert edge.send(b"STAT\r\n") == b"+OK 2 %d\r\n" % left
    assert edge.send(b"LIST\r\n") == (
        b"+OK 2 messages (%d octets)\r\n1 %d\r\n3 %d\r\n.\r\n" % (left, SIZES[0], SIZES[2])
    )
    assert edge.send(b"UIDL\r\n") == (
        b"+OK unique-id listing follows\r\n1 uid-1\r\n3 uid-3\r\n.\r\n"
    )
    gone = b"-ERR message 2 already deleted\r\n"
    for line in (b"DELE 2", b"LIST 2", b"UIDL 2", b"RETR 2", b"TOP 2 0"):
        assert edge.send(line + b"\r\n") == gone
    assert edge.send(b"RSET\r\n") == b"+OK maildrop has 3 messages (%d octets)\r\n" % TOTAL
    assert edge.send(b"STAT\r\n") == b"+OK 3 %d\r\n" % TOTAL
    assert edge.send(b"LIST 2\r\n") == b"+OK 2 %d\r\n" % SIZES[1]


@pytest.mark.parametrize("command", [b"LIST", b"UIDL", b"RETR", b"DELE"])
@pytest.mark.parametrize(
    ("argument", "reply"),
    [
        (b" x", SYNTAX),
        (b" -1", SYNTAX),
        (b" +1", SYNTAX),
        (b" 1.0", SYNTAX),
        (b" \xd9\xa1", SYNTAX),  # ARABIC-INDIC DIGIT ONE: a Unicode digit, not 1*DIGIT
        (b" 1 2", SYNTAX),
        (b" 1 ", SYNTAX),
        (b"  1", SYNTAX),
        (b" 0", NO_SUCH),
        (b" 4", NO_SUCH),
        (b" 99999999999999999999999999", NO_SUCH),
    ],
)
def test_message_number_errors(command: bytes, argument: bytes, reply: bytes) -> None:
    edge = logged_in()
    assert edge.send(command + argument + b"\r\n") == reply
    assert len(edge.events) == 1


@pytest.mark.parametrize("line", [b"RETR", b"DELE", b"TOP", b"TOP 1", b"TOP 1 2 3"])
def test_missing_or_extra_arguments(line: bytes) -> None:
    assert logged_in().send(line + b"\r\n") == SYNTAX


@pytest.mark.parametrize(
    ("line", "reply"),
    [
        (b"TOP x 1", SYNTAX),
        (b"TOP 1 x", SYNTAX),
        (b"TOP 1 -1", SYNTAX),
        (b"TOP 9 x", SYNTAX),
        (b"TOP 0 1", NO_SUCH),
        (b"TOP 9 1", NO_SUCH),
    ],
)
def test_top_argument_errors(line: bytes, reply: bytes) -> None:
    assert logged_in().send(line + b"\r\n") == reply


@pytest.mark.parametrize("line", [b"STAT 1", b"NOOP 1", b"RSET 1", b"LIST 1 2", b"UIDL 1 2"])
def test_extra_arguments_are_syntax_errors(line: bytes) -> None:
    assert logged_in().send(line + b"\r\n") == SYNTAX


def test_retr_event_and_dot_stuffed_answer() -> None:
    edge = logged_in()
    out = edge.send(b"RETR 2\r\n")
    assert edge.last == RetrieveRequested(2, "uid-2", SIZES[1], None)
    assert out == (
        b"+OK %d octets\r\n" % SIZES[1]
        + b"Subject: two\r\n\r\n..starts with dot\r\nline\r\n...two dots\r\n..\r\nend\r\n.\r\n"
    )


def test_retr_of_message_without_final_crlf() -> None:
    edge = logged_in()
    out = edge.send(b"RETR 3\r\n")
    assert out == b"+OK %d octets\r\n" % SIZES[2] + MESSAGES[2] + b"\r\n.\r\n"


def test_top() -> None:
    edge = logged_in()
    assert edge.send(b"TOP 3 0\r\n") == (
        b"+OK top of message follows\r\nSubject: three\r\nX-A: b\r\n\r\n.\r\n"
    )
    assert edge.last == RetrieveRequested(3, "uid-3", SIZES[2], 0)
    assert edge.send(b"TOP 3 1\r\n") == (
        b"+OK top of message follows\r\nSubject: three\r\nX-A: b\r\n\r\nbody 1\r\n.\r\n"
    )
    beyond = b"+OK top of message follows\r\n" + MESSAGES[2] + b"\r\n.\r\n"
    assert edge.send(b"TOP 3 3\r\n") == beyond
    assert edge.send(b"TOP 3 1000000\r\n") == beyond
    assert edge.send(b"TOP 2 1\r\n") == (
        b"+OK top of message follows\r\nSubject: two\r\n\r\n..starts with dot\r\n.\r\n"
    )


def test_retr_in_parts() -> None:
    """send_message_part streams: +OK and each stuffed part are ready to write at once, the
    event stays pending until the last part, and the bytes equal one send_message."""
    edge = logged_in()
    conn = edge.conn
    conn.receive_data(b"RETR 2\r\nSTAT\r\n")
    assert isinstance(conn.next_event(), RetrieveRequested)
    data = MESSAGES[1]
    assert data[16:17] == b"."
    assert conn.send_message_part(data[:16]) is False
    first = conn.data_to_send()
    assert first == b"+OK %d octets\r\n" % SIZES[1] + data[:16]  # a "." starts the next part
    with pytest.raises(Pop3UsageError, match="message data"):
        conn.next_event()
    with pytest.raises(Pop3UsageError, match="message data"):
        conn.message_vanished()
    assert conn.send_message_part(data[16:40]) is False
    assert conn.send_message_part(b"") is False  # an empty part in between is harmless
    assert conn.send_message_part(data[40:], last=True) is True
    assert conn.next_event() is NEED_DATA
    rest = conn.data_to_send()
    assert first + rest == (
        logged_in().send(b"RETR 2\r\n") + b"+OK 3 %d\r\n" % TOTAL  # the pipelined STAT
    )
    with pytest.raises(Pop3UsageError):
        conn.send_message_part(b"more")


def test_top_in_parts_is_done_before_the_end() -> None:
    edge = logged_in()
    conn = edge.conn
    conn.receive_data(b"TOP 3 1\r\n")
    assert isinstance(conn.next_event(), RetrieveRequested)
    data = MESSAGES[2]
    assert conn.send_message_part(data[:10]) is False
    assert conn.send_message_part(data[10:40]) is True  # "body 1" CRLF is in it
    assert conn.next_event() is NEED_DATA
    assert conn.data_to_send() == (
        b"+OK top of message follows\r\nSubject: three\r\nX-A: b\r\n\r\nbody 1\r\n.\r\n"
    )


@pytest.mark.parametrize("chunk", [1, 2, 3, 5, 8, 13, 1000])
def test_streamed_session_equals_whole_messages(chunk: int) -> None:
    script = b"USER alice\r\nPASS secret\r\n" + b"".join(
        b"RETR %d\r\nTOP %d 0\r\nTOP %d 1\r\nTOP %d 9\r\n" % (n, n, n, n) for n in (1, 2, 3)
    )
    whole = Edge()
    streamed = Edge(chunk=chunk)
    assert streamed.send(script) == whole.send(script)
    # TOP n 0 and TOP n 1 stopped reading early, with parts of a few octets
    if chunk <= 5:
        assert streamed.parts_given < 3 * sum(SIZES) + 3 * SIZES[2]


def test_parts_after_a_timeout_are_ignored() -> None:
    edge = logged_in()
    conn = edge.conn
    conn.receive_data(b"RETR 1\r\n")
    conn.next_event()
    assert conn.send_message_part(b"Subject") is False
    conn.timeout()
    assert conn.send_message_part(b": one\r\n", last=True) is True
    assert conn.next_event() == CloseConnection("autologout timer expired")
    assert conn.data_to_send().endswith(b"-ERR autologout timer expired, closing connection\r\n")


def test_message_vanished() -> None:
    edge = logged_in(ServerConfig(plaintext_allowed=True, max_errors=1))
    edge.vanished.add("uid-1")
    reply = b"-ERR no such message, it was removed by another session\r\n"
    assert edge.send(b"RETR 1\r\n") == reply
    assert edge.send(b"TOP 1 0\r\n") == reply
    assert not edge.conn.closed  # not a client error
    assert edge.send(b"STAT\r\n") == b"+OK 3 %d\r\n" % TOTAL


def test_quit_in_transaction_requests_update() -> None:
    edge = logged_in()
    edge.send(b"DELE 3\r\nDELE 1\r\n")
    out = edge.send(b"QUIT\r\n")
    assert edge.events[-2:] == [UpdateRequested(("uid-1", "uid-3")), CloseConnection("quit")]
    assert out == b"+OK POP3 server signing off (1 messages left)\r\n"
    assert edge.conn.closed


def test_deleted_uids_are_in_message_order() -> None:
    edge = Edge(messages=[b"m\r\n"] * 10, uids=[f"u{i}" for i in range(1, 11)])
    edge.login()
    edge.send(b"DELE 9\r\nDELE 2\r\nDELE 5\r\nQUIT\r\n")
    assert UpdateRequested(("u2", "u5", "u9")) in edge.events


def test_quit_without_deletions_still_requests_update() -> None:
    edge = logged_in()
    edge.send(b"DELE 1\r\nRSET\r\nQUIT\r\n")
    assert UpdateRequested(()) in edge.events


def test_quit_after_deleting_everything() -> None:
    edge = logged_in()
    out = edge.send(b"DELE 1\r\nDELE 2\r\nDELE 3\r\nQUIT\r\n")
    assert out.endswith(b"+OK POP3 server signing off (maildrop empty)\r\n")


def test_failed_update() -> None:
    edge = logged_in()
    edge.update_ok = False
    out = edge.send(b"DELE 1\r\nQUIT\r\n")
    assert out.endswith(b"-ERR [SYS/TEMP] some deleted messages not removed\r\n")
    assert edge.last == CloseConnection("quit")


def test_state_is_update_while_the_edge_applies_deletions() -> None:
    conn = ServerConnection(ServerConfig(plaintext_allowed=True))
    conn.receive_data(b"USER a\r\nPASS b\r\n")
    conn.next_event()
    conn.login_succeeded([(10, "a")])
    conn.receive_data(b"QUIT\r\nSTAT\r\n")
    assert conn.next_event() == UpdateRequested(())
    assert conn.state is State.UPDATE
    conn.update_done(True)
    assert conn.next_event() == CloseConnection("quit")
    assert conn.next_event() is NEED_DATA
    assert conn.data_to_send().endswith(b"+OK POP3 server signing off (1 messages left)\r\n")


def test_empty_maildrop() -> None:
    edge = Edge(messages=(), uids=())
    assert edge.login().endswith(b"+OK maildrop has 0 messages (0 octets)\r\n")
    assert edge.send(b"STAT\r\n") == b"+OK 0 0\r\n"
    assert edge.send(b"LIST\r\n") == b"+OK 0 messages (0 octets)\r\n.\r\n"
    assert edge.send(b"UIDL\r\n") == b"+OK unique-id listing follows\r\n.\r\n"
    assert edge.send(b"RETR 1\r\n") == NO_SUCH


def test_messages_arriving_later_are_never_shown() -> None:
    edge = logged_in()
    edge.messages.append(b"new\r\n")
    edge.uids.append("uid-4")
    assert edge.send(b"STAT\r\n") == b"+OK 3 %d\r\n" % TOTAL
    assert edge.send(b"RETR 4\r\n") == NO_SUCH


def test_large_maildrop_listing_is_fast() -> None:
    count = 100_000
    edge = Edge(messages=[b"x\r\n"] * count, uids=[f"u{i}" for i in range(count)])
    started = time.perf_counter()
    edge.login()
    listing = edge.send(b"LIST\r\n")
    uidl = edge.send(b"UIDL\r\n")
    edge.send(b"DELE 5\r\n")
    listing2 = edge.send(b"LIST\r\n")
    elapsed = time.perf_counter() - started
    assert listing.count(b"\r\n") == count + 2
    assert uidl.endswith(b"\r\n100000 u99999\r\n.\r\n")
    assert listing2.count(b"\r\n") == count + 1
    assert elapsed < 5  # generous: a quadratic build would take minutes


# --- pipelining (RFC 2449 §6.6) -----------------------------------------------------------------
SESSION = b"USER alice\r\nPASS secret\r\nSTAT\r\nRETR 1\r\nDELE 1\r\nLIST\r\nQUIT\r\n"


def test_pipelined_commands_are_answered_in_order() -> None:
    edge = Edge()
    out = edge.send(SESSION)
    assert [type(e) for e in edge.events] == [
        LoginRequested,
        RetrieveRequested,
        UpdateRequested,
        CloseConnection,
    ]
    assert out == (
        b"+OK send PASS\r\n"
        + LOGGED_IN
        + b"+OK 3 %d\r\n" % TOTAL
        + b"+OK %d octets\r\n" % SIZES[0]
        + MESSAGES[0]
        + b".\r\n"
        + b"+OK message 1 deleted\r\n"
        + b"+OK 2 messages (%d octets)\r\n2 %d\r\n3 %d\r\n.\r\n" % (TOTAL - SIZES[0], *SIZES[1:])
        + b"+OK POP3 server signing off (2 messages left)\r\n"
    )


def test_byte_at_a_time_gives_the_same_answers() -> None:
    whole = Edge().send(SESSION)
    edge = Edge()
    out = b"".join(edge.send(SESSION[i : i + 1]) for i in range(len(SESSION)))
    assert out == whole


def test_processing_waits_while_an_event_is_pending() -> None:
    conn = ServerConnection(ServerConfig(plaintext_allowed=True))
    conn.data_to_send()
    conn.receive_data(b"USER a\r\nPASS b\r\nSTAT\r\n")
    event = conn.next_event()
    assert isinstance(event, LoginRequested)
    assert conn.data_to_send() == b"+OK send PASS\r\n"
    with pytest.raises(Pop3UsageError):
        conn.next_event()
    conn.login_succeeded([(5, "a")])
    assert conn.next_event() is NEED_DATA
    assert conn.data_to_send() == b"+OK maildrop has 1 messages (5 octets)\r\n+OK 1 5\r\n"


def test_answers_out_of_turn_raise() -> None:
    conn = ServerConnection(ServerConfig(plaintext_allowed=True, tls_available=True))
    answers: list[Callable[[], None]] = [
        lambda: conn.login_succeeded([]),
        lambda: conn.login_failed(),
        conn.reply_stls_ok,
        conn.reply_stls_failed,
        lambda: conn.send_message(b""),
        conn.message_vanished,
        lambda: conn.update_done(True),
    ]
    for answer in answers:
        with pytest.raises(Pop3UsageError):
            answer()
    conn.receive_data(b"STLS\r\n")
    assert conn.next_event() == StlsRequested()
    with pytest.raises(Pop3UsageError, match="stls"):
        conn.login_succeeded([])


# --- limits, errors, timeouts -------------------------------------------------------------------
def test_overlong_line_is_refused_and_the_next_line_works() -> None:
    edge = Edge()
    line = b"USER " + b"a" * 505 + b"\r\n"  # 512 octets: accepted
    assert edge.send(line) == b"+OK send PASS\r\n"
    line = b"USER " + b"a" * 506 + b"\r\n"  # 513 octets
    assert edge.send(line + b"CAPA\r\n").startswith(
        b"-ERR line too long\r\n+OK capability list follows\r\n"
    )


def test_overlong_line_in_pieces_is_not_buffered() -> None:
    edge = Edge()
    chunk = b"x" * 65536
    tracemalloc.start()
    try:
        out = b"".join(edge.send(chunk) for _ in range(160))  # 10 MiB without a line end
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1_000_000
    assert out == b"-ERR line too long\r\n"
    assert edge.send(b"tail of the long line\r\nNOOP\r\n") == WRONG_STATE


def test_overlong_line_is_answered_in_its_turn() -> None:
    conn = ServerConnection(ServerConfig(plaintext_allowed=True))
    conn.data_to_send()
    conn.receive_data(b"USER a\r\nPASS b\r\n" + b"x" * 600)
    conn.receive_data(b"\r\nCAPA\r\n")
    assert isinstance(conn.next_event(), LoginRequested)
    conn.login_failed()
    assert conn.next_event() is NEED_DATA
    assert conn.data_to_send().startswith(
        b"+OK send PASS\r\n" + AUTH_FAILED + b"-ERR line too long\r\n+OK capability"
    )


def test_too_much_pipelined_input_closes() -> None:
    config = ServerConfig(plaintext_allowed=True, max_buffer_size=10_000)
    conn = ServerConnection(config)
    conn.data_to_send()
    for _ in range(2000):
        conn.receive_data(b"NOOP\r\n")
    assert conn.closed
    assert conn.data_to_send() == b"-ERR too much pipelined input, closing connection\r\n"
    assert conn.next_event() == CloseConnection("too much pipelined input")


def test_processed_input_frees_the_buffer() -> None:
    edge = logged_in(ServerConfig(plaintext_allowed=True, max_buffer_size=10_000))
    for _ in range(100):
        assert edge.send(b"NOOP\r\n" * 100) == b"+OK\r\n" * 100
    assert not edge.conn.closed


def test_too_many_overlong_lines_overflow_the_buffer() -> None:
    conn = ServerConnection(ServerConfig(max_buffer_size=8192))
    conn.receive_data((b"x" * 600 + b"\r\n") * 20)
    assert conn.closed


def test_max_errors_closes_the_session() -> None:
    edge = Edge(ServerConfig(plaintext_allowed=True, max_errors=3))
    out = edge.send(b"BAD\r\nUSER alice\r\nPASS wrong\r\nSTAT\r\nCAPA\r\n")
    assert out == (
        UNKNOWN
        + b"+OK send PASS\r\n"
        + AUTH_FAILED
        + WRONG_STATE
        + b"-ERR too many errors, closing connection\r\n"
    )
    assert edge.last == CloseConnection("too many errors")


def test_no_such_message_does_not_count_as_an_error() -> None:
    edge = logged_in(ServerConfig(plaintext_allowed=True, max_errors=2))
    edge.send(b"DELE 1\r\n" + b"RETR 9\r\nRETR 1\r\n" * 5)
    assert not edge.conn.closed


def test_timeout_closes_without_update() -> None:
    edge = logged_in()
    edge.send(b"DELE 1\r\n")
    edge.conn.timeout()
    assert edge.pump() == b"-ERR autologout timer expired, closing connection\r\n"
    assert edge.last == CloseConnection("autologout timer expired")
    assert not any(isinstance(e, UpdateRequested) for e in edge.events)
    edge.conn.timeout()
    assert edge.pump() == b""


def test_answers_after_a_timeout_are_ignored() -> None:
    conn = ServerConnection(ServerConfig(plaintext_allowed=True, tls_available=True))
    conn.receive_data(b"USER a\r\nPASS b\r\n")
    conn.next_event()
    conn.timeout()
    conn.login_succeeded([(1, "a")])
    conn.login_failed()
    conn.reply_stls_ok()
    conn.reply_stls_failed()
    conn.tls_established()
    conn.send_message(b"x")
    conn.message_vanished()
    conn.update_done(True)
    assert conn.state is State.CLOSED
    assert conn.next_event() == CloseConnection("autologout timer expired")
    assert conn.data_to_send().endswith(b"-ERR autologout timer expired, closing connection\r\n")


def test_timeout_during_retrieve_then_late_answer() -> None:
    edge = logged_in()
    edge.conn.receive_data(b"RETR 1\r\n")
    assert isinstance(edge.conn.next_event(), RetrieveRequested)
    edge.conn.timeout()
    edge.conn.send_message(MESSAGES[0])
    assert edge.pump() == b"-ERR autologout timer expired, closing connection\r\n"
