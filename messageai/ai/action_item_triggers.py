"""When action items are extracted: one `ai.action_items` job per conversation per
debounce slot after it was touched.

`ActionItemTriggers.touched(cid)` is called by `ai.action_item_board`: when a list of
items is read while the conversation has messages or changes newer than its last
extraction, and after every committed edit or delete (the registry's `changed` hook,
called by the actor). `sent(message, proactive)` is the registry's `sent` hook: a new
message of a conversation whose switch is on (the actor knows the switch, so a
conversation with it off costs nothing here); it touches with the longer
`message_debounce` slot, so a lively conversation is read once per slot, not once per
message. Neither waits nor fails: the conversation joins a bounded set, and the
triggers' task (started in the actor nursery beside the jobs runner) turns the set
into jobs; each job checks the switch itself, and skips a conversation with nothing
new since its last extraction.

The dedup key is the conversation and the slot (`slot = now // debounce`), and the
job runs at the slot's end, so a burst of touches costs one extraction, and an edit
is followed within `debounce` plus the model's time (PROTOCOL.md: within 60 s). A
delete needs no job to leave the items: `store.action_items` drops the message from
them in the delete's own commit.
"""

from __future__ import annotations

import logging
import time

import trio

from messageai.ai.action_item_job import KIND
from messageai.jobs import JobRefused, Jobs
from messageai.model import Message

log = logging.getLogger(__name__)

# Slot length: an edit is reflected at most this long (plus the model's time) later.
DEBOUNCE_SECONDS = 20.0
# Slot length for new messages: a conversation that goes on talking is read again at
# most this often (each read is a request to the endpoint).
MESSAGE_DEBOUNCE_SECONDS = 120.0
# Conversations waiting to become jobs at most; past it a touch is dropped (and
# counted): the conversation's next message touches it again.
MAX_WAITING = 10_000


class ActionItemTriggers:
    def __init__(
        self,
        jobs: Jobs,
        *,
        debounce_seconds: float = DEBOUNCE_SECONDS,
        message_debounce_seconds: float = MESSAGE_DEBOUNCE_SECONDS,
        max_waiting: int = MAX_WAITING,
    ) -> None:
        self._jobs = jobs
        self._debounce = debounce_seconds
        self._message_debounce = max(message_debounce_seconds, debounce_seconds)
        self._max_waiting = max_waiting
        # Conversation -> its slot length; oldest touch first. An edit's shorter slot
        # wins over a new message's.
        self._waiting: dict[str, float] = {}
        self._wake = trio.Event()
        self.dropped = 0

    def touched(self, conversation_id: str) -> None:
        """Note that `conversation_id` changed; never waits (called on the actor's path)."""
        self._touch(conversation_id, self._debounce)

    def sent(self, message: Message, _proactive: bool) -> None:
        """A new message where the switch is on (the registry's `sent` hook)."""
        self._touch(message.conversation_id, self._message_debounce)

    def _touch(self, conversation_id: str, debounce: float) -> None:
        waiting = self._waiting.get(conversation_id)
        if waiting is not None:
            if debounce < waiting:
                self._waiting[conversation_id] = debounce
            return
        if len(self._waiting) >= self._max_waiting:
            self.dropped += 1
            return
        self._waiting[conversation_id] = debounce
        self._wake.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Turn touches into jobs until cancelled."""
        task_status.started()
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            while self._waiting:
                conversation_id = next(iter(self._waiting))
                debounce = self._waiting.pop(conversation_id)
                await self._enqueue(conversation_id, debounce)

    async def _enqueue(self, conversation_id: str, debounce: float) -> None:
        now = time.time()
        slot = int(now // debounce)
        try:
            await self._jobs.enqueue(
                KIND,
                {"conversation_id": conversation_id},
                dedup_key=f"{conversation_id}:{debounce:g}:{slot}",
                delay_seconds=max(0.0, (slot + 1) * debounce - now),
            )
        except JobRefused as exc:
            # The queue is full or the service is stopping: this slot's extraction is
            # skipped; the conversation's next change tries again.
            log.warning("action items: no job for a conversation (%s)", exc)
