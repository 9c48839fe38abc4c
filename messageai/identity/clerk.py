"""Clerk mode: session JWTs verified locally, and the keys that verify them.

`ClerkAuthenticator` is the `identity.authenticator.Authenticator` for `auth.mode = "clerk"`.
A token passes only if it is RS256 (never `none`, never an HMAC algorithm, so
a token "signed" with the public key as an HS256 secret is refused), signed by
the configured PEM key or a JWKS key with the token's `kid`, within `exp`/`nbf`
(with `clerk.leeway_seconds`), with `iss` equal to `clerk.issuer`, an allowed
`azp` when both the token and `clerk.authorized_parties` have one, a `sid`, and
a `sub` that is not a deleted user. The first good token of an unknown `sub`
creates the user (id = Clerk's `user_…`); the webhooks keep the profile in step.

`KeySet` holds the JWKS: fetched on first use with httpx (on Trio), kept for
`jwks_max_age_seconds`, fetched again on an unknown `kid` at most once per
`jwks_refresh_seconds` (a flood of made-up `kid`s costs Clerk one request a
minute), bounded in bytes and keys.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import httpx
import jwt
import orjson
import trio
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from jwt.algorithms import RSAAlgorithm

from messageai.config import ClerkConfig
from messageai.errors import Unavailable
from messageai.model import ClerkProfile, User, now_ms
from messageai.protocol import MAX_ID_CHARS
from messageai.services.directory import Directory

log = logging.getLogger(__name__)

# Clerk session tokens are about 1 KiB; anything far larger is not worth parsing.
MAX_TOKEN_CHARS = 8192
MAX_JWKS_BYTES = 256 * 1024
MAX_JWKS_KEYS = 32
MIN_RSA_BITS = 2048
_USERNAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_MAX_NAME_CHARS = 64


class KeySet:
    """The RSA public keys tokens may be signed with, by `kid`."""

    def __init__(self, config: ClerkConfig) -> None:
        self._config = config
        self._static: RSAPublicKey | None = None
        if config.jwt_public_key:
            key = load_pem_public_key(config.jwt_public_key.strip().encode())
            assert isinstance(key, RSAPublicKey)  # checked by the config validator
            self._static = key
        self._keys: dict[str, RSAPublicKey] = {}
        self._fetched_at: float | None = None
        self._attempted_at: float | None = None
        self._last_fetch_failed = False
        self._lock = trio.Lock()

    async def key_for(self, kid: str | None) -> RSAPublicKey | None:
        """The key for `kid`, fetching the JWKS when it is unknown or stale (rate-limited).

        None when no key has that `kid`. Raises `Unavailable` when the JWKS could
        not be fetched and no key is known for `kid`. Waits at most
        `jwks_timeout_seconds` for the fetch, behind one lock (a burst of tokens
        with a new `kid` makes one request); cancellable.
        """
        if self._static is not None:
            return self._static
        if kid is None:
            return None
        if kid in self._keys and not self._stale():
            return self._keys[kid]
        async with self._lock:
            now = trio.current_time()
            wanted = kid not in self._keys or self._stale()
            limited = (
                self._attempted_at is not None
                and now - self._attempted_at < self._config.jwks_refresh_seconds
            )
            if wanted and not limited:
                self._attempted_at = now
                await self._fetch()
            key = self._keys.get(kid)
            if key is None and self._last_fetch_failed:
                raise Unavailable("cannot fetch Clerk's signing keys; try again shortly")
            return key

    def _stale(self) -> bool:
        return (
            self._fetched_at is None
            or trio.current_time() - self._fetched_at > self._config.jwks_max_age_seconds
        )

    async def _fetch(self) -> None:
        # On failure the keys we had stay in use: a Clerk outage must not sign out everyone.
        url = self._config.jwks_url
        try:
            with trio.fail_after(self._config.jwks_timeout_seconds):
                body = await _get_bounded(url, self._config.jwks_timeout_seconds)
            keys = parse_jwks(body)
        except (httpx.HTTPError, trio.TooSlowError, ValueError) as exc:
            log.warning("fetching the JWKS from %s failed: %s", url, exc)
            self._last_fetch_failed = True
            return
        self._keys = keys
        self._fetched_at = trio.current_time()
        self._last_fetch_failed = False


async def _get_bounded(url: str, io_seconds: float) -> bytes:
    # The caller's fail_after bounds the whole fetch; httpx's timeout each read.
    async with (
        httpx.AsyncClient(timeout=io_seconds, follow_redirects=False) as client,
        client.stream("GET", url, headers={"accept": "application/json"}) as response,
    ):
        if response.status_code != 200:
            raise ValueError(f"HTTP {response.status_code}")
        body = bytearray()
        async for chunk in response.aiter_bytes():
            body += chunk
            if len(body) > MAX_JWKS_BYTES:
                raise ValueError(f"JWKS larger than {MAX_JWKS_BYTES} bytes")
        return bytes(body)


def parse_jwks(body: bytes) -> dict[str, RSAPublicKey]:
    """The RS256 signing keys of a JWKS document by `kid`; ValueError if it is not one."""
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"JWKS is not JSON: {exc}") from None
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise ValueError('JWKS must be an object with a "keys" array')
    keys: dict[str, RSAPublicKey] = {}
    for jwk in document["keys"][:MAX_JWKS_KEYS]:
        if not isinstance(jwk, dict) or jwk.get("kty") != "RSA":
            continue
        kid = jwk.get("kid")
        if not isinstance(kid, str) or jwk.get("use", "sig") != "sig":
            continue
        if jwk.get("alg", "RS256") != "RS256":
            continue
        public = {name: jwk[name] for name in ("kty", "n", "e") if name in jwk}
        try:
            key = RSAAlgorithm.from_jwk(public)
        except (jwt.InvalidKeyError, ValueError, KeyError, TypeError):
            continue
        if isinstance(key, RSAPublicKey) and key.key_size >= MIN_RSA_BITS:
            keys[kid] = key
    return keys


class ClerkAuthenticator:
    """Clerk session JWTs (`auth.mode = "clerk"`); see the module docstring."""

    def __init__(self, config: ClerkConfig, directory: Directory) -> None:
        self._config = config
        self._directory = directory
        self.keys = KeySet(config)

    async def authenticate(self, token: str) -> User | None:
        claims = await self.verify(token)
        if claims is None:
            return None
        user_id: str = claims["sub"]
        found = await self._directory.lookup_clerk_user(user_id)
        if found is None:
            found = await self._directory.adopt_clerk_user(_first_profile(user_id, claims))
        user, deleted = found
        return None if deleted else user

    def is_active(self, user_id: str) -> bool:
        found = self._directory.clerk_user(user_id)
        return found is not None and not found[1]

    def session_valid(self, user_id: str, token_hash: bytes) -> bool:
        # Disabled or deleted here; the JWT's own expiry is Clerk's to enforce.
        return self.is_active(user_id)

    def is_revoked(self, token: str) -> bool:
        # Clerk's session JWTs are not revoked through this server (Clerk ends a session
        # by no longer renewing its short-lived JWT; a deleted user is `is_active`'s).
        return False

    async def verify(self, token: str) -> dict[str, Any] | None:
        """The token's claims when every check passes, else None (logged at debug)."""
        if len(token) > MAX_TOKEN_CHARS:
            return None
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError as exc:
            log.debug("refused a token: %s", exc)
            return None
        if header.get("alg") != "RS256":
            log.debug("refused a token signed with alg %r", header.get("alg"))
            return None
        kid = header.get("kid")
        key = await self.keys.key_for(kid if isinstance(kid, str) else None)
        if key is None:
            log.debug("refused a token: no key with kid %r", kid)
            return None
        config = self._config
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=["RS256"],
                issuer=config.issuer,
                leeway=config.leeway_seconds,
                options={"require": ["exp", "iss", "sub", "sid"], "verify_aud": False},
            )
        except jwt.InvalidTokenError as exc:
            log.debug("refused a token: %s", exc)
            return None
        return claims if _claims_ok(claims, config) else None


