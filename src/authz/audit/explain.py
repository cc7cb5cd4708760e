"""A decision record in words (`authz audit show`, the demo), and the short forms of its parts
that listings use."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from authz.audit.query import AuditEntry
from authz.clock import rfc3339

__all__ = ["email_of", "explain", "ref", "rules_of", "when"]


def when(ts: Any) -> str:
    if isinstance(ts, int | float) and not isinstance(ts, bool):
        return datetime.fromtimestamp(ts, tz=UTC).strftime("%Y-%m-%d %H:%M:%S")
    return "" if ts is None else str(ts)


def ref(value: Any) -> str:
    """{"type": "user", "id": "u1"} → "user:u1"."""
    if not isinstance(value, dict):
        return "" if value is None else str(value)
    kind, ident = value.get("type"), value.get("id")
    if kind and ident:
        return f"{kind}:{ident}"
    return str(ident or kind or "")


def email_of(record: dict[str, Any]) -> str:
    principal = record.get("principal")
    display = principal.get("display") if isinstance(principal, dict) else None
    email = display.get("email") if isinstance(display, dict) else None
    return str(email) if email else ""


def rules_of(record: dict[str, Any]) -> str:
    names = []
    for rule in record.get("matched_rules") or []:
        if isinstance(rule, dict):
            policy, rule_id = rule.get("policy"), rule.get("rule_id")
            names.append(f"{policy}/{rule_id}" if policy else str(rule_id))
    return " ".join(names)


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _jsonish(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


def explain(entry: AuditEntry) -> str:
    """A decision record in words: what was decided, why, on which facts."""
    r = entry.record
    effect = str(r.get("effect", "?"))
    lines = [f"Decision {r.get('decision_id')}: {effect}"]
    time = r.get("time")
    when = rfc3339(time) if isinstance(time, int | float) else str(time)
    lines.append(f"  when:     {when} ({r.get('kind', '?')} decision, audit seq {entry.seq})")
    principal = ref(r.get("principal")) or "(unknown)"
    email = email_of(r)
    lines.append(f"  who:      {principal}" + (f" ({email})" if email else ""))
    target = ref(r.get("resource")) or "(no resource)"
    app = f" of app {r['app_id']}" if r.get("app_id") else ""
    lines.append(f"  asked:    {r.get('action', '?')} on {target}{app}")
    asked_by = f"  caller:   {r.get('caller') or '(unknown)'}"
    if r.get("request_id"):
        asked_by += f", request id {r['request_id']}"
    lines.append(asked_by)
    lines.append(f"  policy:   revision {r.get('policy_revision') or '(unknown)'}")
    if isinstance(r.get("duration_ms"), int | float):
        lines.append(f"  took:     {r['duration_ms']:.3f} ms")

    lines.append("")
    lines.append("Why:")
    matched = [m for m in r.get("matched_rules") or [] if isinstance(m, dict)]
    denies = [m for m in matched if m.get("effect") == "DENY"]
    allows = [m for m in matched if m.get("effect") == "ALLOW"]

    def rule_line(m: dict[str, Any]) -> str:
        reason = m.get("reason") or "(no reason given)"
        return f"  - {m.get('effect')} rule {m.get('policy')}/{m.get('rule_id')}: {reason}"

    if effect == "ALLOW":
        lines.append(f"  ALLOWED: {len(allows)} allow rule(s) matched and no deny rule matched.")
        lines.extend(rule_line(m) for m in allows)
    elif denies:
        lines.append(f"  DENIED by {len(denies)} deny rule(s) (a deny overrides any allow):")
        lines.extend(rule_line(m) for m in denies)
        if allows:
            lines.append("  Allow rules that matched but were overridden:")
            lines.extend(rule_line(m) for m in allows)
    else:
        lines.append("  DENIED by default: no allow rule matched.")
    reasons = [str(x) for x in r.get("reasons") or []]
    if reasons:
        lines.append("  Reasons given to the caller:")
        lines.extend(f"  - {x}" for x in reasons)
    errors = [str(x) for x in r.get("errors") or []]
    if errors:
        lines.append("")
        lines.append(
            "Errors (an erroring deny rule counts as matched, an erroring allow rule not):"
        )
        lines.extend(f"  - {x}" for x in errors)

    lines.append("")
    lines.append("Facts used:")
    facts = r.get("input") if isinstance(r.get("input"), dict) else {}
    access = facts.get("access")
    if isinstance(access, dict):
        role = access.get("role", access.get("roles"))
        text = f"  access:    role {role!r}" if role is not None else "  access:    no role"
        age = access.get("age_seconds")
        fetched = access.get("fetched_at")
        if isinstance(age, int | float):
            text += f", fact {_age(float(age))} old"
        if isinstance(fetched, int | float):
            text += f", fetched from Heroku at {rfc3339(fetched)}"
        elif fetched:
            text += f", fetched from Heroku at {fetched}"
        lines.append(text)
        others = {k: v for k, v in access.items() if k not in ("role", "age_seconds", "fetched_at")}
        if others:
            lines.append(f"             {_jsonish(others)}")
    elif access is not None:
        lines.append(f"  access:    {_jsonish(access)}")
    else:
        lines.append("  access:    (no access fact was used)")
    for key in sorted(facts):
        if key != "access":
            lines.append(f"  {key + ':':<10} {_jsonish(facts[key])}")

    lines.append("")
    lines.append(f"Chain: seq {entry.seq}, hash {entry.hash}, previous {entry.prev_hash}")
    for path, digest in sorted(entry.parts.items()):
        lines.append(f"       {path} is stored once for its batch: shared part {digest}")
    return "\n".join(lines)
