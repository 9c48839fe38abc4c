"""Where the server keeps its files under `storage.data_dir`.

Used by the conversation actors (the only owners of their files), the directory
service and the tools that copy a data directory as a whole.
"""

from __future__ import annotations

from pathlib import Path


def conversation_path(data_dir: Path, conversation_id: str) -> Path:
    """`conversations/<2-char shard>/<id>.sqlite3`: keeps directories small at any scale."""
    return data_dir / "conversations" / conversation_id[-2:] / f"{conversation_id}.sqlite3"
