"""The operator's account commands against a running server (`messageai user
disable|enable|reset-password`, `messageai token revoke`, in their own process): REST
refuses the user's tokens at once, each open WebSocket of theirs closes with 1008 at
its next keepalive, a disabled account cannot sign in until enabled, and a reset
password signs the account out everywhere."""

from __future__ import annotations

from pathlib import Path

import trio
import trio_websocket

from tests.helpers import Harness, assert_error, connect_ws, harness, make_config, run_messageai

FAST_KEEPALIVE = {"ping_interval_seconds": 0.2}


async def _login(h: Harness, password: str = "password1") -> int:
    r = await h.http.post("/v1/auth/login", json={"username": "ada", "password": password})
    return r.status_code


async def _closed_with(h: Harness, token: str) -> int | None:
    """Open a WebSocket with `token` and wait for the server to close it; its code."""
    assert h.server.port is not None
    with trio.fail_after(20):
        async with connect_ws(h.server.port, token=token) as ws:
            try:
                while True:
                    await ws.get_message()
            except trio_websocket.ConnectionClosed as closed:
                return closed.reason.code if closed.reason is not None else None
    return None


async def test_disable_ends_every_session_and_sign_in_until_enabled(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with trio.fail_after(90):
        async with harness(make_config(data, server=FAST_KEEPALIVE)) as h:
            ada, bob = await h.account("ada"), await h.account("bob")
            async with trio.open_nursery() as nursery:
                code: list[int | None] = []

                async def watch() -> None:
                    code.append(await _closed_with(h, ada.token))

                nursery.start_soon(watch)
                await trio.sleep(0.3)  # connected
                done = await run_messageai("user", "disable", "ada", "--data-dir", str(data))
                assert done.returncode == 0, done.stderr
                assert "ada disabled; 1 sessions signed out" in done.stdout
            assert code == [1008]
            assert_error(await h.http.get("/v1/me", headers=h.auth(ada)), 401, "unauthorized")
            r = await h.http.post(
                "/v1/auth/login", json={"username": "ada", "password": "password1"}
            )
            assert_error(r, 403, "forbidden")
            # A wrong password is still just wrong: nothing says the account exists.
            assert await _login(h, "not the password") == 401
            assert (await h.http.get("/v1/me", headers=h.auth(bob))).status_code == 200
            done = await run_messageai("user", "enable", "ada", "--data-dir", str(data))
            assert done.returncode == 0 and "ada enabled" in done.stdout
            assert await _login(h) == 200


async def test_reset_password_and_token_revoke_sign_the_user_out(tmp_path: Path) -> None:
    data = tmp_path / "data"
    (tmp_path / "new.pw").write_text("a brand new password\n")
    with trio.fail_after(90):
        async with harness(make_config(data, server=FAST_KEEPALIVE)) as h:
            ada = await h.account("ada")
            done = await run_messageai(
                "user",
                "reset-password",
                "ada",
                "--password-file",
                str(tmp_path / "new.pw"),
                "--data-dir",
                str(data),
            )
            assert done.returncode == 0, done.stderr
            assert "1 sessions signed out" in done.stdout
            assert_error(await h.http.get("/v1/me", headers=h.auth(ada)), 401, "unauthorized")
            assert await _login(h) == 401
            assert await _login(h, "a brand new password") == 200
            r = await h.http.post(
                "/v1/auth/login", json={"username": "ada", "password": "a brand new password"}
            )
            token = r.json()["token"]
            async with trio.open_nursery() as nursery:
                code: list[int | None] = []

                async def watch() -> None:
                    code.append(await _closed_with(h, token))

                nursery.start_soon(watch)
                await trio.sleep(0.3)
                done = await run_messageai("token", "revoke", "ada", "--data-dir", str(data))
                assert done.returncode == 0 and "2 sessions of ada revoked" in done.stdout
            assert code == [1008]
            missing = await run_messageai("token", "revoke", "nobody", "--data-dir", str(data))
            assert missing.returncode == 1 and "no user named 'nobody'" in missing.stderr
