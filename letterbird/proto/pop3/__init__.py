"""Sans-IO POP3 server core (RFC 1939, 2449, 2595, 3206, 5034); see :mod:`.server`."""

from letterbird.proto.pop3.events import (
    NEED_DATA,
    CloseConnection,
    Event,
    LoginRequested,
    NeedData,
    NextEvent,
    RetrieveRequested,
    StlsRequested,
    UpdateRequested,
)
from letterbird.proto.pop3.message import MessageStuffer, stuff_and_terminate, truncate_top
from letterbird.proto.pop3.replies import Reply, RespCode
from letterbird.proto.pop3.server import (
    LoginFailure,
    Pop3UsageError,
    ServerConfig,
    ServerConnection,
    State,
)

__all__ = [
    "NEED_DATA",
    "CloseConnection",
    "Event",
    "LoginFailure",
    "LoginRequested",
    "MessageStuffer",
    "NeedData",
    "NextEvent",
    "Pop3UsageError",
    "Reply",
    "RespCode",
    "RetrieveRequested",
    "ServerConfig",
    "ServerConnection",
    "State",
    "StlsRequested",
    "UpdateRequested",
    "stuff_and_terminate",
    "truncate_top",
]
