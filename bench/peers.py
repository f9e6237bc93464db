"""Real third-party mail peers, started privately on loopback, for interop tests and benchmarks.

Letterbird's benchmarks (``bench/smtp_inbound``, ``bench/relay``, ``bench/imap``,
``bench/pop3``) and interop tests compare against, or talk to, real software: Postfix (SMTP MX,
relay, ``smtp-sink``/``smtp-source`` load tools), Dovecot (IMAP4rev1 RFC 3501, POP3 RFC 1939)
and a durable aiosmtpd baseline (``bench/baseline_aiosmtpd.py``).  Each peer here is started
by Python code with its *own* configuration, queue, spool and mail directories under a work
directory, listens only on the loopback address and port it is given, and is stopped (with
every child process) by the context manager.  Nothing system-wide is read-write: the Debian
services stay stopped and ``/etc/postfix``, ``/etc/dovecot``, ``/var/spool/postfix``,
``/var/lib/{postfix,dovecot}`` are untouched.

Every ``start`` function returns an object that is also a context manager::

    with peer_workdir() as work, postfix_mx(work / "mx", domains=["example.test"],
                                            users=["bob"]) as mx:
        smtp_source(mx.address, messages=100, recipient="bob@example.test")
        mx.wait_for_maildir("bob", 100)

Findings (Postfix 3.7.11, Dovecot 2.3.19.1, Debian; all run as root)
--------------------------------------------------------------------
Postfix
  * ``postfix -c CONFDIR start`` works for a private ``config_directory`` **without** listing it
    in ``alternate_config_directories`` of ``/etc/postfix/main.cf``: that list is only
    enforced by the set-gid commands (``postdrop``, ``postqueue``).  So no ``postmulti``, and
    no edit of ``/etc/postfix``.  ``meta_directory``/``daemon_directory`` stay the system ones.
  * ``queue_directory`` must exist (``postfix start`` chdirs into it first); the start-up
    check (``postfix-script check-fatal``) then creates the queue subdirectories with the
    right owners.  ``data_directory`` must exist and be owned by ``mail_owner`` (postfix).
  * ``postfix`` logs to stderr only when stderr is a terminal; otherwise errors go to syslog,
    which does not exist here.  ``maillog_file = WORKDIR/maillog`` with a ``postlog
    unix-dgram ... postlogd`` service in master.cf makes daemon logs visible (it needs
    ``maillog_file_prefixes`` to include the work directory; the default is only ``/var,
    /dev/stdout``), and :meth:`PostfixInstance.postfix` runs the command on a pseudo-terminal
    so errors found before the log file is usable (bad main.cf values) reach the exception.
  * Fatal errors sleep ~1 s before exiting (``postfix``, ``master``, ``smtp-source``,
    ``smtp-sink``), and a ``master`` that cannot bind makes ``postfix start`` fail only after
    ~3 s: :func:`ensure_free` checks each listen address first.
  * master.cf is written from scratch with **chroot = n** for every service (Debian's stock
    master.cf chroots smtpd, which needs files copied into the queue directory), one
    ``HOST:PORT inet ... smtpd`` line and only the internal ``unix`` services.
  * ``master -w`` (what ``postfix start`` runs) daemonises with ``setsid``: the master's pid
    (``QUEUE/pid/master.pid``) is the process group of every Postfix daemon of the instance;
    ``stop()`` sends the master SIGTERM (all ``postfix stop`` does, before polling with
    ``sleep 1``) and waits for that group to be empty (SIGKILL after a timeout).  PID 1
    here reaps orphans lazily, so exited daemons may linger as zombies for a moment; they
    are not counted as running.
  * Postfix re-reads ``main.cf`` (and tables) while its mtime is within the last second or
    so, sleeping 0.3 s per try, to avoid half-written files: a freshly written config cost
    ~1.5 s per command.  The generated files are backdated with ``os.utime``.  ``postfix
    start`` still takes 0.4-1 s (postfix-script runs ~20 ``postconf`` processes).
  * Never give ``postfix start`` a pipe for output: daemons inherit it and a reader waiting
    for EOF (``subprocess.run(capture_output=True)``) waits ~1.6 s more.
  * ``postfix start-fg`` does not help: unless it is PID 1 it runs ``master -s`` under a
    shell, so the process we would own is not the master.
  * Every directory Postfix or the virtual delivery agent touches must be traversable by the
    ``postfix`` user and by the mail uid (nobody): pytest's ``tmp_path`` lives under a 0700
    directory, so use :func:`peer_workdir` (a 0755 directory under the system temp dir).
  * MX: ``mydestination`` is empty; ``virtual_mailbox_domains`` + ``texthash:`` mailbox map
    (no ``postmap`` needed) + the ``virtual`` agent deliver to ``WORKDIR/maildir/<user>/``
    as uid/gid ``nobody`` (``virtual_uid_maps = static:65534``).  ``recipient_delimiter = +``
    so ``bob+tag@`` reaches bob.  An MX never relays (``smtpd_relay_restrictions =
    reject_unauth_destination``, ``default_transport = error``: bounces never leave the box).
    Unknown users get ``550 5.1.1``; foreign domains ``554 5.7.1 Relay access denied``.
  * Relay: ``relayhost = [127.0.0.1]:PORT`` (brackets: no MX lookup, so no DNS at all),
    ``smtpd_relay_restrictions = permit_mynetworks, reject``, ``queue_run_delay =
    minimal_backoff_time = 1s`` and ``maximal_backoff_time = 2s`` so a message deferred
    because the relayhost was down goes out within ~2 s of it coming up.
  * Defaults kept on purpose (they are what "Postfix" means in a comparison): queue files and
    maildir files are fsynced before ``250``; ``in_flow_delay = 1s`` slows clients when the
    queue manager falls behind; ``default_process_limit = 100`` smtpd processes; loopback is
    exempt from anvil connection limits (``smtpd_client_event_limit_exceptions =
    $mynetworks``).  Override anything with ``extra={"name": "value"}``.
  * ``smtp-sink -c`` writes ``sess=N quit=N mesg=N`` counters separated by ``\\r`` to stdout
    (flushed on every update: session end, QUIT, final dot); :class:`SmtpSink` tails that
    file.  Run as root it needs ``-u nobody``.  A TCP connection alone counts as a session.
  * ``smtp-source -s S -m M -l BYTES -r R -f FROM -t TO -M HELO [-d] host:port``: ``-m`` is
    the total over all ``-s`` parallel sessions; ``-d`` keeps one connection per session;
    with ``-r`` > 1 recipients are named ``1TO``, ``2TO``... (so an MX rejects them unless
    they exist).  It exits 1 on any unexpected reply.

Dovecot
  * ``dovecot -c FILE -F`` runs the master in the foreground: it is our child, started in
    its own session so every Dovecot process shares its process group.  ``base_dir`` (sockets,
    pid), ``state_dir`` (else ``/var/lib/dovecot/instances`` is written) and ``log_path`` all
    live in the work directory; ``instance_name`` is unique per instance.
  * Only ``imap``/``pop3`` inet listeners on the given addresses; ``imaps``/``pop3s`` get
    ``port = 0`` (disabled).  No ``!include`` of ``/etc/dovecot/conf.d``: built-in defaults.
  * ``passwd-file`` with ``{PLAIN}`` passwords, static userdb uid/gid nobody (uid 0 is below the
    default ``first_valid_uid = 500``), ``mail_location = maildir:WORKDIR/mail/%n``.  ``ssl = no``,
    ``disable_plaintext_auth = no`` (listeners are loopback-only, and Dovecot would anyway
    treat a client whose IP equals the server IP as secured).
  * Changed defaults: ``mail_max_userip_connections`` 10 -> 1000 (benchmarks open many
    sessions for one user from 127.0.0.1) and ``auth_failure_delay`` 2 s -> 0 (fast tests).
    Dovecot's auth penalty (anvil) may still slow logins from an IP after failed ones.
    Login processes run in the default "high-security" mode (one process per connection).
  * :meth:`DovecotInstance.populate` writes message files straight into the maildir
    (``tmp/`` then rename into ``new/``, or ``cur/`` with ``:2,S`` when seen) named
    ``<t>.M<seq:06d>P<pid>.letterbird-peer,S=<size>``: Dovecot assigns UIDs in file-name
    order, so UIDs follow the list order.  Bytes are stored verbatim (Dovecot serves CRLF
    files as they are and converts bare LF).  It then runs ``doveadm -c FILE mailbox status``
    so the index is built before a benchmark starts and the count is confirmed.
  * ``stop()`` sends SIGTERM to the whole process group (what the master does to its
    children anyway): sent to the master alone, shutdown takes ~1.1 s because it waits for
    its log process; to the group, ~0.1 s.

Helpers: :func:`free_port` (bind port 0, close: racy but fine on a quiet machine),
:func:`split_listen` (``host:port``, port 0 -> a free port; the system mail ports are
refused), :func:`ensure_free`, :func:`peak_rss_kb` (``VmHWM`` from ``/proc/PID/status``;
sum it over ``peer.pids()`` for a multi-process peer), :func:`group_pids`,
:func:`listening_ports` (TCP listeners held by a set of pids, from ``/proc``: how readiness
is detected without connecting, and how tests check there is no other listener),
:func:`peer_workdir`.  Peers still running at interpreter exit are stopped by ``atexit``.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pty
import pwd
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

POSTFIX = "/usr/sbin/postfix"
SMTP_SINK = "/usr/sbin/smtp-sink"
SMTP_SOURCE = "/usr/sbin/smtp-source"
DOVECOT = "/usr/sbin/dovecot"
DOVEADM = "/usr/bin/doveadm"

#: How long a peer may take to start listening, and to stop, by default (seconds).
START_TIMEOUT = 15.0
STOP_TIMEOUT = 10.0
#: The unprivileged account mail is stored as (Postfix virtual agent, Dovecot userdb).
MAIL_USER = "nobody"
POLL_INTERVAL = 0.02

REPO_ROOT = Path(__file__).resolve().parents[1]

# RFC 5321 §4.1.2 ``Local-part`` restricted to what is safe as a directory name here.
_LOCAL_RE = re.compile(r"^[A-Za-z0-9!#$%&'*+=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+=?^_`{|}~-]+)*$")
# RFC 5321 §4.1.2 ``Domain = sub-domain *("." sub-domain)``;
# ``sub-domain = Let-dig [Ldh-str]``.
_DOMAIN_RE = re.compile(
    r"^[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*$"
)
_SINK_COUNTERS_RE = re.compile(rb"sess=(\d+) quit=(\d+) mesg=(\d+)")


class PeerError(RuntimeError):
    """A peer could not be configured, started, driven or stopped."""


# --------------------------------------------------------------------------- helpers


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that was free on *host* a moment ago (bind to port 0, then close)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
    return port


def split_listen(listen: str) -> tuple[str, int]:
    """Split ``host:port`` / ``[v6]:port``; port ``0`` is replaced by :func:`free_port`."""
    host, sep, port_text = listen.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port_text.isdigit() or int(port_text) > 65535:
        raise PeerError(f"listen address must be host:port, got {listen!r}")
    port = int(port_text)
    if port in (25, 110, 143, 465, 587, 993, 995):
        raise PeerError(f"port {port} belongs to the system mail services; use a high port")
    return host, port or free_port(host)


def ensure_free(host: str, port: int) -> None:
    """Raise PeerError now if *host*:*port* cannot be bound (Postfix would take ~3 s to fail)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise PeerError(f"cannot listen on {_join_hostport(host, port)}: {exc}") from None


