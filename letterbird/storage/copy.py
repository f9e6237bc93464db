"""``letterbird storage copy``: move a whole mail store between backends (SQLite → PostgreSQL,
and back, or between two databases of one kind).

Everything is copied with its identity: domain, account, mailbox and queue ids, UIDVALIDITY,
UIDNEXT, HIGHESTMODSEQ, every message's UID, modseq, flags and internal date, tombstones, blob
reference counts and queue entries with their leases. So IMAP, POP3 (UIDL is UIDVALIDITY.UID)
and JMAP clients see the same mailbox and re-download nothing. The webmail's session secret and
its logged-out sessions come along too: sessions stay valid, and logged out, across the move.

- **Resumable.** Tables are copied in dependency order, each in key order, in batches that
  commit one at a time; a run that stops (crash, Ctrl-C, network) continues after the last
  committed key the next time. The destination records which source it is being filled from
  (``meta`` ``copy_source``) and refuses any other, and refuses a destination that already
  holds other data.
- **Verified.** At the end, every table's row count and a SHA-256 digest over its rows (in key
  order, in one canonical form) must match on both sides, and every message blob in the
  destination must hash to its content address.
- **Bounded memory.** Batches are limited in rows and, for message bytes, in octets.

Run it with the servers stopped (the source must not change while it is copied); then point
``[storage] url`` at the destination.
"""

from __future__ import annotations

import asyncio
import hashlib
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import asyncpg

from letterbird.storage.interface import StorageError
from letterbird.storage.pg_schema import CHUNK, parse_pg_url

__all__ = ["META_KEYS", "TABLES", "CopyReport", "copy_storage", "open_end", "verify_copy"]

Row = tuple[Any, ...]
Key = tuple[Any, ...]
Progress = Callable[[str, int, int], None]  # (phase/table, rows done, rows in table)

BLOB_BATCH_BYTES = 32 * 1024 * 1024


@dataclass(frozen=True)
class Table:
    name: str
    key: tuple[str, ...]
    columns: tuple[str, ...]  # canonical column order (what both ends read and write)


TABLES: tuple[Table, ...] = (
    Table("domains", ("id",), ("id", "name", "created")),
    Table(
        "accounts",
        ("id",),
        ("id", "domain_id", "local", "local_norm", "password_hash", "quota", "used", "created"),
    ),
    Table("aliases", ("id",), ("id", "domain_id", "local", "local_norm", "targets")),
    Table(
        "mailboxes",
        ("id",),
        (
            "id",
            "account_id",
            "name",
            "role",
            "uidvalidity",
            "uidnext",
            "highestmodseq",
            "subscribed",
        ),
    ),
    Table("blobs", ("id",), ("id", "hash", "size", "refcount", "structure", "data")),
    Table(
        "messages",
        ("mailbox_id", "uid"),
        ("mailbox_id", "uid", "modseq", "flags", "internaldate", "size", "blob_id"),
    ),
    Table("tombstones", ("mailbox_id", "uid"), ("mailbox_id", "uid", "modseq")),
    Table(
        "queue_messages",
        ("id",),
        ("id", "blob_id", "sender", "envid", "ret", "account_id", "created"),
    ),
    Table(
        "queue_entries",
        ("id",),
        (
            "id",
            "queue_id",
            "domain",
            "recipients",
            "due",
            "attempts",
            "last_error",
            "owner",
            "lease_until",
            "warned",
            "created",
        ),
    ),
    Table("session_revocations", ("nonce",), ("nonce", "expires")),
)
# ``meta`` rows copied as they are: the webmail's session secret, so sessions (and their
# revocations above) stay as they were, and no node offers an older secret of its own.
META_KEYS: tuple[str, ...] = ("web_session_secret",)
_BY_NAME = {t.name: t for t in TABLES}


class End(Protocol):
    """One side of a copy: a database read (and written) in canonical rows."""

    label: str

    async def count(self, table: Table) -> int: ...
    async def read(
        self, table: Table, after: Key | None, limit: int, data: bool = True
    ) -> list[Row]: ...
    async def last_key(self, table: Table) -> Key | None: ...
    async def write(self, table: Table, rows: list[Row]) -> None: ...
    async def uidvalidity_floor(self) -> int: ...
    async def finish(self, uidvalidity_floor: int) -> None: ...
    async def get_meta(self, key: str) -> str | None: ...
    async def set_meta(self, key: str, value: str) -> None: ...
    async def close(self) -> None: ...


