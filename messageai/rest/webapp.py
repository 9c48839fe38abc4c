"""The web app at `/`: the Expo web export in `messageai/webapp/` (written only by
`scripts/build-app`), served with its caching headers and Content-Security-Policy.

Mounted last by `rest.mount`, on every GET and HEAD path outside `/v1/`, so the REST
API, `/healthz` and `/v1/ws` are matched first and an unknown `/v1/...` path keeps its JSON
404. A path names one of the export's files, or is a client-side route (expo-router,
`"single"` output) answered with `index.html`; a missing file under the export's asset
folders, or with an asset's extension, is a 404, never HTML that a script tag would choke on.

Only files found by listing the export are served, looked up by their relative path in a
dict, so no request path ever becomes a filesystem path; a `..` segment, a backslash or a
NUL is refused with a 400 all the same. The export (a few MB, bounded by
`MAX_EXPORT_BYTES`) is read into memory once, with a gzip copy of what compresses; it is
read again when `SOURCE-HASH`, which `scripts/build-app` writes last, changes on disk.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import logging
import re
from collections.abc import AsyncIterator
from pathlib import Path

import attrs
import trio

from messageai.edge.asgi import Request, Response, Router, StreamingResponse
from messageai.errors import BadRequest, Internal, NotFound

log = logging.getLogger(__name__)

WEBAPP_DIR = Path(__file__).resolve().parent.parent / "webapp"
INDEX = "index.html"
HASH_FILE = "SOURCE-HASH"
# Every path but /v1 and what is under it (the REST API and the WebSocket) and the
# server's own top-level routes (the probes, /metrics): those stay the server's even
# where one is switched off (`metrics.enabled = false` answers 404, not the app).
# `Router` compiles route patterns as regular expressions; the REST routes are added
# before this one, so they win wherever both match.
PATTERN = r"/(?P<path>(?!v1(?:/|$))(?!(?:healthz|readyz|metrics)$).*)"
# The export is held in memory: refuse one that would not reasonably fit.
MAX_EXPORT_BYTES = 64 * 1024 * 1024

# Metro names these by content hash: they never change under their name.
IMMUTABLE_PREFIX = "_expo/static/"
# Expo copies assets as `name.<md5>.ext` (or `name.<md5>@2x.ext`); immutable too.
HASHED_NAME = re.compile(r"\.[0-9a-f]{16,64}(?:@[0-9.]+x)?\.[A-Za-z0-9]+$")
IMMUTABLE = b"public, max-age=31536000, immutable"
# The HTML (and anything not named by its hash) is revalidated on every load, so a new
# export is picked up at once; the ETag makes that a 304.
REVALIDATE = b"no-cache"

# Paths under these, or ending in these extensions, are files: never the SPA fallback.
ASSET_PREFIXES = ("_expo/", "assets/")
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".map": "application/json",
    ".webmanifest": "application/manifest+json",
    ".txt": "text/plain; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".gif": "image/gif",
    ".webp": "image/webp",
    ".ico": "image/x-icon",
    ".ttf": "font/ttf",
    ".otf": "font/otf",
    ".woff": "font/woff",
    ".woff2": "font/woff2",
    ".wasm": "application/wasm",
}
COMPRESSIBLE = frozenset({".html", ".js", ".mjs", ".css", ".json", ".map", ".svg", ".txt", ".ttf"})
# Smaller than this, gzip saves less than its own header costs in a round trip.
MIN_COMPRESS_BYTES = 1024

# The policy the export runs under (checked in a real browser by tests/browser). Scripts
# only from this origin, plus the sha256 of each inline script of index.html; styles the
# same, plus the hash of the empty string: react-native-web appends an empty <style> and
# adds its rules through the CSSOM (insertRule), which style-src does not govern, while
# text put into any <style> is still refused. Connections only to this origin (its REST
# API and /v1/ws); images also from `blob:` (media is fetched with the bearer token and
# shown from a blob) and `data:`. In Clerk mode, `{clerk}` adds the instance's Frontend
# API origin where clerk-js needs it: its script is loaded from there and it calls the
# Frontend API; no other Clerk host (the app signs in with its own form: Clerk's prebuilt
# components, which want 'unsafe-inline' styles and img.clerk.com, are not used).
EMPTY_STYLE = "'sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU='"
CSP_TEMPLATE = (
    "default-src 'self'; script-src 'self'{clerk}{scripts}; style-src 'self' "
    + EMPTY_STYLE
    + "{styles}; img-src 'self' blob: data:; media-src 'self' blob:; font-src 'self' data:;"
    " connect-src 'self'{clerk}; worker-src 'self' blob:;"
    " manifest-src 'self';"
    " object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
INLINE_SCRIPT = re.compile(rb"<script(?![^>]*\bsrc=)[^>]*>(.*?)</script>", re.S | re.I)
INLINE_STYLE = re.compile(rb"<style[^>]*>(.*?)</style>", re.S | re.I)


def content_security_policy(html: bytes, clerk_origin: str = "") -> str:
    """The CSP for an export whose `index.html` is `html`: `CSP_TEMPLATE` with a
    `'sha256-...'` source for each inline script and style the page holds, and
    `clerk_origin` (Clerk mode's Frontend API, `https://host`) where clerk-js needs it."""

    def sources(pattern: re.Pattern[bytes]) -> str:
        digests = []
        for body in pattern.findall(html):
            if body.strip():
                digest = base64.b64encode(hashlib.sha256(body).digest()).decode()
                digests.append(f" 'sha256-{digest}'")
        return "".join(dict.fromkeys(digests))

    return CSP_TEMPLATE.format(
        scripts=sources(INLINE_SCRIPT),
        styles=sources(INLINE_STYLE),
        clerk=f" {clerk_origin}" if clerk_origin else "",
    )


@attrs.frozen
class Asset:
    """One exported file, in memory: its bytes, a gzip copy when that is smaller, and the
    headers every answer for it carries."""

    body: bytes
    gzipped: bytes | None
    etag: str
    content_type: str
    cache_control: bytes


@attrs.frozen
class Export:
    """The export as loaded: files by relative posix path, and the CSP of its HTML."""

    assets: dict[str, Asset]
    csp: str
    # The (mtime_ns, size) of SOURCE-HASH when loaded: a new build changes it.
    stamp: tuple[int, int] | None


def _stamp(root: Path) -> tuple[int, int] | None:
    try:
        st = (root / HASH_FILE).stat()
    except FileNotFoundError:
        return None
    return st.st_mtime_ns, st.st_size


def load_export(root: Path, clerk_origin: str = "") -> Export:
    """Read every file of the export under `root` (SOURCE-HASH and Python files aside).
    Internal when the export is larger than `MAX_EXPORT_BYTES`; an export without
    `index.html` loads empty (the server then says to build it)."""
    stamp = _stamp(root)
    assets: dict[str, Asset] = {}
    total = 0
    if (root / INDEX).is_file():
        for path in sorted(root.rglob("*")):
            if not path.is_file() or path.name == HASH_FILE or path.suffix in (".py", ".pyc"):
                continue
            rel = path.relative_to(root).as_posix()
            body = path.read_bytes()
            total += len(body)
            if total > MAX_EXPORT_BYTES:
                raise Internal(f"the web export in {root} is over {MAX_EXPORT_BYTES} bytes")
            assets[rel] = _asset(rel, body)
    csp = content_security_policy(assets[INDEX].body, clerk_origin) if INDEX in assets else ""
    return Export(assets, csp, stamp)


def _asset(rel: str, body: bytes) -> Asset:
    suffix = Path(rel).suffix.lower()
    gzipped = None
    if suffix in COMPRESSIBLE and len(body) >= MIN_COMPRESS_BYTES:
        packed = gzip.compress(body, compresslevel=6, mtime=0)
        gzipped = packed if len(packed) < len(body) else None
    name = rel.rsplit("/", 1)[-1]
    immutable = rel.startswith(IMMUTABLE_PREFIX) or bool(HASHED_NAME.search(name))
    return Asset(
        body=body,
        gzipped=gzipped,
        etag=hashlib.sha256(body).hexdigest()[:32],
        content_type=CONTENT_TYPES.get(suffix, "application/octet-stream"),
        cache_control=IMMUTABLE if immutable else REVALIDATE,
    )


def is_asset_path(rel: str) -> bool:
    """True for a path that names a file (under the asset folders, or with a known file
    extension): a miss there is a 404. Anything else is a client-side route."""
    return rel.startswith(ASSET_PREFIXES) or Path(rel).suffix.lower() in CONTENT_TYPES


def check_path(rel: str) -> None:
    """BadRequest for a path that tries to leave the export or smuggle a separator."""
    if "\0" in rel or "\\" in rel:
        raise BadRequest("the path holds a NUL or a backslash")
    if any(segment in (".", "..") for segment in rel.split("/")):
        raise BadRequest("the path holds a '.' or '..' segment")


def accepts_gzip(accept_encoding: str | None) -> bool:
    """Whether an Accept-Encoding value admits gzip: listed (or `*`) with a q above 0."""
    weights: dict[str, float] = {}
    for item in (accept_encoding or "").split(","):
        coding, *params = item.split(";")
        q = 1.0
        for param in params:
            key, _, value = param.strip().partition("=")
            if key.lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        weights[coding.strip().lower()] = q
    return weights.get("gzip", weights.get("*", 0.0)) > 0


def etag_matches(if_none_match: str | None, etag: str) -> bool:
    """RFC 9110 13.1.2: weak comparison against each listed entity tag, or `*`."""
    if if_none_match is None:
        return False
    for tag in if_none_match.split(","):
        tag = tag.strip().removeprefix("W/")
        if tag in ("*", etag):
            return True
    return False


async def _once(body: bytes) -> AsyncIterator[bytes]:
    if body:
        yield body


class WebApp:
    """The handler of `PATTERN`: the export under `root`, by default `WEBAPP_DIR` as it is
    when the server starts (the package's; tests point it at an export of their own).
    `clerk_origin`: Clerk mode's Frontend API origin, which the CSP then allows."""

    def __init__(self, root: Path | None = None, *, clerk_origin: str = "") -> None:
        self._root = WEBAPP_DIR if root is None else root
        self._clerk_origin = clerk_origin
        self._export: Export | None = None
        self._loading = trio.Lock()

    def routes(self, router: Router) -> None:
        router.add("GET", PATTERN, self.get)
        router.add("HEAD", PATTERN, self.get)

    async def export(self) -> Export:
        """The loaded export, read (in a worker thread: it hashes and compresses a few MB)
        on first use and again after a new build rewrote SOURCE-HASH."""
        current = self._export
        if current is not None and current.stamp == _stamp(self._root):
            return current
        async with self._loading:
            current = self._export
            if current is None or current.stamp != _stamp(self._root):
                current = await trio.to_thread.run_sync(load_export, self._root, self._clerk_origin)
                log.info("web app loaded: %d files from %s", len(current.assets), self._root)
                self._export = current
        return current

    async def get(self, request: Request) -> Response:
        rel = request.params["path"]
        check_path(rel)
        export = await self.export()
        if INDEX not in export.assets:
            raise NotFound(
                f"the web app is not built in {self._root}: run scripts/build-app"
                " (the REST API is under /v1/)"
            )
        asset = export.assets.get(rel or INDEX)
        if asset is None:
            if is_asset_path(rel):
                raise NotFound(f"no such file in the web app: /{rel}")
            # A client-side route: the app's HTML, which routes it in the browser.
            asset = export.assets[INDEX]
        return self._answer(request, asset, export.csp)

    def _answer(self, request: Request, asset: Asset, csp: str) -> Response:
        body = asset.body
        etag = f'"{asset.etag}"'
        encoded = asset.gzipped is not None and accepts_gzip(request.headers.get("accept-encoding"))
        if encoded:
            assert asset.gzipped is not None
            body = asset.gzipped
            # Another representation, so another entity tag (RFC 9110 8.8.3).
            etag = f'"{asset.etag}-gzip"'
        headers = [
            (b"etag", etag.encode()),
            (b"cache-control", asset.cache_control),
            (b"x-content-type-options", b"nosniff"),
            (b"referrer-policy", b"no-referrer"),
            (b"cross-origin-opener-policy", b"same-origin"),
            (b"content-security-policy", csp.encode()),
        ]
        if asset.gzipped is not None:
            headers.append((b"vary", b"accept-encoding"))
        if etag_matches(request.headers.get("if-none-match"), etag):
            return StreamingResponse(304, _once(b""), headers)
        headers.append((b"content-type", asset.content_type.encode()))
        if encoded:
            headers.append((b"content-encoding", b"gzip"))
        headers.append((b"content-length", str(len(body)).encode()))
        sent = b"" if request.method == "HEAD" else body
        return StreamingResponse(200, _once(sent), headers)
