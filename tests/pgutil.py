"""A real PostgreSQL for tests: a throw-away schema per test, skipped (or failed in CI) when none.

The server is ``$LETTERBIRD_TEST_PG_DSN`` (default ``postgresql://postgres@127.0.0.1:5432/test``).
Each storage gets its own schema ``lbt_<pid>_<n>_<random>`` through our URL's ``schema``
parameter, dropped at teardown; schemas left by a test process that died are dropped by the next
run. When no server answers, PostgreSQL tests are skipped with the reason — but fail when
``CI=true``, so a CI machine without its database cannot pass silently.

``LETTERBIRD_TEST_STORAGE=postgresql`` makes every end-to-end test (``make_config``) run on
PostgreSQL instead of SQLite.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import itertools
import os
import secrets
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import asyncpg
import pytest

from letterbird.storage.pg_schema import parse_pg_url

T = TypeVar("T")

DSN = os.environ.get("LETTERBIRD_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")
PREFIX = "lbt_"
_counter = itertools.count(1)
_status: list[str | None] = []  # [None] reachable, [reason] not, [] not probed yet


def on_postgres() -> bool:
    """Whether the test run asked for PostgreSQL storage everywhere."""
    return os.environ.get("LETTERBIRD_TEST_STORAGE", "").lower() in ("postgresql", "pg")


def in_thread(make: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine to completion on a fresh loop in another thread (usable from anywhere,
    including inside a running event loop)."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(lambda: asyncio.run(make())).result(60)


async def _probe() -> None:
    conn = await asyncpg.connect(DSN, timeout=3)
    try:
        await conn.fetchval("SELECT 1")
        await _sweep(conn)
    finally:
        await conn.close()


async def _sweep(conn: Any) -> None:
    """Drop schemas that test processes which no longer run left behind."""
    rows = await conn.fetch(
        "SELECT nspname FROM pg_namespace WHERE nspname LIKE $1", PREFIX.replace("_", r"\_") + "%"
    )
    for (name,) in rows:
        try:
            pid = int(name.split("_")[1])
        except (IndexError, ValueError):
            continue
        if pid == os.getpid():
            continue
        try:
            os.kill(pid, 0)
            continue  # still running
        except ProcessLookupError:
            pass
        except PermissionError:
            continue
        await conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')


def pg_unavailable() -> str | None:
    """None when the test server answers, else why not (probed once per process)."""
    if not _status:
        try:
            in_thread(_probe)
            _status.append(None)
        except Exception as exc:
            _status.append(f"no PostgreSQL at {DSN}: {type(exc).__name__}: {exc}")
    return _status[0]


def require_pg() -> None:
    """Skip the calling test when there is no PostgreSQL — fail instead when CI=true."""
    reason = pg_unavailable()
    if reason is None:
        return
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason} (CI=true: PostgreSQL tests must run)")
    pytest.skip(reason)


def new_url(tag: str = "") -> str:
    """A storage URL for a fresh, empty schema (created by the backend on open)."""
    require_pg()
    name = f"{PREFIX}{os.getpid()}_{next(_counter)}_{secrets.token_hex(3)}{tag}"
    sep = "&" if "?" in DSN else "?"
    if not _created:
        atexit.register(_drop_created)
    _created.append(name)
    return f"{DSN}{sep}schema={name}"


_created: list[str] = []


def _drop_created() -> None:
    """At exit: drop every schema this process made that a test did not drop itself."""

    async def run() -> None:
        conn = await asyncpg.connect(DSN, timeout=5)
        try:
            for name in _created:
                await conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
        finally:
            await conn.close()

    try:
        in_thread(run)
    except Exception:
        pass  # the next run's sweep drops them


_by_folder: dict[str, str] = {}


def url_for_folder(folder: object) -> str:
    """The PostgreSQL storage of one test data folder: the same folder always gets the same
    schema, as it would get the same SQLite file (a server restarted on it finds its mail)."""
    key = str(folder)
    if key not in _by_folder:
        _by_folder[key] = new_url()
    return _by_folder[key]


# Tables in an order that deleting them one by one never breaks a foreign key.
_TABLES = (
    "blob_chunks",
    "messages",
    "tombstones",
    "queue_entries",
    "queue_messages",
    "blobs",
    "mailboxes",
    "aliases",
    "accounts",
    "domains",
    "meta",
    "auth_failures",
    "session_revocations",
    "schema_version",
)
_IDENTITY = ("domains", "accounts", "aliases", "mailboxes", "blobs", "queue_entries")
_clean: list[str] = []  # URLs of migrated schemas emptied by recycle(), ready for reuse


def clean_url() -> str:
    """A storage URL for an empty, already migrated schema when one is ready (much faster than
    migrating a new one), else a fresh schema."""
    require_pg()
    return _clean.pop() if _clean else new_url()


async def recycle_async(url: str) -> None:
    """Empty a schema a test used so clean_url() can hand it out again (or drop it when it
    holds tables this helper does not know)."""
    parsed = parse_pg_url(url)
    conn = await asyncpg.connect(parsed.dsn, server_settings=parsed.server_settings, timeout=10)
    try:
        tables = {
            r[0]
            for r in await conn.fetch(
                "SELECT tablename FROM pg_tables WHERE schemaname = $1", parsed.schema
            )
        }
        from letterbird.storage.pg_schema import SCHEMA_VERSION

        version = await conn.fetchval("SELECT max(version) FROM schema_version") if tables else 0
        if tables - set(_TABLES) or version != SCHEMA_VERSION:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{parsed.schema}" CASCADE')
            return
        async with conn.transaction():
            for table in _TABLES[:-1]:
                await conn.execute(f"DELETE FROM {table}")
            for table in _IDENTITY:
                await conn.execute(f"ALTER TABLE {table} ALTER COLUMN id RESTART")
    finally:
        await conn.close()
    _clean.append(url)


async def drop_schema_async(url: str) -> None:
    parsed = parse_pg_url(url)
    conn = await asyncpg.connect(parsed.dsn, timeout=10)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{parsed.schema}" CASCADE')
    finally:
        await conn.close()


def drop_schema(url: str) -> None:
    in_thread(lambda: drop_schema_async(url))
