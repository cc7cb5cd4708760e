"""The HTTP listener's server: uvicorn's, in authz's own event loop, on a socket authz binds.

`HttpListener.start()` binds the socket itself (SO_REUSEPORT when Settings.http_reuse_port, so
that several worker processes can share one port) and runs uvicorn's `Server.serve` as a task of
the running loop, beside grpc.aio. uvicorn installs no signal handlers here: authz.server.app
owns SIGTERM, SIGINT and SIGHUP for both listeners. `stop(grace)` closes the socket, lets
requests in flight finish for up to `grace` seconds, then cancels what is left, as gRPC does.

uvicorn's HTTP/1.1 connection (h11) is extended with what authz needs of it (Connection):
the client certificate of a mutual-TLS connection for authz.web.auth, a bound on open
connections, a bound on the time a request may take to arrive, an age after which a connection
closes (AUTHZ_MAX_CONNECTION_AGE), no Nagle delay, and JSON for its own 400s.
uvicorn is pinned to a minor release in pyproject.toml because this uses its protocol class.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
import ssl
import time
from collections.abc import Callable, Iterator, Sequence
from typing import ClassVar

import h11
import uvicorn
from starlette.types import ASGIApp
from uvicorn.protocols.http.flow_control import CLOSE_HEADER
from uvicorn.protocols.http.h11_impl import STATUS_PHRASES, H11Protocol

from authz.config import ConfigError, Settings, parse_host_port
from authz.web.app import ROUTE_GROUPS, build_app
from authz.web.auth import PEER_CERTIFICATE, certificate_auth_context
from authz.web.errors import json_error
from authz.web.routing import HttpLimits, RouteGroup, WebParts

log = logging.getLogger("authz.web")


class Connection(H11Protocol):
    """One client connection (uvicorn's h11 protocol) with authz's guards."""

    limits: ClassVar[HttpLimits] = HttpLimits()
    _read_timer: asyncio.TimerHandle | None = None
    _last_log: ClassVar[float] = 0.0
    _old_at: float | None = None  # loop time from which the next answer closes the connection

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        _send_at_once(transport)
        if age := self.limits.max_connection_age:
            self._old_at = self.loop.time() + age * random.uniform(0.9, 1.1)  # grpc's jitter
        if len(self.connections) > self.limits.max_connections:
            self._log_once_a_second(
                "HTTP connection from %s closed: %d connections are open, the limit",
                self.client,
                self.limits.max_connections,
            )
            transport.close()
            return
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is not None:
            # The handshake has verified the certificate (AUTHZ_CLIENT_CA). uvicorn copies
            # app_state into every request's scope["state"], so this copy is per connection.
            certificate = ssl_object.getpeercert(binary_form=True)
            self.app_state = {
                **self.app_state,
                PEER_CERTIFICATE: certificate_auth_context(certificate),
            }
        self._arm_read_timer()  # the first request is due as soon as the connection is open

    def data_received(self, data: bytes) -> None:
        if self._read_timer is None and self.conn.their_state is h11.IDLE:
            self._arm_read_timer()  # the first bytes of the next request on this connection
        super().data_received(data)
        if self.conn.their_state not in (h11.IDLE, h11.SEND_BODY):
            self._cancel_read_timer()  # the request (head and body) has arrived

    def handle_events(self) -> None:
        before = self.cycle
        super().handle_events()
        started = self.cycle
        if started is not before and started is not None and self._is_old():
            # A request has just started on an old connection (its handler has not run yet):
            # its answer says `Connection: close`, and uvicorn closes the connection after it,
            # so the client opens its next one knowing, and never loses a request to a close.
            started.keep_alive = False
            started.default_headers = [*started.default_headers, CLOSE_HEADER]

    def _is_old(self) -> bool:
        return self._old_at is not None and self.loop.time() >= self._old_at

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_read_timer()
        super().connection_lost(exc)

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to bytes that are not HTTP/1.1, in the JSON shape."""
        self._answer(
            400,
            "not a valid HTTP/1.1 request, or its request line and headers are larger than "
            f"{self.limits.max_header_bytes} bytes",
        )
        self.transport.close()

    def _arm_read_timer(self) -> None:
        self._cancel_read_timer()
        self._read_timer = self.loop.call_later(self.limits.request_timeout, self._too_slow)

    def _cancel_read_timer(self) -> None:
        if self._read_timer is not None:
            self._read_timer.cancel()
            self._read_timer = None

    def _too_slow(self) -> None:
        """The request has not arrived in time: a handler still waiting for its body gets no
        more of it and the client gets 408; either way the connection is closed, so a client
        cannot hold it by sending slowly, or not at all."""
        self._read_timer = None
        if self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_started:
            self._answer(
                408,
                f"the request did not arrive within {self.limits.request_timeout:g} s of its "
                "start; send the whole request at once",
            )
            # What uvicorn does when the client goes: the handler's answer is dropped and its
            # next read says the client is gone (it would otherwise learn it one step later).
            self.cycle.disconnected = True
        self.transport.close()

    def _answer(self, status: int, message: str) -> None:
        """Write an error answer outside the application (which has not started one)."""
        body = bytes(json_error(status, message, {}).body)
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ]
        events = (
            h11.Response(status_code=status, headers=headers, reason=STATUS_PHRASES[status]),
            h11.Data(data=body),
            h11.EndOfMessage(),
        )
        try:
            output = b"".join(self.conn.send(event) or b"" for event in events)
        except h11.LocalProtocolError:
            return  # no answer fits the connection's state: it is only closed
        self.transport.write(output)

    def _log_once_a_second(self, message: str, *args: object) -> None:
        now = time.monotonic()
        if now - Connection._last_log >= 1.0:
            Connection._last_log = now
            log.warning(message, *args)


