"""DSN format (RFC 3464, RFC 3461, RFC 6533): generated reports parsed back with stdlib email."""

from __future__ import annotations

import email
import email.message
import email.policy
import email.utils

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from letterbird.delivery.dsn import DsnRecipient, build_dsn, notify_wants

ORIGINAL = (
    b"Received: from pc.alice.test by mx.alice.test; Thu, 26 Nov 2026 10:00:00 +0000\r\n"
    b"From: Alice <alice@alice.test>\r\nTo: <bob@bob.test>\r\nSubject: Hello\r\n"
    b"Message-ID: <1@alice.test>\r\n\r\nThe body.\r\n"
)
NOW = 1_795_000_000.0


def parse(data: bytes) -> email.message.Message:
    return email.message_from_bytes(data, policy=email.policy.compat32)


def parts(msg: email.message.Message) -> list[email.message.Message]:
    """The sub-parts of a multipart (or message/*) part."""
    payload = msg.get_payload()
    assert isinstance(payload, list)
    return [p for p in payload if isinstance(p, email.message.Message)]


def groups(msg: email.message.Message) -> list[email.message.Message]:
    return parts(parts(msg)[1])


def failed(**kw: object) -> DsnRecipient:
    args: dict[str, object] = {
        "address": "bob@bob.test",
        "action": "failed",
        "status": "5.1.1",
        "diagnostic": "smtp; 550 5.1.1 <bob@bob.test>: no such user",
        "remote_mta": "mx.bob.test",
        "orcpt": "rfc822;Bob@bob.test",
        "last_attempt": NOW,
    }
    args.update(kw)
    return DsnRecipient(**args)  # type: ignore[arg-type]


def test_every_rfc3464_field() -> None:
    data = build_dsn(
        reporting_mta="mx.alice.test",
        sender="alice@alice.test",
        recipients=[
            failed(),
            failed(
                address="x@bob.test",
                action="delayed",
                status="4.4.1",
                diagnostic="X-Letterbird; connection refused",
                remote_mta=None,
                orcpt=None,
                will_retry_until=NOW + 86400,
            ),
        ],
        original=ORIGINAL,
        envid="QQ314159",
        arrival=NOW - 60,
        now=NOW,
    )
    assert b"\n" not in data.replace(b"\r\n", b"")  # CRLF only
    assert all(len(line) <= 998 for line in data.split(b"\r\n"))
    assert data.isascii()
    msg = parse(data)
    assert msg["From"] == "Mail Delivery System <MAILER-DAEMON@mx.alice.test>"
    assert msg["To"] == "<alice@alice.test>"
    assert msg["Auto-Submitted"] == "auto-replied"
    assert msg["Subject"] == "Undelivered Mail Returned to Sender"
    assert msg["MIME-Version"] == "1.0"
    assert msg["Message-ID"].endswith("@mx.alice.test>")
    assert email.utils.parsedate_to_datetime(msg["Date"]).timestamp() == NOW
    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "delivery-status"
    human, status, headers = parts(msg)
    assert human.get_content_type() == "text/plain"
    text = str(human.get_payload())
    assert "mx.alice.test" in text and "<bob@bob.test>" in text and "<x@bob.test>" in text
    assert "no such user" in text and "connection refused" in text
    assert status.get_content_type() == "message/delivery-status"
    per_message, first, second = groups(msg)
    assert per_message["Original-Envelope-Id"] == "QQ314159"
    assert per_message["Reporting-MTA"] == "dns; mx.alice.test"
    assert email.utils.parsedate_to_datetime(per_message["Arrival-Date"]).timestamp() == NOW - 60
    assert first["Original-Recipient"] == "rfc822; Bob@bob.test"
    assert first["Final-Recipient"] == "rfc822; bob@bob.test"
    assert first["Action"] == "failed"
    assert first["Status"] == "5.1.1"
    assert first["Remote-MTA"] == "dns; mx.bob.test"
    assert first["Diagnostic-Code"] == "smtp; 550 5.1.1 <bob@bob.test>: no such user"
    assert email.utils.parsedate_to_datetime(first["Last-Attempt-Date"]).timestamp() == NOW
    assert "Will-Retry-Until" not in first
    assert "Original-Recipient" not in second and "Remote-MTA" not in second
    assert second["Action"] == "delayed" and second["Status"] == "4.4.1"
    assert second["Diagnostic-Code"] == "X-Letterbird; connection refused"
    until = email.utils.parsedate_to_datetime(second["Will-Retry-Until"]).timestamp()
    assert until == NOW + 86400
    assert headers.get_content_type() == "text/rfc822-headers"
    body = str(headers.get_payload())
    assert "Subject: Hello" in body and "The body." not in body


def test_ret_full_returns_the_message() -> None:
    data = build_dsn(
        reporting_mta="mx.a.test",
        sender="a@a.test",
        recipients=[failed()],
        original=ORIGINAL,
        ret="FULL",
    )
    inner = parts(parse(data))[2]
    assert inner.get_content_type() == "message/rfc822"
    [original] = parts(inner)
    assert original["Subject"] == "Hello"
    assert str(original.get_payload()).strip() == "The body."


