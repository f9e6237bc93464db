"""The embedded SQLite backend (DESIGN.md §3–§5).

- One dedicated **writer thread** owns the only writing connection. Write jobs are queued to it;
  it takes every job that is waiting, runs them in one ``BEGIN IMMEDIATE`` transaction and
  commits once: **group commit**, so concurrent deliveries share one fsync. A job that fails is
  rolled back alone (the batch is run again with a SAVEPOINT per job, so write functions must
  touch nothing but the connection); a failed COMMIT fails the whole batch.
  Results are handed back to the event loop only after the COMMIT returned.
- WAL journal with ``synchronous=FULL``: a committed transaction survives power loss.
- Reads run on a small pool of reader threads, each with its own connection (WAL readers never
  block the writer). Large message bytes are read with incremental blob I/O.
- UIDs and modseqs are allocated by the single writer, so they are committed in increasing order.
- Message bytes live in the ``blobs`` table, keyed by sha256, reference-counted.
- **Several processes** may serve one database (the ``workers`` setting, the CLI): the writers of
  every process take turns on an ``flock`` of ``<db>-writer.lock`` held from ``BEGIN IMMEDIATE``
  to ``COMMIT``, so a waiting writer is woken by the kernel the moment the lock is free rather
  than by SQLite's busy handler, which sleeps 1, 2, 5, 10 … ms and would ruin group commit.
  POP3 maildrop locks are byte-range locks (byte = account id) of ``<db>-maildrop.lock``, which
  the kernel drops when their process dies; failed logins are rows of ``auth_failures``, so
  login throttling holds across processes (as on PostgreSQL across nodes).

Why stdlib ``sqlite3`` on our own threads rather than aiosqlite or an ORM: ~9 µs per query versus
~150 µs (aiosqlite) or ~680 µs (SQLAlchemy async) measured on these machines (DESIGN.md).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import fcntl
import json
import logging
import os
import queue
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

from letterbird.logs import event
from letterbird.storage import names
from letterbird.storage import semantics as sem
from letterbird.storage.events import ChangeBus, ChangeEvent, ChangeKind
from letterbird.storage.interface import (
    SPECIAL_USE_DEFAULTS,
    Account,
    Alias,
    AppendTarget,
    BlobSource,
    Changes,
    Domain,
    FlagMode,
    Mailbox,
    MailboxStatus,
    MessageRecord,
    NotFound,
    Notification,
    OutgoingMessage,
    QueueEntry,
    QueueRecipient,
    StorageError,
    StoreResult,
)

log = logging.getLogger("letterbird.storage")

T = TypeVar("T")

# (result, change events to publish after commit)
WriteFn = Callable[[sqlite3.Connection], tuple[T, list[ChangeEvent]]]

MAX_BATCH = 512
INLINE_READ_BYTES = 256 * 1024  # larger blob reads run on a reader thread
BLOB_CHUNK = 1 << 20
#: Expired ``auth_failures`` rows (of any key) deleted by each recorded failed login: enough to
#: keep up with the two rows a failure adds, few enough to keep that write short.
AUTH_FAILURE_PRUNE_LIMIT = 500

MIGRATIONS: list[str] = [
    # version 1
    """
    CREATE TABLE domains(
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        created REAL NOT NULL
    );
    CREATE TABLE accounts(
        id INTEGER PRIMARY KEY,
        domain_id INTEGER NOT NULL REFERENCES domains(id),
        local TEXT NOT NULL,
        local_norm TEXT NOT NULL,
        password_hash TEXT NOT NULL,
        quota INTEGER NOT NULL DEFAULT 0,
        used INTEGER NOT NULL DEFAULT 0,
        created REAL NOT NULL,
        UNIQUE(domain_id, local_norm)
    );
    CREATE TABLE aliases(
        id INTEGER PRIMARY KEY,
        domain_id INTEGER NOT NULL REFERENCES domains(id),
        local TEXT,
        local_norm TEXT NOT NULL,
        targets TEXT NOT NULL,
        UNIQUE(domain_id, local_norm)
    );
    CREATE TABLE mailboxes(
        id INTEGER PRIMARY KEY,
        account_id INTEGER NOT NULL REFERENCES accounts(id),
        name TEXT NOT NULL,
        role TEXT,
        uidvalidity INTEGER NOT NULL,
        uidnext INTEGER NOT NULL DEFAULT 1,
        highestmodseq INTEGER NOT NULL DEFAULT 1,
        subscribed INTEGER NOT NULL DEFAULT 1,
        UNIQUE(account_id, name)
    );
    CREATE TABLE blobs(
        id INTEGER PRIMARY KEY,
        hash TEXT NOT NULL UNIQUE,
        size INTEGER NOT NULL,
        refcount INTEGER NOT NULL,
        structure BLOB NOT NULL,
        data BLOB NOT NULL
    );
    CREATE TABLE messages(
        mailbox_id INTEGER NOT NULL,
        uid INTEGER NOT NULL,
        modseq INTEGER NOT NULL,
        flags TEXT NOT NULL DEFAULT '',
        internaldate REAL NOT NULL,
        size INTEGER NOT NULL,
        blob_id INTEGER NOT NULL REFERENCES blobs(id),
        PRIMARY KEY(mailbox_id, uid)
    ) WITHOUT ROWID;
    CREATE INDEX messages_modseq ON messages(mailbox_id, modseq);
    CREATE TABLE tombstones(
        mailbox_id INTEGER NOT NULL,
        uid INTEGER NOT NULL,
        modseq INTEGER NOT NULL,
        PRIMARY KEY(mailbox_id, uid)
    ) WITHOUT ROWID;
    CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
    """,
]
MIGRATIONS.append(
    # version 2: the outgoing queue (DESIGN.md §6)
    """
    CREATE TABLE queue_messages(
        id TEXT PRIMARY KEY,
        blob_id INTEGER NOT NULL REFERENCES blobs(id),
        sender TEXT NOT NULL,
        envid TEXT,
        ret TEXT,
        account_id INTEGER,
        created REAL NOT NULL
    );
    CREATE TABLE queue_entries(
        id INTEGER PRIMARY KEY,
        queue_id TEXT NOT NULL REFERENCES queue_messages(id),
        domain TEXT NOT NULL,
        recipients TEXT NOT NULL,
        due REAL NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        last_error TEXT NOT NULL DEFAULT '',
        owner TEXT,
        lease_until REAL,
        warned INTEGER NOT NULL DEFAULT 0,
        created REAL NOT NULL
    );
    CREATE INDEX queue_entries_due ON queue_entries(due);
    CREATE INDEX queue_entries_queue_id ON queue_entries(queue_id);
    """
)
MIGRATIONS.append(
    # version 3: logged-out webmail sessions (letterbird.http.sessions), until they expire
    """
    CREATE TABLE session_revocations(
        nonce TEXT PRIMARY KEY,
        expires REAL NOT NULL
    );
    CREATE INDEX session_revocations_expires ON session_revocations(expires);
    """
)
MIGRATIONS.append(
    # version 4: failed logins, counted across the processes serving the database
    """
    CREATE TABLE auth_failures(
        key TEXT NOT NULL,
        at REAL NOT NULL
    );
    CREATE INDEX auth_failures_key ON auth_failures(key, at);
    CREATE INDEX auth_failures_at ON auth_failures(at);
    """
)
SCHEMA_VERSION = len(MIGRATIONS)


# How this backend stores flags and alias targets: flags as one space-separated string
# (the canonical order of :func:`semantics.sorted_flags`), targets one a line.
def _flags_to_text(flags: Iterable[str]) -> str:
    return " ".join(sorted(set(flags)))


def _text_to_flags(text: str) -> frozenset[str]:
    return frozenset(text.split()) if text else frozenset()


def _alias(row: Any) -> Alias:
    return sem.alias_of(row, row[3].split("\n"))


_MESSAGES = f"SELECT {sem.MESSAGE_COLS} WHERE m.mailbox_id=?"
_META = f"SELECT {sem.META_COLS} WHERE m.mailbox_id=?"


def _select_uids(c: sqlite3.Connection, base: str, mailbox_id: int, uids: list[int]) -> list[Any]:
    """``base`` (selecting from ``messages m`` of one mailbox) for the ascending ``uids``
    (not empty), ordered by uid."""
    lo, hi = uids[0], uids[-1]
    if hi - lo + 1 == len(uids):  # a contiguous range: one range scan
        return c.execute(
            base + " AND m.uid BETWEEN ? AND ? ORDER BY m.uid", (mailbox_id, lo, hi)
        ).fetchall()
    return c.execute(
        base + " AND m.uid IN (SELECT value FROM json_each(?)) ORDER BY m.uid",
        (mailbox_id, json.dumps(uids)),
    ).fetchall()


def _connect(path: str, *, readonly: bool = False) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30.0)
    conn.execute("PRAGMA busy_timeout=30000")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA cache_size=-32000")
    if readonly:
        conn.execute("PRAGMA query_only=ON")
    return conn


def migrate(conn: sqlite3.Connection) -> tuple[int, int]:
    """Bring the schema up to date; returns (old version, new version)."""
    old = int(conn.execute("PRAGMA user_version").fetchone()[0])
    if old > SCHEMA_VERSION:
        raise StorageError(
            f"database schema version {old} is newer than this Letterbird ({SCHEMA_VERSION})"
        )
    for version in range(old + 1, SCHEMA_VERSION + 1):
        conn.execute("BEGIN IMMEDIATE")
        try:
            # another process may have applied it while we waited for the write lock
            if int(conn.execute("PRAGMA user_version").fetchone()[0]) >= version:
                conn.execute("COMMIT")
                continue
            for stmt in MIGRATIONS[version - 1].split(";"):
                if stmt.strip():
                    conn.execute(stmt)
            conn.execute(f"PRAGMA user_version={version}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    return old, SCHEMA_VERSION


def _open_lock_file(path: str, database: str) -> int:
    """Open (create) a lock file next to ``database`` for reading and writing.

    Created with the database's permission bits and, when we run as root, given the database's
    owner, as SQLite does for its ``-wal`` and ``-shm`` files: an admin command run as root
    must not leave a lock file that the server's user cannot open."""
    st = os.stat(database)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, st.st_mode & 0o666)
    except OSError as exc:
        raise StorageError(f"cannot open lock file {path}: {exc}") from exc
    if os.geteuid() == 0 and os.fstat(fd).st_uid != st.st_uid:
        with contextlib.suppress(OSError):
            os.fchown(fd, st.st_uid, st.st_gid)
    return fd