def _join_hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def peak_rss_kb(pid: int) -> int:
    """Peak resident set size (``VmHWM``) of *pid* in KiB.

    Raises ProcessLookupError when the process is gone, PeerError when it has no memory map
    (a zombie or a kernel thread).
    """
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        raise ProcessLookupError(pid) from None
    match = re.search(r"^VmHWM:\s+(\d+) kB$", status, re.MULTILINE)
    if match is None:
        raise PeerError(f"process {pid} has no VmHWM (zombie or kernel thread)")
    return int(match.group(1))


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state, process group) of *pid*, or None when it vanished."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    return fields[0], int(fields[2])


def group_pids(pgid: int) -> list[int]:
    """Live (non-zombie) processes whose process group is *pgid*."""
    found: list[int] = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        info = _proc_stat(int(entry.name))
        if info is not None and info[1] == pgid and info[0] not in ("Z", "X"):
            found.append(int(entry.name))
    return sorted(found)


def listening_ports(pids: Iterable[int]) -> set[int]:
    """TCP ports in LISTEN state on sockets held open by any of *pids* (IPv4 and IPv6)."""
    inodes: set[str] = set()
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in os.scandir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    target = os.readlink(fd.path)
                    if target.startswith("socket:["):
                        inodes.add(target[8:-1])
    ports: set[int] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                cols = line.split()
                # cols: sl local_address rem_address st ... uid timeout inode
                if cols[3] == "0A" and cols[9] in inodes:
                    ports.add(int(cols[1].rsplit(":", 1)[1], 16))
    return ports


