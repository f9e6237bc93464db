"""DKIM keys on disk (generation, rotation with two generations live), the DNS records to
publish, and the `letterbird domain dkim|dns` commands."""

from __future__ import annotations

import base64
import dataclasses
import os
import stat
from pathlib import Path

import dkim as dkimpy
import pytest
from click.testing import CliRunner
from conftest import make_config

from letterbird.auth.dkim import sign
from letterbird.auth.keys import KeyStore, key_dir
from letterbird.auth.records import domain_records, format_zone, txt_strings
from letterbird.cli.main import cli
from letterbird.config import DeliverySettings, DkimSettings

pytest.importorskip("nacl")

MESSAGE = b"From: a@alice.test\r\nTo: b@bob.test\r\nSubject: hi\r\n\r\nbody\r\n"


def test_generate_sign_and_verify_with_the_published_record(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "dkim")
    keys = store.generate("Alice.TEST", "sel", now=1000.0)
    assert [(k.selector, k.algorithm, k.state) for k in keys] == [
        ("sele", "ed25519-sha256", "active"),
        ("selr", "rsa-sha256", "active"),
    ]
    folder = tmp_path / "dkim" / "alice.test"
    assert stat.S_IMODE(os.stat(folder / "selr.pem").st_mode) == 0o600
    assert stat.S_IMODE(os.stat(folder).st_mode) == 0o700
    signing = store.signing_keys("alice.test")
    assert [k.algorithm for k in signing] == ["rsa-sha256", "ed25519-sha256"]
    assert store.signing_keys("alice.test") is signing  # cached until keys.json changes
    records = {k.dns_name.encode() + b".": store.public_record(k).encode() for k in keys}
    header = sign(MESSAGE, signing, now=1000.0)
    signed = header + MESSAGE
    d = dkimpy.DKIM(signed)
    assert d.verify(0, dnsfunc=lambda name, timeout=5: records.get(name))
    assert d.verify(1, dnsfunc=lambda name, timeout=5: records.get(name))
    rsa_record = store.public_record(keys[1])
    assert rsa_record.startswith("v=DKIM1; k=rsa; p=MII")
    assert len(base64.b64decode(store.public_record(keys[0]).split("p=")[1])) == 32


def test_rotation_keeps_two_generations(tmp_path: Path) -> None:
    store = KeyStore(tmp_path)
    store.generate("alice.test", "one", algorithms=("ed25519",), now=1.0)
    [two] = store.generate("alice.test", "two", algorithms=("ed25519",), now=2.0)
    assert two.state == "pending"
    assert [k.selector for k in store.signing_keys("alice.test")] == ["one"]
    store.activate("alice.test", "two")
    states = {k.selector: k.state for k in store.selectors("alice.test")}
    assert states == {"one": "retiring", "two": "active"}
    assert [k.selector for k in store.signing_keys("alice.test")] == ["two"]
    store.generate("alice.test", "three", algorithms=("rsa",), now=3.0)
    store.activate("alice.test", "three")
    states = {k.selector: k.state for k in store.selectors("alice.test")}
    assert states == {"two": "retiring", "three": "active"}
    assert (tmp_path / "alice.test" / "retired" / "one.pem").exists()
    assert [k.selector for k in store.selectors("alice.test")] == ["three", "two"]
    assert store.domains() == ["alice.test"]


def test_key_store_errors(tmp_path: Path) -> None:
    store = KeyStore(tmp_path)
    assert store.signing_keys("nobody.test") == []
    assert store.signing_keys("bad..domain") == []
    assert store.selectors("nobody.test") == []
    assert KeyStore(tmp_path / "missing").domains() == []
    store.generate("alice.test", "a", algorithms=("ed25519",))
    with pytest.raises(ValueError, match="already exists"):
        store.generate("alice.test", "a", algorithms=("ed25519",))
    with pytest.raises(ValueError, match="selector"):
        store.generate("alice.test", "bad_name!", algorithms=("rsa",))
    with pytest.raises(ValueError, match="algorithms"):
        store.generate("alice.test", "b", algorithms=("dsa",))
    with pytest.raises(ValueError, match="no key"):
        store.activate("alice.test", "nothing")
    (tmp_path / "alice.test" / "keys.json").write_text("{not json")
    with pytest.raises(ValueError, match="unreadable"):
        store.selectors("alice.test")
    (tmp_path / "alice.test" / "keys.json").write_text('{"a": {"state": "active"}}')
    (tmp_path / "alice.test" / "a.pem").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="cannot read"):
        store.signing_keys("alice.test")


