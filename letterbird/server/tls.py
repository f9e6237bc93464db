"""TLS for every listener: the configured certificate, or a self-signed one made on first run.

One :class:`ssl.SSLContext` is shared by all listeners; :meth:`TlsManager.reload` (SIGHUP) loads
the certificate files again into the same context, so new handshakes use the new certificate
while established connections continue undisturbed.
"""

from __future__ import annotations

import datetime
import ipaddress
import logging
import os
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from letterbird.config import Config
from letterbird.logs import event

log = logging.getLogger("letterbird.tls")

__all__ = ["TlsManager", "make_self_signed"]


def make_self_signed(cert_path: Path, key_path: Path, hostname: str) -> None:
    """Write a self-signed ECDSA P-256 certificate for ``hostname`` (plus localhost)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname[:64])])
    now = datetime.datetime.now(datetime.UTC)
    sans: list[x509.GeneralName] = [x509.DNSName(hostname), x509.DNSName("localhost")]
    sans.append(x509.IPAddress(ipaddress.ip_address("127.0.0.1")))
    sans.append(x509.IPAddress(ipaddress.ip_address("::1")))
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=825))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


class TlsManager:
    def __init__(self, config: Config) -> None:
        self.config = config
        if config.tls.cert:
            self.cert_path = config.resolve_path(config.tls.cert)
            self.key_path = config.resolve_path(config.tls.key)
            self.self_signed = False
        else:
            tls_dir = config.data_path / "tls"
            self.cert_path = tls_dir / "selfsigned-cert.pem"
            self.key_path = tls_dir / "selfsigned-key.pem"
            self.self_signed = True
        self._context: ssl.SSLContext | None = None

    @property
    def context(self) -> ssl.SSLContext:
        if self._context is None:
            self._context = self._load()
        return self._context

    def _load(self) -> ssl.SSLContext:
        if self.self_signed and not self.cert_path.exists():
            make_self_signed(self.cert_path, self.key_path, self.config.hostname)
            event(log, "tls.generated", cert=self.cert_path)
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(self.cert_path, self.key_path)
        return ctx

    def reload(self) -> None:
        """Load the certificate files again (SIGHUP). Keeps the old ones on error."""
        try:
            self.context.load_cert_chain(self.cert_path, self.key_path)
        except (OSError, ssl.SSLError) as exc:
            event(log, "tls.reload_failed", level=logging.ERROR, error=exc)
        else:
            event(log, "tls.reloaded", cert=self.cert_path)