def _blob_cut(sizes: Sequence[tuple[int, int]], budget: int) -> list[int]:
    """Blob ids to read in one batch: at least one, at most ``budget`` octets beyond that."""
    out: list[int] = []
    total = 0
    for blob_id, size in sizes:
        if out and total + size > budget:
            break
        out.append(blob_id)
        total += size
    return out


# -- SQLite ----------------------------------------------------------------------------------
class SqliteEnd:
    def __init__(self, path: str, conn: sqlite3.Connection, label: str) -> None:
        self.path = path
        self.conn = conn
        self.label = label
        self.blob_budget = BLOB_BATCH_BYTES

    @classmethod
    async def open(cls, path: str, *, create: bool) -> SqliteEnd:
        from letterbird.storage.sqlite import SCHEMA_VERSION, SqliteStorage

        if create:
            s = SqliteStorage(path)  # creates the file and the schema (migrations)
            await s.open()
            await s.close()
        elif not Path(path).is_file():
            raise StorageError(f"no SQLite database at {path}")

        def connect() -> sqlite3.Connection:
            c = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
            c.execute("PRAGMA synchronous=FULL")
            return c

        conn = await asyncio.to_thread(connect)
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version != SCHEMA_VERSION:
            conn.close()
            raise StorageError(
                f"{path}: schema version {version}, expected {SCHEMA_VERSION}: "
                "run `letterbird migrate` on it first"
            )
        return cls(path, conn, f"sqlite:///{path}")

    async def _run(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        return await asyncio.to_thread(fn, self.conn)

    async def count(self, table: Table) -> int:
        return int(
            await self._run(lambda c: c.execute(f"SELECT count(*) FROM {table.name}").fetchone()[0])
        )

    async def read(
        self, table: Table, after: Key | None, limit: int, data: bool = True
    ) -> list[Row]:
        keys = ", ".join(table.key)
        where = f"WHERE ({keys}) > ({', '.join('?' * len(table.key))})" if after else ""
        args: list[Any] = list(after or ())

        def fn(c: sqlite3.Connection) -> list[Row]:
            if table.name == "blobs":
                sizes = c.execute(
                    f"SELECT id, size FROM blobs {where} ORDER BY id LIMIT ?", [*args, limit]
                ).fetchall()
                ids = _blob_cut(sizes, self.blob_budget if data else 1 << 62)
                if not ids:
                    return []
                cols = "id, hash, size, refcount, structure, " + ("data" if data else "NULL")
                return [
                    (r[0], r[1], r[2], r[3], bytes(r[4]), None if r[5] is None else bytes(r[5]))
                    for r in c.execute(
                        f"SELECT {cols} FROM blobs WHERE id BETWEEN ? AND ? ORDER BY id",
                        (ids[0], ids[-1]),
                    )
                ]
            rows = c.execute(
                f"SELECT {', '.join(table.columns)} FROM {table.name} {where} "
                f"ORDER BY {keys} LIMIT ?",
                [*args, limit],
            ).fetchall()
            return [_from_sqlite(table.name, r) for r in rows]

        return list(await self._run(fn))

    async def last_key(self, table: Table) -> Key | None:
        order = ", ".join(f"{k} DESC" for k in table.key)
        row = await self._run(
            lambda c: c.execute(
                f"SELECT {', '.join(table.key)} FROM {table.name} ORDER BY {order} LIMIT 1"
            ).fetchone()
        )
        return tuple(row) if row else None

    async def write(self, table: Table, rows: list[Row]) -> None:
        cols = table.columns
        sql = f"INSERT INTO {table.name}({', '.join(cols)}) VALUES({', '.join('?' * len(cols))})"
        values = [_to_sqlite(table.name, r) for r in rows]

        def fn(c: sqlite3.Connection) -> None:
            c.execute("BEGIN IMMEDIATE")
            try:
                c.executemany(sql, values)
                c.execute("COMMIT")
            except BaseException:
                c.execute("ROLLBACK")
                raise

        await self._run(fn)

    async def uidvalidity_floor(self) -> int:
        def fn(c: sqlite3.Connection) -> int:
            meta = c.execute("SELECT value FROM meta WHERE key='uidvalidity'").fetchone()
            top = c.execute("SELECT coalesce(max(uidvalidity), 0) FROM mailboxes").fetchone()
            return max(int(meta[0]) if meta else 0, int(top[0]))

        return int(await self._run(fn))

    async def finish(self, uidvalidity_floor: int) -> None:
        floor = max(uidvalidity_floor, await self.uidvalidity_floor())
        await self.set_meta("uidvalidity", str(floor))

    async def get_meta(self, key: str) -> str | None:
        row = await self._run(
            lambda c: c.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        )
        return None if row is None else str(row[0])

    async def set_meta(self, key: str, value: str) -> None:
        await self._run(
            lambda c: c.execute(
                "INSERT INTO meta(key, value) VALUES(?, ?) "
                "ON CONFLICT(key) DO UPDATE SET value=excluded.value",
                (key, value),
            )
        )

    async def close(self) -> None:
        await self._run(lambda c: c.close())


def _from_sqlite(table: str, r: Row) -> Row:
    if table == "aliases":
        return (*r[:4], [t for t in r[4].split("\n") if t])
    if table == "mailboxes":
        return (*r[:7], bool(r[7]))
    if table == "messages":
        return (r[0], r[1], r[2], sorted(r[3].split()) if r[3] else [], *r[4:])
    if table == "queue_entries":
        return (*r[:9], bool(r[9]), r[10])
    return tuple(r)


def _to_sqlite(table: str, r: Row) -> Row:
    if table == "aliases":
        return (*r[:4], "\n".join(r[4]))
    if table == "mailboxes":
        return (*r[:7], int(r[7]))
    if table == "messages":
        return (r[0], r[1], r[2], " ".join(sorted(r[3])), *r[4:])
    if table == "queue_entries":
        return (*r[:9], int(r[9]), r[10])
    return r


# -- PostgreSQL ------------------------------------------------------------------------------
class PgEnd:
    def __init__(self, conn: Any, label: str) -> None:
        self.conn = conn
        self.label = label
        self.blob_budget = BLOB_BATCH_BYTES

    @classmethod
    async def open(cls, url: str, *, create: bool) -> PgEnd:
        from letterbird.storage.pg_schema import SCHEMA_VERSION, migrate, schema_version

        parsed = parse_pg_url(url)
        try:
            conn = await asyncpg.connect(parsed.dsn, server_settings=parsed.server_settings)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise StorageError(f"cannot connect to PostgreSQL {parsed.redacted}: {exc}") from exc
        if create:
            await migrate(conn, parsed.schema)
        version = await schema_version(conn)
        if version != SCHEMA_VERSION:
            await conn.close()
            raise StorageError(
                f"{parsed.redacted}: schema version {version}, expected {SCHEMA_VERSION}: "
                "run `letterbird migrate` on it first"
            )
        return cls(conn, parsed.redacted)

    async def count(self, table: Table) -> int:
        return int(await self.conn.fetchval(f"SELECT count(*) FROM {table.name}"))

    def _where(self, table: Table, after: Key | None) -> str:
        if not after:
            return ""
        keys = ", ".join(f'{k} COLLATE "C"' if _text_key(table) else k for k in table.key)
        params = ", ".join(f"${i + 1}" for i in range(len(table.key)))
        return f"WHERE ({keys}) > ({params})"

    def _order(self, table: Table, desc: bool = False) -> str:
        d = " DESC" if desc else ""
        return ", ".join((f'{k} COLLATE "C"' if _text_key(table) else k) + d for k in table.key)

    async def read(
        self, table: Table, after: Key | None, limit: int, data: bool = True
    ) -> list[Row]:
        where = self._where(table, after)
        args: list[Any] = list(after or ())
        n = len(args) + 1
        if table.name == "blobs":
            sizes = await self.conn.fetch(
                f"SELECT id, size FROM blobs {where} ORDER BY id LIMIT ${n}", *args, limit
            )
            ids = _blob_cut([(r[0], r[1]) for r in sizes], self.blob_budget if data else 1 << 62)
            if not ids:
                return []
            rows = await self.conn.fetch(
                "SELECT id, hash, size, refcount, structure FROM blobs "
                "WHERE id = ANY($1::bigint[]) ORDER BY id",
                ids,
            )
            chunks: dict[int, list[bytes]] = {}
            if data:
                for c in await self.conn.fetch(
                    "SELECT blob_id, data FROM blob_chunks WHERE blob_id = ANY($1::bigint[]) "
                    "ORDER BY blob_id, n",
                    ids,
                ):
                    chunks.setdefault(c[0], []).append(bytes(c[1]))
            return [
                (
                    r[0],
                    r[1],
                    r[2],
                    r[3],
                    bytes(r[4]),
                    b"".join(chunks.get(r[0], [])) if data else None,
                )
                for r in rows
            ]
        rows = await self.conn.fetch(
            f"SELECT {', '.join(table.columns)} FROM {table.name} {where} "
            f"ORDER BY {self._order(table)} LIMIT ${n}",
            *args,
            limit,
        )
        return [_from_pg(table.name, tuple(r)) for r in rows]

    async def last_key(self, table: Table) -> Key | None:
        row = await self.conn.fetchrow(
            f"SELECT {', '.join(table.key)} FROM {table.name} "
            f"ORDER BY {self._order(table, desc=True)} LIMIT 1"
        )
        return tuple(row) if row else None

    async def write(self, table: Table, rows: list[Row]) -> None:
        async with self.conn.transaction():
            if table.name == "blobs":
                await self.conn.copy_records_to_table(
                    "blobs",
                    records=[(r[0], r[1], r[2], r[3], r[4], CHUNK) for r in rows],
                    columns=["id", "hash", "size", "refcount", "structure", "chunk"],
                )
                pieces = [
                    (r[0], i // CHUNK, r[5][i : i + CHUNK])
                    for r in rows
                    for i in range(0, len(r[5]), CHUNK)
                ]
                if pieces:
                    await self.conn.copy_records_to_table(
                        "blob_chunks", records=pieces, columns=["blob_id", "n", "data"]
                    )
                return
            await self.conn.copy_records_to_table(
                table.name, records=rows, columns=list(table.columns)
            )

    async def uidvalidity_floor(self) -> int:
        row = await self.conn.fetchrow(
            "SELECT (SELECT last_value FROM uidvalidity_seq), "
            "(SELECT coalesce(max(uidvalidity), 0) FROM mailboxes)"
        )
        return max(int(row[0]), int(row[1]))

    async def finish(self, uidvalidity_floor: int) -> None:
        floor = max(uidvalidity_floor, await self.uidvalidity_floor())
        async with self.conn.transaction():
            await self.conn.execute("SELECT setval('uidvalidity_seq', $1)", floor)
            for name in ("domains", "accounts", "aliases", "mailboxes", "blobs", "queue_entries"):
                await self.conn.execute(
                    f"SELECT setval(pg_get_serial_sequence('{name}', 'id'), "
                    f"coalesce((SELECT max(id) FROM {name}), 0) + 1, false)"
                )

    async def get_meta(self, key: str) -> str | None:
        value = await self.conn.fetchval("SELECT value FROM meta WHERE key=$1", key)
        return None if value is None else str(value)

    async def set_meta(self, key: str, value: str) -> None:
        await self.conn.execute(
            "INSERT INTO meta(key, value) VALUES($1, $2) "
            "ON CONFLICT(key) DO UPDATE SET value=excluded.value",
            key,
            value,
        )

    async def close(self) -> None:
        await self.conn.close()


def _text_key(table: Table) -> bool:
    return table.name in ("queue_messages", "session_revocations")


def _from_pg(table: str, r: Row) -> Row:
    if table == "aliases":
        return (*r[:4], [t for t in r[4] if t])
    if table == "messages":
        return (r[0], r[1], r[2], sorted(r[3]), *r[4:])
    return r


# -- the copy ---------------------------------------------------------------------------------
async def open_end(url: str, *, create: bool) -> End:
    """Open one side: ``sqlite:///PATH`` or ``postgresql://…`` (``create``: make the schema)."""
    if url.startswith("sqlite:///"):
        return await SqliteEnd.open(url[len("sqlite:///") :], create=create)
    if url.startswith(("postgresql://", "postgres://")):
        try:
            return await PgEnd.open(url, create=create)
        except ValueError as exc:
            raise StorageError(str(exc)) from None
    raise StorageError(f"unsupported storage URL {url!r}")


@dataclass
class CopyReport:
    source: str
    destination: str
    copied: dict[str, int] = field(default_factory=dict)  # rows written by this run
    totals: dict[str, int] = field(default_factory=dict)  # rows in the source
    resumed: bool = False
    verified: bool = False
    problems: list[str] = field(default_factory=list)


async def _has_data(end: End) -> bool:
    for table in TABLES:
        if await end.count(table):
            return True
    return False


async def copy_storage(
    source_url: str,
    dest_url: str,
    *,
    batch: int = 500,
    verify: bool = True,
    progress: Progress | None = None,
) -> CopyReport:
    """Copy everything from ``source_url`` into ``dest_url`` (created or resumed)."""
    if source_url == dest_url:
        raise StorageError("source and destination are the same")
    src = await open_end(source_url, create=False)
    try:
        dst = await open_end(dest_url, create=True)
    except BaseException:
        await src.close()
        raise
    report = CopyReport(src.label, dst.label)
    try:
        recorded = await dst.get_meta("copy_source")
        if recorded is None:
            if await _has_data(dst):
                raise StorageError(
                    f"{dst.label} already holds data that was not copied from {src.label}; "
                    "copy into an empty database"
                )
            await dst.set_meta("copy_source", src.label)
        elif recorded != src.label:
            raise StorageError(f"{dst.label} is a copy of {recorded}, not of {src.label}")
        else:
            report.resumed = True
        await dst.set_meta("copy_state", "copying")
        for table in TABLES:
            total = await src.count(table)
            report.totals[table.name] = total
            after = await dst.last_key(table)
            done = await dst.count(table)
            written = 0
            if progress:
                progress(table.name, done, total)
            while True:
                rows = await src.read(table, after, batch)
                if not rows:
                    break
                await dst.write(table, rows)
                written += len(rows)
                after = tuple(rows[-1][: len(table.key)])
                if progress:
                    progress(table.name, done + written, total)
            report.copied[table.name] = written
        for key in META_KEYS:
            value = await src.get_meta(key)
            if value is not None:
                await dst.set_meta(key, value)
        await dst.finish(await src.uidvalidity_floor())
        if verify:
            report.problems = await _verify(src, dst, batch, progress)
            report.verified = not report.problems
            if report.problems:
                raise StorageError("verification failed: " + "; ".join(report.problems[:5]))
        await dst.set_meta("copy_state", "done")
    finally:
        await src.close()
        await dst.close()
    return report


async def verify_copy(
    source_url: str, dest_url: str, *, batch: int = 500, progress: Progress | None = None
) -> list[str]:
    """Compare two stores table by table; returns the differences (empty: identical)."""
    src = await open_end(source_url, create=False)
    try:
        dst = await open_end(dest_url, create=False)
    except BaseException:
        await src.close()
        raise
    try:
        return await _verify(src, dst, batch, progress)
    finally:
        await src.close()
        await dst.close()


async def _digest(
    end: End,
    table: Table,
    batch: int,
    check_blobs: bool,
    problems: list[str],
    progress: Progress | None,
    total: int,
) -> tuple[int, str]:
    h = hashlib.sha256()
    n = 0
    after: Key | None = None
    while True:
        rows = await end.read(table, after, batch, data=check_blobs)
        if not rows:
            break
        for r in rows:
            if table.name == "blobs":
                if check_blobs:
                    data = r[5]
                    if len(data) != r[2] or hashlib.sha256(data).hexdigest() != r[1]:
                        problems.append(f"{end.label}: blob {r[0]} does not match its hash")
                r = r[:5]
            h.update(repr(r).encode())
        n += len(rows)
        after = tuple(rows[-1][: len(table.key)])
        if progress:
            progress(f"verify {table.name}", n, total)
    return n, h.hexdigest()


async def _verify(src: End, dst: End, batch: int, progress: Progress | None) -> list[str]:
    problems: list[str] = []
    for table in TABLES:
        total = await src.count(table)
        n_src, d_src = await _digest(src, table, batch, False, problems, None, total)
        n_dst, d_dst = await _digest(dst, table, batch, True, problems, progress, total)
        if n_src != n_dst:
            problems.append(f"{table.name}: {n_src} rows in the source, {n_dst} in the copy")
        elif d_src != d_dst:
            problems.append(f"{table.name}: the rows differ (digest mismatch)")
    for key in META_KEYS:
        if await src.get_meta(key) != await dst.get_meta(key):
            problems.append(f"meta {key} differs")
    if await src.uidvalidity_floor() > await dst.uidvalidity_floor():
        problems.append("the copy could reuse a UIDVALIDITY value")
    return problems
