"""Lints: what loads and compiles but is still probably wrong, each with file:line and a fix.

`lint(directory)` runs the loader and the compiler (their problems are errors) and then looks for:

- ``unknown-action`` (error): a rule names an exact action that is not in the action catalogue.
- ``glob-matches-nothing`` (warning): a glob that matches no catalogued action can never match.
- ``constant-false`` (warning): a condition that is false whatever the input can never match.
- ``constant-true`` (warning): a condition that is true whatever the input is no condition.
- ``always-errors`` (warning): a condition that fails at run time whatever the input.
- ``shadowed-allow`` (warning): an allow rule entirely covered by an unconditional deny rule.
- ``unused-action`` (warning): a catalogued action that no rule's action pattern covers.
- ``no-catalogue`` (warning): nothing is catalogued, so action names cannot be checked.

A condition is constant when it evaluates to a bool against an *empty* activation: every
variable is then an error, and CEL's commutative ``&&`` / ``||`` only absorb an error when the
other side decides the result, so a bool there is the answer for every possible input.
"""

from __future__ import annotations

import difflib
import fnmatch
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from cel_expr_python import cel

from authz.policy.compile import CompiledPolicySet, compile_policies, new_env
from authz.policy.load import LoadedSet, PolicyError, Problem, load_policy_dir, policy_files
from authz.policy.model import Effect, Rule, Source

_MISSING_VARIABLE = "No value with name"


@dataclass(frozen=True, slots=True)
class LintProblem(Problem):
    """A Problem found by a lint; `code` names the lint (e.g. ``shadowed-allow``)."""

    code: str = ""


@dataclass(frozen=True, slots=True)
class LintReport:
    directory: Path
    problems: tuple[Problem, ...]
    # The compiled set when it loaded and compiled (then problems hold no loader/compiler errors).
    policy_set: CompiledPolicySet | None

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity != "error"]

    def ok(self, *, strict: bool = False) -> bool:
        return not self.errors and not (strict and self.warnings)


def lint(directory: Path | str) -> list[Problem]:
    """Every problem in a policy directory: loader and compiler errors, then lint findings."""
    return list(lint_report(directory).problems)


def lint_report(directory: Path | str) -> LintReport:
    directory = Path(directory)
    try:
        loaded = load_policy_dir(directory)
    except PolicyError as exc:
        return LintReport(directory, tuple(exc.problems), None)
    problems: list[Problem] = []
    policy_set: CompiledPolicySet | None = None
    try:
        policy_set = compile_policies(loaded)
    except PolicyError as exc:
        problems.extend(exc.problems)
    problems.extend(lint_loaded(loaded))
    problems.sort(key=lambda p: (p.source.file, p.source.line, p.column, p.severity != "error"))
    return LintReport(directory, tuple(problems), policy_set)


def lint_loaded(loaded: LoadedSet) -> list[Problem]:
    """The lint findings for a set that loaded (its conditions need not all compile)."""
    positions = _Positions.of(loaded.directory)
    catalogue = {action for policy in loaded.policies for action, _ in policy.actions}
    rules = [rule for policy in loaded.policies for rule in policy.rules]
    constants = _constant_conditions(rules)
    problems: list[Problem] = []
    if catalogue:
        for rule in rules:
            problems.extend(_action_problems(rule, catalogue, positions))
    elif rules:
        first = loaded.policies[0].source if loaded.policies else Source("?", 0)
        problems.append(
            LintProblem(
                Source(first.file, 1),
                "no action catalogue is declared, so rule actions cannot be checked",
                hint="declare the actions partner services ask about under 'actions:'",
                severity="warning",
                code="no-catalogue",
            )
        )
    for rule in rules:
        problem = _constant_problem(rule, constants.get(rule.id), positions)
        if problem is not None:
            problems.append(problem)
    unconditional_denies = [
        rule
        for rule in rules
        if rule.effect is Effect.DENY and (not rule.when or constants.get(rule.id) is True)
    ]
    for rule in rules:
        if rule.effect is not Effect.ALLOW:
            continue
        for deny in unconditional_denies:
            if _covers(deny, rule):
                problems.append(
                    LintProblem(
                        rule.source,
                        f"allow rule can never allow anything: unconditional deny rule "
                        f"{deny.id!r} ({deny.source}) covers all its actions and resource types",
                        rule_id=rule.id,
                        hint=f"narrow {deny.id!r} (actions, resource_types or a 'when'), "
                        "or remove this rule",
                        severity="warning",
                        code="shadowed-allow",
                    )
                )
                break
    patterns = [pattern for rule in rules for pattern in rule.actions]
    for policy in loaded.policies:
        for action, _ in policy.actions:
            if not any(fnmatch.fnmatchcase(action, pattern) for pattern in patterns):
                line, column = positions.catalogue.get(action, (policy.source.line, 0))
                problems.append(
                    LintProblem(
                        Source(policy.source.file, line),
                        f"catalogued action {action!r} is covered by no rule, so it is always "
                        "denied by default",
                        hint="write a rule that names it, or remove it from the catalogue",
                        severity="warning",
                        column=column,
                        code="unused-action",
                    )
                )
    return problems


