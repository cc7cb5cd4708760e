"""Lints: what loads and compiles but is still probably wrong, each with file:line and a fix.

`lint(directory)` runs the loader and the compiler (their problems are errors) and then looks for:

- ``unknown-action`` (error): a rule names an exact action that is not in the action catalogue.
- ``glob-matches-nothing`` (warning): a glob that matches no catalogued action can never match.
- ``constant-false`` (warning): a condition that is false whatever the input can never match.
- ``constant-true`` (warning): a condition that is true whatever the input is no condition.
- ``always-errors`` (warning): a condition that fails at run time whatever the input.
- ``shadowed-allow`` (warning): an allow rule entirely covered by an unconditional deny rule.
- ``unused-action`` (warning): a catalogued action that no rule's action pattern covers.
- ``no-catalogue`` (warning): nothing is catalogued, so action names cannot be checked and every
  action a caller names is decided by the rules.
- ``unknown-resource-type`` (error): a rule names a resource type that the set's resource type
  catalogue (``resource_types:`` in a catalogue file) does not declare.
- ``undeclared-resource-type`` (warning): no catalogue declares resource types, so a rule's
  resource type cannot be checked (a misspelled deny rule silently never applies).
- ``bool-compare-on-dynamic`` (warning): ``x == true`` (or ``!=``, or ``false``) where ``x`` is
  caller-supplied (``principal.attributes``, ``resource.attributes``, ``context``): CEL's
  equality across types answers false instead of failing when ``x`` is ``"true"``, 1 or null.
- ``empty-when`` (error on an allow rule, warning on a deny rule): an explicit ``when`` that is
  empty or blank, which means "always".

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

from authz.policy import cel_ast
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
    try:
        problems.extend(lint_loaded(loaded))
    except Exception as exc:  # a lint bug must not hide the set's state behind a traceback
        problems.append(
            Problem(Source(str(directory), 0), f"the lints failed ({type(exc).__name__}: {exc})")
        )
    problems.sort(key=lambda p: (p.source.file, p.source.line, p.column, p.severity != "error"))
    return LintReport(directory, tuple(problems), policy_set)


def lint_loaded(loaded: LoadedSet) -> list[Problem]:
    """The lint findings for a set that loaded (its conditions need not all compile)."""
    positions = _Positions.of(loaded.directory)
    catalogue = {action for policy in loaded.policies for action, _ in policy.actions}
    rules = [rule for policy in loaded.policies for rule in policy.rules]
    env = new_env()
    programs = _programs(env, rules)
    constants = {rule_id: constant_value(env, program) for rule_id, program in programs.items()}
    problems: list[Problem] = []
    if catalogue:
        for rule in rules:
            problems.extend(_action_problems(rule, catalogue, positions))
    elif rules:
        first = loaded.policies[0].source if loaded.policies else Source("?", 0)
        problems.append(
            LintProblem(
                Source(first.file, 1),
                "no action catalogue is declared, so rule actions cannot be checked and every "
                "action a caller names is decided by the rules",
                hint="declare the actions partner services ask about under 'actions:'; any "
                "other action is then denied with ACTION_UNKNOWN",
                severity="warning",
                code="no-catalogue",
            )
        )
    problems.extend(_resource_type_problems(loaded, rules, positions))
    for rule in rules:
        problem = _constant_problem(rule, constants.get(rule.id), positions)
        if problem is not None:
            problems.append(problem)
        problem = _empty_when_problem(rule)
        if problem is not None:
            problems.append(problem)
        if rule.id in programs:
            problems.extend(_bool_compare_problems(rule, programs[rule.id]))
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
        line, column = positions.item(rule, "actions", index)
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
    try:
        result = program.eval(env.Activation({}))
    except Exception:
        return None
    kind = result.type()
    if kind == cel.Type.BOOL:
        return bool(result.value())
    if kind == cel.Type.ERROR:
        message = str(result.value())
        return None if _MISSING_VARIABLE in message else message
    return None


def _programs(env: cel.Env, rules: list[Rule]) -> dict[str, cel.Expression]:
    """Each rule's compiled condition; rules whose condition does not compile are left out (the
    compiler reports them)."""
    programs: dict[str, cel.Expression] = {}
    for rule in rules:
        if not rule.when:
            continue
        try:
            programs[rule.id] = env.compile(rule.when)
        except Exception:
            continue
    return programs


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


# -- resource types ----------------------------------------------------------------------------


def _resource_type_problems(
    loaded: LoadedSet, rules: list[Rule], positions: _Positions
) -> list[Problem]:
    declared = sorted({name for policy in loaded.policies for name, _ in policy.resource_types})
    used = {name for rule in rules for name in rule.resource_types}
    problems: list[Problem] = []
    for rule in rules:
        for index, name in enumerate(rule.resource_types):
            if name in declared:
                continue
            line, column = positions.item(rule, "resource_types", index)
            where = Source(rule.source.file, line)
            if declared:
                close = difflib.get_close_matches(name, declared, n=1)
                problems.append(
                    LintProblem(
                        where,
                        f"resource type {name!r} is not in the resource type catalogue",
                        rule_id=rule.id,
                        hint=f"did you mean {close[0]!r}?"
                        if close
                        else "declare it under 'resource_types:' in a catalogue file",
                        severity="error",
                        column=column,
                        code="unknown-resource-type",
                    )
                )
                continue
            close = difflib.get_close_matches(name, sorted(used - {name}), n=1)
            consequence = (
                "a misspelling would make this deny rule silently never apply"
                if rule.effect is Effect.DENY
                else "a misspelling would go unnoticed"
            )
            problems.append(
                LintProblem(
                    where,
                    f"resource type {name!r} is declared in no catalogue, so {consequence}",
                    rule_id=rule.id,
                    hint=(f"did you mean {close[0]!r}? " if close else "")
                    + "declare resource types under 'resource_types:' in the catalogue file",
                    severity="warning",
                    column=column,
                    code="undeclared-resource-type",
                )
            )
    return problems


# -- conditions that fail open ------------------------------------------------------------------


def _empty_when_problem(rule: Rule) -> Problem | None:
    if rule.when or rule.when_source is None:
        return None
    allow = rule.effect is Effect.ALLOW
    return LintProblem(
        Source(rule.when_source.file, rule.when_source.line),
        "'when' is empty, which means always: this "
        + ("allow rule allows every request it covers" if allow else "deny rule always applies"),
        rule_id=rule.id,
        hint="write the condition, or remove 'when' if the rule is meant to hold always",
        severity="error" if allow else "warning",
        code="empty-when",
    )


_DYNAMIC_ROOTS = {"principal": "attributes", "resource": "attributes", "context": ""}


def _bool_compare_problems(rule: Rule, program: cel.Expression) -> list[Problem]:
    tree = cel_ast.parse(program)
    if tree is None:
        return []
    problems: list[Problem] = []
    for node in tree.walk():
        if node.kind != "call" or node.name not in ("_==_", "_!=_") or len(node.args) != 2:
            continue
        left, right = node.args
        literal, other = (left, right) if _is_bool(left) else (right, left)
        if not _is_bool(literal):
            continue
        path = _dynamic_path(other)
        if path is None:
            continue
        equals = node.name == "_==_"
        holds = not equals  # what the comparison answers for a value of another type
        applies = "applies" if holds else "does not apply"
        fails_open = holds == (rule.effect is Effect.ALLOW)
        operator = "==" if equals else "!="
        text = f"{path} {operator} {'true' if literal.value else 'false'}"
        start = min((n.offset for n in node.walk() if n.offset >= 0), default=-1)
        source, column = _when_position(rule, start)
        problems.append(
            LintProblem(
                source,
                f"{text!r} compares a caller-supplied value with a bool: when it holds "
                f'"true", 1 or null, CEL answers {str(holds).lower()} instead of failing, so '
                f"the rule quietly {applies}" + (" (fails open)" if fails_open else ""),
                rule_id=rule.id,
                hint=f"use the value itself ('{path}' or '!{path}'): a value of another type "
                f"then makes the condition fail, which fails closed; or test its type first: "
                f"'type({path}) == bool && {path}'",
                severity="warning",
                column=column,
                code="bool-compare-on-dynamic",
            )
        )
    return problems


def _is_bool(node: cel_ast.Node) -> bool:
    return node.kind == "const" and isinstance(node.value, bool)


def _dynamic_path(node: cel_ast.Node) -> str | None:
    """`principal.attributes.x`, `resource.attributes["y"].z`, `context.flag` (as text) when
    the node reads a caller-supplied value, else None."""
    steps: list[str] = []
    while True:
        if node.kind == "select" and node.operand is not None and not node.test_only:
            steps.append(node.name)
            node = node.operand
        elif node.kind == "call" and node.name == "_[_]" and len(node.args) == 2:
            key = node.args[1]
            if key.kind != "const" or not isinstance(key.value, str):
                return None
            steps.append(key.value)
            node = node.args[0]
        else:
            break
    if node.kind != "ident" or node.name not in _DYNAMIC_ROOTS:
        return None
    steps.reverse()
    below = _DYNAMIC_ROOTS[node.name]
    if below and (not steps or steps[0] != below):
        return None
    if not steps or (below and len(steps) < 2):
        return None
    return node.name + "".join(f".{s}" if s.isidentifier() else f"[{s!r}]" for s in steps)


def _when_position(rule: Rule, offset: int) -> tuple[Source, int]:
    """The file line and column of a code point offset in the rule's condition (as CEL errors
    are mapped: exact for plain and quoted conditions, by condition line for folded ones)."""
    where = rule.when_source or rule.source
    if offset < 0 or rule.when_source is None:
        return Source(where.file, where.line), 0
    before = rule.when[:offset]
    line = before.count("\n")
    column = offset - (before.rfind("\n") + 1) + 1
    return Source(where.file, where.line + line), where.column_offset + column


# -- where things are written ------------------------------------------------------------------


@dataclass
class _Positions:
    """Lines (and columns) of rule action items and catalogue entries, read from the YAML."""

    # (file, rule id, field) -> [(line, column) of each item of `actions` / `resource_types`]
    items: dict[tuple[str, str, str], list[tuple[int, int]]]
    # catalogued action -> (line, column)
    catalogue: dict[str, tuple[int, int]]

    @classmethod
    def of(cls, directory: Path) -> _Positions:
        positions = cls({}, {})
        for path in policy_files(directory):
            try:
                root = yaml.compose(path.read_text(encoding="utf-8"), Loader=yaml.SafeLoader)
            except Exception:  # the loader already refused what cannot be read
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
        if not isinstance(rule_id, yaml.ScalarNode):
            return
        for name in ("actions", "resource_types"):
            value = fields.get(name)
            if value is None:
                continue
            items = value.value if isinstance(value, yaml.SequenceNode) else [value]
            self.items[(file, str(rule_id.value), name)] = [_mark(item) for item in items]

    def item(self, rule: Rule, name: str, index: int) -> tuple[int, int]:
        marks = self.items.get((rule.source.file, rule.id, name), [])
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
    """``DIR/file[:line[:col]]: severity [rule]: message (hint: ...)``; a problem of the whole
    directory names the directory (or its tests/ folder) itself."""
    file = Path(problem.source.file)
    if problem.source.line or not (file == Path(directory) or Path(directory) in file.parents):
        return f"{directory}/{problem}"
    return str(problem)
