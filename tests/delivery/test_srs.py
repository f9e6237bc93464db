"""SRS (letterbird.delivery.srs): libsrs2/postsrsd compatible forward and reverse rewriting."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from letterbird.delivery.srs import SRS_SECRET_FILE, Srs, SrsError, is_srs_address, load_secret

# postsrsd's own test vectors (tests/blackbox/socketmap.py and tests/unit/test_srs2.c):
# secret "tops3cr3t", 2020-01-01 00:01:00 UTC, forwarding domain example.com.
SECRET = "tops3cr3t"
NOW = 1577836860.0
DAY = 86400.0


@pytest.fixture
def srs() -> Srs:
    return Srs([SECRET])


def test_forward_matches_postsrsd(srs: Srs) -> None:
    assert (
        srs.forward("test@otherdomain.com", "example.com", NOW)
        == "SRS0=vmyz=2W=otherdomain.com=test@example.com"
    )
    long_domain = "a" * 503 + ".net"
    assert (
        srs.forward(f"test@{long_domain}", "example.com", NOW)
        == f"SRS0=G7tR=2W={long_domain}=test@example.com"
    )


def test_forward_leaves_our_own_and_null_senders(srs: Srs) -> None:
    assert srs.forward("test@example.com", "example.com", NOW) == "test@example.com"
    assert srs.forward("test@EXAMPLE.com", "example.com", NOW) == "test@EXAMPLE.com"
    assert srs.forward("", "example.com", NOW) == ""
    with pytest.raises(SrsError):
        srs.forward("foo", "example.com", NOW)
    with pytest.raises(SrsError):
        srs.forward("@example.org", "example.com", NOW)


def test_second_forwarder_makes_srs1(srs: Srs) -> None:
    # A foreign SRS0 address becomes SRS1 pointing at the first forwarder.
    assert (
        srs.forward("SRS0=opaque+string@otherdomain.com", "example.com", NOW)
        == "SRS1=chaI=otherdomain.com==opaque+string@example.com"
    )
    # A foreign SRS1 address keeps its inner part and is re-signed by us.
    assert (
        srs.forward("SRS1=X=thirddomain.com==opaque+string@otherdomain.com", "example.com", NOW)
        == "SRS1=JIBX=thirddomain.com==opaque+string@example.com"
    )
    # A malformed SRS1 local part is treated as an ordinary one.
    out = srs.forward("SRS1=broken@otherdomain.com", "example.com", NOW)
    assert out.startswith("SRS0=") and out.endswith("=otherdomain.com=SRS1=broken@example.com")


def test_reverse_matches_postsrsd(srs: Srs) -> None:
    assert (
        srs.reverse("SRS0=XjO9=2V=otherdomain.com=test@example.com", NOW) == "test@otherdomain.com"
    )
    assert (
        srs.reverse("SRS1=JIBX=thirddomain.com==opaque+string@example.com", NOW)
        == "SRS0=opaque+string@thirddomain.com"
    )
    # Case changes in transit do not matter (the hash is compared case-insensitively).
    assert (
        srs.reverse("srs0=xjo9=2v=otherdomain.com=test@example.com", NOW) == "test@otherdomain.com"
    )
    assert (
        srs.reverse("SRS0=XJO9=2V=OTHERDOMAIN.COM=TEST@EXAMPLE.COM", NOW) == "TEST@OTHERDOMAIN.COM"
    )
    # Other separators after the tag are accepted; a local part may contain "=".
    fwd = srs.forward("a=b@other.test", "example.com", NOW)
    assert srs.reverse(fwd, NOW) == "a=b@other.test"
    assert srs.reverse("SRS0-" + fwd[5:], NOW) == "a=b@other.test"
    # The domain part plays no part; a bare local part works too.
    assert srs.reverse(fwd.rpartition("@")[0], NOW) == "a=b@other.test"


@pytest.mark.parametrize(
    ("address", "error"),
    [
        ("test@example.com", "not an SRS address"),
        ("SRS0=@example.com", "not an SRS address"),
        ("SRS2=XjO9=2V=otherdomain.com=test@example.com", "not an SRS address"),
        ("SRS0=te87=T7=otherdomain.com=test@example.com", "expired"),  # six months old
        ("SRS0=VcIb=7N=otherdomain.com=test@example.com", "expired"),  # six months ahead
        ("SRS0=FAKE=2V=otherdomain.com=test@example.com", "hash invalid"),
        ("SRS0=Xj=2V=otherdomain.com=test@example.com", "too short"),
        ("SRS0=XjO9@example.com", "malformed"),
        ("SRS0=XjO9=2V@example.com", "malformed"),
        ("SRS0=XjO9=2V=otherdomain.com@example.com", "malformed"),
        ("SRS0=XjO9=2V==test@example.com", "malformed"),
        ("SRS0=XjO9=2!=otherdomain.com=test@example.com", "timestamp character"),
        ("SRS0=XjO9=2VV=otherdomain.com=test@example.com", "bad SRS timestamp"),
        ("SRS1=JIBX=thirddomain.com@example.com", "malformed"),
        ("SRS1=FAKE=thirddomain.com==opaque+string@example.com", "hash invalid"),
    ],
)
def test_reverse_refuses(srs: Srs, address: str, error: str) -> None:
    with pytest.raises(SrsError, match=error):
        srs.reverse(address, NOW)


def test_timestamp_window() -> None:
    srs = Srs([SECRET], max_age_days=21)
    fwd = srs.forward("alice@alice.test", "bob.test", NOW)
    assert srs.reverse(fwd, NOW + 21 * DAY) == "alice@alice.test"
    with pytest.raises(SrsError, match="expired"):
        srs.reverse(fwd, NOW + 22 * DAY)
    # The two-character stamp wraps every 1024 days; checks work across the wrap.
    wrap = (1024 * 20 - 1) * DAY + 10  # the last day before a wrap
    fwd = srs.forward("alice@alice.test", "bob.test", wrap)
    assert srs.reverse(fwd, wrap + 3 * DAY) == "alice@alice.test"
    strict = Srs([SECRET], max_age_days=0)
    assert strict.reverse(strict.forward("a@b.test", "c.test", NOW), NOW) == "a@b.test"
    with pytest.raises(SrsError):
        strict.reverse(strict.forward("a@b.test", "c.test", NOW), NOW + DAY)


def test_key_rotation_and_wrong_key() -> None:
    old = Srs(["old-secret"])
    fwd = old.forward("alice@alice.test", "bob.test", NOW)
    rotated = Srs(["new-secret", b"old-secret"])
    assert rotated.reverse(fwd, NOW) == "alice@alice.test"
    assert rotated.forward("alice@alice.test", "bob.test", NOW) != fwd  # signs with the new one
    with pytest.raises(SrsError, match="hash invalid"):
        Srs(["other"]).reverse(fwd, NOW)


def test_longer_hash() -> None:
    srs = Srs([SECRET], hash_length=8)
    fwd = srs.forward("test@otherdomain.com", "example.com", NOW)
    assert fwd.split("=")[1].startswith("vmyz") and len(fwd.split("=")[1]) == 8
    assert srs.reverse(fwd, NOW) == "test@otherdomain.com"
    with pytest.raises(SrsError, match="too short"):
        srs.reverse("SRS0=vmyz=2W=otherdomain.com=test@example.com", NOW)


@pytest.mark.parametrize(
    "kwargs",
    [{"secrets": []}, {"secrets": [""]}, {"hash_length": 3}, {"max_age_days": -1}],
)
def test_bad_settings(kwargs: dict[str, object]) -> None:
    args: dict[str, object] = {"secrets": [SECRET], **kwargs}
    with pytest.raises(ValueError):
        Srs(**args)  # type: ignore[arg-type]


def test_is_srs_address() -> None:
    assert is_srs_address("SRS0=a=b=c=d")
    assert is_srs_address("srs1+x")
    assert not is_srs_address("SRS0=")
    assert not is_srs_address("SRS0xabc")
    assert not is_srs_address("alice")


_local = st.text(
    alphabet=st.characters(min_codepoint=33, max_codepoint=126, exclude_characters='@"\\<>'),
    min_size=1,
    max_size=40,
).filter(lambda s: not is_srs_address(s))
_domain = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?(\.[a-z]{2,6}){1,2}", fullmatch=True)


@settings(deadline=None, max_examples=200)
@given(local=_local, domain=_domain, days=st.integers(0, 21), start=st.floats(0, 4e9))
def test_round_trip(local: str, domain: str, days: int, start: float) -> None:
    srs = Srs([SECRET])
    sender = f"{local}@{domain}"
    fwd = srs.forward(sender, "forwarder.test", start)
    assert fwd.endswith("@forwarder.test") and is_srs_address(fwd)
    assert srs.reverse(fwd, start + days * DAY) == sender
    # a second forwarder makes SRS1, which reverses to the first forwarder's SRS0 address
    fwd2 = srs.forward(fwd, "second.test", start)
    assert fwd2.startswith("SRS1=")
    assert srs.reverse(fwd2, start) == fwd.rpartition("@")[0] + "@forwarder.test"


@settings(deadline=None, max_examples=300)
@given(st.text(max_size=200))
def test_reverse_never_raises_anything_else(text: str) -> None:
    try:
        Srs([SECRET]).reverse(text, NOW)
    except SrsError:
        pass


def test_load_secret(tmp_path: Path) -> None:
    assert load_secret("configured", tmp_path) == b"configured"
    assert not (tmp_path / SRS_SECRET_FILE).exists()
    data = tmp_path / "data"
    first = load_secret("", data)
    assert len(first) >= 32
    path = data / SRS_SECRET_FILE
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert load_secret("", data) == first  # kept across restarts
    assert [p.name for p in data.iterdir()] == [SRS_SECRET_FILE]  # no temporary left
    path.write_bytes(b"")  # an empty file (an old crash) is replaced
    second = load_secret("", data)
    assert second and path.read_bytes().strip() == second


def test_load_secret_race(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another process creates the file between our read and our link: we use theirs."""
    real_link = os.link

    def racing_link(src: str | Path, dst: str | Path) -> None:
        Path(dst).write_bytes(b"theirs\n")
        real_link(src, dst)

    monkeypatch.setattr(os, "link", racing_link)
    assert load_secret("", tmp_path) == b"theirs"
    assert [p.name for p in tmp_path.iterdir()] == [SRS_SECRET_FILE]