def _wait_until(
    predicate: Callable[[], bool],
    timeout: float,
    what: str,
    alive: Callable[[], bool] = lambda: True,
) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if not alive():
            raise PeerError(f"process died while waiting for {what}")
        if time.monotonic() > deadline:
            raise PeerError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(POLL_INTERVAL)


def _tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"({path} unreadable)"
    return "\n".join(text.splitlines()[-lines:])


def _mail_ids() -> tuple[int, int]:
    entry = pwd.getpwnam(MAIL_USER)
    return entry.pw_uid, entry.pw_gid


def _require_root(what: str) -> None:
    if os.geteuid() != 0:
        raise PeerError(f"{what} must be started as root (it drops privileges itself)")


def _check_traversable(path: Path) -> None:
    """Unprivileged daemons (postfix, nobody, dovenull) must be able to reach *path*."""
    for part in (path, *path.parents):
        if part.exists() and not part.stat().st_mode & 0o001:
            raise PeerError(
                f"{part} is not traversable by other users (mode "
                f"{part.stat().st_mode & 0o777:o}); the peer's unprivileged processes "
                "could not reach their files: use bench.peers.peer_workdir()"
            )


@contextlib.contextmanager
def peer_workdir(prefix: str = "letterbird-peer-") -> Iterator[Path]:
    """A fresh 0755 directory under the system temp dir, removed afterwards.

    Postfix and Dovecot drop privileges, so their files must be reachable by other users,
    which pytest's ``tmp_path`` (under a 0700 directory) is not.
    """
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _maildir_count(maildir: Path) -> int:
    total = 0
    for sub in ("new", "cur"):
        with contextlib.suppress(FileNotFoundError):
            total += sum(1 for entry in os.scandir(maildir / sub) if entry.is_file())
    return total


# --------------------------------------------------------------------------- base class

_RUNNING: set[Peer] = set()


class Peer:
    """A running peer: a process group we own.  ``stop()`` is idempotent."""

    pgid: int
    _leader: subprocess.Popen[bytes] | None = None
    _stopped: bool = False

    def _register(self, pgid: int, leader: subprocess.Popen[bytes] | None) -> None:
        self.pgid = pgid
        self._leader = leader
        _RUNNING.add(self)

    def pids(self) -> list[int]:
        """Live processes of this peer (its process group)."""
        return [] if self._stopped else group_pids(self.pgid)

    def _alive(self) -> bool:
        if self._leader is not None:
            return self._leader.poll() is None
        return bool(group_pids(self.pgid))

    def _signal_stop(self) -> None:
        """Ask the peer to shut down (default: SIGTERM to the group leader)."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pgid, signal.SIGTERM)

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Stop the peer and every process in its group (SIGKILL after *timeout*)."""
        if self._stopped:
            return
        self._stopped = True
        _RUNNING.discard(self)
        self._signal_stop()
        _reap_group(self.pgid, self._leader, timeout)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _reap_group(pgid: int, leader: subprocess.Popen[bytes] | None, timeout: float) -> None:
    def gone() -> bool:
        if leader is not None:
            leader.poll()
        return not group_pids(pgid)

    with contextlib.suppress(PeerError):
        _wait_until(gone, timeout, f"process group {pgid} to exit")
    if not gone() and pgid > 1 and pgid != os.getpgrp():
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
        _wait_until(gone, 5.0, f"process group {pgid} to die after SIGKILL")
    if leader is not None:
        leader.wait(timeout=5.0)


@atexit.register
def _stop_all() -> None:
    for peer in list(_RUNNING):
        with contextlib.suppress(Exception):
            peer.stop(timeout=3.0)


# --------------------------------------------------------------------------- Postfix

