"""Typed, validated configuration loaded from one TOML file.

Every setting has a default, so Letterbird runs with no file at all. Unknown keys and values of
the wrong type are errors that name the key (``limits.smtp_message_size: expected an integer``).
Relative paths are relative to the config file's folder, or to the working directory when there
is no file (DESIGN.md §8).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import socket
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "AuthCheckSettings",
    "AuthSettings",
    "Config",
    "ConfigError",
    "DeliverySettings",
    "DkimSettings",
    "DnsSettings",
    "Limits",
    "ListenSettings",
    "ProxySettings",
    "StorageSettings",
    "SubmissionSettings",
    "TlsSettings",
    "WebmailSettings",
    "load_config",
    "parse_duration",
    "parse_hostport",
]


class ConfigError(ValueError):
    """A configuration problem; the message names the offending key."""


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0, None: 1.0}


def parse_duration(value: str | int | float) -> float:
    """``"90s"``, ``"5m"``, ``"4h"``, ``"5d"`` or a number of seconds → seconds."""
    if isinstance(value, bool):
        raise ValueError("expected a duration")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return float(value)
    m = _DURATION.match(value)
    if not m:
        raise ValueError(f"expected a duration like '30s', '5m', '4h' or '5d', got {value!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


def parse_hostport(value: str) -> tuple[str, int]:
    """``"127.0.0.1:2525"``, ``"[::1]:2525"`` or ``":2525"`` → (host, port)."""
    if value.startswith("["):
        host, sep, port = value[1:].partition("]:")
        if not sep:
            raise ValueError(f"expected [ipv6]:port, got {value!r}")
    else:
        host, sep, port = value.rpartition(":")
        if not sep:
            raise ValueError(f"expected host:port, got {value!r}")
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"bad port in {value!r}")
    return host or "0.0.0.0", int(port)


# A field whose value is a duration in seconds is marked with this metadata.
def _duration(default: float) -> Any:
    return field(default=default, metadata={"duration": True})


# A duration that may be switched off with "" (stored as 0.0).
def _optional_duration(default: float) -> Any:
    return field(default=default, metadata={"duration": True, "off": True})


@dataclass(frozen=True)
class StorageSettings:
    # sqlite:///PATH, or postgresql://user[:password]@host[:port]/db[?schema=NAME] for
    # several nodes sharing one database. Empty = sqlite:///<data_dir>/mail.db.
    url: str = ""
    # Upgrade the schema when `serve` starts (else only `letterbird migrate` does, and serve
    # refuses an out-of-date schema). PostgreSQL only: SQLite always migrates on open.
    auto_migrate: bool = True
    # PostgreSQL connections per node (reads share them; one more per writer).
    pool_size: int = 10


@dataclass(frozen=True)
class ProxySettings:
    """``[proxy]``: PROXY protocol v1/v2 (HAProxy) in front of the listeners (DESIGN.md §10)."""

    # Peers (addresses or networks like "10.0.0.0/8") whose connections must start with a
    # PROXY header; the client address it gives replaces theirs. Others never send one.
    trusted: list[str] = field(default_factory=list)
    # How long a trusted peer has to send the header.
    timeout: float = _duration(5.0)


@dataclass(frozen=True)
class ListenSettings:
    smtp: list[str] = field(default_factory=lambda: ["127.0.0.1:2525"])
    submission: list[str] = field(default_factory=lambda: ["127.0.0.1:2587"])
    submissions: list[str] = field(default_factory=lambda: ["127.0.0.1:2465"])
    imap: list[str] = field(default_factory=lambda: ["127.0.0.1:2143"])
    imaps: list[str] = field(default_factory=lambda: ["127.0.0.1:2993"])
    pop3: list[str] = field(default_factory=lambda: ["127.0.0.1:2110"])
    pop3s: list[str] = field(default_factory=lambda: ["127.0.0.1:2995"])
    http: list[str] = field(default_factory=lambda: ["127.0.0.1:8080"])
    https: list[str] = field(default_factory=list)

    def items(self) -> list[tuple[str, list[str]]]:
        return [(f.name, getattr(self, f.name)) for f in dataclasses.fields(self)]


@dataclass(frozen=True)
class TlsSettings:
    cert: str = ""  # empty: a self-signed certificate is generated in data_dir
    key: str = ""


@dataclass(frozen=True)
class DnsSettings:
    nameservers: list[str] = field(default_factory=list)  # "ip" or "ip:port"; empty = system
    timeout: float = _duration(5.0)
    rdns_timeout: float = _duration(2.0)


@dataclass(frozen=True)
class AuthSettings:
    # argon2id cost (RFC 9106 second recommended option is t=3, m=64 MiB, p=4).
    argon2_time_cost: int = 3
    argon2_memory_kib: int = 65536
    argon2_parallelism: int = 4
    # Successful verifications cached in memory (DESIGN.md hot-path notes).
    cache_ttl: float = _duration(300.0)
    # Failed logins: after `max_failures` within `failure_window`, further attempts for that
    # account or client address are refused for `lockout` (and each failure is delayed).
    max_failures: int = 10
    failure_window: float = _duration(900.0)
    lockout: float = _duration(300.0)
    failure_delay: float = _duration(1.0)


@dataclass(frozen=True)
class Limits:
    # SMTP
    smtp_message_size: int = 52428800
    smtp_recipients: int = 100
    smtp_line_length: int = 2048
    smtp_data_line_length: int = 10000
    smtp_errors: int = 10
    smtp_received_headers: int = 50
    smtp_connections: int = 1000
    smtp_connections_per_ip: int = 20
    smtp_command_timeout: float = _duration(300.0)  # RFC 5321 §4.5.3.2.7: 5 minutes
    smtp_data_timeout: float = _duration(600.0)  # RFC 5321 §4.5.3.2.6: 10 minutes (server)
    # IMAP
    imap_line_length: int = 65536
    imap_literal_size: int = 52428800
    imap_idle_timeout: float = _duration(1800.0)  # RFC 3501 §5.4: at least 30 minutes
    imap_login_timeout: float = _duration(60.0)
    imap_output_buffer: int = 4194304
    imap_connections_per_ip: int = 50
    # POP3
    pop3_line_length: int = 512
    pop3_idle_timeout: float = _duration(600.0)  # RFC 1939 §3: at least 10 minutes
    pop3_errors: int = 10
    pop3_connections_per_ip: int = 20
    # every protocol: a peer that takes none of our output for this long is disconnected
    write_timeout: float = _duration(60.0)
    # HTTP
    http_upload_size: int = 26214400
    # Storage
    account_quota: int = 0  # bytes; 0 = unlimited


@dataclass(frozen=True)
class SubmissionSettings:
    """``[submission]``: mail sent by authenticated users (ports 587/465, RFC 6409/8314)."""

    # Sending limits per account over a sliding hour, counted in memory on each node (a
    # cluster of N nodes allows up to N times as much). Past them MAIL (messages) or RCPT
    # (recipients) is answered 450 4.7.1. 0 = unlimited.
    max_messages_per_hour: int = 500
    max_recipients_per_hour: int = 2000
    # HMAC key for SRS forwarding addresses (SRS0=hash=tt=domain=local@ours). Empty: a random
    # key is generated once and kept in <data_dir>/srs.secret (the same on every node that
    # shares data_dir; set it explicitly for a cluster).
    srs_secret: str = ""
    # Days an SRS address stays valid for bounces (libsrs2/postsrsd default: 21).
    srs_max_age_days: int = 21
    # Largest header section of a submitted message (the part rewritten before storing);
    # bigger messages are refused with 552 5.3.4.
    max_header_size: int = 262144


TLS_POLICIES = ("none", "opportunistic", "require")


@dataclass(frozen=True)
class DeliverySettings:
    """``[delivery]``: the outgoing queue and the SMTP client (DESIGN.md §6)."""

    # Retry intervals after each failed attempt; the last one repeats.
    retry: list[float] = field(
        default_factory=lambda: [60.0, 300.0, 900.0, 1800.0], metadata={"duration": True}
    )
    # A message still undelivered this long after it was queued bounces (4.4.7).
    lifetime: float = _duration(5 * 86400.0)
    # A "delayed" DSN is sent once after this long (NOTIFY=DELAY or default); "" = never.
    warn_after: float = _optional_duration(4 * 3600.0)
    # Port used for hosts found by MX / A lookup (routes may name their own).
    smtp_port: int = 25
    # STARTTLS: none | opportunistic | require (require: encrypted, certificate not verified).
    tls: str = "opportunistic"
    # Static next hop per recipient domain ("host:port"); "*" matches every other domain.
    routes: dict[str, str] = field(default_factory=dict)
    # Simultaneous outgoing connections, overall and per destination host (IP and port).
    concurrency: int = 20
    per_host_concurrency: int = 5
    # Messages sent over one connection before it is closed, and how long an idle connection
    # waits for more mail to the same next hop before QUIT (0 = close at once).
    messages_per_connection: int = 50
    connection_linger: float = _duration(1.0)
    # Connection-level failures in a row after which a host is skipped for a retry interval.
    host_failures: int = 3
    # Name sent in EHLO ("" = hostname); local address to connect from ("" = any).
    helo_name: str = ""
    source_address: str = ""
    # Queue entries are leased while being delivered (renewed meanwhile); the lease should be
    # longer than the SMTP timeouts so that a slow live node is never raced by another.
    lease: float = _duration(900.0)
    connect_timeout: float = _duration(30.0)
    command_timeout: float = _duration(300.0)  # RFC 5321 §4.5.3.2: 5 minutes
    data_timeout: float = _duration(600.0)  # RFC 5321 §4.5.3.2.6: 10 minutes after the dot
    # How often the queue is polled for changes made by other processes (CLI, other nodes).
    poll_interval: float = _duration(5.0)
    # RET=FULL returns at most this much of the original message (headers only beyond it).
    dsn_max_full: int = 10485760


@dataclass(frozen=True)
class DkimSettings:
    """``[dkim]``: DKIM signing of outgoing mail (RFC 6376, RFC 8463)."""

    # Sign mail submitted by users and mail forwarded by us, with the active keys of the From:
    # domain (else the envelope sender's, or for forwarding the forwarding domain's).
    sign: bool = True
    # Key folder (`letterbird domain dkim generate` writes there); relative to data_dir.
    key_dir: str = "dkim"


@dataclass(frozen=True)
class AuthCheckSettings:
    """``[auth_checks]``: SPF, DKIM and DMARC on mail from unauthenticated clients on the MX
    port (RFC 7208, 6376, 7489), reported in one Authentication-Results field (RFC 8601)."""

    enabled: bool = True
    # DMARC p=reject answers 550 5.7.1 at the end of DATA, p=quarantine files into Junk;
    # false: results are only recorded.
    dmarc_enforce: bool = True
    # The longest the checks may take (SPF, DKIM keys, DMARC record); then "temperror".
    timeout: float = _duration(20.0)
    # DKIM signatures verified per message (later ones are reported "neutral").
    max_signatures: int = 5
    # Also check the HELO identity with SPF (RFC 7208 §2.3).
    check_helo: bool = True
    # Clients not checked (local injection, trusted relays): addresses or networks.
    skip_networks: list[str] = field(default_factory=lambda: ["127.0.0.0/8", "::1/128"])


@dataclass(frozen=True)
class WebmailSettings:
    """``[web]``: the webmail on ``[listen] http``/``https`` (request bodies are capped by
    ``[limits] http_upload_size``, what Send accepts by the SMTP limits)."""

    page_size: int = 50  # messages per list page
    # How long a login stays valid (absolute, from the login).
    session_lifetime: float = _duration(24 * 3600.0)
    max_attachments: int = 50  # per message composed
    text_display_bytes: int = 2097152  # of one text part shown (the rest is cut)
    index_mailboxes: int = 64  # folders whose date order is kept in memory
    search_results: int = 1000  # matches a folder search keeps
    events_per_account: int = 16  # live-update streams open at once per account
    heartbeat: float = _duration(20.0)  # keep-alive comment interval on a live-update stream
    cid_token_lifetime: float = _duration(3600.0)  # how long an inline-image link stays valid


@dataclass(frozen=True)
class Config:
    hostname: str = field(default_factory=socket.getfqdn)
    data_dir: str = "./letterbird-data"
    postmaster: str = ""  # empty: the first account created receives postmaster@ mail
    recipient_delimiter: str = "+"
    pop3_marks_seen: bool = True
    # Serving processes on this machine (letterbird.server.workers): 0 = one per CPU core.
    workers: int = 0
    storage: StorageSettings = field(default_factory=StorageSettings)
    listen: ListenSettings = field(default_factory=ListenSettings)
    tls: TlsSettings = field(default_factory=TlsSettings)
    dns: DnsSettings = field(default_factory=DnsSettings)
    auth: AuthSettings = field(default_factory=AuthSettings)
    limits: Limits = field(default_factory=Limits)
    proxy: ProxySettings = field(default_factory=ProxySettings)
    delivery: DeliverySettings = field(default_factory=DeliverySettings)
    submission: SubmissionSettings = field(default_factory=SubmissionSettings)
    dkim: DkimSettings = field(default_factory=DkimSettings)
    auth_checks: AuthCheckSettings = field(default_factory=AuthCheckSettings)
    web: WebmailSettings = field(default_factory=WebmailSettings)
    # Set by the loader: the folder relative paths are resolved against.
    base_dir: str = field(default=".", metadata={"internal": True})

    # -- derived values -------------------------------------------------------------
    def resolve_path(self, value: str) -> Path:
        p = Path(value).expanduser()
        return p if p.is_absolute() else (Path(self.base_dir) / p).resolve()

    @property
    def data_path(self) -> Path:
        return self.resolve_path(self.data_dir)

    @property
    def storage_url_for_display(self) -> str:
        """The storage URL with any password replaced by ``***`` (for logs and output)."""
        return redact_url(self.storage_url)

    @property
    def storage_url(self) -> str:
        if self.storage.url:
            url = self.storage.url
            if url.startswith("sqlite:///"):
                return "sqlite:///" + str(self.resolve_path(url[len("sqlite:///") :]))
            return url
        return "sqlite:///" + str(self.data_path / "mail.db")


def redact_url(url: str) -> str:
    """``postgresql://user:secret@host/db`` → ``postgresql://user:***@host/db``."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    netloc, slash, path = rest.partition("/")
    userinfo, at, host = netloc.rpartition("@")
    if not at or ":" not in userinfo:
        return url
    user = userinfo.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}{slash}{path}"


