"""`authz policy eval` and `authz policy explain`, as library calls: decide one request offline
with every rule's condition shown, and say everything known about one rule.

Both are pure: the request is a mapping (read from a file or built from flags by the CLI), test
results come from authz.policy.suites, recorded decisions are handed in (the CLI reads them from
the audit log through Settings).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from cel_expr_python import cel

from authz.clock import rfc3339
from authz.policy.attributes import conform_request
from authz.policy.compile import CompiledPolicySet
from authz.policy.engine import evaluate
from authz.policy.inputs import (
    ADDON,
    HEROKU_SSO,
    HEROKU_USER,
    access_input,
    access_unavailable,
    auth_input,
    build_input,
)
from authz.policy.model import Decision, Rule
from authz.policy.plan import project, projection_of

REQUEST_KEYS = {
    "principal",
    "sso_user",
    "action",
    "resource",
    "access",
    "context",
    "caller",
    "now",
}


class RequestError(ValueError):
    """The request to evaluate is malformed; the message names the key."""


@dataclass(frozen=True, slots=True)
class RuleTrial:
    rule: Rule
    value: str  # "true", "false", "always" (no condition) or the CEL error


@dataclass(frozen=True, slots=True)
class Trace:
    inputs: dict[str, Any]
    decision: Decision
    tried: tuple[RuleTrial, ...] = ()


def request_input(spec: Mapping[str, Any], *, now: datetime | None = None) -> dict[str, Any]:
    """The evaluation input a request describes (built through authz.policy.inputs):

    action: dashboard.view
    principal: {type: service, id: billing, attributes: {team: payments}}
    sso_user: {id: U1, resource: R1, token_kind: sha256}  # instead of principal
    resource: {type: addon, id: R1, attributes: {}, addon: {state: provisioned, app_id: A1}}
    access: {roles: [owner], permissions: [manage], team_role: "", age_seconds: 3}
    context: {ip: 10.0.0.1}
    caller: billing-service
    now: 2026-12-01T10:00:00Z
    """
    unknown = sorted(set(spec) - REQUEST_KEYS)
    if unknown:
        raise RequestError(
            f"unknown key {unknown[0]!r}; a request has: {', '.join(sorted(REQUEST_KEYS))}"
        )
    action = spec.get("action")
    if not isinstance(action, str) or not action:
        raise RequestError("'action' is required (a string)")
    moment = _time(spec.get("now")) if spec.get("now") is not None else now
    moment = moment or datetime.now(tz=UTC)
    resource = _mapping(spec, "resource")
    if resource.get("type") == ADDON and "addon" not in resource:
        resource = {**resource, "addon": {"state": "provisioned"}}
    if "principal" in spec and "sso_user" in spec:
        raise RequestError("give 'principal' or 'sso_user', not both")
    principal = _mapping(spec, "principal")
    if "sso_user" in spec:
        user = _mapping(spec, "sso_user")
        principal = {
            "type": HEROKU_USER,
            "id": str(user.get("id", "")),
            "auth": auth_input(
                HEROKU_SSO,
                session_id=str(user.get("session_id", "eval-session")),
                resource_id=str(user.get("resource", resource.get("id", ""))),
                issued_at=rfc3339(moment.timestamp()),
                token_kind=str(user.get("token_kind", "sha256")),
            ),
        }
    access = None
    if "access" in spec:
        given = _mapping(spec, "access")
        app_id = str(given.get("app_id", (resource.get("addon") or {}).get("app_id", "")))
        user_id = str(given.get("user_id", principal.get("id", "")))
        if given.get("available", True):
            access = access_input(
                app_id=app_id,
                user_id=user_id,
                roles=[str(r) for r in given.get("roles") or []],
                permissions=[str(p) for p in given.get("permissions") or []],
                team_role=str(given.get("team_role", "")),
                fetched_at=rfc3339(moment.timestamp() - float(given.get("age_seconds", 0.0))),
                age_seconds=float(given.get("age_seconds", 0.0)),
            )
        else:
            access = access_unavailable(str(given.get("error", "")), app_id=app_id, user_id=user_id)
    caller = spec.get("caller", "")
    return build_input(
        action=action,
        principal=principal,
        resource=resource,
        context=_mapping(spec, "context"),
        access=access,
        caller={"id": str(caller)} if not isinstance(caller, Mapping) else caller,
        now=moment,
    )


def _mapping(spec: Mapping[str, Any], key: str) -> dict[str, Any]:
    value = spec.get(key)
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise RequestError(f"{key!r} must be a mapping")
    return dict(value)


def _time(value: Any) -> datetime:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    try:
        moment = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        raise RequestError(f"'now': {value!r} is not an RFC 3339 time") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def trace(policy_set: CompiledPolicySet, inputs: Mapping[str, Any]) -> Trace:
    """The decision, and each candidate rule with its condition's value. The request's
    attributes are checked against the set's schemas first (RequestError), as the server does."""
    principal, resource = inputs["principal"], inputs["resource"]
    try:
        conform_request(
            policy_set,
            (principal["type"], principal["attributes"]),
            [(resource["type"], resource["attributes"])],
        )
    except ValueError as exc:
        raise RequestError(str(exc)) from None
    decision = evaluate(policy_set, inputs)
    action = inputs["action"]
    if policy_set.closed and action not in policy_set.catalogue:
        return Trace(dict(inputs), decision)
    plan = policy_set.plan(action, resource.get("type", ""))
    full = {**inputs} if "data" in inputs else {**inputs, "data": policy_set.data}
    tree = projection_of(plan.rules)
    activation = policy_set.env.Activation(full if tree is None else project(full, tree))
    tried = []
    for compiled in plan.rules:
        if compiled.program is None:
            tried.append(RuleTrial(compiled.rule, "always"))
            continue
        result = compiled.program.eval(activation)
        if result.type() == cel.Type.BOOL:
            value = "true" if result.value() else "false"
        elif result.type() == cel.Type.ERROR:
            value = f"error: {result.value()}"
        else:
            value = f"error: yielded {result.type()}, not bool"
        tried.append(RuleTrial(compiled.rule, value))
    return Trace(dict(inputs), decision, tuple(tried))


