"""SMTP reception benchmark: Postfix's smtp-source against Letterbird, Postfix and aiosmtpd.

    .venv/bin/python -m bench.smtp_inbound [--messages 5000] [--sessions 20] [--size 4096]
        [--storage-url postgresql://postgres@127.0.0.1:5432/test]

Each server receives the same load from ``/usr/sbin/smtp-source`` (``-d``: each session keeps
its connection): Letterbird (SQLite, fsync'd group commit before every 250), a private Postfix
MX delivering to maildir (queue file fsync'd before 250; delivery to maildir after), and a
small aiosmtpd server that fsyncs every message to a maildir before 250. Prints messages per
second accepted (smtp-source's wall time), Postfix's rate until the last message reached the
maildir too, the ratios, and Letterbird's peak RSS. Not a test: nothing here asserts timing.

Wall-clock rates are noisy on a shared machine, so each server's **CPU per message** is printed
too (user + system time of its processes over the run, from ``/proc``: Letterbird's one
process; aiosmtpd's; Postfix's process group, with reaped children counted through their
parent's ``cutime``/``cstime``; for Postfix until the last message is in the maildir). It is
stable under load and is the figure to compare between versions of Letterbird.

With ``--storage-url`` Letterbird also runs on that PostgreSQL database (in a throw-away schema,
dropped afterwards) with one node, then with two nodes sharing it, each node getting half of the
sessions and messages at the same time: the rate is all messages over the wall time.
"""

from __future__ import annotations

import argparse
import time

