"""YAML policy files → model. Every rule remembers its file and line.

The loader walks PyYAML's node tree (not plain dicts) so that each value keeps its position,
and collects every problem in the directory instead of stopping at the first.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from authz.policy.model import Effect, Policy, Rule, Source

POLICY_KEYS = {"name", "description", "actions", "rules"}
RULE_KEYS = {"id", "effect", "actions", "resource_types", "when", "reason"}
REQUIRED_RULE_KEYS = ("id", "effect", "actions", "reason")
_ID = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")
_ACTION = re.compile(r"^[a-z0-9_*][a-z0-9_.*-]*$")


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with a policy set, with where it is and how to fix it."""

    source: Source
    message: str
    rule_id: str = ""
    hint: str = ""
    severity: str = "error"  # "error" or "warning"
    column: int = 0

    def __str__(self) -> str:
        where = f"{self.source}:{self.column}" if self.column else str(self.source)
        rule = f" [{self.rule_id}]" if self.rule_id else ""
        hint = f" (hint: {self.hint})" if self.hint else ""
        return f"{where}: {self.severity}{rule}: {self.message}{hint}"


class PolicyError(Exception):
    """The policy set was refused; nothing from it is used."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


@dataclass(frozen=True, slots=True)
class LoadedSet:
    policies: tuple[Policy, ...]
    revision: str
    directory: Path


def policy_files(directory: Path) -> list[Path]:
    """Policy files are *.yaml / *.yml directly in the directory; test suites live in tests/."""
    return sorted(p for p in directory.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())


def revision_of(files: list[tuple[str, bytes]]) -> str:
    """A content hash of the whole set: same files, same revision, on any machine."""
    digest = hashlib.sha256()
    for name, data in sorted(files):
        digest.update(name.encode() + b"\0" + hashlib.sha256(data).digest())
    return digest.hexdigest()[:16]


def load_policy_dir(directory: Path | str) -> LoadedSet:
    """Load every policy file; raise PolicyError listing every problem if anything is wrong."""
    directory = Path(directory)
    if not directory.is_dir():
        raise PolicyError([Problem(Source(str(directory), 0), "policy directory does not exist")])
    raw: list[tuple[str, bytes]] = []
    policies: list[Policy] = []
    problems: list[Problem] = []
    for path in policy_files(directory):
        data = path.read_bytes()
        raw.append((path.name, data))
        policy = parse_policy(path.name, data.decode("utf-8", errors="replace"), problems)
        if policy is not None:
            policies.append(policy)
    if not raw:
        problems.append(
            Problem(Source(str(directory), 0), "no policy files (*.yaml) found", hint="add one")
        )
    _check_unique(policies, problems)
    if any(p.severity == "error" for p in problems):
        raise PolicyError(problems)
    return LoadedSet(tuple(policies), revision_of(raw), directory)


def _check_unique(policies: list[Policy], problems: list[Problem]) -> None:
    seen_policy: dict[str, Source] = {}
    seen_rule: dict[str, Source] = {}
    seen_action: dict[str, Source] = {}
    for policy in policies:
        if policy.name in seen_policy:
            problems.append(
                Problem(
                    policy.source,
                    f"policy name {policy.name!r} is also used at {seen_policy[policy.name]}",
                    hint="give each policy file its own name",
                )
            )
        seen_policy.setdefault(policy.name, policy.source)
        for rule in policy.rules:
            if rule.id in seen_rule:
                problems.append(
                    Problem(
                        rule.source,
                        f"duplicate rule id {rule.id!r} (first defined at {seen_rule[rule.id]})",
                        rule_id=rule.id,
                        hint="rule ids must be unique across the whole policy set",
                    )
                )
            seen_rule.setdefault(rule.id, rule.source)
        for action, _ in policy.actions:
            if action in seen_action:
                problems.append(
                    Problem(
                        policy.source,
                        f"action {action!r} is catalogued twice (also at {seen_action[action]})",
                        hint="declare each action once",
                    )
                )
            seen_action.setdefault(action, policy.source)


def _src(file: str, node: yaml.Node) -> Source:
    return Source(file, node.start_mark.line + 1)


def parse_policy(file: str, text: str, problems: list[Problem]) -> Policy | None:
    """Parse one file's text. Problems are appended; None when the file is unusable."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except RecursionError:
        problems.append(
            Problem(Source(file, 1), "YAML nested too deeply to read", hint="flatten the file")
        )
        return None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark else 1
        column = mark.column + 1 if mark else 0
        problem = getattr(exc, "problem", None) or str(exc)
        problems.append(
            Problem(
                Source(file, line),
                f"YAML syntax error: {problem}",
                column=column,
                hint="check indentation and quoting",
            )
        )
        return None
    if not isinstance(root, yaml.MappingNode):
        line = root.start_mark.line + 1 if root is not None else 1
        problems.append(
            Problem(Source(file, line), "a policy file must be a mapping with name and rules")
        )
        return None
    fields = _mapping(file, root, POLICY_KEYS, "policy", problems)
    name = _string(file, fields.get("name"), "name", problems, required_in=root)
    if name and not _ID.match(name):
        problems.append(
            Problem(
                _src(file, fields["name"]),
                f"policy name {name!r} is not a simple identifier",
                hint="use lower-case letters, digits, '-', '_' and '.'",
            )
        )
    description = _string(file, fields.get("description"), "description", problems)
    actions = _catalogue(file, fields.get("actions"), problems)
    rules: list[Rule] = []
    rules_node = fields.get("rules")
    if rules_node is None:
        if not actions:
            problems.append(
                Problem(_src(file, root), "policy has no rules", hint="add a 'rules:' list")
            )
    elif not isinstance(rules_node, yaml.SequenceNode):
        problems.append(Problem(_src(file, rules_node), "'rules' must be a list of rules"))
    else:
        for item in rules_node.value:
            rule = _rule(file, name or "?", item, problems)
            if rule is not None:
                rules.append(rule)
    return Policy(name or "?", description, tuple(rules), tuple(actions), _src(file, root))


