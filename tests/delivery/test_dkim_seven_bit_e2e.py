"""DKIM and the 7-bit downgrade, end to end: a real Letterbird server for ``alice.test`` whose
queue delivers ``bob.test`` to a sink that does not offer 8BITMIME (RFC 6152), so every 8-bit
message must reach it in 7-bit form.

* an 8-bit message Alice submits (STARTTLS + AUTH on the submission port) arrives with both
  of her signatures (RSA and Ed25519) verifying under dkimpy with the published keys: it was
  converted before it was signed (RFC 6376 §5.3), not after;
* an unsigned 8-bit message forwarded by an ``alice.test`` alias is signed by the forwarder
  and verifies the same way;
* an 8-bit message relayed through an alias of ``relay.test`` (a domain without keys), carrying
  Carol's signature and a forged ``d=alice.test`` one, is converted by the queue worker and
  arrives with exactly the signatures it had, none of them valid any more, and none added.
"""

from __future__ import annotations

import contextlib
import dataclasses
import email
import email.policy
import smtplib
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import cast

import dkim as dkimpy
import pytest
from serverutil import ServerThread, server_config

from letterbird.auth.dkim import SigningKey, sign, signature_fields
from letterbird.auth.keys import KeyStore, key_dir
from letterbird.config import DeliverySettings

pytestmark = pytest.mark.e2e
pytest.importorskip("nacl")

PASSWORD = "alice-secret"
TEXT = "Grüße aus Köln: 10 € für das Café.\r\n"


@dataclass
class Received:
    mail: bytes
    data: bytes


@dataclass
class SevenBitSink:
    """An SMTP server on loopback that offers no extension at all (so no 8BITMIME)."""

    messages: list[Received] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.port = self.sock.getsockname()[1]
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            f = conn.makefile("rb")
            conn.sendall(b"220 sink.test ESMTP\r\n")
            mail = b""
            while line := f.readline():
                verb = line[:4].upper()
                if verb in (b"EHLO", b"HELO"):
                    conn.sendall(b"250 sink.test\r\n")
                elif verb == b"MAIL":
                    mail = line.rstrip(b"\r\n")
                    conn.sendall(b"250 2.1.0 ok\r\n")
                elif verb == b"DATA":
                    conn.sendall(b"354 go ahead\r\n")
                    lines: list[bytes] = []
                    while (chunk := f.readline()) != b".\r\n":
                        if not chunk:
                            return
                        lines.append(chunk[1:] if chunk.startswith(b".") else chunk)
                    with self.lock:
                        self.messages.append(Received(mail, b"".join(lines)))
                    conn.sendall(b"250 2.0.0 queued\r\n")
                elif verb == b"QUIT":
                    conn.sendall(b"221 bye\r\n")
                    return
                else:
                    conn.sendall(b"250 2.0.0 ok\r\n")

    @property
    def route(self) -> str:
        return f"127.0.0.1:{self.port}"

    def wait_for(self, subject: str, timeout: float = 20.0) -> Received:
        needle = f"\r\nSubject: {subject}\r\n".encode()
        deadline = time.monotonic() + timeout
        while True:
            with self.lock:
                found = [m for m in self.messages if needle in b"\r\n" + m.data]
            if found:
                assert len(found) == 1
                return found[0]
            if time.monotonic() > deadline:
                raise AssertionError(f"{subject!r} never reached the sink")
            time.sleep(0.05)

    def close(self) -> None:
        self.sock.close()


@dataclass
class World:
    server: ServerThread
    sink: SevenBitSink
    alice_keys: KeyStore
    carol_keys: KeyStore

    def records(self) -> dict[bytes, bytes]:
        """The DKIM key records DNS would publish, for dkimpy's ``dnsfunc``."""
        out: dict[bytes, bytes] = {}
        for store, domain in ((self.alice_keys, "alice.test"), (self.carol_keys, "carol.test")):
            for k in store.selectors(domain):
                out[k.dns_name.encode() + b"."] = store.public_record(k).encode()
        return out

    def verify_all(self, message: bytes) -> list[bool]:
        records = self.records()
        count = message.lower().count(b"\ndkim-signature:") + message.lower().startswith(
            b"dkim-signature:"
        )
        results: list[bool] = []
        for i in range(count):
            try:
                ok = dkimpy.DKIM(message).verify(i, dnsfunc=lambda n, timeout=5: records.get(n))
            except dkimpy.DKIMException:  # a body hash mismatch is raised
                ok = False
            results.append(bool(ok))
        return results


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp_path = tmp_path_factory.mktemp("dkim7bit")
    sink = SevenBitSink()
    config = dataclasses.replace(
        server_config(tmp_path, smtp=["127.0.0.1:0"], submission=["127.0.0.1:0"]),
        hostname="mx.alice.test",
        delivery=DeliverySettings(
            retry=[0.5],
            routes={"bob.test": sink.route},
            poll_interval=0.5,
            connect_timeout=2.0,
            command_timeout=5.0,
            connection_linger=0.0,
        ),
    )
    alice_keys = KeyStore(key_dir(config))
    alice_keys.generate("alice.test", "lb1")  # RSA-2048 "lb1r" and Ed25519 "lb1e"
    carol_keys = KeyStore(tmp_path / "carol-keys")
    carol_keys.generate("carol.test", "c", algorithms=("ed25519",))
    try:
        with ServerThread(config) as server:
            server.add_user("alice@alice.test", PASSWORD)

            async def aliases() -> None:
                directory = server.app.directory
                await directory.add_domain("relay.test")  # no DKIM keys
                await directory.add_alias("fwd@relay.test", ["bob@bob.test"])
                await directory.add_alias("fwd@alice.test", ["bob@bob.test"])

            server.call(aliases())
            yield World(server, sink, alice_keys, carol_keys)
    finally:
        sink.close()


