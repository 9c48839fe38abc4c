"""Simulated power cuts for SQLite: an APSW VFS that remembers what a cut would lose.

kill -9 keeps every write the kernel already holds; a power cut keeps only what was
fsynced. `PowerCutVFS` (installed by `install`, in the server child that
`scripts/chaos --power-loss` starts with `python -m tests.powercut JOURNAL serve ...`)
wraps the default `unix` VFS and, before each write or truncate a file takes, appends
the bytes it overwrites (its pre-image) to that file's undo log in JOURNAL; an
`xSync` of the file empties its log, since from then on those writes are on disk.
Directory entries are logged too: a file created, or deleted, is only durable once
its directory was synced, which SQLite's unix VFS does on the first sync of a WAL
or journal it opened with CREATE (and on `xDelete(syncdir=True)`); this shim logs
the same moments.

After the child is dead, `cut` (the parent, tests/chaos.py) rebuilds the image a
power cut leaves: the directory operations not yet synced are undone (a file never
synced with its directory vanishes, a deleted one comes back), then each file's
unsynced writes are undone, newest first, and its size put back. `torn=True` keeps
a random part instead: each unsynced sector of each write is kept or lost by a coin
toss (what a disk that reorders writes between flushes may leave), and a random
prefix of each directory's operations. Writes only change the bytes they cover, as
the unix VFS promises SQLite (`SQLITE_IOCAP_POWERSAFE_OVERWRITE`).

The shim's `xSync` does not call fsync (the image it keeps is the durable one, and
the machine's real disk is not being tested): it sleeps `SYNC_SECONDS` instead, so
that a cut lands inside a commit's sync as often as on a real disk. Files SQLite
opens without a name (temporary files) and the `-shm` index (mapped, not written;
SQLite rebuilds it from the WAL after a crash) are not logged; neither are media
files, which MessageAI writes without SQLite.
"""

from __future__ import annotations

import os
import random
import struct
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import apsw
import attrs
import orjson

BASE_VFS = "unix"
SECTOR = 512
# What an fsync costs on a slow disk: the window, in each commit, a cut can land in.
SYNC_SECONDS = 0.01
# An undo record: kind (W write, T truncate, S size hint), offset, the file's size
# before, the length written (a truncate: cut off), then the pre-image's length and bytes
# (shorter than the write where it ran past the end of the file).
_HEADER = struct.Struct("<cqqqq")
_DIRSYNC_TYPES = (
    apsw.SQLITE_OPEN_WAL | apsw.SQLITE_OPEN_MAIN_JOURNAL | apsw.SQLITE_OPEN_SUPER_JOURNAL
)


def _undo_name(path: str) -> str:
    # The path, flattened: `cut` reads it back from the name.
    if "%" in path or not path.startswith("/"):
        raise ValueError(f"{path}: the power-cut shim needs absolute paths without '%'")
    return path.strip("/").replace("/", "%") + ".undo"