def _mapping(
    file: str, node: yaml.Node, allowed: set[str], what: str, problems: list[Problem]
) -> dict[str, yaml.Node]:
    fields: dict[str, yaml.Node] = {}
    for key_node, value_node in node.value:
        key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
        if key not in allowed:
            problems.append(
                Problem(
                    _src(file, key_node),
                    f"unknown {what} field {key!r}",
                    hint=f"allowed fields: {', '.join(sorted(allowed))}",
                )
            )
            continue
        if key in fields:
            problems.append(Problem(_src(file, key_node), f"field {key!r} appears twice"))
        fields[key] = value_node
    return fields


def _string(
    file: str,
    node: yaml.Node | None,
    name: str,
    problems: list[Problem],
    *,
    required_in: yaml.Node | None = None,
    rule_id: str = "",
) -> str:
    if node is None:
        if required_in is not None:
            problems.append(
                Problem(
                    _src(file, required_in), f"missing required field {name!r}", rule_id=rule_id
                )
            )
        return ""
    if not isinstance(node, yaml.ScalarNode) or node.tag != "tag:yaml.org,2002:str":
        problems.append(Problem(_src(file, node), f"{name!r} must be a string", rule_id=rule_id))
        return ""
    return str(node.value)


def _string_list(
    file: str, node: yaml.Node, name: str, problems: list[Problem], rule_id: str
) -> tuple[str, ...]:
    items = node.value if isinstance(node, yaml.SequenceNode) else [node]
    values = []
    for item in items:
        value = _string(file, item, name, problems, rule_id=rule_id)
        if value:
            values.append(value)
    return tuple(values)


