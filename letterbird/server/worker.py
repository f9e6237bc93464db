"""One serving process under a ``letterbird serve`` master (:mod:`letterbird.server.workers`).

Run as ``python -m letterbird.server.worker`` by the master, which writes the pickled
:class:`~letterbird.server.workers.WorkerSpec` on standard input. The worker serves every
protocol on the listening sockets it inherited, with the machine-wide state the master shares
(connection counts, ``\\Recent`` claims, the change relay), and stops on SIGTERM or when
its master is gone (SIGINT is the master's to act on).
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import pickle
import signal
import socket
import sys

from letterbird.logs import event, setup_logging
from letterbird.server.shared_state import SharedState
from letterbird.server.supervisor import WorkerContext, log, start_server
from letterbird.server.workers import WorkerSpec

__all__ = ["main", "run_worker"]

PARENT_CHECK = 1.0  # seconds between checks that the master still runs
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


async def run_worker(spec: WorkerSpec) -> int:
    loop = asyncio.get_running_loop()
    sockets = {key: [socket.socket(fileno=fd) for fd in fds] for key, fds in spec.listeners.items()}
    shared = SharedState.attach(spec.shared_fd, spec.index)
    context = WorkerContext(
        index=spec.index,
        sockets=sockets,
        shared=shared,
        relay_sock=socket.socket(fileno=spec.relay_fd),
        run_queue=spec.run_queue,
    )
    running = await start_server(spec.config, demo=False, worker=context)
    app = running.app
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGHUP, app.tls.reload)
    queue = app.queue
    if queue is not None:
        loop.add_signal_handler(signal.SIGUSR1, lambda: queue.wake(reset_backoff=True))
    os.write(spec.ready_fd, b"R")
    os.close(spec.ready_fd)
    event(log, "worker.ready", worker=spec.index, pid=os.getpid())
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), PARENT_CHECK)
        except TimeoutError:
            if os.getppid() != spec.master_pid:
                event(log, "worker.orphaned", worker=spec.index)
                break
    await running.stop()
    shared.close()
    return 0


def _stop_with_master() -> None:
    """Have the kernel send us SIGTERM when the master dies (Linux ``PR_SET_PDEATHSIG``), so
    a killed master does not leave workers serving its ports; elsewhere the parent check in
    :func:`run_worker` notices within a second."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):  # pragma: no cover - not Linux
        pass


def main() -> None:
    # Ctrl-C in a terminal reaches the whole process group: the master alone acts on it (it
    # stops the workers with SIGTERM), so a worker does not look like it died on its own.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _stop_with_master()
    spec: WorkerSpec = pickle.loads(sys.stdin.buffer.read())
    if os.getppid() != spec.master_pid:  # it died before the line above
        sys.exit(1)
    setup_logging(spec.log_level, tag=f"w{spec.index}")
    sys.exit(asyncio.run(run_worker(spec)))


if __name__ == "__main__":
    main()
