"""The `messageai` command: `serve`, `user add|list`, `config check`, `backup`, `verify`,
`restore` (in `cli.ops`), `user disable|enable|reset-password|delete` and `token revoke`
(in `cli.admin`), and the client's
`login|send|sync|tail|conversations|new|chat` (arguments in `cli.client_args`, the work in
`messageai.client.commands`).

Exit status 0 on success, 2 for a configuration or usage error (`user add|list` with
no data directory named and none in ./data among them), 1 otherwise (a port in use, a
data directory that is a file, a taken username).
"""

from __future__ import annotations

import argparse
import getpass
import logging
import os
import signal
import sys
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING

import trio

from messageai import logs, passwords
from messageai.cli.admin import ADMIN_USER_COMMANDS, run_delete, run_token, run_user
from messageai.cli.client_args import CLIENT_COMMANDS, add_client_commands
from messageai.cli.directory_db import open_directory, where
from messageai.cli.ops import OPS_COMMANDS, add_ops_commands
from messageai.config import Config, ConfigError, load_config, with_overrides
from messageai.errors import MessageAIError, StartupError
from messageai.services.directory import DIRECTORY_FILE
from messageai.sqlite import apply_best_practice
from messageai.store import directory as sql
from messageai.store.db import transaction

if TYPE_CHECKING:
    from messageai.server import Server


def _port(value: str) -> int:
    if not value.isdigit() or int(value) > 65535:
        raise argparse.ArgumentTypeError(f"not a TCP port: {value!r}")
    return int(value)


