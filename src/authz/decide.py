"""The single decision path: resolve facts → evaluate → record → answer.

Every decision (Check, each CheckBatch item, each SSO login) goes through `Decider`, so every one
is evaluated the same way and recorded exactly once before it is answered.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import marshal
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar

from authz.audit.log import NopAuditLog
from authz.audit.record import DecisionRecord, MatchedRule, Stage, refusal_code_of
from authz.clock import Clock, rfc3339, system_clock
from authz.facts.access import AccessCache, app_permissions
from authz.facts.addons import AddonRegistry
from authz.facts.heroku import AccessList
from authz.facts.sessions import TOKEN_PREFIX, SessionStore
from authz.ids import new_decision_id, new_decision_ids
from authz.offload import offload
from authz.policy import inputs as policy_inputs
from authz.policy.engine import evaluate_many
from authz.policy.holder import PolicyHolder
from authz.policy.inputs import ADDON, HEROKU_USER, NO_APP
from authz.policy.model import Decision, Effect

log = logging.getLogger("authz.decide")
T = TypeVar("T")

_SECRET_KEY = re.compile(r"token|secret|password|passwd|salt|authorization|cookie", re.I)
REDACTED = "[redacted]"
# A session token (authz.facts.sessions: the prefix and token_urlsafe(32), 43 characters); any
# run of 16 or more token characters after the prefix is taken for one, truncated copies too.
_SESSION_TOKEN = re.compile(re.escape(TOKEN_PREFIX) + r"[A-Za-z0-9_-]{16,}")
_PREFIX_BYTES = TOKEN_PREFIX.encode()


class AuditSink(Protocol):
    """Where decisions are recorded (authz.audit.AuditLog, or NopAuditLog when audit is off)."""

    recording: bool
    """False when nothing is recorded: then no record is built at all."""

    async def record_many(
        self, recs: Sequence[DecisionRecord], shared: Mapping[str, Any] | None = None
    ) -> None:
        """`shared`: what every record has in common, stored once ("input.principal": …)."""


@dataclass(frozen=True, slots=True)
class Entity:
    """A principal or resource as the caller named it."""

    type: str
    id: str
    attributes: Mapping[str, Any] = field(default_factory=dict)

    @property
    def ref(self) -> str:
        return f"{self.type}:{self.id}"


@dataclass(frozen=True, slots=True)
class Item:
    action: str
    resource: Entity
    context: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Outcome:
    decision_id: str
    decision: Decision


@dataclass(frozen=True, slots=True)
class Subject:
    """Who asks, after authentication facts were resolved. Only this module builds `auth`."""

    principal: dict[str, Any]
    display: dict[str, Any]
    # Set when a session token did not resolve: every item is denied for this reason.
    refusal: str = ""

    @property
    def ref(self) -> str:
        return f"{self.principal.get('type', '')}:{self.principal.get('id', '')}"


@dataclass
class FactSources:
    """The fact sources a decision may use; any may be absent (then its facts say unavailable)."""

    sessions: SessionStore | None = None
    addons: AddonRegistry | None = None
    access: AccessCache | None = None
    deadline: float = 2.0
    # True when the stores are a network away (PostgreSQL): their calls then run in a worker
    # thread so the event loop keeps serving. SQLite calls are microseconds and stay inline.
    offload: bool = False

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        if self.offload:
            return await offload(fn, *args)
        return fn(*args)


def direct_subject(principal: Entity) -> Subject:
    """A principal named directly by the caller: attributes are data, and never an SSO login."""
    return Subject(
        policy_inputs.principal_input(principal.type, principal.id, principal.attributes), {}
    )


def access_fact(
    access: AccessList | None, user_id: str, now: float, error: str = "", *, app_id: str = ""
) -> dict[str, Any]:
    """The access fact policies see, for Heroku's access list of an app (None: unavailable,
    with `error`). The shape is authz.policy.inputs'; this maps the list onto it."""
    if access is None:
        return policy_inputs.access_unavailable(error, app_id=app_id, user_id=user_id)
    member = access.members.get(user_id) if user_id else None
    return policy_inputs.access_input(
        app_id=access.app_id,
        user_id=user_id,
        roles=[str(r) for r in member.roles] if member is not None else [],
        permissions=app_permissions(access, member),
        team_role=(member.team_role or "") if member is not None else "",
        fetched_at=rfc3339(access.fetched_at),
        age_seconds=now - access.fetched_at,
    )


