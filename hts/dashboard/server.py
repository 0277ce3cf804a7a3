"""``hts dashboard``: a small HTTP server over :class:`StoreViews`.

Bound to 127.0.0.1 by default, where it answers only requests addressed to a
loopback name (``Host: localhost`` / ``127.0.0.1`` / ``[::1]``): a web page
elsewhere that rebinds its own domain to 127.0.0.1 cannot read it.  Bound to
any other address it needs a token: given in the URL once (``?token=…``), then
kept in a cookie, or sent as ``Authorization: Bearer …``; every other request
gets 403.  The server only reads the store.

Connections cost a thread only while they have a request to answer: a new
connection waits in one selector (:class:`_Server`) until its request arrives,
and only then goes to a pool of :data:`WORKERS` threads.  Idle connections —
a browser's speculative preconnects, abandoned tabs, a port scanner, or a
crowd of clients that connect and say nothing — therefore cannot starve the
page: a request made while hundreds of them are open is answered at once.
Each idle connection is closed after :data:`IDLE_S` seconds, and at most
:data:`MAX_IDLE` wait at a time (beyond that the oldest is closed), which
bounds the file descriptors they hold.
"""

from __future__ import annotations

import contextlib
import hmac
import ipaddress
import json
import secrets
import selectors
import socket
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, HTTPServer
from importlib import resources
from pathlib import Path
from urllib.parse import parse_qs, urlparse

from hts.dashboard.views import LAB_FILES, PLOTS, StoreViews

__all__ = ["IDLE_S", "MAX_IDLE", "WORKERS", "Dashboard", "is_loopback"]

WORKERS = 8  # threads answering requests: a page load asks for ~8 files, a browser sends 6 at once
MAX_IDLE = 512  # connections waiting for their request; well under a typical 1024-descriptor limit
IDLE_S = 10.0
"""Seconds a connection may wait for its request, and a request's socket may stay silent.

A browser sends its request within milliseconds of connecting, and a tunnel
over a congested link within a second or two; 10 s covers that several times
over, yet an abandoned connection is gone soon.  It also bounds how long a
client that stops halfway through its request holds one of the
:data:`WORKERS` threads (each read waits at most this long).
"""

_STATIC = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "viewer.js": "text/javascript; charset=utf-8",
    "3Dmol-min.js": "text/javascript; charset=utf-8",  # 3Dmol.js 2.5.5, vendored: the 3-D viewer
    "3Dmol.LICENSE.txt": "text/plain; charset=utf-8",
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


class _Server(HTTPServer):
    """Accepts on the ``serve_forever`` thread; waits for requests in one selector; answers in a pool.

    :class:`http.server.ThreadingHTTPServer` gives each connection a thread
    from accept to close, so idle connections hold threads, and bounding the
    threads (as this server once did) let them hold every slot, so that a real
    request went unanswered until they timed out.  Here an accepted
    connection is parked in ``_waiting`` (oldest first) and watched by one
    thread; when it turns readable (its request, or its close, arrived) it
    is handed to the pool of :data:`WORKERS` threads; when it has waited
    :data:`IDLE_S` seconds, or :data:`MAX_IDLE` newer ones wait, it is closed.
    The handler speaks HTTP/1.0, one request per connection, so a connection
    never returns from the pool to the waiting room.
    """

    # the kernel's queue of connections not yet accepted; at socketserver's 5 a burst of
    # connections overflows it and each one over waits a second for its SYN to be resent
    request_queue_size = 128

    def __init__(self, address, handler) -> None:
        super().__init__(address, handler)
        self._pool = ThreadPoolExecutor(WORKERS, thread_name_prefix="hts-dashboard")
        self._waiting: dict[socket.socket, tuple[object, float]] = {}  # sock -> (address, deadline)
        self._arrived: list[tuple[socket.socket, object]] = []
        self._arrived_lock = threading.Lock()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._closing = False
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._wake_r, selectors.EVENT_READ)
        self._watcher = threading.Thread(target=self._watch, name="hts-dashboard-idle", daemon=True)
        self._watcher.start()

    def process_request(self, request, client_address) -> None:
        """Park a new connection; the watcher registers it (a selector is not shared across threads)."""
        with self._arrived_lock:
            self._arrived.append((request, client_address))
        self._wake()

    def _wake(self) -> None:
        with contextlib.suppress(OSError):  # closing, or a full wake buffer: it wakes anyway
            self._wake_w.send(b"\0")

    def _watch(self) -> None:
        sel = self._selector
        while not self._closing:
            timeout = None
            if self._waiting:
                oldest = next(iter(self._waiting.values()))[1]
                timeout = max(0.0, oldest - time.monotonic())
            for key, _ in sel.select(timeout):
                if key.fileobj is self._wake_r:
                    with contextlib.suppress(OSError):  # drained (BlockingIOError) or closed
                        while self._wake_r.recv(4096):
                            pass
                    continue
                sock = key.fileobj
                sel.unregister(sock)
                address, _ = self._waiting.pop(sock)
                self._pool.submit(self._answer, sock, address)
            with self._arrived_lock:
                arrived, self._arrived = self._arrived, []
            deadline = time.monotonic() + IDLE_S
            for sock, address in arrived:
                self._waiting[sock] = (address, deadline)
                sel.register(sock, selectors.EVENT_READ)
            now = time.monotonic()
            while self._waiting:
                sock, (_, due) = next(iter(self._waiting.items()))
                if due > now and len(self._waiting) <= MAX_IDLE:
                    break
                self._drop(sock)

    def _drop(self, sock: socket.socket) -> None:
        self._waiting.pop(sock, None)
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(sock)
        self.shutdown_request(sock)

    def _answer(self, sock: socket.socket, address) -> None:
        try:
            self.finish_request(sock, address)
        except Exception:
            self.handle_error(sock, address)
        finally:
            self.shutdown_request(sock)

    def handle_error(self, request, client_address) -> None:
        """Quiet for a client that went away mid-answer (not the server's error); else a traceback."""
        if not isinstance(sys.exc_info()[1], OSError):
            super().handle_error(request, client_address)

    def server_close(self) -> None:
        self._closing = True
        self._wake()
        self._watcher.join(timeout=5)
        for sock in list(self._waiting):
            self._drop(sock)
        with self._arrived_lock:
            for sock, _ in self._arrived:
                self.shutdown_request(sock)
            self._arrived = []
        self._selector.close()
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._wake_r.close()
        self._wake_w.close()
        super().server_close()


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
        self.httpd = _Server((host, port), handler)
        self.host, self.port = self.httpd.server_address[:2]

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::") else self.host
        q = f"?token={self.token}" if self.token else ""
        return f"http://{host}:{self.port}/{q}"

    def serve_forever(self) -> None:
        self.httpd.serve_forever(poll_interval=0.2)  # accepts; _Server's threads do the rest

    def start(self) -> threading.Thread:
        t = threading.Thread(target=self.serve_forever, daemon=True)
        t.start()
        return t

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class _Handler(BaseHTTPRequestHandler):
    dashboard: Dashboard
    server_version = "hts-dashboard"
    timeout = IDLE_S  # a socket timeout: a client silent mid-request frees its worker

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
