"""A typed Python client for partner services: ``AuthzClient`` (sync) and ``AsyncAuthzClient``.

::

    from authz.client import AuthzClient, Resource

    with AuthzClient("127.0.0.1:50051", token=os.environ["AUTHZ_CALLER_TOKEN"]) as authz:
        if authz.allowed("dashboard.view", Resource("addon", resource_id), session=token):
            ...

One client holds one long-lived gRPC channel: create it once per process and share it (it is
safe from many threads, or many tasks for the async one); ``close()`` ends it.

- **Deadlines.** Every call has one: ``timeout`` seconds (``DEFAULT_TIMEOUT``, 5 s, more than
  the server's default 2 s wait for Heroku facts) unless the call passes its own.
- **Retries, only where safe.** gRPC retries any call transparently when the request never left
  the client. Beyond that, the reads ``Check``, ``CheckBatch``, ``ListAllowedActions``,
  ``GetPolicyStatus`` and ``QueryDecisions`` are retried on ``UNAVAILABLE`` (at most 3 attempts
  in all, within the call's deadline, with gRPC's retry throttling so a server that is down is
  not hammered): a decision that could not be recorded was not answered, so asking again is
  harmless. Calls that change state or spend something single-use (``ExchangeSso`` spends the form,
  ``RegisterAddon`` the OAuth grant) are never retried: a second attempt could be refused as a
  replay after the first one worked.
- **Credentials.** ``token`` sends ``authorization: Bearer <token>`` with every call;
  ``tls=Tls(...)`` turns on TLS, and mutual TLS with a client certificate. A target that is not
  on this machine needs ``tls`` or an explicit ``plaintext=True`` (e.g. inside a Heroku
  Private Space), so a token is never sent in clear by accident.
- **Typed results and errors.** Calls return frozen dataclasses (``Decision``,
  ``SessionResult``, ``Addon``, ...) and raise subclasses of ``AuthzCallError`` carrying the
  gRPC status, the stable ``google.rpc.ErrorInfo`` reason (``code``, e.g. ``SSO_REPLAYED``) and
  the decision id when the refusal was recorded as one.
- **Fail closed.** ``allowed(...)`` is True only for an ALLOW; any error is False, logged (on
  the ``authz.client`` logger, with the decision id when there is one).
"""

from __future__ import annotations

import ipaddress
import json
import logging
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields, is_dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, TypedDict, Unpack

import grpc
from google.protobuf import struct_pb2, timestamp_pb2
from google.protobuf.json_format import MessageToDict
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from authz.v1 import admin_pb2, admin_pb2_grpc, session_pb2, session_pb2_grpc
from authz.v1 import authorization_pb2 as pb
from authz.v1 import authorization_pb2_grpc as pb_grpc

__all__ = [
    "DEFAULT_TARGET",
    "DEFAULT_TIMEOUT",
    "ActionDecision",
    "Addon",
    "AllowedActions",
    "AsyncAuthzClient",
    "AuthzCallError",
    "AuthzClient",
    "AuthzInvalid",
    "AuthzNotFound",
    "AuthzRefused",
    "AuthzUnauthenticated",
    "AuthzUnavailable",
    "CheckItem",
    "Decision",
    "Deprovisioned",
    "Entity",
    "MatchedRule",
    "PolicyStatus",
    "Principal",
    "RecordedDecision",
    "Registration",
    "Reload",
    "Resource",
    "SessionResult",
    "Tls",
    "as_json",
    "format_decision",
]

log = logging.getLogger("authz.client")

DEFAULT_TARGET = "127.0.0.1:50051"
DEFAULT_TIMEOUT = 5.0
"""Seconds a call may take unless it says otherwise: above the server's AUTHZ_FACTS_DEADLINE
(2 s by default), after which a decision that waits for Heroku is a DENY rather than late."""

RETRIED_READS = (
    ("authz.v1.AuthorizationService", "Check"),
    ("authz.v1.AuthorizationService", "CheckBatch"),
    ("authz.v1.AuthorizationService", "ListAllowedActions"),
    ("authz.v1.AdminService", "GetPolicyStatus"),
    ("authz.v1.AdminService", "QueryDecisions"),
)
"""The calls retried on UNAVAILABLE: reads, which answer the same however often they are asked.
ExchangeSso (single-use form) and RegisterAddon (single-use grant) must never be in this list."""

