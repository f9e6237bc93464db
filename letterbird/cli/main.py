"""The ``letterbird`` command: run the server and administer domains, users and aliases.

Admin commands open the same database as the running server (SQLite WAL allows a second
writer process to wait its turn), so they work while the server runs.
"""

from __future__ import annotations

import asyncio
import functools
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import click

from letterbird.config import Config, ConfigError, load_config
from letterbird.directory.addresses import InvalidAddress, display_domain
from letterbird.directory.service import Directory
from letterbird.storage import open_storage_for
from letterbird.storage.interface import QueueEntry, Storage, StorageError

P = ParamSpec("P")
R = TypeVar("R")


def _errors(fn: Callable[P, R]) -> Callable[P, R]:
    """Turn expected failures into a one-line message on stderr and exit status 1."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except (ConfigError, StorageError, InvalidAddress, ValueError) as exc:
            raise click.ClickException(str(exc)) from None

    return wrapper


def _config(ctx: click.Context) -> Config:
    cfg = ctx.obj.get("config")
    if cfg is None:
        try:
            cfg = load_config(ctx.obj.get("config_path"))
        except ConfigError as exc:
            raise click.ClickException(f"configuration: {exc}") from None
        ctx.obj["config"] = cfg
    return cfg  # type: ignore[no-any-return]


def _with_directory(ctx: click.Context, fn: Callable[[Directory, Storage], Awaitable[R]]) -> R:
    cfg = _config(ctx)

    async def run() -> R:
        storage = open_storage_for(cfg)
        await storage.open()
        try:
            return await fn(Directory(storage, cfg), storage)
        finally:
            await storage.close()

    return asyncio.run(run())


def _read_password(password_stdin: bool) -> str:
    if password_stdin:
        line = sys.stdin.readline()
        password = line.rstrip("\r\n")
        if not password:
            raise click.ClickException("no password on standard input")
        return password
    if not sys.stdin.isatty():
        raise click.ClickException("no terminal to ask for a password: use --password-stdin")
    return str(click.prompt("Password", hide_input=True, confirmation_prompt=True))


@click.group()
@click.option(
    "--config",
    "config_path",
    envvar="LETTERBIRD_CONFIG",
    type=click.Path(dir_okay=False),
    help="TOML configuration file (default: $LETTERBIRD_CONFIG, else built-in defaults).",
)
@click.option("--log-level", default="INFO", show_default=True, help="Logging level.")
@click.pass_context
def cli(ctx: click.Context, config_path: str | None, log_level: str) -> None:
    """Letterbird: a complete e-mail system."""
    ctx.ensure_object(dict)
    ctx.obj["config_path"] = config_path
    ctx.obj["log_level"] = log_level.upper()


@cli.command()
@click.option("--no-demo", is_flag=True, help="Do not create a demo account on first run.")
@click.pass_context
def serve(ctx: click.Context, no_demo: bool) -> None:
    """Run the mail server until SIGTERM/SIGINT (SIGHUP reloads the TLS certificate)."""
    from letterbird.logs import setup_logging
    from letterbird.server import supervisor

    cfg = _config(ctx)
    setup_logging(ctx.obj["log_level"])
    try:
        code = asyncio.run(supervisor.run_server(cfg, demo=not no_demo))
    except StorageError as exc:
        raise click.ClickException(f"storage: {exc}") from None
    sys.exit(code)


@cli.command("check-config")
@click.pass_context
def check_config(ctx: click.Context) -> None:
    """Validate the configuration and print what it means."""
    cfg = _config(ctx)
    click.echo(f"configuration OK ({ctx.obj.get('config_path') or 'built-in defaults'})")
    click.echo(f"hostname  {cfg.hostname}")
    click.echo(f"data_dir  {cfg.data_path}")
    click.echo(f"storage   {cfg.storage_url_for_display}")
    from letterbird.server.workers import effective_workers

    shape = "one per CPU core" if cfg.workers == 0 else "setting"
    click.echo(f"workers   {effective_workers(cfg)} ({shape})")
    for key, addrs in cfg.listen.items():
        click.echo(f"listen    {key:12} {', '.join(addrs) or '-'}")


@cli.command()
@click.pass_context
@_errors
def migrate(ctx: click.Context) -> None:
    """Create or upgrade the database schema (SQLite or PostgreSQL)."""
    cfg = _config(ctx)

    async def run() -> tuple[int, int] | None:
        storage = open_storage_for(cfg, migrate=True)
        await storage.open()
        try:
            versions = getattr(storage, "migrated", None)
            return versions if isinstance(versions, tuple) else None
        finally:
            await storage.close()

    versions = asyncio.run(run())
    if versions is not None and versions[0] != versions[1]:
        click.echo(f"schema migrated from version {versions[0]} to {versions[1]}")
    elif versions is not None:
        click.echo(f"schema up to date (version {versions[1]})")
    else:
        click.echo("schema up to date")


# -- domains ------------------------------------------------------------------------------
@cli.group()
def domain() -> None:
    """Manage the domains Letterbird receives mail for."""


@domain.command("add")
@click.argument("name")
@click.pass_context
@_errors
def domain_add(ctx: click.Context, name: str) -> None:
    d = _with_directory(ctx, lambda d, s: d.add_domain(name))
    click.echo(f"added domain {d.name}")


@domain.command("list")
@click.pass_context
@_errors
def domain_list(ctx: click.Context) -> None:
    for d in _with_directory(ctx, lambda d, s: s.list_domains()):
        shown = display_domain(d.name)
        click.echo(d.name if shown == d.name else f"{d.name}  ({shown})")


@domain.command("remove")
@click.argument("name")
@click.pass_context
@_errors
def domain_remove(ctx: click.Context, name: str) -> None:
    _with_directory(ctx, lambda d, s: d.remove_domain(name))
    click.echo(f"removed domain {name}")


@domain.group("dkim")
def domain_dkim() -> None:
    """DKIM signing keys (RFC 6376; RSA-2048 and Ed25519, RFC 8463)."""


def _key_store(ctx: click.Context) -> Any:
    from letterbird.auth.keys import KeyStore, key_dir

    return KeyStore(key_dir(_config(ctx)))


def _echo_keys(keys: list[Any], store: Any) -> None:
    from letterbird.auth.records import txt_strings

    for k in keys:
        click.echo(f"{k.selector:<16} {k.algorithm:<15} {k.state}")
        click.echo(f"  {k.dns_name}.\tIN\tTXT\t{txt_strings(store.public_record(k))}")


@domain_dkim.command("generate")
@click.argument("name")
@click.option("--selector", help="Selector (default lbYYYYMMDD; 'r'/'e' appended for both keys).")
@click.option(
    "--algorithm",
    type=click.Choice(["both", "rsa", "ed25519"]),
    default="both",
    show_default=True,
    help="Key types to create.",
)
@click.option(
    "--activate", is_flag=True, help="Sign with the new keys at once (publish them in DNS first)."
)
@click.pass_context
@_errors
def domain_dkim_generate(
    ctx: click.Context, name: str, selector: str | None, algorithm: str, activate: bool
) -> None:
    """Create signing keys for a domain. The first keys of a domain sign at once; later ones
    wait (pending) until `domain dkim activate`, so their DNS records can be published first.
    Two generations stay published: the active one and the one before it."""
    if not _with_directory(ctx, lambda d, s: d.is_local_domain(name)):
        raise click.ClickException(f"{name} is not one of our domains (letterbird domain add)")
    store = _key_store(ctx)
    algorithms = ("rsa", "ed25519") if algorithm == "both" else (algorithm,)
    keys = store.generate(name, selector, algorithms=algorithms)
    if activate and keys and keys[0].state != "active":
        keys = store.activate(name, keys[0].generation)
    _echo_keys(keys, store)
    if keys and keys[0].state == "pending":
        click.echo(
            f"publish these records, then: letterbird domain dkim activate {name} "
            f"{keys[0].generation}"
        )


@domain_dkim.command("activate")
@click.argument("name")
@click.argument("selector")
@click.pass_context
@_errors
def domain_dkim_activate(ctx: click.Context, name: str, selector: str) -> None:
    """Sign with a pending generation (name or one of its selectors); the active one retires
    (still published) and an older retiring one is removed."""
    store = _key_store(ctx)
    _echo_keys(store.activate(name, selector), store)


@domain_dkim.command("list")
@click.argument("name")
@click.pass_context
@_errors
def domain_dkim_list(ctx: click.Context, name: str) -> None:
    """The domain's published selectors and their state."""
    store = _key_store(ctx)
    keys = store.selectors(name)
    if not keys:
        click.echo(f"no DKIM keys for {name}")
    _echo_keys(keys, store)


