"""Mailbox-name rules shared by every backend and protocol (the logic above the backends).

Names are UTF-8 with ``/`` as the hierarchy delimiter. ``INBOX`` is case-insensitive
(RFC 3501 §5.1) and always stored as ``INBOX``; every other name is case-sensitive.
"""

from __future__ import annotations

from letterbird.storage.interface import SPECIAL_USE_DEFAULTS

DELIMITER = "/"
MAX_NAME_LENGTH = 512
_FORBIDDEN = set("*%\r\n\x00")

_DEFAULT_ROLES = {name: role for name, role in SPECIAL_USE_DEFAULTS}


class InvalidMailboxName(ValueError):
    pass


def normalise(name: str) -> str:
    """Canonical form of a mailbox name: ``inbox`` → ``INBOX``, also as a prefix."""
    if name.upper() == "INBOX":
        return "INBOX"
    if name[:6].upper() == "INBOX" + DELIMITER:
        return "INBOX" + name[5:]
    return name


def validate(name: str) -> str:
    """Return the canonical name or raise :class:`InvalidMailboxName` with a reason."""
    name = normalise(name)
    if not name:
        raise InvalidMailboxName("empty mailbox name")
    if len(name.encode("utf-8")) > MAX_NAME_LENGTH:
        raise InvalidMailboxName("mailbox name too long")
    if any(c in _FORBIDDEN or ord(c) < 0x20 or ord(c) == 0x7F for c in name):
        raise InvalidMailboxName("mailbox name contains a forbidden character")
    if name.startswith(DELIMITER) or name.endswith(DELIMITER) or DELIMITER * 2 in name:
        raise InvalidMailboxName("mailbox name has an empty hierarchy level")
    return name


def default_role(name: str) -> str | None:
    return _DEFAULT_ROLES.get(name)


def parents(name: str) -> list[str]:
    """``a/b/c`` → ``["a", "a/b"]``."""
    parts = name.split(DELIMITER)
    return [DELIMITER.join(parts[:i]) for i in range(1, len(parts))]
