"""Refusals as gRPC statuses with google.rpc.ErrorInfo, so clients can branch on a stable reason."""

from __future__ import annotations

from collections.abc import Mapping
from typing import NoReturn

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

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


async def abort_unrecorded(context: grpc.aio.ServicerContext, exc: Exception) -> NoReturn:
    """Fail closed: a decision that could not be recorded is not answered."""
    await abort(
        context,
        grpc.StatusCode.UNAVAILABLE,
        f"decision not answered because the audit log could not record it ({exc}); "
        "authz fails closed — retry, and check the audit database's disk and locks",
        "AUDIT_UNAVAILABLE",
    )


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
