"""The configuration tree: `messageai.toml` loaded into frozen attrs classes.

`load_config` is called by the CLI at start-up; an unknown key or a bad value
raises `ConfigError` naming the key, which the CLI turns into exit status 2.
"""

from __future__ import annotations

import base64
import math
import os
import re
import tomllib
import urllib.parse
from collections.abc import Callable, Mapping
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import attrs
import cattrs
from attrs import validators as v

from messageai.protocol import DEFAULT_MAX_BODY_CHARS
from messageai.strict import TOML, scalar_hook, string_list

SYNCHRONOUS = ("FULL", "NORMAL")


class ConfigError(Exception):
    """The configuration cannot be used; the message names the offending key."""


class _FieldError(ValueError):
    """A validator's complaint about one key, carrying the key's name."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(problem)
        self.key = key


def _name_errors(_cls: type, fields: list[attrs.Attribute[Any]]) -> list[attrs.Attribute[Any]]:
    # attrs runs validators in __init__, where cattrs only knows the section;
    # wrapping them lets the error name `section.key`.
    def named(validator: Any) -> Any:
        def check(inst: object, attr: attrs.Attribute[Any], value: Any) -> None:
            try:
                validator(inst, attr, value)
            except (ValueError, TypeError) as exc:
                raise _FieldError(attr.name, str(exc.args[0] if exc.args else exc)) from None

        return check

    return [f.evolve(validator=named(f.validator)) if f.validator else f for f in fields]


def _positive(_inst: object, attr: attrs.Attribute[Any], value: float) -> None:
    if not value > 0 or (isinstance(value, float) and not math.isfinite(value)):
        raise ValueError(f"{attr.name} must be a positive finite number, not {value!r}")


def _networks(_inst: object, attr: attrs.Attribute[Any], value: tuple[str, ...]) -> None:
    from messageai.edge.client_address import parse_networks

    parse_networks(value)


def _origins(_inst: object, attr: attrs.Attribute[Any], value: tuple[str, ...]) -> None:
    for origin in value:
        if origin != "*" and not re.fullmatch(r"https?://[^/?#\s]+", origin):
            raise ValueError(f'{origin!r} is not an origin like "https://chat.example.com" or "*"')


@attrs.frozen(field_transformer=_name_errors)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = attrs.field(default=8080, validator=[v.ge(0), v.le(65535)])
    handshake_timeout_seconds: float = attrs.field(default=10.0, validator=_positive)
    shutdown_timeout_seconds: float = attrs.field(default=5.0, validator=_positive)
    max_request_body_bytes: int = attrs.field(default=65536, validator=_positive)
    body_timeout_seconds: float = attrs.field(default=10.0, validator=_positive)
    min_body_bytes_per_second: int = attrs.field(default=8192, validator=_positive)
    keep_alive_timeout_seconds: float = attrs.field(default=30.0, validator=_positive)
    allowed_origins: tuple[str, ...] = attrs.field(default=(), validator=_origins)
    # Reverse proxies whose X-Forwarded-For is believed (addresses or networks).
    trusted_proxies: tuple[str, ...] = attrs.field(default=(), validator=_networks)
    idle_timeout_seconds: float = attrs.field(default=300.0, validator=_positive)
    ping_interval_seconds: float = attrs.field(default=30.0, validator=_positive)
    ping_timeout_seconds: float = attrs.field(default=20.0, validator=_positive)


@attrs.frozen(field_transformer=_name_errors)
class StorageConfig:
    data_dir: str = "./data"
    synchronous: Literal["FULL", "NORMAL"] = attrs.field(
        default="FULL", validator=v.in_(SYNCHRONOUS)
    )
    max_open_databases: int = attrs.field(default=1000, validator=[v.ge(2), v.le(100_000)])
    commit_threads: int = attrs.field(default=8, validator=[v.ge(1), v.le(256)])


def _directory_url(_inst: object, attr: attrs.Attribute[Any], value: str) -> None:
    if not value:
        return
    try:
        parsed = urllib.parse.urlsplit(value)
        has_password = parsed.password is not None
    except ValueError:
        raise ValueError("is not a URL like postgresql://user@host:5432/messageai") from None
    if parsed.scheme not in ("postgresql", "postgres"):
        # The value is not repeated: a mistyped URL may carry a password.
        raise ValueError(
            '"" (directory.sqlite3 in storage.data_dir) or a postgresql:// URL,'
            f" not a {parsed.scheme or 'schemeless'} one"
        )
    if has_password:
        raise ValueError("must not hold the password: name it with password_file or password_env")


@attrs.frozen(field_transformer=_name_errors)
class DirectoryConfig:
    """Where the directory (users, tokens, conversations, memberships, media records,
    push tokens) lives: "" is `directory.sqlite3` in `storage.data_dir` (single-node
    mode); a `postgresql://` URL is PostgreSQL (docs/SCALE.md, section 8)."""

    url: str = attrs.field(default="", validator=_directory_url)
    # The password, read from this file (its first line) or this environment variable,
    # never from the config or the URL; neither: libpq's own (PGPASSWORD, ~/.pgpass).
    password_file: str = ""
    password_env: str = ""
    # Connections (one per thread) that run directory reads off the event loop.
    read_threads: int = attrs.field(default=4, validator=[v.ge(1), v.le(64)])

    def __attrs_post_init__(self) -> None:
        if self.password_file and self.password_env:
            raise ValueError("directory: set at most one of password_file and password_env")
        if (self.password_file or self.password_env) and not self.url:
            raise ValueError("directory: a password is for a postgresql:// url, and url is empty")

    @property
    def postgres(self) -> bool:
        return bool(self.url)


@attrs.frozen(field_transformer=_name_errors)
class ConversationsConfig:
    idle_seconds: float = attrs.field(default=300.0, validator=_positive)
    queue_size: int = attrs.field(default=1024, validator=[v.ge(1), v.le(1_000_000)])
    max_batch: int = attrs.field(default=512, validator=[v.ge(1), v.le(100_000)])
    call_timeout_seconds: float = attrs.field(default=30.0, validator=_positive)


@attrs.frozen(field_transformer=_name_errors)
class LimitsConfig:
    max_frame_bytes: int = attrs.field(default=65536, validator=[v.ge(1024), v.le(16 << 20)])
    max_body_chars: int = attrs.field(
        default=DEFAULT_MAX_BODY_CHARS, validator=[v.ge(1), v.le(1 << 20)]
    )
    max_attachments: int = attrs.field(default=10, validator=[v.ge(0), v.le(1000)])
    # PROTOCOL.md v1.1: distinct emoji on one message (the next one is `too_large`).
    max_reactions_per_message: int = attrs.field(default=32, validator=[v.ge(1), v.le(10_000)])
    max_upload_bytes: int = attrs.field(default=25 << 20, validator=_positive)
    max_group_members: int = attrs.field(default=1000, validator=[v.ge(2), v.le(1_000_000)])
    outbound_queue_frames: int = attrs.field(default=2048, validator=[v.ge(1), v.le(1_000_000)])
    outbound_queue_bytes: int = attrs.field(default=8 << 20, validator=_positive)
    messages_per_second: float = attrs.field(default=100.0, validator=_positive)
    message_burst: int = attrs.field(default=5000, validator=[v.ge(1), v.le(1_000_000)])
    max_connections_per_user: int = attrs.field(default=20, validator=[v.ge(1), v.le(100_000)])


@attrs.frozen(field_transformer=_name_errors)
class AuthConfig:
    mode: Literal["local", "clerk"] = attrs.field(
        default="local", validator=v.in_(("local", "clerk"))
    )
    allow_registration: bool = True
    token_ttl_seconds: int = attrs.field(default=30 * 86400, validator=_positive)
    token_purge_interval_seconds: float = attrs.field(default=3600.0, validator=_positive)
    scrypt_n: int = attrs.field(default=16384)
    login_failures_per_account: int = attrs.field(default=5, validator=[v.ge(0), v.le(1000)])
    login_failures_per_address: int = attrs.field(default=20, validator=[v.ge(0), v.le(100_000)])
    login_lockout_seconds: float = attrs.field(default=1.0, validator=_positive)
    login_lockout_max_seconds: float = attrs.field(default=900.0, validator=_positive)
    login_throttle_entries: int = attrs.field(default=10_000, validator=[v.ge(1), v.le(10_000_000)])

    @scrypt_n.validator
    def _check_n(self, attr: attrs.Attribute[int], value: int) -> None:
        if value < 2 or value & (value - 1) or value > 1 << 20:
            raise ValueError(f"scrypt_n must be a power of two from 2 to 1048576, not {value}")


def _pem_public_key(_inst: object, attr: attrs.Attribute[Any], value: str) -> None:
    if not value:
        return
    # Imported here: only Clerk mode needs `cryptography` at start-up.
    from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    try:
        key = load_pem_public_key(value.strip().encode())
    except ValueError:
        raise ValueError("not a PEM public key (-----BEGIN PUBLIC KEY----- ...)") from None
    if not isinstance(key, RSAPublicKey) or key.key_size < 2048:
        raise ValueError("must be an RSA public key of at least 2048 bits (Clerk signs with RS256)")


def _jwks_url(_inst: object, attr: attrs.Attribute[Any], value: str) -> None:
    if not value:
        return
    # Plain http is only for a JWKS served on this machine (tests, a local proxy).
    if not re.fullmatch(r"https://[^/?#\s]+(/\S*)?", value) and not re.fullmatch(
        r"http://(localhost|127\.0\.0\.1|\[::1\])(:\d+)?(/\S*)?", value
    ):
        raise ValueError(f"{value!r} is not an https:// URL (http:// only for localhost)")


def _webhook_secret(_inst: object, attr: attrs.Attribute[Any], value: str) -> None:
    if not value:
        return
    try:
        key = base64.b64decode(value.removeprefix("whsec_"), validate=True)
    except ValueError:
        key = b""
    if not value.startswith("whsec_") or len(key) < 16:
        raise ValueError("must be the whsec_... signing secret that Clerk shows for the endpoint")


# Clerk's publishable key: `pk_test_` or `pk_live_`, then the base64 of the instance's
# Frontend API host followed by `$` (what Clerk's SDKs decode to find that host).
_PUBLISHABLE_KEY = re.compile(r"pk_(test|live)_([A-Za-z0-9+/]+={0,2})")
_FRONTEND_API_HOST = re.compile(r"[a-z0-9]([a-z0-9.-]*[a-z0-9])?(:\d{1,5})?")


def frontend_api_host(publishable_key: str) -> str:
    """The Frontend API host (`clerk.example.com`) a publishable key names; ValueError
    when it is not a Clerk publishable key."""
    found = _PUBLISHABLE_KEY.fullmatch(publishable_key)
    decoded = ""
    if found:
        encoded = found.group(2)
        try:
            decoded = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True).decode()
        except (ValueError, UnicodeDecodeError):
            decoded = ""
    host = decoded.removesuffix("$")
    if not decoded.endswith("$") or not _FRONTEND_API_HOST.fullmatch(host):
        raise ValueError(
            "must be the publishable key Clerk shows for the instance (pk_test_... or"
            " pk_live_...: the base64 of its Frontend API host and a $)"
        )
    return host


def _publishable_key(_inst: object, attr: attrs.Attribute[Any], value: str) -> None:
    if value:
        frontend_api_host(value)


@attrs.frozen(field_transformer=_name_errors)
class ClerkConfig:
    issuer: str = ""
    # Published at GET /v1/settings for the app's Clerk sign-in; never a secret key.
    publishable_key: str = attrs.field(default="", validator=_publishable_key)
    jwt_public_key: str = attrs.field(default="", validator=_pem_public_key)
    jwks_url: str = attrs.field(default="", validator=_jwks_url)
    authorized_parties: tuple[str, ...] = ()
    leeway_seconds: float = attrs.field(default=5.0, validator=[v.ge(0), v.le(300)])
    jwks_timeout_seconds: float = attrs.field(default=5.0, validator=_positive)
    jwks_refresh_seconds: float = attrs.field(default=60.0, validator=_positive)
    jwks_max_age_seconds: float = attrs.field(default=3600.0, validator=_positive)
    webhook_secret: str = attrs.field(default="", validator=_webhook_secret)

    def check_usable(self) -> None:
        """Raise ValueError naming the key when Clerk mode cannot verify tokens."""
        if not self.issuer:
            raise ValueError('clerk.issuer must be set when auth.mode = "clerk"')
        if bool(self.jwt_public_key) == bool(self.jwks_url):
            raise ValueError(
                'auth.mode = "clerk" needs exactly one of clerk.jwt_public_key and clerk.jwks_url'
            )
        # Clerk signs its session tokens with `iss` = the Frontend API URL: a key of
        # another instance would sign people in where this server refuses every token.
        if self.publishable_key and self.issuer != self.frontend_api:
            raise ValueError(
                f"clerk.publishable_key names the Frontend API {self.frontend_api},"
                f" but clerk.issuer is {self.issuer!r}: both must be the same Clerk instance's"
            )

    @property
    def frontend_api(self) -> str:
        """`https://` and the publishable key's Frontend API host; "" without a key."""
        if not self.publishable_key:
            return ""
        return f"https://{frontend_api_host(self.publishable_key)}"


