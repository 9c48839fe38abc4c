"""Exponential backoff with full jitter, shared by the server (push) and the client SDK.

Imports nothing else of MessageAI, so that both sides may use it. Callers: the push
service's retries of Expo requests, and the client's reconnect loop (`client/sync`).
"""

from __future__ import annotations

import random


class Backoff:
    """Delay n is uniform in [0, cap_n] with cap_n = min(maximum, initial * 2**n) ("full
    jitter": retrying clients spread out instead of arriving together). `reset()` after
    an attempt that worked. A server's Retry-After is a floor: `next_delay(at_least=...)`.
    """

    def __init__(self, initial: float, maximum: float, rng: random.Random | None = None) -> None:
        if not 0 < initial <= maximum:
            raise ValueError("backoff needs 0 < initial <= maximum")
        self.initial = initial
        self.maximum = maximum
        self.attempt = 0
        self._rng = rng or random.Random()

    def cap(self) -> float:
        """The largest delay the next attempt may get."""
        return min(self.maximum, self.initial * 2.0 ** min(self.attempt, 62))

    def next_delay(self, at_least: float = 0.0) -> float:
        """The wait before the next attempt, and count it. `at_least` (a Retry-After)
        raises the delay, but never past `maximum`."""
        delay = self._rng.uniform(0, self.cap())
        self.attempt += 1
        return min(self.maximum, max(delay, at_least))

    def reset(self) -> None:
        self.attempt = 0


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header given in seconds (RFC 9110 also allows an
    HTTP date, which Expo does not send): None when absent or not a number."""
    if value is None:
        return None
    value = value.strip()
    if not value or not value.isascii():
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if seconds >= 0 and seconds == seconds and seconds != float("inf") else None
