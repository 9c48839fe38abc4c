"""Fuzzing: hypothesis-made WebSocket frames and REST bodies against a real server process.

Random JSON values, mutated valid frames, wrong types in every field, huge numbers,
deep nesting, invalid UTF-8 in text frames: the answer is always a defined frame
(an `error` with a known code other than `internal`, or a valid response) or a
defined close code, never a 500, and a control client is answered after every
example. The server is a child process (`python -m messageai serve`), so a crash
cannot hide; its log must hold no traceback at the end. Examples are bounded
(`max_examples`) so that the module takes a few seconds.
"""

from __future__ import annotations

import json
import os
import re
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import httpx
import orjson
import pytest
import trio
import trio_websocket
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from messageai.protocol import Req, read_req
from tests.helpers import connect_ws

ERROR_CODES = {
    "bad_request",
    "unknown_type",
    "unauthorized",
    "forbidden",
    "not_found",
    "conflict",
    "too_large",
    "rate_limited",
    "unavailable",
}
FRAME_TYPES = {
    "subscribed",
    "ok",
    "pong",
    "ack",
    "history",
    "new_message",
    "message_read",
    "presence_update",
    "typing",
    "unsubscribed",
    "error",
}
# Close codes PROTOCOL.md defines for bad input (and RFC 6455's for bad UTF-8).
BAD_INPUT_CLOSE_CODES = {1003, 1007, 1009}
CONTROL = "__control__"

FUZZ = settings(
    max_examples=60,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@attrs.define
class Live:
    """A running server process and the fixtures the fuzzers aim at."""

    port: int
    log: Path
    token: str
    control_token: str
    cid: str
    process: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@pytest.fixture
def live(tmp_path: Path) -> Iterator[Live]:
    config = tmp_path / "messageai.toml"
    # Many short connections: no per-user cap or rate limit gets in the way of the fuzz.
    config.write_text(
        '[server]\nhost = "127.0.0.1"\nport = 0\n[auth]\nscrypt_n = 16\n'
        "[limits]\nmax_connections_per_user = 10000\nmessage_burst = 1000000\n"
    )
    log = tmp_path / "server.log"
    with log.open("wb") as err:
        process = subprocess.Popen(
            [
                *(sys.executable, "-m", "messageai", "serve"),
                *("--config", str(config), "--data-dir", str(tmp_path / "data")),
            ],
            stdout=subprocess.PIPE,
            stderr=err,
        )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        match = re.search(rb"http://127\.0\.0\.1:(\d+)", line)
        assert match, line
        port = int(match.group(1))
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
            tokens, ids = [], []
            for name in ("ada", "bob", "control"):
                r = http.post("/v1/auth/register", json={"username": name, "password": "password1"})
                tokens.append(r.json()["token"])
                ids.append(r.json()["user"]["id"])
            r = http.post(
                "/v1/conversations",
                json={"kind": "group", "title": "fuzz", "member_ids": [ids[1]]},
                headers={"Authorization": f"Bearer {tokens[0]}"},
            )
            cid = r.json()["id"]
        yield Live(port, log, tokens[0], tokens[2], cid, process)
        assert process.poll() is None, "the server died"
        assert b"Traceback" not in log.read_bytes(), log.read_text(errors="replace")
    finally:
        process.kill()
        process.wait(timeout=10)
        if process.stdout is not None:
            process.stdout.close()


# ------------------------------------------------------------------ strategies

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)  # past 64 bits both ways
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5)
    ),
    max_leaves=20,
)
FIELDS: dict[str, dict[str, Any]] = {
    "subscribe": {"conversation_id": "CID"},
    "unsubscribe": {"conversation_id": "CID"},
    "send_message": {"conversation_id": "CID", "client_id": "k", "body": "hi", "attachments": []},
    "get_history": {"conversation_id": "CID", "after_seq": 0, "before_seq": 5, "limit": 10},
    "mark_read": {"conversation_id": "CID", "seq": 1},
    "typing": {"conversation_id": "CID", "typing": True},
    "ping": {},
}


@st.composite
def mutated_frames(draw: st.DrawFn) -> dict[str, Any]:
    """A valid frame with some of: a field dropped, a field's value replaced by any JSON
    value or a huge number, an extra field, a wrong or odd `type`, an odd `req`."""
    kind = draw(st.sampled_from(sorted(FIELDS)))
    frame: dict[str, Any] = {"type": kind, **FIELDS[kind]}
    for _ in range(draw(st.integers(1, 3))):
        action = draw(st.sampled_from(["drop", "replace", "huge", "extra", "type", "req"]))
        if action in ("drop", "replace", "huge") and frame:
            key = draw(st.sampled_from(sorted(frame)))
            if action == "drop":
                del frame[key]
            elif action == "replace":
                frame[key] = draw(json_values)
            else:
                frame[key] = draw(st.sampled_from([2**63, -(2**63) - 1, 10**30, 2**64, 1e308]))
        elif action == "extra":
            frame[draw(st.text(max_size=8))] = draw(json_values)
        elif action == "type":
            frame["type"] = draw(json_values | st.sampled_from(sorted(FIELDS)))
        else:
            frame["req"] = draw(json_values)
    return frame