DEFAULT_MEDIA_TYPES = (
    "image/png",
    "image/jpeg",
    "image/gif",
    "image/webp",
    "image/heic",
    "application/pdf",
    "audio/mpeg",
    "audio/mp4",
    "audio/ogg",
    "audio/wav",
    "audio/webm",
    "video/mp4",
    "video/quicktime",
    "video/webm",
    "text/plain",
)


def _media_types(_inst: object, attr: attrs.Attribute[Any], value: tuple[str, ...]) -> None:
    for item in value:
        if not re.fullmatch(r"[a-z0-9][a-z0-9.+-]*/[a-z0-9][a-z0-9.+-]*", item):
            raise ValueError(f'{item!r} is not a lower-case media type like "image/png"')


@attrs.frozen(field_transformer=_name_errors)
class MediaConfig:
    allowed_types: tuple[str, ...] = attrs.field(
        default=DEFAULT_MEDIA_TYPES, validator=_media_types
    )
    quota_bytes: int = attrs.field(default=1 << 30, validator=_positive)
    unreferenced_ttl_seconds: float = attrs.field(default=86400.0, validator=_positive)
    cleanup_interval_seconds: float = attrs.field(default=3600.0, validator=_positive)


def _push_endpoint(_inst: object, attr: attrs.Attribute[Any], value: str) -> None:
    if value and not re.fullmatch(r"https?://[^/?#\s]+/\S*[^/\s]", value):
        raise ValueError(
            f"{value!r} is not the URL of a send endpoint like "
            '"https://exp.host/--/api/v2/push/send" (or "" for no push)'
        )


