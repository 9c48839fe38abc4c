"""Backups of a whole data directory that lose nothing: `backup`, `verify`, `restore`.

Called by `messageai backup DEST`, `messageai verify DIR` and `messageai restore SRC`
(`cli.ops`), in their own process, beside a running server or without one.

A backup is a folder with the data directory's layout and a `manifest.json` naming
every file with its size and SHA-256. Every database is copied through SQLite's
online backup API in one step, so each copy is one consistent snapshot of its file,
taken while the server goes on writing (WAL: readers never block the writer). The
order makes the whole consistent for what matters: the conversation files first,
then the jobs file, then the directory, then the media files that the copied
directory names. So a message acked before the backup started is in its copy (the
ack left after the commit), every conversation it belongs to and every user and
upload it names are in the directory's copy (they were committed before the message),
and every upload the directory's copy names has its bytes (an upload's file is
written before its row). A conversation made while the backup ran may have a file
and no directory row yet: the server ignores such a file. Each copy is turned from
WAL into a plain rollback-journal file, fsynced, and checksummed; the manifest is
written last, atomically, so a folder without one is not a backup.

`verify` checks a backup (or any data directory) file by file: the manifest's size
and checksum, `PRAGMA integrity_check` of every database, each media file's name is
its content's SHA-256. `restore` verifies first, then copies into an empty data
directory (never over a live one).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import apsw
import attrs

from messageai.services.directory import DIRECTORY_FILE
from messageai.sqlite import open_db
from messageai.store.jobs import JOBS_FILE

MANIFEST = "manifest.json"
FORMAT = 1
_CHUNK = 1 << 20


class BackupError(Exception):
    """A backup, verify or restore that cannot go on; the message says why."""


@attrs.frozen
class Entry:
    path: str  # relative, with "/"
    size: int
    sha256: str
    kind: str  # "database" or "media"


@attrs.frozen
class Report:
    """What `verify` found: `problems` empty means the folder is sound."""

    checked: int
    problems: list[str]


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def fsync_path(path: Path) -> None:
    """Make a file's (or a folder's) content durable before going on."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def databases(data_dir: Path) -> Iterator[Path]:
    """The databases in backup order: conversations, jobs, the directory last."""
    yield from sorted((data_dir / "conversations").glob("*/*.sqlite3"))
    if (data_dir / JOBS_FILE).is_file():
        yield data_dir / JOBS_FILE
    yield data_dir / DIRECTORY_FILE


def _copy_database(src: Path, dst: Path) -> None:
    """One consistent snapshot of `src` in `dst`, as a single rollback-journal file."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    source = open_db(src, "FULL", create=False)
    try:
        target = apsw.Connection(str(dst))
        try:
            with target.backup("main", source, "main") as copy:
                # One step holds one read transaction on the source: one snapshot.
                copy.step(-1)
            target.execute("PRAGMA journal_mode = DELETE")
        finally:
            target.close()
    finally:
        source.close()
    fsync_path(dst)


def _media_digests(directory_copy: Path) -> list[str]:
    conn = apsw.Connection(str(directory_copy), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        return [row[0] for row in conn.execute("SELECT DISTINCT sha256 FROM media ORDER BY 1")]
    finally:
        conn.close()


def _media_rel(sha256: str) -> str:
    # `services.media.blob_path`'s layout, relative to the data directory.
    return f"media/{sha256[:2]}/{sha256}"


def backup(data_dir: Path, dest: Path, progress: Callable[[str], None] = print) -> list[Entry]:
    """Back `data_dir` up into `dest` (absent or empty); returns the manifest's entries."""
    if not (data_dir / DIRECTORY_FILE).is_file():
        raise BackupError(f"no MessageAI data in {data_dir} (no {DIRECTORY_FILE})")
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise BackupError(f"{dest} exists and is not an empty folder")
    if dest.resolve().is_relative_to(data_dir.resolve()):
        raise BackupError("the backup must not be inside the data directory")
    dest.mkdir(parents=True, exist_ok=True)
    entries: list[Entry] = []
    files = list(databases(data_dir))
    for number, src in enumerate(files, 1):
        rel = src.relative_to(data_dir).as_posix()
        _copy_database(src, dest / rel)
        entries.append(Entry(rel, (dest / rel).stat().st_size, sha256_of(dest / rel), "database"))
        if number % 500 == 0:
            progress(f"{number} of {len(files)} databases copied")
    missing = 0
    for sha256 in _media_digests(dest / DIRECTORY_FILE):
        rel = _media_rel(sha256)
        src = data_dir / rel
        if not src.is_file():
            missing += 1  # erased by the media sweep after the directory was copied
            continue
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dest / rel)
        fsync_path(dest / rel)
        digest = sha256_of(dest / rel)
        if digest != sha256:
            raise BackupError(f"{rel}: its content does not match its name (damaged on disk)")
        entries.append(Entry(rel, (dest / rel).stat().st_size, digest, "media"))
    _write_manifest(dest, entries)
    media = sum(1 for e in entries if e.kind == "media")
    note = f" ({missing} uploads erased meanwhile)" if missing else ""
    progress(
        f"backed up {len(files)} databases and {media} media files"
        f" ({sum(e.size for e in entries):,} bytes) into {dest}{note}"
    )
    return entries