class _MaildropLocks:
    """POP3 maildrop locks of one database for this process: the accounts our sessions hold,
    each also locked in the lock file (one byte at offset = account id) so that other
    processes see it; the kernel releases those when the process dies.

    POSIX record locks belong to the process, not to a descriptor: a second descriptor of ours
    would be granted our own locks again, and closing it would drop every lock the process
    holds on the file. So every storage of this process that opens the same database shares
    one :class:`_MaildropLocks` (see :func:`_maildrop_locks`), and its set of held accounts is
    what keeps our own sessions apart."""

    def __init__(self, path: str | None, database: str) -> None:
        self.key = None if path is None else (os.getpid(), os.path.realpath(path))
        self.fd = -1 if path is None else _open_lock_file(path, database)
        self.users = 1
        self.held: set[int] = set()
        self._mutex = threading.Lock()  # (storages of this process may run on other threads)

    def acquire(self, account_id: int) -> bool:
        with self._mutex:
            if account_id in self.held:
                return False
            if self.fd >= 0:
                try:
                    fcntl.lockf(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, account_id)
                except (BlockingIOError, PermissionError):  # held by another process
                    return False
                except OSError as exc:
                    raise StorageError(f"cannot lock the maildrop: {exc}") from exc
            self.held.add(account_id)
            return True

    def release(self, account_id: int) -> None:
        with self._mutex:
            if account_id not in self.held:
                return
            self.held.discard(account_id)
            if self.fd >= 0:
                fcntl.lockf(self.fd, fcntl.LOCK_UN, 1, account_id)

    def close(self) -> None:
        with self._mutex:
            self.held.clear()
            if self.fd >= 0:
                os.close(self.fd)  # (drops whatever the process still held)
                self.fd = -1


_maildrop_files: dict[tuple[int, str], _MaildropLocks] = {}  # by (pid, lock file)
_maildrop_files_mutex = threading.Lock()


def _maildrop_locks(path: str, database: str) -> _MaildropLocks:
    """The process's shared :class:`_MaildropLocks` for the lock file ``path`` (one more user)."""
    with _maildrop_files_mutex:
        locks = _maildrop_files.get((os.getpid(), os.path.realpath(path)))
        if locks is not None:
            locks.users += 1
            return locks
        locks = _MaildropLocks(path, database)
        assert locks.key is not None
        _maildrop_files[locks.key] = locks
        return locks


def _drop_maildrop_locks(locks: _MaildropLocks) -> None:
    """One user less; the last one closes the lock file."""
    with _maildrop_files_mutex:
        locks.users -= 1
        if locks.users > 0:
            return
        if locks.key is not None and _maildrop_files.get(locks.key) is locks:
            del _maildrop_files[locks.key]
    locks.close()


class _Job:
    __slots__ = ("fn", "future", "loop")

    def __init__(
        self, fn: WriteFn[Any], future: asyncio.Future[Any], loop: asyncio.AbstractEventLoop
    ) -> None:
        self.fn = fn
        self.future = future
        self.loop = loop


def _resolve(fut: asyncio.Future[Any], result: Any, exc: BaseException | None) -> None:
    if fut.done():
        return
    if exc is not None:
        fut.set_exception(exc)
    else:
        fut.set_result(result)


def _resolve_all(results: list[tuple[asyncio.Future[Any], Any, BaseException | None]]) -> None:
    for fut, result, exc in results:
        _resolve(fut, result, exc)


def _cannot_begin(batch: list[_Job], exc: sqlite3.Error) -> None:
    """Fail every job of a batch whose transaction could not begin."""
    err = StorageError(f"cannot begin transaction: {exc}")
    for job in batch:
        job.loop.call_soon_threadsafe(_resolve, job.future, None, err)