def _version() -> str:
    """The installed package's version (pyproject.toml's). Read here rather than from
    `messageai.__version__`: a `messageai/` folder in the current directory (a
    checkout's config folder) can shadow the package's `__init__` under `python -m`."""
    try:
        return metadata.version("messageai")
    except metadata.PackageNotFoundError:
        return "(not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="messageai", description="MessageAI chat server")
    parser.add_argument("--version", action="version", version=f"messageai {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    def with_config(p: argparse.ArgumentParser) -> None:
        p.add_argument("--config", type=Path, help="TOML config file (default: the embedded one)")
        p.add_argument("--data-dir", help="override storage.data_dir")

    serve = sub.add_parser("serve", help="run the server")
    with_config(serve)
    serve.add_argument("--host", help="override server.host")
    serve.add_argument("--port", type=_port, help="override server.port")

    user = sub.add_parser(
        "user",
        help="manage local accounts",
        description="Accounts live in the server's data directory: name it with --data-dir"
        " or --config; without either, ./data is used only if it already holds one.",
    )
    user_sub = user.add_subparsers(dest="user_command", required=True)
    add = user_sub.add_parser("add", help="create an account")
    with_config(add)
    add.add_argument("name", help="username: 3-32 of a-z 0-9 _ . -")
    add.add_argument("--display-name", help="shown name (default: the username)")
    add.add_argument(
        "--password-file",
        type=Path,
        help="read the password from this file's first line"
        " (default: prompt in a terminal, else read one line from stdin)",
    )
    lst = user_sub.add_parser("list", help="list accounts")
    with_config(lst)
    for name, text in (
        ("disable", "refuse the account's sessions and sign-ins (its messages stay)"),
        ("enable", "let a disabled account sign in again"),
        ("reset-password", "set a new password and sign the account out everywhere"),
    ):
        each = user_sub.add_parser(name, help=text)
        with_config(each)
        each.add_argument("name", help="the username")
        if name == "reset-password":
            each.add_argument(
                "--password-file", type=Path, help="read the new password from its first line"
            )
    delete = user_sub.add_parser(
        "delete",
        help="delete an account: anonymised, signed out, out of its groups",
        description="The account becomes 'Deleted user' (its username freed, no password,"
        " no tokens or push tokens, out of its groups and channels); its messages stay"
        " unless --erase-messages. Beside a running server (it does the work and closes"
        " the user's connections) or without one.",
    )
    with_config(delete)
    delete.add_argument("name", help="the username")
    delete.add_argument(
        "--erase-messages",
        action="store_true",
        help="also turn every message they sent into a tombstone and delete their uploads",
    )
    token = sub.add_parser("token", help="session tokens")
    token_sub = token.add_subparsers(dest="token_command", required=True)
    revoke = token_sub.add_parser("revoke", help="end every session of a user")
    with_config(revoke)
    revoke.add_argument("name", help="the username")

    config = sub.add_parser("config", help="configuration tools")
    config_sub = config.add_subparsers(dest="config_command", required=True)
    check = config_sub.add_parser("check", help="validate a config file and print the result")
    with_config(check)
    add_ops_commands(sub, with_config)
    add_client_commands(sub)
    return parser


def _load(args: argparse.Namespace) -> Config:
    # The file (or the embedded default), then MESSAGEAI_<SECTION>__<KEY> variables,
    # then the flags.
    config = load_config(args.config, os.environ)
    return with_overrides(
        config,
        host=getattr(args, "host", None),
        port=getattr(args, "port", None),
        data_dir=args.data_dir,
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    apply_best_practice()  # every database this process opens: WAL, foreign keys, ...
    if args.command in CLIENT_COMMANDS:
        from messageai.client.commands import run as run_client_command

        return run_client_command(args)
    if args.command == "verify":  # a folder, no configuration
        from messageai.cli import ops

        return ops.run(load_config(None), args)
    try:
        config = _load(args)
    except ConfigError as exc:
        print(f"messageai: {exc}", file=sys.stderr)
        return 2
    configure_logging(config)
    try:
        if args.command == "serve":
            return _serve_or_refuse(config)
        if args.command in OPS_COMMANDS:
            from messageai.cli import ops

            return ops.run(config, args)
        if args.command in ("user", "token"):
            refusal = _no_server_data(config, args)
            if refusal is not None:
                print(f"messageai: {refusal}", file=sys.stderr)
                return 2
        if args.command == "user" and args.user_command == "add":
            return _user_add(config, args)
        if args.command == "user" and args.user_command == "list":
            return _user_list(config)
        if args.command == "user" and args.user_command in ADMIN_USER_COMMANDS:
            return run_user(config, args, lambda: _read_password(args))
        if args.command == "user" and args.user_command == "delete":
            return run_delete(config, args)
        if args.command == "token":
            return run_token(config, args)
        if args.command == "config":
            print(
                f"configuration OK: data in {config.storage.data_dir}, "
                f"listening on {config.server.host}:{config.server.port}"
            )
            return 0
    except MessageAIError as exc:
        print(f"messageai: {exc.message}", file=sys.stderr)
        return 1
    except (StartupError, OSError) as exc:
        print(f"messageai: {exc}", file=sys.stderr)
        return 1
    except BaseExceptionGroup as group:
        # Trio's nurseries wrap start-up failures (a port in use) in groups.
        error = _sole_startup_error(group)
        if error is None:
            raise
        print(f"messageai: {error}", file=sys.stderr)
        return 1
    return 2


def configure_logging(config: Config) -> None:
    logs.configure(config.logging.level, config.logging.format)


def _sole_startup_error(exc: BaseException) -> StartupError | OSError | None:
    """The StartupError or OSError an exception group holds, when that is all it holds."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc if isinstance(exc, (StartupError, OSError)) else None


def _raise_open_files_limit() -> None:
    """Every connection and open conversation database holds descriptors; a server
    may use all that the hard limit allows (the soft default, often 1024, is not enough)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _serve_or_refuse(config: Config) -> int:
    """`serve`; a configuration found unusable at start-up (a secret that cannot be
    read, cluster mode's store that cannot fence) exits 2 with its one line."""
    try:
        return trio.run(_serve, config)
    except BaseExceptionGroup as group:
        refused, other = group.split(ConfigError)
        if refused is None or other is not None:
            raise
        first: BaseException = refused
        while isinstance(first, BaseExceptionGroup):
            first = first.exceptions[0]
        print(f"messageai: {first}", file=sys.stderr)
        return 2


async def _serve(config: Config, make_server: Callable[[Config], Server] | None = None) -> int:
    """Serve until SIGINT or SIGTERM. `make_server` is for tests (`tests/jobserver.py`
    adds its job kinds); the default is `Server`."""
    from messageai.server import Server

    _raise_open_files_limit()
    server = (make_server or Server)(config)
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            await nursery.start(server.run)
            print(
                f"MessageAI serving {server.url} "
                f"(WebSocket {server.url.replace('http', 'ws', 1)}/v1/ws), "
                f"data in {config.storage.data_dir}",
                flush=True,
            )
            async for signum in signals:
                logging.getLogger("messageai").info("received %s", signal.Signals(signum).name)
                server.shutdown()
                break
    return 0


def _no_server_data(config: Config, args: argparse.Namespace) -> str | None:
    """Why `user add|list` will not run, or None. The accounts must go where the
    server reads them: with neither --data-dir nor --config, the embedded default
    `./data` is a guess about the current directory, so it is used only when it holds
    a directory database; otherwise a fresh database there would take the account
    silently and the server would never see it. Naming the data directory (either
    flag) may create it, to provision accounts before the first `serve`."""
    if args.data_dir is not None or args.config is not None or config.directory.postgres:
        return None
    if (config.data_dir / DIRECTORY_FILE).is_file():
        return None
    return (
        f"no MessageAI data in {config.storage.data_dir} (no {DIRECTORY_FILE} there); "
        "name the server's data directory with --data-dir DIR or its --config FILE "
        '(the server prints "data in DIR" when it starts)'
    )


def _read_password(args: argparse.Namespace) -> str:
    if args.password_file is not None:
        lines = args.password_file.read_text("utf-8").splitlines()
        return lines[0] if lines else ""
    if sys.stdin is None or not sys.stdin.isatty():
        # Piped (`printf '%s\n' "$PW" | messageai user add ada`) or no terminal at
        # all: getpass cannot turn echo off there. One line, read bounded; no prompt.
        line = sys.stdin.readline(passwords.MAX_PASSWORD_CHARS + 2) if sys.stdin else ""
        if not line:
            raise MessageAIError(
                "no password: pipe it on stdin, use --password-file, or run in a terminal"
            )
        return line.removesuffix("\n").removesuffix("\r")
    first = getpass.getpass("password: ")
    if getpass.getpass("again: ") != first:
        raise MessageAIError("passwords do not match")
    return first


def _user_add(config: Config, args: argparse.Namespace) -> int:
    if config.auth.mode != "local":
        raise MessageAIError(
            f'local accounts are off with auth.mode = "{config.auth.mode}": '
            "users sign up through Clerk"
        )
    # Checked before asking for the password; create_local_user checks them again.
    name = passwords.check_username(args.name)
    passwords.check_display_name(args.display_name, name)
    password = passwords.check_password(_read_password(args))
    password_hash = passwords.hash_password(password, config.auth.scrypt_n)
    fresh = not config.directory.postgres and not (config.data_dir / DIRECTORY_FILE).is_file()
    with open_directory(config, create=True) as conn, transaction(conn):
        user = sql.create_local_user(conn, name, args.display_name, password_hash)
    if user is None:
        print(f"messageai: username {name!r} is taken", file=sys.stderr)
        return 1
    print(f"created {user.username} ({user.id}) in {where(config)}")
    if fresh:
        # Named explicitly, so made; but a relative path or a typo lands elsewhere
        # than the server's data: say so rather than let it pass unnoticed.
        print(
            f"messageai: note: {config.data_dir.resolve()} had no directory database;"
            " a new one was made. A running server on another data directory will not"
            " see this account.",
            file=sys.stderr,
        )
    return 0


def _user_list(config: Config) -> int:
    # Listing creates nothing: a mistyped path is reported, not made.
    with open_directory(config, create=False) as conn:
        users = sql.all_users(conn)
    for user in users:
        print(f"{user.id}\t{user.username}\t{user.display_name}")
    return 0