@attrs.frozen(field_transformer=_name_errors)
class PushConfig:
    endpoint: str = attrs.field(default="", validator=_push_endpoint)
    access_token: str = ""
    include_content: bool = True
    queue_size: int = attrs.field(default=10_000, validator=[v.ge(1), v.le(10_000_000)])
    max_concurrent_requests: int = attrs.field(default=4, validator=[v.ge(1), v.le(64)])
    request_timeout_seconds: float = attrs.field(default=30.0, validator=_positive)
    max_retries: int = attrs.field(default=5, validator=[v.ge(0), v.le(100)])
    retry_base_seconds: float = attrs.field(default=1.0, validator=_positive)
    retry_max_seconds: float = attrs.field(default=60.0, validator=_positive)
    receipt_delay_seconds: float = attrs.field(default=900.0, validator=_positive)


@attrs.frozen(field_transformer=_name_errors)
class SearchConfig:
    threads: int = attrs.field(default=4, validator=[v.ge(1), v.le(64)])
    max_concurrent_queries: int = attrs.field(default=16, validator=[v.ge(1), v.le(10_000)])
    max_files_per_query: int = attrs.field(default=500, validator=[v.ge(1), v.le(100_000)])
    max_open_readers: int = attrs.field(default=256, validator=[v.ge(1), v.le(100_000)])
    fill_chunk_rows: int = attrs.field(default=2000, validator=[v.ge(1), v.le(1_000_000)])


