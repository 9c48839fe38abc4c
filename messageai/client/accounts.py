"""Where account databases live: the store directory and its current account.

A store directory holds one database per account and server plus a `current`
file naming the account that `messageai send|sync|tail|chat` use. Called by
`sdk.Client.open`/`login` and by the commands.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from urllib.parse import urlsplit

import platformdirs

from messageai.client.errors import ClientError, NotSignedIn

CURRENT = "current"


def store_dir(explicit: str | Path | None = None) -> Path:
    """`--store DIR`, else `$MESSAGEAI_STORE`, else the platform's per-user data directory."""
    if explicit:
        return Path(explicit).expanduser()
    env = os.environ.get("MESSAGEAI_STORE")
    if env:
        return Path(env).expanduser()
    return platformdirs.user_data_path("messageai", appauthor=False)


def normalize_server_url(url: str) -> str:
    """`http(s)://host[:port]` without a trailing slash; anything else is a clear error."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ClientError(f"not a server URL: {url!r} (expected http://host:port or https://host)")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ClientError(f"the server URL must not have a path or query: {url!r}")
    try:
        parts.port  # noqa: B018 -- raises ValueError for a bad port
    except ValueError:
        raise ClientError(f"bad port in server URL: {url!r}") from None
    return f"{parts.scheme}://{parts.netloc}"


def ws_url(server_url: str) -> str:
    return server_url.replace("http", "ws", 1) + "/v1/ws"


def account_file(server_url: str, username: str) -> str:
    """One file name per account and server, safe on every filesystem."""
    netloc = urlsplit(server_url).netloc
    slug = re.sub(r"[^A-Za-z0-9.-]+", "_", f"{username}@{netloc}")
    return f"{slug}.sqlite3"


def set_current(directory: Path, filename: str) -> None:
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = directory / f".{CURRENT}.tmp"
    tmp.write_text(filename + "\n", "utf-8")
    tmp.replace(directory / CURRENT)  # atomic: a reader sees the old or the new name


def current_path(directory: Path) -> Path:
    """The current account's database; NotSignedIn if there is none."""
    try:
        name = (directory / CURRENT).read_text("utf-8").strip()
    except FileNotFoundError:
        raise NotSignedIn(f"no account in {directory}: run `messageai login` first") from None
    path = directory / name
    if "/" in name or not name.endswith(".sqlite3") or not path.exists():
        raise NotSignedIn(
            f"the current account in {directory} is missing: run `messageai login` again"
        )
    return path