def _send_at_once(transport: asyncio.BaseTransport) -> None:
    """Turn Nagle's algorithm off (TCP_NODELAY) for a connection. uvicorn writes an answer's head
    and body apart; with Nagle on, the body waited for the client's delayed ACK, about 40 ms
    per request. uvloop turns it off for every TCP connection, but asyncio's own loop
    (AUTHZ_EVENT_LOOP=asyncio) only for sockets made with protocol number IPPROTO_TCP, and
    `bind`'s socket, like its connections, has protocol 0."""
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class _Server(uvicorn.Server):
    """uvicorn's server without its signal handling, telling when it has started."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.ready = asyncio.Event()

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield  # authz.server.app.serve owns SIGTERM, SIGINT and SIGHUP

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        self.ready.set()


class HttpListener:
    """The HTTP listener of one service: start() and stop(grace) from the running loop."""

    def __init__(self, app: ASGIApp, settings: Settings, limits: HttpLimits) -> None:
        assert settings.http_listen is not None
        self.listen = settings.http_listen
        self.reuse_port = settings.http_reuse_port
        self.tls = tls_context(settings)
        connection = type("Connection", (Connection,), {"limits": limits})
        self._server = _Server(
            uvicorn.Config(
                app,
                http=connection,
                ws="none",
                lifespan="off",
                interface="asgi3",
                workers=1,  # not WEB_CONCURRENCY: processes are authz's to start
                log_config=None,  # authz configures logging
                access_log=False,
                proxy_headers=False,  # X-Forwarded-* are not trusted for anything
                server_header=False,
                timeout_keep_alive=limits.keep_alive,
                h11_max_incomplete_event_size=limits.max_header_bytes,
                ssl_context_factory=(lambda config, default: self.tls) if self.tls else None,
            )
        )
        self._task: asyncio.Task[None] | None = None
        self.port = 0

    @property
    def address(self) -> str:
        host = self.listen.rsplit(":", 1)[0]
        return f"{host}:{self.port}"

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.address}"

    async def start(self) -> None:
        sock = bind(self.listen, reuse_port=self.reuse_port)
        self.port = sock.getsockname()[1]
        self._task = asyncio.get_running_loop().create_task(
            self._server.serve(sockets=[sock]), name="authz-http"
        )
        ready = asyncio.ensure_future(self._server.ready.wait())
        await asyncio.wait({self._task, ready}, return_when=asyncio.FIRST_COMPLETED)
        if not ready.done():
            ready.cancel()
            sock.close()
            self._task.result()  # raises what stopped it
            raise OSError(f"the HTTP listener on {self.listen} stopped while starting")
        log.info("HTTP listener on %s", self.url)

    async def stop(self, grace: float) -> None:
        """Take no new connections, let requests in flight finish for up to `grace` seconds
        (then cancel them), and close every connection."""
        if self._task is None or self._task.done():
            return
        self._server.config.timeout_graceful_shutdown = grace  # type: ignore[assignment]
        self._server.should_exit = True
        await self._task


def bind(listen: str, *, reuse_port: bool = False) -> socket.socket:
    """A listening TCP socket on `listen` (host:port)."""
    host, port = parse_host_port(listen, "AUTHZ_HTTP_LISTEN")
    try:
        family, _, _, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        return socket.create_server(address, family=family, backlog=2048, reuse_port=reuse_port)
    except OSError as exc:
        raise OSError(f"cannot listen on {listen} for HTTP: {exc.strerror or exc}") from None


def tls_context(settings: Settings) -> ssl.SSLContext | None:
    """HTTPS with the gRPC server's certificate; with AUTHZ_CLIENT_CA the handshake requires a
    client certificate from that CA, as gRPC's does. None without AUTHZ_TLS_CERT."""
    if settings.tls_cert is None or settings.tls_key is None:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(settings.tls_cert, settings.tls_key)
        if settings.client_ca is not None:
            context.load_verify_locations(cafile=settings.client_ca)
            context.verify_mode = ssl.CERT_REQUIRED
    except (OSError, ssl.SSLError) as exc:
        reason = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or "unusable"
        raise ConfigError(
            f"AUTHZ_TLS_CERT, AUTHZ_TLS_KEY or AUTHZ_CLIENT_CA cannot serve HTTPS: {reason}"
        ) from None
    context.set_alpn_protocols(["http/1.1"])
    return context


async def start_http_listener(
    parts: WebParts, groups: Sequence[Callable[[WebParts], RouteGroup]] = ROUTE_GROUPS
) -> HttpListener:
    """Serve the route groups on parts.settings.http_listen."""
    listener = HttpListener(build_app(parts, groups), parts.settings, parts.limits)
    await listener.start()
    return listener