def _ai_base_url(_inst: object, attr: attrs.Attribute[Any], value: str) -> None:
    if value and not re.fullmatch(r"https?://[^/?#\s]+(/\S*)?", value):
        raise ValueError(
            f"{value!r} is not the URL of an OpenAI-compatible API like "
            '"http://127.0.0.1:11434/v1" (or "" for no assistant)'
        )


@attrs.frozen(field_transformer=_name_errors)
class AiConfig:
    """The assistant's endpoint and its bounds (PROTOCOL.md v1.1 "AI over a conversation")."""

    # "" = no endpoint: every AI route but the settings and the log answers `unavailable`.
    base_url: str = attrs.field(default="", validator=_ai_base_url)
    model: str = ""
    # The API key is read from this file (its first line) or this environment variable;
    # never from this file itself, so the config can be shown and logged.
    api_key_file: str = ""
    api_key_env: str = ""
    timeout_seconds: float = attrs.field(default=30.0, validator=_positive)
    max_context_messages: int = attrs.field(default=60, validator=[v.ge(1), v.le(10_000)])
    max_context_chars: int = attrs.field(default=24_000, validator=[v.ge(1000), v.le(10_000_000)])
    max_answer_tokens: int = attrs.field(default=1024, validator=[v.ge(16), v.le(1_000_000)])
    max_tool_rounds: int = attrs.field(default=4, validator=[v.ge(0), v.le(32)])
    max_response_bytes: int = attrs.field(default=1 << 20, validator=[v.ge(1024), v.le(64 << 20)])
    max_concurrent_requests: int = attrs.field(default=8, validator=[v.ge(1), v.le(1000)])
    cache_ttl_seconds: float = attrs.field(default=3600.0, validator=_positive)
    cache_entries: int = attrs.field(default=1000, validator=[v.ge(1), v.le(1_000_000)])
    daily_tokens_per_user: int = attrs.field(default=200_000, validator=[v.ge(1)])
    # Proactive scheduling: how long after the first message that talks of a meeting
    # time the assistant waits (for the others' proposals) before it reads the talk.
    proactive_delay_seconds: float = attrs.field(default=60.0, validator=[_positive, v.le(3600)])
    # The assistant's user (`bot: true`): its username, or the first free one of
    # `<name>-bot`, `<name>-bot2`, … if a person has it already.
    bot_username: str = attrs.field(
        default="assistant", validator=v.matches_re(r"[a-z0-9_.-]{3,24}")
    )
    bot_display_name: str = attrs.field(default="Assistant", validator=v.min_len(1))

    def __attrs_post_init__(self) -> None:
        if self.base_url and not self.model.strip():
            raise ValueError("ai.model must be set when ai.base_url is set")
        if self.api_key_file and self.api_key_env:
            raise ValueError("ai: set at most one of api_key_file and api_key_env")


