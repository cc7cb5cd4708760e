"""Replay recorded decisions against a candidate policy set: what would flip if it shipped?

Every audit record holds the exact input its policies saw (``record["input"]``, with ``now`` as
an RFC 3339 string). `replay` evaluates those inputs against the candidate set and reports each
decision whose effect would change (ALLOW → DENY or DENY → ALLOW), grouped by action and by the
rule that would decide it, with a few decision ids per group to look up (`authz audit show`).

Skipped, and counted by reason: records of other kinds than ``check`` and ``sso``; records
without an input naming principal, resource and action; and records refused before the policies
were consulted (a refused SSO form or an unknown session: no rule matched and the reason is not
the engine's default deny, e.g. ``SSO_REPLAYED: ...``; or an input without ``access``).
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from authz.policy.compile import CompiledPolicySet
from authz.policy.engine import evaluate
from authz.policy.inputs import build_input
from authz.policy.model import Decision, Effect

REPLAYABLE_KINDS = ("check", "sso")
EXAMPLES_PER_GROUP = 3
DEFAULT_DENY = "(default deny)"
_REFUSAL_CODE = re.compile(r"^(SSO|ADDON)_[A-Z_]+\b")
_DEFAULT_DENY_REASON = "no allow rule matched action"


class RecordedDecision(Protocol):
    """What replay reads of a recorded decision: the audit log's records (mappings today) have
    these keys. Replay never reads the log itself: the caller hands it records
    (authz.audit.query.iter_query, through Settings.audit_target, on SQLite or PostgreSQL)."""

    def get(self, key: str, default: Any = None, /) -> Any: ...

    def __getitem__(self, key: str, /) -> Any: ...


# Keys replay reads: decision_id, time, kind, effect, matched_rules, reasons, input,
# policy_revision, caller, principal, resource, action; and, when the log records them, the
# explicit `stage` ("evaluated" / "refused") and `by_default`.


@dataclass(frozen=True, slots=True)
class Flip:
    decision_id: str
    time: float
    kind: str
    action: str
    principal: str
    resource: str
    before: Effect
    after: Effect
    # Rules that decided, as policy/rule_id (DEFAULT_DENY when no rule matched).
    before_rules: tuple[str, ...]
    after_rules: tuple[str, ...]
    after_reasons: tuple[str, ...]
    after_errors: tuple[str, ...]

    @property
    def direction(self) -> str:
        return f"{self.before.value}->{self.after.value}"


@dataclass
class FlipGroup:
    key: str  # an action, or a rule (policy/rule_id or DEFAULT_DENY)
    direction: str  # "ALLOW->DENY" or "DENY->ALLOW"
    count: int = 0
    examples: list[str] = field(default_factory=list)  # decision ids

    def add(self, flip: Flip) -> None:
        self.count += 1
        if len(self.examples) < EXAMPLES_PER_GROUP:
            self.examples.append(flip.decision_id)


@dataclass
class ReplayReport:
    audit_db: str  # where the records came from (a SQLite path or a redacted PostgreSQL URL)
    candidate_dir: Path
    candidate_revision: str
    since: float | None
    read: int = 0
    replayed: int = 0
    unchanged: int = 0
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> count
    flips: list[Flip] = field(default_factory=list)
    # Replayed decisions whose candidate evaluation reported CEL errors: count and examples.
    with_errors: int = 0
    error_examples: list[str] = field(default_factory=list)
    recorded_revisions: dict[str, int] = field(default_factory=dict)
    duration_s: float = 0.0

    @property
    def skipped_total(self) -> int:
        return sum(self.skipped.values())

    @property
    def allow_to_deny(self) -> list[Flip]:
        return [f for f in self.flips if f.after is Effect.DENY]

    @property
    def deny_to_allow(self) -> list[Flip]:
        return [f for f in self.flips if f.after is Effect.ALLOW]

    def by_action(self) -> list[FlipGroup]:
        return _group(self.flips, lambda flip: [flip.action])

    def by_rule(self) -> list[FlipGroup]:
        """Grouped by the rule that decides under the candidate (each deciding rule counts)."""
        return _group(self.flips, lambda flip: list(flip.after_rules))


def _group(flips: Iterable[Flip], keys: Any) -> list[FlipGroup]:
    groups: dict[tuple[str, str], FlipGroup] = {}
    for flip in flips:
        for key in keys(flip):
            group = groups.setdefault(
                (flip.direction, key), FlipGroup(key=key, direction=flip.direction)
            )
            group.add(flip)
    return sorted(groups.values(), key=lambda g: (g.direction, -g.count, g.key))


def _deciding(decision_effect: Effect, matched: Iterable[tuple[str, str, str]]) -> tuple[str, ...]:
    """(policy, rule_id, effect) triples → the deciding rules as policy/rule_id."""
    rules = tuple(
        f"{policy}/{rule_id}" if policy else rule_id
        for policy, rule_id, effect in matched
        if effect.upper() == decision_effect.value
    )
    return rules or (DEFAULT_DENY,)


def _recorded_matched(record: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    out = []
    for item in record.get("matched_rules") or []:
        if isinstance(item, Mapping):
            out.append(
                (str(item.get("policy", "")), str(item.get("rule_id", "")), str(item.get("effect")))
            )
    return out


def skip_reason(record: Mapping[str, Any]) -> str | None:
    """Why a record cannot be replayed, or None when it can."""
    kind = record.get("kind")
    if kind not in REPLAYABLE_KINDS:
        return f"kind {kind!r} is not a policy decision"
    data = record.get("input")
    if not isinstance(data, Mapping) or not all(
        isinstance(data.get(key), Mapping) for key in ("principal", "resource")
    ):
        return "no recorded input"
    if not isinstance(data.get("action"), str) or not data["action"]:
        return "no recorded input"
    stage = record.get("stage")
    if stage == "refused":
        return "refused before policy evaluation"
    reasons = [str(r) for r in record.get("reasons") or []]
    if stage is None and not record.get("matched_rules") and not record.get("by_default"):
        if any(_REFUSAL_CODE.match(r) for r in reasons):
            return "refused before policy evaluation"
        if reasons and not any(r.startswith(_DEFAULT_DENY_REASON) for r in reasons):
            return "refused before policy evaluation"
    if not isinstance(data.get("access"), Mapping):
        return "refused before policy evaluation"
    if not isinstance(data.get("now"), str):
        return "no recorded time"
    return None


def recorded_input(record: RecordedDecision) -> dict[str, Any]:
    """The evaluation input of a record, rebuilt through the input builders (so an older record
    without a field gets the field's neutral value), with `now` a datetime again."""
    data = record["input"]
    now = datetime.fromisoformat(str(data["now"]))
    return build_input(
        action=data["action"],
        principal=data["principal"],
        resource=data["resource"],
        context=data.get("context") or {},
        access=data.get("access"),
        # rules read the candidate's own reference data: `data` is left out
        caller=data.get("caller") or {"id": str(record.get("caller", ""))},
        now=now if now.tzinfo else now.replace(tzinfo=UTC),
    )


def replay(
    records: Iterable[RecordedDecision],
    candidate: CompiledPolicySet,
    *,
    source: str = "",
    since: float | None = None,
) -> ReplayReport:
    """Re-decide every record with the candidate set (one the policy gate accepted). `source`
    and `since` only describe where the records came from, for the report."""
    started = time.perf_counter()
    policy_set = candidate
    report = ReplayReport(
        audit_db=source,
        candidate_dir=Path(candidate.directory or ""),
        candidate_revision=policy_set.revision,
        since=since,
    )
    for record in records:
        report.read += 1
        reason = skip_reason(record)
        if reason is None:
            try:
                inputs = recorded_input(record)
            except (ValueError, TypeError):
                reason = "no recorded time"
        if reason is not None:
            report.skipped[reason] = report.skipped.get(reason, 0) + 1
            continue
        report.replayed += 1
        revision = str(record.get("policy_revision", ""))
        report.recorded_revisions[revision] = report.recorded_revisions.get(revision, 0) + 1
        decision = evaluate(policy_set, inputs)
        if decision.errors:
            report.with_errors += 1
            if len(report.error_examples) < EXAMPLES_PER_GROUP:
                report.error_examples.append(str(record.get("decision_id", "")))
        before = Effect(str(record.get("effect", "DENY")).upper())
        if decision.effect is before:
            report.unchanged += 1
            continue
        report.flips.append(_flip(record, before, decision))
    report.duration_s = time.perf_counter() - started
    return report


def _flip(record: Mapping[str, Any], before: Effect, decision: Decision) -> Flip:
    principal = record.get("principal") or {}
    resource = record.get("resource") or {}
    return Flip(
        decision_id=str(record.get("decision_id", "")),
        time=float(record.get("time", 0.0)),
        kind=str(record.get("kind", "")),
        action=str(record.get("action") or record["input"]["action"]),
        principal=f"{principal.get('type', '')}:{principal.get('id', '')}",
        resource=f"{resource.get('type', '')}:{resource.get('id', '')}",
        before=before,
        after=decision.effect,
        before_rules=_deciding(before, _recorded_matched(record)),
        after_rules=_deciding(
            decision.effect, [(m.policy, m.rule_id, m.effect.value) for m in decision.matched]
        ),
        after_reasons=decision.reasons,
        after_errors=decision.errors,
    )


# -- output ------------------------------------------------------------------------------------


def format_report(report: ReplayReport) -> str:
    out = [
        f"replayed {report.replayed} of {report.read} recorded decisions against "
        f"{report.candidate_dir} (revision {report.candidate_revision}): "
        f"{len(report.flips)} would flip, {report.unchanged} unchanged, "
        f"{report.skipped_total} skipped"
    ]
    for reason, count in sorted(report.skipped.items()):
        out.append(f"  skipped {count}: {reason}")
    if report.with_errors:
        out.append(
            f"  {report.with_errors} replayed decisions had CEL errors under the candidate "
            f"(e.g. {', '.join(report.error_examples)})"
        )
    for direction in ("ALLOW->DENY", "DENY->ALLOW"):
        flips = [f for f in report.flips if f.direction == direction]
        if not flips:
            continue
        out.append(f"{direction.replace('->', ' -> ')}: {len(flips)}")
        out.append("  by action:")
        for group in report.by_action():
            if group.direction == direction:
                out.append(f"    {group.count:6}  {group.key}  e.g. {', '.join(group.examples)}")
        out.append("  by deciding rule (candidate):")
        for group in report.by_rule():
            if group.direction == direction:
                out.append(f"    {group.count:6}  {group.key}  e.g. {', '.join(group.examples)}")
    if not report.flips:
        out.append("no decision would change")
    return "\n".join(out)


def report_json(report: ReplayReport) -> dict[str, Any]:
    def groups(items: list[FlipGroup]) -> list[dict[str, Any]]:
        return [
            {"key": g.key, "direction": g.direction, "count": g.count, "examples": g.examples}
            for g in items
        ]

    return {
        "audit_db": str(report.audit_db),
        "candidate_dir": str(report.candidate_dir),
        "candidate_revision": report.candidate_revision,
        "since": report.since,
        "read": report.read,
        "replayed": report.replayed,
        "unchanged": report.unchanged,
        "skipped": report.skipped_total,
        "skipped_by_reason": dict(sorted(report.skipped.items())),
        "recorded_revisions": report.recorded_revisions,
        "with_errors": report.with_errors,
        "error_examples": report.error_examples,
        "flips": len(report.flips),
        "allow_to_deny": len(report.allow_to_deny),
        "deny_to_allow": len(report.deny_to_allow),
        "by_action": groups(report.by_action()),
        "by_rule": groups(report.by_rule()),
        "examples": [
            {
                "decision_id": f.decision_id,
                "time": f.time,
                "kind": f.kind,
                "action": f.action,
                "principal": f.principal,
                "resource": f.resource,
                "before": f.before.value,
                "after": f.after.value,
                "before_rules": list(f.before_rules),
                "after_rules": list(f.after_rules),
                "after_reasons": list(f.after_reasons),
                "after_errors": list(f.after_errors),
            }
            for f in report.flips[:50]
        ],
    }
