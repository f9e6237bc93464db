"""The PostgreSQL backend: many nodes, one database (DESIGN.md §3–§7).

- **asyncpg**, with a few pooled connections for reads (each read is a single statement, so it
  sees one snapshot) and a **group-commit writer** for writes, like the SQLite backend's: write
  jobs are queued; a writer task on its own connection takes every job that is waiting, runs
  them in one transaction and commits once. A job that fails is undone alone (the batch runs
  again with a savepoint per job); a deadlock or serialization failure (possible only between
  nodes) retries the job. Results are handed back only after COMMIT returned, and change
  events are published after it.
- **UIDs and modseqs** are allocated by ``UPDATE mailboxes … RETURNING`` inside the writing
  transaction: the mailbox row stays locked until COMMIT, so concurrent transactions on any
  node allocate and become visible in increasing order (DESIGN.md §5).
- **Message bytes** are stored once per sha256 in ``blobs`` + ``blob_chunks`` (``bytea`` rows of
  256 KiB), reference-counted in the same transaction as the metadata that points at them.
- **The queue** is claimed with ``FOR UPDATE SKIP LOCKED`` (DESIGN.md §6); leases are set and
  compared on the database clock (``clock_timestamp()`` in the statement), which every node
  shares, never on a node's clock; due times are compared on it too.
- **Change events** cross nodes with LISTEN/NOTIFY (:mod:`letterbird.storage.pg_events`).
- **POP3 maildrop locks** are session-level advisory locks held on one dedicated connection per
  node: a node that dies releases its locks with its connection.
- **Failed logins** are recorded in ``auth_failures`` so throttling can hold across nodes.
- **Webmail sessions**: the signing secret is one ``meta`` row that the first node to start
  creates, and logouts are rows of ``session_revocations``, so a cookie issued by one node is
  accepted, and once logged out refused, by every node.

Schema and URL: :mod:`letterbird.storage.pg_schema`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import enum
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from typing import Any, TypeVar

import asyncpg

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
from letterbird.storage.pg_events import PgChangeBus
from letterbird.storage.pg_schema import (
    CHUNK,
    SCHEMA_VERSION,
    advisory_key,
    migrate,
    parse_pg_url,
    schema_version,
)

__all__ = ["PgStorage"]

log = logging.getLogger("letterbird.storage")

T = TypeVar("T")
Conn = Any  # an asyncpg.Connection (asyncpg ships no type information)
WriteFn = Callable[[Conn], Awaitable[tuple[T, list[ChangeEvent]]]]

MAX_BATCH = 256
RETRIES = 5  # attempts of a job that hit a deadlock or serialization failure
_RETRY_STATES = {"40001", "40P01"}  # serialization_failure, deadlock_detected
_FILE_BATCH = 16  # spool-file chunks sent per statement (16 × 256 KiB)
_NO_END = 1 << 62
_DB_NOW = "extract(epoch FROM clock_timestamp())::float8"
_MAILDROP_KIND = 1
#: Expired ``auth_failures`` rows (of any key) deleted by each recorded failed login: enough to
#: keep up with the two rows a failure adds, few enough to keep that write short.
AUTH_FAILURE_PRUNE_LIMIT = 500

_MESSAGES = f"SELECT {sem.MESSAGE_COLS} WHERE m.mailbox_id=$1"
_META = f"SELECT {sem.META_COLS} WHERE m.mailbox_id=$1"

_CONN_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    OSError,
    asyncio.TimeoutError,
)


def _affected(status: str) -> int:
    """Rows a statement changed, from its status ("UPDATE 3", "DELETE 0")."""
    return int(status.split()[-1])


def _storage_error(exc: BaseException) -> StorageError:
    if isinstance(exc, StorageError):
        return exc
    text = str(exc) or type(exc).__name__
    return StorageError(f"database error: {text}")


class _Job:
    __slots__ = ("fn", "future")

    def __init__(self, fn: WriteFn[Any], future: asyncio.Future[Any]) -> None:
        self.fn = fn
        self.future = future


def _resolve(fut: asyncio.Future[Any], result: Any, exc: BaseException | None) -> None:
    if fut.done():
        return
    if exc is not None:
        fut.set_exception(exc)
    else:
        fut.set_result(result)


class _MaildropLock:
    """The async context manager :meth:`PgStorage.maildrop_lock` returns (already held)."""

    def __init__(self, storage: PgStorage, account_id: int) -> None:
        self._storage = storage
        self.account_id = account_id

    async def __aenter__(self) -> None:
        return None

    async def __aexit__(self, *exc: object) -> None:
        await self._storage._maildrop_release(self.account_id)


class _Readers:
    """A small pool of reading connections.

    asyncpg's own pool spends more on each acquire/release (a shielded task, timers, a reset
    callback) than a one-row query costs on loopback, and reads are single statements that
    leave no session state behind, so connections are simply lent out and taken back. A
    connection that failed, or whose query was interrupted, is closed instead of reused.
    """

    def __init__(self, connect: Callable[[], Awaitable[Conn]], size: int) -> None:
        self._connect = connect
        self.size = size
        self._free: list[Conn] = []
        self._count = 0  # open connections, lent or free
        self._waiters: collections.deque[asyncio.Future[Conn | None]] = collections.deque()
        self._closed = False

    async def _acquire(self) -> Conn:
        while True:
            if self._closed:
                raise StorageError("storage is closed")
            while self._free:
                conn = self._free.pop()
                if not conn.is_closed():
                    return conn
                self._count -= 1
            if self._count < self.size:
                self._count += 1
                try:
                    return await self._connect()
                except BaseException:
                    self._count -= 1
                    self._wake(None)
                    raise
            fut: asyncio.Future[Conn | None] = asyncio.get_running_loop().create_future()
            self._waiters.append(fut)
            try:
                conn = await fut
            except asyncio.CancelledError:
                if fut.done() and not fut.cancelled() and fut.result() is not None:
                    self._release(fut.result(), healthy=True)
                raise
            if conn is not None:
                return conn
            # a slot was freed (a connection closed): loop to open a new one

    def _wake(self, conn: Conn | None) -> bool:
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(conn)
                return True
        return False

    def _release(self, conn: Conn, healthy: bool) -> None:
        if healthy and not self._closed and not conn.is_closed():
            if not self._wake(conn):
                self._free.append(conn)
            return
        self._count -= 1
        conn.terminate()
        self._wake(None)

    @contextlib.asynccontextmanager
    async def lend(self) -> AsyncIterator[Conn]:
        conn = await self._acquire()
        healthy = False
        try:
            yield conn
            healthy = True
        except asyncpg.PostgresError as exc:  # the server refused a query: still usable
            healthy = not isinstance(exc, asyncpg.PostgresConnectionError)
            raise
        finally:
            self._release(conn, healthy and not conn.is_closed() and not conn.is_in_transaction())

    async def close(self) -> None:
        self._closed = True
        free, self._free = self._free, []
        for conn in free:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), 5)
        self._count -= len(free)
        self._wake(None)


class PgStorage:
    """PostgreSQL implementation of :class:`letterbird.storage.interface.Storage`."""

    def __init__(
        self,
        url: str,
        *,
        default_quota: int = 0,
        pool_size: int = 10,
        writers: int = 1,
        migrate: bool = True,
        listen: bool = True,
        node: str | None = None,
        connect_timeout: float = 10.0,
    ) -> None:
        try:
            self.url = parse_pg_url(url)
        except ValueError as exc:
            raise StorageError(str(exc)) from None
        self.default_quota = default_quota
        self.pool_size = max(pool_size, 1)  # reading connections (writers have their own)
        self.writer_count = max(writers, 1)
        self.auto_migrate = migrate
        self.listen = listen
        self.connect_timeout = connect_timeout
        self._bus = PgChangeBus(node=node)
        self._readers: _Readers | None = None
        self._jobs: asyncio.Queue[_Job | None] = asyncio.Queue()
        self._writers: list[asyncio.Task[None]] = []
        self._closed = False
        self._opened = False
        self._lock_conn: Conn = None
        self._lock_mutex = asyncio.Lock()
        self._maildrops: set[int] = set()  # locked or being locked by a session of ours
        self._maildrops_held: set[int] = set()  # of those, the ones the database granted
        self._maildrop_key = advisory_key(self.url.schema, _MAILDROP_KIND)
        self.migrated: tuple[int, int] | None = None
        self.batches = 0  # group-commit statistics (for tests and metrics)
        self.batched_jobs = 0
        self.retries = 0  # jobs retried after a deadlock or serialization failure
        self.reruns = 0  # batches run again with savepoints because a job failed

    @property
    def bus(self) -> ChangeBus:
        return self._bus

    @property
    def node(self) -> str:
        return self._bus.node

    # -- lifecycle ---------------------------------------------------------------------
    def _settings(self, role: str) -> dict[str, str]:
        """Per-connection settings: the schema, and a name that shows in pg_stat_activity."""
        return {**self.url.server_settings, "application_name": f"letterbird:{self.node}:{role}"}

    async def _connect(self, role: str = "admin") -> Conn:
        try:
            return await asyncpg.connect(
                self.url.dsn,
                server_settings=self._settings(role),
                timeout=self.connect_timeout,
            )
        except _CONN_ERRORS as exc:
            raise StorageError(f"cannot connect to PostgreSQL {self.url.redacted}: {exc}") from exc

    async def open(self) -> None:
        self._bus.bind_loop(asyncio.get_running_loop())
        conn = await self._connect()
        try:
            if self.auto_migrate:
                self.migrated = await migrate(conn, self.url.schema)
                if self.migrated[0] != self.migrated[1]:
                    event(
                        log,
                        "storage.migrated",
                        backend="postgresql",
                        old=self.migrated[0],
                        new=self.migrated[1],
                    )
            else:
                version = await schema_version(conn)
                if version != SCHEMA_VERSION:
                    raise StorageError(
                        f"database schema version is {version}, this Letterbird needs "
                        f"{SCHEMA_VERSION}: run `letterbird migrate`"
                        + (
                            " (or set storage.auto_migrate = true)"
                            if version < SCHEMA_VERSION
                            else ""
                        )
                    )
        except _CONN_ERRORS as exc:
            raise _storage_error(exc) from exc
        finally:
            await conn.close()
        self._readers = _Readers(lambda: self._connect("pool"), self.pool_size)
        async with self._readers.lend():  # fail early when no connection can be made
            pass
        self._writers = [
            asyncio.create_task(self._writer_loop(), name=f"pg-writer-{i}")
            for i in range(self.writer_count)
        ]
        self._opened = True
        if self.listen:
            try:
                await self._bus.start(lambda: self._connect("listener"), self.url.channel)
            except BaseException:
                await self.close()
                raise

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self._bus.stop()
        for _ in self._writers:
            self._jobs.put_nowait(None)
        if self._writers:
            await asyncio.gather(*self._writers, return_exceptions=True)
        self._writers = []
        while not self._jobs.empty():  # jobs that arrived after the writers stopped
            job = self._jobs.get_nowait()
            if job is not None:
                _resolve(job.future, None, StorageError("storage is closed"))
        if self._lock_conn is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._lock_conn.close(), 5)
            self._lock_conn = None
        self._maildrops.clear()
        self._maildrops_held.clear()
        if self._readers is not None:
            await self._readers.close()

    # -- plumbing ----------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed or not self._opened:
            raise StorageError("storage is closed")

    async def _fetch(self, query: str, *args: Any) -> list[Any]:
        self._check_open()
        assert self._readers is not None
        try:
            async with self._readers.lend() as conn:
                return list(await conn.fetch(query, *args))
        except _CONN_ERRORS as exc:
            raise _storage_error(exc) from exc

    async def _fetchrow(self, query: str, *args: Any) -> Any:
        self._check_open()
        assert self._readers is not None
        try:
            async with self._readers.lend() as conn:
                return await conn.fetchrow(query, *args)
        except _CONN_ERRORS as exc:
            raise _storage_error(exc) from exc

    async def _write(self, fn: WriteFn[T]) -> T:
        self._check_open()
        fut: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._jobs.put_nowait(_Job(fn, fut))
        return await fut

    async def _writer_loop(self) -> None:
        """One writer: its own connection (not a pooled one), batches of queued jobs."""
        conn: Conn = None
        try:
            while True:
                job = await self._jobs.get()
                if job is None:
                    return
                batch = [job]
                while len(batch) < MAX_BATCH:
                    try:
                        nxt = self._jobs.get_nowait()
                    except asyncio.QueueEmpty:
                        break
                    if nxt is None:  # another writer's stop signal or ours: keep it queued
                        self._jobs.put_nowait(None)
                        break
                    batch.append(nxt)
                batch = [j for j in batch if not j.future.done()]  # cancelled before starting
                if batch:
                    conn = await self._write_batch(conn, batch)
        finally:
            if conn is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(conn.close(), 5)

    async def _write_batch(self, conn: Conn, batch: list[_Job]) -> Conn:
        """Run ``batch``; returns the connection to use next (None: reconnect first)."""
        for attempt in range(2):
            try:
                if conn is None or conn.is_closed():
                    conn = await self._connect("writer")
                # A connection that died while idle (database restarted, backend killed)
                # fails at BEGIN, before any job ran: retry once on a fresh connection.
                outcome = await self._run_batch(conn, batch, may_retry=attempt == 0)
            except Exception as exc:  # cannot connect, or a bug: fail the batch, keep going
                err = _storage_error(exc)
                for j in batch:
                    _resolve(j.future, None, err)
                outcome = _Outcome.BROKEN
            if outcome is not _Outcome.OK and conn is not None:
                with contextlib.suppress(Exception):
                    conn.terminate()
                conn = None
            if outcome is not _Outcome.RETRY:
                break
        return conn

    async def _run_job(self, conn: Conn, job: _Job, mode: _Mode) -> tuple[Any, Any]:
        """Run one job; returns (result, events) or raises _JobFailed with its (mapped) error.

        A deadlock or serialization failure is retried in place when the job has its own
        savepoint or its own transaction; in an optimistic batch it fails the batch, which then
        runs again with savepoints."""
        savepoint = mode is _Mode.SAVEPOINTS
        for attempt in range(RETRIES):
            if savepoint:
                await conn.execute("SAVEPOINT job")
            try:
                result, evs = await job.fn(conn)
            except (asyncpg.InterfaceError, asyncpg.PostgresConnectionError, OSError):
                raise  # the connection is gone: the whole batch fails
            except Exception as exc:
                if savepoint:
                    await conn.execute("ROLLBACK TO SAVEPOINT job; RELEASE SAVEPOINT job")
                retry = getattr(exc, "sqlstate", None) in _RETRY_STATES and mode is not _Mode.SHARED
                if retry and attempt + 1 < RETRIES:
                    self.retries += 1
                    if mode is _Mode.ALONE:
                        await conn.execute("ROLLBACK; BEGIN")
                    continue
                if isinstance(exc, asyncpg.PostgresError):
                    raise _JobFailed(_storage_error(exc)) from exc
                raise _JobFailed(exc) from exc
            if savepoint:
                await conn.execute("RELEASE SAVEPOINT job")
            return result, evs
        raise AssertionError("unreachable")  # pragma: no cover

    async def _run_batch(self, conn: Conn, batch: list[_Job], may_retry: bool) -> _Outcome:
        """Run a batch in one transaction; says whether the connection is still usable.

        Jobs run back to back without savepoints (two round trips fewer per job); if one
        fails, the transaction is rolled back and the batch runs again with a savepoint per
        job, so only the failing job is undone. Job functions only touch the database, so
        running one twice is harmless."""
        outcomes: list[tuple[Any, BaseException | None]] = []
        events: list[ChangeEvent] = []
        mode = _Mode.ALONE if len(batch) == 1 else _Mode.SHARED
        healthy = True
        try:
            await conn.execute("BEGIN")
        except _CONN_ERRORS as exc:
            if may_retry:
                event(log, "storage.reconnect", level=logging.WARNING, error=exc)
                return _Outcome.RETRY
            err = StorageError(f"cannot begin a transaction: {exc}")
            for job in batch:
                _resolve(job.future, None, err)
            return _Outcome.BROKEN
        try:
            while True:
                outcomes, events = [], []
                aborted = False
                for job in batch:
                    try:
                        result, evs = await self._run_job(conn, job, mode)
                    except _JobFailed as failed:
                        outcomes.append((None, failed.error))
                        if mode is not _Mode.SAVEPOINTS:  # the transaction is aborted
                            await conn.execute("ROLLBACK")
                            aborted = True
                            break
                    else:
                        outcomes.append((result, None))
                        events.extend(evs)
                if not aborted:
                    break
                if mode is _Mode.ALONE:  # its failure is its outcome: nothing to commit
                    self._finish(batch, outcomes, [])
                    return _Outcome.OK
                mode = _Mode.SAVEPOINTS
                self.reruns += 1
                await conn.execute("BEGIN")
            if events and self.listen:
                await conn.execute(
                    "SELECT pg_notify($1, p) FROM unnest($2::text[]) AS p",
                    self.url.channel,
                    self._bus.payloads(events),
                )
            await conn.execute("COMMIT")
        except Exception as exc:
            healthy = not conn.is_closed() and not isinstance(
                exc, asyncpg.InterfaceError | asyncpg.PostgresConnectionError | OSError
            )
            if healthy:
                try:
                    await conn.execute("ROLLBACK")
                except Exception:
                    healthy = False
            err = StorageError(f"transaction failed: {exc}")
            outcomes = [(None, err) for _ in batch]
            events = []
        self._finish(batch, outcomes, events)
        return _Outcome.OK if healthy else _Outcome.BROKEN

    def _finish(
        self,
        batch: list[_Job],
        outcomes: list[tuple[Any, BaseException | None]],
        events: list[ChangeEvent],
    ) -> None:
        self.batches += 1
        self.batched_jobs += len(batch)
        # Events first: a caller that continues after its write already finds the change
        # published to every local subscriber (as the SQLite backend does).
        if events:
            self._bus.publish(events)
        for job, (result, exc) in zip(batch, outcomes, strict=True):
            _resolve(job.future, result, exc)

    # -- directory ---------------------------------------------------------------------
    async def add_domain(self, name: str) -> Domain:
        async def fn(c: Conn) -> tuple[Domain, list[ChangeEvent]]:
            try:
                new_id = await c.fetchval(
                    "INSERT INTO domains(name, created) VALUES($1, $2) RETURNING id",
                    name,
                    time.time(),
                )
            except asyncpg.UniqueViolationError:
                raise sem.domain_exists(name) from None
            return Domain(int(new_id), name), []

        return await self._write(fn)

    async def remove_domain(self, name: str) -> None:
        async def fn(c: Conn) -> tuple[None, list[ChangeEvent]]:
            dom = sem.need(
                await c.fetchval("SELECT id FROM domains WHERE name=$1 FOR UPDATE", name),
                sem.no_domain(name),
            )
            n = await c.fetchval("SELECT count(*) FROM accounts WHERE domain_id=$1", dom)
            sem.check_domain_empty(name, n)
            await c.execute("DELETE FROM aliases WHERE domain_id=$1", dom)
            await c.execute("DELETE FROM domains WHERE id=$1", dom)
            return None, []

        await self._write(fn)

    @staticmethod
    async def _domain_for_adding(c: Conn, domain: str) -> int:
        dom = await c.fetchval("SELECT id FROM domains WHERE name=$1", domain)
        return int(sem.need(dom, sem.no_domain(domain, adding=True)))

    async def list_domains(self) -> list[Domain]:
        rows = await self._fetch('SELECT id, name FROM domains ORDER BY name COLLATE "C"')
        return [sem.domain_of(r) for r in rows]

    async def get_domain(self, name: str) -> Domain | None:
        row = await self._fetchrow("SELECT id, name FROM domains WHERE name=$1", name)
        return sem.domain_of(row) if row else None

    async def _create_mailboxes(
        self, c: Conn, account_id: int, boxes: Sequence[tuple[str, str | None]]
    ) -> list[Mailbox]:
        try:
            rows = await c.fetch(
                "INSERT INTO mailboxes(account_id, name, role, uidvalidity) "
                "SELECT $1, t.name, t.role, nextval('uidvalidity_seq') "
                "FROM unnest($2::text[], $3::text[]) WITH ORDINALITY AS t(name, role, i) "
                "ORDER BY t.i "
                f"RETURNING {sem.MAILBOX_COLS}",
                account_id,
                [b[0] for b in boxes],
                [b[1] for b in boxes],
            )
        except asyncpg.UniqueViolationError:
            raise sem.mailbox_exists(boxes[0][0]) from None
        except asyncpg.ForeignKeyViolationError:
            raise NotFound(sem.NO_ACCOUNT) from None
        return [sem.mailbox_of(r) for r in rows]

    async def add_account(self, local: str, domain: str, password_hash: str) -> Account:
        quota = self.default_quota

        async def fn(c: Conn) -> tuple[Account, list[ChangeEvent]]:
            dom = await self._domain_for_adding(c, domain)
            try:
                account_id = await c.fetchval(
                    "INSERT INTO accounts(domain_id, local, local_norm, password_hash, quota, "
                    "created) VALUES($1, $2, $3, $4, $5, $6) RETURNING id",
                    dom,
                    local,
                    sem.norm_local(local),
                    password_hash,
                    quota,
                    time.time(),
                )
            except asyncpg.UniqueViolationError:
                raise sem.account_exists(local, domain) from None
            await self._create_mailboxes(c, account_id, SPECIAL_USE_DEFAULTS)
            return Account(int(account_id), local, domain, password_hash, quota, 0), []

        return await self._write(fn)

    async def remove_account(self, account_id: int) -> None:
        async def fn(c: Conn) -> tuple[None, list[ChangeEvent]]:
            sem.need(
                await c.fetchval("SELECT id FROM accounts WHERE id=$1 FOR UPDATE", account_id),
                sem.NO_ACCOUNT,
            )
            for row in await c.fetch(
                "SELECT id FROM mailboxes WHERE account_id=$1 ORDER BY id", account_id
            ):
                await self._drop_mailbox_tx(c, row[0])
            await c.execute("DELETE FROM accounts WHERE id=$1", account_id)
            return None, []

        await self._write(fn)

    async def _set_account(self, account_id: int, column: str, value: object) -> None:
        async def fn(c: Conn) -> tuple[None, list[ChangeEvent]]:
            status = await c.execute(
                f"UPDATE accounts SET {column}=$1 WHERE id=$2", value, account_id
            )
            sem.need_changed(_affected(status), sem.NO_ACCOUNT)
            return None, []

        await self._write(fn)

    async def set_password(self, account_id: int, password_hash: str) -> None:
        await self._set_account(account_id, "password_hash", password_hash)

    async def set_quota(self, account_id: int, quota: int) -> None:
        await self._set_account(account_id, "quota", quota)

    async def get_account(self, account_id: int) -> Account | None:
        row = await self._fetchrow(f"SELECT {sem.ACCOUNT_COLS} WHERE a.id=$1", account_id)
        return sem.account_of(row) if row else None

    # Accounts and aliases are both ``a`` joined to their domain ``d``, looked up by domain
    # and normalised local part, listed by domain then local part (bytewise, as SQLite does).
    async def _find_by_address(self, cols: str, norm: str, domain: str) -> Any:
        return await self._fetchrow(
            f"SELECT {cols} WHERE d.name=$1 AND a.local_norm=$2", domain, norm
        )

    async def _list_by_domain(self, cols: str, domain: str | None) -> list[Any]:
        if domain is None:
            return await self._fetch(
                f'SELECT {cols} ORDER BY d.name COLLATE "C", a.local_norm COLLATE "C"'
            )
        return await self._fetch(
            f'SELECT {cols} WHERE d.name=$1 ORDER BY a.local_norm COLLATE "C"', domain
        )

    async def find_account(self, local: str, domain: str) -> Account | None:
        row = await self._find_by_address(sem.ACCOUNT_COLS, sem.norm_local(local), domain)
        return sem.account_of(row) if row else None

    async def list_accounts(self, domain: str | None = None) -> list[Account]:
        return [sem.account_of(r) for r in await self._list_by_domain(sem.ACCOUNT_COLS, domain)]

    async def add_alias(self, local: str | None, domain: str, targets: Sequence[str]) -> Alias:
        async def fn(c: Conn) -> tuple[Alias, list[ChangeEvent]]:
            dom = await self._domain_for_adding(c, domain)
            try:
                alias_id = await c.fetchval(
                    "INSERT INTO aliases(domain_id, local, local_norm, targets) "
                    "VALUES($1, $2, $3, $4) RETURNING id",
                    dom,
                    local,
                    sem.alias_norm(local),
                    list(targets),
                )
            except asyncpg.UniqueViolationError:
                raise sem.alias_exists(local, domain) from None
            return Alias(int(alias_id), local, domain, tuple(targets)), []

        return await self._write(fn)

    async def remove_alias(self, local: str | None, domain: str) -> None:
        norm = sem.alias_norm(local)

        async def fn(c: Conn) -> tuple[None, list[ChangeEvent]]:
            status = await c.execute(
                "DELETE FROM aliases WHERE local_norm=$1 AND domain_id="
                "(SELECT id FROM domains WHERE name=$2)",
                norm,
                domain,
            )
            sem.need_changed(_affected(status), "no such alias")
            return None, []

        await self._write(fn)

    async def find_alias(self, local: str | None, domain: str) -> Alias | None:
        row = await self._find_by_address(sem.ALIAS_COLS, sem.alias_norm(local), domain)
        return sem.alias_of(row, row[3]) if row else None

    async def list_aliases(self, domain: str | None = None) -> list[Alias]:
        return [sem.alias_of(r, r[3]) for r in await self._list_by_domain(sem.ALIAS_COLS, domain)]

    # -- mailboxes ---------------------------------------------------------------------
    async def _drop_mailbox_tx(self, c: Conn, mailbox_id: int) -> None:
        rows = await c.fetch(
            "DELETE FROM messages WHERE mailbox_id=$1 RETURNING blob_id, size", mailbox_id
        )
        total = sum(r[1] for r in rows)
        if total:
            await c.execute(
                "UPDATE accounts SET used=greatest(0, used-$1) WHERE id="
                "(SELECT account_id FROM mailboxes WHERE id=$2)",
                total,
                mailbox_id,
            )
        await self._unref_blobs(c, sem.blob_counts(r[0] for r in rows))
        await c.execute("DELETE FROM tombstones WHERE mailbox_id=$1", mailbox_id)
        await c.execute("DELETE FROM mailboxes WHERE id=$1", mailbox_id)

    @staticmethod
    async def _ref_blobs(c: Conn, counts: dict[int, int], sign: int = 1) -> list[int]:
        """Add (``sign`` -1: remove) ``counts`` references to blobs; returns their ids."""
        ids = sorted(counts)
        await c.execute(
            "UPDATE blobs b SET refcount = b.refcount + d.n "
            "FROM unnest($1::bigint[], $2::int[]) AS d(id, n) WHERE b.id = d.id",
            ids,
            [sign * counts[i] for i in ids],
        )
        return ids

    @staticmethod
    async def _unref_blobs(c: Conn, counts: dict[int, int]) -> None:
        if not counts:
            return
        ids = await PgStorage._ref_blobs(c, counts, -1)
        await c.execute("DELETE FROM blobs WHERE id = ANY($1::bigint[]) AND refcount <= 0", ids)

    async def list_mailboxes(self, account_id: int) -> list[Mailbox]:
        rows = await self._fetch(
            f"SELECT {sem.MAILBOX_COLS} FROM mailboxes WHERE account_id=$1 "
            "ORDER BY name <> 'INBOX', name COLLATE \"C\"",
            account_id,
        )
        return [sem.mailbox_of(r) for r in rows]

    async def get_mailbox(self, account_id: int, name: str) -> Mailbox | None:
        row = await self._fetchrow(
            f"SELECT {sem.MAILBOX_COLS} FROM mailboxes WHERE account_id=$1 AND name=$2",
            account_id,
            names.normalise(name),
        )
        return sem.mailbox_of(row) if row else None

    async def get_mailbox_by_id(self, mailbox_id: int) -> Mailbox | None:
        row = await self._fetchrow(
            f"SELECT {sem.MAILBOX_COLS} FROM mailboxes WHERE id=$1", mailbox_id
        )
        return sem.mailbox_of(row) if row else None

    async def create_mailbox(self, account_id: int, name: str, role: str | None = None) -> Mailbox:
        name = names.validate(name)

        async def fn(c: Conn) -> tuple[Mailbox, list[ChangeEvent]]:
            [mb] = await self._create_mailboxes(c, account_id, [(name, role)])
            return mb, sem.mailbox_changed(account_id, mb.id)

        return await self._write(fn)

    async def rename_mailbox(self, account_id: int, old: str, new: str) -> None:
        plan = sem.rename_plan(old, new)

        async def fn(c: Conn) -> tuple[None, list[ChangeEvent]]:
            found = "SELECT id FROM mailboxes WHERE account_id=$1 AND name=$2"
            mid: int = plan.check(
                await c.fetchval(found + " FOR UPDATE", account_id, plan.old),
                await c.fetchval(found, account_id, plan.new),
            )
            if plan.moves_inbox:
                [dst] = await self._create_mailboxes(c, account_id, [(plan.new, None)])
                uids = [
                    r[0]
                    for r in await c.fetch(
                        "SELECT uid FROM messages WHERE mailbox_id=$1 ORDER BY uid", mid
                    )
                ]
                _, evs = await self._move_tx(c, mid, uids, dst.id)
                return None, evs
            try:  # the mailbox and its inferiors (plan.inferior) in one statement
                await c.execute(
                    "UPDATE mailboxes SET name = CASE WHEN id=$2 THEN $3 "
                    "ELSE $3 || substr(name, length($4)) END "
                    "WHERE account_id=$1 AND (id=$2 OR left(name, length($4)) = $4)",
                    account_id,
                    mid,
                    plan.new,
                    plan.prefix,
                )
            except asyncpg.UniqueViolationError:
                raise sem.inferior_exists(plan.new) from None
            return None, sem.mailbox_changed(account_id, mid)

        await self._write(fn)

    async def delete_mailbox(self, account_id: int, name: str) -> None:
        name = sem.delete_name(name)

        async def fn(c: Conn) -> tuple[None, list[ChangeEvent]]:
            mid = sem.need(
                await c.fetchval(
                    "SELECT id FROM mailboxes WHERE account_id=$1 AND name=$2 FOR UPDATE",
                    account_id,
                    name,
                ),
                sem.no_mailbox(name),
            )
            await self._drop_mailbox_tx(c, mid)
            return None, sem.mailbox_changed(account_id, mid)

        await self._write(fn)

    async def set_subscribed(self, account_id: int, name: str, subscribed: bool) -> None:
        name = names.normalise(name)

        async def fn(c: Conn) -> tuple[None, list[ChangeEvent]]:
            status = await c.execute(
                "UPDATE mailboxes SET subscribed=$1 WHERE account_id=$2 AND name=$3",
                subscribed,
                account_id,
                name,
            )
            sem.need_changed(_affected(status), sem.no_mailbox(name))
            return None, []

        await self._write(fn)

    async def mailbox_status(self, mailbox_id: int) -> MailboxStatus:
        row = await self._fetchrow(
            f"SELECT {sem.MAILBOX_COLS}, s.n, s.octets, s.unseen, s.first_unseen "
            "FROM mailboxes, LATERAL (SELECT count(*) AS n, coalesce(sum(size), 0) AS octets, "
            "count(*) FILTER (WHERE NOT flags @> ARRAY['\\Seen']) AS unseen, "
            "min(uid) FILTER (WHERE NOT flags @> ARRAY['\\Seen']) AS first_unseen "
            "FROM messages WHERE mailbox_id = mailboxes.id) AS s WHERE id=$1",
            mailbox_id,
        )
        return sem.status_of(sem.need(row, sem.NO_MAILBOX), row[8:])

    # -- messages ----------------------------------------------------------------------
    async def _store_blob_tx(self, c: Conn, blob: BlobSource, refs: int) -> int:
        """Insert the blob (or add ``refs`` references to the stored copy); returns its id."""
        small = blob.data is not None and len(blob.data) <= CHUNK
        row = await c.fetchrow(
            "WITH b AS (INSERT INTO blobs(hash, size, refcount, structure, chunk) "
            "VALUES($1, $2, $3, $4, $5) ON CONFLICT (hash) DO UPDATE "
            "SET refcount = blobs.refcount + EXCLUDED.refcount "
            "RETURNING id, (xmax = 0) AS inserted), "
            "c AS (INSERT INTO blob_chunks(blob_id, n, data) "
            "SELECT id, 0, $6::bytea FROM b WHERE inserted AND length($6::bytea) > 0) "
            "SELECT id, inserted FROM b",
            blob.sha256,
            blob.size,
            refs,
            blob.structure,
            CHUNK,
            blob.data if small else b"",
        )
        blob_id, inserted = int(row[0]), bool(row[1])
        if not inserted or small or blob.size == 0:
            return blob_id
        if blob.data is not None:
            await self._store_chunks(c, blob_id, 0, blob.data)
            return blob_id
        if blob.path is None:
            raise StorageError("blob has neither data nor path")
        await self._store_file_chunks(c, blob_id, blob.path, blob.size)
        return blob_id

    @staticmethod
    async def _store_chunks(c: Conn, blob_id: int, first: int, data: bytes) -> int:
        """Store ``data`` as the chunks numbered from ``first``; returns the next number."""
        ns = list(range(first, first + (len(data) + CHUNK - 1) // CHUNK))
        await c.execute(
            "INSERT INTO blob_chunks(blob_id, n, data) "
            "SELECT $1, t.n, t.d FROM unnest($2::int[], $3::bytea[]) AS t(n, d)",
            blob_id,
            ns,
            [data[(i - first) * CHUNK : (i - first + 1) * CHUNK] for i in ns],
        )
        return first + len(ns)

    @staticmethod
    async def _store_file_chunks(c: Conn, blob_id: int, path: str, size: int) -> None:
        loop = asyncio.get_running_loop()
        with open(path, "rb") as fh:
            written = 0
            n = 0
            while written < size:
                want = min(CHUNK * _FILE_BATCH, size - written)
                data: bytes = await loop.run_in_executor(None, fh.read, want)
                if len(data) < want:
                    raise StorageError("spool file shorter than the message size")
                n = await PgStorage._store_chunks(c, blob_id, n, data)
                written += len(data)

    async def _bump_mailbox(self, c: Conn, mailbox_id: int, uids: int) -> tuple[int, int]:
        """Allocate ``uids`` UIDs and one modseq (the row stays locked until COMMIT)."""
        row = await c.fetchrow(
            "UPDATE mailboxes SET uidnext=uidnext+$1, highestmodseq=highestmodseq+1 "
            "WHERE id=$2 RETURNING uidnext, highestmodseq",
            uids,
            mailbox_id,
        )
        return sem.allocated(row, uids)

    async def _charge(self, c: Conn, account_id: int, size: int) -> None:
        row = await c.fetchrow(
            "UPDATE accounts SET used=used+$1 WHERE id=$2 RETURNING used, quota", size, account_id
        )
        sem.charged(row, account_id, size)

    # One statement per delivered copy: lock the mailbox row and allocate the UID and modseq,
    # charge the account, insert the message. An empty result means no such mailbox.
    _DELIVER_TAIL = (
        "RETURNING id, uidnext - 1 AS uid, highestmodseq AS modseq), "
        "acc AS (UPDATE accounts SET used = used + $3 "
        "WHERE id = $2 AND EXISTS (SELECT 1 FROM mb) RETURNING used, quota), "
        "ins AS (INSERT INTO messages(mailbox_id, uid, modseq, flags, internaldate, size, blob_id) "
        "SELECT id, uid, modseq, $4, $5, $3, $6 FROM mb RETURNING mailbox_id, uid, modseq) "
        "SELECT ins.mailbox_id, ins.uid, ins.modseq, acc.used, acc.quota FROM ins, acc"
    )
    _DELIVER_BY_ID = (
        "WITH mb AS (UPDATE mailboxes SET uidnext = uidnext + 1, "
        "highestmodseq = highestmodseq + 1 WHERE id = $1 AND account_id = $2 " + _DELIVER_TAIL
    )
    _DELIVER_BY_NAME = (
        "WITH mb AS (UPDATE mailboxes SET uidnext = uidnext + 1, "
        "highestmodseq = highestmodseq + 1 WHERE account_id = $2 AND name = $1 " + _DELIVER_TAIL
    )

    async def _deliver_one(
        self, c: Conn, t: AppendTarget, size: int, blob_id: int, now: float
    ) -> tuple[int, int, int]:
        flags = sem.sorted_flags(t.flags)
        idate = t.internaldate if t.internaldate is not None else now
        if t.mailbox_id is not None:
            row = await c.fetchrow(
                self._DELIVER_BY_ID, t.mailbox_id, t.account_id, size, flags, idate, blob_id
            )
        else:
            name = names.normalise(t.mailbox)
            args = (name, t.account_id, size, flags, idate, blob_id)
            row = await c.fetchrow(self._DELIVER_BY_NAME, *args)
            if row is None:  # created on first use, with its default role
                await c.execute(
                    "INSERT INTO mailboxes(account_id, name, role, uidvalidity) "
                    "SELECT $1, $2, $3, nextval('uidvalidity_seq') "
                    "WHERE EXISTS (SELECT 1 FROM accounts WHERE id=$1) "
                    "ON CONFLICT (account_id, name) DO NOTHING",
                    t.account_id,
                    name,
                    names.default_role(name),
                )
                row = await c.fetchrow(self._DELIVER_BY_NAME, *args)
        if row is None:
            raise NotFound(sem.NO_MAILBOX)
        sem.charged((row[3], row[4]), t.account_id, size)
        return int(row[0]), int(row[1]), int(row[2])

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

    async def _deliver_tx(
        self,
        c: Conn,
        blob: BlobSource,
        targets: Sequence[AppendTarget],
        outgoing: OutgoingMessage | None,
        queue_id: str | None,
        now: float,
    ) -> tuple[list[tuple[int, int]], list[ChangeEvent]]:
        """The body of :meth:`deliver` (also a notification stored with a queue change)."""
        blob_id = await self._store_blob_tx(c, blob, sem.blob_refs(targets, outgoing))
        out: list[tuple[int, int]] = []
        events: list[ChangeEvent] = []
        for t in targets:
            mailbox_id, uid, modseq = await self._deliver_one(c, t, blob.size, blob_id, now)
            out.append((mailbox_id, uid))
            events.append(ChangeEvent(t.account_id, mailbox_id, ChangeKind.APPEND, (uid,), modseq))
        if outgoing is not None:
            assert queue_id is not None
            await self._enqueue_tx(c, queue_id, blob_id, outgoing)
        return out, events

    # -- the outgoing queue ----------------------------------------------------------------
    @staticmethod
    async def _enqueue_tx(c: Conn, queue_id: str, blob_id: int, msg: OutgoingMessage) -> None:
        by_domain = sem.rcpts_by_domain(msg.recipients)
        try:
            await c.execute(
                "WITH q AS (INSERT INTO queue_messages(id, blob_id, sender, envid, ret, "
                f"account_id, created) VALUES($1, $2, $3, $4, $5, $6, {_DB_NOW}) RETURNING id) "
                "INSERT INTO queue_entries(queue_id, domain, recipients, due, created) "
                f"SELECT q.id, t.d, t.r, {_DB_NOW}, {_DB_NOW} "
                "FROM q, unnest($7::text[], $8::text[]) WITH ORDINALITY AS t(d, r, i) "
                "ORDER BY t.i",
                queue_id,
                blob_id,
                msg.sender,
                msg.envid,
                msg.ret,
                msg.account_id,
                list(by_domain),
                list(by_domain.values()),
            )
        except asyncpg.UniqueViolationError:
            raise StorageError(f"queue id {queue_id} is in use") from None

    async def queue_claim(
        self, owner: str, lease: float, limit: int, now: float | None = None
    ) -> list[QueueEntry]:
        """Lease up to ``limit`` due entries to ``owner`` until the database clock + ``lease``.

        Leases are set and compared on the database clock, which every node shares, whatever
        the caller's clock says; ``now`` overrides the database clock for the due comparison
        only (tests, tools). Rows another node is claiming at this instant are skipped
        (``FOR UPDATE SKIP LOCKED``), never waited for.
        """

        async def fn(c: Conn) -> tuple[list[QueueEntry], list[ChangeEvent]]:
            rows = await c.fetch(
                f"WITH t AS (SELECT {_DB_NOW} AS db), "
                "due AS (SELECT e.id FROM queue_entries e, t "
                "WHERE e.due <= coalesce($1::float8, t.db) AND "
                "(e.lease_until IS NULL OR e.lease_until < t.db) "
                "ORDER BY e.due, e.id LIMIT $2 FOR UPDATE OF e SKIP LOCKED), "
                "upd AS (UPDATE queue_entries e SET owner = $3, lease_until = t.db + $4 "
                "FROM due, t WHERE e.id = due.id RETURNING e.*) "
                f"SELECT {sem.entry_cols('upd')} ORDER BY e.due, e.id",
                now,
                limit,
                owner,
                float(lease),
            )
            return [sem.entry_of(r) for r in rows], []

        return await self._write(fn)

    async def queue_renew(self, entry_ids: Sequence[int], owner: str, lease: float) -> int:
        """Extend our leases (from the database clock; negative: release); returns how many
        we still hold."""
        ids = list(entry_ids)

        async def fn(c: Conn) -> tuple[int, list[ChangeEvent]]:
            status = await c.execute(
                f"UPDATE queue_entries SET lease_until = {_DB_NOW} + $1 "
                "WHERE id = ANY($2::bigint[]) AND owner = $3",
                float(lease),
                ids,
                owner,
            )
            return _affected(status), []

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
        # the due time: as given, or the caller's delay added to the database clock
        at = "$2" if relative_to is None else f"{_DB_NOW} + $2"
        due_arg = float(due) if relative_to is None else float(due) - relative_to

        async def fn(c: Conn) -> tuple[bool, list[ChangeEvent]]:
            row = await c.fetchrow(
                "SELECT queue_id, owner FROM queue_entries WHERE id=$1 FOR UPDATE", entry_id
            )
            if row is None or row[1] != owner:
                return False, []
            if rest:
                await c.execute(
                    f"UPDATE queue_entries SET recipients=$1, due={at}, attempts=attempts+1, "
                    "last_error=$3, owner=NULL, lease_until=NULL, warned=$4 WHERE id=$5",
                    sem.rcpts_to_json(rest),
                    due_arg,
                    last_error,
                    warned,
                    entry_id,
                )
            else:
                await c.execute("DELETE FROM queue_entries WHERE id=$1", entry_id)
                await self._drop_queue_message_if_done(c, row[0])
            return True, await self._notify_tx(c, notification)

        return await self._write(fn)

    async def _notify_tx(self, c: Conn, n: Notification | None) -> list[ChangeEvent]:
        """Store a notification inside a queue transaction; returns its change events."""
        n = sem.notification_to_store(n)
        if n is None:
            return []
        _, events = await self._deliver_tx(
            c, n.blob, n.targets, n.outgoing, n.queue_id, time.time()
        )
        return events

    async def _drop_queue_message_if_done(self, c: Conn, queue_id: str) -> None:
        left = await c.fetchval("SELECT count(*) FROM queue_entries WHERE queue_id=$1", queue_id)
        if left:
            return
        blob_id = await c.fetchval(
            "DELETE FROM queue_messages WHERE id=$1 RETURNING blob_id", queue_id
        )
        if blob_id is not None:
            await self._unref_blobs(c, {blob_id: 1})

    async def queue_entries(self, queue_id: str | None = None) -> list[QueueEntry]:
        if queue_id is None:
            rows = await self._fetch(f"SELECT {sem.ENTRY_COLS} ORDER BY e.created, e.id")
        else:
            rows = await self._fetch(
                f"SELECT {sem.ENTRY_COLS} WHERE e.queue_id=$1 ORDER BY e.id", queue_id
            )
        return [sem.entry_of(r) for r in rows]

    async def queue_remove(
        self,
        queue_id: str,
        report: Callable[[list[QueueEntry]], Notification | None] | None = None,
    ) -> list[QueueEntry]:
        async def fn(c: Conn) -> tuple[list[QueueEntry], list[ChangeEvent]]:
            exists = await c.fetchval(
                "SELECT 1 FROM queue_messages WHERE id=$1 FOR UPDATE", queue_id
            )
            if exists is None:
                raise sem.no_queued_message(queue_id)
            rows = await c.fetch(
                f"SELECT {sem.ENTRY_COLS} WHERE e.queue_id=$1 ORDER BY e.id", queue_id
            )
            await c.execute("DELETE FROM queue_entries WHERE queue_id=$1", queue_id)
            await self._drop_queue_message_if_done(c, queue_id)
            removed, note = sem.removal(rows, report)
            return removed, await self._notify_tx(c, note)

        return await self._write(fn)

    async def queue_flush(self, now: float | None = None) -> int:
        """Make every entry due now; returns how many were waiting."""

        async def fn(c: Conn) -> tuple[int, list[ChangeEvent]]:
            status = await c.execute(
                f"WITH t AS (SELECT coalesce($1::float8, {_DB_NOW}) AS now) "
                "UPDATE queue_entries SET due = t.now FROM t WHERE due > t.now",
                now,
            )
            return _affected(status), []

        return await self._write(fn)

    async def queue_next_wait(self) -> float | None:
        """Seconds, on the database clock, until the earliest entry is due and not leased
        (None: queue empty)."""
        row = await self._fetchrow(
            f"SELECT min(greatest(due, coalesce(lease_until, 0))) - {_DB_NOW} FROM queue_entries"
        )
        if row is None or row[0] is None:
            return None
        return max(float(row[0]), 0.0)

    async def db_time(self) -> float:
        """The database clock (seconds since the epoch), which leases are measured on."""
        row = await self._fetchrow(f"SELECT {_DB_NOW}")
        return float(row[0])

    # -- reading messages ------------------------------------------------------------------
    async def list_messages(self, mailbox_id: int) -> list[tuple[int, int, frozenset[str]]]:
        rows = await self._fetch(
            "SELECT uid, modseq, flags FROM messages WHERE mailbox_id=$1 ORDER BY uid",
            mailbox_id,
        )
        return [(r[0], r[1], frozenset(r[2])) for r in rows]

    async def _fetch_uids(self, base: str, mailbox_id: int, uids: list[int]) -> list[Any]:
        """``base`` (selecting from ``messages m`` of one mailbox) for the ascending ``uids``
        (not empty), ordered by uid."""
        if uids[-1] - uids[0] + 1 == len(uids):  # contiguous: one range scan
            return await self._fetch(
                base + " AND m.uid BETWEEN $2 AND $3 ORDER BY m.uid", mailbox_id, uids[0], uids[-1]
            )
        return await self._fetch(
            base + " AND m.uid = ANY($2::bigint[]) ORDER BY m.uid", mailbox_id, uids
        )

    async def fetch_messages(
        self, mailbox_id: int, uids: Iterable[int] | None = None
    ) -> list[MessageRecord]:
        uid_list = None if uids is None else sorted(set(uids))
        if uid_list is None:
            rows = await self._fetch(_MESSAGES + " ORDER BY m.uid", mailbox_id)
        elif not uid_list:
            return []
        else:
            rows = await self._fetch_uids(_MESSAGES, mailbox_id, uid_list)
        return [
            MessageRecord(mailbox_id, r[0], r[1], frozenset(r[2]), r[3], r[4], r[5], bytes(r[6]))
            for r in rows
        ]

    async def fetch_meta(
        self, mailbox_id: int, uids: Sequence[int]
    ) -> list[tuple[int, int, float, int, str]]:
        uid_list = sorted(set(uids))
        if not uid_list:
            return []
        rows = await self._fetch_uids(_META, mailbox_id, uid_list)
        return [(r[0], r[1], float(r[2]), r[3], r[4]) for r in rows]

    async def read_blob(self, blob_id: str, start: int = 0, end: int | None = None) -> bytes:
        stop_arg = _NO_END if end is None else max(end, 0)
        rows = await self._fetch(
            "SELECT b.size, b.chunk, c.n, c.data FROM blobs b LEFT JOIN blob_chunks c "
            "ON c.blob_id = b.id AND c.n >= $2::bigint / b.chunk "
            "AND c.n <= (least($3::bigint, b.size) - 1) / b.chunk "
            "WHERE b.hash = $1 ORDER BY c.n",
            blob_id,
            max(start, 0),
            stop_arg,
        )
        if not rows:
            raise NotFound("no such blob")
        size, chunk = int(rows[0][0]), int(rows[0][1])
        stop = size if end is None else min(end, size)
        if start >= stop or rows[0][2] is None:
            return b""
        first = int(rows[0][2]) * chunk
        data = b"".join(bytes(r[3]) for r in rows)
        return data[start - first : stop - first]

    # -- changing messages -----------------------------------------------------------------
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

        async def fn(c: Conn) -> tuple[list[StoreResult], list[ChangeEvent]]:
            owner = await self._owner(c, mailbox_id, lock=True)
            rows = await c.fetch(
                "SELECT uid, modseq, flags FROM messages WHERE mailbox_id=$1 "
                "AND uid = ANY($2::bigint[]) ORDER BY uid",
                mailbox_id,
                uid_list,
            )
            changes = sem.flag_changes(rows, frozenset, mode, flagset, unchanged_since)
            if not changes:
                return [], []
            _, modseq = await self._bump_mailbox(c, mailbox_id, 0)
            await c.executemany(
                "UPDATE messages SET flags=$1, modseq=$2 WHERE mailbox_id=$3 AND uid=$4",
                [(sem.sorted_flags(f), modseq, mailbox_id, u) for u, f in changes],
            )
            return sem.flags_stored(owner, mailbox_id, changes, modseq)

        return await self._write(fn)

    @staticmethod
    async def _owner(c: Conn, mailbox_id: int, *, lock: bool = False) -> int:
        """The account a mailbox belongs to (``lock``: the mailbox row locked until COMMIT)."""
        owner = await c.fetchval(
            "SELECT account_id FROM mailboxes WHERE id=$1" + (" FOR UPDATE" if lock else ""),
            mailbox_id,
        )
        return int(sem.need(owner, sem.NO_MAILBOX))

    async def _copy_tx(
        self, c: Conn, src: int, uids: Sequence[int], dst: int
    ) -> tuple[list[tuple[int, int]], list[ChangeEvent]]:
        owner = await self._owner(c, dst)
        rows = await c.fetch(
            "SELECT uid, flags, internaldate, size, blob_id FROM messages WHERE mailbox_id=$1 "
            "AND uid = ANY($2::bigint[]) ORDER BY uid FOR SHARE",
            src,
            sorted(set(uids)),
        )
        if not rows:
            return [], []
        first, modseq = await self._bump_mailbox(c, dst, len(rows))
        mapping, evs = sem.copied(owner, dst, [r[0] for r in rows], first, modseq)
        await c.execute(
            "INSERT INTO messages(mailbox_id, uid, modseq, flags, internaldate, size, blob_id) "
            "SELECT $1, m.uid, $2, s.flags, s.internaldate, s.size, s.blob_id "
            "FROM unnest($3::bigint[], $4::bigint[]) AS m(src_uid, uid) "
            "JOIN messages s ON s.mailbox_id = $5 AND s.uid = m.src_uid",
            dst,
            modseq,
            [m[0] for m in mapping],
            [m[1] for m in mapping],
            src,
        )
        await self._ref_blobs(c, sem.blob_counts(r[4] for r in rows))
        await self._charge(c, owner, sum(r[3] for r in rows))
        return mapping, evs

    async def copy_messages(
        self, src_mailbox_id: int, uids: Sequence[int], dst_mailbox_id: int
    ) -> list[tuple[int, int]]:
        return await self._write(lambda c: self._copy_tx(c, src_mailbox_id, uids, dst_mailbox_id))

    async def _expunge_tx(
        self, c: Conn, mailbox_id: int, uids: Sequence[int] | None, only_deleted: bool
    ) -> tuple[list[int], list[ChangeEvent]]:
        owner = await self._owner(c, mailbox_id, lock=True)
        q = "DELETE FROM messages WHERE mailbox_id=$1"
        args: list[Any] = [mailbox_id]
        if only_deleted:
            q += " AND flags @> ARRAY['\\Deleted']"
        if uids is not None:
            q += " AND uid = ANY($2::bigint[])"
            args.append(sorted(set(uids)))
        rows = await c.fetch(q + " RETURNING uid, size, blob_id", *args)
        if not rows:
            return [], []
        _, modseq = await self._bump_mailbox(c, mailbox_id, 0)
        gone = sorted(r[0] for r in rows)
        await c.execute(
            "INSERT INTO tombstones(mailbox_id, uid, modseq) "
            "SELECT $1, u, $2 FROM unnest($3::bigint[]) AS u "
            "ON CONFLICT (mailbox_id, uid) DO UPDATE SET modseq = EXCLUDED.modseq",
            mailbox_id,
            modseq,
            gone,
        )
        await self._unref_blobs(c, sem.blob_counts(r[2] for r in rows))
        total = sum(r[1] for r in rows)
        await c.execute(
            "UPDATE accounts SET used = greatest(0, used - $1) WHERE id = $2", total, owner
        )
        return sem.expunged(owner, mailbox_id, gone, modseq)

    async def _move_tx(
        self, c: Conn, src: int, uids: Sequence[int], dst: int
    ) -> tuple[list[tuple[int, int]], list[ChangeEvent]]:
        mapping, evs = await self._copy_tx(c, src, uids, dst)
        if not mapping:
            return [], []
        _, evs2 = await self._expunge_tx(c, src, [m[0] for m in mapping], only_deleted=False)
        return mapping, evs + evs2

    async def move_messages(
        self, src_mailbox_id: int, uids: Sequence[int], dst_mailbox_id: int
    ) -> list[tuple[int, int]]:
        return await self._write(lambda c: self._move_tx(c, src_mailbox_id, uids, dst_mailbox_id))

    async def expunge(self, mailbox_id: int, uids: Sequence[int] | None = None) -> list[int]:
        return await self._write(lambda c: self._expunge_tx(c, mailbox_id, uids, True))

    async def delete_messages(self, mailbox_id: int, uids: Sequence[int]) -> list[int]:
        return await self._write(lambda c: self._expunge_tx(c, mailbox_id, uids, False))

    async def changes_since(self, mailbox_id: int, modseq: int) -> Changes:
        # One statement, so the three parts come from one snapshot.
        rows = await self._fetch(
            "SELECT 0 AS k, highestmodseq AS uid, 0::bigint AS modseq, NULL::text[] AS flags "
            "FROM mailboxes WHERE id=$1 "
            "UNION ALL SELECT 1, uid, modseq, flags FROM messages "
            "WHERE mailbox_id=$1 AND modseq>$2 "
            "UNION ALL SELECT 2, uid, modseq, NULL FROM tombstones "
            "WHERE mailbox_id=$1 AND modseq>$2",
            mailbox_id,
            modseq,
        )
        highest = [r[1] for r in rows if r[0] == 0]
        if not highest:
            raise NotFound(sem.NO_MAILBOX)
        changed = sorted((r[1], r[2], frozenset(r[3])) for r in rows if r[0] == 1)
        expunged = sorted(r[1] for r in rows if r[0] == 2)
        return Changes(int(highest[0]), changed, expunged)

    async def changes_since_bounded(
        self, mailbox_id: int, modseq: int, limit: int
    ) -> Changes | None:
        changes = await PgStorage.changes_since(self, mailbox_id, modseq)  # one round trip
        return changes if sem.within(limit, changes.changed, changes.expunged) else None

    async def quota_usage(self, account_id: int) -> tuple[int, int]:
        row = await self._fetchrow("SELECT used, quota FROM accounts WHERE id=$1", account_id)
        return sem.usage_of(row)

    # -- POP3 maildrop locks across nodes ------------------------------------------------
    async def _locks(self) -> Conn:
        """The dedicated lock connection (reconnected, and our locks re-taken, if it died)."""
        conn = self._lock_conn
        if conn is not None and not conn.is_closed():
            return conn
        conn = await self._connect("locks")
        self._lock_conn = conn
        for account_id in sorted(self._maildrops_held):
            ok = await conn.fetchval(
                "SELECT pg_try_advisory_lock($1, $2)", self._maildrop_key, account_id
            )
            if not ok:
                event(log, "storage.maildrop_lock_lost", level=logging.WARNING, account=account_id)
        return conn

    async def maildrop_lock(
        self, account_id: int
    ) -> contextlib.AbstractAsyncContextManager[None] | None:
        """Lock the account's maildrop for one POP3 session on any node (RFC 1939 §8).

        Returns an async context manager that releases the lock on exit, or None when another
        session (on this node or another) holds it. A node that dies releases its locks.
        """
        self._check_open()
        if account_id in self._maildrops:
            return None
        self._maildrops.add(account_id)
        try:
            async with self._lock_mutex:
                conn = await self._locks()
                ok = await conn.fetchval(
                    "SELECT pg_try_advisory_lock($1, $2)", self._maildrop_key, account_id
                )
        except BaseException as exc:
            self._maildrops.discard(account_id)
            if isinstance(exc, _CONN_ERRORS):
                raise _storage_error(exc) from exc
            raise
        if not ok:
            self._maildrops.discard(account_id)
            return None
        self._maildrops_held.add(account_id)
        return _MaildropLock(self, account_id)

    async def _maildrop_release(self, account_id: int) -> None:
        if account_id not in self._maildrops:
            return
        self._maildrops.discard(account_id)
        self._maildrops_held.discard(account_id)
        conn = self._lock_conn
        if conn is None or conn.is_closed():
            return
        try:
            async with self._lock_mutex:
                await conn.fetchval(
                    "SELECT pg_advisory_unlock($1, $2)", self._maildrop_key, account_id
                )
        except _CONN_ERRORS:
            pass  # a lost connection released the lock already

    # -- failed logins shared by every node ------------------------------------------------
    async def auth_failure_add(self, keys: Sequence[str], window: float) -> None:
        """Record one failed login for each key (an account, a client address), on the
        database clock, and forget up to :data:`AUTH_FAILURE_PRUNE_LIMIT` failures of any key
        older than ``window`` seconds (keys that never fail again, such as rotating client
        addresses, must not stay forever). Rows another node is pruning are skipped, not
        waited for."""
        key_list = list(keys)
        if not key_list:
            return

        async def fn(c: Conn) -> tuple[None, list[ChangeEvent]]:
            # (the cutoff is a subquery, computed once: compared with the volatile
            # clock_timestamp() itself, ``at`` could not be searched in its index)
            await c.execute(
                "WITH old AS (SELECT ctid FROM auth_failures "
                f"WHERE at < (SELECT {_DB_NOW} - $2) LIMIT $3 FOR UPDATE SKIP LOCKED), "
                "d AS (DELETE FROM auth_failures WHERE ctid IN (SELECT ctid FROM old)) "
                f"INSERT INTO auth_failures(key, at) SELECT k, {_DB_NOW} FROM unnest($1::text[]) k",
                key_list,
                float(window),
                AUTH_FAILURE_PRUNE_LIMIT,
            )
            return None, []

        await self._write(fn)

    async def auth_failure_status(
        self, keys: Sequence[str], window: float
    ) -> dict[str, tuple[int, float]]:
        """Per key: (failures within ``window`` seconds, seconds since the latest one)."""
        rows = await self._fetch(
            f"SELECT key, count(*), {_DB_NOW} - max(at) FROM auth_failures "
            f"WHERE key = ANY($1::text[]) AND at >= {_DB_NOW} - $2 GROUP BY key",
            list(keys),
            float(window),
        )
        return {r[0]: (int(r[1]), float(r[2])) for r in rows}

    async def auth_failure_clear(self, key: str) -> None:
        """Forget the key's failed logins (after a successful one). Costs a write only when
        there are any: this runs on every successful login."""
        if await self._fetchrow("SELECT 1 FROM auth_failures WHERE key = $1 LIMIT 1", key) is None:
            return

        async def fn(c: Conn) -> tuple[None, list[ChangeEvent]]:
            await c.execute("DELETE FROM auth_failures WHERE key = $1", key)
            return None, []

        await self._write(fn)

    # -- installation settings and webmail sessions, shared by every node -----------------
    async def get_meta(self, key: str) -> str | None:
        row = await self._fetchrow("SELECT value FROM meta WHERE key=$1", key)
        return None if row is None else str(row[0])

    async def init_meta(self, key: str, value: str) -> str:
        async def fn(c: Conn) -> tuple[str, list[ChangeEvent]]:
            # Two statements (READ COMMITTED: the SELECT takes a new snapshot): when another
            # node's insert of the key is in flight, ours waits for its commit, does nothing,
            # and the SELECT then reads the winner's value.
            await c.execute(
                "INSERT INTO meta(key, value) VALUES($1, $2) ON CONFLICT(key) DO NOTHING",
                key,
                value,
            )
            return str(await c.fetchval("SELECT value FROM meta WHERE key=$1", key)), []

        return await self._write(fn)

    async def revoke_session(self, nonce: str, expires: float, now: float | None = None) -> None:
        async def fn(c: Conn) -> tuple[None, list[ChangeEvent]]:
            await c.execute(
                f"DELETE FROM session_revocations WHERE expires < coalesce($1::float8, {_DB_NOW})",
                now,
            )
            await c.execute(
                "INSERT INTO session_revocations(nonce, expires) VALUES($1, $2) "
                "ON CONFLICT(nonce) DO UPDATE "
                "SET expires = greatest(session_revocations.expires, excluded.expires)",
                nonce,
                float(expires),
            )
            return None, []

        await self._write(fn)

    async def session_revoked(self, nonce: str) -> bool:
        row = await self._fetchrow("SELECT 1 FROM session_revocations WHERE nonce=$1", nonce)
        return row is not None

    # -- maintenance ---------------------------------------------------------------------
    async def integrity_check(self) -> list[str]:
        """Verify refcounts, blob chunks and quota bookkeeping (empty list = fine)."""
        problems = sem.refcount_problems(await self._fetch(sem.INTEGRITY_REFCOUNTS))
        for bid, size, stored in await self._fetch(
            "SELECT b.id, b.size, coalesce((SELECT sum(length(c.data)) FROM blob_chunks c "
            "WHERE c.blob_id = b.id), 0) FROM blobs b"
        ):
            if size != stored:
                problems.append(f"blob {bid}: size {size} but {stored} bytes stored")
        return problems + sem.usage_problems(await self._fetch(sem.INTEGRITY_USAGE))

    async def counts(self) -> dict[str, int]:
        """Row counts per table (for ``storage copy`` verification and tests)."""
        out: dict[str, int] = {}
        for table in (
            "domains",
            "accounts",
            "aliases",
            "mailboxes",
            "blobs",
            "messages",
            "tombstones",
            "queue_messages",
            "queue_entries",
        ):
            row = await self._fetchrow(f"SELECT count(*) FROM {table}")
            out[table] = int(row[0])
        return out

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[Conn]:
        """A pooled connection for maintenance code (``storage copy``, tests)."""
        self._check_open()
        assert self._readers is not None
        async with self._readers.lend() as conn:
            yield conn


class _Mode(enum.Enum):
    ALONE = "alone"  # the only job of its transaction
    SHARED = "shared"  # one of several jobs in a transaction, without savepoints
    SAVEPOINTS = "savepoints"  # one of several jobs, each in its own savepoint


class _Outcome(enum.Enum):
    OK = "ok"  # the connection can run the next batch
    BROKEN = "broken"  # drop the connection
    RETRY = "retry"  # nothing ran: run the batch again on a fresh connection


class _JobFailed(Exception):
    """A job's own failure, carried out of :meth:`PgStorage._run_job`."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error