def test_subjects_and_defaults() -> None:
    def subject(action: str, status: str) -> str:
        r = DsnRecipient("b@b.test", action, status)
        data = build_dsn(reporting_mta="m", sender="a@a.test", recipients=[r], original=b"")
        return str(parse(data)["Subject"])

    assert subject("delayed", "4.0.0") == "Delayed Mail (still being retried)"
    assert subject("relayed", "2.0.0") == "Successful Mail Delivery Report"
    assert subject("delivered", "2.0.0") == "Successful Mail Delivery Report"
    custom = build_dsn(
        reporting_mta="m",
        sender="",
        recipients=[DsnRecipient("b@b.test", "expanded", "2.0.0", diagnostic="550 plain")],
        original=b"",
        subject="Custom",
    )
    msg = parse(custom)
    assert msg["Subject"] == "Custom" and msg["To"] == "<>"
    [_, rcpt] = groups(msg)
    assert rcpt["Final-Recipient"] == "rfc822; b@b.test"
    assert rcpt["Diagnostic-Code"] == "smtp; 550 plain"  # untyped text gets smtp;


def test_invalid_values_raise() -> None:
    with pytest.raises(ValueError):
        DsnRecipient("b@b.test", "bounced", "5.0.0")
    with pytest.raises(ValueError):
        DsnRecipient("b@b.test", "failed", "6.0.0")
    with pytest.raises(ValueError):
        build_dsn(reporting_mta="m", sender="a@a.test", recipients=[], original=b"")


def test_non_ascii_addresses_and_headers() -> None:
    original = "From: Jörg <jörg@bücher.test>\r\nSubject: Grüße\r\n\r\nHallo\r\n".encode()
    data = build_dsn(
        reporting_mta="mx.bücher.test",
        sender="jörg@bücher.test",
        recipients=[
            failed(
                address="müller@example.test",
                orcpt="utf-8;müller@example.test",
                diagnostic="smtp; 550 unbekannt: müller",
            )
        ],
        original=original,
    )
    msg = parse(data)
    human, status, headers = parts(msg)
    assert human.get("Content-Transfer-Encoding") == "quoted-printable"
    decoded = human.get_payload(decode=True)
    assert isinstance(decoded, bytes) and "müller@example.test" in decoded.decode()
    assert status.get_content_type() == "message/global-delivery-status"
    raw = data.decode("utf-8")
    assert "Final-Recipient: utf-8; müller@example.test" in raw
    assert "Original-Recipient: utf-8; müller@example.test" in raw
    assert "Diagnostic-Code: smtp; 550 unbekannt: m?ller" in raw  # sanitised to ASCII
    assert "Reporting-MTA: dns; mx.b?cher.test" in raw
    assert headers.get_content_type() == "message/global-headers"
    full = build_dsn(
        reporting_mta="m",
        sender="a@a.test",
        recipients=[failed()],
        original=original,
        ret="FULL",
    )
    assert b"Content-Type: message/global\r\nContent-Transfer-Encoding: 8bit" in full


def test_eight_bit_body_in_full_return() -> None:
    original = b"Subject: x\r\n\r\nK\xc3\xb6ln"
    data = build_dsn(
        reporting_mta="m", sender="a@a.test", recipients=[failed()], original=original, ret="FULL"
    )
    assert b"Content-Type: message/rfc822\r\nContent-Transfer-Encoding: 8bit" in data
    assert b"K\xc3\xb6ln\r\n--" in data  # a line end is added before the boundary


def test_long_unbreakable_diagnostic_is_folded_below_998() -> None:
    diagnostic = "smtp; 550 " + "x" * 2500
    data = build_dsn(
        reporting_mta="m",
        sender="a@a.test",
        recipients=[failed(diagnostic=diagnostic)],
        original=ORIGINAL,
    )
    assert max(len(line) for line in data.split(b"\r\n")) <= 998
    [_, rcpt] = groups(parse(data))
    assert "".join(rcpt["Diagnostic-Code"].split()).startswith("smtp;550xxxx")


def test_notify_wants() -> None:
    assert notify_wants((), "FAILURE") and notify_wants((), "DELAY")
    assert not notify_wants((), "SUCCESS")
    assert not notify_wants(("NEVER",), "FAILURE")
    assert notify_wants(("success",), "SUCCESS")
    assert not notify_wants(("SUCCESS",), "FAILURE")
    assert notify_wants(("FAILURE", "DELAY"), "DELAY")


@settings(deadline=None, max_examples=200)
@given(
    diagnostic=st.text(min_size=1, max_size=1500),
    address=st.from_regex(r"[a-z0-9.+-]{1,40}@[a-z0-9-]{1,20}\.test", fullmatch=True),
    remote=st.one_of(st.none(), st.text(max_size=200)),
)
def test_any_diagnostic_gives_a_parseable_report(
    diagnostic: str, address: str, remote: str | None
) -> None:
    r = DsnRecipient(address, "failed", "5.0.0", diagnostic=diagnostic, remote_mta=remote)
    data = build_dsn(reporting_mta="mx.a.test", sender="a@a.test", recipients=[r], original=b"")
    assert max(len(line) for line in data.split(b"\r\n")) <= 998
    msg = parse(data)
    [per_message, rcpt] = groups(msg)
    assert per_message["Reporting-MTA"] == "dns; mx.a.test"
    assert rcpt["Status"] == "5.0.0"
    assert rcpt["Action"] == "failed"
    assert " ".join(rcpt["Final-Recipient"].split()) == f"rfc822; {address}"  # maybe folded
