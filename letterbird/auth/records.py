"""The DNS records a postmaster publishes for one of our domains (``letterbird domain dns``).

MX (RFC 5321 §5), SPF (RFC 7208 §3), one DKIM key record per published selector (RFC 6376
§3.6.1), DMARC (RFC 7489 §6.1), MTA-STS (RFC 8461 §3.1) and TLS-RPT (RFC 8460 §3)
suggestions, and the reverse-DNS name the server introduces itself with (the HELO name, which
should be the PTR name of the outgoing address and resolve back to it, RFC 8601 §3 "iprev").
Printed in zone-file form; TXT data longer than 255 octets is split into several strings
(RFC 7208 §3.3, RFC 6376 §3.6.2.2).
"""

from __future__ import annotations

import ipaddress
import time
from dataclasses import dataclass

from letterbird.auth.keys import KeyStore
from letterbird.config import Config
from letterbird.directory.addresses import normalise_domain

__all__ = ["DnsRecord", "domain_records", "format_zone", "txt_strings"]


@dataclass(frozen=True, slots=True)
class DnsRecord:
    name: str  # absolute, without the final dot
    rtype: str
    data: str  # MX: "10 host"; TXT: the text (split when printed)
    comment: str = ""


def txt_strings(text: str) -> str:
    """TXT data as zone-file character-strings of at most 255 octets each."""
    chunks = [text[i : i + 255] for i in range(0, len(text), 255)] or [""]
    return " ".join('"' + c.replace("\\", "\\\\").replace('"', '\\"') + '"' for c in chunks)


def domain_records(
    config: Config, domain: str, keys: KeyStore, *, now: float | None = None
) -> list[DnsRecord]:
    """Every record to publish for ``domain``."""
    domain = normalise_domain(domain)
    host = config.hostname.lower().rstrip(".")
    helo = (config.delivery.helo_name or host).lower().rstrip(".")
    source = config.delivery.source_address
    out: list[DnsRecord] = [
        DnsRecord(domain, "MX", f"10 {host}.", "mail for the domain goes to this server"),
    ]
    spf = ["v=spf1", "mx"]
    if source:
        version = ipaddress.ip_address(source).version
        spf.append(f"ip{version}:{source}")
    elif helo != host:
        spf.append(f"a:{helo}")
    spf.append("-all")
    out.append(DnsRecord(domain, "TXT", " ".join(spf), "SPF: who may send as the domain"))
    published = keys.selectors(domain)
    if not published:
        out.append(
            DnsRecord(
                f"<selector>._domainkey.{domain}",
                "TXT",
                "",
                f"no DKIM key yet: run 'letterbird domain dkim generate {domain}'",
            )
        )
    for key in published:
        out.append(
            DnsRecord(
                key.dns_name,
                "TXT",
                keys.public_record(key),
                f"DKIM {key.algorithm}, {key.state}",
            )
        )
    out.append(
        DnsRecord(
            f"_dmarc.{domain}",
            "TXT",
            f"v=DMARC1; p=quarantine; adkim=r; aspf=r; rua=mailto:postmaster@{domain}",
            "DMARC: start with p=none to watch reports, then quarantine or reject",
        )
    )
    stamp = time.strftime("%Y%m%d%H%M%S", time.gmtime(time.time() if now is None else now))
    out.append(
        DnsRecord(
            f"_mta-sts.{domain}",
            "TXT",
            f"v=STSv1; id={stamp}",
            f"MTA-STS: serve https://mta-sts.{domain}/.well-known/mta-sts.txt with "
            f"'version: STSv1', 'mode: testing', 'mx: {host}', 'max_age: 604800'",
        )
    )
    out.append(
        DnsRecord(
            f"_smtp._tls.{domain}",
            "TXT",
            f"v=TLSRPTv1; rua=mailto:postmaster@{domain}",
            "TLS-RPT: where senders report TLS problems",
        )
    )
    if source:
        rtype = "A" if ipaddress.ip_address(source).version == 4 else "AAAA"
        address = source
    else:
        rtype, address = "A", "<the server's address>"
    out.append(DnsRecord(host, rtype, address, "the MX host name must resolve to the server"))
    out.append(
        DnsRecord(
            _reverse_name(source) if source else "<reverse name of the outgoing address>",
            "PTR",
            f"{helo}.",
            f"the server says EHLO {helo}: the outgoing address's PTR must name it, "
            f"and {helo} must resolve back to that address",
        )
    )
    return out


def _reverse_name(ip: str) -> str:
    return ipaddress.ip_address(ip).reverse_pointer


def format_zone(records: list[DnsRecord]) -> str:
    """Zone-file lines, each preceded by its comment."""
    lines: list[str] = []
    for r in records:
        if r.comment:
            lines.append(f"; {r.comment}")
        if r.rtype == "TXT" and not r.data:
            continue
        if r.rtype == "TXT":
            data = txt_strings(r.data)
            if len(r.data) > 255:
                data = f"( {data} )"
        else:
            data = r.data
        name = r.name if r.name.startswith("<") else f"{r.name}."
        lines.append(f"{name}\tIN\t{r.rtype}\t{data}")
    return "\n".join(lines) + "\n"
