"""Structured logging: one line per session event, ``key=value`` fields, never secrets."""

from __future__ import annotations

import logging
import sys
from typing import Any

__all__ = ["event", "setup_logging"]


def _fmt(value: Any) -> str:
    s = str(value)
    if not s or any(c in s for c in ' "=\n\r\t'):
        s = (
            '"'
            + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r")
            + '"'
        )
    return s


def event(logger: logging.Logger, name: str, level: int = logging.INFO, **fields: Any) -> None:
    """Log ``name k=v k=v`` on one line."""
    if logger.isEnabledFor(level):
        parts = [name] + [f"{k}={_fmt(v)}" for k, v in fields.items() if v is not None]
        logger.log(level, " ".join(parts))


def setup_logging(level: str = "INFO", *, tag: str = "") -> None:
    """Log lines to stderr; ``tag`` (a worker process's name, e.g. ``w1``) follows the
    logger's name so the lines of several serving processes can be told apart."""
    handler = logging.StreamHandler(sys.stderr)
    name = f"%(name)s[{tag}]" if tag else "%(name)s"
    handler.setFormatter(
        logging.Formatter(f"%(asctime)s %(levelname)s {name}: %(message)s", "%Y-%m-%dT%H:%M:%S")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
