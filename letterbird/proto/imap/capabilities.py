"""IMAP capability names (RFC 3501 §7.2.1 and the extensions the wire layer understands).

What a server *advertises* is the session's decision (e.g. ``STARTTLS`` only before TLS,
``LOGINDISABLED`` on plaintext); these are just the spellings, so they are never retyped.
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "APPENDLIMIT",
    "AUTH_LOGIN",
    "AUTH_PLAIN",
    "CHILDREN",
    "CONDSTORE",
    "ENABLE",
    "ESEARCH",
    "ID",
    "IDLE",
    "IMAP4REV1",
    "LIST_EXTENDED",
    "LIST_STATUS",
    "LITERAL_MINUS",
    "LITERAL_PLUS",
    "LOGINDISABLED",
    "MOVE",
    "NAMESPACE",
    "PARSED",
    "QRESYNC",
    "SASL_IR",
    "SPECIAL_USE",
    "STARTTLS",
    "STATUS_SIZE",
    "UIDPLUS",
    "UNSELECT",
    "auth",
]

IMAP4REV1: Final = "IMAP4rev1"  # RFC 3501
STARTTLS: Final = "STARTTLS"  # RFC 3501 §6.2.1
LOGINDISABLED: Final = "LOGINDISABLED"  # RFC 3501 §6.2.3
AUTH_PLAIN: Final = "AUTH=PLAIN"  # RFC 4616
AUTH_LOGIN: Final = "AUTH=LOGIN"  # draft-murchison-sasl-login
SASL_IR: Final = "SASL-IR"  # RFC 4959
LITERAL_PLUS: Final = "LITERAL+"  # RFC 7888
LITERAL_MINUS: Final = "LITERAL-"  # RFC 7888 (non-synchronising literals up to 4096 octets)
IDLE: Final = "IDLE"  # RFC 2177
NAMESPACE: Final = "NAMESPACE"  # RFC 2342
UIDPLUS: Final = "UIDPLUS"  # RFC 4315
MOVE: Final = "MOVE"  # RFC 6851
ENABLE: Final = "ENABLE"  # RFC 5161
UNSELECT: Final = "UNSELECT"  # RFC 3691
ID: Final = "ID"  # RFC 2971
CHILDREN: Final = "CHILDREN"  # RFC 3348
CONDSTORE: Final = "CONDSTORE"  # RFC 7162
QRESYNC: Final = "QRESYNC"  # RFC 7162
ESEARCH: Final = "ESEARCH"  # RFC 4731
LIST_EXTENDED: Final = "LIST-EXTENDED"  # RFC 5258
LIST_STATUS: Final = "LIST-STATUS"  # RFC 5819
SPECIAL_USE: Final = "SPECIAL-USE"  # RFC 6154
APPENDLIMIT: Final = "APPENDLIMIT"  # RFC 7889
STATUS_SIZE: Final = "STATUS=SIZE"  # RFC 8438


def auth(mechanism: str) -> str:
    """The capability announcing a SASL mechanism: ``auth("PLAIN")`` → ``AUTH=PLAIN``."""
    return "AUTH=" + mechanism.upper()


PARSED: Final = (
    IMAP4REV1,
    SASL_IR,
    LITERAL_PLUS,
    LITERAL_MINUS,
    IDLE,
    NAMESPACE,
    UIDPLUS,
    MOVE,
    ENABLE,
    UNSELECT,
    ID,
    CHILDREN,
    CONDSTORE,
    QRESYNC,
    ESEARCH,
    LIST_EXTENDED,
    LIST_STATUS,
    SPECIAL_USE,
    APPENDLIMIT,
    STATUS_SIZE,
)
"""Extensions whose command syntax :mod:`letterbird.proto.imap.parser` accepts. A server may
advertise one only if the session also implements its semantics."""
