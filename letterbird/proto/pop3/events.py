"""Events the sans-IO POP3 server core hands to its edge.

``ServerConnection.next_event()`` returns one of these, or :data:`NEED_DATA` when it has nothing
to do until more bytes arrive. Every event except :class:`CloseConnection` must be answered with
the method its docstring names before ``next_event()`` is called again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Final, Literal, TypeAlias

__all__ = [
    "NEED_DATA",
    "CloseConnection",
    "Event",
    "LoginRequested",
    "NeedData",
    "NextEvent",
    "RetrieveRequested",
    "StlsRequested",
    "UpdateRequested",
]


class NeedData(Enum):
    """Sentinel type of :data:`NEED_DATA` (an enum so ``is`` checks type-narrow)."""

    NEED_DATA = "NEED_DATA"


NEED_DATA: Final = NeedData.NEED_DATA
"""Nothing more to do: write ``data_to_send()`` and feed more bytes with ``receive_data()``."""


@dataclass(frozen=True, slots=True)
class LoginRequested:
    """The client sent credentials (USER/PASS, or AUTH PLAIN / AUTH LOGIN).

    Answer with ``login_succeeded(maildrop)`` or ``login_failed(code)``. ``mechanism`` is
    ``"USER"``, ``"PLAIN"`` or ``"LOGIN"``; ``authzid`` is the PLAIN authorization identity
    (``""`` when absent): the edge must refuse a non-empty one it does not allow. The password
    never appears in ``repr()``, so logging an event cannot leak it.
    """

    username: str
    password: str = field(repr=False)
    mechanism: str = "USER"
    authzid: str = ""


@dataclass(frozen=True, slots=True)
class StlsRequested:
    """The client sent STLS (RFC 2595 §4).

    Answer with ``reply_stls_ok()``, write ``data_to_send()``, run the TLS handshake, then call
    ``tls_established()``; or answer ``reply_stls_failed()`` if TLS cannot start now.
    """


@dataclass(frozen=True, slots=True)
class RetrieveRequested:
    """The client sent RETR (``top_lines is None``) or TOP (``top_lines`` body lines).

    ``index`` is the 1-based message number, ``uid`` and ``size`` come from the maildrop given
    to ``login_succeeded``. Answer with ``send_message(data)`` (the whole message: the core
    truncates for TOP and dot-stuffs), with ``send_message_part(part, last)`` calls until one
    returns True (the message streamed in parts), or ``message_vanished()``.
    """

    index: int
    uid: str
    size: int
    top_lines: int | None


@dataclass(frozen=True, slots=True)
class UpdateRequested:
    """QUIT in TRANSACTION state: enter UPDATE (RFC 1939 §6).

    Remove ``deleted_uids`` (possibly empty: release the maildrop lock all the same) and answer
    ``update_done(ok)``. The core never emits this when the connection is dropped or timed out.
    """

    deleted_uids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class CloseConnection:
    """The session is over: write ``data_to_send()`` (it holds the last reply), then close.

    Returned once; ``next_event()`` returns :data:`NEED_DATA` afterwards and the connection
    ignores further input. ``reason`` is for logs.
    """

    reason: str


Event: TypeAlias = (
    LoginRequested | StlsRequested | RetrieveRequested | UpdateRequested | CloseConnection
)
NextEvent: TypeAlias = Event | Literal[NeedData.NEED_DATA]
