"""docs/protocol.md keeps up with the server: every frame type and field the protocol
module knows, every route the server mounts, every error class and close code.

The frames come from `messageai.protocol` (`CLIENT_FRAMES`, `SERVER_FRAMES` and the
attrs fields of their classes); the routes from `messageai.rest.mount` run against the
objects of a real server (Clerk mode with a webhook secret, so that every route is
mounted), on a router that records what is added. A frame or route is documented by a
heading of its own (`#### \\`subscribe\\`` under "Client → server" or "Server → client",
`### \\`GET /v1/me\\`` under "REST API"); its fields must appear in its section. The
reverse holds too: a heading for something the server does not know fails, so the page
cannot keep what was removed.
"""

from __future__ import annotations

import re
import typing
from pathlib import Path

import attrs
import trio
from wsproto.frame_protocol import CloseReason

from messageai import errors, protocol, rest
from messageai.edge.asgi import Handler, Router
from messageai.rest import webapp
from tests.helpers import make_config, running_server

DOC = Path(__file__).resolve().parent.parent / "docs" / "protocol.md"
# Served by the front door before any router: the WebSocket upgrade.
FRONT_DOOR_ROUTES = {"GET /v1/ws"}
# Sent by edge/wsframes.py through wsproto for refused frames; not constants of ours.
WSPROTO_CLOSE_CODES = {CloseReason.PROTOCOL_ERROR, CloseReason.INVALID_FRAME_PAYLOAD_DATA}


def doc() -> str:
    return DOC.read_text("utf-8")


def section(text: str, heading: str) -> str:
    """The text under the heading `heading` (any level) up to the next heading of the
    same or a higher level."""
    match = re.search(rf"^(#+) {re.escape(heading)}\s*$", text, re.MULTILINE)
    assert match, f"docs/protocol.md has no heading {heading!r}"
    level = len(match.group(1))
    rest_of_text = text[match.end() :]
    end = re.search(rf"^#{{1,{level}}} ", rest_of_text, re.MULTILINE)
    return rest_of_text[: end.start()] if end else rest_of_text


def subsections(text: str, level: int) -> dict[str, str]:
    """`{name: body}` for every heading "<level #> `name`" in `text`."""
    parts = re.split(rf"^{'#' * level} `([^`]+)`\s*$", text, flags=re.MULTILINE)
    return {parts[i]: parts[i + 1] for i in range(1, len(parts), 2)}


def mentions(text: str, field: str) -> bool:
    return f"`{field}`" in text or f'"{field}"' in text


def assert_same(documented: set[str], known: set[str], what: str) -> None:
    missing, stale = sorted(known - documented), sorted(documented - known)
    assert not missing, f"{what} the server knows but docs/protocol.md does not: {missing}"
    assert not stale, f"{what} docs/protocol.md documents but the server does not know: {stale}"


def test_every_client_frame_and_its_fields_are_documented() -> None:
    documented = subsections(section(doc(), "Client → server"), 4)
    assert_same(set(documented), set(protocol.CLIENT_FRAMES), "client frames")
    for tag, cls in protocol.CLIENT_FRAMES.items():
        for field in ["type", "req", *(f.name for f in attrs.fields(cls))]:
            assert mentions(documented[tag], field), f"client frame {tag}: field {field}"


def test_every_server_frame_and_its_fields_are_documented() -> None:
    documented = subsections(section(doc(), "Server → client"), 4)
    # Every class of the ServerFrame union has its tag.
    assert set(typing.get_args(protocol.ServerFrame)) == set(protocol.SERVER_FRAMES)
    assert_same(set(documented), set(protocol.SERVER_FRAMES.values()), "server frames")
    for cls, tag in protocol.SERVER_FRAMES.items():
        for field in ["type", *(f.name for f in attrs.fields(cls))]:
            assert mentions(documented[tag], field), f"server frame {tag}: field {field}"


class RecordingRouter(Router):
    """A real Router that also remembers `METHOD pattern` of every route added."""

    def __init__(self) -> None:
        super().__init__()
        self.added: set[str] = set()

    def add(self, method: str, pattern: str, handler: Handler, *, stream: bool = False) -> None:
        self.added.add(f"{method} {pattern}")
        super().add(method, pattern, handler, stream=stream)


async def test_every_route_the_server_mounts_is_documented(tmp_path: Path) -> None:
    config = make_config(
        tmp_path / "data",
        auth={"mode": "clerk"},
        clerk={
            "issuer": "https://clerk.example.test",
            "jwks_url": "https://clerk.example.test/.well-known/jwks.json",
            "webhook_secret": "whsec_ZG9jcy10ZXN0LXdlYmhvb2stc2VjcmV0",
        },
    )
    router = RecordingRouter()
    with trio.fail_after(20):
        async with running_server(config) as server:
            assert server.directory is not None and server.registry is not None
            assert server.presence is not None and server.media is not None
            assert server.push is not None and server.search is not None
            rest.mount(
                router,
                server.config,
                server.directory,
                server.registry,
                server.presence,
                server.media,
                server.push,
                server.guard,
                server.close_user_sessions,
                server.close_token_sessions,
                server.search,
                server.assistant,
                server.action_items,
            )
    assert "POST /v1/webhooks/clerk" in router.added
    documented = set(subsections(section(doc(), "REST API"), 3))
    # The web app's catch-all is documented as the path it stands for.
    added = {route.replace(webapp.PATTERN, "/{path}") for route in router.added}
    assert_same(documented, added | FRONT_DOOR_ROUTES, "routes")


def error_classes() -> list[type[errors.MessageAIError]]:
    found: list[type[errors.MessageAIError]] = []
    todo: list[type[errors.MessageAIError]] = [errors.MessageAIError]
    while todo:
        cls = todo.pop()
        found.append(cls)
        todo.extend(cls.__subclasses__())
    return found


def test_every_error_code_and_status_is_documented() -> None:
    table = section(doc(), "Errors")
    rows = [line for line in table.splitlines() if line.startswith("| `")]
    for cls in error_classes():
        assert any(row.startswith(f"| `{cls.code}` | {cls.status} |") for row in rows), (
            f"{cls.__name__}: no row `{cls.code}` | {cls.status} in the Errors table"
        )


def test_every_close_code_is_documented() -> None:
    table = section(doc(), "Close codes")
    codes = {
        value
        for name, value in vars(errors).items()
        if name.startswith("CLOSE_") and isinstance(value, int)
    }
    for code in codes | {int(code) for code in WSPROTO_CLOSE_CODES}:
        assert re.search(rf"^\| {code} \|", table, re.MULTILINE), f"close code {code}"
