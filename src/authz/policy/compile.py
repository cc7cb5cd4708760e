"""CEL type-check and compile every rule once; index rules by action."""

from __future__ import annotations

import fnmatch
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cel_expr_python import cel

from authz.policy import inputs
from authz.policy.attributes import attribute_problems
from authz.policy.load import LoadedSet, PolicyError, Problem, load_policy_dir
from authz.policy.model import EntityType, Policy, Rule, Source
from authz.policy.plan import BATCH_RESOURCES, CompiledRule, Plan, build_plan, reads_of

# What every condition may read: the contract of authz.policy.inputs. Conditions are
# type-checked against its typed form (a typo or a type error fails at load, not at 3 a.m.) and
# evaluated against plain maps the input builders fill completely.
VARIABLES = inputs.runtime_variables()

_CEL_POSITION = re.compile(r"<input>:(\d+):(\d+): (.*?)(?:\n|$)")
_UNDEFINED_FIELD = re.compile(r"undefined field '([^']*)' not found in struct '([^']*)'")
_UNDECLARED = re.compile(r"undeclared reference to '([^']*)'")
_MAX_CACHED_ACTIONS = 10_000


def new_env() -> cel.Env:
    """The environment conditions run in (plain maps)."""
    return cel.NewEnv(variables=VARIABLES)


def new_batch_env() -> cel.Env:
    """`new_env` and the list a batched program maps over (authz.policy.plan.Chunk.batched)."""
    return cel.NewEnv(
        variables={**VARIABLES, BATCH_RESOURCES: cel.Type.List(VARIABLES["resource"])}
    )


@dataclass
class CompiledPolicySet:
    """An immutable, fully compiled policy set. Swapped whole on reload, never edited in place."""

    revision: str
    policies: tuple[Policy, ...]
    rules: tuple[CompiledRule, ...]
    catalogue: dict[str, str]
    env: cel.Env
    directory: Path | None = None
    # Where plans compile their batched programs (new_batch_env); None: items one by one.
    batch_env: cel.Env | None = None
    loaded_at: float = field(default_factory=time.time)
    # Reference data (the `data` variable), built once at load and shared by every evaluation.
    data: dict[str, Any] = field(default_factory=dict)
    # Resource types the catalogue files declare: name -> description.
    resource_types: dict[str, str] = field(default_factory=dict)
    # Some policy file declares `catalogue: open`: uncatalogued actions are decided by the rules.
    catalogue_open: bool = False
    # Declared principal and resource types with their attribute schemas (authz.policy.attributes).
    principal_types: dict[str, EntityType] = field(default_factory=dict)
    entity_resource_types: dict[str, EntityType] = field(default_factory=dict)
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
            plan = build_plan(self.env, rules, self.batch_env)
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
    """Type-check and compile every condition; raise PolicyError (with file:line:column and a
    hint) if any fails, or if one reads an attribute no declared type has."""
    env = new_env()
    checker = inputs.checking_env()
    principal_types = {t.name: t for p in loaded.policies for t in p.principal_types}
    resource_types = {t.name: t for p in loaded.policies for t in p.entity_types}
    problems: list[Problem] = []
    compiled: list[CompiledRule] = []
    for policy in loaded.policies:
        for rule in policy.rules:
            program, reads = None, frozenset()
            if rule.when:
                checked = _compile_condition(checker, rule, problems)
                if checked is None:
                    continue
                # Type-checked above; this runs the same text against the maps.
                program = _compile_condition(env, rule, problems)
                reads = reads_of(checked)
                problems.extend(attribute_problems(rule, checked, principal_types, resource_types))
            compiled.append(
                CompiledRule(
                    rule,
                    program,
                    frozenset(rule.resource_types),
                    reads is None or any(path[0] == "data" for path in reads),
                    reads,
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
        batch_env=new_batch_env(),
        data=loaded.data,
        resource_types={
            name: text for policy in loaded.policies for name, text in policy.resource_types
        },
        catalogue_open=any(policy.catalogue == "open" for policy in loaded.policies),
        principal_types=principal_types,
        entity_resource_types=resource_types,
    )


def _compile_condition(env: cel.Env, rule: Rule, problems: list[Problem]) -> cel.Expression | None:
    """The condition compiled in `env`, or None with a problem (file:line:column, hint)."""
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
    field_match = _UNDEFINED_FIELD.search(message)
    if field_match:
        name, message_type = field_match.groups()
        short = message_type.removeprefix(f"{inputs.PACKAGE}.")
        known = ", ".join(inputs.fields_of(short))
        suggestion = inputs.field_suggestion(short, name)
        return f"{suggestion + ' ' if suggestion else ''}({short} has: {known})"
    undeclared = _UNDECLARED.search(message)
    if undeclared:
        suggestion = inputs.variable_suggestion(undeclared.group(1))
        return f"{suggestion + ' ' if suggestion else ''}(conditions can read " + (
            ", ".join(inputs.VARIABLE_NAMES) + ")"
        )
    if "no matching overload" in message:
        return "the operand types differ; compare like with like (string with string, ...)"
    if "Syntax error" in message:
        return "check brackets, quotes and operators"
    return ""


def load_and_compile(directory: Path | str) -> CompiledPolicySet:
    """Load and compile a directory; all or nothing."""
    return compile_policies(load_policy_dir(directory))
