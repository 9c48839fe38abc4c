"""No token, password or message text in any log line, at any level.

`messageai serve` runs as a real child process with `logging.level = "debug"` and
`format = "json"`, its stderr captured to a file, against a loopback LLM and a
loopback Expo. The test plays a whole session with distinctive secrets (registration,
logins right and wrong, a password change, WebSocket and REST sends, an edit, a
search, a push token, an AI question and its answer, a metrics scrape, a logout, a
forged token), stops the server, and greps every line it wrote for every secret.
The same lines must each be one JSON object with the documented keys.
"""

from __future__ import annotations

import functools
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import httpx
import orjson
import trio

from tests.expo import fake_expo
from tests.helpers import WS, connect_ws
from tests.llm import fake_llm, text
from tests.secret_logs import find_leaks

# Distinctive enough that a hit is never chance.
PASSWORD_ADA = "pw-ada-Quokka-7731"
PASSWORD_BOB = "pw-bob-Narwhal-5520"
WRONG_PASSWORD = "pw-wrong-Axolotl-9902"
NEW_PASSWORD = "pw-new-Pangolin-4417"
BODIES = ("body-Zebra-Quartz-0001", "body-Zebra-Quartz-0002", "body-Zebra-Quartz-0003")
EDITED = "body-Edited-Marmot-3310"
SEARCH = "Quartz"
QUESTION = "question-Tapir-Lantern-8812"
ANSWER = "answer-Ibis-Compass-6604"
PUSH_TOKEN = "ExponentPushToken[pushSecretOkapi4419xyz]"
API_KEY = "sk-apikey-Wombat-2093"
EXPO_ACCESS = "expo-access-Gecko-7308"
METRICS_TOKEN = "metrics-token-Lynx-1185"
FORGED = "forged-token-Dingo-6521"


async def read_url(process: trio.Process) -> str:
    assert process.stdout is not None
    line = b""
    with trio.fail_after(30):
        while b"\n" not in line:
            chunk = await process.stdout.receive_some(4096)
            assert chunk, "the server exited before printing its URL"
            line += chunk
    url = line.split()[2].decode()
    assert url.startswith("http://127.0.0.1:"), line
    return url


