"""A loopback web server with scripted routes, for sitemap loading: statuses, redirects, delays, stalls."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass(frozen=True)
class Route:
    body: bytes = b""
    status: int = 200
    content_type: str = "text/html; charset=utf-8"
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0  # wait this long before answering
    stall_s: float = 0.0  # send the headers and half the body, then wait this long before the rest
    fail_first: int = 0  # answer 503 to this many requests before serving the route


@dataclass(frozen=True)
class Request:
    path: str
    host: str
    at: float


class WebServer:
    """Serves `routes` (path -> Route) on 127.0.0.1; unknown paths are 404. Records every request."""

    def __init__(self, routes: dict[str, Route] | None = None) -> None:
        self.routes: dict[str, Route] = dict(routes or {})
        self.requests: list[Request] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                server.requests.append(Request(self.path, self.headers.get("Host", ""), time.monotonic()))
                route = server.routes.get(self.path, Route(b"<html><body>Not found</body></html>", status=404))
                if server.paths_requested().count(self.path) <= route.fail_first:
                    route = Route(b"busy", status=503)
                if route.delay_s:
                    time.sleep(route.delay_s)
                try:
                    self.send_response(route.status)
                    self.send_header("Content-Type", route.content_type)
                    self.send_header("Content-Length", str(len(route.body)))
                    for name, value in route.headers.items():
                        self.send_header(name, value)
                    self.end_headers()
                    half = len(route.body) // 2 if route.stall_s else len(route.body)
                    self.wfile.write(route.body[:half])
                    if route.stall_s:
                        self.wfile.flush()
                        time.sleep(route.stall_s)
                    self.wfile.write(route.body[half:])
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (a timeout under test)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    def paths_requested(self) -> list[str]:
        return [request.path for request in self.requests]

    def __enter__(self) -> WebServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
