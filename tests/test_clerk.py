"""Clerk mode: session JWTs verified locally, Svix-signed user webhooks, deleted users.

Tokens are minted here with RSA keys generated for the test (PyJWT, or by hand
for the forgeries PyJWT will not make); the JWKS comes from a real HTTP server
on 127.0.0.1:0 that counts its requests; webhooks are signed with the
`standardwebhooks` reference library. Each test runs a real server on port 0
under an absolute `trio.fail_after`. Refusals are checked over REST (401) and
at the WebSocket handshake (HTTP 401, never accepted).
"""

from __future__ import annotations

import base64
import contextlib
import functools
import hashlib
import hmac
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jwt
import orjson
import pytest
import trio
import trio_websocket
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm
from standardwebhooks import Webhook

from messageai import cli
from messageai.config import ConfigError, parse_config
from tests.helpers import (
    Harness,
    assert_error,
    connect_ws,
    harness,
    make_config,
    raw_websocket_handshake,
)

ISSUER = "https://clerk.example.test"
APP_ORIGIN = "https://chat.example.test"
TEST_TIMEOUT_SECONDS = 30


# ---------------------------------------------------------------- keys and tokens


@functools.cache
def private_key(name: str) -> rsa.RSAPrivateKey:
    """One generated key per name, shared by the tests of this module (generation is slow)."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def public_pem(name: str) -> str:
    return (
        private_key(name)
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def jwk(name: str, kid: str) -> dict[str, Any]:
    return {**RSAAlgorithm.to_jwk(private_key(name).public_key(), as_dict=True), "kid": kid,
            "use": "sig", "alg": "RS256"}  # fmt: skip


def claims(**changes: Any) -> dict[str, Any]:
    now = int(time.time())
    base: dict[str, Any] = {
        "iss": ISSUER,
        "sub": "user_2abcDEF123",
        "sid": "sess_2xyz",
        "azp": APP_ORIGIN,
        "iat": now - 10,
        "nbf": now - 10,
        "exp": now + 60,
    }
    base.update(changes)
    return {k: v for k, v in base.items() if v is not None}


def token(key: str = "main", kid: str = "kid-1", **changes: Any) -> str:
    return jwt.encode(claims(**changes), private_key(key), algorithm="RS256", headers={"kid": kid})


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def handmade(
    header: dict[str, Any], payload: dict[str, Any], sign: Callable[[bytes], bytes]
) -> str:
    """A JWT built by hand, for algorithms no library will sign with on purpose."""
    signing_input = f"{_b64(orjson.dumps(header))}.{_b64(orjson.dumps(payload))}"
    return f"{signing_input}.{_b64(sign(signing_input.encode()))}"


# ---------------------------------------------------------------- a JWKS endpoint


class JwksServer:
    """A real HTTP/1.1 server on loopback that serves `document` and counts requests."""

    def __init__(self, *keys: dict[str, Any]) -> None:
        self.document: dict[str, Any] = {"keys": list(keys)}
        self.requests = 0
        self.port: int | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/.well-known/jwks.json"

    async def run(self, *, task_status: trio.TaskStatus[JwksServer]) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started(self)
        await trio.serve_listeners(self._serve, listeners)

    async def _serve(self, stream: trio.SocketStream) -> None:
        async with stream:
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = await stream.receive_some(65536)
                if not chunk:
                    return
                head += chunk
            assert head.startswith(b"GET /.well-known/jwks.json HTTP/1.1\r\n"), head
            self.requests += 1
            body = orjson.dumps(self.document)
            await stream.send_all(
                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(body), body)
            )


# ---------------------------------------------------------------- servers under test


@contextlib.asynccontextmanager
async def clerk_server(tmp_path: Path, **clerk: Any) -> AsyncIterator[Harness]:
    settings = {"issuer": ISSUER, "authorized_parties": [APP_ORIGIN], **clerk}
    if "jwks_url" not in settings:
        settings.setdefault("jwt_public_key", public_pem("main"))
    config = make_config(tmp_path / "data", auth={"mode": "clerk"}, clerk=settings)
    with trio.fail_after(TEST_TIMEOUT_SECONDS):
        async with harness(config) as h:
            yield h


@contextlib.asynccontextmanager
async def jwks_server(*keys: dict[str, Any]) -> AsyncIterator[JwksServer]:
    async with trio.open_nursery() as nursery:
        server: JwksServer = await nursery.start(JwksServer(*keys).run)
        yield server
        nursery.cancel_scope.cancel()


def bearer(value: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {value}"}


async def me(h: Harness, value: str) -> Any:
    return await h.http.get("/v1/me", headers=bearer(value))


async def handshake_status(h: Harness, value: str) -> int:
    status, body = await raw_websocket_handshake(
        h.url, "/v1/ws", {"Authorization": f"Bearer {value}"}
    )
    if status != 101:
        assert orjson.loads(body)["error"]["code"] in ("unauthorized", "unavailable"), body
    return status


async def assert_refused(h: Harness, value: str) -> None:
    assert_error(await me(h, value), 401, "unauthorized")
    assert await handshake_status(h, value) == 401


# ---------------------------------------------------------------- tokens: accepted


async def test_first_valid_token_creates_the_user_with_clerks_id(tmp_path: Path) -> None:
    async with clerk_server(tmp_path) as h:
        r = await me(h, token())
        assert r.status_code == 200, r.text
        user = r.json()
        assert user["id"] == "user_2abcDEF123"
        assert set(user) == {"id", "username", "display_name", "created_at", "bot"}
        # The same user on a second token and on the WebSocket, and still one user.
        assert (await me(h, token(sid="sess_other"))).json()["id"] == user["id"]
        assert await handshake_status(h, token()) == 101
        r = await h.http.get("/v1/users", params={"q": "user_2abc"}, headers=bearer(token()))
        assert [u["id"] for u in r.json()["users"]] == [user["id"]]


async def test_websocket_works_with_a_clerk_token_in_the_query(tmp_path: Path) -> None:
    async with clerk_server(tmp_path) as h:
        assert h.server.port is not None
        async with connect_ws(h.server.port, query=f"?access_token={token()}") as conn:
            await conn.send_message(orjson.dumps({"type": "ping", "req": 1}).decode())
            assert orjson.loads(await conn.get_message()) == {"type": "pong", "req": 1}


async def test_exp_and_nbf_allow_the_configured_leeway(tmp_path: Path) -> None:
    now = int(time.time())
    async with clerk_server(tmp_path, leeway_seconds=30) as h:
        assert (await me(h, token(exp=now - 10))).status_code == 200
        assert (await me(h, token(nbf=now + 10, iat=now))).status_code == 200
        await assert_refused(h, token(exp=now - 60))
        await assert_refused(h, token(nbf=now + 60, iat=now))


async def test_azp_is_checked_only_when_the_token_has_one(tmp_path: Path) -> None:
    async with clerk_server(tmp_path) as h:
        assert (await me(h, token(azp=None))).status_code == 200  # native apps send none
        assert (await me(h, token(azp=APP_ORIGIN))).status_code == 200
        await assert_refused(h, token(azp="https://evil.example.test"))
    async with clerk_server(tmp_path, authorized_parties=[]) as h:
        assert (await me(h, token(azp="https://any.example.test"))).status_code == 200


# ---------------------------------------------------------------- tokens: refused


def _refused_tokens() -> dict[str, str]:
    now = int(time.time())
    pem = public_pem("main").encode()
    none_header = {"alg": "none", "typ": "JWT", "kid": "kid-1"}
    hs_header = {"alg": "HS256", "typ": "JWT", "kid": "kid-1"}
    return {
        "expired": token(exp=now - 120, iat=now - 300, nbf=now - 300),
        "not yet valid": token(nbf=now + 120, iat=now),
        "wrong issuer": token(iss="https://clerk.attacker.test"),
        "issuer prefix": token(iss=ISSUER + ".attacker.test"),
        "wrong azp": token(azp="https://evil.example.test"),
        "no sid": token(sid=None),
        "no sub": token(sub=None),
        "no exp": token(exp=None),
        "signed by another key": token(key="other"),
        "alg none": handmade(none_header, claims(), lambda _: b""),
        "alg none, dangling dot": handmade(none_header, claims(), lambda _: b"")[:-1] + ".",
        "HS256 with the public key": handmade(
            hs_header, claims(), lambda data: hmac.new(pem, data, hashlib.sha256).digest()
        ),
        "RS512": jwt.encode(claims(), private_key("main"), algorithm="RS512"),
        "changed payload": _swap_payload(token(), claims(sub="user_victim")),
        "garbage": "not.a.jwt",
        "huge": "a" * 10_000,
    }


def _swap_payload(good: str, payload: dict[str, Any]) -> str:
    header, _, signature = good.split(".")
    return f"{header}.{_b64(orjson.dumps(payload))}.{signature}"


REFUSED = list(_refused_tokens())


@pytest.mark.parametrize("case", REFUSED)
async def test_bad_tokens_are_refused_over_rest_and_websocket(tmp_path: Path, case: str) -> None:
    bad = _refused_tokens()[case]
    async with clerk_server(tmp_path) as h:
        await assert_refused(h, bad)
        # Nothing was created by the refused token; a good one still works.
        assert (await me(h, token())).status_code == 200
        r = await h.http.get("/v1/users", params={"q": "user_"}, headers=bearer(token()))
        assert [u["id"] for u in r.json()["users"]] == ["user_2abcDEF123"]


# ---------------------------------------------------------------- JWKS


async def test_jwks_keys_are_fetched_once_and_cached(tmp_path: Path) -> None:
    async with (
        jwks_server(jwk("main", "kid-1")) as keys,
        clerk_server(tmp_path, jwks_url=keys.url) as h,
    ):
        for _ in range(3):
            assert (await me(h, token(kid="kid-1"))).status_code == 200
        assert await handshake_status(h, token(kid="kid-1")) == 101
        assert keys.requests == 1


async def test_unknown_kid_is_refused_and_refetches_are_rate_limited(tmp_path: Path) -> None:
    async with (
        jwks_server(jwk("main", "kid-1")) as keys,
        clerk_server(tmp_path, jwks_url=keys.url, jwks_refresh_seconds=3600) as h,
    ):
        assert (await me(h, token(kid="kid-1"))).status_code == 200
        assert keys.requests == 1
        # A made-up kid, and a real key the JWKS does not list: refused, no refetch storm.
        for n in range(5):
            await assert_refused(h, token(kid=f"kid-made-up-{n}"))
        await assert_refused(h, token(key="other", kid="kid-2"))
        assert keys.requests == 1
        # A token with no kid at all cannot pick a JWKS key.
        no_kid = jwt.encode(claims(), private_key("main"), algorithm="RS256")
        await assert_refused(h, no_kid)


async def test_rotated_key_is_fetched_on_its_first_token(tmp_path: Path) -> None:
    async with (
        jwks_server(jwk("main", "kid-1")) as keys,
        clerk_server(tmp_path, jwks_url=keys.url, jwks_refresh_seconds=0.001) as h,
    ):
        assert (await me(h, token(kid="kid-1"))).status_code == 200
        keys.document["keys"] = [jwk("other", "kid-2")]
        await trio.sleep(0.01)  # past the (tiny) refetch interval, not a timed assertion
        assert (await me(h, token(key="other", kid="kid-2"))).status_code == 200
        assert keys.requests == 2
        # kid-1 is gone from the JWKS: its tokens are refused from the refetch on.
        await trio.sleep(0.01)
        assert_error(await me(h, token(kid="kid-1")), 401, "unauthorized")
        assert keys.requests == 3


async def test_unreachable_jwks_answers_503_not_401(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/.well-known/jwks.json"
    async with clerk_server(tmp_path, jwks_url=url, jwks_refresh_seconds=0.001) as h:
        assert_error(await me(h, token()), 503, "unavailable")
        await trio.sleep(0.01)
        assert await handshake_status(h, token()) == 503


async def test_jwks_without_usable_keys_refuses_tokens(tmp_path: Path) -> None:
    hs_key = {"kty": "oct", "kid": "kid-1", "k": _b64(b"secret" * 6)}
    rs512 = {**jwk("main", "x"), "alg": "RS512"}
    async with (
        jwks_server(hs_key, rs512) as keys,
        clerk_server(tmp_path, jwks_url=keys.url) as h,
    ):
        await assert_refused(h, token(kid="kid-1"))
        await assert_refused(h, token(kid="x"))


# ---------------------------------------------------------------- local accounts are off


async def test_local_accounts_are_off_register_and_login_403_logout_a_no_op(tmp_path: Path) -> None:
    async with clerk_server(tmp_path) as h:
        body = {"username": "mallory", "password": "password1"}
        assert_error(await h.http.post("/v1/auth/register", json=body), 403, "forbidden")
        assert_error(await h.http.post("/v1/auth/login", json=body), 403, "forbidden")
        # Logout revokes nothing (the session ends at Clerk) and the token keeps working.
        assert (await h.http.post("/v1/auth/logout", headers=bearer(token()))).status_code == 204
        assert (await me(h, token())).status_code == 200


# ---------------------------------------------------------------- webhooks

SECRET = "whsec_" + base64.b64encode(b"clerk-webhook-test-secret-24b").decode()


def signed(
    event: dict[str, Any] | bytes,
    *,
    message_id: str | None = None,
    at: float | None = None,
    secret: str = SECRET,
) -> tuple[bytes, dict[str, str]]:
    """A webhook body and the svix-* headers Clerk would send, signed by the library."""
    body = event if isinstance(event, bytes) else orjson.dumps(event)
    message_id = message_id or f"msg_{uuid.uuid4().hex}"
    when = datetime.fromtimestamp(int(at if at is not None else time.time()), tz=UTC)
    signature = Webhook(secret).sign(message_id, when, body.decode())
    headers = {
        "svix-id": message_id,
        "svix-timestamp": str(int(when.timestamp())),
        "svix-signature": signature,
        "content-type": "application/json",
    }
    return body, headers


def user_event(kind: str, user_id: str = "user_2abcDEF123", **data: Any) -> dict[str, Any]:
    payload: dict[str, Any] = {"id": user_id, "object": "user"}
    if kind != "user.deleted":
        payload.update(
            username="ada", first_name="Ada", last_name="Lovelace", created_at=1764150000000
        )
    else:
        payload["deleted"] = True
    payload.update(data)
    return {"type": kind, "object": "event", "data": payload}


async def post_webhook(h: Harness, body: bytes, headers: dict[str, str]) -> Any:
    return await h.http.post("/v1/webhooks/clerk", content=body, headers=headers)


async def profile(h: Harness, user_id: str) -> Any:
    r = await h.http.get(f"/v1/users/{user_id}", headers=bearer(token(sub="user_observer")))
    return r.json() if r.status_code == 200 else r.status_code


@contextlib.asynccontextmanager
async def webhook_server(tmp_path: Path) -> AsyncIterator[Harness]:
    async with clerk_server(tmp_path, webhook_secret=SECRET) as h:
        yield h


async def test_user_created_and_updated_keep_the_profile_in_step(tmp_path: Path) -> None:
    async with webhook_server(tmp_path) as h:
        r = await post_webhook(h, *signed(user_event("user.created")))
        assert r.status_code == 200 and r.json() == {"status": "applied"}, r.text
        assert await profile(h, "user_2abcDEF123") == {
            "id": "user_2abcDEF123",
            "username": "ada",
            "display_name": "Ada Lovelace",
            "created_at": 1764150000000,
            "bot": False,
        }
        r = await post_webhook(h, *signed(user_event("user.updated", first_name="Augusta Ada")))
        assert r.json() == {"status": "applied"}
        assert (await profile(h, "user_2abcDEF123"))["display_name"] == "Augusta Ada Lovelace"
        # The user's own token now shows the profile from the webhook.
        assert (await me(h, token())).json()["username"] == "ada"


async def test_several_v1_signatures_are_allowed_and_other_versions_skipped(
    tmp_path: Path,
) -> None:
    async with webhook_server(tmp_path) as h:
        body, headers = signed(user_event("user.created"))
        wrong = signed(
            user_event("user.created"), secret="whsec_" + base64.b64encode(os.urandom(24)).decode()
        )[1]
        good = headers["svix-signature"]
        headers["svix-signature"] = f"v2,{good[3:]} {wrong['svix-signature']} v1,!!! {good}"
        r = await post_webhook(h, body, headers)
        assert r.json() == {"status": "applied"}, r.text


def _forgeries() -> dict[str, tuple[bytes, dict[str, str]]]:
    event = user_event("user.created")
    body, headers = signed(event)
    flipped = bytearray(body)
    flipped[body.index(b"ada")] ^= 0x01
    other_secret = "whsec_" + base64.b64encode(os.urandom(24)).decode()
    return {
        "forged signature": signed(event, secret=other_secret),
        "one changed body byte": (bytes(flipped), headers),
        "stale timestamp": signed(event, at=time.time() - 6 * 60),
        "future timestamp": signed(event, at=time.time() + 6 * 60),
        "timestamp changed after signing": (
            body,
            {**headers, "svix-timestamp": str(int(headers["svix-timestamp"]) - 1)},
        ),
        "id changed after signing": (body, {**headers, "svix-id": "msg_other"}),
        "no signature header": (body, {k: v for k, v in headers.items() if k != "svix-signature"}),
        "signature only of another version": (
            body,
            {**headers, "svix-signature": "v2," + headers["svix-signature"][3:]},
        ),
        "not base64": (body, {**headers, "svix-signature": "v1,@@@@"}),
    }


@pytest.mark.parametrize("case", list(_forgeries()))
async def test_webhook_with_a_bad_signature_is_refused_and_changes_nothing(
    tmp_path: Path, case: str
) -> None:
    body, headers = _forgeries()[case]
    async with webhook_server(tmp_path) as h:
        assert_error(await post_webhook(h, body, headers), 401, "unauthorized")
        assert await profile(h, "user_2abcDEF123") == 404
        # The refused message's id was not used up.
        good_body, good_headers = signed(
            user_event("user.created"), message_id=headers.get("svix-id", "msg_x")
        )
        assert (await post_webhook(h, good_body, good_headers)).json() == {"status": "applied"}


async def test_replayed_svix_id_is_applied_once(tmp_path: Path) -> None:
    async with webhook_server(tmp_path) as h:
        first = signed(user_event("user.created"), message_id="msg_once")
        assert (await post_webhook(h, *first)).json() == {"status": "applied"}
        # The same delivery again, and a retry of the same id signed anew with other content.
        assert (await post_webhook(h, *first)).json() == {"status": "duplicate"}
        retry = signed(user_event("user.updated", first_name="Mallory"), message_id="msg_once")
        assert (await post_webhook(h, *retry)).json() == {"status": "duplicate"}
        assert (await profile(h, "user_2abcDEF123"))["display_name"] == "Ada Lovelace"
        fresh = signed(user_event("user.updated", first_name="Countess"))
        assert (await post_webhook(h, *fresh)).json() == {"status": "applied"}
        assert (await profile(h, "user_2abcDEF123"))["display_name"] == "Countess Lovelace"


async def test_signed_but_malformed_events_are_400_and_ignored_types_200(tmp_path: Path) -> None:
    async with webhook_server(tmp_path) as h:
        assert_error(await post_webhook(h, *signed(b"{not json")), 400, "bad_request")
        bad = {"type": "user.created", "data": {"id": 42}}
        assert_error(await post_webhook(h, *signed(bad)), 400, "bad_request")
        bad = {"type": "user.deleted", "data": "user_2abcDEF123"}
        assert_error(await post_webhook(h, *signed(bad)), 400, "bad_request")
        other = {"type": "session.created", "data": {"id": "sess_1"}}
        assert (await post_webhook(h, *signed(other))).json() == {"status": "ignored"}
        assert await profile(h, "user_2abcDEF123") == 404


async def test_webhook_route_is_absent_in_local_mode_and_without_a_secret(
    tmp_path: Path,
) -> None:
    with trio.fail_after(TEST_TIMEOUT_SECONDS):
        async with harness(make_config(tmp_path / "local")) as h:
            body, headers = signed(user_event("user.created"))
            assert_error(await post_webhook(h, body, headers), 404, "not_found")
    async with clerk_server(tmp_path) as h:
        assert_error(await post_webhook(h, body, headers), 404, "not_found")


# ---------------------------------------------------------------- deletion


async def test_user_deleted_closes_live_connections_and_later_tokens_fail(
    tmp_path: Path,
) -> None:
    async with webhook_server(tmp_path) as h:
        assert h.server.port is not None
        before = token()
        assert (await me(h, before)).status_code == 200
        async with (
            connect_ws(h.server.port, token=before) as doomed,
            connect_ws(h.server.port, token=token(sub="user_bystander")) as bystander,
        ):
            await doomed.send_message('{"type": "ping", "req": 1}')
            assert orjson.loads(await doomed.get_message())["type"] == "pong"
            r = await post_webhook(h, *signed(user_event("user.deleted")))
            assert r.json() == {"status": "applied"}, r.text
            with pytest.raises(trio_websocket.ConnectionClosed) as closed:
                await doomed.get_message()
            reason = closed.value.reason
            assert reason is not None
            assert (reason.code, reason.reason) == (1008, "account deleted")
            # Someone else's connection is untouched.
            await bystander.send_message('{"type": "ping", "req": 2}')
            assert orjson.loads(await bystander.get_message())["type"] == "pong"
        # The token from before and one minted after are both refused now.
        await assert_refused(h, before)
        await assert_refused(h, token(sid="sess_new"))
        # The profile is erased, and a late user.updated does not bring the user back.
        assert (await profile(h, "user_2abcDEF123"))["display_name"] == "Deleted user"
        late = await post_webhook(h, *signed(user_event("user.updated")))
        assert late.status_code == 200
        await assert_refused(h, token())


async def test_deletion_of_a_user_never_seen_still_refuses_their_tokens(tmp_path: Path) -> None:
    async with webhook_server(tmp_path) as h:
        r = await post_webhook(h, *signed(user_event("user.deleted", user_id="user_gone")))
        assert r.json() == {"status": "applied"}
        await assert_refused(h, token(sub="user_gone"))


# ---------------------------------------------------------------- config


@pytest.mark.parametrize(
    ("clerk", "named"),
    [
        ({"jwt_public_key": "PEM"}, "clerk.issuer"),
        ({"issuer": ISSUER}, "clerk.jwt_public_key and clerk.jwks_url"),
        (
            {"issuer": ISSUER, "jwt_public_key": "PEM", "jwks_url": "https://a.test/jwks"},
            "clerk.jwt_public_key and clerk.jwks_url",
        ),
        ({"issuer": ISSUER, "jwt_public_key": "not a key"}, "clerk.jwt_public_key"),
        ({"issuer": ISSUER, "jwks_url": "http://clerk.example.test/jwks"}, "clerk.jwks_url"),
        (
            {"issuer": ISSUER, "jwt_public_key": "PEM", "webhook_secret": "hunter2"},
            "clerk.webhook_secret",
        ),
        ({"issuer": ISSUER, "jwt_public_key": "PEM", "leeway_seconds": -1}, "clerk.leeway_seconds"),
        (
            {"issuer": ISSUER, "jwt_public_key": "PEM", "authorized_parties": "x"},
            "clerk.authorized_parties",
        ),
        ({"issuer": ISSUER, "jwt_public_key": "PEM", "audience": "x"}, "clerk.audience"),
    ],
)
def test_clerk_config_errors_name_the_key(clerk: dict[str, Any], named: str) -> None:
    if clerk.get("jwt_public_key") == "PEM":
        clerk = {**clerk, "jwt_public_key": public_pem("main")}
    with pytest.raises(ConfigError) as raised:
        parse_config({"auth": {"mode": "clerk"}, "clerk": clerk})
    assert named in str(raised.value)


def test_a_small_rsa_key_is_refused_by_the_config() -> None:
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    pem = small.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    with pytest.raises(ConfigError, match=r"clerk\.jwt_public_key: must be an RSA public key"):
        parse_config({"clerk": {"jwt_public_key": pem.decode()}})


def test_cli_user_add_is_refused_in_clerk_mode(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "clerk.toml"
    config.write_text(
        f'[auth]\nmode = "clerk"\n[clerk]\nissuer = "{ISSUER}"\n'
        f'jwt_public_key = """\n{public_pem("main")}"""\n'
    )
    password = tmp_path / "password"
    password.write_text("password1\n")
    argv = ["user", "add", "ada", "--password-file", str(password)]
    data = ["--config", str(config), "--data-dir", str(tmp_path / "data")]
    assert cli.main([*argv, *data]) == 1
    assert 'local accounts are off with auth.mode = "clerk"' in capsys.readouterr().err
    # Nothing was created: not even the directory database that a list would read.
    assert cli.main(["user", "list", *data]) == 1
    assert "no directory database" in capsys.readouterr().err
    assert not (tmp_path / "data").exists()