def sso_subject(
    user_id: str,
    resource_id: str,
    session_id: str,
    issued_at: float,
    email: str,
    *,
    token_kind: str,
) -> Subject:
    """A Heroku user after a verified SSO login. ``token_kind`` is the token that verified it
    (``sha256``; ``sha1`` in the legacy mode; ``unknown`` for older sessions): policies see it as
    ``principal.auth.token_kind``, and the audit log records it with the input."""
    auth = policy_inputs.auth_input(
        policy_inputs.HEROKU_SSO,
        session_id=session_id,
        resource_id=resource_id,
        issued_at=rfc3339(issued_at),
        token_kind=token_kind,
    )
    return Subject(
        policy_inputs.principal_input(HEROKU_USER, user_id, None, auth),
        {"email": email} if email else {},
    )


class Decider:
    def __init__(
        self,
        policies: PolicyHolder,
        *,
        facts: FactSources | None = None,
        audit: AuditSink | None = None,
        clock: Clock = system_clock,
    ) -> None:
        self.policies = policies
        self.facts = facts or FactSources()
        self.audit: AuditSink = audit if audit is not None else NopAuditLog()
        self.clock = clock

    # -- subjects -------------------------------------------------------------------------------

    async def subject_from_session(self, token: str) -> Subject:
        sessions = self.facts.sessions
        session = await self.facts.call(sessions.resolve, token) if sessions is not None else None
        if session is None:
            return Subject(
                policy_inputs.principal_input(HEROKU_USER, ""),
                {},
                refusal="SESSION_UNKNOWN: the session token is unknown, expired or revoked",
            )
        return sso_subject(
            session.user_id,
            session.resource_id,
            session.session_id,
            session.issued_at,
            session.email,
            token_kind=session.token_kind,
        )

    # -- decisions ------------------------------------------------------------------------------

    async def check(
        self,
        subject: Subject,
        items: list[Item],
        *,
        context: Mapping[str, Any] | None = None,
        request_id: str = "",
        caller: str = "",
        kind: str = "check",
        interface: str = "grpc",
    ) -> list[Outcome]:
        """Decide every item for one subject; facts are gathered once per resource app.
        `interface` names the API the request came through ("grpc", "authzen") in the audit log."""
        started = time.perf_counter()
        policy_set = self.policies.current
        now = self.clock()
        now_dt = datetime.fromtimestamp(now, tz=UTC)
        base_context = dict(context or {})
        resources = await self.facts.call(self._resource_inputs, [i.resource for i in items])
        apps = _apps_to_ask(subject, resources)
        access = await self._access_facts(subject, apps, now) if apps else {}
        # The fact of resources whose app's list was not asked for (no add-on, not a Heroku
        # user...); not built when every resource has its app's list.
        no_access = (
            access_fact(None, subject.principal.get("id", ""), now, NO_APP)
            if len(access) < len(resources)
            else None
        )
        caller_fact = policy_inputs.caller_input(caller)
        outcomes: list[Outcome] = []
        recording = self.audit.recording
        recorded: list[tuple[Outcome, dict[str, Any], Mapping[str, Any]]] = []
        decision_ids = new_decision_ids(len(items))
        each_inputs = [
            policy_inputs.evaluation_input(
                action=item.action,
                principal=subject.principal,
                resource=resource,
                access=access.get(resource["addon"]["app_id"], no_access),
                caller=caller_fact,
                now=now_dt,
                context={**base_context, **item.context} if item.context else base_context,
            )
            for item, resource in zip(items, resources, strict=True)
        ]
        if subject.refusal:
            refused = Decision(Effect.DENY, (), (subject.refusal,), (), policy_set.revision)
            decisions = [refused] * len(items)
        else:
            decisions = evaluate_many(policy_set, each_inputs)
        for item, inputs, decision, decision_id in zip(
            items, each_inputs, decisions, decision_ids, strict=True
        ):
            outcome = Outcome(decision_id, decision)
            outcomes.append(outcome)
            if recording:
                recorded.append((outcome, inputs, item.context))
        if recording:
            elapsed_ms = round((time.perf_counter() - started) * 1000 / max(1, len(items)), 3)
            stage: Stage = "refused" if subject.refusal else "evaluated"
            code = refusal_code_of(subject.refusal)
            now_text = rfc3339(now)  # one request, one time
            records = [
                self._record(
                    kind,
                    outcome,
                    subject,
                    inputs,
                    now,
                    request_id,
                    caller,
                    item_context,
                    interface,
                    stage=stage,
                    refusal_code=code,
                    duration_ms=elapsed_ms,
                    now_text=now_text,
                )
                for outcome, inputs, item_context in recorded
            ]
            await self.audit.record_many(records, _shared_input(subject, base_context))
        return outcomes

    async def record_refusal(
        self,
        *,
        kind: str,
        subject: Subject,
        action: str,
        resource: Entity,
        reason: str,
        request_id: str = "",
        caller: str = "",
    ) -> str:
        """Record a decision refused before policies were consulted (e.g. a bad SSO token)."""
        now = self.clock()
        decision = Decision(Effect.DENY, (), (reason,), (), self.policies.current.revision)
        outcome = Outcome(new_decision_id(), decision)
        inputs = {
            "principal": subject.principal,
            "resource": (await self.facts.call(self._resource_inputs, [resource]))[0],
            "action": action,
            "context": {},
            "caller": policy_inputs.caller_input(caller),
        }
        if self.audit.recording:
            rec = self._record(
                kind,
                outcome,
                subject,
                inputs,
                now,
                request_id,
                caller,
                stage="refused",
                refusal_code=refusal_code_of(reason),
                duration_ms=0.0,
            )
            await self.audit.record_many([rec], _shared_input(subject, {}))
        return outcome.decision_id

    # -- facts ----------------------------------------------------------------------------------

    def _resource_inputs(self, resources: list[Entity]) -> list[dict[str, Any]]:
        """One input per resource; a resource named by several items (one Entity, as
        convert.batch_items shares it) is looked up once and its input shared."""
        built: dict[int, dict[str, Any]] = {}
        out = []
        for resource in resources:
            found = built.get(id(resource))
            if found is None:
                found = built[id(resource)] = self._resource_input(resource)
            out.append(found)
        return out

    def _resource_input(self, resource: Entity) -> dict[str, Any]:
        addon_facts = None
        if resource.type == ADDON:
            addon = self.facts.addons.get(resource.id) if self.facts.addons else None
            addon_facts = (
                policy_inputs.addon_input(
                    addon.state, addon.app_id, addon.app_name, addon.plan, addon.region
                )
                if addon is not None
                else policy_inputs.UNKNOWN_ADDON_INPUT
            )
        return policy_inputs.resource_input(
            resource.type, resource.id, resource.attributes, addon_facts
        )

    async def _access_facts(
        self, subject: Subject, apps: dict[str, str], now: float
    ) -> dict[str, dict[str, Any]]:
        """The principal's roles on each app (`_apps_to_ask`: app id -> a resource of it)."""
        user_id = subject.principal["id"]
        cache = self.facts.access

        async def one(app_id: str, resource_id: str) -> tuple[str, dict[str, Any]]:
            if cache is None:
                return app_id, access_fact(None, user_id, now, "no Platform API configured")
            try:
                listing = await cache.get(app_id, resource_id, deadline=self.facts.deadline)
            except Exception as exc:  # any failure to learn access denies, with the reason
                reason = getattr(exc, "reason", "") or f"{type(exc).__name__}: {exc}"
                return app_id, access_fact(
                    None, user_id, now, f"app access list unavailable: {reason}"
                )
            return app_id, access_fact(listing, user_id, now)

        if len(apps) == 1:  # the common case: no task for a single lookup
            [(app_id, resource_id)] = apps.items()
            return dict([await one(app_id, resource_id)])
        return dict(await asyncio.gather(*(one(a, r) for a, r in apps.items())))

    # -- audit ----------------------------------------------------------------------------------

    def _record(
        self,
        kind: str,
        outcome: Outcome,
        subject: Subject,
        inputs: Mapping[str, Any],
        now: float,
        request_id: str,
        caller: str,
        item_context: Mapping[str, Any] | None = None,
        interface: str = "grpc",
        *,
        stage: Stage = "evaluated",
        refusal_code: str = "",
        duration_ms: float | None = None,
        now_text: str = "",
    ) -> DecisionRecord:
        """The decision's audit record, without what it shares with the rest of its request
        (the principal and the request's context: see `_shared_input`)."""
        decision = outcome.decision
        resource = inputs["resource"]
        principal = subject.principal
        record = DecisionRecord(
            decision_id=outcome.decision_id,
            time=now,
            kind=kind,
            effect=decision.effect.value,
            stage=stage,
            refusal_code=refusal_code,
            interface=interface,
            caller=caller,
            request_id=request_id,
            principal={
                "type": principal.get("type", ""),
                "id": principal.get("id", ""),
                "display": subject.display,
            },
            action=inputs["action"],
            resource={"type": resource.get("type", ""), "id": resource.get("id", "")},
            app_id=resource.get("addon", {}).get("app_id", ""),
            **_recorded_outcome(decision),
            policy_revision=decision.policy_revision,
            input=_recorded_input(inputs, now_text or rfc3339(now), item_context),
            duration_ms=duration_ms,
        )
        return _without_session_tokens_in(record)


