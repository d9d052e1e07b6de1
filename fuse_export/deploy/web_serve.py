"""`fuse-export web-serve SITE`: serve a site written by `fuse-export web` with the headers its page needs.

Any static server runs the page on one wasm thread. More than one needs SharedArrayBuffer, which browsers give
only to a cross-origin-isolated page, and `python -m http.server` sends none of the headers that make one:

    Cross-Origin-Opener-Policy: same-origin       the page gets a browsing-context group of its own
    Cross-Origin-Embedder-Policy: require-corp    every subresource must opt in (same origin, or CORP / CORS)
    Cross-Origin-Resource-Policy: same-origin     ours do, and no other origin may embed them

Browsers honour them only in a secure context: https, or http from localhost / 127.0.0.1 (the default host).
Every response also carries `Cache-Control: no-cache` (a rebuilt site is never stale; an unchanged file costs a
304 through its ETag) and `X-Content-Type-Options: nosniff` with the MIME types below (the browser compiles wasm
while it streams only when it is served as application/wasm).

Only regular files inside SITE are served: no directory listing, no dotfiles, nothing that `..`, an encoded
slash or a symlink would reach outside SITE. A folder that is not a site written by `fuse-export web` is refused.
"""

from __future__ import annotations

import errno
import ipaddress
import json
import os
import shutil
import socket
import sys
import urllib.parse
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from fuse_export.deploy.web import SITE_FORMAT, SITE_JSON
from fuse_export.errors import UserError

ISOLATION_HEADERS = {
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Embedder-Policy": "require-corp",
    "Cross-Origin-Resource-Policy": "same-origin",
}
COMMON_HEADERS = {**ISOLATION_HEADERS, "Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}
MIME_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".json": "application/json",
    ".map": "application/json",
    ".wasm": "application/wasm",
    ".onnx": "application/octet-stream",
    ".css": "text/css; charset=utf-8",
    ".txt": "text/plain; charset=utf-8",
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".webp": "image/webp",
    ".svg": "image/svg+xml",
    ".ico": "image/x-icon",
}
DEFAULT_TYPE = "application/octet-stream"  # with nosniff: downloaded, never run as script or page
CHUNK = 1 << 20


