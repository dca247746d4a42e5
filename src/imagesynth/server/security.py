"""The server's guards: token, Host allow-list, Origin check, JSON-only bodies, size caps, path
confinement and safe image decoding. One ASGI middleware applies the request checks to every
route, so a route added later is covered without a decorator."""

from __future__ import annotations

import base64
import binascii
import hmac
import io
import json
import os
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ..errors import ImagesynthError
from .settings import LOOPBACK, Settings

STATE_CHANGING = {"POST", "PUT", "PATCH", "DELETE"}
TOKEN_COOKIE = "imagesynth_token"
SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-resource-policy", b"same-origin"),
]
PAGE_CSP = (
    b"default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
    b"connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)


class HTTPFail(Exception):
    """An error answer: status, code, message (raised by helpers, turned into JSON)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


# ----- paths -----------------------------------------------------------------------------------
def confine(root: Path | None, rel: str) -> Path:
    """The real path of `rel` under `root`, refusing anything that resolves outside it.

    Absolute paths, `..`, encoded forms (the caller passes decoded text) and symlinks that lead
    out are all caught by comparing real paths with `os.path.commonpath`.
    """
    if root is None:
        raise HTTPFail(403, "no_data_root", "folder datasets need the server's --data-root option")
    if not isinstance(rel, str) or not rel or "\x00" in rel:
        raise HTTPFail(400, "bad_path", "give a folder name relative to the data root")
    if os.path.isabs(rel) or rel.startswith(("~", "\\")) or ":" in rel:
        raise HTTPFail(400, "bad_path", f"{rel!r}: give a path relative to the data root")
    real_root = os.path.realpath(root)
    real = os.path.realpath(os.path.join(real_root, rel))
    if os.path.commonpath([real_root, real]) != real_root:
        raise HTTPFail(403, "outside_root", f"{rel!r} is outside the data root")
    if not os.path.isdir(real):
        raise HTTPFail(404, "not_found", f"no folder {rel!r} under the data root")
    return Path(real)


def list_folders(root: Path | None, depth: int = 2, limit: int = 500) -> list[str]:
    """Folders under the data root (relative names; symlinks leading out are left out)."""
    if root is None or not root.is_dir():
        return []
    real_root = os.path.realpath(root)
    out: list[str] = []
    for dirpath, dirnames, _ in os.walk(real_root, followlinks=False):
        rel = os.path.relpath(dirpath, real_root)
        level = 0 if rel == "." else rel.count(os.sep) + 1
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        if level >= depth:
            dirnames[:] = []
        for d in dirnames:
            full = os.path.join(dirpath, d)
            real = os.path.realpath(full)
            if os.path.commonpath([real_root, real]) == real_root:
                out.append(os.path.relpath(full, real_root))
            if len(out) >= limit:
                return out
    return out


# ----- images ----------------------------------------------------------------------------------
def decode_image(data: str, what: str, max_pixels: int) -> Any:
    """A PIL image from base64 (optionally a data: URL), with the pixel cap checked first."""
    from PIL import Image

    if not isinstance(data, str) or not data:
        raise ImagesynthError(f"{what}: expected a base64-encoded PNG or JPEG")
    if data.startswith("data:"):
        _, _, data = data.partition(",")
    try:
        raw = base64.b64decode(data, validate=False)
    except (binascii.Error, ValueError):
        raise ImagesynthError(f"{what}: not valid base64") from None
    if not raw:
        raise ImagesynthError(f"{what}: empty image")
    Image.MAX_IMAGE_PIXELS = max_pixels
    try:
        im = Image.open(io.BytesIO(raw))
        w, h = im.size
        if w * h > max_pixels:
            raise HTTPFail(
                413, "image_too_large", f"{what} is {w}x{h}: more than {max_pixels} pixels"
            )
        if im.format not in ("PNG", "JPEG", "WEBP", "BMP", "GIF"):
            raise ImagesynthError(f"{what}: {im.format} images are not accepted; send PNG/JPEG")
        im.load()
    except HTTPFail:
        raise
    except Image.DecompressionBombError:
        raise HTTPFail(413, "image_too_large", f"{what} has too many pixels") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImagesynthError(f"{what}: not a readable image ({exc.__class__.__name__})") from None
    return im


# ----- requests --------------------------------------------------------------------------------
def token_ok(given: str | None, token: str) -> bool:
    if not given:
        return False
    return hmac.compare_digest(given.encode(), token.encode())


def _host_name(host: str) -> str:
    host = host.strip().lower()
    if host.startswith("["):  # [::1]:7860
        return host[1 : host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def allowed_hosts(settings: Settings) -> set[str]:
    hosts = {*LOOPBACK, "testserver"}  # testserver: FastAPI's TestClient
    if settings.host not in ("0.0.0.0", "::"):
        hosts.add(settings.host.lower())
    hosts.update(h.lower() for h in settings.allowed_hosts)
    return hosts


def _json_error(status: int, code: str, message: str) -> tuple[int, list, bytes]:
    body = json.dumps({"code": code, "message": message}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    return status, headers, body


class GuardMiddleware:
    """Pure ASGI: checks every HTTP request before any route runs, adds security headers."""

    def __init__(self, app: Any, settings: Settings) -> None:
        self.app = app
        self.settings = settings
        self.hosts = allowed_hosts(settings)

    def _reject(self, scope: dict) -> tuple[int, str, str] | None:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        method = scope["method"]
        host = _host_name(headers.get("host", ""))
        if host not in self.hosts:
            return 400, "bad_host", f"Host {headers.get('host', '')!r} is not allowed"
        token = self.settings.token
        if token:
            auth = headers.get("authorization", "")
            given = auth[7:].strip() if auth.lower().startswith("bearer ") else None
            if given is None:
                given = _cookie(headers.get("cookie", ""), TOKEN_COOKIE)
            path = scope.get("path", "")
            query = scope.get("query_string", b"").decode("latin-1")
            if given is None and path == "/" and "token=" in query:
                given = _query(query, "token")
            if not token_ok(given, token):
                return 401, "unauthorized", "send Authorization: Bearer <token>"
        if method in STATE_CHANGING:
            origin = headers.get("origin")
            if origin is not None and origin != "null":
                parts = urlsplit(origin)
                if (parts.hostname or "").lower() not in self.hosts:
                    return 403, "bad_origin", f"Origin {origin!r} may not change state here"
            elif origin == "null":
                return 403, "bad_origin", "Origin null may not change state here"
            if headers.get("sec-fetch-site") == "cross-site":
                return 403, "bad_origin", "cross-site requests may not change state here"
            length = headers.get("content-length")
            has_body = (length not in (None, "0")) or "transfer-encoding" in headers
            ctype = headers.get("content-type", "").split(";")[0].strip().lower()
            if has_body and ctype != "application/json":
                return 415, "json_only", f"send application/json bodies, not {ctype or 'none'!r}"
            if length is not None:
                try:
                    n = int(length)
                except ValueError:
                    return 400, "bad_length", "Content-Length is not a number"
                if n > self.settings.max_body_bytes:
                    return (
                        413,
                        "body_too_large",
                        f"request body {n} bytes > the {self.settings.max_body_bytes} cap",
                    )
        return None

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        bad = self._reject(scope)
        if bad is not None:
            status, headers, body = _json_error(*bad)
            await send(
                {
                    "type": "http.response.start",
                    "status": status,
                    "headers": headers + SECURITY_HEADERS,
                }
            )
            await send({"type": "http.response.body", "body": body})
            return
        cap = self.settings.max_body_bytes
        seen = 0

        async def capped_receive() -> dict:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > cap:
                    raise HTTPFail(413, "body_too_large", f"request body over the {cap} cap")
            return message

        is_page = scope.get("path", "") == "/" or scope.get("path", "").startswith("/static/")

        async def send_with_headers(message: dict) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                names = {k.lower() for k, _ in headers}
                headers += [h for h in SECURITY_HEADERS if h[0] not in names]
                if is_page:
                    headers.append((b"content-security-policy", PAGE_CSP))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, capped_receive, send_with_headers)


def _cookie(header: str, name: str) -> str | None:
    for part in header.split(";"):
        k, _, v = part.strip().partition("=")
        if k == name:
            return v
    return None


def _query(query: str, name: str) -> str | None:
    from urllib.parse import parse_qs

    values = parse_qs(query).get(name)
    return values[0] if values else None
