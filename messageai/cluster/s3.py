"""A small synchronous S3 client: what the conversation WAL replica needs, signed with SigV4.

`messageai.cluster.replica` calls it from a commit's worker thread (so it is sync, on
one `httpx.Client`, whose connection pool is thread-safe): PUT (optionally with
`If-None-Match: *`, the conditional write that fences two owners, docs/SCALE.md §7),
GET, LIST (ListObjectsV2, every page) and DELETE of one bucket, path-style addressing
(`<endpoint>/<bucket>/<key>`), which AWS S3, MinIO and R2 all take. Every
request is signed with AWS Signature Version 4 and carries the SHA-256 of its body
(`x-amz-content-sha256`), which the store checks: a segment damaged in transit is
refused, never stored.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import hmac
import urllib.parse
import xml.etree.ElementTree as ET

import attrs
import httpx

_NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"
# ListObjectsV2 answers at most 1000 keys a page; asking for that many keeps the
# number of round trips of a restore's listing as small as the store allows.
_LIST_PAGE = 1000
_META = "x-amz-meta-"


class S3Error(Exception):
    """The store answered with an error, or could not be reached (`status` 0)."""

    def __init__(self, message: str, status: int = 0, code: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class PreconditionFailed(S3Error):
    """412: a conditional PUT found the key already there."""


class NoSuchKey(S3Error):
    """404 for an object."""


@attrs.frozen
class S3Object:
    body: bytes
    # The user metadata (`x-amz-meta-*`), names lower-case without the prefix.
    metadata: dict[str, str]
    etag: str


def _quote(text: str, safe: str) -> str:
    # SigV4's URI encoding: RFC 3986 unreserved characters stay, everything else is %XX.
    return urllib.parse.quote(text, safe=safe)


def _hmac(key: bytes, text: str) -> bytes:
    return hmac.new(key, text.encode(), hashlib.sha256).digest()


def sign(
    method: str,
    url: httpx.URL,
    headers: dict[str, str],
    payload_sha256: str,
    *,
    access_key: str,
    secret_key: str,
    region: str,
    now: datetime.datetime,
) -> dict[str, str]:
    """The headers to add to a request for SigV4 (`x-amz-date`, `x-amz-content-sha256`,
    `authorization`); every header in `headers` (and `host`) is signed."""
    amz_date = now.strftime("%Y%m%dT%H%M%SZ")
    day = amz_date[:8]
    signed = {k.lower(): " ".join(v.split()) for k, v in headers.items()}
    signed["host"] = url.netloc.decode()
    signed["x-amz-date"] = amz_date
    signed["x-amz-content-sha256"] = payload_sha256
    names = sorted(signed)
    query = sorted(
        (_quote(k, "-_.~"), _quote(v, "-_.~"))
        for k, v in urllib.parse.parse_qsl(url.query.decode(), keep_blank_values=True)
    )
    canonical = "\n".join(
        [
            method,
            _quote(urllib.parse.unquote(url.path), "/-_.~"),
            "&".join(f"{k}={v}" for k, v in query),
            "".join(f"{name}:{signed[name]}\n" for name in names),
            ";".join(names),
            payload_sha256,
        ]
    )
    scope = f"{day}/{region}/s3/aws4_request"
    to_sign = "\n".join(
        ["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()]
    )
    key = _hmac(
        _hmac(_hmac(_hmac(f"AWS4{secret_key}".encode(), day), region), "s3"), "aws4_request"
    )
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    return {
        "x-amz-date": amz_date,
        "x-amz-content-sha256": payload_sha256,
        "authorization": (
            f"AWS4-HMAC-SHA256 Credential={access_key}/{scope}, "
            f"SignedHeaders={';'.join(names)}, Signature={signature}"
        ),
    }


class S3:
    """One bucket of an S3-compatible store. Blocking; safe to share between threads.
    `timeout_seconds` bounds each request's connect, read and write."""

    def __init__(
        self,
        endpoint: str,
        bucket: str,
        *,
        access_key: str,
        secret_key: str,
        region: str = "us-east-1",
        timeout_seconds: float = 5.0,
    ) -> None:
        self._base = endpoint.rstrip("/")
        self.bucket = bucket
        self._access_key = access_key
        self._secret_key = secret_key
        self._region = region
        self._http = httpx.Client(timeout=timeout_seconds)

    def close(self) -> None:
        self._http.close()

    def _url(self, key: str) -> str:
        return f"{self._base}/{_quote(self.bucket, '-_.~')}/{_quote(key, '/-_.~')}"

    def _request(
        self,
        method: str,
        url: str,
        *,
        body: bytes = b"",
        headers: dict[str, str] | None = None,
        params: dict[str, str] | None = None,
    ) -> httpx.Response:
        request = self._http.build_request(method, url, params=params, content=body)
        extra = dict(headers or {})
        extra.update(
            sign(
                method,
                request.url,
                extra,
                hashlib.sha256(body).hexdigest(),
                access_key=self._access_key,
                secret_key=self._secret_key,
                region=self._region,
                now=datetime.datetime.now(datetime.UTC),
            )
        )
        request.headers.update(extra)
        try:
            response = self._http.send(request)
        except httpx.HTTPError as exc:
            raise S3Error(f"{method} {request.url.path}: {exc!r}") from exc
        if response.status_code >= 300:
            code = ""
            if response.content.startswith(b"<"):
                with contextlib.suppress(ET.ParseError):
                    code = ET.fromstring(response.content).findtext("Code") or ""
            error = {412: PreconditionFailed, 404: NoSuchKey}.get(response.status_code, S3Error)
            raise error(
                f"{method} {request.url.path}: {response.status_code} {code}".rstrip(),
                response.status_code,
                code,
            )
        return response

    def create_bucket(self) -> None:
        self._request("PUT", f"{self._base}/{_quote(self.bucket, '-_.~')}")

    def put(
        self,
        key: str,
        body: bytes,
        *,
        metadata: dict[str, str] | None = None,
        if_none_match: bool = False,
    ) -> str:
        """Store `body` at `key` and answer its ETag. `if_none_match`: only if the key is
        not there yet (else `PreconditionFailed`)."""
        headers = {f"{_META}{name}": value for name, value in (metadata or {}).items()}
        if if_none_match:
            headers["if-none-match"] = "*"
        response = self._request("PUT", self._url(key), body=body, headers=headers)
        return str(response.headers.get("etag", ""))

    def get(self, key: str) -> S3Object:
        response = self._request("GET", self._url(key))
        metadata = {
            name[len(_META) :]: value
            for name, value in response.headers.items()
            if name.lower().startswith(_META)
        }
        return S3Object(response.content, metadata, response.headers.get("etag", ""))

    def delete(self, key: str) -> None:
        self._request("DELETE", self._url(key))

    def list(self, prefix: str) -> list[str]:
        """Every key that starts with `prefix`, in the store's (lexicographic) order."""
        keys: list[str] = []
        params = {"list-type": "2", "prefix": prefix, "max-keys": str(_LIST_PAGE)}
        while True:
            response = self._request(
                "GET", f"{self._base}/{_quote(self.bucket, '-_.~')}", params=params
            )
            root = ET.fromstring(response.content)
            keys.extend(
                element.findtext(f"{_NS}Key") or "" for element in root.iter(f"{_NS}Contents")
            )
            token = root.findtext(f"{_NS}NextContinuationToken")
            if root.findtext(f"{_NS}IsTruncated") != "true" or not token:
                return keys
            params["continuation-token"] = token
