"""`GET /v1/settings` (messageai/rest/settings.py) and what Clerk mode changes in the web
app's Content-Security-Policy, over real HTTP against the real server on 127.0.0.1:0.

Each server serves an export written under tmp_path (tests/test_webapp.py's), so the CSP
checked is the header a browser gets for `/`. Clerk mode verifies with a PEM key
(no JWKS fetch): the settings never need Clerk to answer.
"""

from __future__ import annotations

import base64
from importlib import metadata
from pathlib import Path
from typing import Any

import orjson
import pytest
import trio

from messageai.config import ConfigError, frontend_api_host, parse_config
from messageai.rest import webapp
from tests.helpers import harness, make_config
from tests.test_clerk import ISSUER, public_pem, token
from tests.test_webapp import write_export

FRONTEND_API_HOST = ISSUER.removeprefix("https://")
WEBHOOK_SECRET = "whsec_" + base64.b64encode(b"0123456789abcdef0123").decode()


def publishable_key(host: str = FRONTEND_API_HOST, kind: str = "test") -> str:
    """A key as Clerk makes them: `pk_<kind>_` and the base64 of `host$`."""
    return f"pk_{kind}_" + base64.b64encode(f"{host}$".encode()).decode()


def clerk_sections(**clerk: Any) -> dict[str, dict[str, Any]]:
    settings = {"issuer": ISSUER, "jwt_public_key": public_pem("main"), **clerk}
    return {"auth": {"mode": "clerk"}, "clerk": settings}


async def fetch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **sections: dict[str, Any]
) -> tuple[Any, dict[str, str]]:
    """The settings document, and the directives of the CSP `/` is served with."""
    root = tmp_path / "export"
    write_export(root)
    monkeypatch.setattr(webapp, "WEBAPP_DIR", root)
    with trio.fail_after(30):
        async with harness(make_config(tmp_path / "data", **sections)) as h:
            r = await h.http.get("/v1/settings")
            assert r.status_code == 200, r.text
            assert r.headers["cache-control"] == "no-store"
            page = await h.http.get("/")
            csp = page.headers["content-security-policy"]
    directives = dict(d.strip().split(" ", 1) for d in csp.split(";"))
    return r.json(), directives


async def test_local_mode_publishes_open_registration_limits_and_no_clerk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings, csp = await fetch(
        tmp_path, monkeypatch, limits={"max_upload_bytes": 1234, "max_body_chars": 99}
    )
    assert settings["auth"] == {"mode": "local", "registration_open": True, "clerk": None}
    limits = settings["limits"]
    assert limits["max_upload_bytes"] == 1234 and limits["max_body_chars"] == 99
    assert "image/png" in limits["upload_types"]
    assert settings["ai"] == {"available": False}
    assert settings["version"] == metadata.version("messageai")
    # No Clerk host anywhere in the policy.
    assert csp["script-src"] == "'self'" and csp["connect-src"] == "'self'"
    assert "clerk" not in " ".join(csp.values())


async def test_closed_registration_and_an_ai_endpoint_are_published(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Nothing listens on port 9: the settings say an endpoint is configured, not that it answers.
    ai = {"base_url": "http://127.0.0.1:9/v1", "model": "m"}
    settings, _ = await fetch(tmp_path, monkeypatch, auth={"allow_registration": False}, ai=ai)
    assert settings["auth"] == {"mode": "local", "registration_open": False, "clerk": None}
    assert settings["ai"] == {"available": True}
    assert "127.0.0.1:9" not in orjson.dumps(settings).decode()


async def test_clerk_mode_publishes_the_key_and_its_frontend_api_and_allows_it_in_the_csp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = publishable_key()
    sections = clerk_sections(publishable_key=key, webhook_secret=WEBHOOK_SECRET)
    settings, csp = await fetch(tmp_path, monkeypatch, **sections)
    assert settings["auth"] == {
        "mode": "clerk",
        "registration_open": False,
        "clerk": {"publishable_key": key, "frontend_api": ISSUER},
    }
    # Exactly that origin, and only where clerk-js needs it.
    assert csp["script-src"] == f"'self' {ISSUER}"
    assert csp["connect-src"] == f"'self' {ISSUER}"
    assert csp["default-src"] == "'self'" and csp["frame-ancestors"] == "'none'"
    assert ISSUER not in csp["img-src"] + csp["style-src"] + csp["default-src"]
    # Nothing secret is published: not the webhook secret, not the verification key.
    text = orjson.dumps(settings).decode()
    assert WEBHOOK_SECRET not in text and "whsec_" not in text
    assert "BEGIN PUBLIC KEY" not in text and "jwks" not in text


async def test_clerk_mode_without_a_publishable_key_publishes_no_clerk_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings, csp = await fetch(tmp_path, monkeypatch, **clerk_sections())
    assert settings["auth"] == {"mode": "clerk", "registration_open": False, "clerk": None}
    assert csp["script-src"] == "'self'" and csp["connect-src"] == "'self'"


async def test_settings_need_no_token_and_ignore_a_bad_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sections = clerk_sections(publishable_key=publishable_key())
    with trio.fail_after(30):
        async with harness(make_config(tmp_path / "data", **sections)) as h:
            plain = await h.http.get("/v1/settings")
            bad = await h.http.get("/v1/settings", headers={"Authorization": "Bearer nope"})
            good = await h.http.get("/v1/settings", headers={"Authorization": f"Bearer {token()}"})
    assert plain.status_code == bad.status_code == good.status_code == 200
    assert plain.json() == bad.json() == good.json()


def test_frontend_api_host_decodes_clerks_keys() -> None:
    assert frontend_api_host(publishable_key()) == FRONTEND_API_HOST
    assert frontend_api_host(publishable_key("clerk.chat.example.com", "live")) == (
        "clerk.chat.example.com"
    )
    # Clerk's keys are sometimes shown without the base64 padding.
    unpadded = publishable_key("ab-cd-12.clerk.accounts.dev").rstrip("=")
    assert frontend_api_host(unpadded) == "ab-cd-12.clerk.accounts.dev"
    assert frontend_api_host(publishable_key("127.0.0.1:8443")) == "127.0.0.1:8443"


@pytest.mark.parametrize(
    "key",
    [
        "sk_test_" + base64.b64encode(b"clerk.example.test$").decode(),  # a secret key
        "pk_prod_" + base64.b64encode(b"clerk.example.test$").decode(),
        "pk_test_" + base64.b64encode(b"clerk.example.test").decode(),  # no $
        "pk_test_!!!notbase64",
        "pk_test_" + base64.b64encode(b"https://clerk.example.test/$").decode(),
        "pk_test_" + base64.b64encode(b"clerk.example.test; script-src *$").decode(),
        "pk_test_",
    ],
)
def test_a_bad_publishable_key_stops_start_up_naming_the_key(key: str) -> None:
    with pytest.raises(ConfigError, match=r"clerk\.publishable_key: must be the publishable key"):
        parse_config(clerk_sections(publishable_key=key))


def test_a_publishable_key_of_another_instance_than_the_issuer_is_refused() -> None:
    other = publishable_key("clerk.other.example.test")
    with pytest.raises(ConfigError, match=r"clerk\.publishable_key names the Frontend API"):
        parse_config(clerk_sections(publishable_key=other))
