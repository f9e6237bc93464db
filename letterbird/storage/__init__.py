"""Storage: one contract (``interface``), several backends (DESIGN.md §3)."""

from __future__ import annotations

from letterbird.config import Config
from letterbird.storage.interface import Storage, StorageError


def open_storage_for(config: Config) -> Storage:
    """Make (not yet open) the backend the configuration names."""
    url = config.storage_url
    if url.startswith("sqlite:///"):
        from letterbird.storage.sqlite import SqliteStorage

        return SqliteStorage(url[len("sqlite:///") :], default_quota=config.limits.account_quota)
    raise StorageError(f"unsupported storage URL {url!r}")
