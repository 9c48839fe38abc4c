"""Push notifications through the Expo Push API: device tokens, and the push task that
turns committed messages into notifications, sends them, records tickets, fetches
receipts and forgets dead tokens. REST handlers call `register`/`unregister`; actors
call `notify` after a commit (never waiting); the server runs `Push.run` in its nursery.
Badges come from the conversations' actors (the `unread` callable the server gives,
the same `Summary` the conversation list uses): push never opens a conversation file.

Channels: `notify` puts a message on a bounded channel with `send_nowait` (a full
channel drops the message and counts it: an ack is never delayed); the builder turns
waiting messages into notifications and hands batches of up to 100 to
`max_concurrent_requests` sender tasks over an unbuffered channel, so a slow endpoint
slows the builder, which fills the bounded channel, which drops. The builder reads
the directory inline, one query per message for every member's tokens, and yields
to the loop between messages; request bodies are gzipped in a worker thread.
"""

from __future__ import annotations

import gzip
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any

import attrs
import httpx
import orjson
import trio

from messageai.backoff import Backoff, parse_retry_after
from messageai.config import Config
from messageai.errors import BadRequest, MessageAIError
from messageai.model import Message, now_ms
from messageai.services.directory import Directory
from messageai.store import push as sql
from messageai.threads import blocking

log = logging.getLogger(__name__)

TOKEN_RE = re.compile(r"(ExponentPushToken|ExpoPushToken)\[[A-Za-z0-9_-]{1,200}\]")
MAX_PLATFORM_CHARS = 32
# Expo's limits: 100 notifications per send request, 1000 ids per receipts request,
# 4096 bytes per notification.
SEND_BATCH = 100
RECEIPT_BATCH = 1000
MAX_PAYLOAD_BYTES = 4096
# Messages the builder takes from the queue at once.
BUILD_BATCH = 100
# The badge asks at most this many of a user's conversations for their unread count:
# its cost stays bounded however many conversations a user has.
BADGE_MAX_CONVERSATIONS = 200
# gzip level of request bodies: 1 compresses 100 notifications of 4 KiB of text in
# ~6 ms against ~28 ms at 9, for ~20 % more bytes (measured; see the README).
GZIP_LEVEL = 1
# Tickets whose receipt never came are forgotten after a day (Expo keeps them that long).
TICKET_KEEP_MS = 86400 * 1000


@attrs.frozen
class Notification:
    token: str
    payload: dict[str, Any]


@attrs.define
class Counters:
    """What the push task did since start-up (for logs, tests and operators)."""

    dropped: int = 0  # messages not turned into notifications: the queue was full
    sent: int = 0  # notifications accepted by the endpoint (status "ok" tickets)
    failed: int = 0  # notifications given up on (errors, retries exhausted)
    retries: int = 0  # requests repeated after 429, 5xx or a network error
    removed_tokens: int = 0  # tokens removed after DeviceNotRegistered
    receipts: int = 0  # receipts read


# (conversation id, user id) -> the user's unread count there, as the conversation
# list shows it. May raise MessageAIError (no longer a member, shutting down).
UnreadCount = Callable[[str, str], Awaitable[int]]


def receipts_url(endpoint: str) -> str:
    """Expo's getReceipts URL, the sibling of its send URL."""
    return endpoint.rsplit("/", 1)[0] + "/getReceipts"


def check_token(token: object) -> str:
    if not isinstance(token, str) or not TOKEN_RE.fullmatch(token):
        raise BadRequest('token: must be "ExponentPushToken[…]" or "ExpoPushToken[…]"')
    return token


def fit_payload(payload: dict[str, Any], body: str | None) -> dict[str, Any]:
    """`payload` with `body`, cut (with "…") so the JSON fits MAX_PAYLOAD_BYTES."""
    if body is None:
        return payload
    full = {**payload, "body": body}
    if len(orjson.dumps(full)) <= MAX_PAYLOAD_BYTES:
        return full
    low, high = 0, len(body)
    while low < high:
        mid = (low + high + 1) // 2
        if len(orjson.dumps({**payload, "body": body[:mid] + "…"})) <= MAX_PAYLOAD_BYTES:
            low = mid
        else:
            high = mid - 1
    return {**payload, "body": body[:low] + "…"}


