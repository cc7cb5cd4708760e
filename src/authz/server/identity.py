"""Who is calling: bearer tokens and client certificates; admin separation; the caller of a call.

With mutual TLS the certificate names the caller; with bearer tokens the name written next to the
token's SHA-256 does; with both, they must name the same caller. The identity is set in
:data:`CALLER` for the call (grpc.aio runs each call, its handler lookup included, in a context
of its own), so it is recorded with every decision and visible to policies as ``caller.id``. Nothing
here ever logs or echoes a presented token.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
from collections.abc import Sequence
from contextvars import ContextVar
from typing import Any, NoReturn

import grpc
from cryptography import x509
from cryptography.x509.oid import NameOID
from grpc_health.v1 import health
from grpc_reflection.v1alpha import reflection

from authz.config import CallerToken
from authz.server.errors import abort
from authz.server.guard import Admit, Guard, Refuse
from authz.v1 import admin_pb2

ANONYMOUS = "anonymous"
CALLER: ContextVar[str] = ContextVar("authz_caller", default="")
"""The authenticated caller of the call being handled ("" when callers are not authenticated)."""

ADMIN_SERVICE = admin_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name
PROBE_SERVICE = health.SERVICE_NAME
"""Open to every connection, so load balancers can probe; calls without credentials are open
calls (their own budget, see authz.server.guard)."""
REFLECTION_SERVICES = frozenset({reflection.SERVICE_NAME, "grpc.reflection.v1.ServerReflection"})
"""Open only in development mode; with caller credentials configured, for callers."""

MAX_TOKEN_LENGTH = 1024
UNAUTHENTICATED_REASON = "CALLER_UNAUTHENTICATED"
NOT_ADMIN_REASON = "CALLER_NOT_ADMIN"


def current_caller() -> str:
    return CALLER.get() or ANONYMOUS


class AdmissionRefused(Exception):
    """A call is not admitted: the gRPC status, a stable reason, and what to do about it."""

    def __init__(self, code: grpc.StatusCode, reason: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message


def _unauthenticated(message: str) -> AdmissionRefused:
    return AdmissionRefused(grpc.StatusCode.UNAUTHENTICATED, UNAUTHENTICATED_REASON, message)


def certificate_identity(auth_context: dict[str, Sequence[bytes]]) -> str:
    """The verified client certificate's identity, exactly as issued: its first DNS SAN, else
    its first URI SAN, else its subject CN ("" when it has none of them).

    Names are compared exactly (with AUTHZ_ADMINS, and by policies), so a name that is not
    exactly a name (empty, surrounding whitespace, a character that is not printable) is refused
    rather than tidied: a certificate for "web-tier " is not one for "web-tier". The names are
    read from the certificate itself (grpc's own peer_dns/peer_uri properties end a name at a
    NUL byte, which would hide one).
    """
    pems = auth_context.get("x509_pem_cert")
    if not pems:
        return ""
    kind, name = _certificate_name(bytes(pems[0]))
    if not kind or (name and name == name.strip() and name.isprintable()):
        return name
    raise _unauthenticated(
        f"the client certificate's {kind} {name!r} is not an exact caller name (it is empty, "
        "has surrounding whitespace or a character that is not printable), so it names no "
        "caller: issue the certificate with the calling service's exact name"
    )


@functools.lru_cache(maxsize=1024)
def _certificate_name(pem: bytes) -> tuple[str, str]:
    """(which name, the name) of a PEM certificate, ("", "") when it has none; a connection's
    certificate is the same for each of its calls, so it is parsed once."""
    try:
        certificate = x509.load_pem_x509_certificate(pem)
        try:
            names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        except x509.ExtensionNotFound:
            names = None
        for kind, name_type in (
            ("DNS subjectAltName", x509.DNSName),
            ("URI subjectAltName", x509.UniformResourceIdentifier),
        ):
            values = names.value.get_values_for_type(name_type) if names else []
            if values:
                return kind, values[0]
        common = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    except ValueError:  # grpc verified it, so this is a name cryptography cannot decode
        return "name", ""
    if common:
        value = common[0].value
        return "subject CN", value if isinstance(value, str) else ""
    return "", ""


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


class CallerAdmission:
    """Admits every call, then hands it to the guard (budgets, request reads: guard.py): a layer
    of the gRPC edge (authz.server.registration), and the caller check of the HTTP listener.

    With caller credentials configured, authz's own services and reflection need them
    (UNAUTHENTICATED saying what to send otherwise) and AdminService is for `admins` only
    (PERMISSION_DENIED); health checking stays open for probes, and a health call with valid
    credentials is the caller's like any other. Without credentials configured every caller is
    anonymous (development mode) and health and reflection calls are open calls.
    """

    def __init__(
        self,
        *,
        tokens: Sequence[CallerToken] = (),
        mutual_tls: bool = False,
        admins: frozenset[str] = frozenset(),
        guard: Guard | None = None,
    ) -> None:
        self.tokens = tuple(tokens)
        self.mutual_tls = mutual_tls
        self.admins = frozenset(admins)
        self.guard = guard or Guard()
        # Worked out once per method or caller rather than on every call (the guard reuses its
        # wrapper for the same method and admission; see Guard.wrap).
        self._services: dict[str, str] = {}
        self._as_callers: dict[str, Admit] = {}
        self._certificate_admissions: dict[str, Admit] = {}

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
        """The caller's identity, or AdmissionRefused(UNAUTHENTICATED) saying what to send."""
        cert_identity = certificate_identity(auth_context) if self.mutual_tls else ""
        if self.mutual_tls and not cert_identity:
            raise _unauthenticated(
                "the client certificate names no identity: issue it with a DNS or URI "
                "subjectAltName (or a subject CN) naming the calling service"
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
        """The caller's identity ("" in development mode), or AdmissionRefused."""
        if not self.authenticates:
            return ""
        identity = self.identify(metadata, auth_context)
        if admin and identity not in self.admins:
            raise AdmissionRefused(
                grpc.StatusCode.PERMISSION_DENIED,
                NOT_ADMIN_REASON,
                f"AdminService is only for administrators, and caller {identity!r} is not one "
                "(AUTHZ_ADMINS lists them)",
            )
        return identity

    def handler_for(
        self, details: grpc.HandlerCallDetails, handler: grpc.RpcMethodHandler
    ) -> grpc.RpcMethodHandler:
        """`handler`, admitting its caller first (an edge layer: authz.server.registration).
        Runs when grpc looks the method up, before the request is read."""
        method: str = details.method  # type: ignore[attr-defined]
        service = self._services.get(method)
        if service is None:  # a method of one of authz's services (its handler was found)
            service = self._services[method] = method.lstrip("/").split("/", 1)[0]
        if not self.authenticates:
            open_call = service == PROBE_SERVICE or service in REFLECTION_SERVICES
            return self.guard.wrap(handler, method, _open if open_call else _anonymous)
        probe, admin = service == PROBE_SERVICE, service == ADMIN_SERVICE
        if self.mutual_tls:
            # The client certificate is known from the connection, so from the call's context.
            admission = self._certificate_admissions.get(method)
            if admission is None:
                admission = self._certificate_admission(method, admin, probe)
                self._certificate_admissions[method] = admission
            return self.guard.wrap(handler, method, admission)
        # Bearer tokens travel in the headers: decide now, before the request is read, so a
        # caller without credentials holds no call slot while it sends (or never sends) it.
        metadata = tuple(details.invocation_metadata or ())  # type: ignore[attr-defined]
        try:
            identity = self.admit(metadata, {}, admin)
        except AdmissionRefused as refusal:
            if probe:
                return self.guard.wrap(handler, method, _open)
            return self.guard.refusing(handler, self._refuser(method, refusal))
        admit = self._as_callers.get(identity)
        if admit is None:  # one per configured caller name
            admit = self._as_callers[identity] = _as_caller(identity)
        return self.guard.wrap(handler, method, admit)

    def _certificate_admission(self, method: str, admin: bool, probe: bool) -> Admit:
        async def admit(context: grpc.aio.ServicerContext) -> bool:
            try:
                identity = self.admit(
                    tuple(context.invocation_metadata() or ()), context.auth_context(), admin
                )
            except AdmissionRefused as refusal:
                if probe:
                    return True
                await self._refuse(method, refusal, context)
            CALLER.set(identity)
            return False

        return admit

    def _refuser(self, method: str, refusal: AdmissionRefused) -> Refuse:
        async def refuse(context: grpc.aio.ServicerContext) -> None:
            await self._refuse(method, refusal, context)

        return refuse

    async def _refuse(
        self, method: str, refusal: AdmissionRefused, context: grpc.aio.ServicerContext
    ) -> NoReturn:
        self.guard.log.refused(method, refusal.reason, context)
        await abort(context, refusal.code, refusal.message, refusal.reason)


def _as_caller(identity: str) -> Admit:
    async def admitted(context: grpc.aio.ServicerContext) -> bool:
        CALLER.set(identity)
        return False

    return admitted


async def _open(context: grpc.aio.ServicerContext) -> bool:
    """An open call: no caller credentials, the open budget."""
    return True


async def _anonymous(context: grpc.aio.ServicerContext) -> bool:
    """Development mode: every caller is anonymous, with the callers' budget."""
    return False
