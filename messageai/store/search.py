"""Keyword search's index of one conversation file (FTS5): a stub until engineer
"search"'s version replaces this file.

The three names below are the interface (issue 10's brief) that the conversation actor
calls inside its write transaction, so the index moves in step with every insert, edit
and delete. This stub keeps no index: every function does nothing.
"""

from __future__ import annotations

import apsw

from messageai.sqlite import Migration


def index_new(conn: apsw.Connection, seq: int, body: str) -> None:
    """After a message insert (stub: nothing is indexed)."""


def index_replace(conn: apsw.Connection, seq: int, old_body: str, new_body: str) -> None:
    """After an edit (`new_body` the new body) or a delete (`new_body` ""); stub."""


def _no_index(conn: apsw.Connection) -> None:
    """The schema step of the FTS table; the stub creates nothing."""


MIGRATIONS_STEP: Migration = _no_index