def trace_json(result: Trace) -> dict[str, Any]:
    decision = result.decision
    return {
        "effect": decision.effect.value,
        "by_default": decision.by_default,
        "reasons": list(decision.reasons),
        "errors": list(decision.errors),
        "policy_revision": decision.policy_revision,
        "deciding_rules": [m.rule_id for m in decision.deciding],
        "tried": [
            {
                "policy": t.rule.policy,
                "rule_id": t.rule.id,
                "effect": t.rule.effect.value,
                "source": str(t.rule.source),
                "condition": t.value,
                "reason": t.rule.reason,
            }
            for t in result.tried
        ],
        "input": {k: v for k, v in result.inputs.items() if k not in ("now", "data")}
        | {"now": result.inputs["now"].isoformat()},
    }


def format_trace(result: Trace) -> str:
    decision = result.decision
    how = " (default deny: no rule matched)" if decision.by_default else ""
    out = [f"{decision.effect.value}{how}  revision {decision.policy_revision}"]
    if not result.tried:
        out.append("  no rule tried")
    for t in result.tried:
        out.append(
            f"  {t.rule.effect.value.lower():5} {t.rule.policy}/{t.rule.id} ({t.rule.source}): "
            f"when -> {t.value}"
        )
        out.append(f"        reason: {t.rule.reason}")
    for reason in decision.reasons:
        out.append(f"reason: {reason}")
    for error in decision.errors:
        out.append(f"error: {error}")
    return "\n".join(out)


# -- explain -------------------------------------------------------------------------------------


@dataclass
class RuleReport:
    rule: Rule
    actions: list[str]  # catalogued actions the rule's patterns cover
    resource_types: list[str]  # declared resource types it applies to (all when it names none)
    tests: list[str] = field(default_factory=list)  # "file:line test [action]" that matched it
    tests_evaluated: int = 0  # checks whose candidates held the rule
    decided: int = 0  # recorded decisions it decided
    decided_examples: list[str] = field(default_factory=list)
    records_read: int = 0


def explain_rule(
    policy_set: CompiledPolicySet,
    rule_id: str,
    *,
    suite_report: Any = None,
    records: Iterable[Mapping[str, Any]] = (),
    examples: int = 5,
) -> RuleReport:
    """Where the rule is, what it covers, which test checks matched it, and which of `records`
    (audit records) it decided. KeyError when the set has no such rule."""
    compiled = next((c for c in policy_set.rules if c.rule.id == rule_id), None)
    if compiled is None:
        raise KeyError(rule_id)
    rule = compiled.rule
    actions = sorted(
        a for a in policy_set.catalogue if any(fnmatch.fnmatchcase(a, p) for p in rule.actions)
    )
    types = list(rule.resource_types) or sorted(policy_set.resource_types)
    report = RuleReport(rule, actions, types)
    if suite_report is not None:
        coverage = suite_report.coverage.get(rule_id)
        report.tests_evaluated = coverage.evaluations if coverage is not None else 0
        for result in suite_report.results:
            if any(m.rule_id == rule_id for m in result.decision.matched):
                report.tests.append(f"{result.file}:{result.line} {result.name}")
    for record in records:
        report.records_read += 1
        effect = str(record.get("effect", ""))
        for matched in record.get("matched_rules") or []:
            if (
                isinstance(matched, Mapping)
                and matched.get("rule_id") == rule_id
                and matched.get("policy", rule.policy) == rule.policy
                and str(matched.get("effect", "")).upper() == effect.upper()
            ):
                report.decided += 1
                if len(report.decided_examples) < examples:
                    report.decided_examples.append(str(record.get("decision_id", "")))
                break
    return report


def format_rule_report(report: RuleReport, days: float | None) -> str:
    rule = report.rule
    out = [
        f"{rule.policy}/{rule.id}: {rule.effect.value.lower()} at {rule.source}",
        f"  actions: {', '.join(rule.actions)} -> {', '.join(report.actions) or '(none)'}",
        f"  resource types: {', '.join(report.resource_types) or '(any)'}"
        + ("" if rule.resource_types else " (the rule names none: any type)"),
        f"  when: {rule.when or '(always)'}",
        f"  reason: {rule.reason}",
        f"  tests matching it: {len(report.tests)}",
    ]
    out += [f"    {t}" for t in report.tests]
    window = f"in the last {days:g} days" if days else "recorded"
    out.append(
        f"  decisions it decided {window}: {report.decided} of {report.records_read} read"
        + (f" (e.g. {', '.join(report.decided_examples)})" if report.decided_examples else "")
    )
    return "\n".join(out)


def rule_report_json(report: RuleReport) -> dict[str, Any]:
    rule = report.rule
    return {
        "policy": rule.policy,
        "rule_id": rule.id,
        "effect": rule.effect.value,
        "source": str(rule.source),
        "action_patterns": list(rule.actions),
        "actions": report.actions,
        "resource_types": report.resource_types,
        "when": rule.when,
        "reason": rule.reason,
        "tests": report.tests,
        "decided": report.decided,
        "decided_examples": report.decided_examples,
        "records_read": report.records_read,
    }