class Push:
    def __init__(
        self,
        config: Config,
        directory: Directory,
        online: Callable[[str], bool],
        unread: UnreadCount,
    ) -> None:
        """`online(user_id)`: whether the user has a live connection now (presence's
        answer, inline); such a member is told by the WebSocket, not by a push."""
        self._config = config
        self._directory = directory
        self._online = online
        self._unread = unread
        self.enabled = bool(config.push.endpoint)
        self.counters = Counters()
        self._send, self._receive = trio.open_memory_channel[Message](config.push.queue_size)
        # Wakes waiters (tests, operators) whenever the push task finished some work.
        self._progress = trio.Event()

    # ------------------------------------------------------------ tokens (REST)

    async def register(self, user_id: str, token: object, platform: object) -> str:
        token = check_token(token)
        if platform is not None and (
            not isinstance(platform, str) or not 1 <= len(platform) <= MAX_PLATFORM_CHARS
        ):
            raise BadRequest(f"platform: a string of 1 to {MAX_PLATFORM_CHARS} characters")
        await self._directory.write(sql.upsert_token, token, user_id, platform, now_ms())
        return token

    async def unregister(self, user_id: str, token: str) -> None:
        """Remove the caller's own token (idempotent; another user's token is untouched)."""
        check_token(token)
        await self._directory.write(sql.delete_token, token, user_id)

    def tokens_of(self, user_id: str) -> list[str]:
        return self._directory.read(sql.tokens_of, user_id)

    # ------------------------------------------------------------ the actor's side

    def notify(self, message: Message) -> None:
        """Queue a committed message for notification. Never waits: when the queue is
        full the message is dropped and counted."""
        try:
            self._send.send_nowait(message)
        except (trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError):
            # Full, or the push task has stopped (shutdown): best effort, counted.
            self.counters.dropped += 1

    def queue_depth(self) -> int:
        """Messages waiting to be turned into notifications (for `/metrics`)."""
        return self._send.statistics().current_buffer_used

    # ------------------------------------------------------------ the push task

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The push task (only started when `push.endpoint` is set). It restarts itself
        after an unexpected error, keeping what was queued; cancellation (shutdown) drops
        what is in flight (notifications are best effort)."""
        task_status.started()
        # The queue outlives restarts of `_serve`; the task owns both ends and closes
        # them when it stops, so a late `notify` is counted as dropped, not queued.
        with self._send, self._receive:
            while True:
                try:
                    await self._serve()
                except Exception:
                    log.exception("push task failed; restarting")
                    await trio.sleep(self._config.push.retry_base_seconds)

    async def _serve(self) -> None:
        config = self._config.push
        limits = httpx.Limits(max_connections=config.max_concurrent_requests + 1)
        timeout = httpx.Timeout(config.request_timeout_seconds)
        async with (
            httpx.AsyncClient(limits=limits, timeout=timeout) as client,
            trio.open_nursery() as nursery,
        ):
            batches_send, batches_receive = trio.open_memory_channel[list[Notification]](0)
            async with batches_receive:
                for _ in range(config.max_concurrent_requests):
                    nursery.start_soon(self._sender, client, batches_receive.clone())
            nursery.start_soon(self._receipts, client)
            async with batches_send:
                while True:
                    messages = [await self._receive.receive()]
                    while len(messages) < BUILD_BATCH:
                        try:
                            messages.append(self._receive.receive_nowait())
                        except trio.WouldBlock:
                            break
                    notifications = await self._build(messages)
                    for start in range(0, len(notifications), SEND_BATCH):
                        await batches_send.send(notifications[start : start + SEND_BATCH])
                    self._tick()

    async def wait_progress(self) -> None:
        """Wait until the push task next finishes a piece of work (tests poll with it)."""
        await self._progress.wait()

    def _tick(self) -> None:
        self._progress.set()
        self._progress = trio.Event()

    # ------------------------------------------------------------ building

    async def _build(self, messages: list[Message]) -> list[Notification]:
        """One notification per device of every member with no open connection.
        Three indexed reads per message (~1 ms for a group of 1,000 with 500 devices),
        then a checkpoint: other tasks run between messages."""
        notifications: list[Notification] = []
        badges: dict[str, int] = {}
        include = self._config.push.include_content
        for message in messages:
            await trio.lowlevel.checkpoint()
            record = await self._directory.lookup_conversation(message.conversation_id)
            if record is None:
                continue
            sender = await self._directory.lookup_user(message.sender_id)
            sender_name = sender.display_name if sender is not None else "Someone"
            if not include:
                title = "New message"
            elif record.kind == "group" and record.title:
                title = f"{sender_name} in {record.title}"
            else:
                title = sender_name
            devices: dict[str, list[str]] = {}
            for member, token in await self._directory.fetch(sql.member_tokens, record.id):
                if member != message.sender_id:
                    devices.setdefault(member, []).append(token)
            for member, tokens in devices.items():
                if self._online(member):
                    continue
                if member not in badges:
                    badges[member] = await self._badge(member)
                base: dict[str, Any] = {
                    "title": title,
                    "data": {
                        "conversation_id": record.id,
                        "message_id": message.id,
                        "seq": message.seq,
                    },
                    "badge": badges[member],
                    "sound": "default",
                }
                for token in tokens:
                    payload = fit_payload({"to": token, **base}, message.body if include else None)
                    notifications.append(Notification(token, payload))
        return notifications

    async def _badge(self, user_id: str) -> int:
        """The user's unread count over (at most BADGE_MAX_CONVERSATIONS of) their
        conversations: each conversation's actor answers, with the one formula the
        conversation list uses. A conversation that cannot answer counts nothing."""
        total = 0
        for conversation_id in (await self._directory.conversation_ids(user_id))[
            :BADGE_MAX_CONVERSATIONS
        ]:
            try:
                total += await self._unread(conversation_id, user_id)
            except MessageAIError:
                continue  # left it since, or the server is shutting down: no count
        return total

    # ------------------------------------------------------------ sending

    def _headers(self, *, gzipped: bool) -> dict[str, str]:
        headers = {
            "accept": "application/json",
            "accept-encoding": "gzip, deflate",
            "content-type": "application/json",
        }
        if gzipped:
            headers["content-encoding"] = "gzip"
        if self._config.push.access_token:
            headers["authorization"] = f"Bearer {self._config.push.access_token}"
        return headers

    async def _sender(
        self, client: httpx.AsyncClient, batches: trio.MemoryReceiveChannel[list[Notification]]
    ) -> None:
        async with batches:
            async for batch in batches:
                await self._deliver(client, batch)
                self._tick()

    async def _post(
        self, client: httpx.AsyncClient, url: str, body: bytes
    ) -> httpx.Response | None:
        """POST with retries on 429, 5xx and network errors (exponential backoff with
        full jitter, capped at `retry_max_seconds`; a Retry-After is waited at least);
        the final response, or None when every attempt failed."""
        config = self._config.push
        backoff = Backoff(
            min(config.retry_base_seconds, config.retry_max_seconds), config.retry_max_seconds
        )
        for attempt in range(config.max_retries + 1):
            retry_after: float | None = None
            try:
                response = await client.post(url, content=body, headers=self._headers(gzipped=True))
            except httpx.HTTPError as exc:
                log.warning("push: %s failed: %s", url, exc)
            else:
                if response.status_code != 429 and response.status_code < 500:
                    return response
                log.warning("push: %s answered %d", url, response.status_code)
                retry_after = parse_retry_after(response.headers.get("retry-after"))
            if attempt == config.max_retries:
                break
            self.counters.retries += 1
            await trio.sleep(backoff.next_delay(at_least=retry_after or 0.0))
        return None

    async def _deliver(self, client: httpx.AsyncClient, batch: list[Notification]) -> None:
        body = await _gzip(orjson.dumps([n.payload for n in batch]))
        response = await self._post(client, self._config.push.endpoint, body)
        data = _json(response).get("data") if response is not None else None
        if response is None or response.status_code != 200 or not isinstance(data, list):
            if response is not None:
                log.error("push: send refused (%d): %s", response.status_code, response.text[:500])
            self.counters.failed += len(batch)
            return
        tickets: list[tuple[str, str]] = []
        dead: list[str] = []
        for notification, ticket in zip(batch, data, strict=False):
            if not isinstance(ticket, dict):
                self.counters.failed += 1
            elif ticket.get("status") == "ok" and isinstance(ticket.get("id"), str):
                tickets.append((ticket["id"], notification.token))
                self.counters.sent += 1
            else:
                self.counters.failed += 1
                if _error_of(ticket) == "DeviceNotRegistered":
                    dead.append(notification.token)
                else:
                    log.warning("push: ticket error %s", ticket.get("message"))
        await self._directory.write(sql.record_tickets, tickets, dead, now_ms())
        self.counters.removed_tokens += len(dead)

    # ------------------------------------------------------------ receipts

    async def _receipts(self, client: httpx.AsyncClient) -> None:
        delay = self._config.push.receipt_delay_seconds
        while True:
            await trio.sleep(delay)
            try:
                await self.check_receipts(client)
            except Exception:
                # Supervision: tickets stay recorded, so the next round asks again.
                log.exception("push: reading receipts failed; retrying next round")
            self._tick()

    async def check_receipts(self, client: httpx.AsyncClient) -> None:
        """Ask for the receipts of tickets older than `receipt_delay_seconds`, forget the
        tickets that have one, and remove tokens whose receipt says DeviceNotRegistered."""
        now = now_ms()
        cutoff = now - int(self._config.push.receipt_delay_seconds * 1000)
        url = receipts_url(self._config.push.endpoint)
        while True:
            due = await self._directory.fetch(sql.due_tickets, cutoff, RECEIPT_BATCH)
            if not due:
                return
            body = await _gzip(orjson.dumps({"ids": [ticket for ticket, _ in due]}))
            response = await self._post(client, url, body)
            data = _json(response).get("data") if response is not None else None
            if response is None or response.status_code != 200 or not isinstance(data, dict):
                return
            done: list[str] = []
            dead: list[str] = []
            for ticket, token in due:
                receipt = data.get(ticket)
                if not isinstance(receipt, dict):
                    continue  # not ready yet; asked again next round
                done.append(ticket)
                if receipt.get("status") != "ok":
                    if _error_of(receipt) == "DeviceNotRegistered":
                        dead.append(token)
                    else:
                        log.warning("push: receipt error %s", receipt.get("message"))
            await self._directory.write(sql.settle_tickets, done, dead, now - TICKET_KEEP_MS)
            self.counters.receipts += len(done)
            self.counters.removed_tokens += len(dead)
            if len(due) < RECEIPT_BATCH or not done:
                return


def _json(response: httpx.Response | None) -> dict[str, Any]:
    if response is None:
        return {}
    try:
        value = response.json()
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _error_of(ticket: dict[str, Any]) -> str | None:
    details = ticket.get("details")
    error = details.get("error") if isinstance(details, dict) else None
    return error if isinstance(error, str) else None


async def _gzip(data: bytes) -> bytes:
    """A request body, gzipped off the loop (even at level 1, ~6 ms for 400 KB)."""
    return await blocking(gzip.compress, data, compresslevel=GZIP_LEVEL)
