"""Sans-IO SMTP: the server core (RFC 5321 and extensions), replies, addresses, parameters.

See :mod:`letterbird.proto.smtp.server` for the connection API and the policies it applies.
"""

from .address import (
    AddressError,
    Mailbox,
    NonAsciiAddressError,
    parse_forward_path,
    parse_mailbox,
    parse_path,
    parse_reverse_path,
    split_path_argument,
)
from .body import BodyReader
from .params import (
    MailParams,
    OriginalRecipient,
    ParamError,
    RcptParams,
    decode_xtext,
    parse_mail_params,
    parse_rcpt_params,
)
from .replies import Reply, encode
from .server import (
    CLOSED,
    NEED_DATA,
    AuthRequested,
    ConnectionClosing,
    DataAborted,
    DataChunk,
    DataComplete,
    Envelope,
    Event,
    EventOrSentinel,
    Hello,
    MailFrom,
    RcptTo,
    Sentinel,
    SmtpServerConfig,
    SmtpServerConnection,
    StartTlsRequested,
)

__all__ = [
    "CLOSED",
    "NEED_DATA",
    "AddressError",
    "AuthRequested",
    "BodyReader",
    "ConnectionClosing",
    "DataAborted",
    "DataChunk",
    "DataComplete",
    "Envelope",
    "Event",
    "EventOrSentinel",
    "Hello",
    "MailFrom",
    "MailParams",
    "Mailbox",
    "NonAsciiAddressError",
    "OriginalRecipient",
    "ParamError",
    "RcptParams",
    "RcptTo",
    "Reply",
    "Sentinel",
    "SmtpServerConfig",
    "SmtpServerConnection",
    "StartTlsRequested",
    "decode_xtext",
    "encode",
    "parse_forward_path",
    "parse_mail_params",
    "parse_mailbox",
    "parse_path",
    "parse_rcpt_params",
    "parse_reverse_path",
    "split_path_argument",
]
