"""Address handling shared by every protocol (DESIGN.md §9).

- Domains are compared case-insensitively in IDNA2008 A-label form: ``bücher.test`` and
  ``xn--bcher-kva.test`` are the same domain. Conversion uses the ``idna`` package (IDNA2008 with
  UTS #46 mapping), not Python's built-in IDNA 2003 codec.
- Local parts are matched case-insensitively for delivery but kept as written.
- ``user+tag@domain`` delivers to ``user`` (the separator is a setting).
"""

from __future__ import annotations

from dataclasses import dataclass

import idna

__all__ = ["Address", "InvalidAddress", "display_domain", "normalise_domain", "parse_address"]


class InvalidAddress(ValueError):
    pass


def normalise_domain(domain: str) -> str:
    """Return the lowercase A-label form of ``domain`` (IDNA2008), or raise InvalidAddress."""
    d = domain.strip().rstrip(".")
    if not d:
        raise InvalidAddress("empty domain")
    if d.startswith("[") and d.endswith("]"):  # address literal: keep as is
        return d.lower()
    if d.isascii():
        d = d.lower()
        if all(_ascii_label_ok(label) for label in d.split(".")):
            return d
    try:
        return idna.encode(d, uts46=True).decode("ascii").lower()
    except (idna.IDNAError, UnicodeError) as exc:
        raise InvalidAddress(f"invalid domain {domain!r}: {exc}") from None


def _ascii_label_ok(label: str) -> bool:
    if not 0 < len(label) <= 63 or label.startswith("-") or label.endswith("-"):
        return False
    if label.startswith("xn--"):
        try:
            idna.decode(label)
        except (idna.IDNAError, UnicodeError):
            return False
        return True
    return all(c.isalnum() or c in "-_" for c in label)


def display_domain(domain: str) -> str:
    """The Unicode (U-label) form of an A-label domain, for people."""
    try:
        return idna.decode(domain)
    except (idna.IDNAError, UnicodeError):
        return domain


@dataclass(frozen=True, slots=True)
class Address:
    local: str  # as written
    domain: str  # A-label, lowercase

    @property
    def key(self) -> tuple[str, str]:
        """The comparison key: case-folded local part and normalised domain."""
        return self.local.casefold(), self.domain

    def __str__(self) -> str:
        return f"{self.local}@{self.domain}"

    def base(self, delimiter: str) -> Address:
        """``user+tag`` → ``user`` (a leading delimiter is not a subaddress)."""
        if delimiter and delimiter in self.local[1:]:
            return Address(self.local[: self.local.index(delimiter, 1)], self.domain)
        return self


def parse_address(text: str) -> Address:
    """Split ``local@domain`` (no angle brackets) and normalise the domain."""
    text = text.strip()
    if text.startswith("<") and text.endswith(">"):
        text = text[1:-1]
    local, sep, domain = text.rpartition("@")
    if not sep or not local or not domain:
        raise InvalidAddress(f"not an address: {text!r}")
    if len(local.encode("utf-8")) > 64 and not local.startswith('"'):
        raise InvalidAddress("local part longer than 64 octets")
    if any(c in local for c in "\r\n\x00 ") and not local.startswith('"'):
        raise InvalidAddress("invalid character in local part")
    return Address(local, normalise_domain(domain))
