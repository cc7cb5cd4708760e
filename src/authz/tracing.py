"""OpenTelemetry tracing, optional: a span per gRPC call and HTTP request, with its decision ids.

On when OTEL_EXPORTER_OTLP_ENDPOINT (or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT) is set: spans are
exported over OTLP/HTTP (protobuf) in batches, and the standard OTEL_* variables configure the
rest (OTEL_EXPORTER_OTLP_HEADERS, _TIMEOUT, _CERTIFICATE, OTEL_SERVICE_NAME, which defaults to
"authz" here, OTEL_RESOURCE_ATTRIBUTES, OTEL_TRACES_SAMPLER, OTEL_BSP_*, OTEL_PROPAGATORS). A
caller's W3C ``traceparent`` (gRPC metadata or HTTP header) makes authz's span its child.

The SDK is an optional extra (``pip install 'authz[otel]'``). When traces are asked for and it is
missing, authz refuses to start rather than run without the traces the operator expects.

Each service has a TracerProvider of its own (never the global one), shut down with the service,
which exports what is still queued.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import urlsplit

from authz.config import ConfigError, Settings

log = logging.getLogger("authz.tracing")

SERVICE_NAME = "authz"
DECISION_IDS = "authz.decision_ids"
"""The span attribute listing the decisions a call made (audit log ids: authz audit show ID)."""


class Tracing:
    """Spans of one service, exported over OTLP/HTTP."""

    def __init__(self, provider: Any, endpoint: str) -> None:
        from opentelemetry import trace

        self.provider = provider
        self.endpoint = endpoint
        self.tracer = provider.get_tracer("authz")
        self._server = trace.SpanKind.SERVER

    @classmethod
    def start(cls, settings: Settings) -> Tracing | None:
        """Tracing as Settings.otlp_traces_endpoint asks; None when it is not set; ConfigError
        when it is set and the OpenTelemetry SDK is not installed."""
        endpoint = settings.otlp_traces_endpoint
        if endpoint is None:
            return None
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor
        except ImportError as exc:
            raise ConfigError(
                "OTEL_EXPORTER_OTLP_ENDPOINT is set, so traces are asked for, but the "
                f"OpenTelemetry SDK is not installed ({exc.name or exc} is missing): install "
                "it with pip install 'authz[otel]', or unset OTEL_EXPORTER_OTLP_ENDPOINT and "
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT to run without traces"
            ) from None
        resource = Resource.create()
        if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
            resource = resource.merge(Resource({"service.name": SERVICE_NAME}))
        provider = TracerProvider(resource=resource)
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
        tracing = cls(provider, endpoint)
        log.info("tracing: spans are exported over OTLP/HTTP to %s", _safe_url(endpoint))
        return tracing

    @contextlib.contextmanager
    def span(
        self, name: str, attributes: Mapping[str, Any], carrier: Mapping[str, str]
    ) -> Iterator[Any]:
        """A server span, current while the call runs, the child of the caller's span when its
        `carrier` (headers or metadata) names one."""
        from opentelemetry import propagate

        with self.tracer.start_as_current_span(
            name,
            context=propagate.extract(carrier),
            kind=self._server,
            attributes=attributes,
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            yield span

    @staticmethod
    def finish(span: Any, attributes: Mapping[str, Any], error: str = "") -> None:
        """Attributes learnt during the call; `error` marks the span failed, saying why."""
        from opentelemetry.trace import Status, StatusCode

        span.set_attributes(attributes)
        if error:
            span.set_status(Status(StatusCode.ERROR, error))

    def shutdown(self) -> None:
        """Export what is queued (at most OTEL_BSP_EXPORT_TIMEOUT), then stop."""
        self.provider.shutdown()


def _safe_url(url: str) -> str:
    """The URL without credentials or query, for the log."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"