async def session(http: httpx.AsyncClient, url: str, expo_sent: Any) -> list[str]:
    """The whole session; returns the tokens the server issued (secrets too)."""
    r = await http.post("/v1/auth/register", json={"username": "ada", "password": PASSWORD_ADA})
    assert r.status_code == 201, r.text
    ada_id, ada = r.json()["user"]["id"], r.json()["token"]
    r = await http.post("/v1/auth/register", json={"username": "bob", "password": PASSWORD_BOB})
    assert r.status_code == 201, r.text
    bob_id, bob = r.json()["user"]["id"], r.json()["token"]
    as_ada, as_bob = {"Authorization": f"Bearer {ada}"}, {"Authorization": f"Bearer {bob}"}
    r = await http.post("/v1/auth/login", json={"username": "ada", "password": PASSWORD_ADA})
    assert r.status_code == 200
    ada_again = r.json()["token"]
    r = await http.post("/v1/auth/login", json={"username": "bob", "password": WRONG_PASSWORD})
    assert r.status_code == 401
    r = await http.post(
        "/v1/push-tokens", json={"token": PUSH_TOKEN, "platform": "ios"}, headers=as_bob
    )
    assert r.status_code == 201, r.text
    r = await http.post(
        "/v1/conversations", json={"kind": "direct", "member_ids": [bob_id]}, headers=as_ada
    )
    cid = r.json()["id"]
    port = int(url.rsplit(":", 1)[1])
    # Bob is offline: each of these is also a push notification with its text.
    async with connect_ws(port, token=ada) as conn:
        ws = WS(conn)
        for body in BODIES[:2]:
            assert (await ws.send_message(cid, body))["type"] == "ack"
    await expo_sent(2)
    r = await http.post(
        f"/v1/conversations/{cid}/messages",
        json={"client_id": uuid.uuid4().hex, "body": BODIES[2]},
        headers=as_ada,
    )
    assert r.status_code == 201, r.text
    seq = r.json()["seq"]
    r = await http.patch(
        f"/v1/conversations/{cid}/messages/{seq}", json={"body": EDITED}, headers=as_ada
    )
    assert r.status_code == 200, r.text
    r = await http.get("/v1/search", params={"q": SEARCH}, headers=as_bob)
    assert r.status_code == 200, r.text
    # The token in the query string, as a browser sends it.
    async with connect_ws(port, query=f"?access_token={bob}") as conn:
        ws = WS(conn)
        await ws.request("subscribe", conversation_ids=[cid])
        r = await http.put(f"/v1/conversations/{cid}/ai", json={"enabled": True}, headers=as_ada)
        assert r.status_code == 200, r.text
        r = await http.post(
            f"/v1/conversations/{cid}/ai/ask", json={"question": QUESTION}, headers=as_ada
        )
        assert r.status_code == 200, r.text
        assert ANSWER in r.json()["answer"]
        await ws.send({"type": "ai_ask", "req": 9, "conversation_id": cid, "question": QUESTION})
        while (await ws.recv(10))["type"] != "ai_answer":
            pass
    assert (await http.get("/metrics")).status_code == 401
    metrics = await http.get("/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
    assert metrics.status_code == 200
    assert (
        await http.get("/v1/me", headers={"Authorization": f"Bearer {FORGED}"})
    ).status_code == 401
    r = await http.post(
        "/v1/me/password",
        json={"old_password": PASSWORD_BOB, "new_password": NEW_PASSWORD},
        headers=as_bob,
    )
    assert r.status_code in (200, 204), r.text
    r = await http.delete(f"/v1/push-tokens/{PUSH_TOKEN}", headers=as_bob)
    assert r.status_code == 204, r.text
    assert (await http.post("/v1/auth/logout", headers=as_ada)).status_code == 204
    del ada_id
    return [ada, bob, ada_again]


async def test_no_secret_in_any_log_line_of_a_whole_session_at_debug(tmp_path: Path) -> None:
    key_file = tmp_path / "api-key"
    key_file.write_text(API_KEY + "\n")
    token_file = tmp_path / "metrics-token"
    token_file.write_text(METRICS_TOKEN + "\n")
    log_file = tmp_path / "server.log"
    with trio.fail_after(90):
        async with fake_llm() as llm, fake_expo() as expo:
            # Every answer carries the distinctive text.
            llm.script(*[text("It is ", ANSWER) for _ in range(10)])
            config = tmp_path / "config.toml"
            config.write_text(
                '[server]\nhost = "127.0.0.1"\nport = 0\n[auth]\nscrypt_n = 16\n'
                "[embeddings]\nenabled = false\n"
                '[logging]\nlevel = "debug"\nformat = "json"\n'
                f'[ai]\nbase_url = "{llm.url}"\nmodel = "fake-model"\napi_key_file = "{key_file}"\n'
                f'[push]\nendpoint = "{expo.endpoint}"\naccess_token = "{EXPO_ACCESS}"\n'
                "retry_base_seconds = 0.01\n"
                f'[metrics]\ntoken_file = "{token_file}"\n'
            )

            async def expo_sent(count: int) -> None:
                await expo.wait_for(lambda: len(expo.notifications()) >= count)

            with log_file.open("wb") as stderr:
                async with trio.open_nursery() as nursery:
                    command = [
                        sys.executable,
                        "-m",
                        "messageai",
                        "serve",
                        "--config",
                        str(config),
                        "--data-dir",
                        str(tmp_path / "data"),
                    ]
                    run = functools.partial(
                        trio.run_process,
                        command,
                        stdout=subprocess.PIPE,
                        stderr=stderr,
                        check=False,
                    )
                    process: trio.Process = await nursery.start(run)
                    try:
                        url = await read_url(process)
                        async with httpx.AsyncClient(base_url=url) as http:
                            issued = await session(http, url, expo_sent)
                    finally:
                        process.terminate()
                    assert await process.wait() == 0
            # The endpoints got what they are owed: the secrets did reach the network.
            assert llm.requests[0]["headers"]["authorization"] == f"Bearer {API_KEY}"
            assert any(BODIES[0] in str(n) for n in expo.notifications())
    lines = log_file.read_text("utf-8").splitlines()
    records = [orjson.loads(line) for line in lines]
    for record in records:
        assert {"time", "level", "logger", "message"} <= set(record), record
    levels = {record["level"] for record in records}
    assert "debug" in levels, "DEBUG was not on: the grep proves nothing"
    assert any("request" in record for record in records)
    assert any("connection" in record for record in records)
    secrets = [
        PASSWORD_ADA,
        PASSWORD_BOB,
        WRONG_PASSWORD,
        NEW_PASSWORD,
        *BODIES,
        EDITED,
        QUESTION,
        ANSWER,
        PUSH_TOKEN,
        PUSH_TOKEN.removeprefix("ExponentPushToken[").removesuffix("]"),
        API_KEY,
        EXPO_ACCESS,
        METRICS_TOKEN,
        FORGED,
        *issued,
    ]
    leaks = [(secret, line) for line in lines for secret in secrets if secret in line]
    assert not leaks, leaks[:5]
    # A search term is user text too, but "Quartz" is also in the bodies: checked apart.
    assert not any(f"q={SEARCH}" in line for line in lines)


def test_the_suite_grep_finds_each_secret_wherever_it_is_in_a_line() -> None:
    token = "vBOncAcz7nOMrWiZ2zyl38z-nBoZBASnTh8S-9LG7iw"
    lines = [
        ("a:1", "DEBUG messageai.x: nothing here\n"),
        ("a:2", f"DEBUG messageai.x: issued {token}\n"),
        ("b:7", 'INFO {"message":"got body-Zebra-Quartz-0001!"}\n'),
        ("b:8", "INFO hi hi hi\n"),  # "hi" is too short to be looked for
    ]
    leaks = list(find_leaks(lines, [token, "body-Zebra-Quartz-0001", "hi", "absent-secret-1"]))
    assert [leak.split(":")[0] + ":" + leak.split(":")[1] for leak in leaks] == ["a:2", "b:7"]
    assert token in leaks[0] and "body-Zebra-Quartz-0001" in leaks[1]
