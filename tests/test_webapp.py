"""The web app at `/` (messageai/rest/webapp.py), over real HTTP against the real server.

Most tests serve an export of their own, written under tmp_path in the shape
`expo export --platform web` gives (index.html with an inline style, hashed bundles under
`_expo/static/`, assets named by their md5): `WEBAPP_DIR` is pointed at it before the
server starts. `test_committed_export_*` serve the real one in messageai/webapp/. Paths
with `..` go over a raw socket, since httpx would normalise them away before sending.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from messageai.rest import webapp
from tests.helpers import Harness, assert_error, harness, make_config

STYLE = b"html,body{height:100%}body{overflow:hidden}#root{display:flex;height:100%;flex:1}"
BUNDLE = b"console.log('the app');\n" * 100
INDEX = (
    b"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'/>"
    b"<style id='expo-reset'>" + STYLE + b"</style>"
    b"<link rel='icon' href='/favicon.ico'/></head>"
    b"<body><noscript>You need to enable JavaScript to run this app.</noscript>"
    b"<div id='root'></div>"
    b"<script src='/_expo/static/js/web/entry-0123456789abcdef0123456789abcdef.js' defer></script>"
    b"</body></html>"
)
ENTRY = "_expo/static/js/web/entry-0123456789abcdef0123456789abcdef.js"
FONT = "assets/node_modules/icons/Ionicons.b4eb097d35f44ed943676fd56f6bdc51.ttf"
ICON = "assets/node_modules/expo-router/assets/close-icon.808e1b1b9b53114ec2838071a7e6daa7@2x.png"


def write_export(root: Path, index: bytes = INDEX, stamp: str = "1") -> None:
    (root / ENTRY).parent.mkdir(parents=True, exist_ok=True)
    (root / FONT).parent.mkdir(parents=True, exist_ok=True)
    (root / ICON).parent.mkdir(parents=True, exist_ok=True)
    (root / "index.html").write_bytes(index)
    (root / ENTRY).write_bytes(BUNDLE)
    (root / FONT).write_bytes(b"\0font" * 400)
    (root / ICON).write_bytes(b"\x89PNG")
    (root / "favicon.ico").write_bytes(b"\0ico")
    (root / "metadata.json").write_bytes(b'{"version":0}')
    (root / webapp.HASH_FILE).write_text(f"source {stamp * 64}\nexport {stamp * 64}\n")


@pytest.fixture
async def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Harness]:
    """The real server, serving the export written under tmp_path/export."""
    root = tmp_path / "export"
    write_export(root)
    # A file beside the export that no request may reach.
    (tmp_path / "secret.txt").write_text("the secret")
    monkeypatch.setattr(webapp, "WEBAPP_DIR", root)
    with trio.fail_after(60):
        async with harness(make_config(tmp_path / "data")) as running:
            yield running


async def raw_get(port: int, target: bytes) -> tuple[int, bytes]:
    """A GET of `target` sent byte for byte, as no HTTP library would send it."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(
            b"GET " + target + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
        )
        data = b""
        while chunk := await stream.receive_some(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


async def test_index_is_served_at_root_revalidated_under_a_strict_csp(site: Harness) -> None:
    r = await site.http.get("/")
    assert r.status_code == 200
    assert r.content == INDEX
    assert r.headers["content-type"] == "text/html; charset=utf-8"
    assert r.headers["cache-control"] == "no-cache"
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["etag"].startswith('"')
    csp = r.headers["content-security-policy"]
    directives = dict(d.strip().split(" ", 1) for d in csp.split(";"))
    assert directives["default-src"] == "'self'"
    assert directives["script-src"] == "'self'"
    style_hash = base64_sha256(STYLE)
    # The empty <style> react-native-web fills through the CSSOM, and the page's own.
    empty = base64_sha256(b"")
    assert directives["style-src"] == f"'self' 'sha256-{empty}' 'sha256-{style_hash}'"
    assert "'unsafe-inline'" not in csp and "'unsafe-eval'" not in csp
    assert directives["object-src"] == "'none'"
    assert directives["frame-ancestors"] == "'none'"
    assert directives["connect-src"] == "'self'"
    # /index.html is the same document.
    again = await site.http.get("/index.html")
    assert again.content == INDEX and again.headers["cache-control"] == "no-cache"


async def test_hashed_assets_are_immutable_and_the_rest_revalidated(site: Harness) -> None:
    r = await site.http.get("/" + ENTRY, headers={"accept-encoding": "identity"})
    assert r.status_code == 200
    assert r.content == BUNDLE
    assert r.headers["content-type"] == "text/javascript; charset=utf-8"
    assert r.headers["cache-control"] == "public, max-age=31536000, immutable"
    font = await site.http.get("/" + FONT)
    assert font.headers["content-type"] == "font/ttf"
    assert font.headers["cache-control"] == "public, max-age=31536000, immutable"
    scaled = await site.http.get("/" + ICON)
    assert scaled.content == b"\x89PNG"
    assert scaled.headers["content-type"] == "image/png"
    assert scaled.headers["cache-control"] == "public, max-age=31536000, immutable"
    icon = await site.http.get("/favicon.ico")
    assert icon.content == b"\0ico"
    assert icon.headers["content-type"] == "image/x-icon"
    assert icon.headers["cache-control"] == "no-cache"


async def test_client_side_routes_get_the_apps_html(site: Harness) -> None:
    for path in ("/login", "/c/01JABCDEF", "/c/01JABCDEF/ai", "/settings/", "/u/alice.smith"):
        r = await site.http.get(path)
        assert r.status_code == 200, path
        assert r.content == INDEX, path
        assert r.headers["cache-control"] == "no-cache", path


async def test_a_missing_asset_is_a_404_never_html(site: Harness) -> None:
    for path in (
        "/_expo/static/js/web/entry-ffffffffffffffffffffffffffffffff.js",
        "/assets/missing.png",
        "/main.js",
        "/styles.css",
    ):
        r = await site.http.get(path)
        assert_error(r, 404, "not_found")
        assert "text/html" not in r.headers["content-type"]


async def test_api_paths_are_unchanged(site: Harness) -> None:
    assert (await site.http.get("/healthz")).json() == {"status": "ok"}
    assert_error(await site.http.get("/v1/nope"), 404, "not_found")
    assert_error(await site.http.get("/v1"), 404, "not_found")
    assert_error(await site.http.get("/v1/"), 404, "not_found")
    assert_error(await site.http.get("/v1/ws"), 426, "bad_request")
    assert_error(await site.http.get("/v1/me"), 401, "unauthorized")
    r = await site.http.post("/", json={})
    assert_error(r, 405, "bad_request")
    assert r.headers["allow"] == "GET, HEAD"
    # The API itself still works beside the web app.
    alice = await site.account("alice")
    me = await site.http.get("/v1/me", headers=site.auth(alice))
    assert me.status_code == 200 and me.json()["username"] == "alice"


async def test_head_answers_the_headers_of_get_without_a_body(site: Harness) -> None:
    get = await site.http.get("/", headers={"accept-encoding": "identity"})
    head = await site.http.head("/", headers={"accept-encoding": "identity"})
    assert head.status_code == 200
    assert head.content == b""
    assert head.headers["content-length"] == str(len(INDEX)) == get.headers["content-length"]
    assert head.headers["etag"] == get.headers["etag"]
    assert head.headers["content-security-policy"] == get.headers["content-security-policy"]


async def test_a_known_etag_gets_a_304(site: Harness) -> None:
    first = await site.http.get("/" + ENTRY, headers={"accept-encoding": "identity"})
    etag = first.headers["etag"]
    r = await site.http.get(
        "/" + ENTRY, headers={"if-none-match": etag, "accept-encoding": "identity"}
    )
    assert r.status_code == 304
    assert r.content == b""
    assert r.headers["etag"] == etag
    assert r.headers["cache-control"] == "public, max-age=31536000, immutable"
    other = await site.http.get(
        "/" + ENTRY, headers={"if-none-match": '"nope", W/"other"', "accept-encoding": "identity"}
    )
    assert other.status_code == 200 and other.content == BUNDLE
    star = await site.http.get("/", headers={"if-none-match": "*"})
    assert star.status_code == 304


async def test_text_is_sent_gzipped_to_a_client_that_accepts_it(site: Harness) -> None:
    # httpx would decode it: read the raw bytes.
    async with site.http.stream("GET", "/" + ENTRY, headers={"accept-encoding": "gzip"}) as r:
        raw = b"".join([chunk async for chunk in r.aiter_raw()])
    assert r.headers["content-encoding"] == "gzip"
    assert r.headers["vary"] == "accept-encoding"
    assert int(r.headers["content-length"]) == len(raw) < len(BUNDLE)
    assert gzip.decompress(raw) == BUNDLE
    plain = await site.http.get("/" + ENTRY, headers={"accept-encoding": "identity"})
    assert "content-encoding" not in plain.headers
    assert plain.headers["etag"] != r.headers["etag"]
    refused = await site.http.get("/" + ENTRY, headers={"accept-encoding": "gzip;q=0, br"})
    assert "content-encoding" not in refused.headers and refused.content == BUNDLE


@pytest.mark.parametrize(
    "target",
    [
        b"/../secret.txt",
        b"/%2e%2e/secret.txt",
        b"/_expo/../../secret.txt",
        b"/..%2fsecret.txt",
        b"/.%2e/.%2e/pyproject.toml",
        b"/./index.html",
        b"/..\\secret.txt",
        b"/%5c..%5csecret.txt",
        b"/index.html%00.js",
    ],
)
async def test_path_traversal_is_refused(site: Harness, target: bytes) -> None:
    assert site.server.port is not None
    status, body = await raw_get(site.server.port, target)
    assert status == 400, (target, status, body)
    assert b"the secret" not in body
    assert b"bad_request" in body


async def test_a_new_build_is_served_without_a_restart(site: Harness) -> None:
    first = await site.http.get("/")
    assert first.content == INDEX
    root = webapp.WEBAPP_DIR
    newer = INDEX.replace(b"<div id='root'>", b"<div id='root' data-build='2'>")
    # scripts/build-app writes SOURCE-HASH last; until then the old export is served.
    write_export(root, newer, stamp="2")
    r = await site.http.get("/")
    assert r.content == newer
    assert r.headers["etag"] != first.headers["etag"]


async def test_no_export_says_how_to_build_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setattr(webapp, "WEBAPP_DIR", empty)
    with trio.fail_after(60):
        async with harness(make_config(tmp_path / "data")) as site:
            body = assert_error(await site.http.get("/"), 404, "not_found")
            assert "scripts/build-app" in body["error"]["message"]
            assert (await site.http.get("/healthz")).status_code == 200


def test_accept_encoding_parsing() -> None:
    assert webapp.accepts_gzip("gzip, deflate, br")
    assert webapp.accepts_gzip("br;q=1.0, gzip;q=0.8")
    assert webapp.accepts_gzip("*")
    assert not webapp.accepts_gzip(None)
    assert not webapp.accepts_gzip("identity")
    assert not webapp.accepts_gzip("gzip;q=0")
    assert not webapp.accepts_gzip("gzip;q=0.000, *")
    assert not webapp.accepts_gzip("*;q=0")
    assert not webapp.accepts_gzip("gzip;q=nonsense")


def test_csp_hashes_every_inline_script_and_style_once() -> None:
    html = (
        b"<style>a{}</style><style id=x>a{}</style><script>var a=1</script>"
        b"<script src='/x.js'></script><script type='module'>\n</script>"
    )
    csp = webapp.content_security_policy(html)
    style = base64_sha256(b"a{}")
    script = base64_sha256(b"var a=1")
    assert f"style-src 'self' {webapp.EMPTY_STYLE} 'sha256-{style}';" in csp
    assert f"script-src 'self' 'sha256-{script}';" in csp


def base64_sha256(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


async def test_committed_export_is_served_with_its_bundle(h: Harness) -> None:
    if not (webapp.WEBAPP_DIR / "index.html").is_file():
        pytest.skip("no web export in messageai/webapp/ (scripts/build-app makes it)")
    r = await h.http.get("/")
    assert r.status_code == 200 and r.headers["content-type"] == "text/html; charset=utf-8"
    scripts = re.findall(r'<script src="(/_expo/static/js/web/[^"]+\.js)"', r.text)
    assert scripts, r.text
    for src in scripts:
        bundle = await h.http.get(src)
        assert bundle.status_code == 200
        assert bundle.headers["content-type"] == "text/javascript; charset=utf-8"
        assert bundle.headers["cache-control"] == "public, max-age=31536000, immutable"
        assert bundle.headers["content-encoding"] == "gzip"  # httpx asks for it
    # The app's icon (app.json `web.favicon`): a real ICO, revalidated (its name has no hash).
    icon = await h.http.get("/favicon.ico")
    assert icon.status_code == 200 and icon.headers["content-type"] == "image/x-icon"
    assert icon.content[:4] == b"\0\0\1\0", icon.content[:16]
    assert icon.headers["cache-control"] == "no-cache" and icon.headers["etag"]