@attrs.frozen(field_transformer=_name_errors)
class JobsConfig:
    concurrency: int = attrs.field(default=4, validator=[v.ge(1), v.le(256)])
    max_attempts: int = attrs.field(default=5, validator=[v.ge(1), v.le(100)])
    lease_seconds: float = attrs.field(default=30.0, validator=[_positive, v.le(86400)])
    attempt_timeout_seconds: float = attrs.field(default=300.0, validator=[_positive, v.le(86400)])
    backoff_base_seconds: float = attrs.field(default=2.0, validator=[_positive, v.le(86400)])
    backoff_max_seconds: float = attrs.field(default=600.0, validator=[_positive, v.le(86400)])
    poll_seconds: float = attrs.field(default=5.0, validator=[_positive, v.le(3600)])
    max_payload_bytes: int = attrs.field(default=16384, validator=[v.ge(64), v.le(1 << 20)])
    max_pending: int = attrs.field(default=100_000, validator=[v.ge(1), v.le(10_000_000)])
    keep_finished_seconds: float = attrs.field(default=7 * 86400.0, validator=_positive)
    # PROTOCOL.md: action items follow edits within 60 s, so the slot stays well below.
    action_items_delay_seconds: float = attrs.field(default=20.0, validator=[_positive, v.le(50)])
    # New messages (where the switch is on) have items extracted at most this often.
    action_items_after_messages_seconds: float = attrs.field(
        default=120.0, validator=[_positive, v.le(86400)]
    )

    def __attrs_post_init__(self) -> None:
        if self.backoff_base_seconds > self.backoff_max_seconds:
            raise _FieldError(
                "backoff_base_seconds",
                "must not be more than backoff_max_seconds "
                f"({self.backoff_base_seconds} > {self.backoff_max_seconds})",
            )


@attrs.frozen(field_transformer=_name_errors)
class EmbeddingsConfig:
    enabled: bool = True
    threads: int = attrs.field(default=1, validator=[v.ge(1), v.le(64)])
    intra_op_threads: int = attrs.field(default=1, validator=[v.ge(1), v.le(64)])
    niceness: int = attrs.field(default=10, validator=[v.ge(0), v.le(19)])
    batch_rows: int = attrs.field(default=32, validator=[v.ge(1), v.le(1024)])
    min_similarity: float = attrs.field(default=0.3, validator=[v.ge(-1.0), v.le(1.0)])


@attrs.frozen(field_transformer=_name_errors)
class RetentionConfig:
    """How long messages are kept (`services.retention`)."""

    # 0: forever. Else messages older than this many days become tombstones.
    days: float = attrs.field(default=0.0, validator=[v.ge(0), v.le(100_000)])
    sweep_interval_seconds: float = attrs.field(default=3600.0, validator=[_positive, v.le(86400)])
    # Conversations the sweep opens per second at most (a large server's sweep spreads).
    conversations_per_second: float = attrs.field(default=20.0, validator=_positive)


@attrs.frozen(field_transformer=_name_errors)
class LoggingConfig:
    level: Literal["debug", "info", "warning", "error"] = attrs.field(
        default="info", validator=v.in_(("debug", "info", "warning", "error"))
    )
    # "json": one object a line (time, level, logger, message, connection, request).
    format: Literal["text", "json"] = attrs.field(default="text", validator=v.in_(("text", "json")))


