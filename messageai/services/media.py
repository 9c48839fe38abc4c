"""Media: uploads streamed to content-addressed files, their types checked from the bytes,
access granted on references (never on the hash), and unreferenced uploads deleted.
Called by `rest/media.py` (upload, download: this module returns records, byte ranges
and chunks; the REST layer builds the HTTP), conversation actors (attach, reference)
and the server, which runs `Media.run` (the cleanup task) in its nursery.

Uploads and cleanup never interleave: each holds the media lock around its
directory transaction and its file step (placing or unlinking files). The file
step runs outside the directory's write transaction, in a worker thread
(`threads.blocking`), so registrations and logins never wait for media files.
"""

from __future__ import annotations

import codecs
import hashlib
import logging
import os
import re
from collections.abc import AsyncIterator, Callable, Iterable
from pathlib import Path
from typing import IO, Any

import attrs
import trio

from messageai.config import Config
from messageai.counters import COUNTS
from messageai.errors import (
    BadRequest,
    NotFound,
    RangeNotSatisfiable,
    TooLarge,
    UnsupportedMediaType,
)
from messageai.model import MediaRecord, new_id, now_ms
from messageai.services.directory import Directory
from messageai.store import media as sql
from messageai.threads import blocking

log = logging.getLogger(__name__)

# Leading bytes looked at to tell the type (magic numbers sit in the first dozen;
# text is judged on more, and then on every byte of the body).
SNIFF_BYTES = 512
# Upload bytes gathered before one write (one worker-thread hop), and download chunk size.
CHUNK_BYTES = 256 * 1024
# Unreferenced uploads deleted per directory transaction by the cleanup task.
CLEANUP_BATCH = 100
# Media ids are server-made; anything longer is not one of ours.
MAX_MEDIA_ID_CHARS = 64

_HTML_STARTS = re.compile(
    rb"<(!doctype html|html|head|body|script|iframe|style|title|meta|link|svg|object|embed"
    rb"|img|a|b|p|br|div|font|table|h1|!--)[\s>/]"
)


def sniff(head: bytes) -> frozenset[str]:
    """The media types that bytes starting with `head` can be (empty: none we know)."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return frozenset({"image/png"})
    if head.startswith(b"\xff\xd8\xff"):
        return frozenset({"image/jpeg"})
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return frozenset({"image/gif"})
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return frozenset({"image/webp"})
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        return frozenset({"audio/wav", "audio/wave", "audio/x-wav"})
    if head.startswith(b"%PDF-"):
        return frozenset({"application/pdf"})
    if head.startswith(b"OggS"):
        return frozenset({"audio/ogg", "video/ogg", "application/ogg"})
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return frozenset({"video/webm", "audio/webm", "video/x-matroska"})
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand in (b"heic", b"heix", b"heim", b"heis", b"hevc", b"mif1", b"msf1"):
            return frozenset({"image/heic", "image/heif"})
        if brand == b"qt  ":
            return frozenset({"video/quicktime"})
        if brand in (b"M4A ", b"M4B ", b"M4P "):
            return frozenset({"audio/mp4", "audio/x-m4a"})
        return frozenset({"video/mp4", "audio/mp4"})
    # MPEG audio: an ID3 tag, or a frame sync whose layer bits are set (AAC's are not).
    if head.startswith(b"ID3") or (
        len(head) >= 2 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0 and head[1] & 0x06
    ):
        return frozenset({"audio/mpeg"})
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n\x0c").lower()
    if _HTML_STARTS.match(text + b" "):
        return frozenset({"text/html"})
    if text.startswith(b"<?xml"):
        return frozenset({"text/xml", "application/xml", "image/svg+xml"})
    if b"\x00" not in head:
        try:
            codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
        except UnicodeDecodeError:
            return frozenset()
        return frozenset({"text/plain"})
    return frozenset()


MAX_FILENAME_CHARS = 255
# Bidirectional controls would let "photo\u202egnp.exe" show as "photoexe.png".
_BIDI_CONTROLS = frozenset(
    "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
)


def check_filename(name: str) -> str:
    """A file name as `?filename=` gives it (v1.1): 1 to 255 characters, no path
    separators (`/`, `\\`), not `.` or `..`, no control characters (C0, DEL, C1) and
    no bidirectional controls, not only whitespace. Kept as given otherwise.
    BadRequest names the rule."""
    if not name or not name.strip():
        raise BadRequest("filename: must not be empty")
    if len(name) > MAX_FILENAME_CHARS:
        raise BadRequest(f"filename: at most {MAX_FILENAME_CHARS} characters")
    if "/" in name or "\\" in name or name in (".", ".."):
        raise BadRequest("filename: a name, not a path (no / or \\)")
    if any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 or c in _BIDI_CONTROLS for c in name):
        raise BadRequest("filename: must not contain control characters")
    return name


def declared_type(headers: dict[str, str]) -> str:
    """The request's Content-Type without parameters, lower case ("" when absent)."""
    return headers.get("content-type", "").split(";", 1)[0].strip().lower()