def _apps_to_ask(subject: Subject, resources: list[dict[str, Any]]) -> dict[str, str]:
    """The apps whose access list decides for this subject (app id -> the first resource of
    it): those owning a provisioned add-on in the request, when a Heroku user asks."""
    principal = subject.principal
    if principal.get("type") != HEROKU_USER or not principal.get("id") or subject.refusal:
        return {}
    apps: dict[str, str] = {}
    for resource in resources:
        addon = resource.get("addon")
        if addon and addon["app_id"] and addon["state"] == "provisioned":
            apps.setdefault(addon["app_id"], resource["id"])
    return apps


_SHARED_INPUTS = ("principal", "context")


@functools.lru_cache(maxsize=4096)  # decisions that are not shared (errors) never grow it
def _recorded_outcome(decision: Decision) -> dict[str, tuple[Any, ...]]:
    """A decision's matched rules, reasons and errors as its records hold them: built once per
    decision (the engine shares one Decision among every evaluation that ends the same way),
    and the same tuples for all its records, which lets the audit log encode them once too.
    The dict is shared: unpack it, never change it."""
    return {
        "matched_rules": tuple(
            MatchedRule(m.policy, m.rule_id, m.effect.value, m.reason) for m in decision.matched
        ),
        "reasons": tuple(decision.reasons),
        "errors": tuple(decision.errors),
    }


