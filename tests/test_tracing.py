"""Issue 16, day two: OpenTelemetry tracing (OTEL_EXPORTER_OTLP_ENDPOINT), a span per RPC.

Spans are received by a real OTLP/HTTP receiver run by the test (POST /v1/traces, protobuf,
decoded with opentelemetry-proto), from an in-process service and from `authz serve`.
"""

from __future__ import annotations

import gzip
import secrets
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from authz.config import ConfigError, Settings
from authz.server.app import start_service
from authz.v1 import authorization_pb2 as pb
from authz.v1 import authorization_pb2_grpc as pb_grpc
from tests.conftest import ROOT, LoopThread
from tests.served import clean_env, serve_command, served

CHECK = "authz.v1.AuthorizationService/Check"
BATCH = "authz.v1.AuthorizationService/CheckBatch"


@dataclass
class Received:
    """A span as the receiver decoded it, with its resource's attributes."""

    span: Span
    resource: dict[str, Any]

    @property
    def attributes(self) -> dict[str, Any]:
        return {a.key: _value(a.value) for a in self.span.attributes}


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [_value(v) for v in value.array_value.values]
    return getattr(value, kind) if kind else None


class Receiver(ThreadingHTTPServer):
    """An OTLP/HTTP trace receiver on 127.0.0.1 (https://opentelemetry.io/docs/specs/otlp/)."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _ReceiverHandler)
        self.spans: list[Received] = []
        self.paths: list[str] = []
        self.lock = threading.Lock()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def named(self, name: str) -> list[Received]:
        with self.lock:
            return [r for r in self.spans if r.span.name == name]


class _ReceiverHandler(BaseHTTPRequestHandler):
    server: Receiver

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        if self.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        if self.path != "/v1/traces" or self.headers.get("Content-Type") != (
            "application/x-protobuf"
        ):
            self.send_error(404)
            return
        request = ExportTraceServiceRequest.FromString(body)
        with self.server.lock:
            self.server.paths.append(self.path)
            for resource_spans in request.resource_spans:
                resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
                for scope_spans in resource_spans.scope_spans:
                    self.server.spans.extend(Received(s, resource) for s in scope_spans.spans)
        answer = ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def check_request(principal: str = "svc-web") -> pb.CheckRequest:
    return pb.CheckRequest(
        principal=pb.Principal(type="service", id=principal),
        action="billing.update",
        resource=pb.Resource(type="account", id="acct-1"),
    )


def test_a_span_per_rpc_carries_its_decision_ids(
    receiver: Receiver, loop_thread: LoopThread, base_settings: Settings
) -> None:
    settings = replace(
        base_settings,
        http_listen="127.0.0.1:0",
        otlp_traces_endpoint=f"{receiver.base_url}/v1/traces",
    )
    service = loop_thread.run(start_service(settings))
    trace_id, parent_id = secrets.token_hex(16), secrets.token_hex(8)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{service.port}") as channel:
            stub = pb_grpc.AuthorizationServiceStub(channel)
            traceparent = ("traceparent", f"00-{trace_id}-{parent_id}-01")
            single = stub.Check(check_request(), metadata=[traceparent])
            batch = stub.CheckBatch(
                pb.CheckBatchRequest(
                    principal=pb.Principal(type="service", id="svc-web"),
                    items=[
                        pb.CheckItem(action=a, resource=pb.Resource(type="account", id="1"))
                        for a in ("billing.update", "account.deactivate")
                    ],
                )
            )
            with pytest.raises(grpc.RpcError):
                stub.Check(pb.CheckRequest(action="billing.update"))  # no principal
        assert service.http is not None
        assert httpx.get(f"{service.http.url}/healthz", timeout=10).status_code == 200
    finally:
        loop_thread.run(service.stop(grace=1))  # exports what is queued

    [check, refused] = receiver.named(CHECK)
    assert check.span.kind == Span.SpanKind.SPAN_KIND_SERVER
    assert check.attributes["authz.decision_ids"] == [single.decision_id]
    assert check.attributes["rpc.system"] == "grpc"
    assert check.attributes["rpc.grpc.status_code"] == 0
    assert check.span.trace_id.hex() == trace_id  # the caller's trace
    assert check.span.parent_span_id.hex() == parent_id
    assert check.resource["service.name"] == "authz"
    # A refused call has a span without decisions; INVALID_ARGUMENT is the client's error.
    assert "authz.decision_ids" not in refused.attributes
    assert refused.attributes["rpc.grpc.status_code"] == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert refused.span.status.code == Status.StatusCode.STATUS_CODE_UNSET
    [batch_span] = receiver.named(BATCH)
    assert batch_span.attributes["authz.decision_ids"] == [r.decision_id for r in batch.results]
    [http] = receiver.named("GET /healthz")
    assert http.attributes["http.route"] == "/healthz"
    assert http.attributes["http.response.status_code"] == 200
    assert http.attributes["authz.request_id"]  # made up for the request, and echoed
    assert set(receiver.paths) == {"/v1/traces"}


def test_authz_serve_traces_with_the_standard_variables(receiver: Receiver, tmp_path: Path) -> None:
    env = clean_env(
        OTEL_EXPORTER_OTLP_ENDPOINT=receiver.base_url,  # the signal's path is appended
        OTEL_SERVICE_NAME="authz-staging",
        AUTHZ_LOG_FORMAT="json",
    )
    with served(tmp_path / "data", env) as server:
        with grpc.insecure_channel(server.address) as channel:
            answer = pb_grpc.AuthorizationServiceStub(channel).Check(check_request())
        log = server.stop()
    [span] = receiver.named(CHECK)
    assert span.attributes["authz.decision_ids"] == [answer.decision_id]
    assert span.resource["service.name"] == "authz-staging"
    assert f"spans are exported over OTLP/HTTP to {receiver.base_url}/v1/traces" in log


BLOCK_SDK = (
    "import sys; sys.modules['opentelemetry.sdk'] = None; "  # as if authz[otel] were missing
    "from authz.cli import main; sys.exit(main(sys.argv[1:]))"
)


def test_without_the_sdk_asking_for_traces_refuses_to_start(tmp_path: Path) -> None:
    command = [sys.executable, "-c", BLOCK_SDK, *serve_command(tmp_path, http=False)[3:]]
    env = clean_env(OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:4318")
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=env, timeout=60)
    assert result.returncode == 2, result.stderr
    assert "OTEL_EXPORTER_OTLP_ENDPOINT is set, so traces are asked for" in result.stderr
    assert "pip install 'authz[otel]'" in result.stderr
    assert "Traceback" not in result.stderr
    # Without the variable the SDK is not needed.
    with served(tmp_path / "data", clean_env()) as server:
        server.stop()


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "127.0.0.1:4318"}, "OTEL_EXPORTER_OTLP_ENDPOINT"),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "grpc://collector:4317"}, "OTEL_EXPORTER_OTLP_ENDPOINT"),
        (
            {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://:4318/v1/traces"},
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        ),
        ({"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, "OTEL_EXPORTER_OTLP_PROTOCOL"),
        ({"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/json"}, "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"),
    ],
)
def test_otlp_settings_are_checked(env: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        Settings.from_env(env)


def test_otlp_endpoints_resolve_as_the_specification_says() -> None:
    def endpoint(**env: str) -> str | None:
        return Settings.from_env(env).otlp_traces_endpoint

    assert endpoint() is None
    base = "https://collector.internal:4318"
    assert endpoint(OTEL_EXPORTER_OTLP_ENDPOINT=base) == f"{base}/v1/traces"
    assert endpoint(OTEL_EXPORTER_OTLP_ENDPOINT=f"{base}/") == f"{base}/v1/traces"
    signal = "http://127.0.0.1:9999/custom"
    assert endpoint(OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=signal) == signal  # used as is
    both = {"OTEL_EXPORTER_OTLP_ENDPOINT": base, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": signal}
    assert endpoint(**both) == signal
    assert endpoint(OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf", OTEL_EXPORTER_OTLP_ENDPOINT=base)
