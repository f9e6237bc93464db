"""Pure scheduling decisions: retry schedule, expiry cap, host backoff, batching; and the
``[delivery]`` settings."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from letterbird.config import ConfigError, DeliverySettings, load_config
from letterbird.delivery.queue.scheduler import (
    HostBackoff,
    next_attempt,
    retry_delay,
    split_batches,
)


def test_retry_delay_repeats_the_last_interval() -> None:
    retry = [60.0, 300.0, 900.0]
    assert [retry_delay(n, retry) for n in (0, 1, 2, 3, 4, 10)] == [
        60.0,
        60.0,
        300.0,
        900.0,
        900.0,
        900.0,
    ]
    with pytest.raises(ValueError):
        retry_delay(1, [])


def test_next_attempt_never_after_expiry() -> None:
    assert next_attempt(100.0, 1, created=0.0, lifetime=1000.0, retry=[60.0]) == 160.0
    assert next_attempt(990.0, 1, created=0.0, lifetime=1000.0, retry=[60.0]) == 1000.0
    assert next_attempt(2000.0, 1, created=0.0, lifetime=1000.0, retry=[60.0]) == 2000.0


def test_host_backoff() -> None:
    b = HostBackoff(threshold=2, retry=[10.0, 20.0])
    host = ("127.0.0.1", 25)
    assert b.failed(host, 0.0, "refused") is None
    assert b.dead(host, 0.0) is None
    assert b.failed(host, 1.0, "refused again") == 11.0
    assert b.dead(host, 5.0) == (11.0, "refused again")
    assert b.dead(host, 11.0) is None
    assert b.failed(host, 12.0, "still") == 32.0  # the schedule grows
    b.succeeded(host)
    assert b.dead(host, 13.0) is None and len(b) == 0
    b.failed(host, 0.0, "x")
    b.reset()
    assert len(b) == 0


def test_host_backoff_is_bounded() -> None:
    b = HostBackoff(threshold=1, retry=[10.0], max_hosts=3)
    for i in range(10):
        b.failed(("h", i), float(i), "x")
    assert len(b) <= 3
    assert b.dead(("h", 9), 9.5) is not None  # the newest survive


@settings(deadline=None)
@given(
    n=st.integers(min_value=0, max_value=500),
    per_host=st.integers(min_value=1, max_value=10),
    per_conn=st.integers(min_value=1, max_value=60),
)
def test_split_batches(n: int, per_host: int, per_conn: int) -> None:
    items = list(range(n))
    batches = split_batches(items, per_host, per_conn)
    assert [x for b in batches for x in b] == items
    assert len(batches) <= per_host
    assert all(batches)
    if n <= per_host * per_conn:
        assert all(len(b) <= per_conn for b in batches)
    if n:
        assert len(batches) >= min(per_host, -(-n // per_conn)) - 1


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "lb.toml"
    path.write_text(text)
    return path


def test_delivery_settings_load(tmp_path: Path) -> None:
    cfg = load_config(
        write(
            tmp_path,
            '[delivery]\nretry = ["1m", "5m", 900]\nlifetime = "2d"\nwarn_after = ""\n'
            'smtp_port = 2525\ntls = "require"\nhelo_name = "out.example.test"\n'
            'source_address = "127.0.0.2"\n'
            '[delivery.routes]\n"bob.test" = "127.0.0.3:2525"\n"*" = "[::1]:25"\n',
        )
    )
    d = cfg.delivery
    assert d.retry == [60.0, 300.0, 900.0]
    assert d.lifetime == 172800.0
    assert d.warn_after == 0.0
    assert d.routes == {"bob.test": "127.0.0.3:2525", "*": "[::1]:25"}
    assert (d.smtp_port, d.tls, d.helo_name) == (2525, "require", "out.example.test")
    assert DeliverySettings().retry == [60.0, 300.0, 900.0, 1800.0]
    assert DeliverySettings().warn_after == 4 * 3600


@pytest.mark.parametrize(
    ("body", "error"),
    [
        ("retry = []", "delivery.retry"),
        ('retry = "1m"', "delivery.retry: expected a list"),
        ('retry = ["soon"]', "delivery.retry[0]"),
        ('tls = "maybe"', "delivery.tls"),
        ("smtp_port = 0", "delivery.smtp_port"),
        ("concurrency = 0", "delivery.concurrency"),
        ('lease = "0s"', "delivery.lease"),
        ('lifetime = "0s"', "delivery.lifetime"),
        ('helo_name = "two words"', "delivery.helo_name"),
        ('source_address = "nowhere"', "delivery.source_address"),
        ('routes = "x"', "delivery.routes: expected a table"),
        ('routes = { "b.test" = "host:99999" }', "delivery.routes.b.test"),
        ('routes = { "b.test" = 25 }', "delivery.routes.b.test: expected a string"),
        ('warn_after = "x"', "delivery.warn_after"),
    ],
)
def test_delivery_settings_errors(tmp_path: Path, body: str, error: str) -> None:
    with pytest.raises(ConfigError, match=error.replace(".", r"\.").replace("[", r"\[")):
        load_config(write(tmp_path, f"[delivery]\n{body}\n"))