_MASTER_CF_SERVICES = """\
# service   type  private unpriv  chroot  wakeup  maxproc command
pickup      unix  n       -       n       60      1       pickup
cleanup     unix  n       -       n       -       0       cleanup
qmgr        unix  n       -       n       300     1       qmgr
rewrite     unix  -       -       n       -       -       trivial-rewrite
bounce      unix  -       -       n       -       0       bounce
defer       unix  -       -       n       -       0       bounce
trace       unix  -       -       n       -       0       bounce
verify      unix  -       -       n       -       1       verify
flush       unix  n       -       n       1000?   0       flush
proxymap    unix  -       -       n       -       -       proxymap
showq       unix  n       -       n       -       -       showq
error       unix  -       -       n       -       -       error
retry       unix  -       -       n       -       -       error
discard     unix  -       -       n       -       -       discard
smtp        unix  -       -       n       -       -       smtp
relay       unix  -       -       n       -       -       smtp
local       unix  -       n       n       -       -       local
virtual     unix  -       n       n       -       -       virtual
anvil       unix  -       -       n       -       1       anvil
scache      unix  -       -       n       -       1       scache
postlog     unix-dgram n  -       n       -       1       postlogd
"""


class PostfixInstance(Peer):
    """A private Postfix (MX or relay) started by :func:`postfix_mx` / :func:`postfix_relay`."""

    def __init__(
        self,
        workdir: Path,
        host: str,
        port: int,
        kind: str,
        maildir_base: Path | None,
    ) -> None:
        self.workdir = workdir
        self.host = host
        self.port = port
        self.kind = kind
        self.config_dir = workdir / "conf"
        self.queue_dir = workdir / "queue"
        self.data_dir = workdir / "data"
        self.log_path = workdir / "maillog"
        self.maildir_base = maildir_base
        self.master_pid = 0

    @property
    def address(self) -> str:
        """``host:port`` of the smtpd listener."""
        return _join_hostport(self.host, self.port)

    def postfix(self, *args: str, timeout: float = 60.0) -> tuple[int, str]:
        """Run ``postfix -c CONFDIR ARGS...`` (e.g. ``"status"``); return (exit status, output).

        stderr is a pseudo-terminal: ``postfix`` only logs to stderr when it is a tty, and
        errors found before ``maillog_file`` is usable would otherwise be lost to a syslog
        that does not exist.  Output is never a pipe: the daemonised master's children
        inherit it, and waiting for EOF would add ~1.6 s.
        """
        primary, secondary = pty.openpty()
        chunks: list[bytes] = []
        try:
            proc = subprocess.Popen(
                [POSTFIX, "-c", str(self.config_dir), *args],
                stdin=subprocess.DEVNULL,
                stdout=secondary,
                stderr=secondary,
            )
            os.close(secondary)
            secondary = -1
            deadline = time.monotonic() + timeout
            while True:
                done = proc.poll() is not None
                if select.select([primary], [], [], 0 if done else POLL_INTERVAL)[0]:
                    try:
                        chunk = os.read(primary, 65536)
                    except OSError:  # EIO: no process holds the terminal any more
                        chunk = b""
                    if chunk:
                        chunks.append(chunk)
                        continue
                    if not done:
                        time.sleep(POLL_INTERVAL)
                if done:
                    break
                if time.monotonic() > deadline:
                    proc.kill()
                    proc.wait()
                    raise PeerError(f"postfix {' '.join(args)} timed out after {timeout:g}s")
        finally:
            os.close(primary)
            if secondary >= 0:
                os.close(secondary)
        return proc.returncode, b"".join(chunks).decode(errors="replace").replace("\r\n", "\n")

    def maildir(self, user: str) -> Path:
        """The maildir of *user* (a bare local part, or an address given in ``users``)."""
        if self.maildir_base is None:
            raise PeerError("this Postfix instance is a relay: it has no mailboxes")
        return self.maildir_base / user.lower()

    def maildir_count(self, user: str) -> int:
        """Messages delivered to *user* so far (files in ``new/`` and ``cur/``)."""
        return _maildir_count(self.maildir(user))

    def wait_for_maildir(self, user: str, count: int, timeout: float = 10.0) -> int:
        """Wait until *user* holds at least *count* messages; return the count."""
        _wait_until(
            lambda: self.maildir_count(user) >= count,
            timeout,
            f"{count} messages for {user} (log: {self.log_path})",
        )
        return self.maildir_count(user)

    def queue_count(self) -> int:
        """Messages still in the queue (maildrop, incoming, active, deferred, hold)."""
        total = 0
        for sub in ("maildrop", "incoming", "active", "deferred", "hold"):
            for _root, _dirs, files in os.walk(self.queue_dir / sub):
                total += len(files)
        return total

    def wait_for_empty_queue(self, timeout: float = 10.0) -> None:
        _wait_until(lambda: self.queue_count() == 0, timeout, "the Postfix queue to drain")

    def _start(self, main_cf: Mapping[str, str], smtpd_maxproc: int | None) -> None:
        main_lines = [f"{name} = {value}" for name, value in main_cf.items()]
        (self.config_dir / "main.cf").write_text(
            "# Written by bench/peers.py; private instance, not the system Postfix.\n"
            + "\n".join(main_lines)
            + "\n"
        )
        maxproc = "-" if smtpd_maxproc is None else str(smtpd_maxproc)
        (self.config_dir / "master.cf").write_text(
            "# Written by bench/peers.py: one smtpd on loopback, internal services, no chroot.\n"
            f"{self.address} inet n - n - {maxproc} smtpd\n" + _MASTER_CF_SERVICES
        )
        # Postfix re-reads a table or main.cf modified in the last second until it is older
        # (it guards against half-written files): ~1.5 s per fresh file.  Backdate them.
        past = time.time() - 60
        for path in self.config_dir.iterdir():
            os.utime(path, (past, past))
        status, output = self.postfix("start")
        pid_file = self.queue_dir / "pid" / "master.pid"
        pid_text = pid_file.read_text().strip() if pid_file.exists() else ""
        info = _proc_stat(int(pid_text)) if pid_text.isdigit() else None
        # Only a live session leader is our master; a stale pid file may name anything.
        if info is not None and info[1] == int(pid_text) and info[0] not in ("Z", "X"):
            self.master_pid = int(pid_text)
            self._register(self.master_pid, None)
        if status != 0 or not self.master_pid:
            if self.master_pid:
                self.stop()
            raise PeerError(
                f"postfix -c {self.config_dir} start failed (exit {status}):\n"
                f"{output}{_tail(self.log_path)}"
            )
        try:
            _wait_until(
                lambda: self.port in listening_ports(group_pids(self.master_pid)),
                START_TIMEOUT,
                f"Postfix to listen on {self.address}",
                self._alive,
            )
        except PeerError as exc:
            self.stop()
            raise PeerError(f"{exc}\n{_tail(self.log_path)}") from None


