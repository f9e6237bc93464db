"""Scheduling decisions of the outgoing queue, kept free of I/O so they are easy to test.

* :func:`next_attempt`: when a deferred entry is tried again (``[delivery] retry``, the last
  interval repeating), never later than its expiry, so the last attempt happens at the end of
  its ``lifetime`` and not one interval after it;
* :class:`HostBackoff`: a destination host (IP and port) that fails at the connection level
  ``host_failures`` times in a row is skipped, as a whole, for a retry interval (growing along
  the same schedule while it keeps failing), like Postfix's "dead host" cache; in memory only,
  bounded, reset by ``letterbird queue flush``;
* :func:`split_batches`: entries going to the same next hops are spread over at most
  ``per_host_concurrency`` connections of at most ``messages_per_connection`` messages each
  (one connection carries several messages).
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import TypeVar

__all__ = ["HostBackoff", "next_attempt", "retry_delay", "split_batches"]

_T = TypeVar("_T")

#: Hosts remembered at most by :class:`HostBackoff` (expired ones are dropped first).
MAX_HOSTS = 10000


def retry_delay(attempts: int, retry: Sequence[float]) -> float:
    """The wait after the ``attempts``-th failed attempt (1-based); the last interval repeats."""
    if not retry:
        raise ValueError("the retry schedule is empty")
    return retry[min(max(attempts, 1), len(retry)) - 1]


def next_attempt(
    now: float, attempts: int, created: float, lifetime: float, retry: Sequence[float]
) -> float:
    """When to try again after the ``attempts``-th failure: ``now + retry_delay``, but no
    later than the expiry ``created + lifetime``."""
    return min(now + retry_delay(attempts, retry), max(created + lifetime, now))


@dataclass(slots=True)
class _HostState:
    failures: int = 0
    dead_until: float = 0.0
    last_error: str = ""


class HostBackoff:
    """Consecutive connection-level failures per host, and the hosts currently skipped."""

    def __init__(self, threshold: int, retry: Sequence[float], max_hosts: int = MAX_HOSTS) -> None:
        self.threshold = max(1, threshold)
        self.retry = list(retry)
        self.max_hosts = max_hosts
        self._hosts: dict[Hashable, _HostState] = {}

    def failed(self, host: Hashable, now: float, error: str) -> float | None:
        """Record a failure; returns the time until which the host is skipped, if it is."""
        state = self._hosts.get(host)
        if state is None:
            if len(self._hosts) >= self.max_hosts:
                self._prune(now)
            state = self._hosts[host] = _HostState()
        state.failures += 1
        state.last_error = error
        if state.failures >= self.threshold:
            state.dead_until = now + retry_delay(state.failures - self.threshold + 1, self.retry)
            return state.dead_until
        return None

    def succeeded(self, host: Hashable) -> None:
        self._hosts.pop(host, None)

    def dead(self, host: Hashable, now: float) -> tuple[float, str] | None:
        """``(until, last error)`` when the host is being skipped now, else None."""
        state = self._hosts.get(host)
        if state is None or state.dead_until <= now:
            return None
        return state.dead_until, state.last_error

    def reset(self) -> None:
        self._hosts.clear()

    def __len__(self) -> int:
        return len(self._hosts)

    def _prune(self, now: float) -> None:
        for host in [h for h, s in self._hosts.items() if s.dead_until <= now]:
            del self._hosts[host]
        while len(self._hosts) >= self.max_hosts:  # all dead: forget the oldest
            del self._hosts[next(iter(self._hosts))]


def split_batches(items: Sequence[_T], per_host: int, per_connection: int) -> list[list[_T]]:
    """Spread ``items`` over the fewest connections that respect both limits: at most
    ``per_host`` connections, each with at most ``per_connection`` items when that suffices
    (beyond ``per_host * per_connection`` items the connections carry more)."""
    if not items:
        return []
    count = min(max(1, per_host), math.ceil(len(items) / max(1, per_connection)))
    size = math.ceil(len(items) / count)
    return [list(items[i : i + size]) for i in range(0, len(items), size)]