def check_site(site: str | os.PathLike) -> Path:
    """The resolved folder of a site written by `fuse-export web` (its site.json says so and every file it lists
    is there); else a UserError naming the folder and how to write one."""
    path = Path(site)
    write = f"write one with `fuse-export web EXPORT --out {path}`"
    if not path.is_dir():
        what = "does not exist" if not path.exists() else "is not a folder"
        raise UserError(f"{path}: {what}; web-serve serves a site folder written by `fuse-export web` ({write})")
    try:
        data: Any = json.loads((path / SITE_JSON).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        data = None
    if not isinstance(data, dict) or data.get("format") != SITE_FORMAT or not isinstance(data.get("files"), list):
        raise UserError(f"{path}: not a site written by `fuse-export web` (no {SITE_JSON} of one); {write}")
    missing = [str(f) for f in data["files"] if not (path / str(f)).is_file()]
    if missing:
        raise UserError(f"{path}: a site without {', '.join(missing)}; rewrite it with "
                        f"`fuse-export web EXPORT --out {path} --force`")
    return path.resolve()


def resolve(root: Path, url_path: str) -> Path | None:
    """The regular file under `root` (resolved) that a request path names, '/' and folders their index.html;
    None for anything else: outside root by any route, a dotfile or dot-folder, a folder without index.html."""
    try:
        path = urllib.parse.unquote(urllib.parse.urlsplit(url_path).path, errors="strict")
    except (UnicodeDecodeError, ValueError):
        return None
    if not path.startswith("/") or "\x00" in path or "\\" in path:
        return None
    parts = [p for p in path.split("/") if p]
    if any(p.startswith(".") for p in parts):  # "..", ".", and hidden files (a staging folder, .git)
        return None
    target = root.joinpath(*parts)
    try:
        if target.is_dir():
            target = target / "index.html"
        real = target.resolve(strict=True)  # symlinks followed: then checked to stay inside root
    except (OSError, RuntimeError):
        return None
    return real if real.is_relative_to(root) and real.is_file() else None


def content_type(path: Path) -> str:
    return MIME_TYPES.get(path.suffix.lower(), DEFAULT_TYPE)


class SiteHandler(BaseHTTPRequestHandler):
    """GET and HEAD of the site's files, with COMMON_HEADERS on every response (errors included)."""

    root: Path  # set on the subclass make_server builds
    log: Callable[[str], None] | None = None
    protocol_version = "HTTP/1.1"  # keep-alive: the page fetches six files
    server_version = "fuse-export-web-serve"

    def end_headers(self) -> None:
        for name, value in COMMON_HEADERS.items():
            self.send_header(name, value)
        super().end_headers()

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self._send(body=True)

    def do_HEAD(self) -> None:  # noqa: N802
        self._send(body=False)

    def _send(self, body: bool) -> None:
        path = resolve(self.root, self.path)
        if path is None:
            self.send_error(HTTPStatus.NOT_FOUND)
            return
        try:
            fh = path.open("rb")
        except OSError:
            self.send_error(HTTPStatus.NOT_FOUND)
            return
        with fh:
            st = os.fstat(fh.fileno())
            etag = f'"{st.st_size:x}-{st.st_mtime_ns:x}"'
            if etag in (t.strip() for t in self.headers.get("If-None-Match", "").split(",")):
                self.send_response(HTTPStatus.NOT_MODIFIED)
                self.send_header("ETag", etag)
                self.end_headers()
                return
            self.send_response(HTTPStatus.OK)
            self.send_header("Content-Type", content_type(path))
            self.send_header("Content-Length", str(st.st_size))
            self.send_header("ETag", etag)
            self.send_header("Last-Modified", self.date_time_string(int(st.st_mtime)))
            self.end_headers()
            if body:
                shutil.copyfileobj(fh, self.wfile, CHUNK)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (http.server's signature)
        if self.log is not None:
            self.log(f"{self.address_string()} {format % args}")


class SiteServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], ConnectionError):  # the browser left mid-file (a reload): not our error
            return
        super().handle_error(request, client_address)


class SiteServer6(SiteServer):
    address_family = socket.AF_INET6


def make_server(site: str | os.PathLike, host: str = "127.0.0.1", port: int = 8000,
                log: Callable[[str], None] | None = None) -> SiteServer:
    """A bound (not yet serving) server for a checked site; port 0 picks a free port. `log` gets one line per
    request (None: quiet)."""
    root = check_site(site)
    handler = type("Handler", (SiteHandler,), {"root": root, "log": staticmethod(log) if log else None})
    cls = SiteServer6 if ":" in host else SiteServer
    try:
        return cls((host, port), handler)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise UserError(f"{host}:{port}: already in use; pass another --port (0 picks a free one)") from None
        if exc.errno == errno.EACCES:
            raise UserError(f"--port {port}: not allowed for this user (below 1024 needs privileges); pass "
                            "--port 8000 or another above 1023") from None
        if isinstance(exc, socket.gaierror) or exc.errno == errno.EADDRNOTAVAIL:
            raise UserError(f"--host {host}: not an address of this machine; pass 127.0.0.1 (this machine only) "
                            "or 0.0.0.0 (every interface)") from None
        raise


def site_url(server: SiteServer) -> str:
    """The URL to open: a wildcard host shown as this machine's loopback address."""
    host, port = server.server_address[:2]
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(str(host), str(host))
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


def is_loopback(host: str) -> bool:
    """Whether the browser treats http from `host` as a secure context (and so honours isolation)."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost" or host.endswith(".localhost")


def serve_until_interrupted(server: SiteServer) -> None:
    """Serve until Ctrl-C (KeyboardInterrupt), then close the socket."""
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