def test_default_selector_and_key_dir(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    assert key_dir(config) == config.data_path / "dkim"
    absolute = dataclasses.replace(config, dkim=DkimSettings(key_dir=str(tmp_path / "k")))
    assert key_dir(absolute) == tmp_path / "k"
    [key] = KeyStore(tmp_path).generate("alice.test", algorithms=("ed25519",), now=0.0)
    assert key.selector == "lb19700101"


def test_dns_records(tmp_path: Path) -> None:
    config = dataclasses.replace(
        make_config(tmp_path),
        hostname="mx.alice.test",
        delivery=DeliverySettings(helo_name="out.alice.test", source_address="192.0.2.7"),
    )
    store = KeyStore(key_dir(config))
    text = format_zone(domain_records(config, "alice.test", store, now=0.0))
    assert "alice.test.\tIN\tMX\t10 mx.alice.test." in text
    assert '"v=spf1 mx ip4:192.0.2.7 -all"' in text
    assert "no DKIM key yet" in text
    assert '_dmarc.alice.test.\tIN\tTXT\t"v=DMARC1; p=quarantine' in text
    assert '_mta-sts.alice.test.\tIN\tTXT\t"v=STSv1; id=19700101000000"' in text
    assert '_smtp._tls.alice.test.\tIN\tTXT\t"v=TLSRPTv1; rua=mailto:postmaster@alice.test"' in text
    assert "7.2.0.192.in-addr.arpa.\tIN\tPTR\tout.alice.test." in text
    assert "mx.alice.test.\tIN\tA\t192.0.2.7" in text
    store.generate("alice.test", "k")
    text = format_zone(domain_records(config, "alice.test", store))
    assert 'kr._domainkey.alice.test.\tIN\tTXT\t( "v=DKIM1; k=rsa; p=' in text
    assert 'ke._domainkey.alice.test.\tIN\tTXT\t"v=DKIM1; k=ed25519; p=' in text
    v6 = dataclasses.replace(config, delivery=DeliverySettings(source_address="2001:db8::7"))
    text = format_zone(domain_records(v6, "alice.test", store))
    assert "ip6:2001:db8::7" in text and "\tIN\tAAAA\t2001:db8::7" in text
    plain = dataclasses.replace(config, delivery=DeliverySettings(helo_name="out.alice.test"))
    text = format_zone(domain_records(plain, "alice.test", store))
    assert '"v=spf1 mx a:out.alice.test -all"' in text
    assert "<reverse name of the outgoing address>\tIN\tPTR\tout.alice.test." in text


def test_txt_strings() -> None:
    assert txt_strings("") == '""'
    assert txt_strings('a"b\\') == '"a\\"b\\\\"'
    long = txt_strings("x" * 300)
    assert long == '"' + "x" * 255 + '" "' + "x" * 45 + '"'


def test_cli_commands(tmp_path: Path) -> None:
    config = tmp_path / "lb.toml"
    config.write_text(
        f'hostname = "mx.alice.test"\ndata_dir = "{tmp_path / "data"}"\n'
        '[delivery]\nsource_address = "192.0.2.7"\n'
    )
    runner = CliRunner()

    def lb(*args: str, code: int = 0) -> str:
        result = runner.invoke(cli, ["--config", str(config), *args])
        assert result.exit_code == code, result.output
        return result.output

    out = lb("domain", "dkim", "generate", "alice.test", code=1)
    assert "not one of our domains" in out
    lb("domain", "add", "alice.test")
    out = lb("domain", "dkim", "generate", "alice.test", "--selector", "one")
    assert "oner             rsa-sha256      active" in out
    assert 'onee._domainkey.alice.test.\tIN\tTXT\t"v=DKIM1; k=ed25519; p=' in out
    out = lb("domain", "dkim", "generate", "alice.test", "--selector", "two", "--algorithm", "rsa")
    assert "two              rsa-sha256      pending" in out
    assert "letterbird domain dkim activate alice.test two" in out
    out = lb("domain", "dkim", "activate", "alice.test", "two")
    assert "two              rsa-sha256      active" in out
    out = lb("domain", "dkim", "generate", "alice.test", "--selector", "three", "--activate")
    assert "threer           rsa-sha256      active" in out
    out = lb("domain", "dkim", "list", "alice.test")
    assert "two              rsa-sha256      retiring" in out and "oner" not in out
    out = lb("domain", "dkim", "activate", "alice.test", "nope", code=1)
    assert "no key" in out
    assert "no DKIM keys" in lb("domain", "dkim", "list", "other.test")
    out = lb("domain", "dns", "alice.test")
    assert "threee._domainkey.alice.test." in out and "two._domainkey.alice.test." in out
    assert '"v=spf1 mx ip4:192.0.2.7 -all"' in out