@domain.command("dns")
@click.argument("name")
@click.pass_context
@_errors
def domain_dns(ctx: click.Context, name: str) -> None:
    """Print the DNS records to publish: MX, SPF, DKIM, DMARC, MTA-STS, TLS-RPT, PTR."""
    from letterbird.auth.records import domain_records, format_zone

    click.echo(format_zone(domain_records(_config(ctx), name, _key_store(ctx))), nl=False)


# -- users --------------------------------------------------------------------------------
@cli.group()
def user() -> None:
    """Manage accounts (mailboxes with a password)."""


@user.command("add")
@click.argument("address")
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
@click.pass_context
@_errors
def user_add(ctx: click.Context, address: str, password_stdin: bool) -> None:
    password = _read_password(password_stdin)
    a = _with_directory(ctx, lambda d, s: d.add_user(address, password))
    click.echo(f"added user {a.address}")


@user.command("list")
@click.argument("domain_name", required=False)
@click.pass_context
@_errors
def user_list(ctx: click.Context, domain_name: str | None) -> None:
    async def fn(d: Directory, s: Storage) -> list[tuple[str, int, int]]:
        dom = None
        if domain_name:
            from letterbird.directory.addresses import normalise_domain

            dom = normalise_domain(domain_name)
        return [(a.address, a.used, a.quota) for a in await s.list_accounts(dom)]

    for address, used, quota in _with_directory(ctx, fn):
        click.echo(f"{address}  {used} bytes" + (f" of {quota}" if quota else ""))