def blob_path(root: Path, sha256: str) -> Path:
    """`media/<sha256[:2]>/<sha256>`: the bytes' one file, shared by every upload of them."""
    return root / sha256[:2] / sha256


def playable(content_type: str) -> bool:
    """Audio and video: served in byte ranges (players seek); everything else whole."""
    return content_type.startswith(("audio/", "video/"))


@attrs.frozen
class ByteRange:
    start: int
    end: int  # inclusive

    @property
    def length(self) -> int:
        return self.end - self.start + 1


@attrs.frozen
class Download:
    """What `GET /v1/media/{id}` sends; `rest/media.py` turns it into the response."""

    record: MediaRecord
    # The part asked for (206), or None for the whole file (200).
    byte_range: ByteRange | None
    # Those bytes, CHUNK_BYTES at a time, from a file already open (so the cleanup
    # task unlinking it cannot cut the response short); iterating to the end, or
    # closing the iterator, closes the file.
    chunks: AsyncIterator[bytes]

    @property
    def length(self) -> int:
        return self.record.size if self.byte_range is None else self.byte_range.length


def parse_range(header: str | None, size: int) -> ByteRange | bool | None:
    """A single `bytes=` range of a file of `size` bytes: the range, None when the header
    is absent or not one we serve (then the whole file is sent, as RFC 9110 allows), or
    False when it is unsatisfiable (416)."""
    if not header:
        return None
    # ASCII: \d would take any Unicode digit ("٣" is 3 to int()), which HTTP does not.
    match = re.fullmatch(r"\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*", header, re.ASCII)
    if match is None or (not match.group(1) and not match.group(2)):
        return None
    first, last = match.group(1), match.group(2)
    if len(first) > 19 or len(last) > 19:
        return False
    if not first:
        suffix = int(last)
        if suffix == 0 or size == 0:
            return False
        return ByteRange(max(0, size - suffix), size - 1)
    start = int(first)
    end = size - 1 if not last else min(int(last), size - 1)
    if last and int(last) < start:
        return None
    if start >= size:
        return False
    return ByteRange(start, end)


