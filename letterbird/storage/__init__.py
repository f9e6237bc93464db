"""Storage: one contract (``interface``), several backends (DESIGN.md §3)."""

from __future__ import annotations

from letterbird.config import Config
from letterbird.storage.interface import Storage, StorageError


def open_storage_for(config: Config, *, migrate: bool | None = None) -> Storage:
    """Make (not yet open) the backend the configuration names.

    ``migrate`` overrides ``storage.auto_migrate`` (``letterbird migrate`` passes True).
    """
    url = config.storage_url
    if url.startswith(("postgresql://", "postgres://")):
        from letterbird.storage.postgres import PgStorage

        return PgStorage(
            url,
            default_quota=config.limits.account_quota,
            pool_size=config.storage.pool_size,
            migrate=config.storage.auto_migrate if migrate is None else migrate,
        )
    if url.startswith("sqlite:///"):
        from letterbird.storage.sqlite import SqliteStorage

        return SqliteStorage(url[len("sqlite:///") :], default_quota=config.limits.account_quota)
    raise StorageError(f"unsupported storage URL {url!r}")