@attrs.frozen(field_transformer=_name_errors)
class MetricsConfig:
    """`GET /metrics` (Prometheus text format): off answers 404; with a token, a scrape
    without `Authorization: Bearer <token>` answers 401."""

    enabled: bool = True
    # The bearer token, read from this file (its first line) or this environment
    # variable, never from the config itself; neither: no token asked.
    token_file: str = ""
    token_env: str = ""

    def __attrs_post_init__(self) -> None:
        if self.token_file and self.token_env:
            raise ValueError("metrics: set at most one of token_file and token_env")


def _node_id(_inst: object, attr: attrs.Attribute[Any], value: str) -> None:
    if value and not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", value):
        raise ValueError(f"{value!r} is not 1-64 of A-Z a-z 0-9 _ . -")


def _redis_url(_inst: object, attr: attrs.Attribute[Any], value: str) -> None:
    if value and not re.fullmatch(r"rediss?://[^/?#\s]+(/\d+)?", value):
        raise ValueError(f'{value!r} is not a URL like "redis://127.0.0.1:6379/0"')


def _matching(pattern: str, what: str) -> Callable[[object, attrs.Attribute[Any], str], None]:
    """A validator: an empty value, or one that matches `pattern` (`what` it must be)."""

    def check(_inst: object, attr: attrs.Attribute[Any], value: str) -> None:
        if value and not re.fullmatch(pattern, value):
            raise ValueError(f"{value!r} is not {what}")

    return check


_s3_endpoint = _matching(r"https?://[^/?#\s@]+", 'a URL like "https://s3.example.com" (no path)')
_s3_bucket = _matching(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", "a bucket name (3-63 of a-z 0-9 . -)")
_s3_region = _matching(r"[a-z0-9-]{1,64}", 'a region like "us-east-1"')
_s3_prefix = _matching(
    r"[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*/", 'a key prefix like "messageai/" (ends with /)'
)
_s3_access_key_id = _matching(r"[A-Za-z0-9_.+=-]{1,128}", "an access key id")


def split_address(value: str) -> tuple[str, int]:
    """`host:port` (or `[v6]:port`) as (host, port); ValueError if it is not one."""
    match = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d{1,5})|([^\s:\[\]/]+):(\d{1,5})", value)
    if match is None:
        raise ValueError(f'{value!r} is not an address like "10.0.0.5:7400"')
    host = match.group(1) or match.group(3)
    port = int(match.group(2) or match.group(4))
    if port > 65535:
        raise ValueError(f"{value!r}: port {port} is above 65535")
    return host, port


def _address(_inst: object, attr: attrs.Attribute[Any], value: str) -> None:
    if value:
        split_address(value)


