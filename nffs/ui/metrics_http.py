"""`nffs mount --metrics-listen [ADDR:]PORT`: an HTTP `/metrics` endpoint beside the mount.

The FUSE loop and the page store belong to the daemon's trio thread; a scrape must
never touch them. So a trio task takes a statistics snapshot once a second (on the
trio thread, where reading the store is safe), freezes it as JSON bytes, and hands
it to a `http.server` running in a daemon thread, which only ever parses that frozen
copy and renders it. A slow or hostile scraper can therefore delay nothing but
itself.
"""
from __future__ import annotations

import ipaddress
import json
import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

from .metrics import CONTENT_TYPE, render_metrics

log = logging.getLogger(__name__)

REFRESH_SECONDS = 1.0


class ListenError(ValueError):
    """A --metrics-listen value that is not [ADDR:]PORT."""


def parse_listen(text: str) -> tuple[str, int]:
    """`PORT` -> loopback; `ADDR:PORT`, `[v6]:PORT`, `:PORT` (all addresses) -> (host, port)."""
    text = text.strip()
    host = "127.0.0.1"
    port_text = text
    if text.startswith("["):
        end = text.find("]")
        if end < 0 or not text[end + 1:].startswith(":"):
            raise ListenError(f"bad --metrics-listen {text!r}: expected [ADDR]:PORT")
        host, port_text = text[1:end], text[end + 2:]
    elif text.count(":") == 1:
        host, port_text = text.split(":")
        host = host or "0.0.0.0"
    elif ":" in text:
        raise ListenError(f"bad --metrics-listen {text!r}: write IPv6 addresses as [ADDR]:PORT")
    try:
        port = int(port_text)
    except ValueError:
        raise ListenError(f"bad --metrics-listen {text!r}: the port must be a number") from None
    if not 0 <= port <= 65535:
        raise ListenError(f"bad --metrics-listen {text!r}: port out of range")
    if host != "localhost":
        try:
            ipaddress.ip_address(host)
        except ValueError:
            if not host or any(c.isspace() for c in host):
                raise ListenError(f"bad --metrics-listen {text!r}: bad address") from None
    return host, port


class Snapshot:
    """The latest statistics, frozen as JSON bytes; written by trio, read by HTTP threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._data = b"{}"
        self.taken = 0.0

    def set(self, stats: dict[str, Any]) -> None:
        data = json.dumps(stats, default=str).encode()
        with self._lock:
            self._data = data
            self.taken = time.time()

    def get(self) -> dict[str, Any]:
        with self._lock:
            data = self._data
        return json.loads(data)


class _Handler(BaseHTTPRequestHandler):
    server_version = "nffs-metrics"
    snapshot: Snapshot  # set on the subclass made per server

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            body = render_metrics(self.snapshot.get()).encode()
            self._reply(200, CONTENT_TYPE, body)
        elif path == "/":
            self._reply(200, "text/html; charset=utf-8", b'<html><body><a href="/metrics">/metrics</a></body></html>\n')
        else:
            self._reply(404, "text/plain; charset=utf-8", b"not found: try /metrics\n")

    def do_HEAD(self) -> None:  # noqa: N802
        self.do_GET()

    def _reply(self, code: int, ctype: str, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # quiet: scrapes come every few seconds
        log.debug("metrics %s: " + format, self.client_address[0], *args)


class MetricsServer:
    """An HTTP server in a daemon thread serving a Snapshot."""

    def __init__(self, listen: str) -> None:
        host, port = parse_listen(listen)
        self.snapshot = Snapshot()
        handler = type("Handler", (_Handler,), {"snapshot": self.snapshot})
        ThreadingHTTPServer.address_family = _family(host)
        try:
            self.httpd = ThreadingHTTPServer((host, port), handler)
        except OSError as exc:
            raise OSError(exc.errno, f"cannot listen for metrics on {listen}: {exc.strerror or exc}") from None
        self.httpd.daemon_threads = True
        self.address = self.httpd.server_address[:2]
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="nffs-metrics", daemon=True)

    def start(self) -> None:
        self.thread.start()
        log.info("metrics on http://%s:%d/metrics", *self.address)

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _family(host: str):
    import socket

    return socket.AF_INET6 if ":" in host else socket.AF_INET


async def start(listen: str, get_stats: Callable[[], dict[str, Any]], *, task_status: Any = None) -> None:
    """Serve /metrics on `listen` until cancelled; for `nursery.start(start, listen, ops.stats)`.

    Binding happens before `task_status.started()`, so a port in use fails the mount
    with a clear error instead of leaving a mount without its endpoint.
    """
    import trio

    server = MetricsServer(listen)
    server.snapshot.set(get_stats())
    server.start()
    if task_status is not None:
        task_status.started(server)
    try:
        while True:
            await trio.sleep(REFRESH_SECONDS)
            try:
                server.snapshot.set(get_stats())
            except Exception:  # a statistics bug must not take the mount down
                log.exception("taking a metrics snapshot")
    finally:
        server.stop()
