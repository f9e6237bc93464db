"""DKIM keys per domain: generation, storage on disk, and rotation with two selectors live.

Layout (``[dkim] key_dir``, default ``<data_dir>/dkim``)::

    dkim/<domain>/<selector>.pem     the private key (PKCS#8 PEM), mode 0600
    dkim/<domain>/keys.json          {"<selector>": {"algorithm", "state", "created"}}

A **generation** of keys is what one ``letterbird domain dkim generate`` creates: an RSA-2048
key and an Ed25519 key (RFC 8463) by default, selectors ``<name>r`` and ``<name>e`` (or just
``<name>`` for one algorithm). Signing uses every *active* key, so a message carries an RSA and
an Ed25519 signature; receivers that do not know Ed25519 ignore that one (RFC 8463 §3).

Rotation (RFC 6376 §3.1 suggests selectors for exactly this) keeps at most two generations
published: the first generation of a domain is active at once; a later one starts *pending*
(its DNS record must be published before it signs anything), and ``activate`` makes it active
and the previous active one *retiring* — still published, so mail signed with it in transit
still verifies — while an older retiring generation is removed (moved to ``retired/``).
``letterbird domain dns`` prints the records of every published (active, pending, retiring)
selector.

Files are read back whenever ``keys.json`` changes (the CLI runs in another process than the
server), so a rotation takes effect without a restart.
"""

from __future__ import annotations

import base64
import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from letterbird.auth.dkim import Algorithm, SigningKey
from letterbird.config import Config
from letterbird.directory.addresses import InvalidAddress, normalise_domain

__all__ = [
    "KeyInfo",
    "KeyStore",
    "key_dir",
]

State = Literal["active", "pending", "retiring"]
RSA_BITS = 2048
STATE_FILE = "keys.json"
# RFC 6376 §3.1: selector = sub-domain *( "." sub-domain ); we allow one label, no dots
_SELECTOR_RE = re.compile(r"^[a-z0-9](?:[a-z0-9\-]{0,61}[a-z0-9])?$")
_ALGORITHMS: dict[str, Algorithm] = {"rsa": "rsa-sha256", "ed25519": "ed25519-sha256"}


def key_dir(config: Config) -> Path:
    """Where keys live: ``[dkim] key_dir`` (relative to data_dir), default ``<data_dir>/dkim``."""
    path = Path(config.dkim.key_dir or "dkim").expanduser()
    return path if path.is_absolute() else config.data_path / path


@dataclass(frozen=True, slots=True)
class KeyInfo:
    """One selector of a domain."""

    domain: str
    selector: str
    algorithm: Algorithm
    state: State
    created: float
    generation: str

    @property
    def dns_name(self) -> str:
        return f"{self.selector}._domainkey.{self.domain}"


