"""The ``letterbird`` command: run the server and administer domains, users and aliases.

Admin commands open the same database as the running server (SQLite WAL allows a second
writer process to wait its turn), so they work while the server runs.
"""

from __future__ import annotations

import asyncio
import functools
import sys
from collections.abc import Awaitable, Callable
from typing import Any, ParamSpec, TypeVar

import click

from letterbird.config import Config, ConfigError, load_config
from letterbird.directory.addresses import InvalidAddress, display_domain
from letterbird.directory.service import Directory
from letterbird.storage import open_storage_for
from letterbird.storage.interface import Storage, StorageError

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
    click.echo(f"storage   {cfg.storage_url}")
    for key, addrs in cfg.listen.items():
        click.echo(f"listen    {key:12} {', '.join(addrs) or '-'}")


@cli.command()
@click.pass_context
@_errors
def migrate(ctx: click.Context) -> None:
    """Create or upgrade the database schema."""

    async def fn(d: Directory, s: Storage) -> None:
        return None

    _with_directory(ctx, fn)
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


def main(argv: list[str] | None = None) -> Any:
    return cli.main(args=argv, prog_name="letterbird", obj={})
