"""Observability of one service: metrics, decision log lines and traces, from a few small hooks.

- :class:`RpcObserver`, the outermost layer of the gRPC edge (authz.server.registration): each
  unary-answer call's latency and status (admission, request read and audit commit included),
  in a span when tracing is on; authz.web.observe does the same for HTTP requests.
- :class:`ObservedAudit`, the audit sink the Decider writes to: it passes every batch of
  records to the audit log and, once they are recorded (the decisions are answered only
  then), counts them, logs one line per decision with AUTHZ_LOG_DECISIONS=1, and names them on
  the call's span. Decisions are therefore seen exactly as the audit log has them, secrets
  already redacted (authz.decide redacts session tokens and secret-looking keys).
- :class:`ObservedLogins`: SSO refusals by reason and logins by the salt that verified them.

With AUTHZ_AUDIT_MODE=off (benchmarks only) no record is built, so decisions are neither
counted nor logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import grpc

from authz.audit.record import DecisionRecord
from authz.config import Settings
from authz.decide import AuditSink
from authz.login import LoginRefused, LoginResult, SsoLogins
from authz.logs import FIELDS
from authz.metrics import Metrics
from authz.policy.holder import PolicyHolder
from authz.tracing import DECISION_IDS, Tracing

decision_log = logging.getLogger("authz.decisions")

_MAX_OBSERVED = 4096
SERVER_ERRORS = frozenset(
    {
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)
"""gRPC codes that mark a server span as failed (OpenTelemetry semantic conventions for gRPC:
the other codes are the client's errors)."""


@dataclass
class Call:
    """One call being handled: the decisions it made, and its span when tracing is on."""

    decision_ids: list[str] = field(default_factory=list)
    span: Any = None


CURRENT_CALL: ContextVar[Call | None] = ContextVar("authz_current_call", default=None)
"""The call being handled; each gRPC call and HTTP request runs in a task of its own."""


class CallScope:
    """``with``: the call is CURRENT_CALL, in its span when tracing is on (a class rather than
    a generator: it is entered for every call)."""

    __slots__ = ("_attributes", "_carrier", "_span", "_span_name", "_token", "_tracing")

    def __init__(
        self,
        tracing: Tracing | None,
        span_name: str,
        attributes: Mapping[str, Any],
        carrier: Callable[[], Mapping],
    ) -> None:
        self._tracing = tracing
        self._span_name = span_name
        self._attributes = attributes
        self._carrier = carrier
        self._span: contextlib.AbstractContextManager[Any] | None = None

    def __enter__(self) -> Call:
        call = Call()
        self._token = CURRENT_CALL.set(call)
        if self._tracing is not None:
            try:
                self._span = self._tracing.span(self._span_name, self._attributes, self._carrier())
                call.span = self._span.__enter__()
            except BaseException:
                CURRENT_CALL.reset(self._token)
                raise
        return call

    def __exit__(self, *failure: Any) -> bool | None:
        try:
            return None if self._span is None else self._span.__exit__(*failure)
        finally:
            CURRENT_CALL.reset(self._token)


@dataclass(frozen=True, slots=True)
class DecisionLine:
    """What is counted and logged of one decision: the audit record's redacted fields."""

    decision_id: str
    effect: str
    action: str
    principal: str
    resource: str
    caller: str
    kind: str
    request_id: str
    latency_ms: float

    @classmethod
    def of(cls, record: DecisionRecord) -> DecisionLine:
        return cls(
            decision_id=record.decision_id,
            effect=record.effect,
            action=record.action,
            principal=record.principal_ref,
            resource=record.resource_ref,
            caller=record.caller,
            kind=record.kind,
            request_id=record.request_id,
            latency_ms=record.duration_ms or 0.0,
        )


class ObservedAudit:
    """The Decider's audit sink: records first, then counts, logs and traces what was recorded."""

    def __init__(self, audit: AuditSink, observability: Observability) -> None:
        self.audit = audit
        self.observability = observability
        self.recording = audit.recording

    async def record_many(
        self, recs: Sequence[DecisionRecord], shared: Mapping[str, Any] | None = None
    ) -> None:
        started = time.perf_counter()
        await self.audit.record_many(recs, shared)
        self.observability.metrics.audit_wait.observe(time.perf_counter() - started)
        self.observability.decided(recs)


class ObservedLogins:
    """authz.login.SsoLogins, counting refusals by reason and logins by salt position."""

    def __init__(self, logins: SsoLogins, metrics: Metrics) -> None:
        self.logins = logins
        self.metrics = metrics

    async def exchange(
        self, form: Mapping[str, str], *, request_id: str = "", caller: str = ""
    ) -> LoginResult:
        try:
            result = await self.logins.exchange(form, request_id=request_id, caller=caller)
        except LoginRefused as refusal:
            self.metrics.sso_refusals.labels(refusal.code).inc()
            raise
        self.metrics.sso_logins.labels(str(result.salt_position), result.session.token_kind).inc()
        return result

    def __getattr__(self, name: str) -> Any:
        return getattr(self.logins, name)


class Observability:
    """The metrics, decision log and tracing of one service (built by start_service)."""

    def __init__(
        self, settings: Settings, policies: PolicyHolder, tracing: Tracing | None = None
    ) -> None:
        self.metrics = Metrics()
        self.policies = policies
        self.tracing = tracing
        self.log_decisions = settings.log_decisions
        self.rpc_observer = RpcObserver(self)
        self.metrics.watch(policies=policies)

    @classmethod
    def start(cls, settings: Settings, policies: PolicyHolder) -> Observability:
        """ConfigError when traces are asked for and cannot be had (authz.tracing)."""
        return cls(settings, policies, Tracing.start(settings))

    def audit_sink(self, audit: AuditSink) -> ObservedAudit:
        return ObservedAudit(audit, self)

    def logins(self, logins: SsoLogins) -> ObservedLogins:
        return ObservedLogins(logins, self.metrics)

    def watch(self, **parts: Any) -> None:
        """Parts whose own counters are read at each scrape (authz.metrics.StateCollector)."""
        self.metrics.watch(**parts)

    def decided(self, records: Sequence[DecisionRecord]) -> None:
        """Decisions that were recorded, and are about to be answered (a DecisionLine is made
        of each only for the decision log)."""
        catalogue = self.policies.current.catalogue
        call = CURRENT_CALL.get()
        for record in records:
            self.metrics.count_decision(record.effect, record.action, record.caller, catalogue)
            if call is not None:
                call.decision_ids.append(record.decision_id)
            if self.log_decisions:
                line = DecisionLine.of(record)
                decision_log.info("decision", extra={FIELDS: dataclasses.asdict(line)})

    def call(
        self, span_name: str, attributes: Mapping[str, Any], carrier: Callable[[], Mapping]
    ) -> CallScope:
        """The scope of one call (CURRENT_CALL), in a span when tracing is on; `carrier()`
        gives the headers or metadata that may name the caller's span. End with `finish`."""
        return CallScope(self.tracing, span_name, attributes, carrier)

    @staticmethod
    def finish(call: Call, attributes: dict[str, Any], error: str = "") -> None:
        """What the span learnt by the end of the call: `attributes`, its decision ids, and
        `error` when the call failed on the server's side."""
        if call.span is None:
            return
        if call.decision_ids:
            attributes[DECISION_IDS] = list(call.decision_ids)
        Tracing.finish(call.span, attributes, error)

    async def aclose(self) -> None:
        if self.tracing is not None:
            await asyncio.to_thread(self.tracing.shutdown)


class RpcObserver:
    """The outermost layer of the gRPC edge: every call that answers once (all of authz's
    methods and Health/Check) is timed from its arrival to its answer, counted by status, and
    traced. Streaming answers (Health/Watch, reflection) pass untouched: their length is the
    client's."""

    def __init__(self, observability: Observability) -> None:
        self.observability = observability
        # The observed handler of each handler the inner layer gives, built once: it gives the
        # same handler object for the same method and caller (authz.server.guard).
        self._observed: dict[int, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    def handler_for(
        self, details: grpc.HandlerCallDetails, handler: grpc.RpcMethodHandler
    ) -> grpc.RpcMethodHandler:
        """`handler`, observed (an edge layer: authz.server.registration)."""
        if handler.response_streaming:
            return handler
        known = self._observed.get(id(handler))
        if known is not None and known[0] is handler:
            return known[1]
        method: str = details.method  # type: ignore[attr-defined]
        observed = self._observe(method, handler)
        if len(self._observed) >= _MAX_OBSERVED:
            self._observed.clear()  # handlers that are not reused (refusals): never grow
        self._observed[id(handler)] = (handler, observed)
        return observed

    def _observe(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        behaviour = handler.unary_unary or handler.stream_unary
        observability = self.observability
        service, _, name = method.lstrip("/").partition("/")
        attributes = {"rpc.system": "grpc", "rpc.service": service, "rpc.method": name}
        span_name = f"{service}/{name}"

        async def observed(request: Any, context: grpc.aio.ServicerContext) -> Any:
            started = time.perf_counter()
            code = grpc.StatusCode.OK

            def carrier() -> dict[str, str]:
                metadata = context.invocation_metadata() or ()
                return {key: value for key, value in metadata if isinstance(value, str)}

            with observability.call(span_name, attributes, carrier) as call:
                try:
                    return await behaviour(request, context)
                except asyncio.CancelledError:
                    code = grpc.StatusCode.CANCELLED
                    raise
                except Exception:
                    # An abort has set its code; anything else is answered UNKNOWN by grpc.
                    code = context.code() or grpc.StatusCode.UNKNOWN
                    raise
                finally:
                    observability.metrics.observe_call(
                        "grpc", method, code.name, time.perf_counter() - started
                    )
                    observability.finish(
                        call,
                        {"rpc.grpc.status_code": code.value[0]},
                        code.name if code in SERVER_ERRORS else "",
                    )

        make = (
            grpc.unary_unary_rpc_method_handler
            if handler.unary_unary is not None
            else grpc.stream_unary_rpc_method_handler
        )
        return make(
            observed,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