def _postfix_prepare(
    workdir: Path | str, listen: str, kind: str
) -> tuple[PostfixInstance, dict[str, str]]:
    _require_root("Postfix")
    work = Path(workdir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    _check_traversable(work)
    host, port = split_listen(listen)
    ensure_free(host, port)
    maildir_base = work / "maildir" if kind == "mx" else None
    inst = PostfixInstance(work, host, port, kind, maildir_base)
    for path in (inst.config_dir, inst.queue_dir, inst.data_dir):
        path.mkdir(exist_ok=True)
    owner = pwd.getpwnam("postfix")
    os.chown(inst.data_dir, owner.pw_uid, owner.pw_gid)
    ipv6 = ":" in host
    settings = {
        "compatibility_level": "3.6",
        "queue_directory": str(inst.queue_dir),
        "data_directory": str(inst.data_dir),
        "maillog_file": str(inst.log_path),
        "maillog_file_prefixes": str(work),
        "myhostname": f"postfix-{kind}-{port}.peer.test",
        "mydomain": "peer.test",
        "myorigin": "$myhostname",
        "mydestination": "",
        "inet_interfaces": "loopback-only",
        "inet_protocols": "all" if ipv6 else "ipv4",
        "mynetworks": "127.0.0.0/8 [::1]/128" if ipv6 else "127.0.0.0/8",
        "alias_maps": "",
        "alias_database": "",
        "local_recipient_maps": "",
        "biff": "no",
        "append_dot_mydomain": "no",
        "recipient_delimiter": "+",
        "smtpd_banner": "$myhostname ESMTP Postfix",
    }
    return inst, settings


def postfix_mx(
    workdir: Path | str,
    listen: str = "127.0.0.1:0",
    domains: Sequence[str] = ("example.test",),
    users: Sequence[str] = ("bob",),
    *,
    extra: Mapping[str, str] | None = None,
    smtpd_maxproc: int | None = None,
) -> PostfixInstance:
    """Start a private Postfix MX delivering *users* of *domains* to maildirs under *workdir*.

    A bare user (``"bob"``) exists in every domain and all its addresses share the maildir
    ``WORKDIR/maildir/bob/``; a full address (``"carol@example.test"``) exists only there,
    in ``WORKDIR/maildir/carol@example.test/``.  ``extra`` overrides main.cf settings.
    """
    for domain in domains:
        if not _DOMAIN_RE.match(domain):
            raise PeerError(f"bad domain {domain!r}")
    lines: list[str] = []
    for user in users:
        local, _, domain = user.lower().partition("@")
        if not _LOCAL_RE.match(local) or (domain and not _DOMAIN_RE.match(domain)):
            raise PeerError(f"bad user {user!r}")
        if domain:
            lines.append(f"{local}@{domain} {local}@{domain}/")
        else:
            lines.extend(f"{local}@{d.lower()} {local}/" for d in domains)
    inst, settings = _postfix_prepare(workdir, listen, "mx")
    assert inst.maildir_base is not None
    uid, gid = _mail_ids()
    inst.maildir_base.mkdir(exist_ok=True)
    os.chown(inst.maildir_base, uid, gid)
    vmailbox = inst.config_dir / "vmailbox"
    vmailbox.write_text("".join(line + "\n" for line in lines))
    settings.update(
        {
            "virtual_mailbox_domains": ", ".join(d.lower() for d in domains),
            "virtual_mailbox_base": str(inst.maildir_base),
            "virtual_mailbox_maps": f"texthash:{vmailbox}",
            "virtual_uid_maps": f"static:{uid}",
            "virtual_gid_maps": f"static:{gid}",
            "virtual_minimum_uid": "1",
            "smtpd_relay_restrictions": "reject_unauth_destination",
            "smtpd_recipient_restrictions": "reject_non_fqdn_recipient, reject_unlisted_recipient",
            "default_transport": "error:this test MX delivers locally only",
            "relay_transport": "error:this test MX delivers locally only",
        }
    )
    settings.update(extra or {})
    inst._start(settings, smtpd_maxproc)
    return inst


def postfix_relay(
    workdir: Path | str,
    listen: str = "127.0.0.1:0",
    *,
    relayhost: str,
    extra: Mapping[str, str] | None = None,
    smtpd_maxproc: int | None = None,
) -> PostfixInstance:
    """Start a private Postfix accepting any mail from loopback and relaying it to *relayhost*.

    Retries are fast (queue run every 1 s, backoff 1-2 s).  ``extra`` overrides main.cf.
    """
    relay_host, relay_port = split_listen(relayhost)
    if relay_port != int(relayhost.rpartition(":")[2]):
        raise PeerError("relayhost needs an explicit port")
    inst, settings = _postfix_prepare(workdir, listen, "relay")
    settings.update(
        {
            "relayhost": f"[{relay_host}]:{relay_port}",
            "relay_domains": "",
            "smtpd_relay_restrictions": "permit_mynetworks, reject",
            "smtpd_recipient_restrictions": "",
            "queue_run_delay": "1s",
            "minimal_backoff_time": "1s",
            "maximal_backoff_time": "2s",
            "smtp_connect_timeout": "5s",
        }
    )
    settings.update(extra or {})
    inst._start(settings, smtpd_maxproc)
    return inst


# --------------------------------------------------------------------------- smtp-sink/source


class SmtpSink(Peer):
    """``smtp-sink`` discarding (or dumping) mail and counting it; see :func:`smtp_sink`."""

    def __init__(self, host: str, port: int, workdir: Path, own_workdir: bool) -> None:
        self.host = host
        self.port = port
        self.workdir = workdir
        self.counter_path = workdir / "smtp-sink.out"
        self.dump_dir: Path | None = None
        self._own_workdir = own_workdir
        self._offset = 0
        self._counters = (0, 0, 0)
        self.pid = 0

    @property
    def address(self) -> str:
        return _join_hostport(self.host, self.port)

    def counters(self) -> tuple[int, int, int]:
        """``(sessions, quits, messages)`` as last reported by ``smtp-sink -c``."""
        with contextlib.suppress(FileNotFoundError), self.counter_path.open("rb") as f:
            f.seek(self._offset)
            chunk = f.read()
            # Only complete records (terminated by \r) are trusted.
            end = chunk.rfind(b"\r")
            if end >= 0:
                matches = _SINK_COUNTERS_RE.findall(chunk[:end])
                if matches:
                    sess, quit_, mesg = matches[-1]
                    self._counters = (int(sess), int(quit_), int(mesg))
                self._offset += end + 1
        return self._counters

    def count(self) -> int:
        """Messages accepted (final dot answered) so far."""
        return self.counters()[2]

    def wait_for_count(self, count: int, timeout: float = 10.0) -> int:
        _wait_until(lambda: self.count() >= count, timeout, f"smtp-sink to count {count}")
        return self.count()

    def dumped(self) -> list[Path]:
        """Message files written so far (only with ``dump=True``), oldest name first."""
        if self.dump_dir is None:
            raise PeerError("smtp_sink was started without dump=True")
        return sorted(p for p in self.dump_dir.rglob("*") if p.is_file())

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        if self._stopped:
            return
        super().stop(timeout)
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)


