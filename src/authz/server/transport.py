"""How the server listens: TLS and mutual-TLS credentials, the rule about open binds, and how
long a connection stays (AUTHZ_MAX_CONNECTION_AGE)."""

from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from authz.config import ConfigError, Settings, parse_host_port
from authz.server.guard import Guard, server_call_limit
from authz.server.identity import ANONYMOUS, CallerAdmission

log = logging.getLogger("authz.callers")


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
    admission: CallerAdmission
    description: str
    maximum_concurrent_rpcs: int  # grpc's own server-wide limit (see authz.server.guard)


CONNECTION_AGE_GRACE = 300.0
"""Seconds a connection's calls in flight get to finish after it was asked to move (a long
QueryDecisions stream above all); new calls go to the new connection at once."""


def connection_age_options(age: float) -> tuple[tuple[str, int], ...]:
    """grpc's options for AUTHZ_MAX_CONNECTION_AGE (gRFC A9). Each worker of `authz serve` keeps
    every call of a connection, and the kernel places a connection by a hash of its ports once
    (SO_REUSEPORT), so a client's few long-lived channels could leave a worker idle for good,
    e.g. after it was restarted. Past its age (±10 %, grpc's jitter) a connection gets a GOAWAY;
    grpc clients open a new one, which the kernel places again, without failing a call."""
    if not age:
        return ()
    return (
        ("grpc.max_connection_age_ms", round(age * 1000)),
        ("grpc.max_connection_age_grace_ms", round(CONNECTION_AGE_GRACE * 1000)),
    )


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
    guard = Guard(
        max_concurrent_rpcs=settings.max_concurrent_rpcs,
        open_rpcs=settings.open_rpcs,
        request_timeout=settings.request_timeout,
        stream_idle=settings.stream_idle,
    )
    admission = CallerAdmission(
        tokens=settings.caller_tokens,
        mutual_tls=settings.client_ca is not None,
        admins=settings.admins,
        guard=guard,
    )
    limit = server_call_limit(settings.max_concurrent_rpcs, settings.open_rpcs)
    return Transport(credentials, admission, _describe(settings), limit)


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
