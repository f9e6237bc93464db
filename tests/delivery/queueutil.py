"""Helpers shared by the queue tests: a queue service on test storage, message injection, DSN
parsing."""

from __future__ import annotations

import dataclasses
import email
import email.message
import email.policy
from typing import Any

from conftest import blob_of

from letterbird.config import Config, DeliverySettings
from letterbird.delivery.queue.service import QueueService, new_queue_id
from letterbird.directory.service import Directory
from letterbird.storage.interface import OutgoingMessage, QueueRecipient, Storage

TRACE = (
    b"Return-Path: <alice@alice.test>\r\n"
    b"Received: from pc.alice.test (unknown [127.0.0.1])\r\n"
    b"\tby mx.alice.test (Letterbird) with ESMTPSA id 1;\r\n"
    b"\tThu, 26 Nov 2026 10:00:00 +0000\r\n"
)


def message(subject: str = "hello", body: bytes = b"Hello Bob.\r\n", extra: bytes = b"") -> bytes:
    return (
        b"From: Alice <alice@alice.test>\r\nTo: <bob@bob.test>\r\nSubject: "
        + subject.encode()
        + b"\r\nMessage-ID: <1@alice.test>\r\n"
        + extra
        + b"\r\n"
        + body
    )


def service(
    config: Config,
    storage: Storage,
    directory: Directory,
    **delivery: Any,
) -> QueueService:
    settings: dict[str, Any] = {
        "retry": [60.0],
        "connect_timeout": 2.0,
        "command_timeout": 2.0,
        "data_timeout": 2.0,
        "poll_interval": 0.2,
        "connection_linger": 0.0,
    }
    settings.update(delivery)
    clock = settings.pop("clock", None)
    transport = settings.pop("transport", None)
    resolver = settings.pop("resolver", None)
    cfg = dataclasses.replace(
        config, hostname="mx.alice.test", delivery=DeliverySettings(**settings)
    )
    kwargs: dict[str, Any] = {}
    if clock is not None:
        kwargs["clock"] = clock
    return QueueService(cfg, storage, directory, resolver, transport=transport, **kwargs)


async def inject(
    storage: Storage,
    rcpts: list[str] | list[QueueRecipient],
    data: bytes | None = None,
    *,
    sender: str = "alice@alice.test",
    ret: str | None = None,
    envid: str | None = None,
) -> str:
    """Queue ``data`` (with our trace headers in front) for ``rcpts``; returns the queue id."""
    recipients = tuple(r if isinstance(r, QueueRecipient) else QueueRecipient(r) for r in rcpts)
    queue_id = new_queue_id()
    blob = blob_of(TRACE + (data if data is not None else message()))
    await storage.deliver(
        blob, [], OutgoingMessage(sender, recipients, envid=envid, ret=ret), queue_id=queue_id
    )
    return queue_id


async def run(svc: QueueService) -> int:
    """One scheduler pass, waiting for every delivery it started."""
    n = await svc.run_once()
    await svc.wait_idle()
    return n


async def inbox(storage: Storage, directory: Directory, address: str) -> list[bytes]:
    account = await directory.get_user(address)
    mailbox = await storage.get_mailbox(account.id, "INBOX")
    if mailbox is None:
        return []
    records = await storage.fetch_messages(mailbox.id)
    return [await storage.read_blob(r.blob_id) for r in records]


def parsed(data: bytes) -> email.message.Message:
    return email.message_from_bytes(data, policy=email.policy.compat32)


def parts(msg: email.message.Message) -> list[email.message.Message]:
    """The sub-parts of a multipart (or message/*) part."""
    payload = msg.get_payload()
    assert isinstance(payload, list)
    return [p for p in payload if isinstance(p, email.message.Message)]


def report_fields(dsn: bytes) -> list[dict[str, str]]:
    """The field groups of a DSN's delivery-status part (per-message group first), unfolded."""
    msg = parsed(dsn)
    assert msg.get_content_type() == "multipart/report", msg.get_content_type()
    groups = parts(parts(msg)[1])
    return [{k: " ".join(str(v).split()) for k, v in g.items()} for g in groups]