class Media:
    """Uploads, downloads and attachment checks over the directory's media tables."""

    def __init__(self, config: Config, directory: Directory) -> None:
        self._config = config
        self._directory = directory
        self.root = config.data_dir / "media"
        self._tmp = self.root / "tmp"
        self._allowed = frozenset(config.media.allowed_types)
        self._ready = False
        # Held around an upload's commit and a sweep batch: the directory transaction
        # and the file step together, so the two never interleave (see the module).
        self.lock = trio.Lock()

    # ------------------------------------------------------------ attaching

    def first_refused(self, user_id: str, media_ids: Iterable[str]) -> str | None:
        """The first id `user_id` may not attach (unknown, or neither theirs nor shared in
        a conversation of theirs), or None. A few indexed reads, inline: the actor calls
        this only for messages that carry attachments."""
        for media_id in dict.fromkeys(media_ids):
            if (
                len(media_id) > MAX_MEDIA_ID_CHARS
                or self._directory.read(sql.readable, media_id, user_id) is None
            ):
                return media_id
        return None

    async def add_references(self, conversation_id: str, media_ids: list[str]) -> None:
        """Record that a committed message of the conversation references these ids.
        Idempotent; the actor calls it after the commit and before the ack, also for a
        resent duplicate, so a reference lost to a crash is written on the resend."""
        await self._directory.write(sql.add_refs, conversation_id, list(dict.fromkeys(media_ids)))

    async def remove_references(self, conversation_id: str, media_ids: list[str]) -> None:
        """The conversation no longer references these ids (the messages that did were
        deleted): its members lose access to them, and an upload nothing references is
        erased by the sweep. Called by the actor after the delete's commit."""
        await self._directory.write(
            sql.remove_refs, conversation_id, list(dict.fromkeys(media_ids))
        )

    # ------------------------------------------------------------ upload

    async def upload(
        self,
        user_id: str,
        headers: dict[str, str],
        receive: Callable[[], Any],
        filename: str | None = None,
    ) -> MediaRecord:
        """Stream the request body to a temporary file while hashing and checking it, then
        move it to its content-addressed path and record a new upload owned by `user_id`
        (with `filename`, checked by `check_filename` before any byte is read).
        Never holds more than about CHUNK_BYTES of the body in memory; refuses (413) as soon
        as the body passes `limits.max_upload_bytes` or the user's quota."""
        if filename is not None:
            check_filename(filename)
        await self._prepare()
        declared = headers.get("content-length", "")
        length = int(declared) if declared.isascii() and declared.isdigit() else None
        if length == 0:
            raise BadRequest("the body is empty: send the file's bytes")
        content_type = declared_type(headers)
        if content_type not in self._allowed:
            raise UnsupportedMediaType(
                f"Content-Type {content_type or '(none)'!r} is not accepted here"
            )
        limit = self._config.limits.max_upload_bytes
        if length is not None and length > limit:
            raise TooLarge(f"uploads are at most {limit} bytes")
        quota = self._config.media.quota_bytes
        room = quota - await self._directory.fetch(sql.used_bytes, user_id)
        if room <= 0 or (length is not None and length > room):
            raise TooLarge(f"this upload would pass your media quota of {quota} bytes")

        tmp = self._tmp / f"{new_id('up_')}.part"
        try:
            sha256, size = await self._receive_to(tmp, receive, content_type, min(limit, room))
            record = MediaRecord(
                id=new_id("md_"),
                owner_id=user_id,
                sha256=sha256,
                content_type=content_type,
                size=size,
                created_at=now_ms(),
                filename=filename,
            )
            await self._commit_upload(tmp, record, quota)
            COUNTS.media_bytes_uploaded += size
            return record
        finally:
            # Shielded: even a cancelled upload (shutdown) removes its temporary file.
            with trio.CancelScope(shield=True):
                await blocking(_unlink, tmp)

    async def _commit_upload(self, tmp: Path, record: MediaRecord, quota: int) -> None:
        """Place the bytes, then record the upload (the quota checked again in that
        transaction: concurrent uploads), under the media lock: a sweep cannot
        unlink the file in between. A refusal takes back a file no record names. A
        crash in between leaves at most a file without a record, as before."""
        final = blob_path(self.root, record.sha256)
        sync = self._config.storage.synchronous == "FULL"
        refused = TooLarge(f"this upload would pass your media quota of {quota} bytes")
        async with self.lock:
            # Uploads take turns here, so this read is current; it spares placing a
            # file only to take it back. The transaction below checks once more.
            if await self._directory.fetch(sql.used_bytes, record.owner_id) + record.size > quota:
                raise refused
            placed = await blocking(_place, tmp, final, sync)
            try:
                if not await self._directory.write(sql.insert_within_quota, record, quota):
                    raise refused
            except BaseException:
                if placed:
                    with trio.CancelScope(shield=True):
                        if not await self._directory.fetch(sql.sha256_in_use, record.sha256):
                            await blocking(_unlink, final)
                raise

    async def _receive_to(
        self, tmp: Path, receive: Callable[[], Any], content_type: str, limit: int
    ) -> tuple[str, int]:
        hasher = hashlib.sha256()
        head = b""
        sniffed = False
        text = codecs.getincrementaldecoder("utf-8")() if content_type == "text/plain" else None
        pending: list[bytes] = []
        pending_size = size = 0
        out: IO[bytes] = await blocking(open, tmp, "wb")
        try:
            while True:
                event = await receive()
                if event["type"] == "http.disconnect":
                    raise BadRequest("the upload was interrupted")
                chunk: bytes = event.get("body", b"")
                more = bool(event.get("more_body", False))
                size += len(chunk)
                if size > limit:
                    raise TooLarge(
                        f"uploads are at most {self._config.limits.max_upload_bytes} bytes"
                        " (or past your media quota)"
                    )
                if not sniffed:
                    head += chunk[: SNIFF_BYTES - len(head)]
                    if len(head) >= SNIFF_BYTES or not more:
                        sniffed = True
                        if size and content_type not in sniff(head):
                            raise UnsupportedMediaType(
                                f"the bytes are not {content_type}; declare the file's real type"
                            )
                if text is not None:
                    try:
                        text.decode(chunk, final=not more)
                    except UnicodeDecodeError:
                        raise UnsupportedMediaType("text/plain must be UTF-8") from None
                    if b"\x00" in chunk:
                        raise UnsupportedMediaType("text/plain must not contain NUL bytes")
                hasher.update(chunk)
                pending.append(chunk)
                pending_size += len(chunk)
                if pending_size >= CHUNK_BYTES or not more:
                    await blocking(out.write, b"".join(pending))
                    pending.clear()
                    pending_size = 0
                if not more:
                    break
            if size == 0:
                raise BadRequest("the body is empty: send the file's bytes")
            if self._config.storage.synchronous == "FULL":
                await blocking(_flush_and_sync, out)
        finally:
            with trio.CancelScope(shield=True):
                await blocking(out.close)
        return hasher.hexdigest(), size

    # ------------------------------------------------------------ download

    async def readable(self, user_id: str, media_id: str) -> MediaRecord | None:
        """The upload if `user_id` may read it, else None (the caller answers 404 for
        both "no such id" and "not yours": nothing tells them apart)."""
        if len(media_id) > MAX_MEDIA_ID_CHARS:
            return None
        return await self._directory.fetch(sql.readable, media_id, user_id)

    async def download(self, user_id: str, media_id: str, range_header: str | None) -> Download:
        """`GET /v1/media/{id}`: the record, the range to send (audio and video only;
        None for the whole file) and its bytes, from a file opened here. NotFound
        unless `user_id` may read it; RangeNotSatisfiable for a range past the end."""
        record = await self.readable(user_id, media_id)
        if record is None:
            raise NotFound("no such media")
        wanted = parse_range(range_header, record.size) if playable(record.content_type) else None
        if wanted is False:
            raise RangeNotSatisfiable("the range is outside the file", record.size)
        byte_range = wanted if isinstance(wanted, ByteRange) else None
        try:
            # Opened before answering: the cleanup task may unlink the file while it is
            # being sent, and an open file keeps its bytes.
            file: IO[bytes] = await blocking(open, blob_path(self.root, record.sha256), "rb")
        except FileNotFoundError:
            raise NotFound("no such media") from None
        start, length = (
            (0, record.size) if byte_range is None else (byte_range.start, byte_range.length)
        )
        COUNTS.media_bytes_served += length
        return Download(record, byte_range, _read(record, file, start, length))

    # ------------------------------------------------------------ cleanup

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The cleanup task: every `media.cleanup_interval_seconds`, delete uploads that no
        message references and that are older than `media.unreferenced_ttl_seconds`. A
        failed sweep is logged and retried at the next interval; cancellation (shutdown)
        ends it between directory transactions."""
        await self._prepare()
        task_status.started()
        while True:
            try:
                await self.sweep()
            except Exception:
                # Supervision: the next sweep retries whatever this one did not finish.
                log.exception("media cleanup failed; retrying in the next interval")
            await trio.sleep(self._config.media.cleanup_interval_seconds)

    async def sweep(self) -> int:
        """Delete unreferenced uploads past their time; return how many. Each batch,
        under the media lock: delete the records (one directory transaction), then
        unlink the files no record names any more (outside it, in a worker thread):
        an upload of the same bytes either recorded itself before (the file stays)
        or comes after (and puts the file back)."""
        cutoff = now_ms() - int(self._config.media.unreferenced_ttl_seconds * 1000)
        total = 0
        while True:
            async with self.lock:
                deleted = await self._directory.write(
                    sql.delete_unreferenced, cutoff, CLEANUP_BATCH
                )
                unused = [
                    blob_path(self.root, sha256)
                    for sha256 in dict.fromkeys(deleted)
                    if not await self._directory.fetch(sql.sha256_in_use, sha256)
                ]
                if unused:
                    await blocking(_unlink_all, unused)
            total += len(deleted)
            if len(deleted) < CLEANUP_BATCH:
                return total

    async def _prepare(self) -> None:
        if not self._ready:
            await blocking(_prepare_dirs, self._tmp)
            self._ready = True


def _prepare_dirs(tmp: Path) -> None:
    """Create the media directories and remove temporary files a previous run left."""
    tmp.mkdir(parents=True, exist_ok=True)
    for leftover in tmp.glob("*.part"):
        _unlink(leftover)


def _unlink(path: Path) -> None:
    path.unlink(missing_ok=True)


def _place(tmp: Path, final: Path, sync: bool) -> bool:
    """Move the upload to its content-addressed path unless the bytes are there already
    (then they are the same bytes); True if it moved. `sync`: the rename survives a
    power cut (the directory is fsynced)."""
    if final.exists():
        return False
    final.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, final)
    if sync:
        fd = os.open(final.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    return True


def _unlink_all(paths: list[Path]) -> None:
    for path in paths:
        _unlink(path)


def _flush_and_sync(file: IO[bytes]) -> None:
    file.flush()
    os.fsync(file.fileno())


async def _read(
    record: MediaRecord, file: IO[bytes], start: int, length: int
) -> AsyncIterator[bytes]:
    """`length` bytes of the open file from `start`, CHUNK_BYTES at a time (each read in
    a worker thread); closes the file when done, closed or cancelled."""
    try:
        await blocking(file.seek, start)
        left = length
        while left > 0:
            data = await blocking(file.read, min(CHUNK_BYTES, left))
            if not data:
                # Shorter than recorded: end the response short rather than pad it;
                # the client sees a truncated body and retries.
                log.error("media %s: file shorter than its record", record.id)
                return
            left -= len(data)
            yield data
    finally:
        file.close()  # a read-only file: nothing to flush, so this does not block