@user.command("passwd")
@click.argument("address")
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
@click.pass_context
@_errors
def user_passwd(ctx: click.Context, address: str, password_stdin: bool) -> None:
    password = _read_password(password_stdin)
    _with_directory(ctx, lambda d, s: d.set_password(address, password))
    click.echo(f"password changed for {address}")


@user.command("remove")
@click.argument("address")
@click.pass_context
@_errors
def user_remove(ctx: click.Context, address: str) -> None:
    _with_directory(ctx, lambda d, s: d.remove_user(address))
    click.echo(f"removed user {address} and all its mail")


# -- aliases ------------------------------------------------------------------------------
@cli.group()
def alias() -> None:
    """Manage aliases (``@domain`` is the domain's catch-all)."""


@alias.command("add")
@click.argument("alias_address")
@click.argument("targets", nargs=-1, required=True)
@click.pass_context
@_errors
def alias_add(ctx: click.Context, alias_address: str, targets: tuple[str, ...]) -> None:
    a = _with_directory(ctx, lambda d, s: d.add_alias(alias_address, list(targets)))
    click.echo(f"added alias {a.address} -> {', '.join(a.targets)}")


@alias.command("list")
@click.pass_context
@_errors
def alias_list(ctx: click.Context) -> None:
    for a in _with_directory(ctx, lambda d, s: s.list_aliases()):
        click.echo(f"{a.address}  -> {', '.join(a.targets)}")


@alias.command("remove")
@click.argument("alias_address")
@click.argument("targets", nargs=-1)
@click.pass_context
@_errors
def alias_remove(ctx: click.Context, alias_address: str, targets: tuple[str, ...]) -> None:
    _with_directory(ctx, lambda d, s: d.remove_alias(alias_address))
    click.echo(f"removed alias {alias_address}")


# -- mailboxes ----------------------------------------------------------------------------
@cli.group()
def mailbox() -> None:
    """Inspect an account's folders."""


