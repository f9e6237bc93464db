"""The Sender Rewriting Scheme (SRS): forwarding mail without breaking SPF, and routing the
bounces back.

When we forward a message from ``alice@alice.test`` to an address at another domain, the next
server checks SPF for ``alice.test`` against *our* IP address and fails. So the envelope sender
is rewritten to an address at our (forwarding) domain that encodes the original, and a bounce
sent to that address is turned back into the original sender.

There is no RFC; this follows the de-facto specification of libsrs2 (Shevek, 2004) as used by
postsrsd, so addresses interoperate with those tools given the same secret:

* ``SRS0=HHHH=TT=orig-domain=orig-local@our-domain`` (the "shortcut" form);
* ``HHHH`` = the first ``hash_length`` (4) characters of base64(HMAC-SHA1(secret,
  lower(TT) + lower(orig-domain) + lower(orig-local))), ASCII case-folded;
  compared case-insensitively on the way back (addresses may be lower-cased in transit);
* ``TT`` = days since the epoch, modulo 1024, as two base32 characters
  (``ABCDEFGHIJKLMNOPQRSTUVWXYZ234567``); accepted for ``max_age_days`` (21) after creation;
* an address that already is ``SRS0`` (we are the second forwarder) becomes
  ``SRS1=HHHH=first-forwarder==HHHH=TT=domain=local@our-domain`` with the hash over
  ``first-forwarder`` and the rest, so a bounce goes back to the first forwarder (the "guarded"
  scheme); an ``SRS1`` address is re-hashed keeping its inner part;
* the separator after ``SRS0``/``SRS1`` may be ``=``, ``-`` or ``+`` on input; ``=`` is written.

Several secrets may be given: the first signs, all verify (key rotation). Time is passed in
(``now``, seconds since the epoch) so tests can move it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
from collections.abc import Sequence
from pathlib import Path

__all__ = [
    "SRS_SECRET_FILE",
    "Srs",
    "SrsError",
    "is_srs_address",
    "load_secret",
]

#: Where the generated secret is kept, inside ``data_dir``.
SRS_SECRET_FILE = "srs.secret"

_TIME_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"  # SRS_TIME_BASECHARS
_TIME_PRECISION = 86400  # one day
_TIME_BITS = 5
_TIME_SLOTS = 1 << (2 * _TIME_BITS)  # two characters: 1024 days
_SEPARATORS = "=-+"
_SEP = "="


class SrsError(ValueError):
    """Not an SRS address, a malformed one, a wrong hash or an expired timestamp."""


def is_srs_address(local_part: str) -> bool:
    """True when ``local_part`` (or a whole address) has the ``SRS0``/``SRS1`` shape."""
    return (
        len(local_part) > 5
        and local_part[:4].upper() in ("SRS0", "SRS1")
        and local_part[4] in _SEPARATORS
    )


class Srs:
    """Forward and reverse SRS addresses with HMAC-SHA1 ``secrets`` (the first one signs)."""

    def __init__(
        self,
        secrets: Sequence[bytes | str],
        *,
        max_age_days: int = 21,
        hash_length: int = 4,
    ) -> None:
        keys = [s.encode() if isinstance(s, str) else bytes(s) for s in secrets]
        if not keys or not all(keys):
            raise ValueError("SRS needs at least one non-empty secret")
        if not 4 <= hash_length <= 27:  # base64 of a SHA-1 digest has 27 significant chars
            raise ValueError("hash_length must be between 4 and 27")
        if max_age_days < 0:
            raise ValueError("max_age_days must not be negative")
        self._keys = keys
        self.max_age_days = max_age_days
        self.hash_length = hash_length

    # -- the two directions ------------------------------------------------------------------
    def forward(self, sender: str, forwarder_domain: str, now: float) -> str:
        """The envelope sender to use when forwarding mail from ``sender`` via our domain.

        ``""`` (a bounce) and senders already at ``forwarder_domain`` are returned unchanged.
        """
        if not sender:
            return sender
        local, at, host = sender.rpartition("@")
        if not at or not local or not host:
            raise SrsError(f"not an address: {sender!r}")
        if host.lower() == forwarder_domain.lower():
            return sender
        tag = local[:4].upper()
        if is_srs_address(local) and tag == "SRS1":
            inner = _split(local[5:], 3)
            if inner is not None:  # keep the first forwarder and the SRS0 part, re-sign
                _, first_host, rest = inner
                hashed = self._hash(0, first_host, rest)
                return f"SRS1{_SEP}{hashed}{_SEP}{first_host}{_SEP}{rest}@{forwarder_domain}"
        elif is_srs_address(local) and tag == "SRS0":
            rest = local[4:]  # keeps its separator: "=HHHH=TT=domain=local"
            hashed = self._hash(0, host, rest)
            return f"SRS1{_SEP}{hashed}{_SEP}{host}{_SEP}{rest}@{forwarder_domain}"
        stamp = _timestamp(now)
        hashed = self._hash(0, stamp, host, local)
        return f"SRS0{_SEP}{hashed}{_SEP}{stamp}{_SEP}{host}{_SEP}{local}@{forwarder_domain}"

    def reverse(self, address: str, now: float) -> str:
        """The address an SRS address stands for; :class:`SrsError` when it is not valid.

        ``SRS0`` gives the original sender; ``SRS1`` gives the first forwarder's ``SRS0``
        address. The domain after the last ``@`` (ours) plays no part.
        """
        local = address.rpartition("@")[0] if "@" in address else address
        if not is_srs_address(local):
            raise SrsError("not an SRS address")
        if local[:4].upper() == "SRS0":
            parts = _split(local[5:], 4)
            if parts is None:
                raise SrsError("malformed SRS0 address")
            hashed, stamp, host, user = parts
            self._check_stamp(stamp, now)
            self._check_hash(hashed, stamp, host, user)
            return f"{user}@{host}"
        parts = _split(local[5:], 3)
        if parts is None:
            raise SrsError("malformed SRS1 address")
        hashed, host, user = parts
        self._check_hash(hashed, host, user)
        return f"SRS0{user}@{host}"

    # -- hashing and time --------------------------------------------------------------------
    def _hash(self, key_index: int, *parts: str) -> str:
        mac = hmac.new(self._keys[key_index], digestmod=hashlib.sha1)
        for part in parts:
            mac.update(part.encode("utf-8", "surrogateescape").lower())  # ASCII tolower()
        return base64.b64encode(mac.digest()).decode("ascii")[: self.hash_length]

    def _check_hash(self, given: str, *parts: str) -> None:
        if len(given) < self.hash_length:
            raise SrsError("SRS hash too short")
        given = given[: self.hash_length].lower()
        for index in range(len(self._keys)):
            if hmac.compare_digest(given, self._hash(index, *parts).lower()):
                return
        raise SrsError("SRS hash invalid")

    def _check_stamp(self, stamp: str, now: float) -> None:
        if len(stamp) != 2:
            raise SrsError("bad SRS timestamp")
        then = 0
        for ch in stamp.upper():
            index = _TIME_CHARS.find(ch)
            if index < 0:
                raise SrsError("bad SRS timestamp character")
            then = (then << _TIME_BITS) | index
        today = int(now // _TIME_PRECISION) % _TIME_SLOTS
        while today < then:
            today += _TIME_SLOTS
        if today > then + self.max_age_days:
            raise SrsError("SRS address expired")


def _timestamp(now: float) -> str:
    days = int(now // _TIME_PRECISION)
    mask = (1 << _TIME_BITS) - 1
    return _TIME_CHARS[(days >> _TIME_BITS) & mask] + _TIME_CHARS[days & mask]


def _split(text: str, count: int) -> list[str] | None:
    """``text`` split on the first ``count - 1`` separators; None if any part is empty.

    The last part keeps any further ``=`` (an original local part may contain one).
    """
    parts = text.split(_SEP, count - 1)
    if len(parts) != count or not all(parts):
        return None
    return parts


def load_secret(configured: str, data_dir: Path) -> bytes:
    """The configured secret, or the one generated once and kept in ``data_dir``.

    The file (mode 0600) is written to a temporary name, fsync'd and linked into place, so it
    is never seen half-written; when two processes race to create it, both use the winner's.
    """
    if configured:
        return configured.encode()
    path = data_dir / SRS_SECRET_FILE
    try:
        value = path.read_bytes().strip()
        if value:
            return value
    except FileNotFoundError:
        pass
    data_dir.mkdir(parents=True, exist_ok=True)
    fresh = secrets.token_urlsafe(32).encode()
    tmp = data_dir / f".{SRS_SECRET_FILE}.{os.getpid()}.{secrets.token_hex(4)}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(fresh + b"\n")
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(tmp, path)  # atomic, never replaces a secret already in place
        except FileExistsError:
            value = path.read_bytes().strip()
            if value:
                return value
            os.replace(tmp, path)  # an empty file left by an older crash
    finally:
        tmp.unlink(missing_ok=True)
    return fresh
