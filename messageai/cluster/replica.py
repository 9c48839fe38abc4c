"""A conversation's WAL, replicated to S3-compatible storage before any ack (docs/SCALE.md §7).

The owner of a conversation (one node, one epoch) keeps the SQLite file on its local
disk and gives its actor a `Replica`. After each commit of a batch, still in the
commit's worker thread and before any ack, the actor calls `Replica.ship(conn)`: the
WAL frames appended since the last shipped one are PUT as ONE object,
`<prefix><C>/wal/<n>`, with `If-None-Match: *` and the writer's epoch in its metadata.
The conditional PUT is the fence between owners: an old owner and a new one race for
the same `n`, and exactly one wins. A PUT that failed in transit is tried once more (a
412 then is answered by reading the object back: its own body means its first attempt
had landed). A refused PUT, or one failed twice, raises `ReplicaLost`
(an `Unavailable`): nothing of the batch is acked. The batch is then in the local file
but maybe not in the replica, so the replica is **lost for good**: `healthy` turns
false (the cluster layer's `Fence` includes it, so no later batch commits), `on_lost`
is called (the cluster layer stops the actor and releases the lease), and the local
file is never served again: whoever owns the conversation next, this node included,
`restore`s it from the replica. What a restore then holds: every acked batch, and the
failed batch only if its PUT reached the store before the failure was seen (a client's
resend of it is then a duplicate, answered with the stored message).

A segment is either the raw WAL frames of one or more commits (`kind=frames`) or the
whole database (`kind=snapshot`). A snapshot is shipped instead of frames for the
conversation's first segment, once `snapshot_after_bytes` of frames or
`snapshot_after_segments` segments were shipped since the last one, and whenever the
WAL's continuity cannot be proved (its salt changed without this replica's own
checkpoint: the actor's checkpoint after a delete, a connection that checkpointed
before this replica configured it); after a snapshot the WAL is checkpointed and
truncated. `<prefix><C>/snap/<n>` is an empty pointer to each
snapshot segment, so a restore need not read every segment; `prune` deletes what the
second-latest snapshot superseded.

`restore` rebuilds the file (with no replica at all it leaves a local file as it is:
a conversation from a single-node server becomes the first snapshot): the latest
snapshot, then every later segment in order
(a gap, or an epoch lower than one before it, stops the restore: a bug), each frame's
page written at its place and the file cut at each commit's size (what a checkpoint
does), then `PRAGMA integrity_check`. The new owner continues at `Restored.next_segment`.
`claim` is how a new owner claims the restored file (docs/SCALE.md §4): the claim is
itself the owner's first replicated commit. `check_store` is the start-up check: a
store that does not refuse a second conditional PUT of a key cannot fence.

Blocking functions, for worker threads. Nothing of the single-node server imports this.
"""

from __future__ import annotations

import contextlib
import logging
import os
import struct
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import apsw
import attrs

from messageai.cluster.fence import file_epoch
from messageai.cluster.s3 import S3, NoSuchKey, PreconditionFailed, S3Error, S3Object
from messageai.errors import Unavailable
from messageai.model import now_ms
from messageai.sqlite import migrate, open_db, transaction
from messageai.store import conversation
from messageai.store import fence as fence_sql

log = logging.getLogger(__name__)

_WAL_HEADER = 32
_FRAME_HEADER = 24
_WAL_MAGICS = (0x377F0682, 0x377F0683)
# Key numbers are zero-padded so that the store's lexicographic listing is numeric order.
_DIGITS = 20


@attrs.frozen
class ReplicaSettings:
    """Where the replicas live. `prefix` namespaces the keys in the bucket; once
    `snapshot_after_bytes` of frames or `snapshot_after_segments` segments were shipped
    since the last snapshot, the next segment is a snapshot (bounding what a restore
    replays, and how long a deleted message's old pages stay in the store)."""

    endpoint: str
    bucket: str
    access_key: str
    secret_key: str = attrs.field(repr=False)
    region: str = "us-east-1"
    prefix: str = "messageai/"
    timeout_seconds: float = 5.0
    snapshot_after_bytes: int = 16 * 1024 * 1024
    # A restore reads the segments after the snapshot (`restore_fetches` at a time): a
    # count bounds how many round trips that is (bench/replica_cost.py: ~7-10 ms each).
    snapshot_after_segments: int = 200
    restore_fetches: int = 8

    def store(self) -> S3:
        """A client for the bucket; the caller closes it."""
        return S3(
            self.endpoint,
            self.bucket,
            access_key=self.access_key,
            secret_key=self.secret_key,
            region=self.region,
            timeout_seconds=self.timeout_seconds,
        )