def _type_name(tp: Any) -> str:
    return {
        int: "an integer",
        str: "a string",
        bool: "true or false",
        float: "a number",
    }.get(tp, str(tp))


def _convert(key: str, tp: Any, value: Any, f: dataclasses.Field[Any]) -> Any:
    origin = typing.get_origin(tp)
    if f.metadata.get("duration"):
        if origin is list:
            if not isinstance(value, list):
                raise ConfigError(f"{key}: expected a list of durations")
            return [_convert(f"{key}[{i}]", float, v, f) for i, v in enumerate(value)]
        if value == "" and f.metadata.get("off"):
            return 0.0
        try:
            return parse_duration(value)
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"{key}: {exc}") from None
    if origin is dict:
        _, item_tp = typing.get_args(tp)
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a table")
        return {str(k): _convert(f"{key}.{k}", item_tp, v, f) for k, v in value.items()}
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list of {_type_name(item_tp)}s")
        return [_convert(f"{key}[{i}]", item_tp, v, f) for i, v in enumerate(value)]
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer")
        if value < 0:
            raise ConfigError(f"{key}: must not be negative")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{key}: expected a number")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string")
        return value
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a table")
        return _build(tp, value, key + ".")
    if isinstance(tp, types.UnionType):  # pragma: no cover - no unions in settings yet
        raise ConfigError(f"{key}: unsupported type")
    raise ConfigError(f"{key}: unsupported type {tp!r}")  # pragma: no cover


