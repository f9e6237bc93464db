"""Typed, validated configuration loaded from one TOML file.

Every setting has a default, so Letterbird runs with no file at all. Unknown keys and values of
the wrong type are errors that name the key (``limits.smtp_message_size: expected an integer``).
Relative paths are relative to the config file's folder, or to the working directory when there
is no file (DESIGN.md §8).
"""

from __future__ import annotations

import dataclasses
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
    "AuthSettings",
    "Config",
    "ConfigError",
    "DnsSettings",
    "Limits",
    "ListenSettings",
    "StorageSettings",
    "TlsSettings",
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


@dataclass(frozen=True)
class StorageSettings:
    url: str = ""  # empty = sqlite:///<data_dir>/mail.db


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
    # HTTP
    http_upload_size: int = 26214400
    # Storage
    account_quota: int = 0  # bytes; 0 = unlimited


@dataclass(frozen=True)
class Config:
    hostname: str = field(default_factory=socket.getfqdn)
    data_dir: str = "./letterbird-data"
    postmaster: str = ""  # empty: the first account created receives postmaster@ mail
    recipient_delimiter: str = "+"
    pop3_marks_seen: bool = True
    storage: StorageSettings = field(default_factory=StorageSettings)
    listen: ListenSettings = field(default_factory=ListenSettings)
    tls: TlsSettings = field(default_factory=TlsSettings)
    dns: DnsSettings = field(default_factory=DnsSettings)
    auth: AuthSettings = field(default_factory=AuthSettings)
    limits: Limits = field(default_factory=Limits)
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
    def storage_url(self) -> str:
        if self.storage.url:
            url = self.storage.url
            if url.startswith("sqlite:///"):
                return "sqlite:///" + str(self.resolve_path(url[len("sqlite:///") :]))
            return url
        return "sqlite:///" + str(self.data_path / "mail.db")


def _type_name(tp: Any) -> str:
    return {
        int: "an integer",
        str: "a string",
        bool: "true or false",
        float: "a number",
    }.get(tp, str(tp))


def _convert(key: str, tp: Any, value: Any, f: dataclasses.Field[Any]) -> Any:
    if f.metadata.get("duration"):
        try:
            return parse_duration(value)
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"{key}: {exc}") from None
    origin = typing.get_origin(tp)
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
        raise ConfigError(f"storage.url: unsupported storage URL {url!r} (use sqlite:///PATH)")
    if cfg.postmaster and "@" not in cfg.postmaster:
        raise ConfigError("postmaster: expected an address like admin@example.test")
    if len(cfg.recipient_delimiter) > 1:
        raise ConfigError("recipient_delimiter: must be one character or empty")
    if not cfg.hostname:
        raise ConfigError("hostname: must not be empty")


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
