"""MIME parsing for the mail store: each message is parsed once, at delivery.

:func:`parse_message` turns the stored bytes into a :class:`MessageInfo` — the MIME tree with
absolute byte offsets (so IMAP ``BODY[n.MIME]``, ``BODY[n.TEXT]`` and partial fetches are served
by slicing, never by re-parsing), the RFC 3501 envelope, display fields, a text snippet and an
attachment flag — which is cached as JSON (:meth:`MessageInfo.to_json`).

Implements RFC 2045, 2046, 2047, 2183, 2231, 5322 and the RFC 3501 §6.4.5 section rules; see
:mod:`letterbird.mime.structure` for why this is hand-written rather than ``email.policy``.
"""

from letterbird.mime.address import Address
from letterbird.mime.headers import decode_words, get_header_fields, header_section_end
from letterbird.mime.structure import (
    DEFAULT_LIMITS,
    BodyPart,
    Envelope,
    Limits,
    MessageInfo,
    find_part,
    parse_message,
    section_range,
    walk,
)

__all__ = [
    "DEFAULT_LIMITS",
    "Address",
    "BodyPart",
    "Envelope",
    "Limits",
    "MessageInfo",
    "decode_words",
    "find_part",
    "get_header_fields",
    "header_section_end",
    "parse_message",
    "section_range",
    "walk",
]