class ReplicaLost(Unavailable):
    """A segment could not be replicated: nothing of the batch is acked, and this
    replica (and the local file it follows) is done (see the module)."""


class RestoreError(Exception):
    """The replica cannot be restored as it is: a gap in the segments, an epoch going
    down, a malformed segment, a file that fails `integrity_check`."""


class StoreUnfit(Exception):
    """The store cannot fence two owners (start-up check)."""


def segment_key(settings: ReplicaSettings, conversation_id: str, n: int) -> str:
    return f"{settings.prefix}{conversation_id}/wal/{n:0{_DIGITS}d}"


def snapshot_key(settings: ReplicaSettings, conversation_id: str, n: int) -> str:
    return f"{settings.prefix}{conversation_id}/snap/{n:0{_DIGITS}d}"


def _numbers(store: S3, prefix: str) -> list[int]:
    return sorted(int(key[len(prefix) :]) for key in store.list(prefix))


@attrs.define
class _WalFrames:
    """The committed frames of the WAL file past a shipped position."""

    salt: bytes
    page_size: int
    salt1: int
    # Frames (count) in the WAL up to and including its last commit frame.
    committed: int
    body: bytes


def _read_wal(path: Path, start: int, salt: bytes | None) -> _WalFrames | None:
    """The WAL's frames from frame `start` (0-based) to its last commit frame, or None
    when the WAL has no header. Frames are read while their salt is the header's (a
    frame left by an earlier generation of the file has another salt); the checksums
    are not recomputed (the file was written by this process's own commit a moment
    ago; the store checks each body's SHA-256 and a restore runs `integrity_check`).
    `salt`: the generation `start` counts in; another one reads from frame 0."""
    try:
        wal = open(path, "rb")  # noqa: SIM115 (closed below, on every path)
    except FileNotFoundError:
        return None
    with wal:
        header = wal.read(_WAL_HEADER)
        if len(header) < _WAL_HEADER:
            return None
        magic, _version, page_size, _ckpt, salt1, _salt2 = struct.unpack(">6I", header[:24])
        if magic not in _WAL_MAGICS:
            raise ReplicaLost(f"{path}: not a WAL file")
        this_salt = header[16:24]
        if salt is not None and this_salt != salt:
            start = 0
        frame_size = _FRAME_HEADER + page_size
        wal.seek(_WAL_HEADER + start * frame_size)
        frames: list[bytes] = []
        kept = 0  # frames up to the last commit frame
        while True:
            frame = wal.read(frame_size)
            if len(frame) < frame_size or frame[8:16] != this_salt:
                break
            frames.append(frame)
            if frame[4:8] != b"\0\0\0\0":  # a commit frame: the db's size after it
                kept = len(frames)
        return _WalFrames(this_salt, page_size, salt1, start + kept, b"".join(frames[:kept]))


