"""A decision record: validation, canonical JSON and the columns indexed for review.

The record itself is stored verbatim as canonical JSON; the indexed columns are derived from it
(and `verify` checks that they still agree with it), so the JSON is the single source of truth.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from authz.audit.errors import AuditRecordInvalid
from authz.clock import Clock

EFFECTS = ("ALLOW", "DENY")

INDEX_COLUMNS = (
    "decision_id",
    "time",
    "kind",
    "caller",
    "request_id",
    "principal_type",
    "principal_id",
    "action",
    "resource_type",
    "resource_id",
    "app_id",
    "effect",
    "policy_revision",
    "rule_ids",
)
"""The columns of `audit_log` derived from the record, in this order."""

IndexRow = tuple[Any, ...]
RuleRow = tuple[str, str, str]
"""(policy, rule_id, effect) of one matched rule."""


_ENCODER = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
)
_NUMBER = (int, float)
_SEQUENCE = (list, tuple)


def canonical_json(value: Any) -> str:
    """Sorted keys, no whitespace, ASCII only, no NaN/Infinity: one text per value.

    Floats use Python's shortest round-trip form, so json.loads(canonical_json(v)) == v for
    every JSON value and re-encoding gives the same text.
    """
    return _ENCODER.encode(value)


@dataclass(frozen=True, slots=True)
class PreparedRecord:
    """A record checked and encoded by the caller, ready for the writer to chain and insert."""

    decision_id: str
    columns: IndexRow
    rules: tuple[RuleRow, ...]
    json: str


def _optional_str(value: Any, field: str) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value
    raise AuditRecordInvalid(f"audit record field {field} must be a string, not {value!r}")


def _mapping(value: Any, field: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if isinstance(value, dict | Mapping):
        return value
    raise AuditRecordInvalid(f"audit record field {field} must be an object, not {value!r}")


def matched_rules(record: Mapping[str, Any]) -> tuple[RuleRow, ...]:
    raw = record.get("matched_rules") or ()
    if not isinstance(raw, _SEQUENCE):
        raise AuditRecordInvalid(f"audit record field matched_rules must be a list, not {raw!r}")
    rules: list[RuleRow] = []
    for i, item in enumerate(raw):
        rule = item if type(item) is dict else _mapping(item, f"matched_rules[{i}]")
        rule_id = rule.get("rule_id")
        if not isinstance(rule_id, str) or not rule_id:
            raise AuditRecordInvalid(f"audit record matched_rules[{i}] has no rule_id")
        policy = _optional_str(rule.get("policy"), f"matched_rules[{i}].policy") or ""
        effect = _optional_str(rule.get("effect"), f"matched_rules[{i}].effect") or ""
        rules.append((str(policy), str(rule_id), str(effect)))
    return tuple(rules)


def index_columns(record: Mapping[str, Any], rules: tuple[RuleRow, ...] | None = None) -> IndexRow:
    """The values of INDEX_COLUMNS for a record; raises AuditRecordInvalid when it is malformed.

    `rules` is matched_rules(record) when the caller already has it.
    """
    decision_id = record.get("decision_id")
    if not isinstance(decision_id, str) or not decision_id:
        raise AuditRecordInvalid("audit record needs a decision_id (a non-empty string)")
    time = record.get("time")
    if isinstance(time, bool) or not isinstance(time, _NUMBER) or not math.isfinite(time):
        raise AuditRecordInvalid(f"audit record {decision_id}: time must be Unix seconds")
    kind = record.get("kind")
    if not isinstance(kind, str) or not kind:
        raise AuditRecordInvalid(f"audit record {decision_id}: kind must be a non-empty string")
    effect = record.get("effect")
    if effect not in EFFECTS:
        raise AuditRecordInvalid(f"audit record {decision_id}: effect must be ALLOW or DENY")
    principal = record.get("principal")
    if type(principal) is not dict:
        principal = _mapping(principal, "principal")
    resource = record.get("resource")
    if type(resource) is not dict:
        resource = _mapping(resource, "resource")
    if rules is None:
        rules = matched_rules(record)
    return (
        decision_id,
        float(time),
        kind,
        _optional_str(record.get("caller"), "caller"),
        _optional_str(record.get("request_id"), "request_id"),
        _optional_str(principal.get("type"), "principal.type"),
        _optional_str(principal.get("id"), "principal.id"),
        _optional_str(record.get("action"), "action"),
        _optional_str(resource.get("type"), "resource.type"),
        _optional_str(resource.get("id"), "resource.id"),
        _optional_str(record.get("app_id"), "app_id"),
        str(effect),
        _optional_str(record.get("policy_revision"), "policy_revision"),
        canonical_json([rule_id for _, rule_id, _ in rules]),
    )


def prepare(record: Mapping[str, Any], clock: Clock) -> PreparedRecord:
    """Check and encode a record in the caller, so a bad record never poisons a shared commit.

    A record without "time" is stamped with `clock()`; the caller's dict is never modified.
    """
    if not isinstance(record, dict | Mapping):
        raise AuditRecordInvalid(f"an audit record is a dict, not {type(record).__name__}")
    if "time" not in record:
        record = {**record, "time": clock()}
    rules = matched_rules(record)
    columns = index_columns(record, rules)
    try:
        text = _ENCODER.encode(record)
    except (TypeError, ValueError) as exc:
        raise AuditRecordInvalid(f"audit record {columns[0]} is not plain JSON: {exc}") from None
    return PreparedRecord(columns[0], columns, rules, text)
