"""Local accounts: password hashing (scrypt), session tokens and the username rules.

Used by the directory service (registration, login, token checks) and the admin CLI.
Hashing is CPU- and memory-heavy on purpose, so async callers run it in a thread.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import re
import secrets
import threading

from messageai.errors import BadRequest

USERNAME_RE = re.compile(r"[a-z0-9_.-]{3,32}")
MIN_PASSWORD_CHARS = 8
# Bounds the work an attacker can make a login cost; no real password is longer.
MAX_PASSWORD_CHARS = 1024
MAX_DISPLAY_NAME_CHARS = 64
_SCRYPT_R, _SCRYPT_P = 8, 1

# scrypt derivations run by this process (hash or verify): an operator's metric, and
# how the tests see that a login for an unknown name does the same work as any other.
_scrypt_runs = 0
_scrypt_runs_lock = threading.Lock()  # hashing runs in worker threads


def scrypt_runs() -> int:
    """How many scrypt derivations this process has run."""
    return _scrypt_runs


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int, dklen: int) -> bytes:
    global _scrypt_runs
    with _scrypt_runs_lock:
        _scrypt_runs += 1
    return hashlib.scrypt(
        password.encode(), salt=salt, n=n, r=r, p=p, maxmem=256 * n * r, dklen=dklen
    )


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
    digest = _scrypt(password, salt, n, _SCRYPT_R, _SCRYPT_P, 32)
    return f"scrypt${n}${_SCRYPT_R}${_SCRYPT_P}${salt.hex()}${digest.hex()}"


def verify_password(password: str, stored: str) -> bool:
    """Constant-time check of `password` against a `hash_password` value. Blocking."""
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        candidate = _scrypt(password, bytes.fromhex(salt), int(n), int(r), int(p), len(digest) // 2)
    except ValueError:
        return False
    return hmac.compare_digest(candidate, bytes.fromhex(digest))


@functools.cache
def dummy_hash(n: int) -> str:
    """A hash of a random password at cost `n`, made once per process: a login for a
    name with no password is verified against it, so it costs what any login costs
    and the answer's timing does not tell which names exist. Blocking."""
    return hash_password(secrets.token_urlsafe(16), n)


def new_token() -> str:
    return secrets.token_urlsafe(32)


def token_hash(token: str) -> bytes:
    """Tokens are stored only as their SHA-256: a stolen directory file yields no sessions."""
    return hashlib.sha256(token.encode()).digest()
