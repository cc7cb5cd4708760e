"""Building a complete evaluation input outside the server (policy test suites, replay, tests)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

NO_ACCESS: dict[str, Any] = {
    "available": False,
    "app_id": "",
    "user_id": "",
    "roles": [],
    "role": "",
    "has_role": False,
    "team_role": "",
    "permissions": [],
    "fetched_at": "",
    "age_seconds": -1.0,
    "error": "no Heroku app applies to this request",
}


def build_input(
    *,
    action: str,
    principal: Mapping[str, Any] | None = None,
    resource: Mapping[str, Any] | None = None,
    context: Mapping[str, Any] | None = None,
    access: Mapping[str, Any] | None = None,
    caller: Mapping[str, Any] | None = None,
    now: datetime | None = None,
    data: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Every declared variable, with neutral defaults for what the caller leaves out.

    `data` is left out unless given: the engine then reads the policy set's own reference data
    (a test suite passes it to evaluate with other data)."""
    principal = dict(principal or {})
    principal.setdefault("type", "")
    principal.setdefault("id", "")
    principal.setdefault("attributes", {})
    principal.setdefault("auth", {"method": "none"})
    resource = dict(resource or {})
    resource.setdefault("type", "")
    resource.setdefault("id", "")
    resource.setdefault("attributes", {})
    inputs = {
        "principal": principal,
        "resource": resource,
        "action": action,
        "context": dict(context or {}),
        "now": now or datetime.now(tz=UTC),
        "access": {**NO_ACCESS, **(access or {})},
        "caller": dict(caller or {"id": ""}),
    }
    if data is not None:
        inputs["data"] = dict(data)
    return inputs
