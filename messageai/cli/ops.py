"""The operator's commands on a data directory: `backup DEST`, `verify DIR` and
`restore SRC` (the work is `messageai.ops.backup`). Added to the parser and run by
`cli.main`; exit 0 on success, 1 when the backup, check or restore fails (the reason
on stderr, each problem on its own line for `verify`)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from messageai.config import Config
from messageai.ops import backup

OPS_COMMANDS = ("backup", "verify", "restore")


def add_ops_commands(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    with_config: Callable[[argparse.ArgumentParser], None],
) -> None:
    make = sub.add_parser(
        "backup",
        help="back the data directory up while the server runs",
        description="Every database through SQLite's online backup API, the media files,"
        " and a manifest with checksums, into DEST (absent or empty).",
    )
    with_config(make)
    make.add_argument("dest", type=Path, help="the backup folder to create")
    check = sub.add_parser(
        "verify",
        help="check a backup: checksums and SQLite's integrity check of every file",
    )
    check.add_argument("folder", type=Path, help="a folder made by `messageai backup`")
    put = sub.add_parser(
        "restore",
        help="restore a backup into an empty data directory",
        description="Verifies the backup, then copies it into the data directory named by"
        " --data-dir or --config, which must be absent or empty.",
    )
    with_config(put)
    put.add_argument("src", type=Path, help="a folder made by `messageai backup`")


def run(config: Config, args: argparse.Namespace) -> int:
    try:
        if args.command == "backup":
            backup.backup(config.data_dir, args.dest)
            return 0
        if args.command == "verify":
            report = backup.verify(args.folder)
            for problem in report.problems:
                print(f"messageai: {problem}", file=sys.stderr)
            if report.problems:
                print(f"{args.folder}: {len(report.problems)} problems", file=sys.stderr)
                return 1
            print(f"{args.folder}: {report.checked} files verified")
            return 0
        backup.restore(args.src, config.data_dir)
        return 0
    except backup.BackupError as exc:
        print(f"messageai: {exc}", file=sys.stderr)
        return 1
