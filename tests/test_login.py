"""Local-account login as an attacker probes it, over real HTTP against the real server:
unknown names cost the same scrypt as known ones, and failed logins are throttled
per username and per client address with 429, Retry-After and retry_after_ms.

Real server on 127.0.0.1:0, real SQLite files under tmp_path, an absolute
`trio.fail_after` per test. The lockouts are made short in the config so that
the tests can wait them out on the real clock.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import trio

from messageai import passwords
from messageai.services.login_throttle import Counter, address_key
from tests.helpers import Harness, assert_error, harness, make_config

THROTTLE = {
    "login_failures_per_account": 5,
    "login_failures_per_address": 12,
    "login_lockout_seconds": 0.5,
    "login_lockout_max_seconds": 4.0,
}


@asynccontextmanager
async def started(tmp_path: Path, **auth: Any) -> AsyncIterator[Harness]:
    with trio.fail_after(60):
        async with harness(make_config(tmp_path / "data", auth={**THROTTLE, **auth})) as h:
            yield h


async def login(h: Harness, username: str, password: str) -> httpx.Response:
    return await h.http.post("/v1/auth/login", json={"username": username, "password": password})


def assert_locked(r: httpx.Response) -> float:
    """A 429 rate_limited with Retry-After (whole seconds) and retry_after_ms; the wait."""
    assert r.status_code == 429, r.text
    error = r.json()["error"]
    assert error["code"] == "rate_limited", error
    assert isinstance(error["retry_after_ms"], int) and error["retry_after_ms"] > 0
    assert int(r.headers["retry-after"]) == max(1, math.ceil(error["retry_after_ms"] / 1000))
    return error["retry_after_ms"] / 1000


# ------------------------------------------------------------------ same work either way


async def test_a_login_for_an_unknown_name_runs_one_scrypt_like_a_known_name(
    tmp_path: Path,
) -> None:
    async with started(tmp_path) as h:
        await h.account("ada")
        # Count the scrypt derivations the server runs for each attempt (the server
        # runs in this process). The first unknown-name login also makes the dummy
        # hash once; every later one costs exactly one derivation.
        await login(h, "nobody0", "password1")
        for username in ("ada", "nobody1", "nobody2"):
            before = passwords.scrypt_runs()
            assert_error(await login(h, username, "wrong password"), 401, "unauthorized")
            assert passwords.scrypt_runs() - before == 1, username
        before = passwords.scrypt_runs()
        assert (await login(h, "ada", "password1")).status_code == 200
        assert passwords.scrypt_runs() - before == 1


async def test_unknown_and_known_names_answer_the_same_401(tmp_path: Path) -> None:
    async with started(tmp_path) as h:
        await h.account("ada")
        known = await login(h, "ada", "wrong password")
        unknown = await login(h, "nobody", "wrong password")
        assert known.status_code == unknown.status_code == 401
        assert known.json() == unknown.json()


# ------------------------------------------------------------------ per account


async def test_five_failures_lock_the_account_even_for_the_right_password_then_it_opens(
    tmp_path: Path,
) -> None:
    async with started(tmp_path) as h:
        await h.account("ada")
        for _ in range(5):
            assert_error(await login(h, "ada", "wrong password"), 401, "unauthorized")
        before = passwords.scrypt_runs()
        wait = assert_locked(await login(h, "ada", "password1"))
        assert passwords.scrypt_runs() == before, "a locked attempt is refused before hashing"
        assert 0 < wait <= THROTTLE["login_lockout_seconds"]
        # Another user is not affected.
        await h.account("bob")
        assert (await login(h, "bob", "password1")).status_code == 200
        await trio.sleep(wait + 0.05)
        assert (await login(h, "ada", "password1")).status_code == 200


async def test_each_further_failure_doubles_the_lockout(tmp_path: Path) -> None:
    async with started(tmp_path) as h:
        await h.account("ada")
        for _ in range(5):
            await login(h, "ada", "wrong password")
        first = assert_locked(await login(h, "ada", "wrong password"))
        await trio.sleep(first + 0.05)
        assert_error(await login(h, "ada", "wrong password"), 401, "unauthorized")
        second = assert_locked(await login(h, "ada", "wrong password"))
        assert second > 1.5 * THROTTLE["login_lockout_seconds"], (first, second)


async def test_a_successful_login_resets_the_account_count(tmp_path: Path) -> None:
    async with started(tmp_path) as h:
        await h.account("ada")
        for _ in range(4):
            assert_error(await login(h, "ada", "wrong password"), 401, "unauthorized")
        assert (await login(h, "ada", "password1")).status_code == 200
        for _ in range(4):
            assert_error(await login(h, "ada", "wrong password"), 401, "unauthorized")
        assert (await login(h, "ada", "password1")).status_code == 200


async def test_unknown_names_are_locked_like_known_ones(tmp_path: Path) -> None:
    async with started(tmp_path) as h:
        for _ in range(5):
            assert_error(await login(h, "nobody", "wrong password"), 401, "unauthorized")
        assert_locked(await login(h, "nobody", "wrong password"))


async def test_concurrent_guesses_cannot_slip_past_the_lock(tmp_path: Path) -> None:
    # A lock longer than the test: on a loaded machine 30 queued scrypt hashes can
    # outlast the default 1 s lock, and a guess after it ends is rightly answered 401.
    async with started(tmp_path, login_lockout_seconds=60.0) as h:
        await h.account("ada")
        statuses: list[int] = []

        async def guess() -> None:
            statuses.append((await login(h, "ada", "wrong password")).status_code)

        async with trio.open_nursery() as nursery:
            for _ in range(30):
                nursery.start_soon(guess)
        # Two hashing threads: at most one guess past the fifth can be in flight when
        # the lock starts.
        assert statuses.count(401) <= 6, statuses
        assert statuses.count(429) >= 24, statuses


# ------------------------------------------------------------------ per address


async def test_one_address_guessing_across_names_is_locked_and_a_success_does_not_reset_it(
    tmp_path: Path,
) -> None:
    async with started(tmp_path) as h:
        await h.account("mine")
        for i in range(11):
            assert_error(await login(h, f"victim{i}", "wrong password"), 401, "unauthorized")
            # The attacker's own good account does not clear the address's count.
            assert (await login(h, "mine", "password1")).status_code == 200
        assert_error(await login(h, "victim11", "wrong password"), 401, "unauthorized")
        # Twelve failures from 127.0.0.1: any name is refused now, known or not.
        assert_locked(await login(h, "victim12", "wrong password"))
        assert_locked(await login(h, "mine", "password1"))


async def test_the_limits_can_be_turned_off(tmp_path: Path) -> None:
    async with started(tmp_path, login_failures_per_account=0, login_failures_per_address=0) as h:
        for _ in range(8):
            assert_error(await login(h, "nobody", "wrong password"), 401, "unauthorized")


# ------------------------------------------------------------------ memory bound


def test_the_throttle_keeps_at_most_max_entries_forgetting_the_least_recent_failure() -> None:
    counter = Counter(threshold=1, lockout=10.0, lockout_max=100.0, max_entries=3)
    for i in range(10):
        counter.failed(f"name{i}", now=float(i))
    assert len(counter) == 3
    assert counter.wait("name9", now=9.0) > 0
    assert counter.wait("name0", now=9.0) == 0  # forgotten
    # A failure moves a key to the back: name7 survives the next two newcomers.
    counter.failed("name7", now=10.0)
    counter.failed("new1", now=11.0)
    counter.failed("new2", now=12.0)
    assert counter.wait("name7", now=12.0) > 0 and len(counter) == 3


def test_failures_are_forgotten_after_the_longest_lockout_without_one() -> None:
    counter = Counter(threshold=3, lockout=1.0, lockout_max=10.0, max_entries=10)
    counter.failed("a", now=0.0)
    counter.failed("a", now=1.0)
    counter.failed("a", now=12.0)  # more than 10 s after the last: counts as the first
    assert counter.wait("a", now=12.0) == 0


def test_addresses_count_ipv4_as_is_and_ipv6_by_its_64() -> None:
    assert address_key("192.0.2.7") == "192.0.2.7"
    assert address_key("2001:db8:1:2:aaaa::1") == address_key("2001:db8:1:2:ffff::9")
    assert address_key("2001:db8:1:2::1") == "2001:db8:1:2::/64"
    assert address_key("2001:db8:1:3::1") != address_key("2001:db8:1:2::1")
    assert address_key("::ffff:192.0.2.7") == "192.0.2.7"
    assert address_key("not an address") == "not an address"