def _recorded_entity(entity: Mapping[str, Any]) -> Mapping[str, Any]:
    if entity.get("attributes"):
        return {**entity, "attributes": redact(entity["attributes"])}
    return entity


def _shared_input(subject: Subject, context: Mapping[str, Any]) -> dict[str, Any]:
    """What every decision of a request shares, redacted once: the audit log stores it once
    (when large) instead of in every record, and gives it back whole to readers."""
    return redact_session_tokens(
        {
            "input.principal": _recorded_entity(subject.principal),
            "input.context": redact(context),
        }
    )


def _recorded_input(
    inputs: Mapping[str, Any], now_text: str, item_context: Mapping[str, Any] | None
) -> dict[str, Any]:
    """The evaluated input as the audit log keeps it, less what the request's decisions share
    (`_shared_input`); an item's own context is kept, over the request's. Only what callers
    send can hold a secret (attributes and context); the facts authz gathered itself are
    recorded as they are."""
    recorded = {k: v for k, v in inputs.items() if k not in _SHARED_INPUTS}
    recorded["now"] = now_text
    recorded["resource"] = _recorded_entity(inputs["resource"])
    if item_context:
        recorded["context"] = redact(item_context)
    return recorded


def _without_session_tokens_in(record: DecisionRecord) -> DecisionRecord:
    """`redact_session_tokens` for a typed record: the fields a caller's text can reach."""
    try:
        found = _PREFIX_BYTES in marshal.dumps(
            (
                record.caller,
                record.request_id,
                record.principal,
                record.action,
                record.resource,
                record.app_id,
                record.reasons,
                record.input,
            )
        )
    except ValueError:
        found = True
    if not found:
        return record
    return DecisionRecord.from_dict(_without_session_tokens(record.to_dict()))


