"""Local accounts: password hashing (scrypt), session tokens, ids and the username rules.

Used by the directory service (registration, login, token checks) and the admin CLI.
Hashing is CPU- and memory-heavy on purpose, so async callers run it in a thread.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets

from messageai.errors import BadRequest

USERNAME_RE = re.compile(r"[a-z0-9_.-]{3,32}")
MIN_PASSWORD_CHARS = 8
# Bounds the work an attacker can make a login cost; no real password is longer.
MAX_PASSWORD_CHARS = 1024
MAX_DISPLAY_NAME_CHARS = 64
_SCRYPT_R, _SCRYPT_P = 8, 1


def check_username(username: object) -> str:
    if not isinstance(username, str) or not USERNAME_RE.fullmatch(username):
        raise BadRequest("username: 3 to 32 characters of a-z, 0-9, '_', '.', '-'")
    return username


def check_password(password: object) -> str:
    if (
        not isinstance(password, str)
        or not MIN_PASSWORD_CHARS <= len(password) <= MAX_PASSWORD_CHARS
    ):
        raise BadRequest(f"password: {MIN_PASSWORD_CHARS} to {MAX_PASSWORD_CHARS} characters")
    return password


def check_display_name(display_name: object, default: str) -> str:
    if display_name is None:
        return default
    if (
        not isinstance(display_name, str)
        or not 1 <= len(display_name.strip()) <= MAX_DISPLAY_NAME_CHARS
    ):
        raise BadRequest(f"display_name: 1 to {MAX_DISPLAY_NAME_CHARS} characters")
    return display_name.strip()


def hash_password(password: str, n: int) -> str:
    """`scrypt$n$r$p$salt$hash`, hex encoded. Blocking: run it in a thread from async code."""
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(
        password.encode(),
        salt=salt,
        n=n,
        r=_SCRYPT_R,
        p=_SCRYPT_P,
        maxmem=256 * n * _SCRYPT_R,
        dklen=32,
    )
    return f"scrypt${n}${_SCRYPT_R}${_SCRYPT_P}${salt.hex()}${digest.hex()}"


def verify_password(password: str, stored: str) -> bool:
    """Constant-time check of `password` against a `hash_password` value. Blocking."""
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        candidate = hashlib.scrypt(
            password.encode(),
            salt=bytes.fromhex(salt),
            n=int(n),
            r=int(r),
            p=int(p),
            maxmem=256 * int(n) * int(r),
            dklen=len(digest) // 2,
        )
    except ValueError:
        return False
    return hmac.compare_digest(candidate, bytes.fromhex(digest))


def new_token() -> str:
    return secrets.token_urlsafe(32)


def token_hash(token: str) -> bytes:
    """Tokens are stored only as their SHA-256: a stolen directory file yields no sessions."""
    return hashlib.sha256(token.encode()).digest()
