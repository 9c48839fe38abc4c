"""A stand-in for one Clerk instance's Frontend API, for the browser tests of Clerk mode:
a real HTTP server on 127.0.0.1:0 that serves clerk-js (the copy in app/node_modules,
as the Frontend API serves it under `/npm/@clerk/clerk-js@6/`) and the few endpoints
clerk-js calls for a password sign-in: `/v1/environment`, `/v1/client`,
`/v1/client/sign_ins`, `/v1/client/sessions` (sign-out) and
`/v1/client/sessions/{id}/touch|tokens|remove|end`.

One user (`ada`, password `PASSWORD`), one session at a time. Session tokens are RS256
JWTs signed with a key made here, whose PEM the MessageAI server under test is configured
with (`clerk.jwt_public_key`), `iss` = the instance's Frontend API URL. The publishable
key names a host that never resolves (`.test`); `route` maps it onto this server inside
one browser context (Playwright plays DNS and TLS there: clerk-js only speaks
`https://` to its Frontend API). Requests are recorded in `requests`.
"""

from __future__ import annotations

import base64
import json
import re
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from playwright.sync_api import BrowserContext, Route

from tests.app_env import ensure_node_modules
from tests.browser.harness import ROOT

HOST = "clerk.chat.example.test"
CLERK_JS = ROOT / "app" / "node_modules" / "@clerk" / "clerk-js" / "dist"
USER_ID = "user_ada"
SESSION_ID = "sess_ada"
PASSWORD = "clerk-password-1"
# Clerk's session tokens live a minute; the tests make them shorter to see them renewed.
TOKEN_SECONDS = 60
# A request body is a small form; anything larger is not clerk-js.
MAX_BODY_BYTES = 65536


