"""bench/imap.py's PostgreSQL runs (``--storage-url``): a tiny run really happens on one node
and on two, every response checked, and the throw-away schemas are gone afterwards.

Benchmarks are not tests; these only check the plumbing, never a figure.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import pgutil
import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:  # bench/ is not an installed package
    sys.path.insert(0, str(REPO_ROOT))

from bench import imap  # noqa: E402
from bench.common import pg_schema  # noqa: E402

pytestmark = [pytest.mark.pg]


async def _schemas(prefix: str) -> list[str]:
    import asyncpg

    conn = await asyncpg.connect(pgutil.DSN, timeout=10)
    try:
        rows = await conn.fetch(
            "SELECT nspname FROM pg_namespace WHERE nspname LIKE $1",
            prefix.replace("_", r"\_") + "%",
        )
    finally:
        await conn.close()
    return [r["nspname"] for r in rows]


def _schemas_now(prefix: str) -> list[str]:
    return pgutil.in_thread(lambda: _schemas(prefix))


def test_pg_schema_is_dropped_when_the_body_fails() -> None:
    pgutil.require_pg()
    import asyncpg

    name = f"lb_bench_t_{id(object())}"

    async def fill(url: str) -> None:
        from letterbird.storage.pg_schema import parse_pg_url

        parsed = parse_pg_url(url)
        conn = await asyncpg.connect(parsed.dsn, server_settings=parsed.server_settings)
        try:
            await conn.execute(f'CREATE SCHEMA "{parsed.schema}"')
            await conn.execute("CREATE TABLE t (x int)")
        finally:
            await conn.close()

    with pytest.raises(RuntimeError, match="boom"), pg_schema(pgutil.DSN, name) as url:
        assert url.endswith(f"?schema={name}")
        pgutil.in_thread(lambda: fill(url))
        assert _schemas_now(name) == [name]
        raise RuntimeError("boom")
    assert _schemas_now(name) == []


@pytest.mark.e2e
def test_small_run_on_one_and_two_nodes(capsys: Any) -> None:
    pgutil.require_pg()
    prefix = "lb_bench_imap_"
    before = set(_schemas_now(prefix))
    imap.main(
        [
            "--clients", "2", "--messages", "55", "--seconds", "1",
            "--only", "mix,reconnect", "--no-dovecot", "--storage-url", pgutil.DSN,
        ]
    )  # fmt: skip
    out = capsys.readouterr().out
    tables = re.findall(r"^server\s.*?\n\n", out, re.S | re.M)
    assert len(tables) == 2, out  # mix, reconnect
    for table in tables:
        header, *rows = table.strip().splitlines()
        assert header.split()[-1] == "errors" and "DB CPU ms/command" in header, table
        names = [r.split()[0] for r in rows]
        assert names == ["letterbird", "letterbird-pg1", "letterbird-pg2"], table
        for row in rows:
            cells = row.split()
            assert int(cells[2]) > 0 and cells[-1] == "0", row  # commands, no errors
        for row in rows[1:]:  # PostgreSQL rows: nodes' CPU and their backends' CPU known
            cpu, db = row.split()[5:7]
            assert float(cpu) > 0 and float(db) > 0, row
    assert "2 nodes, clients split between them" in out
    assert set(_schemas_now(prefix)) == before  # both throw-away schemas dropped
