"""Who is calling: TLS, mutual TLS and bearer tokens; the caller's identity; admin separation.

Callers prove who they are in one of two ways:

- **mutual TLS** (``AUTHZ_CLIENT_CA``): the TLS handshake requires a client certificate issued by
  that CA, so a caller without one never gets as far as a call. The identity is the certificate's
  first DNS SAN, else its first URI SAN (e.g. a SPIFFE id), else its subject CN.
- **bearer tokens** (``AUTHZ_CALLER_TOKENS``): gRPC metadata ``authorization: Bearer <token>``.
  The token is hashed (SHA-256) and compared in constant time with every configured hash; the
  identity is the name written next to the matching hash.

With both configured the certificate names the caller; a bearer token sent as well must name the
same caller. :class:`CallerInterceptor` puts the identity in :data:`CALLER`, a ContextVar (grpc.aio
runs each call, interceptors included, in a context of its own), where
``authorization.caller_of`` reads it, so it is recorded with every decision and visible to
policies as ``caller.id``. ``AdminService`` is only for the identities in ``AUTHZ_ADMINS``.
Health checking and reflection are open to every connection.

Without caller credentials the server runs in development mode: every caller is ``anonymous``,
everything (``AdminService`` too) is open, and it may only listen on loopback unless ``--insecure``
says otherwise (:func:`plan_transport`). Nothing here ever logs or echoes a presented token.

In every mode, each call must deliver its request message within ``Settings.request_timeout``
(10 s) of starting, so a client that opens calls and never sends them holds the server's call
slots (``Settings.max_concurrent_rpcs``) only that long; a call without valid bearer-token
credentials is refused before its request is even read.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import inspect
import ipaddress
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from grpc_health.v1 import health
from grpc_reflection.v1alpha import reflection

from authz.config import CallerToken, ConfigError, Settings, parse_host_port
from authz.server.errors import abort
from authz.v1 import admin_pb2

log = logging.getLogger("authz.callers")

ANONYMOUS = "anonymous"
CALLER: ContextVar[str] = ContextVar("authz_caller", default="")
"""The authenticated caller of the call being handled ("" when callers are not authenticated)."""

ADMIN_SERVICE = admin_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name
OPEN_SERVICES = frozenset(
    {
        health.SERVICE_NAME,
        reflection.SERVICE_NAME,
        "grpc.reflection.v1.ServerReflection",
    }
)
"""Services any connection may call: load balancers probe health, grpcurl uses reflection."""

MAX_TOKEN_LENGTH = 1024
REQUEST_TIMEOUT = 10.0
"""Seconds a call may take to deliver its request message (at most 1 MiB) after it starts
(Settings.request_timeout, AUTHZ_REQUEST_TIMEOUT)."""
UNAUTHENTICATED_REASON = "CALLER_UNAUTHENTICATED"
NOT_ADMIN_REASON = "CALLER_NOT_ADMIN"


def current_caller() -> str:
    return CALLER.get() or ANONYMOUS


# -- transport ----------------------------------------------------------------------------------


def is_loopback(listen: str) -> bool:
    """True when `listen` (a gRPC address) only accepts connections from this machine."""
    if listen.startswith(("unix:", "unix-abstract:")):
        return True
    host = listen.rsplit(":", 1)[0] if ":" in listen else listen
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name (or "" / "*"): it may resolve to anything


@dataclass(frozen=True)
class Transport:
    """How the server listens and who may call: built once from Settings at start."""

    credentials: grpc.ServerCredentials | None
    interceptor: CallerInterceptor
    description: str

    @property
    def interceptors(self) -> list[grpc.aio.ServerInterceptor]:
        return [self.interceptor]


def plan_transport(settings: Settings) -> Transport:
    """Check the listen addresses against the credentials and build both; ConfigError if unsafe.

    A non-loopback address for gRPC or for the HTTP listener (which includes ``0.0.0.0:$PORT``
    on Heroku) needs caller authentication, mutual TLS or bearer tokens, unless
    ``settings.insecure``. TLS with a server certificate alone encrypts but does not say who
    calls, so it is not enough.
    """
    settings.check_transport()
    credentials = server_credentials(settings) if settings.tls_cert is not None else None
    listeners = [(settings.listen, "AUTHZ_LISTEN")]
    if settings.http_listen is not None:
        parse_host_port(settings.http_listen, "AUTHZ_HTTP_LISTEN")
        listeners.append((settings.http_listen, "AUTHZ_HTTP_LISTEN; note that PORT binds 0.0.0.0"))
    for listen, variable in listeners:
        if is_loopback(listen) or settings.authenticates_callers or settings.insecure:
            continue
        tls_note = (
            " (TLS alone encrypts but does not say who calls)"
            if settings.tls_cert is not None
            else ""
        )
        raise ConfigError(
            f"refusing to listen on {listen} without caller authentication{tls_note}: "
            "anyone who can reach that address could ask for decisions and change the add-on "
            "registry. Set AUTHZ_CALLER_TOKENS (a file of 'name sha256-hex-of-token' lines) or "
            "AUTHZ_CLIENT_CA with AUTHZ_TLS_CERT and AUTHZ_TLS_KEY (mutual TLS), or listen on "
            f"127.0.0.1 ({variable}), or pass --insecure if something else guards this port"
        )
    interceptor = CallerInterceptor(
        tokens=settings.caller_tokens,
        mutual_tls=settings.client_ca is not None,
        admins=settings.admins,
        request_timeout=settings.request_timeout,
    )
    return Transport(credentials, interceptor, _describe(settings))


def _describe(settings: Settings) -> str:
    ways = []
    if settings.client_ca is not None:
        ways.append("mutual TLS")
    elif settings.tls_cert is not None:
        ways.append("TLS")
    if settings.caller_tokens:
        names = sorted({t.name for t in settings.caller_tokens})
        ways.append(f"bearer tokens for {len(names)} caller(s)")
    return " + ".join(ways) or "plaintext"


def log_transport(
    settings: Settings, transport: Transport, address: str, http_address: str | None = None
) -> None:
    """Say loudly how this server (gRPC on `address`, HTTP on `http_address`) can be reached
    and by whom."""
    bound = [(settings.listen, address)]
    if settings.http_listen is not None and http_address is not None:
        bound.append((settings.http_listen, http_address))
    addresses = ", ".join(where for _, where in bound)
    exposed = ", ".join(where for listen, where in bound if not is_loopback(listen))
    if not settings.authenticates_callers:
        if settings.insecure and exposed:
            log.warning(
                "INSECURE: listening on %s (%s) WITHOUT caller authentication because of "
                "--insecure: anyone who can reach it may ask for decisions and use AdminService",
                exposed,
                transport.description,
            )
        else:
            log.warning(
                "DEVELOPMENT MODE: no caller credentials configured (AUTHZ_CALLER_TOKENS or "
                "AUTHZ_CLIENT_CA), so every caller is %r and AdminService is open to all; "
                "listening on loopback only (%s)",
                ANONYMOUS,
                addresses,
            )
        return
    log.info("callers authenticate with %s on %s", transport.description, addresses)
    if settings.tls_cert is None and exposed:
        log.warning(
            "bearer tokens travel in plaintext to %s: put a TLS-terminating proxy in front "
            "(Heroku's router does) or set AUTHZ_TLS_CERT and AUTHZ_TLS_KEY",
            exposed,
        )
    if settings.admins:
        log.info("AdminService is open to: %s", ", ".join(sorted(settings.admins)))
    else:
        log.warning("AUTHZ_ADMINS is empty: AdminService refuses every caller")


def server_credentials(settings: Settings) -> grpc.ServerCredentials:
    """TLS credentials from PEM files; with a client CA, clients must present a certificate."""
    assert settings.tls_cert is not None and settings.tls_key is not None
    chain = _read_pem(settings.tls_cert, "AUTHZ_TLS_CERT")
    key = _read_pem(settings.tls_key, "AUTHZ_TLS_KEY")
    try:
        certificates = x509.load_pem_x509_certificates(chain)
    except ValueError:
        raise ConfigError(f"AUTHZ_TLS_CERT: {settings.tls_cert} holds no PEM certificate") from None
    try:
        private_key = serialization.load_pem_private_key(key, password=None)
    except (ValueError, TypeError):
        # The message names the file only: a key file's content is never echoed.
        raise ConfigError(
            f"AUTHZ_TLS_KEY: {settings.tls_key} holds no unencrypted PEM private key"
        ) from None
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    encoding = serialization.Encoding.DER
    if certificates[0].public_key().public_bytes(encoding, public) != (
        private_key.public_key().public_bytes(encoding, public)
    ):
        raise ConfigError(
            f"AUTHZ_TLS_KEY: {settings.tls_key} is not the private key of the first "
            f"certificate in {settings.tls_cert}"
        )
    client_ca = None
    if settings.client_ca is not None:
        client_ca = _read_pem(settings.client_ca, "AUTHZ_CLIENT_CA")
        try:
            x509.load_pem_x509_certificates(client_ca)
        except ValueError:
            raise ConfigError(
                f"AUTHZ_CLIENT_CA: {settings.client_ca} holds no PEM certificate"
            ) from None
    return grpc.ssl_server_credentials(
        [(key, chain)], root_certificates=client_ca, require_client_auth=client_ca is not None
    )


def _read_pem(path: Path, name: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"{name}: cannot read {path}: {exc.strerror}") from None


# -- identity -----------------------------------------------------------------------------------


class Refusal(Exception):
    def __init__(self, code: grpc.StatusCode, reason: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message


def _unauthenticated(message: str) -> Refusal:
    return Refusal(grpc.StatusCode.UNAUTHENTICATED, UNAUTHENTICATED_REASON, message)


def certificate_identity(auth_context: dict[str, Sequence[bytes]]) -> str:
    """The verified client certificate's identity: its first DNS SAN, else its first URI SAN,
    else its subject CN. "" when it names none, or when that name is not exactly a name
    (surrounding whitespace, unprintable characters, not UTF-8): identities are compared
    exactly, so a certificate for " ops" never becomes the administrator "ops"."""
    for key in ("peer_dns", "peer_uri", "x509_common_name"):
        values = auth_context.get(key)
        if not values:
            continue
        try:
            text = values[0].decode("utf-8")
        except UnicodeDecodeError:
            return ""
        return text if text and text == text.strip() and text.isprintable() else ""
    return ""


def bearer_token(metadata: Sequence[tuple[str, Any]]) -> str | None:
    """The token of `authorization: Bearer <token>`, None when no such metadata was sent."""
    values = [value for key, value in metadata if key.lower() == "authorization"]
    if not values:
        return None
    malformed = _unauthenticated(
        "malformed authorization metadata: send exactly one 'authorization: Bearer <token>' "
        "entry with the token issued to your service"
    )
    if len(values) > 1 or not isinstance(values[0], str):
        raise malformed
    scheme, _, token = values[0].strip().partition(" ")
    token = token.strip()
    if (
        scheme.lower() != "bearer"
        or not token
        or len(token) > MAX_TOKEN_LENGTH
        or not (token.isascii() and token.isprintable())
        or " " in token
    ):
        raise malformed
    return token


class CallerInterceptor(grpc.aio.ServerInterceptor):
    """Admits every call to authz's own services (health and reflection pass untouched).

    - With credentials configured, it authenticates the caller (UNAUTHENTICATED saying what to
      send otherwise), keeps AdminService to `admins` (PERMISSION_DENIED) and sets CALLER.
      Without, every caller is anonymous and everything is open (development mode).
    - Either way, the request message must arrive within `request_timeout` seconds of the call
      starting: a client that opens calls and never sends them cannot hold the server's call
      slots (Settings.max_concurrent_rpcs) for longer than that.
    """

    def __init__(
        self,
        *,
        tokens: Sequence[CallerToken] = (),
        mutual_tls: bool = False,
        admins: frozenset[str] = frozenset(),
        request_timeout: float = REQUEST_TIMEOUT,
    ) -> None:
        self.tokens = tuple(tokens)
        self.mutual_tls = mutual_tls
        self.admins = frozenset(admins)
        self.request_timeout = request_timeout
        self._last_log = 0.0
        self._unlogged = 0

    @property
    def authenticates(self) -> bool:
        return self.mutual_tls or bool(self.tokens)

    def match_token(self, token: str) -> str:
        """The name whose hash matches `token`, or "". Every entry is compared, in constant time."""
        digest = hashlib.sha256(token.encode()).digest()
        found = ""
        for entry in self.tokens:
            if hmac.compare_digest(digest, entry.digest) and not found:
                found = entry.name
        return found

    def identify(
        self, metadata: Sequence[tuple[str, Any]], auth_context: dict[str, Sequence[bytes]]
    ) -> str:
        """The caller's identity, or Refusal(UNAUTHENTICATED) saying what to send."""
        cert_identity = certificate_identity(auth_context) if self.mutual_tls else ""
        if self.mutual_tls and not cert_identity:
            raise _unauthenticated(
                "the client certificate names no identity: issue it with a DNS or URI "
                "subjectAltName (or a subject CN) naming the calling service exactly, without "
                "surrounding spaces"
            )
        token_identity = ""
        if self.tokens:
            token = bearer_token(metadata)
            if token is not None:
                token_identity = self.match_token(token)
                if not token_identity:
                    raise _unauthenticated(
                        "the bearer token matches no configured caller: send "
                        "'authorization: Bearer <token>' with the token issued to your service "
                        "(AUTHZ_CALLER_TOKENS lists the SHA-256 of each)"
                    )
        if cert_identity and token_identity and cert_identity != token_identity:
            raise _unauthenticated(
                f"the client certificate names {cert_identity!r} but the bearer token names "
                f"{token_identity!r}; send the credentials of one service"
            )
        identity = cert_identity or token_identity
        if not identity:
            raise _unauthenticated(
                "no caller credentials: send gRPC metadata 'authorization: Bearer <token>' with "
                "the token issued to your service"
            )
        return identity

    def admit(
        self,
        metadata: Sequence[tuple[str, Any]],
        auth_context: dict[str, Sequence[bytes]],
        admin: bool,
    ) -> str:
        """The caller's identity ("" in development mode), or Refusal."""
        if not self.authenticates:
            return ""
        identity = self.identify(metadata, auth_context)
        if admin and identity not in self.admins:
            raise Refusal(
                grpc.StatusCode.PERMISSION_DENIED,
                NOT_ADMIN_REASON,
                f"AdminService is only for administrators, and caller {identity!r} is not one "
                "(AUTHZ_ADMINS lists them)",
            )
        return identity

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method: str = handler_call_details.method  # type: ignore[attr-defined]
        service = method.lstrip("/").split("/", 1)[0]
        if service in OPEN_SERVICES or not self.authenticates:
            return self._guarded(handler, _open)
        admin = service == ADMIN_SERVICE
        if not self.mutual_tls:
            # Bearer tokens travel in the headers: decide now, before the request is read, so a
            # caller without credentials holds no call slot while it sends (or never sends) it.
            metadata = tuple(handler_call_details.invocation_metadata or ())  # type: ignore[attr-defined]
            try:
                identity = self.admit(metadata, {}, admin)
            except Refusal as refusal:
                return self._refusing(handler, method, refusal)

            async def admitted(context: grpc.aio.ServicerContext) -> None:
                if identity:
                    CALLER.set(identity)

            return self._guarded(handler, admitted)

        async def admit(context: grpc.aio.ServicerContext) -> None:
            # The client certificate is known from the connection, so from the call's context.
            try:
                identity = self.admit(
                    tuple(context.invocation_metadata() or ()), context.auth_context(), admin
                )
            except Refusal as refusal:
                self._log_refusal(method, refusal, context)
                await abort(context, refusal.code, refusal.message, refusal.reason)
            CALLER.set(identity)

        return self._guarded(handler, admit)

    def _refusing(
        self, handler: grpc.RpcMethodHandler, method: str, refusal: Refusal
    ) -> grpc.RpcMethodHandler:
        """A handler that refuses at once, without reading the request."""

        async def refuse(requests: Any, context: grpc.aio.ServicerContext) -> None:
            self._log_refusal(method, refusal, context)
            await abort(context, refusal.code, refusal.message, refusal.reason)

        return _as_stream_request(handler, refuse, refuse)

    def _guarded(
        self,
        handler: grpc.RpcMethodHandler,
        admit: Callable[[grpc.aio.ServicerContext], Awaitable[None]],
        timeout: float | None = None,
    ) -> grpc.RpcMethodHandler:
        """The same handler, with `admit(context)` first and a bounded wait for the request.

        A unary request is taken as a stream of one (the same bytes on the wire), so that this
        wrapper, not grpc, reads it, and can give up on a caller that never sends it.
        """
        if timeout is None:
            timeout = self.request_timeout
        if not timeout:
            return self._unguarded(handler, admit)

        async def read_one(context: grpc.aio.ServicerContext) -> Any:
            try:
                # asyncio.timeout arms one timer on this task; wait_for would start a new task
                # for every call.
                async with asyncio.timeout(timeout):
                    request = await context.read()
            except TimeoutError:
                await abort(
                    context,
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                    f"the request message did not arrive within {timeout:g} s of the call "
                    "starting; send it with the call",
                    "REQUEST_TOO_SLOW",
                )
            if request is grpc.aio.EOF:
                await abort(
                    context,
                    grpc.StatusCode.INVALID_ARGUMENT,
                    "the call ended without a request message",
                )
            return request

        if handler.unary_unary is not None:
            unary_unary = handler.unary_unary

            async def guarded_unary_unary(requests: Any, context: grpc.aio.ServicerContext) -> Any:
                await admit(context)
                request = await read_one(context)
                return await _result(unary_unary(request, context))

            return _as_stream_request(handler, guarded_unary_unary, None)
        if handler.unary_stream is not None:
            unary_stream = handler.unary_stream
            if inspect.isasyncgenfunction(unary_stream):

                async def guarded_unary_stream(
                    requests: Any, context: grpc.aio.ServicerContext
                ) -> AsyncIterator[Any]:
                    await admit(context)
                    request = await read_one(context)
                    async for item in unary_stream(request, context):
                        yield item

                return _as_stream_request(handler, None, guarded_unary_stream)

            async def guarded_unary_writer(
                requests: Any, context: grpc.aio.ServicerContext
            ) -> None:
                # A handler that answers with context.write() (e.g. health's Watch).
                await admit(context)
                request = await read_one(context)
                await _result(unary_stream(request, context))

            return _as_stream_request(handler, None, guarded_unary_writer)
        # Client-streaming methods (authz has none today): admit, then let the handler read.
        if handler.stream_unary is not None:
            stream_unary = handler.stream_unary

            async def guarded_stream_unary(requests: Any, context: grpc.aio.ServicerContext) -> Any:
                await admit(context)
                return await _result(stream_unary(requests, context))

            return _as_stream_request(handler, guarded_stream_unary, None)
        stream_stream = handler.stream_stream
        if inspect.isasyncgenfunction(stream_stream):

            async def guarded_stream_stream(
                requests: Any, context: grpc.aio.ServicerContext
            ) -> AsyncIterator[Any]:
                await admit(context)
                async for item in stream_stream(requests, context):
                    yield item

            return _as_stream_request(handler, None, guarded_stream_stream)

        async def guarded_stream_writer(requests: Any, context: grpc.aio.ServicerContext) -> Any:
            await admit(context)
            return await _result(stream_stream(requests, context))

        return _as_stream_request(handler, None, guarded_stream_writer)

    def _unguarded(
        self,
        handler: grpc.RpcMethodHandler,
        admit: Callable[[grpc.aio.ServicerContext], Awaitable[None]],
    ) -> grpc.RpcMethodHandler:
        """AUTHZ_REQUEST_TIMEOUT=0: admission only, and grpc reads unary requests itself (about
        a quarter less CPU per call; a caller that never sends its request then holds its slot
        until its own deadline). Streaming methods keep the guarded path."""
        if handler.unary_unary is None:
            return self._guarded(handler, admit, REQUEST_TIMEOUT)
        if admit is _open:
            return handler
        inner = handler.unary_unary

        async def admitted_unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
            await admit(context)
            return await _result(inner(request, context))

        return grpc.unary_unary_rpc_method_handler(
            admitted_unary,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

    def _log_refusal(
        self, method: str, refusal: Refusal, context: grpc.aio.ServicerContext
    ) -> None:
        """At most one line a second, so a flood of bad calls cannot flood the log."""
        now = time.monotonic()
        if now - self._last_log < 1.0:
            self._unlogged += 1
            return
        more = f" (and {self._unlogged} more since the last line)" if self._unlogged else ""
        self._last_log, self._unlogged = now, 0
        log.info("refused %s from %s: %s%s", method, context.peer(), refusal.reason, more)


def _as_stream_request(
    handler: grpc.RpcMethodHandler, unary_response: Any, stream_response: Any
) -> grpc.RpcMethodHandler:
    """A handler for the same method that takes its request(s) as a stream."""
    kwargs = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(stream_response or unary_response, **kwargs)
    return grpc.stream_unary_rpc_method_handler(unary_response or stream_response, **kwargs)


async def _open(context: grpc.aio.ServicerContext) -> None:
    """Admission for open services, and for every call in development mode."""


async def _result(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value