# -- action names ------------------------------------------------------------------------------


def _is_glob(pattern: str) -> bool:
    return any(ch in pattern for ch in "*?[")


def _action_problems(rule: Rule, catalogue: set[str], positions: _Positions) -> list[Problem]:
    problems: list[Problem] = []
    for index, pattern in enumerate(rule.actions):
        line, column = positions.action(rule, index)
        where = Source(rule.source.file, line)
        if _is_glob(pattern):
            if not any(fnmatch.fnmatchcase(action, pattern) for action in catalogue):
                problems.append(
                    LintProblem(
                        where,
                        f"action pattern {pattern!r} matches no catalogued action, so it can "
                        "never match",
                        rule_id=rule.id,
                        hint="fix the pattern or catalogue the actions it is meant for",
                        severity="warning",
                        column=column,
                        code="glob-matches-nothing",
                    )
                )
        elif pattern not in catalogue:
            close = difflib.get_close_matches(pattern, sorted(catalogue), n=1)
            hint = (
                f"did you mean {close[0]!r}?"
                if close
                else "add it to the action catalogue or fix the name"
            )
            problems.append(
                LintProblem(
                    where,
                    f"action {pattern!r} is not in the action catalogue",
                    rule_id=rule.id,
                    hint=hint,
                    severity="error",
                    column=column,
                    code="unknown-action",
                )
            )
    return problems


def _pattern_covered(pattern: str, by: tuple[str, ...]) -> bool:
    """Whether every action `pattern` can match is matched by one of the patterns `by`."""
    for other in by:
        if other == pattern or other == "*":
            return True
        if not _is_glob(pattern):
            if fnmatch.fnmatchcase(pattern, other):
                return True
        elif other.endswith("*") and not _is_glob(other[:-1]) and pattern.startswith(other[:-1]):
            return True
    return False


def _covers(deny: Rule, allow: Rule) -> bool:
    """The deny rule applies to every (action, resource type) the allow rule applies to."""
    if deny.resource_types and not (
        allow.resource_types and set(allow.resource_types) <= set(deny.resource_types)
    ):
        return False
    return all(_pattern_covered(pattern, deny.actions) for pattern in allow.actions)


# -- constant conditions -----------------------------------------------------------------------


def constant_value(env: cel.Env, program: cel.Expression) -> bool | str | None:
    """True/False when the condition has that value for every input, an error message when it
    always errors, None when it depends on the input."""
    result = program.eval(env.Activation({}))
    kind = result.type()
    if kind == cel.Type.BOOL:
        return bool(result.value())
    if kind == cel.Type.ERROR:
        message = str(result.value())
        return None if _MISSING_VARIABLE in message else message
    return None


def _constant_conditions(rules: list[Rule]) -> dict[str, bool | str | None]:
    env = new_env()
    values: dict[str, bool | str | None] = {}
    for rule in rules:
        if not rule.when:
            continue
        try:
            program = env.compile(rule.when)
        except RuntimeError:
            continue  # reported by the compiler
        values[rule.id] = constant_value(env, program)
    return values


