"""CEL type-check and compile every rule once; index rules by action."""

from __future__ import annotations

import fnmatch
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cel_expr_python import cel

from authz.policy.load import LoadedSet, PolicyError, Problem, load_policy_dir
from authz.policy.model import Policy, Rule, Source
from authz.policy.plan import Plan, build_plan

_DYN_MAP = cel.Type.Map(cel.Type.STRING, cel.Type.DYN)

# What every condition may read. Declared so a typo or a type error fails at load, not at 3 a.m.
VARIABLES: dict[str, object] = {
    "principal": _DYN_MAP,  # type, id, attributes, auth (from a verified session only)
    "resource": _DYN_MAP,  # type, id, attributes, addon (registry facts)
    "action": cel.Type.STRING,
    "context": _DYN_MAP,  # the request's context map
    "now": cel.Type.TIMESTAMP,
    "access": _DYN_MAP,  # the principal's current roles on the resource's Heroku app
    "caller": _DYN_MAP,  # the service asking (id), from the connection, never from the request
    "data": _DYN_MAP,  # reference data from the policy directory's data/ files (read-only)
}
# Whether a condition may read `data`. Over-approximates (a string "data" matches too), which
# only costs the engine one dict copy; missing a real read would make the condition error.
_READS_DATA = re.compile(r"\bdata\b")

_CEL_POSITION = re.compile(r"<input>:(\d+):(\d+): (.*?)(?:\n|$)")
_MAX_CACHED_ACTIONS = 10_000


def new_env() -> cel.Env:
    return cel.NewEnv(variables=VARIABLES)


@dataclass(frozen=True, slots=True)
class CompiledRule:
    rule: Rule
    program: cel.Expression | None  # None: no condition, always holds
    resource_types: frozenset[str]
    reads_data: bool = False


@dataclass
class CompiledPolicySet:
    """An immutable, fully compiled policy set. Swapped whole on reload, never edited in place."""

    revision: str
    policies: tuple[Policy, ...]
    rules: tuple[CompiledRule, ...]
    catalogue: dict[str, str]
    env: cel.Env
    directory: Path | None = None
    loaded_at: float = field(default_factory=time.time)
    # Reference data (the `data` variable), built once at load and shared by every evaluation.
    data: dict[str, Any] = field(default_factory=dict)
    # Resource types the catalogue files declare: name -> description.
    resource_types: dict[str, str] = field(default_factory=dict)
    # Some policy file declares `catalogue: open`: uncatalogued actions are decided by the rules.
    catalogue_open: bool = False
    _exact: dict[str, tuple[CompiledRule, ...]] = field(default_factory=dict, repr=False)
    _globs: tuple[tuple[str, CompiledRule], ...] = field(default=(), repr=False)
    _by_action: dict[str, tuple[CompiledRule, ...]] = field(default_factory=dict, repr=False)
    _order: dict[int, int] = field(default_factory=dict, repr=False)
    _plans: dict[tuple[str, str], Plan] = field(default_factory=dict, repr=False)
    _plans_by_rules: dict[tuple[int, ...], Plan] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        exact: dict[str, list[CompiledRule]] = {}
        globs: list[tuple[str, CompiledRule]] = []
        for compiled in self.rules:
            for pattern in compiled.rule.actions:
                if any(ch in pattern for ch in "*?["):
                    globs.append((pattern, compiled))
                else:
                    exact.setdefault(pattern, []).append(compiled)
        self._exact = {action: tuple(rules) for action, rules in exact.items()}
        self._globs = tuple(globs)
        self._order = {id(r): i for i, r in enumerate(self.rules)}
        for action in self.catalogue:
            self.rules_for(action)

    def rules_for(self, action: str) -> tuple[CompiledRule, ...]:
        """The rules whose actions cover this action, in file order. Cost does not grow with
        unrelated rules: the answer per action is computed once and remembered."""
        cached = self._by_action.get(action)
        if cached is not None:
            return cached
        found = {id(r): r for r in self._exact.get(action, ())}
        for pattern, compiled in self._globs:
            if fnmatch.fnmatchcase(action, pattern):
                found[id(compiled)] = compiled
        result = tuple(sorted(found.values(), key=lambda r: self._order[id(r)]))
        # Only bounded memory for actions callers invent.
        if len(self._by_action) < _MAX_CACHED_ACTIONS:
            self._by_action[action] = result
        return result

    def plan(self, action: str, resource_type: str) -> Plan:
        """The rules for this action that apply to this resource type, conditions fused.

        Plans are shared by every (action, type) with the same candidate rules, so the number
        of compiled programs is bounded by the policies, not by what callers send.
        """
        key = (action, resource_type)
        plan = self._plans.get(key)
        if plan is not None:
            return plan
        rules = tuple(
            r
            for r in self.rules_for(action)
            if not r.resource_types or resource_type in r.resource_types
        )
        rules_key = tuple(self._order[id(r)] for r in rules)
        plan = self._plans_by_rules.get(rules_key)
        if plan is None:
            plan = build_plan(self.env, rules)
            self._plans_by_rules[rules_key] = plan
        if len(self._plans) < _MAX_CACHED_ACTIONS:
            self._plans[key] = plan
        return plan

    @property
    def rule_count(self) -> int:
        return len(self.rules)

    @property
    def closed(self) -> bool:
        """Only catalogued actions are decided; any other is denied with ACTION_UNKNOWN.

        A set that declares an action catalogue is closed unless a file declares
        `catalogue: open`. A set with no catalogue at all has nothing to check names against, so
        its rules decide every action (`authz policy validate` warns about that)."""
        return bool(self.catalogue) and not self.catalogue_open


