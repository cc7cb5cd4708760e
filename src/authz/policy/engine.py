"""evaluate(compiled set, input) → Decision. Deny overrides, default deny, errors fail closed."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cel_expr_python import cel

from authz.policy.compile import CompiledPolicySet, CompiledRule
from authz.policy.model import Decision, Effect, MatchedRule

_ERROR = cel.Type.ERROR
_BOOL = cel.Type.BOOL
_INT = cel.Type.INT


def evaluate(policy_set: CompiledPolicySet, inputs: Mapping[str, Any]) -> Decision:
    """Decide one request. `inputs` holds every declared variable (see compile.VARIABLES).

    ALLOW only when at least one allow rule holds and no deny rule holds. A condition that
    errors or yields a non-bool never lets a request through: a deny rule counts as held,
    an allow rule as not held, and the error is reported.
    """
    action: str = inputs["action"]
    plan = policy_set.plan(action, inputs["resource"].get("type", ""))
    held = [False] * len(plan.rules)
    for position in plan.always:
        held[position] = True
    errors: list[str] = []
    if plan.chunks:
        activation = policy_set.env.Activation(inputs)
        for chunk in plan.chunks:
            result = chunk.program.eval(activation) if chunk.program is not None else None
            if result is not None and result.type() == _INT:
                mask = result.value()
                for bit, position in enumerate(chunk.positions):
                    held[position] = bool(mask >> bit & 1)
                continue
            # Something in this chunk errored (or it could not be fused): rule by rule.
            for position in chunk.positions:
                held[position] = _holds(plan.rules[position], activation, errors)
    matched = tuple(
        MatchedRule(c.rule.policy, c.rule.id, c.rule.effect, c.rule.reason)
        for c, h in zip(plan.rules, held, strict=True)
        if h
    )
    if any(m.effect is Effect.DENY for m in matched):
        effect = Effect.DENY
        reasons = tuple(m.reason for m in matched if m.effect is Effect.DENY)
    elif matched:
        effect = Effect.ALLOW
        reasons = tuple(m.reason for m in matched)
    else:
        effect = Effect.DENY
        reasons = (f"no allow rule matched action {action!r} (default deny)",)
    return Decision(effect, matched, reasons, tuple(errors), policy_set.revision)


def _holds(compiled: CompiledRule, activation: Any, errors: list[str]) -> bool:
    rule = compiled.rule
    is_deny = rule.effect is Effect.DENY
    result = compiled.program.eval(activation)  # type: ignore[union-attr]
    kind = result.type()
    if kind == _BOOL:
        return bool(result.value())
    detail = result.value() if kind == _ERROR else f"condition yielded {kind}, not bool"
    consequence = "deny rule applied (fail closed)" if is_deny else "allow rule skipped"
    errors.append(f"{rule.policy}/{rule.id}: {detail}; {consequence}")
    return is_deny