from bench.common import letterbird, print_table
from bench.peers import aiosmtpd_baseline, peer_workdir, postfix_mx, smtp_source


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU of ``pids`` and of their children already waited for (``/proc``)."""
    import os

    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        total += sum(int(f) for f in fields[11:15])  # utime stime cutime cstime
    return total / os.sysconf("SC_CLK_TCK")


def _per_message(seconds: float, messages: int) -> str:
    return f"{seconds / messages * 1e6:.0f} µs"


def _letterbird_pg(
    url: str, nodes: int, messages: int, sessions: int, size: int
) -> tuple[float, str]:
    """Letterbird on PostgreSQL with ``nodes`` processes; returns (elapsed, note)."""
    import asyncio
    import contextlib
    import os
    import threading

    import asyncpg  # type: ignore[import-untyped]

    from letterbird.storage.pg_schema import parse_pg_url

    schema = f"lb_bench_{os.getpid()}_{nodes}"
    schema_url = url + ("&" if "?" in url else "?") + f"schema={schema}"
    extra = f'\n[storage]\nurl = "{schema_url}"\n'
    try:
        with contextlib.ExitStack() as stack:
            lbs = [
                stack.enter_context(letterbird(smtp=True, extra=extra, workers=1))
                for _ in range(nodes)
            ]
            lbs[0].admin("domain", "add", "example.test")
            lbs[0].admin("user", "add", "bob@example.test", "--password-stdin", stdin="bench-pw\n")
            times: list[float] = []

            def load(lb: object, n: int, s: int) -> None:
                times.append(
                    smtp_source(
                        lb.address("smtp"),  # type: ignore[attr-defined]
                        sessions=s,
                        messages=n,
                        size=size,
                        recipient="bob@example.test",
                        reuse_connection=True,
                    )
                )

            shares = [(messages // nodes, max(sessions // nodes, 1)) for _ in lbs]
            shares[0] = (messages - sum(m for m, _ in shares[1:]), shares[0][1])
            start = time.perf_counter()
            threads = [
                threading.Thread(target=load, args=(lb, m, s))
                for lb, (m, s) in zip(lbs, shares, strict=True)
            ]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            elapsed = time.perf_counter() - start
            if len(times) != nodes:
                raise RuntimeError("an smtp-source run failed")
            stored = lbs[-1].admin("mailbox", "list", "bob@example.test").splitlines()[0].split()[1]
            rss = max(lb.peak_rss_kb() for lb in lbs)
            return elapsed, f"stored={stored} peak RSS/node={rss / 1024:.1f} MiB"
    finally:

        async def drop() -> None:
            parsed = parse_pg_url(url)
            conn = await asyncpg.connect(parsed.dsn)
            try:
                await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
            finally:
                await conn.close()

        asyncio.run(drop())


def run(
    messages: int, sessions: int, size: int, storage_url: str | None = None, workers: int = 0
) -> None:
    results: dict[str, float] = {}
    rows: list[tuple[str, ...]] = [("server", "msgs/s", "seconds", "CPU/msg", "note")]

    with letterbird(smtp=True, workers=workers) as lb:
        lb.admin("domain", "add", "example.test")
        lb.admin("user", "add", "bob@example.test", "--password-stdin", stdin="bench-pw\n")
        processes = lb.pids()
        cpu = cpu_seconds(processes)
        elapsed = smtp_source(
            lb.address("smtp"),
            sessions=sessions,
            messages=messages,
            size=size,
            recipient="bob@example.test",
            reuse_connection=True,
        )
        cpu = cpu_seconds(processes) - cpu
        stored = lb.admin("mailbox", "list", "bob@example.test").splitlines()[0].split()[1]
        rss = lb.peak_rss_kb()
        shape = f"{len(processes) - 1} workers, " if len(processes) > 1 else ""
        results["letterbird"] = messages / elapsed
        rows.append(
            (
                "letterbird",
                f"{messages / elapsed:.0f}",
                f"{elapsed:.2f}",
                _per_message(cpu, messages),
                f"{shape}stored={stored} peak RSS={rss / 1024:.1f} MiB",
            )
        )

    if storage_url:
        for nodes in (1, 2):
            elapsed, note = _letterbird_pg(storage_url, nodes, messages, sessions, size)
            label = f"letterbird (PostgreSQL, {nodes} node{'s' if nodes > 1 else ''})"
            results[label] = messages / elapsed
            rows.append((label, f"{messages / elapsed:.0f}", f"{elapsed:.2f}", "-", note))

    with peer_workdir() as work:
        with aiosmtpd_baseline(work / "aiosmtpd") as base:
            cpu = cpu_seconds(base.pids())
            elapsed = smtp_source(
                base.address,
                sessions=sessions,
                messages=messages,
                size=size,
                recipient="bob@example.test",
                reuse_connection=True,
            )
            base.wait_for_count(messages, timeout=60)
            cpu = cpu_seconds(base.pids()) - cpu
            results["aiosmtpd"] = messages / elapsed
            rows.append(
                (
                    "aiosmtpd (fsync maildir)",
                    f"{messages / elapsed:.0f}",
                    f"{elapsed:.2f}",
                    _per_message(cpu, messages),
                    f"stored={base.count()}",
                )
            )

        with postfix_mx(work / "postfix", domains=["example.test"], users=["bob"]) as pf:
            cpu = cpu_seconds(pf.pids())
            start = time.perf_counter()
            elapsed = smtp_source(
                pf.address,
                sessions=sessions,
                messages=messages,
                size=size,
                recipient="bob@example.test",
                reuse_connection=True,
            )
            pf.wait_for_maildir("bob", messages, timeout=600)
            delivered = time.perf_counter() - start
            cpu = cpu_seconds(pf.pids()) - cpu
            results["postfix"] = messages / elapsed
            rows.append(
                (
                    "postfix (queue, fsync)",
                    f"{messages / elapsed:.0f}",
                    f"{elapsed:.2f}",
                    _per_message(cpu, messages),
                    f"all in maildir after {delivered:.2f}s ({messages / delivered:.0f} msgs/s)",
                )
            )

    print(f"smtp-source: {messages} messages of {size} bytes over {sessions} sessions")
    print_table(rows)
    lb_rate = results["letterbird"]
    print(f"letterbird / aiosmtpd = {lb_rate / results['aiosmtpd']:.2f}x   (target >= 1.5x)")
    print(f"letterbird / postfix  = {lb_rate / results['postfix']:.2f}x   (target >= 2x)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=5000)
    ap.add_argument("--sessions", type=int, default=20)
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument(
        "--storage-url",
        help="also run Letterbird on this PostgreSQL database, with one node and two nodes",
    )
    ap.add_argument(
        "--workers",
        type=int,
        default=0,
        help="Letterbird's serving processes (0, the default: one per CPU core)",
    )
    args = ap.parse_args()
    run(args.messages, args.sessions, args.size, args.storage_url, args.workers)


if __name__ == "__main__":
    main()
