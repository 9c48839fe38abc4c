"""The operator's commands that must not change files under a running server:
`user delete`, `conversation delete|restore`. `run` takes the data directory's lock
(`ops.channel.offline_lock`): got it, no server runs and the offline function works on
the files while holding it; not got, the request goes over the admin channel and the
server does the work. Called by `cli.ops` and `cli.__init__`; exit 0 with what was
done on stdout, 1 with the reason on stderr.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from messageai.cli.directory_db import has_directory, refuse_in_postgres
from messageai.config import Config
from messageai.errors import MessageAIError
from messageai.ops import channel
from messageai.ops.backup import BackupError


def run(config: Config, request: dict[str, Any], offline: Callable[[], str]) -> int:
    """The work by the server when one runs on the data directory, else `offline()`
    (which works on `directory.sqlite3`: refused when the directory is in PostgreSQL,
    where only the running server does it)."""
    data_dir = config.data_dir
    if not has_directory(config):
        print(f"messageai: no directory database in {data_dir.resolve()}", file=sys.stderr)
        return 1
    command = str(request["command"]).replace("_", " ")
    try:
        if config.directory.postgres and not data_dir.is_dir():
            refuse_in_postgres(config, command)  # no server runs on a data directory not made
        with channel.offline_lock(data_dir) as alone:
            if alone:
                refuse_in_postgres(config, command)
            said = offline() if alone else channel.request(data_dir, request)
    except (MessageAIError, BackupError, channel.ChannelError) as exc:
        print(f"messageai: {exc}", file=sys.stderr)
        return 1
    print(said)
    return 0