@attrs.frozen(field_transformer=_name_errors)
class ClusterConfig:
    """Cluster mode (docs/SCALE.md): several processes, one server. Off: nothing of it
    is imported or paid for."""

    enabled: bool = False
    # This node's name, unique in the cluster (it is in leases and in Redis's keys).
    node_id: str = attrs.field(default="", validator=_node_id)
    redis_url: str = attrs.field(default="", validator=_redis_url)
    # The node link (node-to-node TCP): where this node listens, and the address the
    # other nodes are told to reach it at (port 0 is only for `listen`: any free one,
    # then advertised with the port it got when `advertise` ends in ":0").
    link_listen: str = attrs.field(default="", validator=_address)
    link_advertise: str = attrs.field(default="", validator=_address)
    lease_ttl_seconds: float = attrs.field(default=10.0, validator=[_positive, v.le(3600)])
    lease_drift: float = attrs.field(default=0.01, validator=[v.ge(0), v.lt(0.5)])
    lease_margin_seconds: float = attrs.field(default=0.5, validator=[v.ge(0), v.le(60)])
    # A node's `node:<id>` key lives this long unless refreshed (every third of it).
    node_ttl_seconds: float = attrs.field(default=10.0, validator=[_positive, v.le(3600)])
    # Frames each side of a node link may have queued; one more ends the link.
    link_queue_frames: int = attrs.field(default=8192, validator=[v.ge(16), v.le(1_000_000)])
    link_connect_timeout_seconds: float = attrs.field(default=2.0, validator=_positive)
    # The secret every node presents when it opens a link (the first line of this file,
    # or this environment variable; the same on every node).
    link_secret_file: str = ""
    link_secret_env: str = ""
    # Where the conversations' files come from on a take-over (docs/SCALE.md §7): empty,
    # the one data directory every node shares on one host (§7a); an S3-compatible store
    # (`http(s)://host[:port]`, path-style), each node's own data directory and every
    # commit replicated there before its ack (§7b).
    s3_endpoint: str = attrs.field(default="", validator=_s3_endpoint)
    s3_bucket: str = attrs.field(default="", validator=_s3_bucket)
    s3_region: str = attrs.field(default="us-east-1", validator=[v.min_len(1), _s3_region])
    # Namespaces the keys in the bucket (several clusters may share one).
    s3_prefix: str = attrs.field(default="messageai/", validator=_s3_prefix)
    s3_access_key_id: str = attrs.field(default="", validator=_s3_access_key_id)
    # The secret access key: the first line of this file, or this environment variable.
    s3_secret_key_file: str = ""
    s3_secret_key_env: str = ""
    s3_timeout_seconds: float = attrs.field(default=5.0, validator=[_positive, v.le(120)])

    def __attrs_post_init__(self) -> None:
        if self.link_secret_file and self.link_secret_env:
            raise _FieldError("link_secret_env", "set at most one of link_secret_file and this")
        if self.s3_secret_key_file and self.s3_secret_key_env:
            raise _FieldError("s3_secret_key_env", "set at most one of s3_secret_key_file and this")
        if self.s3_endpoint:
            for key in ("s3_bucket", "s3_access_key_id"):
                if not getattr(self, key):
                    raise _FieldError(key, "must be set when s3_endpoint is")
            if not (self.s3_secret_key_file or self.s3_secret_key_env):
                raise _FieldError(
                    "s3_secret_key_file", "(or s3_secret_key_env) must be set when s3_endpoint is"
                )
        if not self.enabled:
            return
        for key in ("node_id", "redis_url", "link_listen", "link_advertise"):
            if not getattr(self, key):
                raise _FieldError(key, "must be set when cluster.enabled is true")
        if not (self.link_secret_file or self.link_secret_env):
            raise _FieldError(
                "link_secret_file", "(or link_secret_env) must be set when cluster.enabled is true"
            )
        if self.lease_ttl_seconds * (1 - self.lease_drift) - self.lease_margin_seconds <= 0:
            raise _FieldError("lease_margin_seconds", "leaves no lease validity after lease_drift")


@attrs.frozen
class Config:
    server: ServerConfig = ServerConfig()
    storage: StorageConfig = StorageConfig()
    directory: DirectoryConfig = DirectoryConfig()
    conversations: ConversationsConfig = ConversationsConfig()
    limits: LimitsConfig = LimitsConfig()
    auth: AuthConfig = AuthConfig()
    clerk: ClerkConfig = ClerkConfig()
    media: MediaConfig = MediaConfig()
    push: PushConfig = PushConfig()
    search: SearchConfig = SearchConfig()
    jobs: JobsConfig = JobsConfig()
    ai: AiConfig = AiConfig()
    embeddings: EmbeddingsConfig = EmbeddingsConfig()
    retention: RetentionConfig = RetentionConfig()
    logging: LoggingConfig = LoggingConfig()
    metrics: MetricsConfig = MetricsConfig()
    cluster: ClusterConfig = ClusterConfig()

    def __attrs_post_init__(self) -> None:
        if self.auth.mode == "clerk":
            self.clerk.check_usable()
        # One group commit fans out up to max_batch frames at once to a subscriber;
        # a queue smaller than that would drop healthy readers.
        if self.limits.outbound_queue_frames < self.conversations.max_batch:
            raise ValueError(
                "limits.outbound_queue_frames must be at least conversations.max_batch "
                f"({self.limits.outbound_queue_frames} < {self.conversations.max_batch})"
            )

    @property
    def data_dir(self) -> Path:
        return Path(self.storage.data_dir)


_converter = cattrs.Converter(forbid_extra_keys=True)
for _t in (str, int, float, bool):
    _converter.register_structure_hook(_t, scalar_hook(_t, TOML))
_converter.register_structure_hook_func(
    lambda t: t == tuple[str, ...], lambda value, _type: tuple(string_list(value, TOML))
)


def _literal_hook(value: Any, type_: Any) -> Any:
    allowed = type_.__args__
    if value not in allowed:
        raise ValueError(f"must be one of {', '.join(map(repr, allowed))}, not {value!r}")
    return value


_converter.register_structure_hook_func(
    lambda t: getattr(t, "__origin__", None) is Literal, _literal_hook
)