def _write_manifest(dest: Path, entries: list[Entry]) -> None:
    body = {
        "format": FORMAT,
        "files": [attrs.asdict(e) for e in entries],
    }
    tmp = dest / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(body, indent=1) + "\n", "utf-8")
    fsync_path(tmp)
    tmp.replace(dest / MANIFEST)
    fsync_path(dest)


def read_manifest(folder: Path) -> list[Entry]:
    path = folder / MANIFEST
    try:
        body = json.loads(path.read_text("utf-8"))
    except FileNotFoundError:
        raise BackupError(f"{folder} has no {MANIFEST}: not a complete backup") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise BackupError(f"{path}: not a manifest ({exc})") from None
    if not isinstance(body, dict) or body.get("format") != FORMAT:
        raise BackupError(f"{path}: not a format {FORMAT} manifest")
    entries = []
    for raw in body.get("files", []):
        try:
            entry = Entry(str(raw["path"]), int(raw["size"]), str(raw["sha256"]), str(raw["kind"]))
        except (KeyError, TypeError, ValueError):
            raise BackupError(f"{path}: a malformed entry {raw!r:.100}") from None
        rel = Path(entry.path)
        if rel.is_absolute() or ".." in rel.parts or entry.kind not in ("database", "media"):
            raise BackupError(f"{path}: an entry outside the backup: {entry.path!r:.100}")
        entries.append(entry)
    return entries


def integrity(path: Path) -> str | None:
    """None when SQLite finds the file sound, else what it says."""
    try:
        conn = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READONLY)
        try:
            rows = [row[0] for row in conn.execute("PRAGMA integrity_check")]
        finally:
            conn.close()
    except apsw.Error as exc:
        return f"{type(exc).__name__}: {exc}"
    return None if rows == ["ok"] else "; ".join(str(r) for r in rows[:5])


def verify(folder: Path) -> Report:
    """Check a backup against its manifest (see the module)."""
    entries = read_manifest(folder)
    problems: list[str] = []
    for entry in entries:
        path = folder / entry.path
        if not path.is_file():
            problems.append(f"{entry.path}: missing")
            continue
        if path.stat().st_size != entry.size:
            problems.append(
                f"{entry.path}: {path.stat().st_size} bytes, the manifest says {entry.size}"
            )
            continue
        if sha256_of(path) != entry.sha256:
            problems.append(f"{entry.path}: its checksum differs from the manifest's")
            continue
        if entry.kind == "database":
            found = integrity(path)
            if found is not None:
                problems.append(f"{entry.path}: integrity check failed: {found}")
        elif Path(entry.path).name != entry.sha256:
            problems.append(f"{entry.path}: a media file not named by its checksum")
    if not any(e.path == DIRECTORY_FILE for e in entries):
        problems.append(f"the manifest names no {DIRECTORY_FILE}")
    return Report(len(entries), problems)


def restore(src: Path, data_dir: Path, progress: Callable[[str], None] = print) -> int:
    """Verify the backup `src`, then copy it into `data_dir` (absent or empty); returns
    the number of files restored."""
    if data_dir.exists() and (not data_dir.is_dir() or any(data_dir.iterdir())):
        raise BackupError(
            f"{data_dir} is not empty: restore only into a new data directory"
            " (stop the server, move the old one aside)"
        )
    report = verify(src)
    if report.problems:
        raise BackupError(
            f"{src} does not verify ({len(report.problems)} problems), nothing restored: "
            + report.problems[0]
        )
    entries = read_manifest(src)
    staging = data_dir.with_name(data_dir.name + ".restoring")
    if staging.exists():
        shutil.rmtree(staging)
    for entry in entries:
        target = staging / entry.path
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src / entry.path, target)
        fsync_path(target)
    # The whole restore appears at once: a half-restored directory never serves.
    if data_dir.exists():
        data_dir.rmdir()
    staging.replace(data_dir)
    progress(f"restored {len(entries)} files from {src} into {data_dir}")
    return len(entries)