def _text(value: Any, cid: str) -> str:
    # The standard library writes integers of any size (orjson stops at 64 bits).
    return json.dumps(value).replace('"CID"', json.dumps(cid))


# ------------------------------------------------------------------ one exchange


@attrs.define
class Outcome:
    responses: list[dict[str, Any]]
    close_code: int | None


async def _exchange(live: Live, text: str, req: Req = None) -> Outcome:
    """Send `text`, then a ping; collect everything up to its pong (or the close) and,
    when `text` carried the usable `req`, up to its answer: a frame that goes to an
    actor may be answered after the ping, which the session answers itself."""
    responses: list[dict[str, Any]] = []
    close_code = None
    with trio.fail_after(10):
        async with connect_ws(live.port, token=live.token) as ws:
            await ws.send_message(text)
            try:
                await ws.send_message(orjson.dumps({"type": "ping", "req": CONTROL}).decode())
                ponged = answered = False
                while not (ponged and (answered or req is None)):
                    frame = orjson.loads(await ws.get_message())
                    if frame.get("req") == CONTROL and frame["type"] == "pong":
                        ponged = True
                        continue
                    answered = answered or (req is not None and frame.get("req") == req)
                    responses.append(frame)
            except trio_websocket.ConnectionClosed as closed:
                assert closed.reason is not None
                close_code = closed.reason.code
        await _control_answers(live)
    return Outcome(responses, close_code)


async def _control_answers(live: Live) -> None:
    async with connect_ws(live.port, token=live.control_token) as control:
        await control.send_message('{"type": "ping", "req": 1}')
        assert orjson.loads(await control.get_message()) == {"type": "pong", "req": 1}


def _assert_defined(outcome: Outcome) -> None:
    if outcome.close_code is not None:
        assert outcome.close_code in BAD_INPUT_CLOSE_CODES, outcome
    for frame in outcome.responses:
        assert frame["type"] in FRAME_TYPES, frame
        if frame["type"] == "error":
            assert frame["code"] in ERROR_CODES, frame
            assert isinstance(frame["message"], str) and frame["message"], frame


# ------------------------------------------------------------------ WebSocket fuzzing


def test_random_json_values_get_an_error_frame(live: Live) -> None:
    @FUZZ
    @given(value=json_values)
    def run(value: Any) -> None:
        outcome = trio.run(_exchange, live, _text(value, live.cid))
        _assert_defined(outcome)
        if not isinstance(value, dict) or value.get("type") not in FIELDS:
            assert [f["type"] for f in outcome.responses] == ["error"], outcome

    run()


def test_mutated_valid_frames_get_a_defined_answer(live: Live) -> None:
    @FUZZ
    @given(frame=mutated_frames())
    def run(frame: dict[str, Any]) -> None:
        outcome = trio.run(_exchange, live, _text(frame, live.cid), read_req(frame))
        _assert_defined(outcome)
        if "req" in frame and outcome.close_code is None:
            # A frame with a req gets exactly one answer (an unreadable req: an error).
            assert outcome.responses, outcome

    run()


def test_wrong_type_in_every_field_of_every_frame_is_bad_request(live: Live) -> None:
    # The wrong JSON values for a field whose good value has this Python type.
    wrong: dict[type, list[object]] = {
        str: [None, 5, 1.5, True, [], {}],
        int: [None, "7", 1.5, True, [], {}],
        bool: [None, "true", 1, [], {}],
        list: [None, "x", 5, {}, [1], [None]],
    }

    async def sweep() -> None:
        async with connect_ws(live.port, token=live.token) as ws:
            sent = 0
            for kind, fields in FIELDS.items():
                for key, good in [("type", kind), *fields.items()]:
                    for bad in wrong[type(good)]:
                        if bad is None and key in ("after_seq", "before_seq"):
                            continue  # null is how an optional cursor is left out
                        frame = {**fields, "type": kind, key: bad, "req": sent}
                        await ws.send_message(_text(frame, live.cid))
                        sent += 1
            answers: dict[int, dict[str, Any]] = {}
            with trio.fail_after(20):
                while len(answers) < sent:
                    frame = orjson.loads(await ws.get_message())
                    if "req" in frame:
                        answers[frame["req"]] = frame
            assert len(answers) == sent
            for frame in answers.values():
                assert frame["type"] == "error", frame
                assert frame["code"] in ("bad_request", "unknown_type"), frame
        await _control_answers(live)

    trio.run(sweep)