class SqliteStorage:
    """SQLite implementation of :class:`letterbird.storage.interface.Storage`."""

    def __init__(self, path: str | Path, *, default_quota: int = 0, readers: int = 4) -> None:
        self.path = str(path)
        self.default_quota = default_quota
        self._bus = ChangeBus()
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._writer: threading.Thread | None = None
        self._wconn: sqlite3.Connection | None = None
        self._readers = concurrent.futures.ThreadPoolExecutor(
            max_workers=readers, thread_name_prefix="sqlite-read"
        )
        self._local = threading.local()
        self._reader_conns: list[sqlite3.Connection] = []
        self._reader_lock = threading.Lock()
        self._closed = False
        self.batches = 0  # group-commit statistics (for tests and metrics)
        self.batched_jobs = 0
        self._writer_lock_fd = -1  # <db>-writer.lock, flock'ed around each write transaction
        self._maildrops: _MaildropLocks | None = None  # POP3 sessions holding the lock

    @property
    def bus(self) -> ChangeBus:
        return self._bus

    # -- lifecycle ---------------------------------------------------------------------
    async def open(self) -> None:
        self._bus.bind_loop(asyncio.get_running_loop())
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._wconn = conn = _connect(self.path)
        try:
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal" and self.path != ":memory:":
                raise StorageError(f"could not enable WAL on {self.path} (got {mode})")
            if self.path != ":memory:":
                self._writer_lock_fd = _open_lock_file(self.path + "-writer.lock", self.path)
                self._maildrops = _maildrop_locks(self.path + "-maildrop.lock", self.path)
            else:  # (a database of its own: nobody else to keep out)
                self._maildrops = _MaildropLocks(None, self.path)
            with self._writers_serialised():
                migrate(conn)
        except BaseException:
            self._close_files()
            raise
        self._writer = threading.Thread(target=self._writer_loop, name="sqlite-writer", daemon=True)
        self._writer.start()

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._writer is not None:
            self._jobs.put(None)
            await asyncio.get_running_loop().run_in_executor(None, self._writer.join)
        self._readers.shutdown(wait=True)
        with self._reader_lock:
            for c in self._reader_conns:
                c.close()
            self._reader_conns.clear()
        self._close_files()

    def _close_files(self) -> None:
        """Close the writing connection and the lock files."""
        if self._wconn is not None:
            self._wconn.close()
            self._wconn = None
        if self._writer_lock_fd >= 0:
            os.close(self._writer_lock_fd)
            self._writer_lock_fd = -1
        if self._maildrops is not None:
            _drop_maildrop_locks(self._maildrops)
            self._maildrops = None

    # -- plumbing ----------------------------------------------------------------------
    def _writer_loop(self) -> None:
        conn = self._wconn
        assert conn is not None
        stop = False
        while not stop:
            job = self._jobs.get()
            if job is None:
                break
            batch = [job]
            while len(batch) < MAX_BATCH:
                try:
                    nxt = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                batch.append(nxt)
            self._run_batch(conn, batch)

    @contextlib.contextmanager
    def _writers_serialised(self) -> Iterator[None]:
        """Hold the writer lock that every process writing this database takes around its
        write transactions (a blocking ``flock``: the kernel wakes the next writer as soon as
        it is released). Nothing to hold for an in-memory database."""
        fd = self._writer_lock_fd
        if fd < 0:
            yield
            return
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)

    def _run_batch(self, conn: sqlite3.Connection, batch: list[_Job]) -> None:
        with self._writers_serialised():
            try:
                done = self._transact(conn, batch)
            except Exception as exc:  # the retry path's own statements failed (disk I/O …)
                done = self._abandon(conn, batch, exc)
        if done is not None:
            self._publish(batch, *done)

    def _abandon(
        self, conn: sqlite3.Connection, batch: list[_Job], exc: Exception
    ) -> tuple[list[tuple[Any, BaseException | None]], list[ChangeEvent]]:
        """A batch failed outside its jobs: roll back what is open and fail every job, so
        the callers get an error (SMTP 451, IMAP NO) and this writer thread lives on for the
        next batch instead of dying with its callers waiting forever."""
        event(log, "storage.batch_failed", level=logging.ERROR, jobs=len(batch), error=exc)
        try:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
        except sqlite3.Error:
            pass
        err = StorageError(f"write failed: {exc}")
        return [(None, err) for _ in batch], []

    def _transact(
        self, conn: sqlite3.Connection, batch: list[_Job]
    ) -> tuple[list[tuple[Any, BaseException | None]], list[ChangeEvent]] | None:
        """Run a batch in one transaction; returns each job's outcome and the change events
        to publish, or None when the transaction could not begin (the jobs failed already)."""
        outcomes: list[tuple[Any, BaseException | None]] = []
        events: list[ChangeEvent] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            _cannot_begin(batch, exc)
            return None
        # First without savepoints: every statement is a GIL round trip for this thread, and
        # jobs seldom fail. If one does, the transaction is rolled back and the batch is run
        # again with a SAVEPOINT per job, so the failing job is undone alone (which is why a
        # write function must not change anything outside the connection: it may run twice).
        try:
            for job in batch:
                result, evs = job.fn(conn)
                outcomes.append((result, None))
                events.extend(evs)
        except BaseException:
            outcomes, events = [], []
            try:
                if conn.in_transaction:  # (some errors make SQLite roll back by itself)
                    conn.execute("ROLLBACK")
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                _cannot_begin(batch, exc)
                return None
            for job in batch:
                conn.execute("SAVEPOINT job")
                try:
                    result, evs = job.fn(conn)
                except BaseException as exc:  # the job's own failure: undo it alone
                    conn.execute("ROLLBACK TO job")
                    conn.execute("RELEASE job")
                    if isinstance(exc, sqlite3.Error):
                        exc = StorageError(str(exc))
                    outcomes.append((None, exc))
                else:
                    conn.execute("RELEASE job")
                    outcomes.append((result, None))
                    events.extend(evs)
        try:
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            err = StorageError(f"commit failed: {exc}")
            outcomes = [(None, err) for _ in batch]
            events = []
        return outcomes, events

    def _publish(
        self,
        batch: list[_Job],
        outcomes: list[tuple[Any, BaseException | None]],
        events: list[ChangeEvent],
    ) -> None:
        """Hand a committed (or failed) batch's results and change events to the loops."""
        self.batches += 1
        self.batched_jobs += len(batch)
        # Events first: a caller that continues after its write already finds the change
        # published to every subscriber (both are scheduled on the loop in this order).
        if events:
            self._bus.publish_threadsafe(events)
        # One hand-off per event loop for the whole batch, not one per job: each is a write
        # to the loop's self-pipe and a GIL round trip between this thread and the loop's.
        done: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], Any, Any]]] = {}
        for job, (result, exc2) in zip(batch, outcomes, strict=True):
            done.setdefault(job.loop, []).append((job.future, result, exc2))
        for loop, results in done.items():
            try:
                loop.call_soon_threadsafe(_resolve_all, results)
            except RuntimeError:  # loop closed
                pass

    async def _write(self, fn: WriteFn[T]) -> T:
        if self._closed or self._writer is None:
            raise StorageError("storage is closed")
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[T] = loop.create_future()
        self._jobs.put(_Job(fn, fut, loop))
        return await fut

    def _reader(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = _connect(self.path, readonly=True)
            self._local.conn = conn
            with self._reader_lock:
                self._reader_conns.append(conn)
        return conn

    async def _read(self, fn: Callable[[sqlite3.Connection], T], *, offload: bool = False) -> T:
        """Run a read query.

        Small reads (an account, a domain, a few rows) run inline on the event loop's own
        connection: ~10 µs of SQLite is far cheaper than a thread hop and the GIL hand-offs it
        causes under load (measured: inline reads lifted SMTP reception by ~2x). Reads that
        may be large (whole mailboxes, message bytes) use ``offload=True`` and run on the
        reader threads so the loop never stalls on them.
        """
        if self._closed:
            raise StorageError("storage is closed")

        def run() -> T:
            try:
                return fn(self._reader())
            except sqlite3.Error as exc:
                raise StorageError(str(exc)) from exc

        if not offload:
            return run()
        return await asyncio.get_running_loop().run_in_executor(self._readers, run)

    # -- directory ---------------------------------------------------------------------
    async def add_domain(self, name: str) -> Domain:
        def fn(c: sqlite3.Connection) -> tuple[Domain, list[ChangeEvent]]:
            try:
                cur = c.execute(
                    "INSERT INTO domains(name, created) VALUES(?, ?)", (name, time.time())
                )
            except sqlite3.IntegrityError:
                raise sem.domain_exists(name) from None
            return Domain(int(cur.lastrowid or 0), name), []

        return await self._write(fn)

    async def remove_domain(self, name: str) -> None:
        def fn(c: sqlite3.Connection) -> tuple[None, list[ChangeEvent]]:
            dom = sem.need(self._domain_id(c, name), sem.no_domain(name))
            n = c.execute("SELECT count(*) FROM accounts WHERE domain_id=?", (dom,)).fetchone()
            sem.check_domain_empty(name, n[0])
            c.execute("DELETE FROM aliases WHERE domain_id=?", (dom,))
            c.execute("DELETE FROM domains WHERE id=?", (dom,))
            return None, []

        await self._write(fn)

    @staticmethod
    def _domain_id(c: sqlite3.Connection, name: str) -> int | None:
        row = c.execute("SELECT id FROM domains WHERE name=?", (name,)).fetchone()
        return None if row is None else int(row[0])

    async def list_domains(self) -> list[Domain]:
        rows = await self._read(
            lambda c: c.execute("SELECT id, name FROM domains ORDER BY name").fetchall()
        )
        return [sem.domain_of(r) for r in rows]

    async def get_domain(self, name: str) -> Domain | None:
        row = await self._read(
            lambda c: c.execute("SELECT id, name FROM domains WHERE name=?", (name,)).fetchone()
        )
        return sem.domain_of(row) if row else None

    async def add_account(self, local: str, domain: str, password_hash: str) -> Account:
        quota = self.default_quota

        def fn(c: sqlite3.Connection) -> tuple[Account, list[ChangeEvent]]:
            dom = sem.need(self._domain_id(c, domain), sem.no_domain(domain, adding=True))
            try:
                cur = c.execute(
                    "INSERT INTO accounts(domain_id, local, local_norm, password_hash, quota, "
                    "created) VALUES(?, ?, ?, ?, ?, ?)",
                    (dom, local, sem.norm_local(local), password_hash, quota, time.time()),
                )
            except sqlite3.IntegrityError:
                raise sem.account_exists(local, domain) from None
            account_id = int(cur.lastrowid or 0)
            for name, role in SPECIAL_USE_DEFAULTS:
                self._create_mailbox_tx(c, account_id, name, role)
            return Account(account_id, local, domain, password_hash, quota, 0), []

        return await self._write(fn)

    async def remove_account(self, account_id: int) -> None:
        def fn(c: sqlite3.Connection) -> tuple[None, list[ChangeEvent]]:
            sem.need(
                c.execute("SELECT 1 FROM accounts WHERE id=?", (account_id,)).fetchone(),
                sem.NO_ACCOUNT,
            )
            for (mid,) in c.execute(
                "SELECT id FROM mailboxes WHERE account_id=?", (account_id,)
            ).fetchall():
                self._drop_mailbox_tx(c, mid)
            c.execute("DELETE FROM accounts WHERE id=?", (account_id,))
            return None, []

        await self._write(fn)

    async def _set_account(self, account_id: int, column: str, value: object) -> None:
        def fn(c: sqlite3.Connection) -> tuple[None, list[ChangeEvent]]:
            cur = c.execute(f"UPDATE accounts SET {column}=? WHERE id=?", (value, account_id))
            sem.need_changed(cur.rowcount, sem.NO_ACCOUNT)
            return None, []

        await self._write(fn)

    async def set_password(self, account_id: int, password_hash: str) -> None:
        await self._set_account(account_id, "password_hash", password_hash)

    async def set_quota(self, account_id: int, quota: int) -> None:
        await self._set_account(account_id, "quota", quota)

    async def get_account(self, account_id: int) -> Account | None:
        row = await self._read(
            lambda c: c.execute(f"SELECT {sem.ACCOUNT_COLS} WHERE a.id=?", (account_id,)).fetchone()
        )
        return sem.account_of(row) if row else None

    # Accounts and aliases are both ``a`` joined to their domain ``d``, looked up by domain
    # and normalised local part, listed by domain then local part.
    async def _find_by_address(self, cols: str, norm: str, domain: str) -> Any:
        return await self._read(
            lambda c: c.execute(
                f"SELECT {cols} WHERE d.name=? AND a.local_norm=?", (domain, norm)
            ).fetchone()
        )

    async def _list_by_domain(self, cols: str, domain: str | None) -> list[Any]:
        def fn(c: sqlite3.Connection) -> list[Any]:
            if domain is None:
                return c.execute(f"SELECT {cols} ORDER BY d.name, a.local_norm").fetchall()
            return c.execute(
                f"SELECT {cols} WHERE d.name=? ORDER BY a.local_norm", (domain,)
            ).fetchall()

        return await self._read(fn)

    async def find_account(self, local: str, domain: str) -> Account | None:
        row = await self._find_by_address(sem.ACCOUNT_COLS, sem.norm_local(local), domain)
        return sem.account_of(row) if row else None

    async def list_accounts(self, domain: str | None = None) -> list[Account]:
        return [sem.account_of(r) for r in await self._list_by_domain(sem.ACCOUNT_COLS, domain)]

    async def add_alias(self, local: str | None, domain: str, targets: Sequence[str]) -> Alias:
        def fn(c: sqlite3.Connection) -> tuple[Alias, list[ChangeEvent]]:
            dom = sem.need(self._domain_id(c, domain), sem.no_domain(domain, adding=True))
            try:
                cur = c.execute(
                    "INSERT INTO aliases(domain_id, local, local_norm, targets) VALUES(?,?,?,?)",
                    (dom, local, sem.alias_norm(local), "\n".join(targets)),
                )
            except sqlite3.IntegrityError:
                raise sem.alias_exists(local, domain) from None
            return Alias(int(cur.lastrowid or 0), local, domain, tuple(targets)), []

        return await self._write(fn)

    async def remove_alias(self, local: str | None, domain: str) -> None:
        norm = sem.alias_norm(local)

        def fn(c: sqlite3.Connection) -> tuple[None, list[ChangeEvent]]:
            cur = c.execute(
                "DELETE FROM aliases WHERE local_norm=? AND domain_id="
                "(SELECT id FROM domains WHERE name=?)",
                (norm, domain),
            )
            sem.need_changed(cur.rowcount, "no such alias")
            return None, []

        await self._write(fn)

    async def find_alias(self, local: str | None, domain: str) -> Alias | None:
        row = await self._find_by_address(sem.ALIAS_COLS, sem.alias_norm(local), domain)
        return _alias(row) if row else None

    async def list_aliases(self, domain: str | None = None) -> list[Alias]:
        return [_alias(r) for r in await self._list_by_domain(sem.ALIAS_COLS, domain)]

    # -- mailboxes ---------------------------------------------------------------------
    def _next_uidvalidity(self, c: sqlite3.Connection) -> int:
        row = c.execute("SELECT value FROM meta WHERE key='uidvalidity'").fetchone()
        last = int(row[0]) if row else 0
        value = max(last + 1, int(time.time()))
        c.execute(
            "INSERT INTO meta(key, value) VALUES('uidvalidity', ?) "
            "ON CONFLICT(key) DO UPDATE SET value=excluded.value",
            (str(value),),
        )
        return value

    def _create_mailbox_tx(
        self, c: sqlite3.Connection, account_id: int, name: str, role: str | None
    ) -> Mailbox:
        uidvalidity = self._next_uidvalidity(c)
        try:
            cur = c.execute(
                "INSERT INTO mailboxes(account_id, name, role, uidvalidity) VALUES(?,?,?,?)",
                (account_id, name, role, uidvalidity),
            )
        except sqlite3.IntegrityError:
            raise sem.mailbox_exists(name) from None
        return Mailbox(int(cur.lastrowid or 0), account_id, name, role, uidvalidity, 1, 1, True)

    def _drop_mailbox_tx(self, c: sqlite3.Connection, mailbox_id: int) -> None:
        rows = c.execute(
            "SELECT blob_id, count(*), sum(size) FROM messages WHERE mailbox_id=? GROUP BY blob_id",
            (mailbox_id,),
        ).fetchall()
        total = 0
        for blob_id, count, size in rows:
            self._unref_blob(c, blob_id, count)
            total += size
        if total:
            c.execute(
                "UPDATE accounts SET used=max(0, used-?) WHERE id="
                "(SELECT account_id FROM mailboxes WHERE id=?)",
                (total, mailbox_id),
            )
        c.execute("DELETE FROM messages WHERE mailbox_id=?", (mailbox_id,))
        c.execute("DELETE FROM tombstones WHERE mailbox_id=?", (mailbox_id,))
        c.execute("DELETE FROM mailboxes WHERE id=?", (mailbox_id,))

    @staticmethod
    def _unref_blob(c: sqlite3.Connection, blob_id: int, count: int) -> None:
        c.execute("UPDATE blobs SET refcount=refcount-? WHERE id=?", (count, blob_id))
        c.execute("DELETE FROM blobs WHERE id=? AND refcount<=0", (blob_id,))

    async def list_mailboxes(self, account_id: int) -> list[Mailbox]:
        rows = await self._read(
            lambda c: c.execute(
                f"SELECT {sem.MAILBOX_COLS} FROM mailboxes WHERE account_id=? "
                "ORDER BY name != 'INBOX', name",
                (account_id,),
            ).fetchall()
        )
        return [sem.mailbox_of(r) for r in rows]

    async def get_mailbox(self, account_id: int, name: str) -> Mailbox | None:
        name = names.normalise(name)
        row = await self._read(
            lambda c: c.execute(
                f"SELECT {sem.MAILBOX_COLS} FROM mailboxes WHERE account_id=? AND name=?",
                (account_id, name),
            ).fetchone()
        )
        return sem.mailbox_of(row) if row else None

    async def get_mailbox_by_id(self, mailbox_id: int) -> Mailbox | None:
        row = await self._read(
            lambda c: c.execute(
                f"SELECT {sem.MAILBOX_COLS} FROM mailboxes WHERE id=?", (mailbox_id,)
            ).fetchone()
        )
        return sem.mailbox_of(row) if row else None

    async def create_mailbox(self, account_id: int, name: str, role: str | None = None) -> Mailbox:
        name = names.validate(name)

        def fn(c: sqlite3.Connection) -> tuple[Mailbox, list[ChangeEvent]]:
            mb = self._create_mailbox_tx(c, account_id, name, role)
            return mb, sem.mailbox_changed(account_id, mb.id)

        return await self._write(fn)

    async def rename_mailbox(self, account_id: int, old: str, new: str) -> None:
        plan = sem.rename_plan(old, new)

        def fn(c: sqlite3.Connection) -> tuple[None, list[ChangeEvent]]:
            found = "SELECT id FROM mailboxes WHERE account_id=? AND name=?"
            mid: int = plan.check(
                c.execute(found, (account_id, plan.old)).fetchone(),
                c.execute(found, (account_id, plan.new)).fetchone(),
            )[0]
            if plan.moves_inbox:
                dst = self._create_mailbox_tx(c, account_id, plan.new, None)
                uids = [
                    u
                    for (u,) in c.execute(
                        "SELECT uid FROM messages WHERE mailbox_id=? ORDER BY uid", (mid,)
                    )
                ]
                return None, self._move_tx(c, mid, uids, dst.id)[1]
            c.execute("UPDATE mailboxes SET name=? WHERE id=?", (plan.new, mid))
            for inferior, name in c.execute(
                "SELECT id, name FROM mailboxes WHERE account_id=? AND substr(name,1,?)=?",
                (account_id, len(plan.prefix), plan.prefix),
            ).fetchall():
                try:
                    c.execute(
                        "UPDATE mailboxes SET name=? WHERE id=?", (plan.inferior(name), inferior)
                    )
                except sqlite3.IntegrityError:  # (the job is undone alone: nothing renamed)
                    raise sem.inferior_exists(plan.new) from None
            return None, sem.mailbox_changed(account_id, mid)

        await self._write(fn)

    async def delete_mailbox(self, account_id: int, name: str) -> None:
        name = sem.delete_name(name)

        def fn(c: sqlite3.Connection) -> tuple[None, list[ChangeEvent]]:
            row = c.execute(
                "SELECT id FROM mailboxes WHERE account_id=? AND name=?", (account_id, name)
            ).fetchone()
            mid: int = sem.need(row, sem.no_mailbox(name))[0]
            self._drop_mailbox_tx(c, mid)
            return None, sem.mailbox_changed(account_id, mid)

        await self._write(fn)

    async def set_subscribed(self, account_id: int, name: str, subscribed: bool) -> None:
        name = names.normalise(name)

        def fn(c: sqlite3.Connection) -> tuple[None, list[ChangeEvent]]:
            cur = c.execute(
                "UPDATE mailboxes SET subscribed=? WHERE account_id=? AND name=?",
                (int(subscribed), account_id, name),
            )
            sem.need_changed(cur.rowcount, sem.no_mailbox(name))
            return None, []

        await self._write(fn)

    async def mailbox_status(self, mailbox_id: int) -> MailboxStatus:
        def fn(c: sqlite3.Connection) -> MailboxStatus:
            row = c.execute(
                f"SELECT {sem.MAILBOX_COLS} FROM mailboxes WHERE id=?", (mailbox_id,)
            ).fetchone()
            sem.need(row, sem.NO_MAILBOX)
            agg = c.execute(
                "SELECT count(*), coalesce(sum(size),0), "
                "coalesce(sum(instr(flags, '\\Seen') = 0), 0), "
                "min(CASE WHEN instr(flags, '\\Seen') = 0 THEN uid END) "
                "FROM messages WHERE mailbox_id=?",
                (mailbox_id,),
            ).fetchone()
            return sem.status_of(row, agg)

        return await self._read(fn, offload=True)

    # -- messages ----------------------------------------------------------------------
    def _store_blob_tx(self, c: sqlite3.Connection, blob: BlobSource, refs: int) -> int:
        if blob.data is not None:  # one statement: stored anew, or one more reference
            row = c.execute(
                "INSERT INTO blobs(hash, size, refcount, structure, data) VALUES(?,?,?,?,?) "
                "ON CONFLICT(hash) DO UPDATE SET refcount=refcount+excluded.refcount "
                "RETURNING id",
                (blob.sha256, blob.size, refs, blob.structure, blob.data),
            ).fetchone()
            return int(row[0])
        row = c.execute("SELECT id FROM blobs WHERE hash=?", (blob.sha256,)).fetchone()
        if row is not None:
            c.execute("UPDATE blobs SET refcount=refcount+? WHERE id=?", (refs, row[0]))
            return int(row[0])
        if blob.path is None:
            raise StorageError("blob has neither data nor path")
        cur = c.execute(
            "INSERT INTO blobs(hash, size, refcount, structure, data) VALUES(?,?,?,?,zeroblob(?))",
            (blob.sha256, blob.size, refs, blob.structure, blob.size),
        )
        rowid = int(cur.lastrowid or 0)
        if blob.size:
            with open(blob.path, "rb") as fh, c.blobopen("blobs", "data", rowid) as b:
                written = 0
                while written < blob.size:
                    chunk = fh.read(min(BLOB_CHUNK, blob.size - written))
                    if not chunk:
                        raise StorageError("spool file shorter than the message size")
                    b.write(chunk)
                    written += len(chunk)
        return rowid

    def _bump_mailbox(self, c: sqlite3.Connection, mailbox_id: int, uids: int) -> tuple[int, int]:
        """Allocate ``uids`` UIDs and one modseq; returns (first uid, modseq)."""
        row = c.execute(
            "UPDATE mailboxes SET uidnext=uidnext+?, highestmodseq=highestmodseq+1 "
            "WHERE id=? RETURNING uidnext, highestmodseq",
            (uids, mailbox_id),
        ).fetchone()
        return sem.allocated(row, uids)

    def _charge(self, c: sqlite3.Connection, account_id: int, size: int) -> None:
        row = c.execute(
            "UPDATE accounts SET used=used+? WHERE id=? RETURNING used, quota", (size, account_id)
        ).fetchone()
        sem.charged(row, account_id, size)

    def _resolve_target(self, c: sqlite3.Connection, t: AppendTarget) -> int:
        if t.mailbox_id is not None:
            row = c.execute(
                "SELECT id FROM mailboxes WHERE id=? AND account_id=?", (t.mailbox_id, t.account_id)
            ).fetchone()
            return int(sem.need(row, sem.NO_MAILBOX)[0])
        name = names.normalise(t.mailbox)
        row = c.execute(
            "SELECT id FROM mailboxes WHERE account_id=? AND name=?", (t.account_id, name)
        ).fetchone()
        if row is not None:
            return int(row[0])
        return self._create_mailbox_tx(c, t.account_id, name, names.default_role(name)).id

    def _bump_target(self, c: sqlite3.Connection, t: AppendTarget) -> tuple[int, int, int]:
        """``_resolve_target`` then ``_bump_mailbox(…, 1)`` in one statement when the mailbox
        exists (the delivery hot path: fewer statements, fewer GIL hand-offs for the writer
        thread); returns (mailbox id, uid, modseq)."""
        bump = "UPDATE mailboxes SET uidnext=uidnext+1, highestmodseq=highestmodseq+1 WHERE "
        if t.mailbox_id is not None:
            row = c.execute(
                bump + "id=? AND account_id=? RETURNING id, uidnext, highestmodseq",
                (t.mailbox_id, t.account_id),
            ).fetchone()
            if row is None:
                raise NotFound(sem.NO_MAILBOX)
        else:
            row = c.execute(
                bump + "account_id=? AND name=? RETURNING id, uidnext, highestmodseq",
                (t.account_id, names.normalise(t.mailbox)),
            ).fetchone()
            if row is None:  # created on first delivery
                mailbox_id = self._resolve_target(c, t)
                return (mailbox_id, *self._bump_mailbox(c, mailbox_id, 1))
        return int(row[0]), int(row[1]) - 1, int(row[2])

    async def append(
        self, blob: BlobSource, targets: Sequence[AppendTarget]
    ) -> list[tuple[int, int]]:
        return await self.deliver(blob, targets)

    async def deliver(
        self,
        blob: BlobSource,
        targets: Sequence[AppendTarget],
        outgoing: OutgoingMessage | None = None,
        queue_id: str | None = None,
    ) -> list[tuple[int, int]]:
        if not sem.wants_delivery(targets, outgoing, queue_id):
            return []
        now = time.time()
        return await self._write(
            lambda c: self._deliver_tx(c, blob, targets, outgoing, queue_id, now)
        )

    def _deliver_tx(
        self,
        c: sqlite3.Connection,
        blob: BlobSource,
        targets: Sequence[AppendTarget],
        outgoing: OutgoingMessage | None,
        queue_id: str | None,
        now: float,
    ) -> tuple[list[tuple[int, int]], list[ChangeEvent]]:
        """The body of :meth:`deliver` (also a notification stored with a queue change)."""
        blob_id = self._store_blob_tx(c, blob, sem.blob_refs(targets, outgoing))
        out: list[tuple[int, int]] = []
        events: list[ChangeEvent] = []
        for t in targets:
            mailbox_id, uid, modseq = self._bump_target(c, t)
            self._charge(c, t.account_id, blob.size)
            c.execute(
                "INSERT INTO messages(mailbox_id, uid, modseq, flags, internaldate, size, "
                "blob_id) VALUES(?,?,?,?,?,?,?)",
                (
                    mailbox_id,
                    uid,
                    modseq,
                    _flags_to_text(t.flags),
                    t.internaldate if t.internaldate is not None else now,
                    blob.size,
                    blob_id,
                ),
            )
            out.append((mailbox_id, uid))
            events.append(ChangeEvent(t.account_id, mailbox_id, ChangeKind.APPEND, (uid,), modseq))
        if outgoing is not None:
            assert queue_id is not None
            self._enqueue_tx(c, queue_id, blob_id, outgoing, now)
        return out, events

    # -- the outgoing queue ----------------------------------------------------------------
    @staticmethod
    def _enqueue_tx(
        c: sqlite3.Connection, queue_id: str, blob_id: int, msg: OutgoingMessage, now: float
    ) -> None:
        c.execute(
            "INSERT INTO queue_messages(id, blob_id, sender, envid, ret, account_id, created) "
            "VALUES(?,?,?,?,?,?,?)",
            (queue_id, blob_id, msg.sender, msg.envid, msg.ret, msg.account_id, now),
        )
        c.executemany(
            "INSERT INTO queue_entries(queue_id, domain, recipients, due, created) "
            "VALUES(?,?,?,?,?)",
            [
                (queue_id, d, rcpts, now, now)
                for d, rcpts in sem.rcpts_by_domain(msg.recipients).items()
            ],
        )

    async def queue_claim(
        self, owner: str, lease: float, limit: int, now: float | None = None
    ) -> list[QueueEntry]:
        """Lease up to ``limit`` due entries to ``owner`` until the database clock +
        ``lease``. The database clock is this machine's, read inside the writer transaction;
        ``now`` overrides it for the due comparison only (tests, tools), never for leases."""

        def fn(c: sqlite3.Connection) -> tuple[list[QueueEntry], list[ChangeEvent]]:
            t = time.time()
            rows = c.execute(
                f"SELECT {sem.ENTRY_COLS} WHERE e.due <= ? AND "
                "(e.lease_until IS NULL OR e.lease_until < ?) ORDER BY e.due LIMIT ?",
                (t if now is None else now, t, limit),
            ).fetchall()
            if not rows:
                return [], []
            c.executemany(
                "UPDATE queue_entries SET owner=?, lease_until=? WHERE id=?",
                [(owner, t + lease, r[0]) for r in rows],
            )
            return [sem.entry_of((*r[:7], owner, t + lease, *r[9:])) for r in rows], []

        return await self._write(fn)

    async def queue_renew(self, entry_ids: Sequence[int], owner: str, lease: float) -> int:
        """Extend our leases (from the database clock; negative: release); returns how many
        we still hold."""
        ids = list(entry_ids)

        def fn(c: sqlite3.Connection) -> tuple[int, list[ChangeEvent]]:
            until = time.time() + lease
            n = 0
            for i in ids:
                n += c.execute(
                    "UPDATE queue_entries SET lease_until=? WHERE id=? AND owner=?",
                    (until, i, owner),
                ).rowcount
            return n, []

        return await self._write(fn)

    async def queue_update(
        self,
        entry_id: int,
        owner: str,
        remaining: Sequence[QueueRecipient],
        due: float,
        last_error: str,
        warned: bool = False,
        *,
        relative_to: float | None = None,
        notification: Notification | None = None,
    ) -> bool:
        rest = tuple(remaining)
        if notification is not None:
            notification.check()

        def fn(c: sqlite3.Connection) -> tuple[bool, list[ChangeEvent]]:
            row = c.execute(
                "SELECT queue_id, owner FROM queue_entries WHERE id=?", (entry_id,)
            ).fetchone()
            if row is None or row[1] != owner:
                return False, []
            t = time.time()  # the database clock
            if rest:
                at = due if relative_to is None else t + (due - relative_to)
                c.execute(
                    "UPDATE queue_entries SET recipients=?, due=?, attempts=attempts+1, "
                    "last_error=?, owner=NULL, lease_until=NULL, warned=? WHERE id=?",
                    (sem.rcpts_to_json(rest), at, last_error, int(warned), entry_id),
                )
            else:
                c.execute("DELETE FROM queue_entries WHERE id=?", (entry_id,))
                self._drop_queue_message_if_done(c, row[0])
            return True, self._notify_tx(c, notification, t)

        return await self._write(fn)

    def _notify_tx(
        self, c: sqlite3.Connection, n: Notification | None, now: float
    ) -> list[ChangeEvent]:
        """Store a notification inside a queue transaction; returns its change events."""
        n = sem.notification_to_store(n)
        if n is None:
            return []
        return self._deliver_tx(c, n.blob, n.targets, n.outgoing, n.queue_id, now)[1]

    def _drop_queue_message_if_done(self, c: sqlite3.Connection, queue_id: str) -> None:
        left = c.execute(
            "SELECT count(*) FROM queue_entries WHERE queue_id=?", (queue_id,)
        ).fetchone()[0]
        if left:
            return
        row = c.execute("SELECT blob_id FROM queue_messages WHERE id=?", (queue_id,)).fetchone()
        if row is not None:
            c.execute("DELETE FROM queue_messages WHERE id=?", (queue_id,))
            self._unref_blob(c, row[0], 1)

    async def queue_entries(self, queue_id: str | None = None) -> list[QueueEntry]:
        def fn(c: sqlite3.Connection) -> list[Any]:
            if queue_id is None:
                return c.execute(f"SELECT {sem.ENTRY_COLS} ORDER BY e.created, e.id").fetchall()
            return c.execute(
                f"SELECT {sem.ENTRY_COLS} WHERE e.queue_id=? ORDER BY e.id", (queue_id,)
            ).fetchall()

        return [sem.entry_of(r) for r in await self._read(fn, offload=True)]

    async def queue_remove(
        self,
        queue_id: str,
        report: Callable[[list[QueueEntry]], Notification | None] | None = None,
    ) -> list[QueueEntry]:
        def fn(c: sqlite3.Connection) -> tuple[list[QueueEntry], list[ChangeEvent]]:
            rows = c.execute(f"SELECT {sem.ENTRY_COLS} WHERE e.queue_id=?", (queue_id,)).fetchall()
            if (
                not rows
                and c.execute("SELECT 1 FROM queue_messages WHERE id=?", (queue_id,)).fetchone()
                is None
            ):
                raise sem.no_queued_message(queue_id)
            c.execute("DELETE FROM queue_entries WHERE queue_id=?", (queue_id,))
            self._drop_queue_message_if_done(c, queue_id)
            removed, note = sem.removal(rows, report)
            return removed, self._notify_tx(c, note, time.time())

        return await self._write(fn)

    async def queue_flush(self, now: float | None = None) -> int:
        """Make every entry due now; returns how many were waiting."""

        def fn(c: sqlite3.Connection) -> tuple[int, list[ChangeEvent]]:
            t = time.time() if now is None else now
            n = c.execute("UPDATE queue_entries SET due=? WHERE due>?", (t, t)).rowcount
            return n, []

        return await self._write(fn)

    async def queue_next_wait(self) -> float | None:
        """Seconds until the earliest entry is due and not leased (None: queue empty)."""
        row = await self._read(
            lambda c: c.execute(
                "SELECT min(max(due, coalesce(lease_until, 0))) FROM queue_entries"
            ).fetchone()
        )
        return None if row is None or row[0] is None else max(float(row[0]) - time.time(), 0.0)

    async def list_messages(self, mailbox_id: int) -> list[tuple[int, int, frozenset[str]]]:
        rows = await self._read(
            lambda c: c.execute(
                "SELECT uid, modseq, flags FROM messages WHERE mailbox_id=? ORDER BY uid",
                (mailbox_id,),
            ).fetchall(),
            offload=True,
        )
        return [(r[0], r[1], _text_to_flags(r[2])) for r in rows]

    async def fetch_messages(
        self, mailbox_id: int, uids: Iterable[int] | None = None
    ) -> list[MessageRecord]:
        uid_list = None if uids is None else sorted(set(uids))

        def fn(c: sqlite3.Connection) -> list[Any]:
            if uid_list is None:
                return c.execute(_MESSAGES + " ORDER BY m.uid", (mailbox_id,)).fetchall()
            if not uid_list:
                return []
            return _select_uids(c, _MESSAGES, mailbox_id, uid_list)

        rows = await self._read(fn, offload=uid_list is None or len(uid_list) > 64)
        return [
            MessageRecord(mailbox_id, r[0], r[1], _text_to_flags(r[2]), r[3], r[4], r[5], r[6])
            for r in rows
        ]

    async def fetch_meta(
        self, mailbox_id: int, uids: Sequence[int]
    ) -> list[tuple[int, int, float, int, str]]:
        uid_list = sorted(set(uids))
        if not uid_list:
            return []
        # ~1 µs per row and no structure: a few thousand rows are cheaper inline than a hop
        # to a reader thread.
        return await self._read(
            lambda c: _select_uids(c, _META, mailbox_id, uid_list), offload=len(uid_list) > 4096
        )

    async def read_blob(self, blob_id: str, start: int = 0, end: int | None = None) -> bytes:
        row = await self._read(
            lambda c: c.execute("SELECT id, size FROM blobs WHERE hash=?", (blob_id,)).fetchone()
        )
        if row is None:
            raise NotFound("no such blob")
        rowid, size = int(row[0]), int(row[1])
        stop = size if end is None else min(end, size)
        if start >= stop:
            return b""

        def fn(c: sqlite3.Connection) -> bytes:
            with c.blobopen("blobs", "data", rowid, readonly=True) as b:
                b.seek(start)
                return b.read(stop - start)

        return await self._read(fn, offload=stop - start > INLINE_READ_BYTES)

    async def store_flags(
        self,
        mailbox_id: int,
        uids: Sequence[int],
        mode: FlagMode,
        flags: Iterable[str],
        unchanged_since: int | None = None,
    ) -> list[StoreResult]:
        flagset = frozenset(flags)
        uid_list = sorted(set(uids))

        def fn(c: sqlite3.Connection) -> tuple[list[StoreResult], list[ChangeEvent]]:
            owner = self._owner(c, mailbox_id)
            rows = c.execute(
                "SELECT uid, modseq, flags FROM messages WHERE mailbox_id=? AND uid IN "
                "(SELECT value FROM json_each(?)) ORDER BY uid",
                (mailbox_id, json.dumps(uid_list)),
            ).fetchall()
            changes = sem.flag_changes(rows, _text_to_flags, mode, flagset, unchanged_since)
            if not changes:
                return [], []
            _, modseq = self._bump_mailbox(c, mailbox_id, 0)
            c.executemany(
                "UPDATE messages SET flags=?, modseq=? WHERE mailbox_id=? AND uid=?",
                [(_flags_to_text(f), modseq, mailbox_id, u) for u, f in changes],
            )
            return sem.flags_stored(owner, mailbox_id, changes, modseq)

        return await self._write(fn)

    @staticmethod
    def _owner(c: sqlite3.Connection, mailbox_id: int) -> int:
        """The account a mailbox belongs to."""
        row = c.execute("SELECT account_id FROM mailboxes WHERE id=?", (mailbox_id,)).fetchone()
        return int(sem.need(row, sem.NO_MAILBOX)[0])

    def _copy_tx(
        self, c: sqlite3.Connection, src: int, uids: Sequence[int], dst: int
    ) -> tuple[list[tuple[int, int]], list[ChangeEvent]]:
        owner = self._owner(c, dst)
        rows = c.execute(
            "SELECT uid, flags, internaldate, size, blob_id FROM messages WHERE mailbox_id=? "
            "AND uid IN (SELECT value FROM json_each(?)) ORDER BY uid",
            (src, json.dumps(sorted(set(uids)))),
        ).fetchall()
        if not rows:
            return [], []
        first, modseq = self._bump_mailbox(c, dst, len(rows))
        mapping, evs = sem.copied(owner, dst, [r[0] for r in rows], first, modseq)
        c.executemany(
            "INSERT INTO messages(mailbox_id, uid, modseq, flags, internaldate, size, blob_id) "
            "VALUES(?,?,?,?,?,?,?)",
            [(dst, new, modseq, *r[1:]) for (_, new), r in zip(mapping, rows, strict=True)],
        )
        c.executemany(
            "UPDATE blobs SET refcount=refcount+? WHERE id=?",
            [(n, b) for b, n in sem.blob_counts(r[4] for r in rows).items()],
        )
        self._charge(c, owner, sum(r[3] for r in rows))
        return mapping, evs

    async def copy_messages(
        self, src_mailbox_id: int, uids: Sequence[int], dst_mailbox_id: int
    ) -> list[tuple[int, int]]:
        return await self._write(lambda c: self._copy_tx(c, src_mailbox_id, uids, dst_mailbox_id))

    def _expunge_tx(
        self, c: sqlite3.Connection, mailbox_id: int, uids: Sequence[int] | None, only_deleted: bool
    ) -> tuple[list[int], list[ChangeEvent]]:
        owner = self._owner(c, mailbox_id)
        q = "SELECT uid, size, blob_id FROM messages WHERE mailbox_id=?"
        args: list[Any] = [mailbox_id]
        if only_deleted:
            q += " AND instr(flags, '\\Deleted') > 0"
        if uids is not None:
            q += " AND uid IN (SELECT value FROM json_each(?))"
            args.append(json.dumps(sorted(set(uids))))
        rows = c.execute(q + " ORDER BY uid", args).fetchall()
        if not rows:
            return [], []
        _, modseq = self._bump_mailbox(c, mailbox_id, 0)
        gone = [r[0] for r in rows]
        c.executemany(
            "DELETE FROM messages WHERE mailbox_id=? AND uid=?", [(mailbox_id, u) for u in gone]
        )
        c.executemany(
            "INSERT OR REPLACE INTO tombstones(mailbox_id, uid, modseq) VALUES(?,?,?)",
            [(mailbox_id, u, modseq) for u in gone],
        )
        for _, _, blob_id in rows:
            self._unref_blob(c, blob_id, 1)
        total = sum(r[1] for r in rows)
        c.execute("UPDATE accounts SET used=max(0, used-?) WHERE id=?", (total, owner))
        return sem.expunged(owner, mailbox_id, gone, modseq)

    def _move_tx(
        self, c: sqlite3.Connection, src: int, uids: Sequence[int], dst: int
    ) -> tuple[list[tuple[int, int]], list[ChangeEvent]]:
        mapping, evs = self._copy_tx(c, src, uids, dst)
        if not mapping:
            return [], []
        _, evs2 = self._expunge_tx(c, src, [m[0] for m in mapping], only_deleted=False)
        return mapping, evs + evs2

    async def move_messages(
        self, src_mailbox_id: int, uids: Sequence[int], dst_mailbox_id: int
    ) -> list[tuple[int, int]]:
        return await self._write(lambda c: self._move_tx(c, src_mailbox_id, uids, dst_mailbox_id))

    async def expunge(self, mailbox_id: int, uids: Sequence[int] | None = None) -> list[int]:
        return await self._write(lambda c: self._expunge_tx(c, mailbox_id, uids, True))

    async def delete_messages(self, mailbox_id: int, uids: Sequence[int]) -> list[int]:
        return await self._write(lambda c: self._expunge_tx(c, mailbox_id, uids, False))

    @staticmethod
    def _changes(
        c: sqlite3.Connection, mailbox_id: int, modseq: int, limit: int | None
    ) -> Changes | None:
        """:meth:`changes_since`, or None when more than ``limit`` messages changed or more
        than ``limit`` were expunged."""
        row = c.execute("SELECT highestmodseq FROM mailboxes WHERE id=?", (mailbox_id,)).fetchone()
        highest = int(sem.need(row, sem.NO_MAILBOX)[0])
        if highest <= modseq:  # nothing at all changed
            return Changes(highest, [], [])
        n = -1 if limit is None else limit + 1  # (-1: no limit) one more tells it was passed
        changed = c.execute(
            "SELECT uid, modseq, flags FROM messages WHERE mailbox_id=? AND modseq>? "
            "ORDER BY uid LIMIT ?",
            (mailbox_id, modseq, n),
        ).fetchall()
        expunged = c.execute(
            "SELECT uid FROM tombstones WHERE mailbox_id=? AND modseq>? ORDER BY uid LIMIT ?",
            (mailbox_id, modseq, n),
        ).fetchall()
        if limit is not None and not sem.within(limit, changed, expunged):
            return None
        return Changes(
            highest, [(r[0], r[1], _text_to_flags(r[2])) for r in changed], [r[0] for r in expunged]
        )

    async def changes_since(self, mailbox_id: int, modseq: int) -> Changes:
        changes = await self._read(
            lambda c: self._changes(c, mailbox_id, modseq, None), offload=True
        )
        assert changes is not None  # no limit
        return changes

    async def changes_since_bounded(
        self, mailbox_id: int, modseq: int, limit: int
    ) -> Changes | None:
        # bounded by limit: inline
        return await self._read(lambda c: self._changes(c, mailbox_id, modseq, limit))

    async def quota_usage(self, account_id: int) -> tuple[int, int]:
        row = await self._read(
            lambda c: c.execute(
                "SELECT used, quota FROM accounts WHERE id=?", (account_id,)
            ).fetchone()
        )
        return sem.usage_of(row)

    async def maildrop_lock(
        self, account_id: int
    ) -> contextlib.AbstractAsyncContextManager[None] | None:
        """Lock the account's maildrop for one POP3 session in any process serving this
        database (RFC 1939 §8).

        Returns an async context manager that releases the lock on exit, or None when another
        session (of this process or another) holds it. A process that dies releases its locks
        (they are ``lockf`` byte ranges of ``<db>-maildrop.lock``)."""
        locks = self._maildrops
        if self._closed or locks is None:
            raise StorageError("storage is closed")
        if not locks.acquire(account_id):
            return None

        @contextlib.asynccontextmanager
        async def held() -> AsyncIterator[None]:
            try:
                yield
            finally:
                locks.release(account_id)

        return held()

    # -- failed logins shared by every process --------------------------------------------
    async def auth_failure_add(self, keys: Sequence[str], window: float) -> None:
        """Record one failed login for each key (an account, a client address), on the
        database clock, and forget up to :data:`AUTH_FAILURE_PRUNE_LIMIT` failures of any key
        older than ``window`` seconds (keys that never fail again, such as rotating client
        addresses, must not stay forever)."""
        key_list = list(keys)
        if not key_list:
            return

        def fn(c: sqlite3.Connection) -> tuple[None, list[ChangeEvent]]:
            now = time.time()  # the database clock: this machine's, read in the transaction
            c.execute(
                "DELETE FROM auth_failures WHERE rowid IN "
                "(SELECT rowid FROM auth_failures WHERE at < ? LIMIT ?)",
                (now - window, AUTH_FAILURE_PRUNE_LIMIT),
            )
            c.executemany(
                "INSERT INTO auth_failures(key, at) VALUES(?, ?)", [(k, now) for k in key_list]
            )
            return None, []

        await self._write(fn)

    async def auth_failure_status(
        self, keys: Sequence[str], window: float
    ) -> dict[str, tuple[int, float]]:
        """Per key: (failures within ``window`` seconds, seconds since the latest one)."""

        def fn(c: sqlite3.Connection) -> list[Any]:
            now = time.time()
            return c.execute(
                "SELECT key, count(*), ? - max(at) FROM auth_failures "
                "WHERE key IN (SELECT value FROM json_each(?)) AND at >= ? GROUP BY key",
                (now, json.dumps(list(keys)), now - window),
            ).fetchall()

        return {r[0]: (int(r[1]), float(r[2])) for r in await self._read(fn)}

    async def auth_failure_clear(self, key: str) -> None:
        """Forget the key's failed logins (after a successful one). Costs a write only when
        there are any: this runs on every successful login."""
        found = await self._read(
            lambda c: c.execute(
                "SELECT 1 FROM auth_failures WHERE key=? LIMIT 1", (key,)
            ).fetchone()
        )
        if found is None:
            return

        def fn(c: sqlite3.Connection) -> tuple[None, list[ChangeEvent]]:
            c.execute("DELETE FROM auth_failures WHERE key=?", (key,))
            return None, []

        await self._write(fn)

    # -- installation settings and webmail sessions -------------------------------------
    async def get_meta(self, key: str) -> str | None:
        row = await self._read(
            lambda c: c.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        )
        return None if row is None else str(row[0])

    async def init_meta(self, key: str, value: str) -> str:
        def fn(c: sqlite3.Connection) -> tuple[str, list[ChangeEvent]]:
            c.execute(
                "INSERT INTO meta(key, value) VALUES(?, ?) ON CONFLICT(key) DO NOTHING",
                (key, value),
            )
            return str(c.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()[0]), []

        return await self._write(fn)

    async def revoke_session(self, nonce: str, expires: float, now: float | None = None) -> None:
        def fn(c: sqlite3.Connection) -> tuple[None, list[ChangeEvent]]:
            c.execute(
                "DELETE FROM session_revocations WHERE expires < ?",
                (time.time() if now is None else now,),
            )
            c.execute(
                "INSERT INTO session_revocations(nonce, expires) VALUES(?, ?) "
                "ON CONFLICT(nonce) DO UPDATE SET expires = max(expires, excluded.expires)",
                (nonce, expires),
            )
            return None, []

        await self._write(fn)

    async def session_revoked(self, nonce: str) -> bool:
        row = await self._read(
            lambda c: c.execute(
                "SELECT 1 FROM session_revocations WHERE nonce=?", (nonce,)
            ).fetchone()
        )
        return row is not None

    # -- maintenance ---------------------------------------------------------------------
    async def integrity_check(self) -> list[str]:
        """Verify refcounts and quota bookkeeping; returns a list of problems (empty = fine)."""

        def fn(c: sqlite3.Connection) -> list[str]:
            problems = sem.refcount_problems(c.execute(sem.INTEGRITY_REFCOUNTS))
            return problems + sem.usage_problems(c.execute(sem.INTEGRITY_USAGE))

        return await self._read(fn, offload=True)