class FrontendApi:
    """The stand-in; `start()` binds it, `stop()` ends it (see the module docstring)."""

    def __init__(self, token_seconds: int = TOKEN_SECONDS) -> None:
        self.token_seconds = token_seconds
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.publishable_key = "pk_test_" + base64.b64encode(f"{HOST}$".encode()).decode()
        self.origin = f"https://{HOST}"
        self.requests: list[str] = []
        self.signed_in = False
        self.app_origin = ""
        self._server: ThreadingHTTPServer | None = None

    @property
    def public_pem(self) -> str:
        return (
            self.key.public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            .decode()
        )

    def server_env(self) -> dict[str, str]:
        """The MessageAI config, from the environment, for Clerk mode with this instance
        (no clock leeway: a token is refused the second it expires)."""
        return {
            "MESSAGEAI_AUTH__MODE": "clerk",
            "MESSAGEAI_CLERK__LEEWAY_SECONDS": "0",
            "MESSAGEAI_CLERK__ISSUER": self.origin,
            "MESSAGEAI_CLERK__JWT_PUBLIC_KEY": self.public_pem,
            "MESSAGEAI_CLERK__PUBLISHABLE_KEY": self.publishable_key,
        }

    def start(self) -> None:
        # clerk-js is served from app/node_modules: on a fresh clone the browser tests
        # run before any other test has installed it.
        ensure_node_modules()
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                stand_in.handle(self)

            def do_POST(self) -> None:
                stand_in.handle(self)

            def do_DELETE(self) -> None:
                stand_in.handle(self)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # recorded in `requests` instead

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def route(self, context: BrowserContext) -> None:
        """Send the context's requests for the instance's host to this server."""
        assert self._server is not None
        port = self._server.server_address[1]

        def forward(route: Route) -> None:
            request = route.request
            target = re.sub(r"^https://[^/]+", f"http://127.0.0.1:{port}", request.url)
            if request.method == "OPTIONS":  # CORS preflight: answered here, as Clerk does
                route.fulfill(status=204, headers=self._cors(request.headers.get("origin")))
                return
            route.fulfill(response=route.fetch(url=target))

        context.route(re.compile(rf"https://{re.escape(HOST)}/.*"), forward)

    # ------------------------------------------------------------ the endpoints

    def handle(self, http: BaseHTTPRequestHandler) -> None:
        path = urllib.parse.urlsplit(http.path).path
        length = min(int(http.headers.get("content-length") or 0), MAX_BODY_BYTES)
        form = urllib.parse.parse_qs(http.rfile.read(length).decode()) if length else {}
        self.requests.append(f"{http.command} {path}")
        if http.command == "GET" and path.startswith("/npm/@clerk/clerk-js@6/dist/"):
            name = path.rsplit("/", 1)[1]
            file = CLERK_JS / name
            if re.fullmatch(r"[\w.-]+\.js", name) and file.is_file():
                self._send(http, 200, file.read_bytes(), "text/javascript")
                return
        elif path == "/v1/environment":
            self._json(http, 200, self._environment())
            return
        elif path == "/v1/client":
            if http.command == "DELETE":
                self.signed_in = False
            self._json(http, 200, {"response": self._client(), "client": None})
            return
        elif path == "/v1/client/sign_ins" and http.command == "POST":
            self._sign_in(http, form)
            return
        elif path == f"/v1/client/sessions/{SESSION_ID}/tokens":
            self._json(http, 200, {"object": "token", "jwt": self.session_token()})
            return
        elif path == f"/v1/client/sessions/{SESSION_ID}/touch":
            self._json(http, 200, {"response": self._session(), "client": self._client()})
            return
        elif path == "/v1/client/sessions":  # signOut(): every session of the client ends
            self.signed_in = False
            self._json(http, 200, {"response": self._client(), "client": self._client()})
            return
        elif path in (
            f"/v1/client/sessions/{SESSION_ID}/remove",
            f"/v1/client/sessions/{SESSION_ID}/end",
        ):
            self.signed_in = False
            ended = {**self._session(), "status": "ended"}
            self._json(http, 200, {"response": ended, "client": self._client()})
            return
        self._json(http, 404, _errors("resource_not_found", f"{path} is not in the stand-in"))

    def _sign_in(self, http: BaseHTTPRequestHandler, form: dict[str, list[str]]) -> None:
        identifier = form.get("identifier", [""])[0]
        if identifier not in ("ada", "ada@example.test"):
            self._json(
                http, 422, _errors("form_identifier_not_found", "Couldn't find your account.")
            )
            return
        if form.get("password", [""])[0] != PASSWORD:
            message = "Password is incorrect. Try again, or use another method."
            self._json(http, 422, _errors("form_password_incorrect", message))
            return
        self.signed_in = True
        attempt = {
            "object": "sign_in_attempt",
            "id": "sia_1",
            "status": "complete",
            "supported_identifiers": ["username", "email_address"],
            "supported_first_factors": [],
            "supported_second_factors": None,
            "first_factor_verification": None,
            "second_factor_verification": None,
            "identifier": identifier,
            "user_data": {
                "first_name": "Ada",
                "last_name": "Lovelace",
                "image_url": "",
                "has_image": False,
            },
            "created_session_id": SESSION_ID,
            "abandon_at": (int(time.time()) + 3600) * 1000,
        }
        self._json(http, 200, {"response": attempt, "client": self._client()})

    def session_token(self) -> str:
        now = int(time.time())
        claims = {
            "iss": self.origin,
            "sub": USER_ID,
            "sid": SESSION_ID,
            "azp": self.app_origin,
            "iat": now,
            "nbf": now - 5,
            "exp": now + self.token_seconds,
            # A session-token template's claims: the server's first profile of the user.
            "username": "ada",
            "name": "Ada Lovelace",
        }
        return jwt.encode(claims, self.key, algorithm="RS256", headers={"kid": "ins_test"})

    def _session(self) -> dict[str, Any]:
        later = (int(time.time()) + 86400) * 1000
        return {
            "object": "session",
            "id": SESSION_ID,
            "status": "active",
            "expire_at": later,
            "abandon_at": later,
            "last_active_at": int(time.time()) * 1000,
            "last_active_organization_id": None,
            "actor": None,
            "user": _user(),
            "public_user_data": {
                "first_name": "Ada",
                "last_name": "Lovelace",
                "image_url": "",
                "has_image": False,
                "identifier": "ada",
            },
            "factor_verification_age": [0, -1],
            "created_at": 1,
            "updated_at": 1,
            "last_active_token": {"object": "token", "jwt": self.session_token()},
            "tasks": None,
        }

    def _client(self) -> dict[str, Any]:
        return {
            "object": "client",
            "id": "client_1",
            "sessions": [self._session()] if self.signed_in else [],
            "sign_in": None,
            "sign_up": None,
            "last_active_session_id": SESSION_ID if self.signed_in else None,
            "cookie_expires_at": None,
            "captcha_bypass": False,
            "created_at": 1,
            "updated_at": 1,
        }

    def _environment(self) -> dict[str, Any]:
        app = self.app_origin
        attribute = {"enabled": True, "required": False, "used_for_first_factor": True,
                     "first_factors": [], "used_for_second_factor": False, "second_factors": [],
                     "verifications": [], "verify_at_sign_up": False}  # fmt: skip
        return {
            "object": "environment",
            "id": "env_1",
            "auth_config": {
                "object": "auth_config",
                "id": "aac_1",
                "single_session_mode": True,
                "claimed_at": None,
                "reverification": False,
            },
            "display_config": {
                "object": "display_config",
                "id": "display_config_1",
                "instance_environment_type": "development",
                "application_name": "MessageAI (test)",
                "home_url": app,
                "sign_in_url": f"{app}/sign-in",
                "sign_up_url": f"{app}/sign-in",
                "preferred_sign_in_strategy": "password",
                "captcha_public_key": None,
                "captcha_widget_type": None,
                "show_devmode_warning": False,
            },
            "user_settings": {
                "attributes": {
                    "username": attribute,
                    "email_address": attribute,
                    "password": {**attribute, "used_for_first_factor": False, "required": True},
                },
                "social": {},
                "sign_in": {"second_factor": {"required": False}},
                "sign_up": {"captcha_enabled": False, "progressive": True, "mode": "public"},
                "password_settings": {"min_length": 8, "max_length": 72, "disable_hibp": True},
            },
            "organization_settings": {"enabled": False},
            "maintenance_mode": False,
        }

    # ------------------------------------------------------------ HTTP

    def _cors(self, origin: str | None) -> dict[str, str]:
        return {
            "access-control-allow-origin": origin or self.app_origin,
            "access-control-allow-credentials": "true",
            "access-control-allow-methods": "GET, POST, PATCH, DELETE",
            "access-control-allow-headers": "content-type, authorization",
        }

    def _json(self, http: BaseHTTPRequestHandler, status: int, body: Any) -> None:
        self._send(http, status, json.dumps(body).encode(), "application/json")

    def _send(self, http: BaseHTTPRequestHandler, status: int, body: bytes, kind: str) -> None:
        http.send_response(status)
        http.send_header("content-type", kind)
        http.send_header("content-length", str(len(body)))
        for name, value in self._cors(http.headers.get("origin")).items():
            http.send_header(name, value)
        http.end_headers()
        http.wfile.write(body)


def _user() -> dict[str, Any]:
    return {
        "object": "user",
        "id": USER_ID,
        "username": "ada",
        "first_name": "Ada",
        "last_name": "Lovelace",
        "email_addresses": [],
        "phone_numbers": [],
        "web3_wallets": [],
        "external_accounts": [],
        "passkeys": [],
        "enterprise_accounts": [],
        "organization_memberships": [],
        "primary_email_address_id": None,
        "image_url": "",
        "has_image": False,
        "public_metadata": {},
        "unsafe_metadata": {},
        "password_enabled": True,
        "two_factor_enabled": False,
        "created_at": 1,
        "updated_at": 1,
    }


def _errors(code: str, message: str) -> dict[str, Any]:
    return {"errors": [{"code": code, "message": message, "long_message": message}]}