def redact_session_tokens(record: dict[str, Any]) -> dict[str, Any]:
    """The record with every session token replaced, wherever a caller put one: an id, the
    request id, a context value, a key. Session tokens are ours and carry TOKEN_PREFIX, so they
    are found by their form, not only under secret-looking keys (caller bearer tokens are not
    ours to recognise; those are redacted by key name)."""
    # One pass in C (marshal: ~6 µs for a Check's record) finds the rare record that holds the
    # prefix at all; only that one is walked. marshal refuses types it does not know: walk then.
    try:
        if _PREFIX_BYTES not in marshal.dumps(record):
            return record
    except ValueError:
        pass
    return _without_session_tokens(record)


def _without_session_tokens(value: Any) -> Any:
    if isinstance(value, str):
        return _SESSION_TOKEN.sub(REDACTED, value) if TOKEN_PREFIX in value else value
    if isinstance(value, Mapping):
        return {_without_session_tokens(k): _without_session_tokens(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_without_session_tokens(v) for v in value]
    return value


def redact(value: Any) -> Any:
    """A fact tree with secret-looking keys blanked, for the audit log: the tree itself when
    nothing in it needs blanking and it is made of plain dicts, lists and tuples (nearly
    always; the record is encoded at once and never changes it), else a copy."""
    return value if _clean(value) else _redacted(value)


def _clean(value: Any) -> bool:
    kind = type(value)
    if kind is dict:
        for k, v in value.items():  # noqa: SIM110 (all() over a generator: 0.3 µs more a call)
            if _secret_key(k) or not _clean(v):
                return False
        return True
    if kind is list or kind is tuple:  # both are written as JSON arrays
        return all(_clean(v) for v in value)
    return not isinstance(value, Mapping | list | tuple)


def _secret_key(key: Any) -> bool:
    """Whether a key looks secret; remembered for the keys callers keep sending."""
    hit = _SECRET_KEYS.get(key)
    if hit is None:
        hit = _SECRET_KEY.search(str(key)) is not None
        if len(_SECRET_KEYS) < _SECRET_KEYS_MAX and type(key) is str:
            _SECRET_KEYS[key] = hit
    return hit


_SECRET_KEYS: dict[str, bool] = {}
_SECRET_KEYS_MAX = 4096


def _redacted(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: (REDACTED if _secret_key(k) else _redacted(v)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_redacted(v) for v in value]
    return value