def compile_policies(loaded: LoadedSet) -> CompiledPolicySet:
    """Compile every condition; raise PolicyError (with file:line:column) if any fails."""
    env = new_env()
    problems: list[Problem] = []
    compiled: list[CompiledRule] = []
    for policy in loaded.policies:
        for rule in policy.rules:
            program = None
            if rule.when:
                program = _compile_condition(env, rule, problems)
            compiled.append(
                CompiledRule(
                    rule,
                    program,
                    frozenset(rule.resource_types),
                    bool(_READS_DATA.search(rule.when)),
                )
            )
    if problems:
        raise PolicyError(problems)
    catalogue = {action: text for policy in loaded.policies for action, text in policy.actions}
    return CompiledPolicySet(
        revision=loaded.revision,
        policies=loaded.policies,
        rules=tuple(compiled),
        catalogue=catalogue,
        env=env,
        directory=loaded.directory,
        data=loaded.data,
        resource_types={
            name: text for policy in loaded.policies for name, text in policy.resource_types
        },
        catalogue_open=any(policy.catalogue == "open" for policy in loaded.policies),
    )


def _compile_condition(env: cel.Env, rule: Rule, problems: list[Problem]) -> cel.Expression | None:
    source = rule.when_source or rule.source
    try:
        program = env.compile(rule.when)
    except RuntimeError as exc:
        problems.append(_cel_problem(rule, source, str(exc)))
        return None
    except Exception as exc:  # e.g. TypeError for text CEL cannot take: refuse, never raise
        problems.append(
            Problem(
                source,
                f"CEL cannot compile this condition ({type(exc).__name__})",
                rule_id=rule.id,
                hint="check the condition for characters CEL does not accept",
            )
        )
        return None
    if program.return_type() not in (cel.Type.BOOL, cel.Type.DYN):
        problems.append(
            Problem(
                source,
                f"condition yields {program.return_type()}, not a bool",
                rule_id=rule.id,
                hint="a 'when' must be true or false, e.g. compare with '=='",
            )
        )
        return None
    return program


def _cel_problem(rule: Rule, source: Source, text: str) -> Problem:
    match = _CEL_POSITION.search(text)
    if not match:
        return Problem(source, f"CEL error: {text.strip()}", rule_id=rule.id)
    line, column, message = int(match.group(1)), int(match.group(2)), match.group(3)
    return Problem(
        Source(source.file, source.line + line - 1),
        f"CEL error in 'when': {message}",
        rule_id=rule.id,
        column=source.column_offset + column,
        hint=_cel_hint(message),
    )


def _cel_hint(message: str) -> str:
    if "undeclared reference" in message:
        return (
            "conditions can read principal, resource, action, context, now, access, caller and data"
        )
    if "no matching overload" in message:
        return "the operand types differ; compare like with like (string with string, ...)"
    if "Syntax error" in message:
        return "check brackets, quotes and operators"
    return ""


def load_and_compile(directory: Path | str) -> CompiledPolicySet:
    """Load and compile a directory; all or nothing."""
    return compile_policies(load_policy_dir(directory))