class KeyStore:
    """The key folder. Raises ValueError (with a message for people) on bad input."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._cache: dict[str, tuple[tuple[int, int], list[SigningKey]]] = {}

    # -- reading ------------------------------------------------------------------------------
    def _domain_dir(self, domain: str) -> Path:
        return self.folder / normalise_domain(domain)

    def _state(self, domain: str) -> dict[str, dict[str, object]]:
        path = self._domain_dir(domain) / STATE_FILE
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise ValueError(f"{path}: unreadable key list: {exc}") from None
        return data if isinstance(data, dict) else {}

    def selectors(self, domain: str) -> list[KeyInfo]:
        """The domain's published selectors, newest first."""
        name = normalise_domain(domain)
        out = []
        for selector, info in self._state(name).items():
            out.append(
                KeyInfo(
                    name,
                    selector,
                    _ALGORITHMS.get(str(info.get("algorithm")), "rsa-sha256"),
                    _state_of(info.get("state")),
                    float(str(info.get("created", 0))),
                    str(info.get("generation", selector)),
                )
            )
        out.sort(key=lambda k: (-k.created, k.selector))
        return out

    def domains(self) -> list[str]:
        if not self.folder.is_dir():
            return []
        return sorted(p.name for p in self.folder.iterdir() if (p / STATE_FILE).is_file())

    def public_record(self, key: KeyInfo) -> str:
        """The TXT record value for a selector (RFC 6376 §3.6.1, RFC 8463 §4.2)."""
        private = self._load_private(key.domain, key.selector)
        if isinstance(private, rsa.RSAPrivateKey):
            der = private.public_key().public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            return f"v=DKIM1; k=rsa; p={base64.b64encode(der).decode()}"
        assert isinstance(private, ed25519.Ed25519PrivateKey)
        raw = private.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        return f"v=DKIM1; k=ed25519; p={base64.b64encode(raw).decode()}"

    def _load_private(
        self, domain: str, selector: str
    ) -> rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey:
        path = self._domain_dir(domain) / f"{selector}.pem"
        try:
            key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        except (OSError, ValueError) as exc:
            raise ValueError(f"{path}: cannot read the private key: {exc}") from None
        if not isinstance(key, rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey):
            raise ValueError(f"{path}: not an RSA or Ed25519 key")
        return key

    def signing_keys(self, domain: str) -> list[SigningKey]:
        """The active keys of ``domain`` in dkimpy's forms ([] when it has none). Cached until
        ``keys.json`` changes."""
        try:
            name = normalise_domain(domain)
        except InvalidAddress:
            return []
        path = self.folder / name / STATE_FILE
        try:
            st = path.stat()
        except OSError:
            return []
        stamp = (st.st_mtime_ns, st.st_ino)
        cached = self._cache.get(name)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        keys: list[SigningKey] = []
        for info in self.selectors(name):
            if info.state != "active":
                continue
            private = self._load_private(name, info.selector)
            if isinstance(private, rsa.RSAPrivateKey):
                pem = private.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.TraditionalOpenSSL,  # PKCS#1: what dkimpy reads
                    serialization.NoEncryption(),
                )
                keys.append(SigningKey(name, info.selector, "rsa-sha256", pem))
            else:
                seed = private.private_bytes(
                    serialization.Encoding.Raw,
                    serialization.PrivateFormat.Raw,
                    serialization.NoEncryption(),
                )
                keys.append(
                    SigningKey(name, info.selector, "ed25519-sha256", base64.b64encode(seed))
                )
        keys.sort(key=lambda k: k.algorithm != "rsa-sha256")  # RSA first
        self._cache[name] = (stamp, keys)
        return keys

    # -- changing -----------------------------------------------------------------------------
    def generate(
        self,
        domain: str,
        name: str | None = None,
        *,
        algorithms: tuple[str, ...] = ("rsa", "ed25519"),
        now: float | None = None,
    ) -> list[KeyInfo]:
        """Create a generation of keys. The first generation of a domain is active at once;
        later ones are pending until :meth:`activate`."""
        domain = normalise_domain(domain)
        now = time.time() if now is None else now
        name = (name or time.strftime("lb%Y%m%d", time.gmtime(now))).lower()
        if not algorithms or any(a not in _ALGORITHMS for a in algorithms):
            raise ValueError("algorithms: expected rsa and/or ed25519")
        suffixes = {"rsa": "r", "ed25519": "e"} if len(algorithms) > 1 else {algorithms[0]: ""}
        state = self._state(domain)
        selectors = {a: name + suffixes[a] for a in algorithms}
        for selector in selectors.values():
            if not _SELECTOR_RE.match(selector):
                raise ValueError(f"selector {selector!r}: use letters, digits and '-'")
            if selector in state:
                raise ValueError(f"selector {selector!r} already exists for {domain}")
        first = not any(v.get("state") == "active" for v in state.values())
        folder = self._domain_dir(domain)
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        for algorithm, selector in selectors.items():
            private: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
            if algorithm == "rsa":
                private = rsa.generate_private_key(public_exponent=65537, key_size=RSA_BITS)
            else:
                private = ed25519.Ed25519PrivateKey.generate()
            pem = private.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
            _write_private(folder / f"{selector}.pem", pem)
            state[selector] = {
                "algorithm": algorithm,
                "state": "active" if first else "pending",
                "created": now,
                "generation": name,
            }
        self._save(domain, state)
        return [k for k in self.selectors(domain) if k.generation == name]

    def activate(self, domain: str, name: str) -> list[KeyInfo]:
        """Make a generation (or the generation of a selector) active; the active one becomes
        retiring, and an older retiring one is removed: two generations stay published."""
        domain = normalise_domain(domain)
        state = self._state(domain)
        name = name.lower()
        generation = name
        if name in state:
            generation = str(state[name].get("generation", name))
        chosen = [s for s, v in state.items() if v.get("generation", s) == generation]
        if not chosen:
            raise ValueError(f"no key {name!r} for {domain}")
        folder = self._domain_dir(domain)
        for selector, info in list(state.items()):
            if selector in chosen:
                info["state"] = "active"
            elif info.get("state") == "active":
                info["state"] = "retiring"
            elif info.get("state") == "retiring":
                retired = folder / "retired"
                retired.mkdir(exist_ok=True, mode=0o700)
                src = folder / f"{selector}.pem"
                if src.exists():
                    src.replace(retired / src.name)
                del state[selector]
        self._save(domain, state)
        return [k for k in self.selectors(domain) if k.generation == generation]

    def _save(self, domain: str, state: dict[str, dict[str, object]]) -> None:
        path = self._domain_dir(domain) / STATE_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2, sort_keys=True) + "\n")
        tmp.replace(path)


def _state_of(value: object) -> State:
    if value == "pending":
        return "pending"
    if value == "retiring":
        return "retiring"
    return "active"


def _write_private(path: Path, pem: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
