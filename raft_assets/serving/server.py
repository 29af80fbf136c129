"""Running the service with uvicorn: in the foreground (`raft-assets serve`), or in a thread (tests, benchmark).

The listening socket is bound before uvicorn starts, so that port 0 gives a free port whose URL is known at once.
uvicorn's access log is off: `app.RequestLog` writes the one line per request.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import uvicorn
from starlette.applications import Starlette

STARTUP_TIMEOUT_S = 30.0
BACKLOG = 2048  # uvicorn's default


def listening_socket(host: str, port: int) -> socket.socket:
    """A socket listening on (host, port); port 0: a free one."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(BACKLOG)  # connections wait from now on, while the model loads and uvicorn starts
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    return f"http://{f'[{host}]' if ':' in host else host}:{port}"


def uvicorn_server(app: Starlette, log_level: str = "info") -> uvicorn.Server:
    return uvicorn.Server(uvicorn.Config(app, log_level=log_level, access_log=False, lifespan="on"))


def serve_forever(app: Starlette, sock: socket.socket) -> None:
    """Serve until interrupted (Ctrl-C, SIGTERM), then finish the requests in flight."""
    uvicorn_server(app).run(sockets=[sock])


@contextmanager
def running(app: Starlette, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """The service in a background thread for the block; yields its root URL (no /v1)."""
    sock = listening_socket(host, port)
    server = uvicorn_server(app, log_level="warning")
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="raft-serve", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the service did not start")
            time.sleep(0.02)
        yield url_of(sock)
    finally:
        server.should_exit = True
        thread.join(timeout=STARTUP_TIMEOUT_S)
        sock.close()
