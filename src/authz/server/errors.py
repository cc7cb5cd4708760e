"""Domain errors as gRPC statuses (with google.rpc.ErrorInfo, so clients can branch on a stable
reason) and as HTTP statuses: one table (:func:`status_for`), applied once per servicer method
(:func:`grpc_errors`) and per HTTP route (authz.web.heroku), so handlers never pick a status."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple, NoReturn, TypeVar

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from authz.errors import AuthzError, ErrorKind

DOMAIN = "authz"


async def abort(
    context: grpc.aio.ServicerContext,
    code: grpc.StatusCode,
    message: str,
    reason: str = "",
    metadata: Mapping[str, str] | None = None,
) -> NoReturn:
    status = status_pb2.Status(code=code.value[0], message=message)
    if reason:
        detail = any_pb2.Any()
        detail.Pack(
            error_details_pb2.ErrorInfo(reason=reason, domain=DOMAIN, metadata=dict(metadata or {}))
        )
        status.details.append(detail)
    await context.abort_with_status(rpc_status.to_status(status))
    raise AssertionError("unreachable: abort_with_status raises")  # pragma: no cover


def error_info(error: grpc.RpcError) -> error_details_pb2.ErrorInfo | None:
    """Client side: the ErrorInfo of a failed call, if it carries one."""
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    if status is None:
        return None
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info
    return None


# -- domain errors → statuses: the one table -------------------------------------------------


class EdgeStatus(NamedTuple):
    """How one domain error is answered, over gRPC and over HTTP."""

    grpc: grpc.StatusCode
    http: int
    reason: str
    """The google.rpc.ErrorInfo reason (and the HTTP error's "reason"); "" for none."""
    message: str
    metadata: Mapping[str, str]


_BY_KIND: Mapping[ErrorKind, tuple[grpc.StatusCode, int]] = {
    "invalid": (grpc.StatusCode.INVALID_ARGUMENT, 400),
    "refused": (grpc.StatusCode.FAILED_PRECONDITION, 409),
    "not_found": (grpc.StatusCode.NOT_FOUND, 404),
    "unavailable": (grpc.StatusCode.UNAVAILABLE, 503),
}
"""Every domain error by its kind (authz.errors), unless a row below says otherwise."""


def _login_refused(exc: Any) -> tuple[str, Mapping[str, str]]:
    return f"SSO login refused: {exc.message}", {"decision_id": exc.decision_id}


def _unrecorded(exc: Any) -> tuple[str, Mapping[str, str]]:
    return (
        f"decision not answered because the audit log could not record it ({exc}); "
        "authz fails closed — retry, and check the audit database's disk and locks",
        {},
    )


@functools.cache
def _rows() -> tuple[
    tuple[type[AuthzError], ErrorKind | None, grpc.StatusCode, int, str, Any], ...
]:
    """(class, kind or None for any, gRPC status, HTTP status, reason or "" for the error's
    code, message builder or None for the error's message): the first matching row wins."""
    from authz.audit.errors import AuditLogNotFound, AuditTampered, AuditUnavailable
    from authz.login import LoginRefused
    from authz.provisioning import WebhookUnverified

    return (
        # A refused login is a denial; a malformed form stays INVALID_ARGUMENT (its kind).
        (LoginRefused, "refused", grpc.StatusCode.PERMISSION_DENIED, 403, "", _login_refused),
        (LoginRefused, "invalid", grpc.StatusCode.INVALID_ARGUMENT, 400, "", _login_refused),
        # A webhook delivery that does not prove where it came from.
        (WebhookUnverified, None, grpc.StatusCode.UNAUTHENTICATED, 401, "", None),
        # A decision the audit log could not record is not answered (fail closed).
        (
            AuditUnavailable,
            None,
            grpc.StatusCode.UNAVAILABLE,
            503,
            "AUDIT_UNAVAILABLE",
            _unrecorded,
        ),
        (
            AuditLogNotFound,
            None,
            grpc.StatusCode.FAILED_PRECONDITION,
            409,
            "AUDIT_LOG_MISSING",
            None,
        ),
        (AuditTampered, None, grpc.StatusCode.DATA_LOSS, 500, "AUDIT_LOG_TAMPERED", None),
    )


def status_for(exc: AuthzError) -> EdgeStatus:
    """The status, reason, message and metadata a domain error is answered with."""
    for cls, kind, code, http, reason, describe in _rows():
        if isinstance(exc, cls) and kind in (None, exc.kind):
            message, metadata = describe(exc) if describe else (_message(exc), {})
            return EdgeStatus(code, http, reason or exc.code, message, metadata)
    code, http = _BY_KIND.get(exc.kind, _BY_KIND["unavailable"])
    return EdgeStatus(code, http, exc.code, _message(exc), {})


def _message(exc: AuthzError) -> str:
    message = getattr(exc, "message", None)
    return message if isinstance(message, str) and message else str(exc)


Handler = TypeVar("Handler", bound=Callable[..., Any])


def grpc_errors(method: Handler) -> Handler:
    """Apply the table to a servicer method: a domain error it raises becomes its status (with
    ErrorInfo), so handlers only convert, call the use case and convert back."""
    if inspect.isasyncgenfunction(method):

        @functools.wraps(method)
        async def stream(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
            try:
                async for reply in method(self, request, context):
                    yield reply
            except AuthzError as exc:
                await _abort_for(context, exc)

        return stream  # type: ignore[return-value]

    @functools.wraps(method)
    async def unary(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await method(self, request, context)
        except AuthzError as exc:
            await _abort_for(context, exc)

    return unary  # type: ignore[return-value]


async def _abort_for(context: grpc.aio.ServicerContext, exc: AuthzError) -> NoReturn:
    status = status_for(exc)
    await abort(context, status.grpc, status.message, status.reason, status.metadata)