def test_deep_nesting_and_huge_numbers_get_errors(live: Live) -> None:
    cases = [
        "[" * 5000 + "]" * 5000,
        '{"a":' * 5000 + "1" + "}" * 5000,
        '{"type": "ping", "req": ' + "[" * 3000 + "]" * 3000 + "}",
        '{"type": "get_history", "conversation_id": "CID", "limit": 1' + "0" * 400 + "}",
        '{"type": "mark_read", "conversation_id": "CID", "seq": 1e999}',
        '{"type": "mark_read", "conversation_id": "CID", "seq": -1e999}',
        '{"type": "mark_read", "conversation_id": "CID", "seq": NaN}',
        '{"type": "get_history", "conversation_id": "CID", "after_seq": 18446744073709551616}',
        '{"type": "ping", "req": 99999999999999999999999}',
    ]
    for text in cases:
        outcome = trio.run(_exchange, live, text.replace("CID", live.cid))
        _assert_defined(outcome)
        assert [f["type"] for f in outcome.responses] == ["error"], (text[:80], outcome)


async def _raw_text_frame(live: Live, payload: bytes) -> bytes:
    """Open a WebSocket by hand, send one masked text frame with `payload` as is, and
    return what the server sends until it ends the connection."""
    head = (
        "GET /v1/ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
        f"Authorization: Bearer {live.token}\r\n\r\n"
    )
    mask = os.urandom(4)
    assert len(payload) < 126
    frame = bytes([0x81, 0x80 | len(payload)]) + mask
    frame += bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    with trio.fail_after(10):
        async with await trio.open_tcp_stream("127.0.0.1", live.port) as stream:
            await stream.send_all(head.encode())
            data = b""
            while b"\r\n\r\n" not in data:
                data += await stream.receive_some(4096)
            assert data.startswith(b"HTTP/1.1 101"), data
            data = data.partition(b"\r\n\r\n")[2]
            await stream.send_all(frame)
            while True:
                try:
                    chunk = await stream.receive_some(4096)
                except trio.BrokenResourceError:
                    return data
                if not chunk:
                    return data
                data += chunk


def test_invalid_utf8_in_a_text_frame_ends_that_connection_only(live: Live) -> None:
    # wsproto refuses the frame; the server sends a 1007 close frame and closes TCP.
    @settings(max_examples=40, deadline=None, database=None)
    @given(payload=st.binary(min_size=1, max_size=100).filter(lambda b: not _is_utf8(b)))
    def run(payload: bytes) -> None:
        rest = trio.run(_raw_text_frame, live, payload)
        assert rest[:1] == b"\x88" and struct.unpack("!H", rest[2:4])[0] == 1007, rest
        trio.run(_control_answers, live)

    run()


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


# ------------------------------------------------------------------ REST fuzzing

REST_TARGETS = [
    ("POST", "/v1/auth/register"),
    ("POST", "/v1/auth/login"),
    ("POST", "/v1/conversations"),
    ("POST", "/v1/conversations/CID/messages"),
    ("POST", "/v1/conversations/CID/members"),
    ("GET", "/v1/conversations/CID/messages"),
    ("GET", "/v1/users"),
    ("POST", "/v1/push-tokens"),
]


def test_rest_bodies_and_queries_never_get_a_500(live: Live) -> None:
    with httpx.Client(base_url=live.url, timeout=10) as http:

        @FUZZ
        @given(
            target=st.sampled_from(REST_TARGETS),
            body=json_values.map(lambda v: json.dumps(v).encode())
            | st.binary(max_size=200)
            | mutated_frames().map(lambda v: json.dumps(v).encode()),
            params=st.dictionaries(
                st.sampled_from(["after_seq", "before_seq", "limit", "q"]),
                st.text(max_size=30) | st.integers(-(2**70), 2**70).map(str),
                max_size=3,
            ),
        )
        def run(target: tuple[str, str], body: bytes, params: dict[str, str]) -> None:
            method, path = target
            r = http.request(
                method,
                path.replace("CID", live.cid),
                content=body if method == "POST" else None,
                params=params,
                headers={
                    "Authorization": f"Bearer {live.token}",
                    "Content-Type": "application/json",
                },
            )
            assert r.status_code < 500, (r.status_code, r.text)
            if r.status_code >= 400:
                error = r.json()["error"]
                assert error["code"] in ERROR_CODES and error["message"], r.text

        run()
        assert http.get("/healthz").status_code == 200
