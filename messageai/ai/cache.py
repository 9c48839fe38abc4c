"""The assistant's answer cache and the per-user daily token budget, both in memory.

Owned by `ai.assistant.Assistant`. The cache is keyed by what PROTOCOL.md calls
identical (conversation, normalised question, model, `last_rev`), bounded by
`ai.cache_entries` (least recently used first out) and `ai.cache_ttl_seconds`, and an
edit or delete of a message an answer used drops that answer at once (`forget_seq`).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

import attrs
import trio

DAY_SECONDS = 86400


def normalise(question: str) -> str:
    """The question as the cache compares it: trimmed, whitespace collapsed, case folded."""
    return " ".join(question.split()).casefold()


@attrs.frozen
class Cached:
    answer: str
    citations: list[int]
    # Every seq the answer's requests carried: an edit or delete of one drops it.
    used: frozenset[int]
    expires: float


Key = tuple[str, str, str, int]


class AnswerCache:
    def __init__(self, entries: int, ttl_seconds: float) -> None:
        self._entries = entries
        self._ttl = ttl_seconds
        self._answers: OrderedDict[Key, Cached] = OrderedDict()

    def get(self, key: Key) -> Cached | None:
        found = self._answers.get(key)
        if found is None:
            return None
        if found.expires <= trio.current_time():
            del self._answers[key]
            return None
        self._answers.move_to_end(key)
        return found

    def put(self, key: Key, answer: str, citations: list[int], used: set[int]) -> None:
        conversation_id, _, _, last_rev = key
        # Answers over an older state of this conversation can never be asked for again.
        for old in [k for k in self._answers if k[0] == conversation_id and k[3] < last_rev]:
            del self._answers[old]
        self._answers[key] = Cached(
            answer, citations, frozenset(used), trio.current_time() + self._ttl
        )
        self._answers.move_to_end(key)
        while len(self._answers) > self._entries:
            self._answers.popitem(last=False)

    def forget_seq(self, conversation_id: str, seq: int) -> None:
        """Message `seq` was edited or deleted: drop every answer that used it."""
        for key in [
            k for k, v in self._answers.items() if k[0] == conversation_id and seq in v.used
        ]:
            del self._answers[key]

    def forget_conversation(self, conversation_id: str) -> None:
        """The conversation was deleted (`messageai conversation delete`): its answers go."""
        for key in [k for k in self._answers if k[0] == conversation_id]:
            del self._answers[key]

    def __len__(self) -> int:
        return len(self._answers)


class Budget:
    """Tokens each user spent today (UTC); at most one entry per user who asked today.
    `load(day)` reads what was spent on `day` (the directory's `ai_spent`, which the
    assistant writes after each request), on first use and at each new day, so that
    a restart gives nobody a fresh budget."""

    def __init__(self, per_day: int, load: Callable[[int], dict[str, int]] | None = None) -> None:
        self._per_day = per_day
        self._load = load
        self._day = -1
        self._spent: dict[str, int] = {}

    def _today(self) -> int:
        day = int(time.time()) // DAY_SECONDS
        if day != self._day:
            self._day = day
            self._spent = self._load(day) if self._load is not None else {}
        return day

    def seconds_left(self, user_id: str) -> float:
        """0 while the user may spend; else seconds until the budget resets."""
        day = self._today()
        if self._spent.get(user_id, 0) < self._per_day:
            return 0.0
        return max(1.0, (day + 1) * DAY_SECONDS - time.time())

    def spend(self, user_id: str, tokens: int) -> int:
        """Count `tokens` for `user_id` today; returns the day (for the caller's write)."""
        day = self._today()
        self._spent[user_id] = self._spent.get(user_id, 0) + max(0, tokens)
        return day