def _catalogue(file: str, node: yaml.Node | None, problems: list[Problem]) -> list[tuple[str, str]]:
    if node is None:
        return []
    if not isinstance(node, yaml.MappingNode):
        problems.append(
            Problem(
                _src(file, node),
                "'actions' must map each action name to its description",
                hint="e.g. 'dashboard.view: Open the add-on dashboard'",
            )
        )
        return []
    entries = []
    for key_node, value_node in node.value:
        action = str(key_node.value)
        if not _ACTION.match(action) or "*" in action:
            problems.append(
                Problem(
                    _src(file, key_node),
                    f"catalogued action {action!r} is not a valid name",
                    hint="names are lower-case words joined by '.', without globs",
                )
            )
            continue
        entries.append((action, _string(file, value_node, action, problems)))
    return entries


def _rule(file: str, policy: str, node: yaml.Node, problems: list[Problem]) -> Rule | None:
    if not isinstance(node, yaml.MappingNode):
        problems.append(Problem(_src(file, node), "each rule must be a mapping"))
        return None
    before = len(problems)
    fields = _mapping(file, node, RULE_KEYS, "rule", problems)
    rule_id = _string(file, fields.get("id"), "id", problems, required_in=node)
    if rule_id and not _ID.match(rule_id):
        problems.append(
            Problem(
                _src(file, fields["id"]),
                f"rule id {rule_id!r} is not a simple identifier",
                rule_id=rule_id,
                hint="use lower-case letters, digits, '-', '_' and '.'",
            )
        )
    for key in REQUIRED_RULE_KEYS[1:]:
        if key not in fields:
            problems.append(
                Problem(_src(file, node), f"missing required field {key!r}", rule_id=rule_id)
            )
    effect_text = _string(file, fields.get("effect"), "effect", problems, rule_id=rule_id)
    effect = None
    if effect_text:
        try:
            effect = Effect(effect_text.upper())
        except ValueError:
            problems.append(
                Problem(
                    _src(file, fields["effect"]),
                    f"unknown effect {effect_text!r}",
                    rule_id=rule_id,
                    hint="effect is 'allow' or 'deny'",
                )
            )
    actions: tuple[str, ...] = ()
    if "actions" in fields:
        actions = _string_list(file, fields["actions"], "actions", problems, rule_id)
        for action in actions:
            if not _ACTION.match(action):
                problems.append(
                    Problem(
                        _src(file, fields["actions"]),
                        f"action pattern {action!r} is not valid",
                        rule_id=rule_id,
                        hint="e.g. 'dashboard.view' or 'account.*'",
                    )
                )
        if not actions:
            problems.append(
                Problem(_src(file, fields["actions"]), "'actions' is empty", rule_id=rule_id)
            )
    resource_types: tuple[str, ...] = ()
    if "resource_types" in fields:
        resource_types = _string_list(
            file, fields["resource_types"], "resource_types", problems, rule_id
        )
    when_node = fields.get("when")
    when = _string(file, when_node, "when", problems, rule_id=rule_id).strip()
    reason = _string(file, fields.get("reason"), "reason", problems, rule_id=rule_id)
    if len(problems) > before or effect is None:
        return None
    return Rule(
        id=rule_id,
        effect=effect,
        actions=actions,
        reason=reason,
        policy=policy,
        source=_src(file, node),
        resource_types=resource_types,
        when=when,
        when_source=_when_source(file, when_node) if when_node is not None else None,
    )


def _when_source(file: str, node: yaml.Node) -> Source:
    """Where the CEL text starts, so CEL's line:column can be mapped onto the file.

    Block scalars ('|', '>') start on the next line, indented; quoted scalars one past the quote.
    """
    mark = node.start_mark
    if isinstance(node, yaml.ScalarNode) and node.style in ("|", ">"):
        lines = (mark.buffer or "").splitlines()
        body = lines[mark.line + 1] if mark.line + 1 < len(lines) else ""
        return Source(file, mark.line + 2, len(body) - len(body.lstrip(" ")))
    quoted = isinstance(node, yaml.ScalarNode) and node.style in ("'", '"')
    return Source(file, mark.line + 1, mark.column + (1 if quoted else 0))
