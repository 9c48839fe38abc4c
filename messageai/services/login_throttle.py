"""Failed-login throttling: per account name and per client address, bounded in memory.

`Directory.login` asks `LoginThrottle.check` before it hashes a password and
tells it `failed` or `succeeded` after. After `threshold` failures in a row a key
is locked for `lockout` seconds, doubling with each further failure up to
`lockout_max`; an attempt on a locked key is refused (429 with Retry-After)
without hashing and without extending the lock. Failures are forgotten after
`lockout_max` seconds without one. A success clears the account's count, not
the address's (or one good account would reset an address guessing at others).
Names are counted whether or not such a user exists, so the throttle tells an
attacker nothing about which names are real. IPv6 addresses count by their /64.

At most `max_entries` keys are kept; the least recently failed is forgotten
first (an entry is about 200 bytes). Runs on the event loop only: no lock.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict

import attrs
import trio

from messageai.counters import COUNTS
from messageai.errors import RateLimited


@attrs.define
class _Entry:
    failures: int = 0
    last_failure: float = 0.0
    locked_until: float = 0.0


class Counter:
    """Failure counts for one kind of key (account names, or client addresses)."""

    def __init__(
        self, threshold: int, lockout: float, lockout_max: float, max_entries: int
    ) -> None:
        # threshold 0: this kind of key is not limited.
        self._threshold = threshold
        self._lockout = lockout
        self._lockout_max = lockout_max
        self._max_entries = max_entries
        self._entries: OrderedDict[str, _Entry] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def wait(self, key: str, now: float) -> float:
        """Seconds until `key` may try again (0: now)."""
        entry = self._entries.get(key)
        return 0.0 if entry is None else max(0.0, entry.locked_until - now)

    def failed(self, key: str, now: float) -> None:
        if self._threshold == 0:
            return
        entry = self._entries.pop(key, None) or _Entry()
        if now - entry.last_failure > self._lockout_max:
            entry.failures = 0
        entry.failures += 1
        entry.last_failure = now
        if entry.failures >= self._threshold:
            doublings = min(entry.failures - self._threshold, 30)
            entry.locked_until = now + min(self._lockout_max, self._lockout * 2**doublings)
        self._entries[key] = entry  # most recently failed last
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)

    def clear(self, key: str) -> None:
        self._entries.pop(key, None)


def address_key(address: str) -> str:
    """The key an address is counted under: an IPv4 address itself, an IPv6 address's
    /64 (one host usually holds a whole /64, so a /128 key would be free to change)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


class LoginThrottle:
    def __init__(
        self,
        *,
        per_account: int,
        per_address: int,
        lockout_seconds: float,
        lockout_max_seconds: float,
        max_entries: int,
    ) -> None:
        self.accounts = Counter(per_account, lockout_seconds, lockout_max_seconds, max_entries)
        self.addresses = Counter(per_address, lockout_seconds, lockout_max_seconds, max_entries)

    def check(self, username: str, address: str | None) -> None:
        """Raise RateLimited (with the wait) if the account or the address is locked."""
        now = trio.current_time()
        wait = self.accounts.wait(username, now)
        if address is not None:
            wait = max(wait, self.addresses.wait(address_key(address), now))
        if wait > 0:
            COUNTS.rate_limited["logins"] += 1
            raise RateLimited("too many failed logins: retry later", retry_after_seconds=wait)

    def failed(self, username: str, address: str | None) -> None:
        now = trio.current_time()
        self.accounts.failed(username, now)
        if address is not None:
            self.addresses.failed(address_key(address), now)

    def succeeded(self, username: str) -> None:
        self.accounts.clear(username)
