"""Webmail benchmark: server time to render a message list page and to open a message in a
folder of 10,000 messages.

    .venv/bin/python -m bench.web [--messages 10000] [--requests 200] [--seed 1]

The folder is filled straight through the storage (SQLite, group commit) with a deterministic
mix of messages: plain text, HTML with a plain alternative, and messages with a PDF attachment
(1 KB to 60 KB). The webmail's ASGI application is then called in-process through
``httpx.ASGITransport`` — the time measured is the server's (routing, session check, storage
reads, MIME decoding, sanitising, template rendering), not a network's. One logged-in session.

Measured, each over ``--requests`` requests (p50/p95/max in milliseconds):

- **list**: ``GET /mail/<inbox>?page=N`` for random pages of 50, newest first. The first request
  after start builds the folder's date index (shown separately as "cold"); later ones reuse it
  while the folder is unchanged.
- **list after a change**: the same, with a new message delivered before each request, so the
  index refreshes every time (one ``list_messages`` plus the new message's date).
- **open (first)**: ``GET /mail/<inbox>/<uid>`` of random unread messages; each marks the
  message ``\\Seen``, a committed (fsync'd) write.
- **open (again)**: the same messages a second time (no write).
- **search (cold)**: one subject search over the whole folder, for reference.

Not a test: nothing here asserts on timing. Target: list and open p95 <= 50 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import random
import re
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from bench.common import print_table
from letterbird.config import AuthSettings, Config, ListenSettings
from letterbird.directory.service import Directory
from letterbird.http.app import create_app
from letterbird.mime import parse_message
from letterbird.server.app import App
from letterbird.server.tls import TlsManager
from letterbird.storage.interface import AppendTarget, BlobSource
from letterbird.storage.sqlite import SqliteStorage

DOMAIN = "bench.test"
USER = f"reader@{DOMAIN}"
PASSWORD = "bench-password"
CHEAP_AUTH = AuthSettings(
    argon2_time_cost=1, argon2_memory_kib=8, argon2_parallelism=1, failure_delay=0.0
)
WORDS = [
    "meeting",
    "report",
    "budget",
    "invoice",
    "travel",
    "plans",
    "quarterly",
    "review",
    "lunch",
    "project",
    "deadline",
    "draft",
    "update",
    "schedule",
    "client",
    "proposal",
    "summary",
    "notes",
    "agenda",
    "follow-up",
    "question",
]


def make_message(n: int, rng: random.Random) -> bytes:
    subject = " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 7)))
    sender = f"{rng.choice(WORDS).title()} Sender <s{n % 97}@sender{n % 13}.test>"
    size = int(min(60_000, max(1_000, rng.lognormvariate(8.3, 0.9))))
    text = " ".join(rng.choice(WORDS) for _ in range(size // 7))
    lines = "\r\n".join(text[i : i + 72] for i in range(0, len(text), 72))
    day = 1 + n % 28
    head = (
        f"From: {sender}\r\nTo: Reader <{USER}>\r\nSubject: {subject} #{n}\r\n"
        f"Date: {['Mon', 'Tue', 'Wed', 'Thu'][n % 4]}, {day:02d} Oct 2026 "
        f"{n % 24:02d}:{n % 60:02d}:00 +0000\r\nMessage-ID: <{n}.bench@sender.test>\r\n"
        "MIME-Version: 1.0\r\n"
    )
    kind = n % 3
    if kind == 0:
        return (head + f"Content-Type: text/plain; charset=utf-8\r\n\r\n{lines}\r\n").encode()
    if kind == 1:
        html = "".join(f"<p>{lines[i : i + 400]}</p>\r\n" for i in range(0, len(lines), 400))
        return (
            head + 'Content-Type: multipart/alternative; boundary="alt"\r\n\r\n'
            f"--alt\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{lines}\r\n"
            f"--alt\r\nContent-Type: text/html; charset=utf-8\r\n\r\n"
            f'<div style="font-family: sans-serif">{html}<img src="https://t.test/p.gif">'
            "</div>\r\n--alt--\r\n"
        ).encode()
    pdf = "JVBERi0xLjQK" * (size // 24 + 1)
    pdf_lines = "\r\n".join(pdf[i : i + 76] for i in range(0, len(pdf), 76))
    return (
        head + 'Content-Type: multipart/mixed; boundary="mix"\r\n\r\n'
        f"--mix\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{lines[:2000]}\r\n"
        "--mix\r\nContent-Type: application/pdf; name=report.pdf\r\n"
        "Content-Disposition: attachment; filename=report.pdf\r\n"
        f"Content-Transfer-Encoding: base64\r\n\r\n{pdf_lines}\r\n--mix--\r\n"
    ).encode()


def blob(data: bytes) -> BlobSource:
    return BlobSource(
        hashlib.sha256(data).hexdigest(), len(data), parse_message(data).to_json(), data=data
    )


async def fill(storage: SqliteStorage, account_id: int, count: int, seed: int) -> None:
    rng = random.Random(seed)
    blobs = [blob(make_message(n, rng)) for n in range(count)]
    sem = asyncio.Semaphore(256)

    async def one(b: BlobSource) -> None:
        async with sem:
            await storage.append(b, [AppendTarget(account_id)])

    for i in range(0, count, 2000):  # in arrival order, batch by batch
        await asyncio.gather(*(one(b) for b in blobs[i : i + 2000]))


def summary(name: str, samples: list[float]) -> tuple[str, ...]:
    ms = sorted(s * 1000 for s in samples)
    p95 = ms[min(len(ms) - 1, int(len(ms) * 0.95))]
    return (name, str(len(ms)), f"{statistics.median(ms):.1f}", f"{p95:.1f}", f"{ms[-1]:.1f}")


async def timed(client: httpx.AsyncClient, url: str) -> float:
    start = time.perf_counter()
    r = await client.get(url)
    elapsed = time.perf_counter() - start
    if r.status_code != 200:
        raise RuntimeError(f"{url}: {r.status_code}")
    return elapsed


async def run(messages: int, requests: int, seed: int) -> None:
    with tempfile.TemporaryDirectory(prefix="lb-bench-web-") as tmp:
        base = Path(tmp)
        none = ListenSettings(**{k: [] for k, _ in ListenSettings().items()})
        config = Config(
            hostname="mx.bench.test",
            data_dir=str(base / "data"),
            auth=CHEAP_AUTH,
            listen=none,
            base_dir=str(base),
        )
        storage = SqliteStorage(base / "mail.db")
        await storage.open()
        app = App(config, storage, Directory(storage, config), TlsManager(config))
        try:
            await app.directory.add_domain(DOMAIN)
            account = await app.directory.add_user(USER, PASSWORD)
            started = time.perf_counter()
            await fill(storage, account.id, messages, seed)
            print(f"filled {messages} messages in {time.perf_counter() - started:.1f} s")
            inbox = await storage.get_mailbox(account.id, "INBOX")
            assert inbox is not None
            asgi = create_app(app)
            transport = httpx.ASGITransport(app=asgi)
            async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:
                page = await client.get("/login")
                token = re.search(r'name="login_token" value="([^"]+)"', page.text)
                assert token is not None
                r = await client.post(
                    "/login",
                    data={"username": USER, "password": PASSWORD, "login_token": token.group(1)},
                )
                assert r.status_code == 303, r.text
                rng = random.Random(seed)
                pages = max(1, messages // 50)
                rows = []
                cold = await timed(client, f"/mail/{inbox.id}")
                rows.append(summary("list, cold (builds the date index)", [cold]))
                rows.append(
                    summary(
                        "list, random page of 50",
                        [
                            await timed(client, f"/mail/{inbox.id}?page={rng.randint(1, pages)}")
                            for _ in range(requests)
                        ],
                    )
                )
                changed = []
                for n in range(requests):
                    await storage.append(
                        blob(make_message(messages + n, rng)), [AppendTarget(account.id)]
                    )
                    changed.append(await timed(client, f"/mail/{inbox.id}"))
                rows.append(summary("list after a new message (index refresh)", changed))
                uids = rng.sample(range(1, messages + 1), requests)
                rows.append(
                    summary(
                        "open, first time (marks \\Seen)",
                        [await timed(client, f"/mail/{inbox.id}/{u}") for u in uids],
                    )
                )
                rows.append(
                    summary(
                        "open again",
                        [await timed(client, f"/mail/{inbox.id}/{u}") for u in uids],
                    )
                )
                rows.append(
                    summary(
                        "frame of an HTML message (sanitised)",
                        [
                            await timed(client, f"/mail/{inbox.id}/{u}/frame")
                            for u in uids
                            if (u - 1) % 3 == 1
                        ],
                    )
                )
                search = await timed(client, f"/mail/{inbox.id}?q=budget+report&where=subject")
                rows.append(summary("search subject, whole folder (cold)", [search]))
            print()
            print_table([("request", "n", "p50 ms", "p95 ms", "max ms"), *rows])
        finally:
            await storage.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    asyncio.run(run(args.messages, args.requests, args.seed))


if __name__ == "__main__":
    main()