class Replica:
    """The replica of one conversation written by its owner at `epoch`, continuing at
    segment `next_segment` (`Restored.next_segment`). Called from the commit's worker
    thread, one call at a time (the actor's calls never overlap). `on_lost` is called,
    from that thread, once when the replica is lost (see the module)."""

    def __init__(
        self,
        store: S3,
        settings: ReplicaSettings,
        conversation_id: str,
        epoch: int,
        next_segment: int,
        *,
        on_lost: Callable[[], None] | None = None,
    ) -> None:
        self._store = store
        self._settings = settings
        self.conversation_id = conversation_id
        self.epoch = epoch
        self.next_segment = next_segment
        self._on_lost = on_lost
        self._lost = False
        # The WAL generation (its header's salts) and frames of it shipped so far. The
        # restored file has no WAL, so the first generation seen starts at frame 0.
        self._salt: bytes | None = None
        self._shipped = 0
        # After this replica's own checkpoint the WAL restarts: salt1 + 1 is the only
        # generation that follows it without a gap.
        self._expect_salt1: int | None = None
        self._since_snapshot = 0
        self._segments_since_snapshot = 0
        self._snapshot_due = next_segment == 1
        # The connection whose checkpoints this replica turned off.
        self._configured: apsw.Connection | None = None

    @property
    def healthy(self) -> bool:
        """False once a segment failed: no commit may follow (the cluster layer's fence)."""
        return not self._lost

    def configure(self, conn: apsw.Connection) -> None:
        """Turn off the connection's own checkpoints (automatic, and on close), so the
        WAL only restarts after this replica shipped it. `ship` does it for a
        connection it has not seen; call it first on a connection that writes before
        its first `ship`."""
        if conn is not self._configured:
            conn.wal_autocheckpoint(0)
            conn.config(apsw.SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, 1)
            self._configured = conn

    def ship(self, conn: apsw.Connection) -> None:
        """Replicate what `conn`'s file committed since the last call, as one segment;
        called after each commit and before any ack. Raises `ReplicaLost`."""
        if self._lost:
            raise ReplicaLost(f"conversation {self.conversation_id}: its replica was lost")
        self.configure(conn)
        try:
            wal = _read_wal(Path(conn.filename + "-wal"), self._shipped, self._salt)
            if wal is not None and (
                (self._salt is not None and wal.salt != self._salt)
                or (self._salt is None and self._expect_salt1 not in (None, wal.salt1))
            ):
                # The WAL restarted, and not (only) by this replica's own checkpoint:
                # frames may have gone into the file unshipped; only a snapshot is sure.
                log.info(
                    "conversation %s: the WAL restarted behind the replica; a snapshot",
                    self.conversation_id,
                )
                self._snapshot_due = True
            elif wal is None and self._salt is not None:
                # The WAL this replica was following is gone: checkpointed into the file
                # by someone else, maybe with frames it had not shipped.
                self._snapshot_due = True
            if self._snapshot_due:
                self._snapshot(conn)
                return
            if wal is None or wal.committed <= self._shipped:
                return  # the commit wrote nothing
            self._put(wal.body, "frames", wal.page_size)
            self._salt, self._shipped = wal.salt, wal.committed
            self._expect_salt1 = None
            self._since_snapshot += len(wal.body)
            self._segments_since_snapshot += 1
            if (
                self._since_snapshot >= self._settings.snapshot_after_bytes
                or self._segments_since_snapshot >= self._settings.snapshot_after_segments
            ):
                self._snapshot_due = True
        except ReplicaLost:
            self._lose()
            raise
        except (S3Error, OSError, apsw.Error) as exc:
            self._lose()
            raise ReplicaLost(
                f"conversation {self.conversation_id}: segment {self.next_segment}"
                f" not replicated ({exc})"
            ) from exc

    def _lose(self) -> None:
        if not self._lost:
            self._lost = True
            log.warning(
                "conversation %s (epoch %d): replica lost at segment %d",
                self.conversation_id,
                self.epoch,
                self.next_segment,
            )
            if self._on_lost is not None:
                self._on_lost()

    def _put(self, body: bytes, kind: str, page_size: int) -> None:
        """PUT segment `next_segment` if nobody has it. A PUT that failed in transit (or
        with a 5xx) is tried once more: it may have landed with only its answer lost,
        and then the retry's 412 is answered by comparing what is stored with `body`."""
        n = self.next_segment
        key = segment_key(self._settings, self.conversation_id, n)
        metadata = {"epoch": str(self.epoch), "kind": kind, "page-size": str(page_size)}
        retried = False
        while True:
            try:
                self._store.put(key, body, metadata=metadata, if_none_match=True)
                break
            except PreconditionFailed as exc:
                if retried and self._landed(key, body):
                    break
                raise ReplicaLost(
                    f"conversation {self.conversation_id}: segment {n} was written by another"
                    f" owner (epoch {self.epoch} is not the conversation's owner any more)"
                ) from exc
            except S3Error as exc:
                if retried or 0 < exc.status < 500:
                    raise
                log.info("conversation %s: segment %d, once more: %s", self.conversation_id, n, exc)
                retried = True
        self.next_segment = n + 1

    def _landed(self, key: str, body: bytes) -> bool:
        """Whether `key` holds this replica's own `body` (its first PUT had landed)."""
        stored = self._store.get(key)
        return stored.body == body and stored.metadata.get("epoch") == str(self.epoch)

    def _snapshot(self, conn: apsw.Connection) -> None:
        """The whole database as the next segment, then the WAL checkpointed away."""
        body, page_size = _copy(conn)
        n = self.next_segment
        self._put(body, "snapshot", page_size)
        try:
            self._store.put(snapshot_key(self._settings, self.conversation_id, n), b"")
        except S3Error as exc:
            # Only a hint for the restore, which finds the segment without it.
            log.warning("conversation %s: snapshot pointer %d: %s", self.conversation_id, n, exc)
        self._snapshot_due = False
        self._since_snapshot = self._segments_since_snapshot = 0
        wal_path = Path(conn.filename + "-wal")
        before = _read_wal(wal_path, 0, None)
        busy, _log, _done = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()[0]
        after = _read_wal(wal_path, 0, None)
        if busy == 0 and after is None:
            # Truncated: the next write starts the WAL's next generation at frame 0,
            # which SQLite salts with salt-1 + 1 (a connection that reopens the empty
            # WAL salts it at random, and the next `ship` snapshots again: safe).
            self._salt, self._shipped = None, 0
            self._expect_salt1 = None if before is None else (before.salt1 + 1) & 0xFFFFFFFF
        else:
            # A reader kept the WAL: its frames are in the snapshot; go on from its end.
            assert after is not None
            self._salt, self._shipped, self._expect_salt1 = after.salt, after.committed, None

    def prune(self) -> int:
        """Delete the segments and pointers older than the second-latest snapshot (the
        latest stays restorable even while a newer one is being written). Off the
        commit path: a worker thread between batches. Answers how many were deleted."""
        snaps = _numbers(
            self._store, snapshot_key(self._settings, self.conversation_id, 0)[:-_DIGITS]
        )
        if len(snaps) < 2:
            return 0
        keep_from = snaps[-2]
        deleted = 0
        wal_prefix = segment_key(self._settings, self.conversation_id, 0)[:-_DIGITS]
        for n in _numbers(self._store, wal_prefix):
            if n < keep_from:
                self._store.delete(segment_key(self._settings, self.conversation_id, n))
                deleted += 1
        for n in snaps:
            if n < keep_from:
                self._store.delete(snapshot_key(self._settings, self.conversation_id, n))
                deleted += 1
        return deleted


