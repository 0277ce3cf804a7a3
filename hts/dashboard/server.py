"""``hts dashboard``: a small threaded HTTP server over :class:`StoreViews`.

Bound to 127.0.0.1 by default, where it answers only requests addressed to a
loopback name (``Host: localhost`` / ``127.0.0.1`` / ``[::1]``): a web page
elsewhere that rebinds its own domain to 127.0.0.1 cannot read it.  Bound to
any other address it needs a token: given in the URL once (``?token=…``), then
kept in a cookie, or sent as ``Authorization: Bearer …``; every other request
gets 403.  At most :data:`MAX_CONNECTIONS` connections are served at once and an
idle one is closed after :data:`IDLE_S` seconds, so a crowd of idle clients
cannot hold the process's threads.  The server only reads the store.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import secrets
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from urllib.parse import parse_qs, urlparse

from hts.dashboard.views import LAB_FILES, PLOTS, StoreViews

__all__ = ["IDLE_S", "MAX_CONNECTIONS", "Dashboard", "is_loopback"]

MAX_CONNECTIONS = 32
IDLE_S = 10.0

_STATIC = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _same(given: str, token: str) -> bool:
    """Constant-time comparison of what a client sent with the token (any characters)."""
    return hmac.compare_digest(given.encode("utf-8", "surrogateescape"), token.encode())


def _loopback_host(header: str) -> bool:
    """Whether a ``Host`` header names this machine's loopback (with or without a port)."""
    host = header.strip().lower()
    if host.startswith("["):  # [::1]:8050
        host = host[1 : host.find("]")] if "]" in host else host
    else:
        host = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    return is_loopback(host)


class _BoundedServer(ThreadingHTTPServer):
    """A thread per connection, at most :data:`MAX_CONNECTIONS` at once; the rest are closed."""

    daemon_threads = True

    def __init__(self, *args, **kw) -> None:
        import threading

        super().__init__(*args, **kw)
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)

    def process_request(self, request, client_address) -> None:
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)  # busy: the client may try again
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


def static_file(name: str) -> bytes:
    return resources.files("hts.dashboard").joinpath("static", name).read_bytes()


class Dashboard:
    """A running dashboard server; ``serve_forever`` blocks, ``start`` runs it in a thread."""

    def __init__(
        self, store: str | Path, host: str = "127.0.0.1", port: int = 8050, token: str | None = None
    ) -> None:
        if not (Path(store) / "zarr.json").exists():
            raise FileNotFoundError(f"{store}: no hts store here")
        self.views = StoreViews(store)
        self.token = token if token else (None if is_loopback(host) else secrets.token_urlsafe(18))
        handler = type("Handler", (_Handler,), {"dashboard": self})
        self.httpd = _BoundedServer((host, port), handler)
        self.host, self.port = self.httpd.server_address[:2]

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::") else self.host
        q = f"?token={self.token}" if self.token else ""
        return f"http://{host}:{self.port}/{q}"

    def serve_forever(self) -> None:
        self.httpd.serve_forever(poll_interval=0.2)

    def start(self):
        import threading

        t = threading.Thread(target=self.serve_forever, daemon=True)
        t.start()
        return t

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class _Handler(BaseHTTPRequestHandler):
    dashboard: Dashboard
    server_version = "hts-dashboard"
    timeout = IDLE_S  # an idle (or slow) connection is closed, freeing its slot

    def log_message(self, format, *args):  # noqa: A002 - quiet: the terminal shows the URL only
        pass

    def _authorised(self, query: dict) -> tuple[bool, bool]:
        """(allowed, set the cookie)."""
        token = self.dashboard.token
        if token is None:
            return True, False
        given = query.get("token", [""])[0]
        if given and _same(given, token):
            return True, True
        auth = self.headers.get("Authorization", "")
        if auth.startswith("Bearer ") and _same(auth[7:], token):
            return True, False
        for part in self.headers.get("Cookie", "").split(";"):
            k, _, v = part.strip().partition("=")
            if k == "hts_token" and _same(v, token):
                return True, False
        return False, False

    def _send(self, code: int, body: bytes, ctype: str, extra: dict | None = None) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802 - the http.server API
        if self.dashboard.token is None and not _loopback_host(self.headers.get("Host", "")):
            self._send(
                HTTPStatus.FORBIDDEN,
                b"403: this dashboard answers only at http://127.0.0.1 or http://localhost\n",
                "text/plain; charset=utf-8",
            )
            return
        url = urlparse(self.path)
        query = parse_qs(url.query)
        ok, set_cookie = self._authorised(query)
        if not ok:
            self._send(
                HTTPStatus.FORBIDDEN,
                b"403: this dashboard needs its token (?token=... as printed by hts dashboard)\n",
                "text/plain; charset=utf-8",
            )
            return
        extra = {}
        if set_cookie:
            extra["Set-Cookie"] = (
                f"hts_token={self.dashboard.token}; HttpOnly; SameSite=Strict; Path=/"
            )
        views = self.dashboard.views
        path = url.path
        try:
            if path in ("/", "/index.html"):
                self._send(200, static_file("index.html"), _STATIC["index.html"], extra)
            elif path.startswith("/static/") and path[8:] in _STATIC:
                self._send(200, static_file(path[8:]), _STATIC[path[8:]], extra)
            elif path == "/api/snapshot":
                body = json.dumps(views.snapshot(), default=str).encode()
                self._send(200, body, "application/json", extra)
            elif path.startswith("/plot/") and path.endswith(".svg") and path[6:-4] in PLOTS:
                self._send(200, views.plot(path[6:-4]), "image/svg+xml", extra)
            elif path.startswith("/structure/"):
                name = path[len("/structure/") :]
                cid, _, fmt = name.partition(".")
                if fmt not in ("cif", "extxyz"):
                    raise KeyError(name)
                disposition = f'attachment; filename="{cid}.{fmt}"'
                self._send(
                    200,
                    views.structure(cid, fmt),
                    "chemical/x-cif" if fmt == "cif" else "text/plain",
                    {**extra, "Content-Disposition": disposition},
                )
            elif path.startswith("/xrd/"):  # a lab-table candidate's pattern, peaks or cell
                cid, _, kind = path[len("/xrd/") :].partition(".")
                if kind not in LAB_FILES:
                    raise KeyError(kind)
                name = f"{cid}_conventional.cif" if kind == "cif" else f"{cid}_xrd.{kind}"
                how = "inline" if kind == "png" else "attachment"
                self._send(
                    200,
                    views.lab_file(cid, kind),
                    LAB_FILES[kind],
                    {**extra, "Content-Disposition": f'{how}; filename="{name}"'},
                )
            else:
                self._send(404, b"not found\n", "text/plain")
        except KeyError:
            self._send(404, b"not found\n", "text/plain")
        except Exception as err:  # a bad moment in the store: say so, keep serving
            self._send(503, f"store not readable right now: {err}\n".encode(), "text/plain")
