"""Mail authentication: DKIM signing of outgoing mail, and SPF/DKIM/DMARC checks of incoming
mail reported in an ``Authentication-Results`` field.

Modules:

* :mod:`~letterbird.auth.spf` — RFC 7208 ``check_host()`` with its DNS limits;
* :mod:`~letterbird.auth.dkim` — RFC 6376 / RFC 8463 signing and verification (dkimpy for
  headers and cryptography, a fast body hash, DNS fetched asynchronously beforehand);
* :mod:`~letterbird.auth.dmarc` — RFC 7489 policy discovery, alignment and disposition;
* :mod:`~letterbird.auth.results` — RFC 8601 ``Authentication-Results`` writing, reading and
  forgery detection;
* :mod:`~letterbird.auth.keys` — per-domain keys, generation and rotation;
* :mod:`~letterbird.auth.records` — the DNS records to publish (``letterbird domain dns``);
* :mod:`~letterbird.auth.lookup` — the DNS seam (async, injectable);
* :mod:`~letterbird.auth.service` — what the SMTP edge calls at MAIL FROM, during DATA and at
  the end of DATA.

The evaluation modules (spf, dkim, dmarc, results) take DNS as an async
:class:`~letterbird.auth.lookup.DnsLookup` and do no other I/O, so they are tested without a
network or a server.
"""
