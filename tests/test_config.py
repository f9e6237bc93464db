"""Configuration: defaults, validation errors that name the key, relative paths."""

from __future__ import annotations

from pathlib import Path

import pytest

from letterbird.config import ConfigError, load_config, parse_duration, parse_hostport
from letterbird.http.settings import WebSettings


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "lb.toml"
    p.write_text(text)
    return p


def test_defaults_without_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("LETTERBIRD_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)
    cfg = load_config()
    assert cfg.listen.smtp == ["127.0.0.1:2525"]
    assert cfg.listen.https == []
    assert cfg.data_path == tmp_path / "letterbird-data"
    assert cfg.storage_url == f"sqlite:///{tmp_path}/letterbird-data/mail.db"
    assert cfg.limits.smtp_message_size == 52428800


def test_full_file_and_relative_paths(tmp_path: Path) -> None:
    p = write(
        tmp_path,
        """
hostname = "mx.example.test"
data_dir = "./d"
postmaster = "admin@example.test"
[storage]
url = "sqlite:///db/mail.db"
[listen]
smtp = ["127.0.0.1:0", "[::1]:2525"]
imap = []
[tls]
cert = "c.pem"
key = "k.pem"
[dns]
nameservers = ["127.0.0.1:5353"]
timeout = "3s"
[limits]
smtp_message_size = 1000
smtp_command_timeout = "2m"
[web]
page_size = 20
session_lifetime = "8h"
""",
    )
    cfg = load_config(p)
    assert cfg.hostname == "mx.example.test"
    assert cfg.data_path == tmp_path / "d"
    assert cfg.storage_url == f"sqlite:///{tmp_path}/db/mail.db"
    assert cfg.listen.imap == []
    assert cfg.dns.timeout == 3.0
    assert cfg.limits.smtp_command_timeout == 120.0
    assert (cfg.web.page_size, cfg.web.session_lifetime) == (20, 8 * 3600.0)
    assert WebSettings.from_config(cfg).page_size == 20  # what the webmail uses
    assert cfg.resolve_path(cfg.tls.cert) == tmp_path / "c.pem"


def test_env_variable(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("LETTERBIRD_CONFIG", str(write(tmp_path, 'hostname = "env.test"\n')))
    assert load_config().hostname == "env.test"


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("bogus = 1", "bogus"),
        ("[limits]\nsmtp_message_sise = 1", "limits.smtp_message_sise"),
        ("[limits]\nsmtp_message_size = 'big'", "limits.smtp_message_size"),
        ("[limits]\nsmtp_message_size = -1", "limits.smtp_message_size"),
        ("[limits]\nsmtp_command_timeout = 'soon'", "limits.smtp_command_timeout"),
        ("[listen]\nsmtp = '127.0.0.1:25'", "listen.smtp"),
        ("[listen]\nsmtp = ['nonsense']", "listen.smtp[0]"),
        ("[listen]\nimap = ['127.0.0.1:99999']", "listen.imap[0]"),
        ("[tls]\ncert = 'x.pem'", "tls.cert"),
        ("[storage]\nurl = 'mysql://x'", "storage.url"),
        ("postmaster = 'nobody'", "postmaster"),
        ("listen = 3", "listen"),
        ("pop3_marks_seen = 'yes'", "pop3_marks_seen"),
        ("[web]\npage_size = 0", "web.page_size"),
        ("[web]\nsession_lifetime = '0s'", "web.session_lifetime"),
        ("[web]\nskin = 'dark'", "web.skin"),
    ],
)
def test_errors_name_the_key(tmp_path: Path, text: str, key: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, text))
    assert str(err.value).startswith(key + ":")


def test_unreadable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such configuration file"):
        load_config(tmp_path / "missing.toml")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(write(tmp_path, "= nope"))


def test_durations_and_hostports() -> None:
    assert parse_duration("90s") == 90 and parse_duration("5m") == 300
    assert parse_duration("4h") == 14400 and parse_duration("5d") == 432000
    assert parse_duration(7) == 7.0
    for bad in ("", "5x", "-1s", True):
        with pytest.raises(ValueError):
            parse_duration(bad)  # type: ignore[arg-type]
    assert parse_hostport("127.0.0.1:2525") == ("127.0.0.1", 2525)
    assert parse_hostport("[::1]:0") == ("::1", 0)
    assert parse_hostport(":25") == ("0.0.0.0", 25)


def test_storage_url_password_is_never_shown() -> None:
    from letterbird.config import redact_url

    assert redact_url("postgresql://lb:s3cret@db:5432/mail") == "postgresql://lb:***@db:5432/mail"
    assert redact_url("postgresql://lb@db/mail") == "postgresql://lb@db/mail"
    assert redact_url("sqlite:////var/mail.db") == "sqlite:////var/mail.db"