def _build(cls: type[Any], data: dict[str, Any], prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key not in fields:
            raise ConfigError(f"{prefix}{key}: unknown setting")
        kwargs[key] = _convert(prefix + key, hints[key], value, fields[key])
    return cls(**kwargs)


def _validate(cfg: Config) -> None:
    for name, addrs in cfg.listen.items():
        for i, addr in enumerate(addrs):
            try:
                parse_hostport(addr)
            except ValueError as exc:
                raise ConfigError(f"listen.{name}[{i}]: {exc}") from None
    for i, ns in enumerate(cfg.dns.nameservers):
        try:
            if ":" in ns and not ns.startswith("[") and ns.count(":") == 1:
                parse_hostport(ns)
        except ValueError as exc:
            raise ConfigError(f"dns.nameservers[{i}]: {exc}") from None
    if bool(cfg.tls.cert) != bool(cfg.tls.key):
        raise ConfigError("tls.cert: tls.cert and tls.key must be given together")
    url = cfg.storage.url
    if url and not url.startswith("sqlite:///"):
        if not url.startswith(("postgresql://", "postgres://")):
            raise ConfigError(
                f"storage.url: unsupported storage URL {url!r} "
                "(use sqlite:///PATH or postgresql://user@host:port/db)"
            )
        from letterbird.storage.pg_schema import parse_pg_url

        try:
            parse_pg_url(url)
        except ValueError as exc:
            raise ConfigError(f"storage.url: {exc}") from None
    if cfg.storage.pool_size < 2:
        raise ConfigError("storage.pool_size: must be at least 2")
    for i, net in enumerate(cfg.proxy.trusted):
        try:
            ipaddress.ip_network(net, strict=False)
        except ValueError:
            raise ConfigError(
                f"proxy.trusted[{i}]: expected an address or network, got {net!r}"
            ) from None
    if cfg.postmaster and "@" not in cfg.postmaster:
        raise ConfigError("postmaster: expected an address like admin@example.test")
    if len(cfg.recipient_delimiter) > 1:
        raise ConfigError("recipient_delimiter: must be one character or empty")
    if not cfg.hostname:
        raise ConfigError("hostname: must not be empty")
    _validate_delivery(cfg.delivery)
    _validate_auth_checks(cfg.auth_checks)
    _validate_web(cfg.web)


def _validate_web(w: WebmailSettings) -> None:
    for name in ("page_size", "index_mailboxes", "search_results", "events_per_account"):
        if getattr(w, name) < 1:
            raise ConfigError(f"web.{name}: must be at least 1")
    for name in ("session_lifetime", "heartbeat", "cid_token_lifetime"):
        if getattr(w, name) <= 0:
            raise ConfigError(f"web.{name}: must be positive")


def _validate_auth_checks(a: AuthCheckSettings) -> None:
    if a.timeout <= 0:
        raise ConfigError("auth_checks.timeout: must be positive")
    for i, net in enumerate(a.skip_networks):
        try:
            ipaddress.ip_network(net, strict=False)
        except ValueError:
            raise ConfigError(
                f"auth_checks.skip_networks[{i}]: expected an address or network, got {net!r}"
            ) from None


def _validate_delivery(d: DeliverySettings) -> None:
    from letterbird.delivery.mx import parse_route  # here: letterbird.delivery imports config

    if not d.retry or any(v <= 0 for v in d.retry):
        raise ConfigError("delivery.retry: expected a list of positive durations")
    if d.lifetime <= 0:
        raise ConfigError("delivery.lifetime: must be positive")
    if d.tls not in TLS_POLICIES:
        raise ConfigError(f"delivery.tls: expected one of {', '.join(TLS_POLICIES)}")
    if not 0 < d.smtp_port <= 65535:
        raise ConfigError("delivery.smtp_port: expected a port number")
    for name in ("concurrency", "per_host_concurrency", "messages_per_connection"):
        if getattr(d, name) < 1:
            raise ConfigError(f"delivery.{name}: must be at least 1")
    for name in ("lease", "connect_timeout", "command_timeout", "data_timeout", "poll_interval"):
        if getattr(d, name) <= 0:
            raise ConfigError(f"delivery.{name}: must be positive")
    for domain, target in d.routes.items():
        try:
            parse_route(target, d.smtp_port)
        except ValueError as exc:
            raise ConfigError(f"delivery.routes.{domain}: {exc}") from None
    helo = d.helo_name
    if helo and (not helo.isascii() or not helo.isprintable() or " " in helo):
        raise ConfigError("delivery.helo_name: expected one ASCII word")
    if d.source_address:
        try:
            ipaddress.ip_address(d.source_address)
        except ValueError:
            raise ConfigError("delivery.source_address: expected an IP address") from None


def load_config(path: str | os.PathLike[str] | None = None) -> Config:
    """Load the TOML file at ``path`` (or ``$LETTERBIRD_CONFIG``); defaults when neither."""
    if path is None:
        path = os.environ.get("LETTERBIRD_CONFIG") or None
    if path is None:
        cfg = Config(base_dir=str(Path.cwd()))
        _validate(cfg)
        return cfg
    p = Path(path)
    try:
        with p.open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"{p}: no such configuration file") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{p}: not valid TOML: {exc}") from None
    cfg = _build(Config, data)
    cfg = dataclasses.replace(cfg, base_dir=str(p.resolve().parent))
    _validate(cfg)
    return typing.cast(Config, cfg)
