"""evaluate(compiled set, input) → Decision. Deny overrides, default deny, errors fail closed."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cel_expr_python import cel

from authz.policy.compile import CompiledPolicySet
from authz.policy.model import Decision, Effect, MatchedRule

_ERROR = cel.Type.ERROR
_BOOL = cel.Type.BOOL


def evaluate(policy_set: CompiledPolicySet, inputs: Mapping[str, Any]) -> Decision:
    """Decide one request. `inputs` holds every declared variable (see compile.VARIABLES).

    ALLOW only when at least one allow rule holds and no deny rule holds. A condition that
    errors or yields a non-bool never lets a request through: a deny rule counts as held,
    an allow rule as not held, and the error is reported.
    """
    action: str = inputs["action"]
    resource_type = inputs["resource"].get("type", "")
    candidates = policy_set.rules_for(action)
    activation = None
    matched: list[MatchedRule] = []
    errors: list[str] = []
    denied = allowed = False
    for compiled in candidates:
        if compiled.resource_types and resource_type not in compiled.resource_types:
            continue
        rule = compiled.rule
        is_deny = rule.effect is Effect.DENY
        holds = True
        if compiled.program is not None:
            if activation is None:
                activation = policy_set.env.Activation(inputs)
            result = compiled.program.eval(activation)
            kind = result.type()
            if kind == _BOOL:
                holds = result.value()
            else:
                detail = result.value() if kind == _ERROR else f"condition yielded {kind}, not bool"
                consequence = "deny rule applied (fail closed)" if is_deny else "allow rule skipped"
                errors.append(f"{rule.policy}/{rule.id}: {detail}; {consequence}")
                holds = is_deny
        if holds:
            matched.append(MatchedRule(rule.policy, rule.id, rule.effect, rule.reason))
            if is_deny:
                denied = True
            else:
                allowed = True
    if denied:
        effect = Effect.DENY
        reasons = tuple(m.reason for m in matched if m.effect is Effect.DENY)
    elif allowed:
        effect = Effect.ALLOW
        reasons = tuple(m.reason for m in matched)
    else:
        effect = Effect.DENY
        reasons = (f"no allow rule matched action {action!r} (default deny)",)
    return Decision(effect, tuple(matched), reasons, tuple(errors), policy_set.revision)