def eight_bit_message(subject: str, sender: str) -> bytes:
    msg = EmailMessage(policy=email.policy.SMTP.clone(cte_type="8bit"))
    msg["From"] = sender
    msg["To"] = "bob@bob.test"
    msg["Subject"] = subject
    msg["Date"] = "Thu, 26 Nov 2026 10:00:00 +0000"
    msg["Message-ID"] = f"<{subject.replace(' ', '.')}@example.test>"
    msg.set_content(TEXT, cte="8bit")
    msg.add_attachment(b"\x00\x01\xfe\xff raw", "application", "octet-stream", cte="8bit")
    data = msg.as_bytes()
    assert not data.isascii()
    return data


def text_of(data: bytes) -> str:
    msg = email.message_from_bytes(data, policy=email.policy.default)
    body = cast(EmailMessage, msg).get_body(("plain",))
    assert body is not None
    return str(body.get_content())


def submit(world: World, data: bytes) -> None:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    host, port = world.server.address("submission")
    with smtplib.SMTP(host, port, local_hostname="pc.alice.test") as s:
        s.starttls(context=ctx)
        s.login("alice@alice.test", PASSWORD)
        refused = s.sendmail("alice@alice.test", ["bob@bob.test"], data, ["BODY=8BITMIME"])
        assert refused == {}


def relay_in(world: World, sender: str, rcpt: str, data: bytes) -> None:
    host, port = world.server.address("smtp")
    with smtplib.SMTP(host, port, local_hostname="mx.carol.test") as s:
        assert s.sendmail(sender, [rcpt], data, ["BODY=8BITMIME"]) == {}


def assert_seven_bit(got: Received) -> None:
    assert b"BODY=8BITMIME" not in got.mail.upper()
    assert got.data.isascii()
    assert b"Content-Transfer-Encoding: quoted-printable" in got.data


def signers(data: bytes) -> list[str]:
    msg = email.message_from_bytes(data, policy=email.policy.compat32)
    return [signature_fields(v.encode())[b"d"].decode() for v in msg.get_all("DKIM-Signature", [])]


def test_submitted_8bit_message_verifies_after_a_7bit_hop(world: World) -> None:
    original = eight_bit_message("submitted eight bit", "Alice <alice@alice.test>")
    submit(world, original)
    got = world.sink.wait_for("submitted eight bit")
    assert_seven_bit(got)
    assert signers(got.data) == ["alice.test", "alice.test"]
    assert world.verify_all(got.data) == [True, True]  # RSA and Ed25519, as dkimpy sees them
    assert text_of(got.data) == text_of(original)  # the same text, quoted-printable


def test_forwarded_unsigned_message_is_signed_by_the_forwarder(world: World) -> None:
    original = eight_bit_message("forwarded eight bit", "Dave <dave@dave.test>")
    relay_in(world, "dave@dave.test", "fwd@alice.test", original)
    got = world.sink.wait_for("forwarded eight bit")
    assert_seven_bit(got)
    assert signers(got.data) == ["alice.test", "alice.test"]
    assert world.verify_all(got.data) == [True, True]


def test_relayed_third_party_message_gets_no_signature_from_us(world: World) -> None:
    original = eight_bit_message("relayed eight bit", "Carol <carol@carol.test>")
    [carol] = world.carol_keys.signing_keys("carol.test")
    # a forgery: "d=alice.test" with one of Alice's selectors, made with Carol's key
    alice_selector = next(
        k.selector
        for k in world.alice_keys.selectors("alice.test")
        if k.algorithm == carol.algorithm
    )
    forged = SigningKey("alice.test", alice_selector, carol.algorithm, carol.private_key)
    signed = sign(original, [carol], now=time.time()) + original
    signed = sign(signed, [forged], now=time.time()) + signed
    assert world.verify_all(signed) == [False, True]  # as Carol sent it: hers verifies
    relay_in(world, "carol@carol.test", "fwd@relay.test", signed)
    got = world.sink.wait_for("relayed eight bit")
    assert_seven_bit(got)  # converted by the queue worker, not at the edge (nothing to sign)
    assert signers(got.data) == ["alice.test", "carol.test"]  # the two it came with, no more
    assert world.verify_all(got.data) == [False, False]  # the forgery was not made valid
    assert text_of(got.data) == text_of(original)
