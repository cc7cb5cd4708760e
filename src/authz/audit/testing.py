"""For tests, demos and benchmarks: a decision record as the decision path produces it, and
direct access to a log's tables (what someone tampering with the database, or another writer
holding its lock, would do), on either backend."""

from __future__ import annotations

import contextlib
import time as _time
from collections.abc import Iterator, Sequence
from typing import Any

from authz.audit.schema import Target, lock_head, open_audit
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


Statement = str | tuple[str, Sequence[Any]]


def execute_sql(target: Target, *statements: Statement) -> None:
    """Run statements (``?`` placeholders) on the log at ``target``, each committing by itself:
    the way a test edits, deletes or moves records behind the writer's back."""
    with open_audit(target) as db:
        for statement in statements:
            sql, params = (statement, ()) if isinstance(statement, str) else statement
            db.execute(sql, params)


def fetch_all(target: Target, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    """The rows of one query on the log at ``target``, read through a connection of its own."""
    with open_audit(target) as db:
        return [tuple(row) for row in db.execute(sql, params).fetchall()]


@contextlib.contextmanager
def hold_write_lock(target: Target) -> Iterator[None]:
    """Hold what every writer of the log must take before it appends (SQLite: the file's write
    lock; PostgreSQL: the chain head row), as a stuck writer or a long transaction would."""
    with open_audit(target) as db, db.transaction():
        lock_head(db)
        yield
