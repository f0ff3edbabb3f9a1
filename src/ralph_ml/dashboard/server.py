"""A small threaded HTTP server: one static page and a read-only JSON API.

``GET /``                      the page (inline JS and SVG charts; no CDN, no network)
``GET /api/runs``              every run found under the roots, summarised
``GET /api/runs/<key>?since=N`` one run: state, cycles recorded after N, current and best trial
"""

from __future__ import annotations

import json
import logging
from functools import lru_cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from .runs import RunStore

log = logging.getLogger("ralph_ml.dashboard")


@lru_cache(maxsize=1)
def page() -> bytes:
    return resources.files("ralph_ml.dashboard").joinpath("static/index.html").read_bytes()


class DashboardServer(ThreadingHTTPServer):
    daemon_threads = True  # a browser holding a connection never keeps the process alive

    def __init__(self, store: RunStore, host: str, port: int) -> None:
        self.store = store
        super().__init__((host, port), _Handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        shown = host if isinstance(host, str) else host.decode()
        return f"http://{'127.0.0.1' if shown in ('0.0.0.0', '') else shown}:{port}/"


def make_server(roots: list[Path], *, host: str = "127.0.0.1", port: int = 8765) -> DashboardServer:
    """A server bound and ready; call ``serve_forever()`` (raises OSError if the port is taken)."""
    return DashboardServer(RunStore(roots), host, port)


class _Handler(BaseHTTPRequestHandler):
    server: DashboardServer
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
        url = urlsplit(self.path)
        path = url.path.rstrip("/") or "/"
        try:
            if path in ("/", "/index.html"):
                self._send(200, page(), "text/html; charset=utf-8")
            elif path == "/api/runs":
                self._json(200, {"runs": self.server.store.runs()})
            elif path.startswith("/api/runs/"):
                key = path[len("/api/runs/"):]
                try:
                    since = int(parse_qs(url.query).get("since", ["0"])[0])
                except ValueError:
                    since = 0
                detail = self.server.store.detail(key, since)
                if detail is None:
                    self._json(404, {"error": f"no run {key!r} under the dashboard's roots"})
                else:
                    self._json(200, detail)
            else:
                self._json(404, {"error": f"not found: {url.path}"})
        except (BrokenPipeError, ConnectionResetError):
            pass  # the browser went away mid-answer

    def _json(self, code: int, obj: Any) -> None:
        self._send(code, json.dumps(obj, separators=(",", ":"), default=str).encode(), "application/json")

    def _send(self, code: int, body: bytes, ctype: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's signature
        log.debug("%s %s", self.address_string(), format % args)