@mailbox.command("list")
@click.argument("address")
@click.pass_context
@_errors
def mailbox_list(ctx: click.Context, address: str) -> None:
    async def fn(d: Directory, s: Storage) -> list[tuple[str, int, int]]:
        account = await d.get_user(address)
        out = []
        for mb in await s.list_mailboxes(account.id):
            st = await s.mailbox_status(mb.id)
            out.append((mb.name, st.messages, st.unseen))
        return out

    rows = _with_directory(ctx, fn)
    width = max((len(n) for n, _, _ in rows), default=5)
    for name, count, unseen in rows:
        click.echo(f"{name:<{width}}  {count}" + (f"  ({unseen} unread)" if unseen else ""))


# -- the outgoing queue -------------------------------------------------------------------
@cli.group()
def queue() -> None:
    """Inspect and manage the outgoing queue (mail waiting for other servers)."""


def _when(t: float | None) -> str:
    if t is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def _signal_server(cfg: Config) -> int | None:
    """SIGUSR1 to the running server (``<data_dir>/letterbird.pid``): wake its queue now.

    Returns the pid signalled, or None when no server runs for this data directory."""
    from letterbird.server.supervisor import pid_file_path

    try:
        pid = int(pid_file_path(cfg).read_text().strip())
    except (OSError, ValueError):
        return None
    cmdline = Path(f"/proc/{pid}/cmdline")
    try:
        if Path("/proc/self").exists() and b"letterbird" not in cmdline.read_bytes():
            return None  # a stale file naming some other process
        os.kill(pid, signal.SIGUSR1)
    except (OSError, ProcessLookupError):
        return None
    return pid


