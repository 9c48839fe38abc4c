"""The client's address behind a reverse proxy (`server.trusted_proxies`,
`edge.client_address`): X-Forwarded-For is believed only from a trusted peer and only
up to the first untrusted hop; from anyone else it is ignored. Seen end to end through
the per-address login lockout, which counts the address a request resolves to."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from messageai.config import ConfigError, parse_config
from messageai.edge.client_address import ClientAddress
from tests.helpers import Harness, harness, make_config

LOCK = {"login_failures_per_account": 0, "login_failures_per_address": 3}


def test_the_header_is_read_right_to_left_through_trusted_hops_only() -> None:
    behind = ClientAddress(["10.0.0.0/8", "127.0.0.1"])
    assert behind.resolve("10.1.2.3", "203.0.113.9") == "203.0.113.9"
    # A client's own header, passed on by the proxy, is left of what the proxy saw.
    assert behind.resolve("127.0.0.1", "1.2.3.4, 203.0.113.9") == "203.0.113.9"
    assert behind.resolve("127.0.0.1", "203.0.113.9, 10.9.9.9") == "203.0.113.9"
    assert behind.resolve("198.51.100.7", "203.0.113.9") == "198.51.100.7"  # not trusted
    assert behind.resolve("127.0.0.1", None) == "127.0.0.1"
    assert behind.resolve("127.0.0.1", "not-an-address") == "127.0.0.1"
    assert ClientAddress([]).resolve("127.0.0.1", "203.0.113.9") == "127.0.0.1"


def test_a_bad_trusted_proxy_is_a_config_error_naming_the_key() -> None:
    with pytest.raises(ConfigError, match=r"server\.trusted_proxies"):
        parse_config({"server": {"trusted_proxies": ["proxy.example.com"]}})


async def _failures(h: Harness, forwarded: list[str]) -> list[int]:
    codes = []
    for address in forwarded:
        r = await h.http.post(
            "/v1/auth/login",
            json={"username": "ada", "password": "wrong password"},
            headers={"X-Forwarded-For": address},
        )
        codes.append(r.status_code)
    return codes


async def test_an_untrusted_peer_cannot_spread_its_failures_over_invented_addresses(
    tmp_path: Path,
) -> None:
    with trio.fail_after(60):
        async with harness(make_config(tmp_path / "data", auth=LOCK)) as h:
            await h.account("ada")
            codes = await _failures(h, [f"203.0.113.{n}" for n in range(5)])
            assert codes[:3] == [401, 401, 401] and codes[3:] == [429, 429]


async def test_behind_a_trusted_proxy_each_client_is_counted_on_its_own(tmp_path: Path) -> None:
    config = make_config(tmp_path / "data", auth=LOCK, server={"trusted_proxies": ["127.0.0.1"]})
    with trio.fail_after(60):
        async with harness(config) as h:
            await h.account("ada")
            assert await _failures(h, [f"203.0.113.{n}" for n in range(5)]) == [401] * 5
            same = await _failures(h, ["198.51.100.1"] * 4)
            assert same == [401, 401, 401, 429]