# gRPC service config ("Retry Design", grpc/proposal A6): the policy applies per method; the
# throttle stops retrying when most recent calls failed, so an outage is not multiplied.
SERVICE_CONFIG = json.dumps(
    {
        "methodConfig": [
            {
                "name": [{"service": s, "method": m} for s, m in RETRIED_READS],
                "retryPolicy": {
                    "maxAttempts": 3,
                    "initialBackoff": "0.1s",
                    "maxBackoff": "1s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ],
        "retryThrottling": {"maxTokens": 10, "tokenRatio": 0.1},
    }
)

Effect = Literal["ALLOW", "DENY"]


# -- what callers send ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Entity:
    """A principal or a resource: ``type``, ``id`` and optional JSON-like ``attributes``."""

    type: str
    id: str
    attributes: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str, attributes: Mapping[str, Any] | None = None) -> Entity:
        """``"addon:ID"`` → Entity("addon", "ID"); ValueError naming the expected shape."""
        kind, sep, ident = text.partition(":")
        if not sep or not kind or not ident:
            raise ValueError(f"expected TYPE:ID, e.g. heroku_user:1234, got {text!r}")
        return cls(kind, ident, dict(attributes or {}))


Principal = Entity
Resource = Entity


@dataclass(frozen=True, slots=True)
class CheckItem:
    """One question of a CheckBatch: an action on a resource, with its own context."""

    action: str
    resource: Entity | str
    context: Mapping[str, Any] | None = None


class CallOptions(TypedDict, total=False):
    timeout: float | None
    """Seconds this call may take (default: the client's ``timeout``)."""


class CheckOptions(CallOptions, total=False):
    """Who asks (``session`` or ``principal``, exactly one), the request's ``context`` and
    ``request_id``."""

    session: str | None
    principal: Entity | str | None
    context: Mapping[str, Any] | None
    request_id: str


class AddonFields(CallOptions, total=False):
    """What Heroku's provisioning call says about an add-on (all optional but the id)."""

    app_id: str
    app_name: str
    plan: str
    region: str
    oauth_grant_code: str
    name: str
    callback_url: str
    options: dict[str, str]


class QueryFilters(CallOptions, total=False):
    """Audit query filters; empty ones do not filter. ``limit`` defaults to 100."""

    since: datetime | float | None
    until: datetime | float | None
    principal: str
    resource: str
    app: str
    action: str
    effect: Effect | None
    rule: str
    limit: int


@dataclass(frozen=True)
class Tls:
    """TLS for the channel: ``ca`` verifies the server (None: the system's roots); ``cert`` and
    ``key`` are this client's certificate chain and key for mutual TLS; ``server_name``
    overrides the name checked in the server's certificate. PEM bytes."""

    ca: bytes | None = None
    cert: bytes | None = None
    key: bytes | None = field(default=None, repr=False)
    server_name: str | None = None

    def __post_init__(self) -> None:
        if (self.cert is None) != (self.key is None):
            raise ValueError("a client certificate and its key go together: give both or neither")

    @classmethod
    def from_files(
        cls,
        ca: str | Path | None = None,
        cert: str | Path | None = None,
        key: str | Path | None = None,
        server_name: str | None = None,
    ) -> Tls:
        def read(path: str | Path | None) -> bytes | None:
            return None if path is None else Path(path).read_bytes()

        return cls(read(ca), read(cert), read(key), server_name)


# -- what calls return ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MatchedRule:
    policy: str
    rule_id: str
    effect: Effect
    reason: str


@dataclass(frozen=True, slots=True)
class Decision:
    """One answer: ``allowed`` is True only for an ALLOW; ``decision_id`` names its audit record."""

    effect: Effect
    allowed: bool
    decision_id: str
    policy_revision: str
    matched_rules: tuple[MatchedRule, ...] = ()
    reasons: tuple[str, ...] = ()
    errors: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ActionDecision:
    """One action considered by ``list_allowed_actions`` and its explained decision."""

    action: str
    decision: Decision


@dataclass(frozen=True, slots=True)
class AllowedActions:
    """What a subject may do on one resource: ``actions`` are the allowed ones, in the order
    considered; ``decisions`` explain every action considered, allowed or not (each with its
    audit record's id)."""

    actions: tuple[str, ...]
    decisions: tuple[ActionDecision, ...]

    def __contains__(self, action: object) -> bool:
        return action in self.actions

    def decision(self, action: str) -> Decision | None:
        """The decision on `action`; None if it was not considered."""
        return next((d.decision for d in self.decisions if d.action == action), None)


@dataclass(frozen=True, slots=True)
class SessionResult:
    """A successful Heroku SSO exchange: the session token to send as ``session=``."""

    session_token: str = field(repr=False)
    expires_at: datetime | None
    principal_id: str
    resource_id: str
    decision_id: str

    @property
    def principal(self) -> str:
        return f"heroku_user:{self.principal_id}"


@dataclass(frozen=True, slots=True)
class Addon:
    """The registry record of one add-on."""

    resource_id: str
    app_id: str
    app_name: str
    plan: str
    region: str
    state: str  # "provisioned" or "deprovisioned"
    created_at: datetime | None
    updated_at: datetime | None
    has_oauth_tokens: bool


@dataclass(frozen=True, slots=True)
class Registration:
    addon: Addon
    changed: bool  # False when the same provisioning was delivered again


@dataclass(frozen=True, slots=True)
class Deprovisioned:
    addon: Addon
    sessions_revoked: int


@dataclass(frozen=True, slots=True)
class Reload:
    reloaded: bool
    policy_revision: str
    errors: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class PolicyStatus:
    policy_revision: str
    loaded_at: datetime | None
    policy_count: int
    rule_count: int
    policy_dir: str
    last_refused_at: datetime | None  # None: no change refused since the server started
    last_refused_errors: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class RecordedDecision:
    """One audit record from QueryDecisions; ``record`` is the whole record as stored."""

    decision_id: str
    time: datetime | None
    effect: Effect
    action: str
    principal: str
    resource: str
    app_id: str
    policy_revision: str
    matched_rules: tuple[MatchedRule, ...]
    record: Mapping[str, Any]


# -- errors --------------------------------------------------------------------------------------


class AuthzCallError(Exception):
    """A call to authz failed. ``status`` is the gRPC status, ``code`` the stable reason from
    ``google.rpc.ErrorInfo`` (the status name when the server gave none), ``decision_id`` the
    audit record of a refusal that was recorded (SSO refusals are)."""

    def __init__(
        self,
        status: grpc.StatusCode,
        code: str,
        message: str,
        decision_id: str = "",
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.decision_id = decision_id
        self.metadata = dict(metadata or {})

    def __str__(self) -> str:
        where = f"{self.status.name} {self.code}" if self.code != self.status.name else self.code
        decided = f" (decision {self.decision_id})" if self.decision_id else ""
        return f"{where}: {self.message}{decided}"


class AuthzInvalid(AuthzCallError):
    """The request is malformed (INVALID_ARGUMENT): the message names the field to fix."""


class AuthzUnauthenticated(AuthzCallError):
    """The server does not know this caller (UNAUTHENTICATED): check the token or certificate."""


class AuthzRefused(AuthzCallError):
    """The server refused (PERMISSION_DENIED, FAILED_PRECONDITION): an SSO login refused, a
    caller that is not an admin, a deprovisioned add-on..."""


class AuthzNotFound(AuthzCallError):
    """What the call names does not exist (NOT_FOUND)."""


class AuthzUnavailable(AuthzCallError):
    """No answer now (UNAVAILABLE, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED): the server is
    unreachable, too slow, busy, or could not record the decision. Retry later."""


_ERROR_CLASSES: dict[grpc.StatusCode, type[AuthzCallError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: AuthzInvalid,
    grpc.StatusCode.OUT_OF_RANGE: AuthzInvalid,
    grpc.StatusCode.UNAUTHENTICATED: AuthzUnauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: AuthzRefused,
    grpc.StatusCode.FAILED_PRECONDITION: AuthzRefused,
    grpc.StatusCode.NOT_FOUND: AuthzNotFound,
    grpc.StatusCode.UNAVAILABLE: AuthzUnavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: AuthzUnavailable,
    grpc.StatusCode.RESOURCE_EXHAUSTED: AuthzUnavailable,
}


def call_error(exc: grpc.RpcError) -> AuthzCallError:
    """The typed error for a failed call (sync or asyncio), with its ErrorInfo when it has one."""
    status: grpc.StatusCode = exc.code()  # type: ignore[attr-defined]
    message: str = exc.details() or status.name  # type: ignore[attr-defined]
    reason, metadata = status.name, {}
    detailed = rpc_status.from_call(exc)  # type: ignore[arg-type]
    for detail in detailed.details if detailed is not None else ():
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            reason, metadata = info.reason or reason, dict(info.metadata)
            break
    cls = _ERROR_CLASSES.get(status, AuthzCallError)
    return cls(status, reason, message, metadata.get("decision_id", ""), metadata)


# -- proto ⇄ dataclasses -------------------------------------------------------------------------


def _struct(values: Mapping[str, Any] | None, what: str) -> struct_pb2.Struct:
    out = struct_pb2.Struct()
    try:
        out.update(dict(values or {}))
    except (TypeError, ValueError) as exc:
        raise ValueError(
            f"{what} must be JSON-like (strings, numbers, booleans, lists, maps): {exc}"
        ) from None
    return out


def _entity(value: Entity | str) -> Entity:
    return Entity.parse(value) if isinstance(value, str) else value


def _principal(value: Entity | str) -> pb.Principal:
    e = _entity(value)
    return pb.Principal(type=e.type, id=e.id, attributes=_struct(e.attributes, "attributes"))


def _resource(value: Entity | str) -> pb.Resource:
    e = _entity(value)
    return pb.Resource(type=e.type, id=e.id, attributes=_struct(e.attributes, "attributes"))


def _subject(options: CheckOptions) -> dict[str, Any]:
    session, principal = options.get("session"), options.get("principal")
    if (session is None) == (principal is None):
        raise ValueError("name the subject: session=TOKEN or principal=Principal(...), not both")
    if session is not None:
        return {"session_token": session}
    return {"principal": _principal(principal)}  # type: ignore[arg-type]


def check_request(action: str, resource: Entity | str, options: CheckOptions) -> pb.CheckRequest:
    return pb.CheckRequest(
        **_subject(options),
        action=action,
        resource=_resource(resource),
        context=_struct(options.get("context"), "context"),
        request_id=options.get("request_id", ""),
    )


def batch_request(items: Sequence[CheckItem], options: CheckOptions) -> pb.CheckBatchRequest:
    return pb.CheckBatchRequest(
        **_subject(options),
        items=[
            pb.CheckItem(
                action=i.action,
                resource=_resource(i.resource),
                context=_struct(i.context, "context"),
            )
            for i in items
        ],
        context=_struct(options.get("context"), "context"),
        request_id=options.get("request_id", ""),
    )


def allowed_actions_request(
    resource: Entity | str, actions: Sequence[str], options: CheckOptions
) -> pb.ListAllowedActionsRequest:
    if isinstance(actions, str):
        raise ValueError("actions is a list of action names, not one string")
    return pb.ListAllowedActionsRequest(
        **_subject(options),
        resource=_resource(resource),
        context=_struct(options.get("context"), "context"),
        actions=list(actions),
        request_id=options.get("request_id", ""),
    )


def allowed_actions_of(reply: pb.ListAllowedActionsResponse) -> AllowedActions:
    decisions = tuple(ActionDecision(d.action, decision_of(d.decision)) for d in reply.decisions)
    # Allowed means an ALLOW decision too: an inconsistent reply hides the action (fail closed).
    allowed = {d.action for d in decisions if d.decision.allowed}
    return AllowedActions(tuple(a for a in reply.actions if a in allowed), decisions)


def _effect(value: int) -> Effect:
    return "ALLOW" if value == pb.EFFECT_ALLOW else "DENY"


def _time(value: timestamp_pb2.Timestamp, present: bool = True) -> datetime | None:
    if not present or (value.seconds == 0 and value.nanos == 0):
        return None
    return value.ToDatetime(tzinfo=UTC)


def _timestamp(value: datetime | float | None) -> timestamp_pb2.Timestamp | None:
    if value is None:
        return None
    out = timestamp_pb2.Timestamp()
    if isinstance(value, datetime):
        out.FromDatetime(value if value.tzinfo else value.replace(tzinfo=UTC))
    else:
        out.FromNanoseconds(int(value * 1e9))
    return out


def _rules(rules: Sequence[pb.MatchedRule]) -> tuple[MatchedRule, ...]:
    return tuple(MatchedRule(r.policy, r.rule_id, _effect(r.effect), r.reason) for r in rules)


def decision_of(reply: pb.CheckResponse) -> Decision:
    effect = _effect(reply.effect)
    return Decision(
        effect=effect,
        # Both must say so: a reply that is inconsistent is a DENY.
        allowed=reply.allowed and effect == "ALLOW",
        decision_id=reply.decision_id,
        policy_revision=reply.policy_revision,
        matched_rules=_rules(reply.matched_rules),
        reasons=tuple(reply.reasons),
        errors=tuple(reply.errors),
    )


def _addon(message: admin_pb2.Addon) -> Addon:
    return Addon(
        resource_id=message.resource_id,
        app_id=message.app_id,
        app_name=message.app_name,
        plan=message.plan,
        region=message.region,
        state=message.state,
        created_at=_time(message.created_at, message.HasField("created_at")),
        updated_at=_time(message.updated_at, message.HasField("updated_at")),
        has_oauth_tokens=message.has_oauth_tokens,
    )


def _session(reply: session_pb2.ExchangeSsoResponse) -> SessionResult:
    return SessionResult(
        session_token=reply.session_token,
        expires_at=_time(reply.expires_at, reply.HasField("expires_at")),
        principal_id=reply.principal_id,
        resource_id=reply.resource_id,
        decision_id=reply.decision_id,
    )


def _status(reply: admin_pb2.GetPolicyStatusResponse) -> PolicyStatus:
    return PolicyStatus(
        policy_revision=reply.policy_revision,
        loaded_at=_time(reply.loaded_at, reply.HasField("loaded_at")),
        policy_count=reply.policy_count,
        rule_count=reply.rule_count,
        policy_dir=reply.policy_dir,
        last_refused_at=_time(reply.last_refused_at, reply.HasField("last_refused_at")),
        last_refused_errors=tuple(reply.last_refused_errors),
    )


def _recorded(reply: admin_pb2.QueryDecisionsResponse) -> RecordedDecision:
    return RecordedDecision(
        decision_id=reply.decision_id,
        time=_time(reply.time, reply.HasField("time")),
        effect=_effect(reply.effect),
        action=reply.action,
        principal=reply.principal,
        resource=reply.resource,
        app_id=reply.app_id,
        policy_revision=reply.policy_revision,
        matched_rules=_rules(reply.matched_rules),
        record=MessageToDict(reply.record),
    )


def _register_request(resource_id: str, fields: AddonFields) -> admin_pb2.RegisterAddonRequest:
    return admin_pb2.RegisterAddonRequest(
        resource_id=resource_id,
        app_id=fields.get("app_id", ""),
        app_name=fields.get("app_name", ""),
        plan=fields.get("plan", ""),
        region=fields.get("region", ""),
        oauth_grant_code=fields.get("oauth_grant_code", ""),
        name=fields.get("name", ""),
        callback_url=fields.get("callback_url", ""),
        options=fields.get("options", {}),
    )


def _query_request(filters: QueryFilters) -> admin_pb2.QueryDecisionsRequest:
    effects = {None: pb.EFFECT_UNSPECIFIED, "ALLOW": pb.EFFECT_ALLOW, "DENY": pb.EFFECT_DENY}
    effect = filters.get("effect")
    if effect not in effects:
        raise ValueError(f"effect must be 'ALLOW', 'DENY' or None, not {effect!r}")
    return admin_pb2.QueryDecisionsRequest(
        since=_timestamp(filters.get("since")),
        until=_timestamp(filters.get("until")),
        principal=filters.get("principal", ""),
        resource=filters.get("resource", ""),
        app=filters.get("app", ""),
        action=filters.get("action", ""),
        effect=effects[effect],
        rule=filters.get("rule", ""),
        limit=filters.get("limit", 100),
    )


# -- the channel ---------------------------------------------------------------------------------


def is_local_target(target: str) -> bool:
    """Whether a gRPC target names this machine (a loopback address, localhost, a unix socket)."""
    if target.startswith(("unix:", "unix-abstract:")):
        return True
    for prefix in ("dns:///", "ipv4:", "ipv6:"):
        target = target.removeprefix(prefix)
    host = target.rsplit(":", 1)[0] if target.count(":") == 1 or "]" in target else target
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class _Channel:
    """How to open the channel and what every call carries; checked once, at construction."""

    target: str
    credentials: grpc.ChannelCredentials | None
    options: tuple[tuple[str, Any], ...]
    metadata: tuple[tuple[str, str], ...] = field(repr=False)
    timeout: float

    @classmethod
    def plan(
        cls,
        target: str,
        token: str | None,
        tls: Tls | None,
        plaintext: bool,
        timeout: float,
        options: Sequence[tuple[str, Any]],
    ) -> _Channel:
        if timeout <= 0:
            raise ValueError("timeout must be more than 0 seconds")
        if tls is None and not plaintext and not is_local_target(target):
            raise ValueError(
                f"{target} is not on this machine: pass tls=Tls(...) to use TLS, or "
                "plaintext=True if the network between you is private (a token would travel "
                "in clear)"
            )
        if token is not None and (not token or not token.isascii() or not token.isprintable()):
            raise ValueError("the bearer token must be printable ASCII (as issued)")
        all_options: list[tuple[str, Any]] = [
            ("grpc.enable_retries", 1),
            ("grpc.service_config", SERVICE_CONFIG),
        ]
        credentials = None
        if tls is not None:
            credentials = grpc.ssl_channel_credentials(tls.ca, tls.key, tls.cert)
            if tls.server_name:
                all_options.append(("grpc.ssl_target_name_override", tls.server_name))
        metadata = (("authorization", f"Bearer {token}"),) if token else ()
        return cls(target, credentials, (*all_options, *options), metadata, timeout)

    def sync(self) -> grpc.Channel:
        if self.credentials is None:
            return grpc.insecure_channel(self.target, options=self.options)
        return grpc.secure_channel(self.target, self.credentials, options=self.options)

    def aio(self) -> grpc.aio.Channel:
        if self.credentials is None:
            return grpc.aio.insecure_channel(self.target, options=self.options)
        return grpc.aio.secure_channel(self.target, self.credentials, options=self.options)


def _fail_closed(action: str, resource: Entity | str, exc: BaseException) -> None:
    """Log why `allowed` answers False for an error (never the token: it is not in `exc`)."""
    what = resource if isinstance(resource, str) else f"{resource.type}:{resource.id}"
    log.warning("%s on %s not allowed, the check failed (fail closed): %s", action, what, exc)


class _Client:
    """What both clients share: the channel plan, the stubs, the deadline of a call."""

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        token: str | None = None,
        tls: Tls | None = None,
        plaintext: bool = False,
        timeout: float = DEFAULT_TIMEOUT,
        options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        self._plan = _Channel.plan(target, token, tls, plaintext, timeout, options)
        self._channel = self._open()
        self._authz = pb_grpc.AuthorizationServiceStub(self._channel)
        self._sessions = session_pb2_grpc.SessionServiceStub(self._channel)
        self._admin = admin_pb2_grpc.AdminServiceStub(self._channel)

    def _open(self) -> Any:
        raise NotImplementedError

    @property
    def target(self) -> str:
        return self._plan.target

    def _options(self, options: CallOptions) -> dict[str, Any]:
        return {
            "timeout": options.get("timeout") or self._plan.timeout,
            "metadata": self._plan.metadata,
        }


class AuthzClient(_Client):
    """The synchronous client; see the module documentation. Use it as a context manager or
    call ``close()``."""

    def _open(self) -> grpc.Channel:
        return self._plan.sync()

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> AuthzClient:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _call(self, method: Any, request: Any, options: CallOptions) -> Any:
        try:
            return method(request, **self._options(options))
        except grpc.RpcError as exc:
            raise call_error(exc) from None

    # AuthorizationService

    def check(
        self, action: str, resource: Entity | str, **options: Unpack[CheckOptions]
    ) -> Decision:
        """One decision for a session (``session=``) or a named principal (``principal=``)."""
        request = check_request(action, resource, options)
        return decision_of(self._call(self._authz.Check, request, options))

    def allowed(self, action: str, resource: Entity | str, **options: Unpack[CheckOptions]) -> bool:
        """True only when authz answers ALLOW; False for a DENY and for any error (logged)."""
        try:
            return self.check(action, resource, **options).allowed
        except Exception as exc:  # fail closed, whatever went wrong
            _fail_closed(action, resource, exc)
            return False

    def check_batch(
        self, items: Sequence[CheckItem], **options: Unpack[CheckOptions]
    ) -> tuple[Decision, ...]:
        """Up to 100 decisions for one subject, in the order of ``items``."""
        reply = self._call(self._authz.CheckBatch, batch_request(items, options), options)
        return tuple(decision_of(r) for r in reply.results)

    def list_allowed_actions(
        self, resource: Entity | str, actions: Sequence[str] = (), **options: Unpack[CheckOptions]
    ) -> AllowedActions:
        """Which of `actions` (up to 100; empty: the policy set's whole catalogue) the subject may
        do on `resource`, in one call; every action considered is decided and audited as a
        Check. A dashboard asks this before it draws its menu."""
        request = allowed_actions_request(resource, actions, options)
        return allowed_actions_of(self._call(self._authz.ListAllowedActions, request, options))

    # SessionService

    def exchange_sso(
        self, form: Mapping[str, str], *, request_id: str = "", **options: Unpack[CallOptions]
    ) -> SessionResult:
        """Exchange Heroku's SSO form fields, unchanged, for a session (never retried)."""
        request = session_pb2.ExchangeSsoRequest(form=dict(form), request_id=request_id)
        return _session(self._call(self._sessions.ExchangeSso, request, options))

    def revoke_session(self, session_token: str, **options: Unpack[CallOptions]) -> bool:
        request = session_pb2.RevokeSessionRequest(session_token=session_token)
        return bool(self._call(self._sessions.RevokeSession, request, options).revoked)

    # AdminService (for AUTHZ_ADMINS callers)

    def register_addon(self, resource_id: str, **fields: Unpack[AddonFields]) -> Registration:
        """Record a provisioned add-on (idempotent; never retried: its grant works once)."""
        reply = self._call(
            self._admin.RegisterAddon, _register_request(resource_id, fields), fields
        )
        return Registration(_addon(reply.addon), reply.changed)

    def deprovision_addon(self, resource_id: str, **options: Unpack[CallOptions]) -> Deprovisioned:
        request = admin_pb2.DeprovisionAddonRequest(resource_id=resource_id)
        reply = self._call(self._admin.DeprovisionAddon, request, options)
        return Deprovisioned(_addon(reply.addon), reply.sessions_revoked)

    def invalidate_access(self, app_id: str, **options: Unpack[CallOptions]) -> bool:
        request = admin_pb2.InvalidateAccessRequest(app_id=app_id)
        return bool(self._call(self._admin.InvalidateAccess, request, options).dropped)

    def reload_policies(self, **options: Unpack[CallOptions]) -> Reload:
        reply = self._call(self._admin.ReloadPolicies, admin_pb2.ReloadPoliciesRequest(), options)
        return Reload(reply.reloaded, reply.policy_revision, tuple(reply.errors))

    def policy_status(self, **options: Unpack[CallOptions]) -> PolicyStatus:
        request = admin_pb2.GetPolicyStatusRequest()
        return _status(self._call(self._admin.GetPolicyStatus, request, options))

    def query_decisions(self, **filters: Unpack[QueryFilters]) -> Iterator[RecordedDecision]:
        """Audit records, newest first, as the server streams them."""
        stream = self._call(self._admin.QueryDecisions, _query_request(filters), filters)
        try:
            for reply in stream:
                yield _recorded(reply)
        except grpc.RpcError as exc:
            raise call_error(exc) from None
        finally:
            stream.cancel()


class AsyncAuthzClient(_Client):
    """The asyncio client: the methods of ``AuthzClient``, awaited. Use ``async with`` or
    ``await close()``; create it inside the event loop that uses it."""

    def _open(self) -> grpc.aio.Channel:
        return self._plan.aio()

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> AsyncAuthzClient:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def _call(self, method: Any, request: Any, options: CallOptions) -> Any:
        try:
            return await method(request, **self._options(options))
        except grpc.RpcError as exc:
            raise call_error(exc) from None

    async def check(
        self, action: str, resource: Entity | str, **options: Unpack[CheckOptions]
    ) -> Decision:
        request = check_request(action, resource, options)
        return decision_of(await self._call(self._authz.Check, request, options))

    async def allowed(
        self, action: str, resource: Entity | str, **options: Unpack[CheckOptions]
    ) -> bool:
        try:
            decision = await self.check(action, resource, **options)
        except Exception as exc:  # fail closed, whatever went wrong
            _fail_closed(action, resource, exc)
            return False
        return decision.allowed

    async def check_batch(
        self, items: Sequence[CheckItem], **options: Unpack[CheckOptions]
    ) -> tuple[Decision, ...]:
        reply = await self._call(self._authz.CheckBatch, batch_request(items, options), options)
        return tuple(decision_of(r) for r in reply.results)

    async def list_allowed_actions(
        self, resource: Entity | str, actions: Sequence[str] = (), **options: Unpack[CheckOptions]
    ) -> AllowedActions:
        request = allowed_actions_request(resource, actions, options)
        reply = await self._call(self._authz.ListAllowedActions, request, options)
        return allowed_actions_of(reply)

    async def exchange_sso(
        self, form: Mapping[str, str], *, request_id: str = "", **options: Unpack[CallOptions]
    ) -> SessionResult:
        request = session_pb2.ExchangeSsoRequest(form=dict(form), request_id=request_id)
        return _session(await self._call(self._sessions.ExchangeSso, request, options))

    async def revoke_session(self, session_token: str, **options: Unpack[CallOptions]) -> bool:
        request = session_pb2.RevokeSessionRequest(session_token=session_token)
        return bool((await self._call(self._sessions.RevokeSession, request, options)).revoked)

    async def register_addon(self, resource_id: str, **fields: Unpack[AddonFields]) -> Registration:
        request = _register_request(resource_id, fields)
        reply = await self._call(self._admin.RegisterAddon, request, fields)
        return Registration(_addon(reply.addon), reply.changed)

    async def deprovision_addon(
        self, resource_id: str, **options: Unpack[CallOptions]
    ) -> Deprovisioned:
        request = admin_pb2.DeprovisionAddonRequest(resource_id=resource_id)
        reply = await self._call(self._admin.DeprovisionAddon, request, options)
        return Deprovisioned(_addon(reply.addon), reply.sessions_revoked)

    async def invalidate_access(self, app_id: str, **options: Unpack[CallOptions]) -> bool:
        request = admin_pb2.InvalidateAccessRequest(app_id=app_id)
        return bool((await self._call(self._admin.InvalidateAccess, request, options)).dropped)

    async def reload_policies(self, **options: Unpack[CallOptions]) -> Reload:
        request = admin_pb2.ReloadPoliciesRequest()
        reply = await self._call(self._admin.ReloadPolicies, request, options)
        return Reload(reply.reloaded, reply.policy_revision, tuple(reply.errors))

    async def policy_status(self, **options: Unpack[CallOptions]) -> PolicyStatus:
        request = admin_pb2.GetPolicyStatusRequest()
        return _status(await self._call(self._admin.GetPolicyStatus, request, options))

    async def query_decisions(
        self, **filters: Unpack[QueryFilters]
    ) -> AsyncIterator[RecordedDecision]:
        stream = self._admin.QueryDecisions(_query_request(filters), **self._options(filters))
        try:
            async for reply in stream:
                yield _recorded(reply)
        except grpc.RpcError as exc:
            raise call_error(exc) from None
        finally:
            stream.cancel()


# -- showing results -----------------------------------------------------------------------------


def format_decision(decision: Decision) -> str:
    """A decision as a few lines: the effect, its id and revision, the rules, reasons, errors."""
    lines = [
        f"{decision.effect}  decision {decision.decision_id}"
        f"  policy revision {decision.policy_revision}"
    ]
    for rule in decision.matched_rules:
        lines.append(
            f"  matched {rule.effect.lower():5} {rule.policy}/{rule.rule_id}: {rule.reason}"
        )
    lines.extend(f"  reason: {reason}" for reason in decision.reasons)
    lines.extend(f"  error: {error}" for error in decision.errors)
    return "\n".join(lines)


def as_json(value: Any) -> Any:
    """A result as plain JSON values: dataclasses as objects (a session token included: the
    caller asked for it), times as RFC 3339 UTC strings."""
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: as_json(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
    if isinstance(value, Mapping):
        return {str(k): as_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [as_json(v) for v in value]
    return value
