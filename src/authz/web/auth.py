"""Who is calling over HTTP: the same callers, tokens and certificates as gRPC.

The rules live in authz.server.identity (the caller admission's `identify`, `match_token` and
`certificate_identity`); this module only brings HTTP's credentials to them:

- bearer tokens come from the `Authorization: Bearer <token>` header, as gRPC's `authorization`
  metadata;
- the client certificate of a mutual-TLS connection is read once, when the connection is made
  (authz.web.server), and kept in the connection's scope state under PEER_CERTIFICATE in the
  shape gRPC's auth context has, so `certificate_identity` applies the same rules to both.

A route declares who may call it (Access); `HttpCallers.caller` answers with the caller's
identity or refuses with 401 (`WWW-Authenticate: Bearer`) or 403.
"""

from __future__ import annotations

import enum
import ssl
from collections.abc import Sequence

from starlette.requests import Request

from authz.server.identity import ANONYMOUS, AdmissionRefused, CallerAdmission
from authz.web.errors import HttpError

PEER_CERTIFICATE = "authz.peer_certificate"
"""Scope-state key: the verified client certificate's names, as gRPC's auth context has them."""

AuthContext = dict[str, Sequence[bytes]]


class Access(enum.Enum):
    """Who may call a route."""

    OPEN = "open"
    """Anyone who reaches the listener (health probes, signed webhooks); caller "anonymous"."""
    CALLER = "caller"
    """An authenticated caller (anyone in development mode, as over gRPC)."""
    ADMIN = "admin"
    """A caller named in AUTHZ_ADMINS (anyone in development mode, as over gRPC)."""


def certificate_auth_context(der: bytes | None) -> AuthContext:
    """A verified client certificate in the shape gRPC's auth context has it (x509_pem_cert),
    so `certificate_identity` reads the same names from both; {} without one."""
    if not der:
        return {}
    return {"x509_pem_cert": [ssl.DER_cert_to_PEM_cert(der).encode()]}


class HttpCallers:
    """Authenticates HTTP requests with the gRPC server's caller rules (one CallerAdmission)."""

    def __init__(self, callers: CallerAdmission) -> None:
        self.callers = callers

    def caller(self, request: Request, access: Access) -> str:
        """The caller's identity ("anonymous" on open routes and in development mode), or
        HttpError 401/403 saying what to send."""
        if access is Access.OPEN or not self.callers.authenticates:
            return ANONYMOUS
        authorization = [
            ("authorization", value) for value in request.headers.getlist("authorization")
        ]
        if not authorization and not self.callers.mutual_tls:
            raise _unauthenticated(
                "no caller credentials: send the header 'Authorization: Bearer <token>' with the "
                "token issued to your service",
                token_sent=False,
            )
        auth_context: AuthContext = request.scope.get("state", {}).get(PEER_CERTIFICATE, {})
        try:
            identity = self.callers.identify(authorization, auth_context)
        except AdmissionRefused as refusal:
            raise _unauthenticated(refusal.message, token_sent=bool(authorization)) from None
        if access is Access.ADMIN and identity not in self.callers.admins:
            raise HttpError(
                403,
                f"this route is only for administrators, and caller {identity!r} is not one "
                "(AUTHZ_ADMINS lists them)",
            )
        return identity


def _unauthenticated(message: str, *, token_sent: bool) -> HttpError:
    # RFC 6750 §3: the challenge names the scheme; error="invalid_token" when one was sent.
    challenge = 'Bearer realm="authz"' + (', error="invalid_token"' if token_sent else "")
    return HttpError(401, message, {"WWW-Authenticate": challenge})
