"""Issue 12 item 11: request bytes that are not valid protobuf are INVALID_ARGUMENT, everywhere.

Raw bytes go through grpc's generic channel methods (identity serializers) to every method of
every service authz serves, with and without the request-timeout guard (the two paths a request
is read by), from an authenticated admin; the answer is INVALID_ARGUMENT in plain words, nothing
is logged as an error, and nothing is decided.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import grpc
import pytest

from authz.audit.query import query
from authz.config import CallerToken, Settings
from authz.server.errors import error_info
from authz.v1 import authorization_pb2 as pb
from tests.conftest import RecordingHandler, RunningService

ADMIN_TOKEN = "ops-token-for-the-malformed-request-tests"
ADMIN = (("authorization", f"Bearer {ADMIN_TOKEN}"),)

METHODS = {
    "/authz.v1.AuthorizationService/Check": "unary",
    "/authz.v1.AuthorizationService/CheckBatch": "unary",
    "/authz.v1.SessionService/ExchangeSso": "unary",
    "/authz.v1.SessionService/RevokeSession": "unary",
    "/authz.v1.AdminService/RegisterAddon": "unary",
    "/authz.v1.AdminService/DeprovisionAddon": "unary",
    "/authz.v1.AdminService/InvalidateAccess": "unary",
    "/authz.v1.AdminService/ReloadPolicies": "unary",
    "/authz.v1.AdminService/GetPolicyStatus": "unary",
    "/authz.v1.AdminService/QueryDecisions": "server-stream",
    "/grpc.health.v1.Health/Check": "unary",
    "/grpc.health.v1.Health/Watch": "server-stream",
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo": "bidi",
}


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        low, n = n & 0x7F, n >> 7
        out.append(low | (0x80 if n else 0))
        if not n:
            return bytes(out)


def nested_struct(depth: int) -> bytes:
    """CheckRequest.context holding Struct → Value → Struct ... `depth` Structs down."""

    def struct_of(value: bytes) -> bytes:  # Struct{fields: {"k": value}}
        entry = b"\x0a\x01k\x12" + varint(len(value)) + value
        return b"\x0a" + varint(len(entry)) + entry

    struct = struct_of(b"\x08\x00")  # {"k": null}
    for _ in range(depth - 1):
        struct = struct_of(b"\x2a" + varint(len(struct)) + struct)  # Value{struct_value}
    return b"\x22" + varint(len(struct)) + struct  # CheckRequest.context (field 4)


PAYLOADS = {
    "truncated": b"\x0a\x05ab",  # field 1 says 5 bytes follow; 2 do
    "unknown-groups-too-deep": b"\x7b" * 120 + b"\x7c" * 120,  # field 15 groups, 120 deep
}


@pytest.fixture(params=[10.0, 0.0], ids=["request-guard", "no-request-guard"])
def svc(
    request: pytest.FixtureRequest, start: Callable[..., RunningService], base_settings: Settings
) -> RunningService:
    settings = replace(
        base_settings,
        caller_tokens=(CallerToken.of("ops", ADMIN_TOKEN),),
        admins=frozenset({"ops"}),
        request_timeout=request.param,
    )
    return start(settings)


def same(data: bytes) -> bytes:
    return data


def send(channel: grpc.Channel, path: str, payload: bytes) -> grpc.RpcError:
    kind = METHODS.get(path, "unary")
    options: dict[str, Any] = {"request_serializer": same, "response_deserializer": same}
    with pytest.raises(grpc.RpcError) as caught:
        if kind == "unary":
            channel.unary_unary(path, **options)(payload, metadata=ADMIN, timeout=10)
        elif kind == "server-stream":
            list(channel.unary_stream(path, **options)(payload, metadata=ADMIN, timeout=10))
        else:
            stream = channel.stream_stream(path, **options)
            list(stream(iter([payload]), metadata=ADMIN, timeout=10))
    return caught.value


def assert_plainly_invalid(error: grpc.RpcError, path: str) -> None:
    details = error.details() or ""
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (path, error.code(), details)
    assert f"the request message for {path} is not valid protobuf" in details
    for leak in ("<class", "DecodeError", "Error parsing", "Traceback", "upb"):
        assert leak not in details, details
    info = error_info(error)
    assert info is not None and info.reason == "MALFORMED_REQUEST"


@pytest.mark.parametrize("payload", PAYLOADS.values(), ids=PAYLOADS.keys())
def test_undecodable_requests_are_invalid_arguments_on_every_method(
    svc: RunningService, payload: bytes, root_log: RecordingHandler
) -> None:
    for path in METHODS:
        assert_plainly_invalid(send(svc.channel, path, payload), path)
    assert root_log.at_least(40) == []  # nothing logged as an error (grpc logs UNKNOWN ones)
    assert query(svc.service.audit.path, limit=None) == []


def test_a_context_nested_past_the_decoder_limit_is_an_invalid_argument(
    svc: RunningService, root_log: RecordingHandler
) -> None:
    path = "/authz.v1.AuthorizationService/Check"
    assert_plainly_invalid(send(svc.channel, path, nested_struct(60)), path)
    # Nested within the decoder's limit, it decodes, and authz's own limit names the field.
    fields = pb.CheckRequest(
        principal=pb.Principal(type="service", id="x"),
        action="dashboard.view",
        resource=pb.Resource(type="addon", id="r"),
    )
    error = send(svc.channel, path, fields.SerializeToString() + nested_struct(12))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "context.k" in (error.details() or "") and "nested deeper" in (error.details() or "")
    assert root_log.at_least(40) == []