def _copy(conn: apsw.Connection) -> tuple[bytes, int]:
    """The database as one consistent image (SQLite's backup API, into a temporary file
    beside it), and its page size."""
    tmp = Path(conn.filename + ".replica-snapshot")
    tmp.unlink(missing_ok=True)
    dest = apsw.Connection(str(tmp))
    try:
        with dest.backup("main", conn, "main") as backup:
            backup.step(-1)
        page_size = dest.execute("PRAGMA page_size").get
        # The image is read without a WAL of its own: everything is in the main file.
        dest.execute("PRAGMA journal_mode = DELETE")
    finally:
        dest.close()
    try:
        body = tmp.read_bytes()
    finally:
        tmp.unlink(missing_ok=True)
    assert isinstance(page_size, int)
    return body, page_size


@attrs.frozen
class Restored:
    """What `restore` rebuilt: the next owner's first segment number, the highest
    epoch written so far (the floor for the next lease), and how many segments it
    read (0: no replica yet; the local file, if any, was left as it is)."""

    next_segment: int
    epoch: int
    segments: int


def _apply_frames(path: Path, segment: S3Object, n: int) -> None:
    page_size = int(segment.metadata.get("page-size", "0"))
    frame_size = _FRAME_HEADER + page_size
    body = segment.body
    if page_size <= 0 or not body or len(body) % frame_size:
        raise RestoreError(f"segment {n}: malformed ({len(body)} bytes, page size {page_size})")
    with open(path, "r+b") as db:
        for offset in range(0, len(body), frame_size):
            page, commit_size = struct.unpack(">II", body[offset : offset + 8])
            db.seek((page - 1) * page_size)
            db.write(body[offset + _FRAME_HEADER : offset + frame_size])
            if commit_size:
                db.truncate(commit_size * page_size)
        if struct.unpack(">I", body[-frame_size + 4 : -frame_size + 8])[0] == 0:
            raise RestoreError(f"segment {n}: does not end with a commit")
        db.flush()
        os.fsync(db.fileno())


