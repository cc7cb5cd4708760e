"""A decision record as the decision path produces it, for tests, demos and benchmarks."""

from __future__ import annotations

import time as _time
from collections.abc import Sequence
from typing import Any

from authz.clock import rfc3339
from authz.ids import new_decision_id


def make_record(
    *,
    decision_id: str | None = None,
    time: float | None = None,
    kind: str = "check",
    effect: str = "ALLOW",
    principal: tuple[str, str] = ("user", "u-1"),
    email: str = "alice@example.com",
    action: str = "account.read",
    resource: tuple[str, str] = ("addon", "a-1"),
    app_id: str = "app-1",
    rules: Sequence[tuple[str, str, str, str]] = (
        ("base", "owner-reads", "ALLOW", "owners and collaborators may read"),
    ),
    errors: Sequence[str] = (),
    policy_revision: str = "rev-1",
    access_role: str | None = "owner",
    access_age: float = 12.5,
    caller: str = "billing",
    request_id: str | None = None,
    duration_ms: float = 0.42,
) -> dict[str, Any]:
    """A complete record; `rules` are (policy, rule_id, effect, reason) of the matched rules."""
    now = _time.time() if time is None else time
    decision_id = decision_id or new_decision_id()
    matched = [
        {"policy": policy, "rule_id": rule_id, "effect": rule_effect, "reason": reason}
        for policy, rule_id, rule_effect, reason in rules
    ]
    if effect == "ALLOW":
        reasons = [m["reason"] for m in matched if m["effect"] == "ALLOW"]
    else:
        reasons = [m["reason"] for m in matched if m["effect"] == "DENY"] or [
            f"no allow rule matched action {action!r} (default deny)"
        ]
    principal_value = {"type": principal[0], "id": principal[1], "display": {"email": email}}
    resource_value = {"type": resource[0], "id": resource[1]}
    return {
        "decision_id": decision_id,
        "time": now,
        "kind": kind,
        "caller": caller,
        "request_id": request_id or f"req-{decision_id[-12:]}",
        "principal": principal_value,
        "action": action,
        "resource": resource_value,
        "app_id": app_id,
        "effect": effect,
        "matched_rules": matched,
        "reasons": reasons,
        "errors": list(errors),
        "policy_revision": policy_revision,
        "input": {
            "principal": principal_value,
            "resource": {**resource_value, "app_id": app_id},
            "action": action,
            "context": {"ip": "[redacted]"},
            "now": rfc3339(now),
            "access": {
                "role": access_role,
                "age_seconds": access_age,
                "fetched_at": now - access_age,
            },
        },
        "duration_ms": duration_ms,
    }