def _problems(exc: BaseException, path: str) -> list[str]:
    """One `dotted.key: problem` line per error in a cattrs error tree."""
    prefix = f"{path}." if path else ""
    if isinstance(exc, cattrs.ForbiddenExtraKeysError):
        return [f"{prefix}{key}: unknown key" for key in sorted(exc.extra_fields)]
    if isinstance(exc, cattrs.ClassValidationError):
        noted, unnoted = exc.group_exceptions()
        lines = [line for inner, note in noted for line in _problems(inner, prefix + note.name)]
        return lines + [line for inner in unnoted for line in _problems(inner, path)]
    if isinstance(exc, _FieldError):
        return [f"{prefix}{exc.key}: {exc}"]
    return [f"{path}: {exc}" if path else str(exc)]


def parse_config(data: dict[str, Any], source: str = "config") -> Config:
    """Structure a parsed TOML document; raise ConfigError naming the bad key."""
    try:
        return _converter.structure(data, Config)
    except (cattrs.BaseValidationError, ValueError, TypeError) as exc:
        lines = "\n  ".join(_problems(exc, ""))
        raise ConfigError(f"{source}: invalid configuration:\n  {lines}") from exc


ENV_PREFIX = "MESSAGEAI_"


def environment_overrides(environ: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    """`MESSAGEAI_<SECTION>__<KEY>=value` variables as `{section: {key: value}}`: e.g.
    `MESSAGEAI_SERVER__PORT=9000`, `MESSAGEAI_AI__BASE_URL=http://…`. The value is read
    as a TOML value where it is one (`9000`, `true`, `["a", "b"]`), else taken as a
    string (`FULL`, a URL). Other `MESSAGEAI_…` variables (no `__`) are not config.
    Raises ConfigError naming the variable for an unknown section or key."""
    defaults = Config()
    sections = {f.name: type(getattr(defaults, f.name)) for f in attrs.fields(Config)}
    found: dict[str, dict[str, Any]] = {}
    for name, raw in sorted(environ.items()):
        if not name.startswith(ENV_PREFIX) or "__" not in name:
            continue
        section, _, key = name[len(ENV_PREFIX) :].lower().partition("__")
        kind = sections.get(section)
        if kind is None or key not in {f.name for f in attrs.fields(kind)}:
            raise ConfigError(f"{name}: no config key {section}.{key} (see messageai/default.toml)")
        try:
            value = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw
        found.setdefault(section, {})[key] = value
    return found


def load_config(path: Path | None = None, environ: Mapping[str, str] | None = None) -> Config:
    """Load `path`, or the embedded default when None; then `environ`'s
    `MESSAGEAI_<SECTION>__<KEY>` overrides (`environment_overrides`), when given."""
    if path is None:
        text = resources.files("messageai").joinpath("default.toml").read_text("utf-8")
        source = "embedded default config"
    else:
        try:
            text = path.read_text("utf-8")
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read config: {exc.strerror}") from exc
        source = str(path)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from exc
    if environ is not None:
        overrides = environment_overrides(environ)
        for section, values in overrides.items():
            data.setdefault(section, {}).update(values)
        if overrides:
            source += " and MESSAGEAI_… environment variables"
    return parse_config(data, source)


def with_overrides(
    config: Config, *, host: str | None, port: int | None, data_dir: str | None
) -> Config:
    """Apply CLI flags on top of the file's values."""
    server = config.server
    if host is not None:
        server = attrs.evolve(server, host=host)
    if port is not None:
        try:
            server = attrs.evolve(server, port=port)
        except ValueError as exc:
            raise ConfigError(f"--port: {exc}") from exc
    storage = config.storage
    if data_dir is not None:
        storage = attrs.evolve(storage, data_dir=data_dir)
    return attrs.evolve(config, server=server, storage=storage)


def read_secret(section: str, file_key: str, path: str, env_key: str, variable: str) -> str | None:
    """A secret a config names without holding it (the AI key, the metrics token): the
    first line of the file at `path`, or the environment variable `variable`; None when
    neither is set. ConfigError names the key and the source, never the content."""
    if path:
        try:
            text = Path(path).read_text("utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(
                f"{section}.{file_key}: cannot read {path!r} ({type(exc).__name__})"
            ) from None
        secret = text.strip().splitlines()[0].strip() if text.strip() else ""
        if not secret:
            raise ConfigError(f"{section}.{file_key}: {path!r} is empty")
        return secret
    if variable:
        secret = os.environ.get(variable, "").strip()
        if not secret:
            raise ConfigError(f"{section}.{env_key}: the variable {variable} is not set")
        return secret
    return None