def _remove_db(path: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


def restore(store: S3, settings: ReplicaSettings, conversation_id: str, path: Path) -> Restored:
    """Rebuild the conversation's file at `path` from its replica (any local file, WAL
    and index there are replaced; no connection may have it open). With no replica at
    all, a local file is left as it is. Raises `RestoreError`, or `S3Error` if the store
    cannot be read (retry)."""
    wal_prefix = segment_key(settings, conversation_id, 0)[:-_DIGITS]
    numbers = _numbers(store, wal_prefix)
    if not numbers:
        # Never replicated: a new conversation, or one from a single-node server. A local
        # file is kept (the owner's first segment is a snapshot of it), never erased.
        return Restored(1, file_epoch(path), 0)
    pointers = set(_numbers(store, snapshot_key(settings, conversation_id, 0)[:-_DIGITS]))
    # The latest snapshot segment: a pointer's, else the first segment listed (the
    # conversation's first, or the one a prune kept).
    candidates = [n for n in sorted(pointers, reverse=True) if n in numbers] + [numbers[0]]
    base: S3Object | None = None
    start = 0
    for n in candidates:
        segment = store.get(segment_key(settings, conversation_id, n))
        if segment.metadata.get("kind") == "snapshot":
            base, start = segment, n
            break
    if base is None:
        raise RestoreError(f"conversation {conversation_id}: no snapshot segment to start from")
    tail = [n for n in numbers if n > start]
    if tail != list(range(start + 1, start + 1 + len(tail))):
        missing = next(n for n in range(start + 1, numbers[-1]) if n not in set(tail))
        raise RestoreError(f"conversation {conversation_id}: segment {missing} is missing")
    path.parent.mkdir(parents=True, exist_ok=True)
    building = path.with_name(path.name + ".restoring")
    _remove_db(building)
    building.write_bytes(base.body)
    epoch = _epoch(base, start, 0)
    # Fetched several at a time, applied in order; the tail is bounded by the snapshot
    # thresholds, and so is what this holds in memory.
    with ThreadPoolExecutor(settings.restore_fetches, "replica restore") as pool:
        segments = pool.map(store.get, [segment_key(settings, conversation_id, n) for n in tail])
        for n, segment in zip(tail, segments, strict=True):
            epoch = _epoch(segment, n, epoch)
            if segment.metadata.get("kind") == "snapshot":
                building.write_bytes(segment.body)
            else:
                _apply_frames(building, segment, n)
    _verify(building)
    _remove_db(path)
    os.replace(building, path)
    with contextlib.suppress(OSError):
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
    return Restored(numbers[-1] + 1, epoch, 1 + len(tail))


def _epoch(segment: S3Object, n: int, before: int) -> int:
    try:
        epoch = int(segment.metadata["epoch"])
    except (KeyError, ValueError) as exc:
        raise RestoreError(f"segment {n}: no epoch in its metadata") from exc
    if epoch < before:
        raise RestoreError(
            f"segment {n}: epoch {epoch} after epoch {before}: an older owner wrote after"
            " a newer one (a bug); restore stopped"
        )
    return epoch


def _verify(path: Path) -> None:
    conn = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READWRITE)
    try:
        result = [row[0] for row in conn.execute("PRAGMA integrity_check")]
    except apsw.Error as exc:
        raise RestoreError(f"{path.name}: not a database after the restore ({exc})") from exc
    finally:
        conn.close()
    if result != ["ok"]:
        raise RestoreError(f"{path.name}: integrity_check: {'; '.join(map(str, result[:5]))}")


def claim(replica: Replica, path: Path, synchronous: str, node: str) -> fence_sql.FenceRow:
    """Claim the (restored or new) file at `path` for the replica's epoch and replicate
    the claim: the new owner's first segment, so an old owner's next PUT is refused from
    here on. Raises `Fenced` or `ReplicaLost` (restore again, then claim). Blocking."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = open_db(path, synchronous)
    try:
        replica.configure(conn)
        migrate(conn, conversation.MIGRATIONS)
        with transaction(conn):
            row = fence_sql.claim(conn, replica.epoch, node, now_ms())
        replica.ship(conn)
        return row
    finally:
        conn.close()


def check_store(store: S3, settings: ReplicaSettings) -> None:
    """Refuse a store that cannot fence: a second `If-None-Match: *` PUT of a key must
    be answered 412, and a key just written must be listed. Raises `StoreUnfit`, or
    `S3Error` if the store cannot be reached."""
    key = f"{settings.prefix}_check/{uuid.uuid4().hex}"
    store.put(key, b"first", if_none_match=True)
    try:
        try:
            store.put(key, b"second", if_none_match=True)
        except PreconditionFailed:
            pass
        else:
            raise StoreUnfit(
                f"{settings.endpoint}: a conditional PUT (If-None-Match: *) overwrote an"
                " existing object; this store cannot fence two owners of a conversation"
            )
        if key not in store.list(key):
            raise StoreUnfit(f"{settings.endpoint}: a key just written is not listed")
    finally:
        with contextlib.suppress(NoSuchKey):
            store.delete(key)