def _claims_ok(claims: dict[str, Any], config: ClerkConfig) -> bool:
    sub, sid, azp = claims.get("sub"), claims.get("sid"), claims.get("azp")
    if claims.get("iss") != config.issuer:
        return False
    if not isinstance(sub, str) or not 1 <= len(sub) <= MAX_ID_CHARS:
        return False
    if not isinstance(sid, str) or not sid:
        return False
    # Clerk's own rule: `azp` is checked when the token has one (native apps send none).
    if azp is not None and config.authorized_parties:
        return isinstance(azp, str) and azp in config.authorized_parties
    return True


def _first_profile(user_id: str, claims: dict[str, Any]) -> ClerkProfile:
    # Default Clerk session tokens carry no profile; a custom session-token template
    # may add `username` / `name`. The webhooks fill in the rest.
    username = claims.get("username")
    name = claims.get("name")
    return profile_from(
        user_id,
        username if isinstance(username, str) else None,
        name if isinstance(name, str) else None,
        None,
    )


def profile_from(
    user_id: str, username: str | None, name: str | None, created_at: object
) -> ClerkProfile:
    """A `ClerkProfile` from loosely typed Clerk data, with safe fallbacks."""
    if username is not None and not _USERNAME.fullmatch(username):
        username = None
    shown = " ".join((name or "").split())[:_MAX_NAME_CHARS] or username or user_id
    when = (
        created_at
        if isinstance(created_at, int) and not isinstance(created_at, bool) and created_at > 0
        else now_ms()
    )
    return ClerkProfile(id=user_id, username=username, display_name=shown, created_at=when)