def _constant_problem(
    rule: Rule, value: bool | str | None, positions: _Positions
) -> Problem | None:
    if value is None or not rule.when:
        return None
    where = rule.when_source or rule.source
    source = Source(where.file, where.line)
    column = where.column_offset + 1 if rule.when_source else 0
    if value is False:
        return LintProblem(
            source,
            "condition is always false, so this rule can never match",
            rule_id=rule.id,
            hint="fix the condition, or remove the rule",
            severity="warning",
            column=column,
            code="constant-false",
        )
    if value is True:
        return LintProblem(
            source,
            "condition is always true; the rule applies unconditionally",
            rule_id=rule.id,
            hint="remove the 'when' if that is meant, or fix the condition",
            severity="warning",
            column=column,
            code="constant-true",
        )
    consequence = "counts as matched (deny)" if rule.effect is Effect.DENY else "never matches"
    return LintProblem(
        source,
        f"condition fails at run time for every input ({value}), so the rule {consequence}",
        rule_id=rule.id,
        hint="fix the condition",
        severity="warning",
        column=column,
        code="always-errors",
    )


# -- where things are written ------------------------------------------------------------------


@dataclass
class _Positions:
    """Lines (and columns) of rule action items and catalogue entries, read from the YAML."""

    # (file, rule id) -> [(line, column) of each action item]
    actions: dict[tuple[str, str], list[tuple[int, int]]]
    # catalogued action -> (line, column)
    catalogue: dict[str, tuple[int, int]]

    @classmethod
    def of(cls, directory: Path) -> _Positions:
        positions = cls({}, {})
        for path in policy_files(directory):
            try:
                root = yaml.compose(path.read_text(encoding="utf-8"), Loader=yaml.SafeLoader)
            except (yaml.YAMLError, OSError, UnicodeDecodeError):
                continue
            positions._read(path.name, root)
        return positions

    def _read(self, file: str, root: Any) -> None:
        if not isinstance(root, yaml.MappingNode):
            return
        for key, value in root.value:
            if key.value == "actions" and isinstance(value, yaml.MappingNode):
                for action_key, _ in value.value:
                    self.catalogue.setdefault(str(action_key.value), _mark(action_key))
            if key.value == "rules" and isinstance(value, yaml.SequenceNode):
                for item in value.value:
                    if isinstance(item, yaml.MappingNode):
                        self._read_rule(file, item)

    def _read_rule(self, file: str, node: yaml.MappingNode) -> None:
        fields = {k.value: v for k, v in node.value if isinstance(k, yaml.ScalarNode)}
        rule_id = fields.get("id")
        actions = fields.get("actions")
        if not isinstance(rule_id, yaml.ScalarNode) or actions is None:
            return
        items = actions.value if isinstance(actions, yaml.SequenceNode) else [actions]
        self.actions[(file, str(rule_id.value))] = [_mark(item) for item in items]

    def action(self, rule: Rule, index: int) -> tuple[int, int]:
        marks = self.actions.get((rule.source.file, rule.id), [])
        return marks[index] if index < len(marks) else (rule.source.line, 0)


def _mark(node: yaml.Node) -> tuple[int, int]:
    return node.start_mark.line + 1, node.start_mark.column + 1


# -- output ------------------------------------------------------------------------------------


def problem_json(problem: Problem) -> dict[str, Any]:
    return {
        "file": problem.source.file,
        "line": problem.source.line,
        "column": problem.column,
        "severity": problem.severity,
        "code": getattr(problem, "code", "") or ("invalid" if problem.severity == "error" else ""),
        "rule_id": problem.rule_id,
        "message": problem.message,
        "hint": problem.hint,
    }


def format_problem(problem: Problem, directory: Path | str) -> str:
    """``DIR/file:line[:col]: severity [rule]: message (hint: ...)``; a problem of the whole
    directory (line 0) reads ``WHERE: severity: message (hint: ...)``."""
    if problem.source.line:
        return f"{directory}/{problem}"
    rule = f" [{problem.rule_id}]" if problem.rule_id else ""
    hint = f" (hint: {problem.hint})" if problem.hint else ""
    return f"{problem.source.file}: {problem.severity}{rule}: {problem.message}{hint}"