def smtp_sink(
    listen: str = "127.0.0.1:0",
    *,
    workdir: Path | str | None = None,
    dump: bool = False,
    hostname: str = "smtp-sink.peer.test",
    backlog: int = 256,
    max_concurrency: int = 256,
    extra_args: Sequence[str] = (),
) -> SmtpSink:
    """Start ``/usr/sbin/smtp-sink -c`` on *listen*; ``.count()`` gives accepted messages.

    With ``dump=True`` each transaction is written to ``WORKDIR/dump/`` (slow: disk I/O), for
    interop tests that check what a client sent.  Without *workdir* a private temporary
    directory is used and removed by ``stop()``.
    """
    host, port = split_listen(listen)
    ensure_free(host, port)
    own = workdir is None
    if workdir is None:
        work = Path(tempfile.mkdtemp(prefix="letterbird-sink-"))
        work.chmod(0o755)
    else:
        work = Path(workdir).resolve()
        work.mkdir(parents=True, exist_ok=True)
    sink = SmtpSink(host, port, work, own)
    cmd = [SMTP_SINK, "-c", "-h", hostname, "-m", str(max_concurrency)]
    if os.geteuid() == 0:
        cmd += ["-u", MAIL_USER]
    if dump:
        _check_traversable(work)
        sink.dump_dir = work / "dump"
        sink.dump_dir.mkdir(exist_ok=True)
        uid, gid = _mail_ids()
        os.chown(sink.dump_dir, uid, gid)
        cmd += ["-d", f"{sink.dump_dir}/%Y%m%d%H%M%S."]
    cmd += [*extra_args, _join_hostport(host, port), str(backlog)]
    with sink.counter_path.open("wb") as out, (work / "smtp-sink.err").open("wb") as err:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            cwd=work,
            start_new_session=True,
        )
    sink.pid = proc.pid
    sink._register(proc.pid, proc)
    try:
        _wait_until(
            lambda: port in listening_ports([proc.pid]),
            START_TIMEOUT,
            f"smtp-sink to listen on {sink.address}",
            sink._alive,
        )
    except PeerError as exc:
        stderr = _tail(work / "smtp-sink.err")
        sink.stop()
        raise PeerError(f"{exc}: {stderr}") from None
    return sink


def smtp_source(
    target: str,
    *,
    sessions: int = 1,
    messages: int = 1,
    size: int | None = None,
    recipients: int = 1,
    sender: str = "source@source.peer.test",
    recipient: str = "bob@example.test",
    helo: str = "source.peer.test",
    reuse_connection: bool = False,
    message_file: Path | str | None = None,
    subject: str | None = None,
    timeout: float = 600.0,
) -> float:
    """Run ``/usr/sbin/smtp-source`` against *target* (``host:port``); return elapsed seconds.

    *messages* is the total over *sessions* parallel sessions; *size* is the body length in
    bytes (``-l``); *recipients* > 1 sends ``1<recipient>``, ``2<recipient>``...;
    *reuse_connection* (``-d``) sends every message of a session over one connection;
    *message_file* (``-F``) sends a prepared message instead of a generated one.
    Raises PeerError if smtp-source fails (it stops at the first unexpected reply).
    """
    if sessions < 1 or messages < 1 or recipients < 1:
        raise PeerError("sessions, messages and recipients must be >= 1")
    host, port = split_listen(target)
    if port != int(target.rpartition(":")[2]):
        raise PeerError("smtp_source target needs an explicit port")
    cmd = [SMTP_SOURCE, "-s", str(sessions), "-m", str(messages), "-r", str(recipients)]
    cmd += ["-f", sender, "-t", recipient, "-M", helo]
    if size is not None:
        cmd += ["-l", str(size)]
    if reuse_connection:
        cmd.append("-d")
    if message_file is not None:
        cmd += ["-F", str(message_file)]
    if subject is not None:
        cmd += ["-S", subject]
    cmd.append(_join_hostport(host, port))
    start = time.perf_counter()
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        raise PeerError(f"smtp-source timed out after {timeout:g}s") from exc
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        raise PeerError(
            f"smtp-source exited {result.returncode}: {result.stderr.strip() or result.stdout}"
        )
    return elapsed


