"""IMAP response codes (RFC 3501 §7.1, RFC 4315 UIDPLUS, RFC 5530, RFC 7162, RFC 7888).

Grammar (RFC 3501 §9, with RFC 4315 §4 and RFC 5530 §3 additions)::

    resp-text       = ["[" resp-text-code "]" SP] text
    resp-text-code  = "ALERT" /
                      "BADCHARSET" [SP "(" astring *(SP astring) ")" ] /
                      capability-data / "PARSE" /
                      "PERMANENTFLAGS" SP "(" [flag-perm *(SP flag-perm)] ")" /
                      "READ-ONLY" / "READ-WRITE" / "TRYCREATE" /
                      "UIDNEXT" SP nz-number / "UIDVALIDITY" SP nz-number /
                      "UNSEEN" SP nz-number /
                      atom [SP 1*<any TEXT-CHAR except "]">]
    resp-code-apnd  = "APPENDUID" SP nz-number SP append-uid
    resp-code-copy  = "COPYUID" SP nz-number SP uid-set SP uid-set

A code is a value (:class:`ResponseCode`) with named constants and constructors, so no reply
text is ever assembled by hand in the session.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import ClassVar

from letterbird.proto.imap.seqset import format_numbers

__all__ = ["ResponseCode"]


def _atoms(items: Iterable[str]) -> bytes:
    return b"(" + b" ".join(i.encode("utf-8") for i in items) + b")"


@dataclass(frozen=True, slots=True)
class ResponseCode:
    """One ``[ATOM args]`` response code; :meth:`encode` gives the bracketed bytes."""

    atom: bytes
    args: bytes = b""

    ALERT: ClassVar[ResponseCode]
    PARSE: ClassVar[ResponseCode]
    READ_ONLY: ClassVar[ResponseCode]
    READ_WRITE: ClassVar[ResponseCode]
    TRYCREATE: ClassVar[ResponseCode]
    UIDNOTSTICKY: ClassVar[ResponseCode]
    NOMODSEQ: ClassVar[ResponseCode]
    CLOSED: ClassVar[ResponseCode]
    TOOBIG: ClassVar[ResponseCode]
    UNAVAILABLE: ClassVar[ResponseCode]
    AUTHENTICATIONFAILED: ClassVar[ResponseCode]
    AUTHORIZATIONFAILED: ClassVar[ResponseCode]
    EXPIRED: ClassVar[ResponseCode]
    PRIVACYREQUIRED: ClassVar[ResponseCode]
    CONTACTADMIN: ClassVar[ResponseCode]
    NOPERM: ClassVar[ResponseCode]
    INUSE: ClassVar[ResponseCode]
    EXPUNGEISSUED: ClassVar[ResponseCode]
    CORRUPTION: ClassVar[ResponseCode]
    SERVERBUG: ClassVar[ResponseCode]
    CLIENTBUG: ClassVar[ResponseCode]
    CANNOT: ClassVar[ResponseCode]
    LIMIT: ClassVar[ResponseCode]
    OVERQUOTA: ClassVar[ResponseCode]
    ALREADYEXISTS: ClassVar[ResponseCode]
    NONEXISTENT: ClassVar[ResponseCode]
    HASCHILDREN: ClassVar[ResponseCode]
    USEATTR: ClassVar[ResponseCode]

    def encode(self) -> bytes:
        """``[ATOM]`` or ``[ATOM args]``."""
        if self.args:
            return b"[" + self.atom + b" " + self.args + b"]"
        return b"[" + self.atom + b"]"

    # -- constructors for the codes that carry data -------------------------------------------

    @classmethod
    def uidvalidity(cls, value: int) -> ResponseCode:
        return cls(b"UIDVALIDITY", b"%d" % value)

    @classmethod
    def uidnext(cls, value: int) -> ResponseCode:
        return cls(b"UIDNEXT", b"%d" % value)

    @classmethod
    def unseen(cls, seq: int) -> ResponseCode:
        return cls(b"UNSEEN", b"%d" % seq)

    @classmethod
    def highestmodseq(cls, value: int) -> ResponseCode:
        """RFC 7162 §3.1.2.1."""
        return cls(b"HIGHESTMODSEQ", b"%d" % value)

    @classmethod
    def permanentflags(cls, flags: Iterable[str]) -> ResponseCode:
        """``PERMANENTFLAGS (\\Seen ... \\*)``: include ``\\*`` to allow new keywords."""
        return cls(b"PERMANENTFLAGS", _atoms(flags))

    @classmethod
    def badcharset(cls, charsets: Iterable[str] = ("UTF-8", "US-ASCII")) -> ResponseCode:
        return cls(b"BADCHARSET", _atoms(charsets))

    @classmethod
    def capability(cls, capabilities: Iterable[str]) -> ResponseCode:
        return cls(b"CAPABILITY", " ".join(capabilities).encode("ascii"))

    @classmethod
    def appenduid(cls, uidvalidity: int, uids: int | Iterable[int]) -> ResponseCode:
        """RFC 4315 ``APPENDUID uidvalidity uid`` (several UIDs for MULTIAPPEND)."""
        uid_set = b"%d" % uids if isinstance(uids, int) else format_numbers(uids)
        return cls(b"APPENDUID", b"%d %s" % (uidvalidity, uid_set))

    @classmethod
    def copyuid(cls, uidvalidity: int, source: Iterable[int], dest: Iterable[int]) -> ResponseCode:
        """RFC 4315 ``COPYUID uidvalidity source-set dest-set``, pairwise in the given order."""
        return cls(
            b"COPYUID", b"%d %s %s" % (uidvalidity, format_numbers(source), format_numbers(dest))
        )

    @classmethod
    def modified(cls, numbers: Iterable[int]) -> ResponseCode:
        """RFC 7162 §3.1.3 ``MODIFIED seqset`` for a conditional STORE."""
        return cls(b"MODIFIED", format_numbers(numbers))


for _name in (
    "ALERT",
    "PARSE",
    "READ-ONLY",
    "READ-WRITE",
    "TRYCREATE",
    "UIDNOTSTICKY",
    "NOMODSEQ",
    "CLOSED",
    "TOOBIG",
    "UNAVAILABLE",
    "AUTHENTICATIONFAILED",
    "AUTHORIZATIONFAILED",
    "EXPIRED",
    "PRIVACYREQUIRED",
    "CONTACTADMIN",
    "NOPERM",
    "INUSE",
    "EXPUNGEISSUED",
    "CORRUPTION",
    "SERVERBUG",
    "CLIENTBUG",
    "CANNOT",
    "LIMIT",
    "OVERQUOTA",
    "ALREADYEXISTS",
    "NONEXISTENT",
    "HASCHILDREN",
    "USEATTR",
):
    setattr(ResponseCode, _name.replace("-", "_"), ResponseCode(_name.encode("ascii")))
del _name
