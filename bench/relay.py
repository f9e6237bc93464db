"""Relay benchmark: submission → queue → remote server, Letterbird against Postfix.

    .venv/bin/python -m bench.relay [--messages 2000] [--sessions 10] [--size 4096]

N messages for a remote domain are submitted over SMTP by ``--sessions`` parallel clients
(Python ``smtplib``, one connection each, many messages per connection) and relayed to Postfix's
``smtp-sink`` on loopback (it accepts and discards). Measured per server: the submission rate
(the final ``250`` of every message: for Letterbird that is the commit of the queue row, for
Postfix the queue file fsync) and the **end-to-end** rate, submit → accepted by the sink, which
is the figure of merit. Both servers relay to the *same* sink in the same run:

* Letterbird: its ``submission`` port with AUTH PLAIN (loopback, no TLS), the queue routed to
  the sink with ``[delivery.routes]``; sending limits off;
* Postfix: a private ``postfix_relay`` (``bench/peers.py``) accepting mail from loopback with
  ``relayhost`` = the sink.

Wall-clock rates are noisy on a shared machine, so each server's **CPU per message** (user +
system time of its processes from submission to the last message at the sink, from ``/proc``;
see ``bench.smtp_inbound.cpu_seconds``) is printed too: the stable figure to compare between
versions of Letterbird. The sink and the client are not counted.

Not a test: nothing here asserts timing. The figures are printed as a table.
"""

from __future__ import annotations

import argparse
import smtplib
import threading
import time
from collections.abc import Sequence

from bench.common import letterbird, print_table
from bench.peers import peer_workdir, postfix_relay, smtp_sink
from bench.smtp_inbound import cpu_seconds

PASSWORD = "bench-relay-pw"
SENDER = "alice@bench.test"
RECIPIENT = "bob@remote.test"

EXTRA = """
[submission]
max_messages_per_hour = 0
max_recipients_per_hour = 0
[delivery]
retry = ["1s"]
tls = "none"
concurrency = {concurrency}
per_host_concurrency = {concurrency}
[delivery.routes]
"remote.test" = "{sink}"
"""


def make_message(n: int, size: int) -> bytes:
    head = (
        f"From: Alice <{SENDER}>\r\nTo: <{RECIPIENT}>\r\nSubject: relay bench {n}\r\n"
        f"Message-ID: <{n}.{time.time_ns()}@bench.test>\r\n"
        "Date: Thu, 26 Nov 2026 10:00:00 +0000\r\n\r\n"
    ).encode()
    line = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789\r\n"
    body = (line * (size // len(line) + 1))[:size]
    return head + body.rsplit(b"\r\n", 1)[0] + b"\r\n"


def submit(
    address: str, messages: int, sessions: int, size: int, login: tuple[str, str] | None
) -> float:
    """Send ``messages`` over ``sessions`` parallel connections; returns elapsed seconds."""
    host, port = address.rsplit(":", 1)
    shares = [messages // sessions + (1 if i < messages % sessions else 0) for i in range(sessions)]
    errors: list[BaseException] = []

    def client(index: int, count: int) -> None:
        try:
            with smtplib.SMTP(host, int(port), local_hostname="client.bench.test") as s:
                if login is not None:
                    s.login(*login)
                for n in range(count):
                    refused = s.sendmail(
                        SENDER, [RECIPIENT], make_message(index * 100000 + n, size)
                    )
                    if refused:
                        raise RuntimeError(f"refused: {refused}")
        except BaseException as exc:  # reported after the run
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(i, c)) for i, c in enumerate(shares) if c]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    if errors:
        raise RuntimeError(f"{len(errors)} client(s) failed, first: {errors[0]!r}")
    return elapsed


def measure(
    name: str,
    address: str,
    sink_count: object,
    messages: int,
    sessions: int,
    size: int,
    login: tuple[str, str] | None,
    timeout: float,
) -> tuple[float, float]:
    """(submission seconds, end-to-end seconds) for one server."""
    count = sink_count  # a callable: messages the sink accepted so far
    assert callable(count)
    base = count()
    start = time.perf_counter()
    submitted = submit(address, messages, sessions, size, login)
    deadline = time.monotonic() + timeout
    while count() < base + messages:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{name}: only {count() - base} of {messages} reached the sink")
        time.sleep(0.01)
    return submitted, time.perf_counter() - start


def run(messages: int, sessions: int, size: int, concurrency: int, timeout: float) -> None:
    rows: list[tuple[str, ...]] = [
        ("server", "submit msgs/s", "end-to-end msgs/s", "seconds", "CPU/msg", "note")
    ]
    rates: dict[str, float] = {}
    with smtp_sink(max_concurrency=512) as sink:
        extra = EXTRA.format(sink=sink.address, concurrency=concurrency)
        with letterbird(submission=True, extra=extra) as lb:
            lb.admin("domain", "add", "bench.test")
            lb.admin("user", "add", SENDER, "--password-stdin", stdin=PASSWORD + "\n")
            cpu = cpu_seconds(lb.pids())
            submitted, total = measure(
                "letterbird",
                lb.address("submission"),
                sink.count,
                messages,
                sessions,
                size,
                (SENDER, PASSWORD),
                timeout,
            )
            cpu = cpu_seconds(lb.pids()) - cpu
            rss = lb.peak_rss_kb()
            queue_left = lb.admin("queue", "list").strip()
            rates["letterbird"] = messages / total
            rows.append(
                (
                    "letterbird",
                    f"{messages / submitted:.0f}",
                    f"{messages / total:.0f}",
                    f"{total:.2f}",
                    f"{cpu / messages * 1e6:.0f} µs",
                    f"peak RSS={rss / 1024:.1f} MiB, queue: {queue_left.splitlines()[-1]}",
                )
            )
        with peer_workdir() as work, postfix_relay(work / "relay", relayhost=sink.address) as pf:
            cpu = cpu_seconds(pf.pids())
            submitted, total = measure(
                "postfix", pf.address, sink.count, messages, sessions, size, None, timeout
            )
            cpu = cpu_seconds(pf.pids()) - cpu
            rates["postfix"] = messages / total
            rows.append(
                (
                    "postfix (relay)",
                    f"{messages / submitted:.0f}",
                    f"{messages / total:.0f}",
                    f"{total:.2f}",
                    f"{cpu / messages * 1e6:.0f} µs",
                    "queue file fsync'd before 250; relayhost = the sink",
                )
            )
    print(
        f"relay: {messages} messages of ~{size} bytes over {sessions} submission sessions "
        f"-> smtp-sink (Letterbird delivery concurrency {concurrency})"
    )
    print_table(rows)
    print(f"letterbird / postfix end-to-end = {rates['letterbird'] / rates['postfix']:.2f}x")


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=2000)
    ap.add_argument("--sessions", type=int, default=10)
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--concurrency", type=int, default=20, help="Letterbird [delivery] concurrency")
    ap.add_argument("--timeout", type=float, default=600.0)
    args = ap.parse_args(argv)
    run(args.messages, args.sessions, args.size, args.concurrency, args.timeout)


if __name__ == "__main__":
    main()