# --------------------------------------------------------------------------- Dovecot


class DovecotInstance(Peer):
    """A private Dovecot (IMAP and/or POP3) started by :func:`dovecot`."""

    def __init__(self, workdir: Path, users: Mapping[str, str]) -> None:
        self.workdir = workdir
        self.users = dict(users)
        self.config_path = workdir / "dovecot.conf"
        self.base_dir = workdir / "run"
        self.state_dir = workdir / "state"
        self.mail_root = workdir / "mail"
        self.home_root = workdir / "home"
        self.log_path = workdir / "dovecot.log"
        self.stderr_path = workdir / "dovecot.stderr"
        self.imap_host = self.pop3_host = "127.0.0.1"
        self.imap_port: int | None = None
        self.pop3_port: int | None = None
        self.pid = 0
        self._seq = 0
        self._stamp = 0

    @property
    def imap_address(self) -> str:
        if self.imap_port is None:
            raise PeerError("IMAP is not enabled on this Dovecot")
        return _join_hostport(self.imap_host, self.imap_port)

    @property
    def pop3_address(self) -> str:
        if self.pop3_port is None:
            raise PeerError("POP3 is not enabled on this Dovecot")
        return _join_hostport(self.pop3_host, self.pop3_port)

    def maildir(self, user: str) -> Path:
        if user not in self.users:
            raise PeerError(f"unknown Dovecot user {user!r}")
        return self.mail_root / user

    def _signal_stop(self) -> None:
        # SIGTERM to the whole group: the master alone waits ~1 s for its log process.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pgid, signal.SIGTERM)

    def doveadm(self, *args: str) -> str:
        """Run ``doveadm -c CONF ARGS...`` against this instance; return its stdout."""
        result = subprocess.run(
            [DOVEADM, "-c", str(self.config_path), *args],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if result.returncode != 0:
            raise PeerError(f"doveadm {' '.join(args)} failed: {result.stderr.strip()}")
        return result.stdout

    def message_count(self, user: str) -> int:
        """Messages in *user*'s INBOX according to Dovecot (syncs the index)."""
        out = self.doveadm("mailbox", "status", "-u", user, "messages", "INBOX")
        match = re.search(r"messages=(\d+)", out)
        if match is None:
            raise PeerError(f"unexpected doveadm output: {out!r}")
        return int(match.group(1))

    def populate(
        self, user: str, messages: Iterable[bytes], *, seen: bool = False, sync: bool = True
    ) -> int:
        """Append *messages* (raw bytes, stored verbatim) to *user*'s INBOX, in order.

        New messages go to ``new/`` (unseen, \\Recent); with ``seen=True`` to ``cur/`` with
        the ``S`` flag.  With *sync* Dovecot indexes the mailbox now and the count it sees is
        returned; otherwise the number of message files is returned.
        """
        maildir = self.maildir(user)
        uid, gid = _mail_ids()
        for sub in ("", "tmp", "new", "cur"):
            (maildir / sub).mkdir(parents=True, exist_ok=True)
            os.chown(maildir / sub, uid, gid)
        if not self._stamp:
            self._stamp = int(time.time())
        for data in messages:
            self._seq += 1
            if self._seq >= 1_000_000:
                raise PeerError("populate supports at most 999999 messages per instance")
            name = f"{self._stamp}.M{self._seq:06d}P{os.getpid()}.letterbird-peer,S={len(data)}"
            tmp = maildir / "tmp" / name
            tmp.write_bytes(data)
            os.chown(tmp, uid, gid)
            final = maildir / "cur" / f"{name}:2,S" if seen else maildir / "new" / name
            tmp.rename(final)
        if sync:
            return self.message_count(user)
        return _maildir_count(maildir)


def _dovecot_conf(inst: DovecotInstance, uid: int, gid: int, extra_conf: str) -> str:
    protocols = []
    listen_host = inst.imap_host if inst.imap_port is not None else inst.pop3_host
    sections = []
    for proto, host, port in (
        ("imap", inst.imap_host, inst.imap_port),
        ("pop3", inst.pop3_host, inst.pop3_port),
    ):
        if port is None:
            continue
        protocols.append(proto)
        sections.append(
            f"service {proto}-login {{\n"
            f"  inet_listener {proto} {{\n    address = {host}\n    port = {port}\n  }}\n"
            f"  inet_listener {proto}s {{\n    port = 0\n  }}\n"
            "}\n"
            f"protocol {proto} {{\n  mail_max_userip_connections = 1000\n}}\n"
        )
    name = f"lbpeer-{inst.imap_port or 0}-{inst.pop3_port or 0}"
    return (
        "# Written by bench/peers.py; private instance, not the system Dovecot.\n"
        f"instance_name = {name}\n"
        f"base_dir = {inst.base_dir}\n"
        f"state_dir = {inst.state_dir}\n"
        f"log_path = {inst.log_path}\n"
        f"protocols = {' '.join(protocols)}\n"
        f"listen = {listen_host}\n"
        "ssl = no\n"
        "disable_plaintext_auth = no\n"
        "auth_mechanisms = plain login\n"
        "auth_failure_delay = 0\n"
        f"mail_location = maildir:{inst.mail_root}/%n\n"
        "passdb {\n"
        "  driver = passwd-file\n"
        f"  args = scheme=PLAIN username_format=%n {inst.workdir / 'users'}\n"
        "}\n"
        "userdb {\n"
        "  driver = static\n"
        f"  args = uid={uid} gid={gid} home={inst.home_root}/%n\n"
        "}\n" + "".join(sections) + extra_conf + "\n"
    )


def dovecot(
    workdir: Path | str,
    imap: str | None = "127.0.0.1:0",
    pop3: str | None = "127.0.0.1:0",
    users: Mapping[str, str] | None = None,
    *,
    extra_conf: str = "",
) -> DovecotInstance:
    """Start a private Dovecot serving maildirs under *workdir* to *users* (name -> password).

    *imap*/*pop3* are ``host:port`` (port 0: a free port) or None to disable the protocol.
    *extra_conf* is appended to the generated ``dovecot.conf`` (later settings win).
    """
    _require_root("Dovecot")
    users = {"bob": "pw"} if users is None else dict(users)
    for name, password in users.items():
        if not _LOCAL_RE.match(name) or any(c in password for c in ":\r\n"):
            raise PeerError(f"bad Dovecot user or password for {name!r}")
    if imap is None and pop3 is None:
        raise PeerError("enable at least one of imap and pop3")
    work = Path(workdir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    _check_traversable(work)
    inst = DovecotInstance(work, users)
    if imap is not None:
        inst.imap_host, inst.imap_port = split_listen(imap)
        ensure_free(inst.imap_host, inst.imap_port)
    if pop3 is not None:
        inst.pop3_host, inst.pop3_port = split_listen(pop3)
        ensure_free(inst.pop3_host, inst.pop3_port)
    uid, gid = _mail_ids()
    for path in (inst.mail_root, inst.home_root):
        path.mkdir(exist_ok=True)
        os.chown(path, uid, gid)
    for name in users:
        (inst.home_root / name).mkdir(exist_ok=True)
        os.chown(inst.home_root / name, uid, gid)
    (work / "users").write_text("".join(f"{n}:{{PLAIN}}{p}\n" for n, p in users.items()))
    inst.config_path.write_text(_dovecot_conf(inst, uid, gid, extra_conf))
    with inst.stderr_path.open("wb") as err:
        proc = subprocess.Popen(
            [DOVECOT, "-c", str(inst.config_path), "-F"],
            stdin=subprocess.DEVNULL,
            stdout=err,
            stderr=err,
            cwd=work,
            start_new_session=True,
        )
    inst.pid = proc.pid
    inst._register(proc.pid, proc)
    wanted = {p for p in (inst.imap_port, inst.pop3_port) if p is not None}
    try:
        _wait_until(
            lambda: wanted <= listening_ports([proc.pid]),
            START_TIMEOUT,
            f"Dovecot to listen on {sorted(wanted)}",
            inst._alive,
        )
    except PeerError as exc:
        inst.stop()
        raise PeerError(f"{exc}\n{_tail(inst.stderr_path)}\n{_tail(inst.log_path)}") from None
    return inst


# --------------------------------------------------------------------------- aiosmtpd baseline


class BaselineServer(Peer):
    """``python -m bench.baseline_aiosmtpd`` as a subprocess; see :func:`aiosmtpd_baseline`."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.maildir = workdir / "maildir"
        self.log_path = workdir / "aiosmtpd.log"
        self.host = "127.0.0.1"
        self.port = 0
        self.pid = 0

    @property
    def address(self) -> str:
        return _join_hostport(self.host, self.port)

    def count(self) -> int:
        """Messages durably stored (files in ``maildir/new``)."""
        return _maildir_count(self.maildir)

    def wait_for_count(self, count: int, timeout: float = 10.0) -> int:
        _wait_until(lambda: self.count() >= count, timeout, f"{count} baseline messages")
        return self.count()


_READY_RE = re.compile(r"^READY (.+):(\d+)$", re.MULTILINE)


def aiosmtpd_baseline(
    workdir: Path | str,
    listen: str = "127.0.0.1:0",
    *,
    python: str = sys.executable,
    hostname: str = "baseline.peer.test",
) -> BaselineServer:
    """Start the durable aiosmtpd baseline, delivering to ``WORKDIR/maildir``.

    ``listen`` may use port 0: the server binds it and reports the port it got.
    """
    _host, sep, port_text = listen.rpartition(":")
    if not sep or not port_text.isdigit():
        raise PeerError(f"listen address must be host:port, got {listen!r}")
    work = Path(workdir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    server = BaselineServer(work)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    cmd = [python, "-m", "bench.baseline_aiosmtpd", "--listen", listen]
    cmd += ["--maildir", str(server.maildir), "--hostname", hostname]
    with server.log_path.open("wb") as log:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            env=env,
            cwd=work,
            start_new_session=True,
        )
    server.pid = proc.pid
    server._register(proc.pid, proc)
    ready: list[re.Match[str]] = []

    def is_ready() -> bool:
        with contextlib.suppress(FileNotFoundError):
            match = _READY_RE.search(server.log_path.read_text(errors="replace"))
            if match:
                ready.append(match)
        return bool(ready)

    try:
        _wait_until(is_ready, START_TIMEOUT, "the aiosmtpd baseline to listen", server._alive)
    except PeerError as exc:
        server.stop()
        raise PeerError(f"{exc}\n{_tail(server.log_path)}") from None
    server.host, server.port = ready[0].group(1), int(ready[0].group(2))
    return server