@queue.command("list")
@click.pass_context
@_errors
def queue_list(ctx: click.Context) -> None:
    """One line per queued message and destination domain."""
    entries = _with_directory(ctx, lambda d, s: s.queue_entries())
    if not entries:
        click.echo("the queue is empty")
        return
    now = time.time()
    rows = [("ID", "SENDER", "RECIPIENTS", "ATTEMPTS", "NEXT ATTEMPT", "LAST ERROR")]
    for e in entries:
        if e.lease_until is not None and e.lease_until > now:
            nxt = "being delivered"
        else:
            nxt = "now" if e.due <= now else _when(e.due)
        rows.append(
            (
                e.queue_id,
                f"<{e.sender}>",
                ", ".join(r.address for r in e.recipients),
                str(e.attempts),
                nxt,
                e.last_error or "-",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    for r in rows:
        click.echo("  ".join(c.ljust(w) for c, w in zip(r[:5], widths, strict=True)) + "  " + r[5])
    messages = len({e.queue_id for e in entries})
    click.echo(f"{messages} message(s), {len(entries)} destination(s)")


@queue.command("show")
@click.argument("queue_id")
@click.pass_context
@_errors
def queue_show(ctx: click.Context, queue_id: str) -> None:
    """Everything about one queued message: envelope, destinations, headers."""

    async def fn(d: Directory, s: Storage) -> tuple[list[QueueEntry], bytes]:
        entries = await s.queue_entries(queue_id)
        if not entries:
            raise StorageError(f"no queued message {queue_id}")
        head = await s.read_blob(entries[0].blob_id, 0, min(entries[0].size, 65536))
        return entries, head

    entries, head = _with_directory(ctx, fn)
    first = entries[0]
    click.echo(f"id          {first.queue_id}")
    click.echo(f"sender      <{first.sender}>")
    click.echo(f"size        {first.size} bytes")
    click.echo(f"queued      {_when(first.created)}")
    if first.envid:
        click.echo(f"envid       {first.envid}")
    if first.ret:
        click.echo(f"ret         {first.ret}")
    for e in entries:
        click.echo(f"destination {e.domain}")
        click.echo(f"  attempts  {e.attempts}")
        click.echo(f"  next      {_when(e.due)}")
        if e.owner and e.lease_until and e.lease_until > time.time():
            click.echo(f"  leased    by {e.owner} until {_when(e.lease_until)}")
        if e.warned:
            click.echo("  warned    a delay notice was sent")
        click.echo(f"  error     {e.last_error or '-'}")
        for r in e.recipients:
            extra = ""
            if r.notify:
                extra += f"  NOTIFY={','.join(r.notify)}"
            if r.orcpt:
                extra += f"  ORCPT={r.orcpt}"
            click.echo(f"  rcpt      <{r.address}>{extra}")
    from letterbird.delivery.queue.worker import return_path_length
    from letterbird.mime import get_header_fields

    start = return_path_length(head)
    fields = get_header_fields(head, ["From", "To", "Cc", "Subject", "Date", "Message-ID"], start)
    text = fields.decode("utf-8", "replace").replace("\r\n\t", " ").replace("\r\n ", " ")
    for line in text.splitlines():
        if line.strip():
            click.echo(f"header      {line}")


@queue.command("flush")
@click.pass_context
@_errors
def queue_flush(ctx: click.Context) -> None:
    """Attempt everything now, and wake the running server."""
    n = _with_directory(ctx, lambda d, s: s.queue_flush())
    pid = _signal_server(_config(ctx))
    click.echo(f"{n} queued destination(s) made due now")
    if pid is not None:
        click.echo(f"woke the server (pid {pid})")
    else:
        click.echo("no running server found; the next start (or queue poll) delivers them")


@queue.command("remove")
@click.argument("queue_id")
@click.option("--silent", is_flag=True, help="Do not send the sender a failure notice.")
@click.pass_context
@_errors
def queue_remove(ctx: click.Context, queue_id: str, silent: bool) -> None:
    """Delete a queued message; its sender gets a failure notice unless --silent."""
    from letterbird.delivery.queue.service import QueueService

    cfg = _config(ctx)

    async def fn(d: Directory, s: Storage) -> list[QueueEntry]:
        return await QueueService(cfg, s, d).remove(queue_id, silent=silent)

    removed = _with_directory(ctx, fn)
    rcpts = sum(len(e.recipients) for e in removed)
    click.echo(f"removed {queue_id} ({rcpts} recipient(s))" + ("" if silent else ", sender told"))
    if not silent:
        _signal_server(cfg)


# -- storage --------------------------------------------------------------------------------
@cli.group()
def storage() -> None:
    """Move the mail store between backends (SQLite, PostgreSQL)."""


def _storage_url(cfg: Config, url: str | None) -> str:
    if not url:
        return cfg.storage_url
    if url.startswith("sqlite:///"):
        from pathlib import Path

        return "sqlite:///" + str(Path(url[len("sqlite:///") :]).expanduser().resolve())
    return url


@storage.command("copy")
@click.option("--from", "source", help="Source URL (default: the configured storage).")
@click.option("--to", "dest", required=True, help="Destination URL (sqlite:/// or postgresql://).")
@click.option("--batch", default=500, show_default=True, help="Rows per committed batch.")
@click.option("--no-verify", is_flag=True, help="Skip the final comparison of both sides.")
@click.pass_context
@_errors
def storage_copy(
    ctx: click.Context, source: str | None, dest: str, batch: int, no_verify: bool
) -> None:
    """Copy every domain, account, mailbox, message and queue entry, keeping UIDVALIDITY, UIDs
    and modseqs, so no client downloads anything again. Stop the servers first; an interrupted
    copy resumes where it stopped when run again."""
    from letterbird.storage.copy import copy_storage

    cfg = _config(ctx)
    src = _storage_url(cfg, source)
    dst = _storage_url(cfg, dest)
    bars: dict[str, Any] = {}

    def progress(table: str, done: int, total: int) -> None:
        bar = bars.get(table)
        if bar is None:
            for other in bars.values():
                other.render_finish()
            bar = click.progressbar(length=max(total, 1), label=f"{table:<22}", show_pos=True)
            bar.render_progress()
            bars[table] = bar
        bar.update(min(done, total) - bar.pos)

    try:
        report = asyncio.run(
            copy_storage(src, dst, batch=batch, verify=not no_verify, progress=progress)
        )
    finally:
        for bar in bars.values():
            bar.render_finish()
    copied = sum(report.copied.values())
    click.echo(
        f"copied {copied} rows from {report.source} to {report.destination}"
        + (" (resumed)" if report.resumed else "")
    )
    for name, total in report.totals.items():
        click.echo(f"  {name:<15} {total}")
    click.echo("verified: counts and digests match" if report.verified else "not verified")


def main(argv: list[str] | None = None) -> Any:
    return cli.main(args=argv, prog_name="letterbird", obj={})
