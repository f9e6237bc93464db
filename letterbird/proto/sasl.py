"""SASL mechanisms shared by SMTP AUTH, IMAP AUTHENTICATE and POP3 AUTH (sans-IO).

PLAIN is RFC 4616: ``[authzid] NUL authcid NUL passwd``, base64-encoded on the wire.
LOGIN is the de-facto mechanism (draft-murchison-sasl-login): the server prompts
``Username:`` then ``Password:`` (each base64) and the client answers each in base64.

These helpers only decode and validate; verifying credentials is the caller's job.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass

MECHANISMS = ("PLAIN", "LOGIN")

LOGIN_USERNAME_PROMPT = base64.b64encode(b"Username:").decode("ascii")
LOGIN_PASSWORD_PROMPT = base64.b64encode(b"Password:").decode("ascii")


class SaslError(ValueError):
    """The client sent something that is not a valid SASL message (bad base64, bad shape)."""


class SaslCancelled(Exception):
    """The client cancelled the exchange by sending ``*`` (RFC 4954 §4, RFC 3501 §6.2.2)."""


@dataclass(frozen=True, slots=True)
class Credentials:
    authzid: str
    username: str
    password: str


def decode_base64(data: str | bytes) -> bytes:
    """Strictly decode one base64 SASL line; ``*`` raises :class:`SaslCancelled`."""
    raw = data.encode("ascii", "replace") if isinstance(data, str) else data
    raw = raw.strip()
    if raw == b"*":
        raise SaslCancelled()
    if raw == b"=":  # RFC 4954: an empty initial response is sent as "="
        return b""
    try:
        return base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise SaslError("invalid base64") from exc


def parse_plain(payload: bytes) -> Credentials:
    """Parse a decoded PLAIN message (RFC 4616 §2)."""
    parts = payload.split(b"\x00")
    if len(parts) != 3:
        raise SaslError("PLAIN message must have three NUL-separated fields")
    try:
        authzid, authcid, passwd = (p.decode("utf-8") for p in parts)
    except UnicodeDecodeError as exc:
        raise SaslError("PLAIN fields must be UTF-8") from exc
    if not authcid or not passwd:
        raise SaslError("empty username or password")
    if len(authcid) > 255 or len(passwd) > 255 or len(authzid) > 255:
        raise SaslError("field too long")
    return Credentials(authzid, authcid, passwd)


def decode_text(payload: bytes) -> str:
    """Decode a LOGIN username or password (UTF-8, bounded)."""
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SaslError("not UTF-8") from exc
    if "\x00" in text or len(text) > 255:
        raise SaslError("bad LOGIN field")
    return text
