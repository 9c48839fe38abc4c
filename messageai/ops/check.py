"""`messageai check`: the integrity of a whole data directory, beside a running server
or without one (`cli.ops`). SQLite's `integrity_check` of every database (each
conversation's file, the jobs file, the directory); every upload the directory
records has its bytes, under a name that is their SHA-256; conversation files the
directory does not know are reported (a conversation made while a backup was taken,
or one whose row was lost), as are media files no upload names.
"""

from __future__ import annotations

from pathlib import Path

import apsw

from messageai.ops.backup import Report, databases, integrity, sha256_of
from messageai.services.directory import DIRECTORY_FILE


def check(data_dir: Path) -> Report:
    if not (data_dir / DIRECTORY_FILE).is_file():
        return Report(0, [f"no MessageAI data in {data_dir} (no {DIRECTORY_FILE})"])
    problems: list[str] = []
    checked = 0
    for path in databases(data_dir):
        checked += 1
        found = integrity(path)
        if found is not None:
            problems.append(f"{path.relative_to(data_dir)}: integrity check failed: {found}")
    conn = apsw.Connection(str(data_dir / DIRECTORY_FILE), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        known = {row[0] for row in conn.execute("SELECT id FROM conversations")}
        digests = {row[0] for row in conn.execute("SELECT DISTINCT sha256 FROM media")}
    finally:
        conn.close()
    for path in sorted((data_dir / "conversations").glob("*/*.sqlite3")):
        if path.stem not in known:
            problems.append(f"{path.relative_to(data_dir)}: no conversation of this id")
    media = data_dir / "media"
    on_disk = {p.name: p for p in media.glob("??/*") if p.is_file()} if media.is_dir() else {}
    for sha256 in sorted(digests):
        blob = on_disk.get(sha256)
        checked += 1
        if blob is None:
            problems.append(f"media/{sha256[:2]}/{sha256}: an upload's bytes are missing")
        elif sha256_of(blob) != sha256:
            problems.append(f"{blob.relative_to(data_dir)}: its content is not its checksum")
    for name in sorted(set(on_disk) - digests):
        # Between an upload's file and its row, or left by a crash: the sweep takes it.
        problems.append(f"{on_disk[name].relative_to(data_dir)}: no upload names this file")
    return Report(checked, problems)