class _UndoLog:
    """One file's writes since its last sync; shared by every handle on that path."""

    def __init__(self, journal: Path, path: str) -> None:
        self.path = path
        self.log_path = journal / "undo" / _undo_name(path)
        self.lock = threading.Lock()
        self._fd = -1

    def record(self, kind: bytes, offset: int, size: int, length: int, pre_image: bytes) -> None:
        # Written (not fsynced: only the kernel must hold it) before the write it undoes.
        if self._fd < 0:
            self._fd = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        header = _HEADER.pack(kind, offset, size, length, len(pre_image))
        os.write(self._fd, header + pre_image)

    def synced(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        # Also a log a clean stop left behind (no cut emptied the journal since).
        self.log_path.unlink(missing_ok=True)

    def moved(self, to: Path) -> None:
        """The file was deleted into the journal: its log goes with it."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
            os.rename(self.log_path, to)


class PowerCutVFS(apsw.VFS):
    """The default VFS of a process under test; see the module docstring."""

    def __init__(self, journal: Path) -> None:
        self.journal = journal
        (journal / "undo").mkdir(parents=True, exist_ok=True)
        (journal / "deleted").mkdir(exist_ok=True)
        self._logs: dict[str, _UndoLog] = {}
        self._lock = threading.Lock()
        self._dir_fd = os.open(journal / "dirlog", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._deleted = len(os.listdir(journal / "deleted"))
        super().__init__("powercut", BASE_VFS, makedefault=True)

    def undo_log(self, path: str) -> _UndoLog:
        with self._lock:
            log = self._logs.get(path)
            if log is None:
                log = self._logs[path] = _UndoLog(self.journal, path)
            return log

    def dir_op(self, **op: str) -> None:
        os.write(self._dir_fd, orjson.dumps(op) + b"\n")

    def xOpen(self, name: str | apsw.URIFilename | None, flags: list[int]) -> apsw.VFSFile:
        if name is None:
            return apsw.VFSFile(BASE_VFS, name, flags)
        path = name.filename() if isinstance(name, apsw.URIFilename) else name
        created = bool(flags[0] & apsw.SQLITE_OPEN_CREATE)
        with self._lock:
            if created and not os.path.exists(path):
                self.dir_op(create=path)
        return _PowerCutFile(self, path, name, flags, created and bool(flags[0] & _DIRSYNC_TYPES))

    def xDelete(self, filename: str, syncdir: bool) -> None:
        log = self.undo_log(filename)
        with log.lock, self._lock:
            if not os.path.exists(filename):
                super().xDelete(filename, syncdir)  # raises SQLite's own "no such file"
                return
            # Kept aside, with its unsynced writes, until its directory is synced.
            backup = self.journal / "deleted" / str(self._deleted)
            self._deleted += 1
            os.rename(filename, backup)
            log.moved(backup.with_suffix(".undo"))
            self.dir_op(delete=filename, backup=backup.name)
            if syncdir:
                self.dir_op(dirsync=os.path.dirname(filename))


class _PowerCutFile(apsw.VFSFile):
    def __init__(
        self,
        vfs: PowerCutVFS,
        path: str,
        name: str | apsw.URIFilename,
        flags: list[int],
        dirsync: bool,
    ) -> None:
        super().__init__(BASE_VFS, name, flags)
        self._vfs = vfs
        self._path = path
        self._log = vfs.undo_log(path)
        self._fd = os.open(path, os.O_RDONLY)  # to read pre-images
        self._dirsync = dirsync

    def xWrite(self, data: bytes, offset: int) -> None:
        with self._log.lock:
            size = os.fstat(self._fd).st_size
            pre_image = os.pread(self._fd, len(data), offset)
            self._log.record(b"W", offset, size, len(data), pre_image)
            super().xWrite(data, offset)

    def xTruncate(self, newsize: int) -> None:
        with self._log.lock:
            size = os.fstat(self._fd).st_size
            pre_image = os.pread(self._fd, size - newsize, newsize) if size > newsize else b""
            self._log.record(b"T", newsize, size, len(pre_image), pre_image)
            super().xTruncate(newsize)

    def xFileControl(self, op: int, ptr: int) -> bool:
        if op == apsw.SQLITE_FCNTL_SIZE_HINT:  # may grow the file before any write
            with self._log.lock:
                self._log.record(b"S", 0, os.fstat(self._fd).st_size, 0, b"")
        return bool(super().xFileControl(op, ptr))

    def xSync(self, flags: int) -> None:
        time.sleep(SYNC_SECONDS)
        with self._log.lock:
            self._log.synced()
        if self._dirsync:
            self._dirsync = False
            with self._vfs._lock:
                self._vfs.dir_op(dirsync=os.path.dirname(self._path))

    def xClose(self) -> None:
        os.close(self._fd)
        super().xClose()


_installed: list[PowerCutVFS] = []


def install(journal: Path) -> PowerCutVFS:
    """Make the shim the default VFS of this process (before any connection opens).
    Kept referenced here: APSW unregisters a VFS object that is garbage collected."""
    _installed.append(PowerCutVFS(journal))
    return _installed[-1]


@attrs.define
class Cut:
    """What one power cut threw away."""

    bytes_lost: int = 0
    files_rolled_back: int = 0
    entries_undone: int = 0


def _records(log: Path) -> Iterator[tuple[bytes, int, int, int, bytes]]:
    data = log.read_bytes()
    at = 0
    while at + _HEADER.size <= len(data):
        kind, offset, size, length, pre_length = _HEADER.unpack_from(data, at)
        at += _HEADER.size
        if at + pre_length > len(data):
            return  # the child died writing this record: its write never happened
        yield kind, offset, size, length, data[at : at + pre_length]
        at += pre_length


def _roll_back(path: str, log: Path, rng: random.Random, torn: bool, cut: Cut) -> None:
    records = list(_records(log))
    if not records or not os.path.exists(path):
        return
    cut.files_rolled_back += 1
    # Which sectors of each write survive the cut; a truncate stands or falls whole.
    kept: list[set[int]] = []
    final_size = records[0][2]  # the size at the last sync
    for kind, offset, _size, length, _pre_image in records:
        survivors: set[int] = set()
        if kind == b"W" and torn:
            survivors = {s for s in _sectors(offset, length) if rng.random() < 0.5}
            # The file grows when the write's last sector lands.
            if (offset + length - 1) // SECTOR in survivors:
                final_size = max(final_size, offset + length)
        elif kind == b"T" and torn and rng.random() < 0.5:
            survivors = {0}
            final_size = offset
        kept.append(survivors)
    with open(path, "r+b") as file:
        for (kind, offset, _size, length, pre_image), survivors in zip(
            reversed(records), reversed(kept), strict=True
        ):
            if kind == b"T" and not survivors:
                file.seek(offset)
                file.write(pre_image)
                cut.bytes_lost += len(pre_image)
            elif kind == b"W":
                for sector in _sectors(offset, length):
                    if sector in survivors:
                        continue
                    lo = max(offset, sector * SECTOR)
                    hi = min(offset + length, (sector + 1) * SECTOR)
                    old = pre_image[lo - offset : hi - offset]
                    file.seek(lo)
                    file.write(old + bytes(hi - lo - len(old)))  # past the old end: a hole
                    cut.bytes_lost += hi - lo
        file.truncate(final_size)


def _sectors(offset: int, length: int) -> range:
    return range(offset // SECTOR, (offset + length - 1) // SECTOR + 1) if length else range(0)


def cut(journal: Path, rng: random.Random, *, torn: bool = False) -> Cut:
    """Rebuild, after the process using the shim is dead, the on-disk image a power cut
    at the moment of its death leaves; empty the journal for the next life."""
    result = Cut()
    ops = [orjson.loads(line) for line in (journal / "dirlog").read_bytes().splitlines()]
    last_sync: dict[str, int] = {}
    for index, op in enumerate(ops):
        if "dirsync" in op:
            last_sync[op["dirsync"]] = index
    pending: dict[str, list[int]] = {}
    for index, op in enumerate(ops):
        if "dirsync" not in op:
            directory = os.path.dirname(op.get("create") or op["delete"])
            if index > last_sync.get(directory, -1):
                pending.setdefault(directory, []).append(index)
    undone: set[int] = set()
    for indexes in pending.values():
        keep = rng.randint(0, len(indexes)) if torn else 0
        undone.update(indexes[keep:])
    undo_dir = journal / "undo"
    for index in sorted(undone, reverse=True):
        op = ops[index]
        result.entries_undone += 1
        if "create" in op:
            Path(op["create"]).unlink(missing_ok=True)
            (undo_dir / _undo_name(op["create"])).unlink(missing_ok=True)
        else:
            backup = journal / "deleted" / op["backup"]
            os.rename(backup, op["delete"])
            if backup.with_suffix(".undo").exists():
                os.rename(backup.with_suffix(".undo"), undo_dir / _undo_name(op["delete"]))
    for log in sorted(undo_dir.iterdir()):
        path = "/" + log.name.removesuffix(".undo").replace("%", "/")
        _roll_back(path, log, rng, torn, result)
        log.unlink()
    for leftover in (journal / "deleted").iterdir():
        leftover.unlink()
    (journal / "dirlog").write_bytes(b"")
    return result


def main(argv: list[str]) -> int:
    """`python -m tests.powercut JOURNAL ARGS...`: `messageai ARGS...` under the shim."""
    journal, *rest = argv
    install(Path(journal))
    from messageai.cli import main as messageai_main

    return messageai_main(rest)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
