"""HTTP plumbing: a threaded stdlib server whose handler hands every request to one callable.

The simulator stays on ``http.server`` (a development tool, no extra dependency): fault injection
needs to drop a connection without an answer and to sleep inside a request while ``stop()`` stays
quick, which a plain socket server gives directly.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import uuid
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class Reply(Exception):
    """Raised inside request handling to answer with Heroku's error document ``{id, message}``."""

    def __init__(
        self,
        status: int,
        error_id: str,
        message: str,
        *,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.error_id = error_id
        self.message = message
        self.headers = dict(headers or {})

    def document(self) -> dict[str, str]:
        return {"id": self.error_id, "message": self.message}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "heroku-sim/2"
    timeout = 30
    dispatch: Callable[[Handler], None]
    track: Callable[[socket.socket, bool], None]

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in separate writes; without this, Nagle's algorithm and
        # delayed ACKs add ~40 ms to every keep-alive request.
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.track(self.connection, True)

    def finish(self) -> None:
        self.track(self.connection, False)
        with contextlib.suppress(OSError):
            super().finish()

    def _dispatch(self) -> None:
        try:
            type(self).dispatch(self)
        except Exception as exc:  # a simulator bug: say so rather than hang up
            doc = {"id": "internal_error", "message": f"simulator error: {type(exc).__name__}"}
            self.send_json(500, doc)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _dispatch

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the tests and the demo read counters, not access logs."""

    def read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def send_json(self, status: int, doc: Any, headers: Mapping[str, str] | None = None) -> None:
        body = json.dumps(doc).encode()
        self.send_raw(status, body, {"Content-Type": "application/json", **(headers or {})})

    def send_raw(self, status: int, body: bytes, headers: Mapping[str, str]) -> None:
        try:
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Request-Id", str(uuid.uuid4()))
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except OSError:
            self.close_connection = True

    def drop(self) -> None:
        """Close the connection without a reply, as a crashed router would."""
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)


class Server:
    """A ThreadingHTTPServer in a background thread that can be stopped promptly."""

    def __init__(self, host: str, port: int, dispatch: Callable[[Handler], None]) -> None:
        self._host, self._port = host, port
        self._dispatch = dispatch
        self._lock = threading.Lock()
        self._connections: set[socket.socket] = set()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def _track(self, conn: socket.socket, alive: bool) -> None:
        with self._lock:
            if alive:
                self._connections.add(conn)
            else:
                self._connections.discard(conn)

    @property
    def running(self) -> bool:
        return self._server is not None

    def start(self) -> None:
        if self._server is not None:
            return
        dispatch, track = self._dispatch, self._track

        class BoundHandler(Handler):
            pass

        BoundHandler.dispatch = staticmethod(dispatch)  # type: ignore[assignment]
        BoundHandler.track = staticmethod(track)  # type: ignore[assignment]
        server = ThreadingHTTPServer((self._host, self._port), BoundHandler)
        server.daemon_threads = True
        server.handle_error = lambda request, client_address: None  # type: ignore[method-assign]
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="heroku-sim",
            daemon=True,
        )
        self._thread.start()

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        with self._lock:
            connections = list(self._connections)
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    @property
    def base_url(self) -> str:
        if self._server is None:
            raise RuntimeError("the simulator is not running; call start() first")
        host, port = self._server.server_address[:2]
        if isinstance(host, bytes):
            host = host.decode()
        return f"http://{host}:{port}"
