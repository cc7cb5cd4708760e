"""YAML policy files → model. Every rule remembers its file and line.

The loader walks PyYAML's node tree (not plain dicts) so that each value keeps its position,
and collects every problem in the directory instead of stopping at the first.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from authz.policy.data import load_data
from authz.policy.files import MAX_POLICY_FILE_BYTES, decode_utf8, entries, read_file, text_problem
from authz.policy.model import (
    ATTRIBUTE_TYPES,
    AttributeSpec,
    Effect,
    EntityType,
    Policy,
    PolicyError,
    Problem,
    Rule,
    Source,
)
from authz.policy.searchable import check_searchable, parse_searchable

POLICY_KEYS = {
    "name",
    "description",
    "actions",
    "resource_types",
    "principal_types",
    "catalogue",
    "searchable",
    "rules",
}
CATALOGUE_MODES = ("open", "closed")
RULE_KEYS = {"id", "effect", "actions", "resource_types", "when", "reason"}
REQUIRED_RULE_KEYS = ("id", "effect", "actions", "reason")
_ID = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")
# Upper case too: HTTP-style actions (GET, POST) are common. Names are compared exactly.
_ACTION = re.compile(r"^[A-Za-z0-9_*][A-Za-z0-9_.*-]*$")
_RESOURCE_TYPE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:-]*$")


@dataclass(frozen=True, slots=True)
class LoadedSet:
    policies: tuple[Policy, ...]
    revision: str
    directory: Path
    # The reference data of data/*.yaml|json (see authz.policy.data): file stem -> value.
    data: dict[str, Any] = field(default_factory=dict)


POLICY_SUFFIXES = (".yaml", ".yml")


def policy_files(directory: Path) -> list[Path]:
    """Policy files are *.yaml / *.yml directly in the directory (test suites live in tests/,
    data in data/). Every entry with such a name counts, so one that is not a readable regular
    file refuses the set instead of silently dropping its rules."""
    return entries(directory, POLICY_SUFFIXES)


def revision_of(files: list[tuple[str, bytes]]) -> str:
    """A content hash of the whole set: same files, same revision, on any machine."""
    digest = hashlib.sha256()
    for name, data in sorted(files):
        digest.update(name.encode() + b"\0" + hashlib.sha256(data).digest())
    return digest.hexdigest()[:16]


def load_policy_dir(directory: Path | str) -> LoadedSet:
    """Load every policy file and the data folder; raise PolicyError listing every problem if
    anything is wrong. Whatever goes wrong is a PolicyError, never another exception."""
    directory = Path(directory)
    if not directory.is_dir():
        raise PolicyError([Problem(Source(str(directory), 0), "policy directory does not exist")])
    raw: list[tuple[str, bytes]] = []
    policies: list[Policy] = []
    problems: list[Problem] = []
    try:
        paths = policy_files(directory)
    except OSError as exc:
        raise PolicyError(
            [Problem(Source(str(directory), 0), f"cannot list: {exc.strerror or exc}")]
        ) from None
    for path in paths:
        content = read_file(path, path.name, MAX_POLICY_FILE_BYTES, problems)
        if content is None:
            continue
        raw.append((path.name, content))
        try:
            text = decode_utf8(content, path.name, problems)
            policy = parse_policy(path.name, text, problems) if text is not None else None
        except Exception as exc:  # a loader bug must refuse the set, not end the caller
            problems.append(_unexpected(path.name, exc))
            continue
        if policy is not None:
            policies.append(policy)
    if not raw and not problems:
        problems.append(
            Problem(Source(str(directory), 0), "no policy files (*.yaml) found", hint="add one")
        )
    try:
        data, data_files = load_data(directory, problems)
    except Exception as exc:
        problems.append(_unexpected("data", exc))
        data, data_files = {}, []
    _check_unique(policies, problems)
    _check_catalogue_modes(policies, problems)
    check_searchable(policies, data, problems)
    if any(p.severity == "error" for p in problems):
        raise PolicyError(problems)
    return LoadedSet(tuple(policies), revision_of(raw + data_files), directory, data)


def _unexpected(name: str, exc: Exception) -> Problem:
    return Problem(
        Source(name, 0),
        f"could not be loaded ({type(exc).__name__}: {exc})",
        hint="report this with the file; the set is refused meanwhile",
    )


def _check_catalogue_modes(policies: list[Policy], problems: list[Problem]) -> None:
    modes = {policy.catalogue: policy for policy in policies if policy.catalogue}
    if len(modes) > 1:
        problems.append(
            Problem(
                modes["closed"].source,
                f"'catalogue: closed' here, but {modes['open'].source.file} declares "
                "'catalogue: open'",
                hint="declare the mode once, in the catalogue file",
            )
        )


def _check_unique(policies: list[Policy], problems: list[Problem]) -> None:
    seen_policy: dict[str, Source] = {}
    seen_rule: dict[str, Source] = {}
    seen_action: dict[str, Source] = {}
    seen_type: dict[str, Source] = {}
    seen_principal: dict[str, Source] = {}
    for policy in policies:
        for principal_type in policy.principal_types:
            if principal_type.name in seen_principal:
                problems.append(
                    Problem(
                        principal_type.source,
                        f"principal type {principal_type.name!r} is declared twice "
                        f"(also at {seen_principal[principal_type.name]})",
                        hint="declare each principal type once",
                    )
                )
            seen_principal.setdefault(principal_type.name, principal_type.source)
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
        for resource_type, _ in policy.resource_types:
            if resource_type in seen_type:
                problems.append(
                    Problem(
                        policy.source,
                        f"resource type {resource_type!r} is catalogued twice "
                        f"(also at {seen_type[resource_type]})",
                        hint="declare each resource type once",
                    )
                )
            seen_type.setdefault(resource_type, policy.source)


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
    actions = _catalogue(file, fields.get("actions"), problems, "actions", _ACTION)
    resource_types = _catalogue(
        file, fields.get("resource_types"), problems, "resource_types", _RESOURCE_TYPE
    )
    entity_types = _entity_types(file, fields.get("resource_types"), "resource", problems)
    principal_types = _entity_types(file, fields.get("principal_types"), "principal", problems)
    _catalogue(file, fields.get("principal_types"), problems, "principal_types", _RESOURCE_TYPE)
    mode = _string(file, fields.get("catalogue"), "catalogue", problems)
    if mode and mode not in CATALOGUE_MODES:
        problems.append(
            Problem(
                _src(file, fields["catalogue"]),
                f"catalogue mode {mode!r} is not one of: {', '.join(CATALOGUE_MODES)}",
                hint="'open' decides actions no catalogue lists; 'closed' (the default) denies "
                "them with ACTION_UNKNOWN",
            )
        )
        mode = ""
    searchable = parse_searchable(file, fields.get("searchable"), problems)
    rules: list[Rule] = []
    rules_node = fields.get("rules")
    if rules_node is None:
        if not actions and not resource_types and not searchable and not principal_types:
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
    return Policy(
        name or "?",
        description,
        tuple(rules),
        tuple(actions),
        _src(file, root),
        tuple(resource_types),
        mode,
        searchable,
        tuple(principal_types),
        tuple(entity_types),
    )


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
    problem = text_problem(node.value)
    if problem:
        message, hint = problem
        problems.append(
            Problem(_src(file, node), f"{name!r}: {message}", rule_id=rule_id, hint=hint)
        )
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


_CATALOGUE_TEXT = {
    # field -> (what one entry is, an example entry)
    "actions": ("action", "'dashboard.view: Open the add-on dashboard'"),
    "resource_types": ("resource type", "'addon: A Heroku add-on (its resource id)'"),
    "principal_types": ("principal type", "'service: A partner service'"),
}
TYPE_KEYS = {"description", "attributes"}
ATTRIBUTE_KEYS = {"type", "items"}


def _catalogue(
    file: str, node: yaml.Node | None, problems: list[Problem], field: str, valid: re.Pattern[str]
) -> list[tuple[str, str]]:
    """A catalogue mapping (`actions:` or `resource_types:`): name -> description."""
    if node is None:
        return []
    what, example = _CATALOGUE_TEXT[field]
    if not isinstance(node, yaml.MappingNode):
        problems.append(
            Problem(
                _src(file, node),
                f"'{field}' must map each {what} name to its description",
                hint=f"e.g. {example}",
            )
        )
        return []
    found = []
    for key_node, value_node in node.value:
        name = str(key_node.value)
        if not isinstance(key_node, yaml.ScalarNode) or not valid.match(name) or "*" in name:
            problems.append(
                Problem(
                    _src(file, key_node),
                    f"catalogued {what} {name!r} is not a valid name",
                    hint="names are words joined by '.', without globs or spaces",
                )
            )
            continue
        if isinstance(value_node, yaml.MappingNode) and field != "actions":
            # A type with a schema: {description, attributes}; _entity_types reads the rest.
            described = next(
                (v for k, v in value_node.value if getattr(k, "value", None) == "description"),
                None,
            )
            found.append((name, _string(file, described, "description", problems)))
            continue
        found.append((name, _string(file, value_node, name, problems)))
    return found


def _entity_types(
    file: str, node: yaml.Node | None, kind: str, problems: list[Problem]
) -> list[EntityType]:
    """Declared principal or resource types; a type written as a mapping may declare the
    attributes its principals or resources carry (JSON-Schema-like), e.g.

        principal_types:
          service:
            description: A partner service
            attributes:
              team: string
              seats: {type: integer}
              scopes: {type: array, items: string}
    """
    if not isinstance(node, yaml.MappingNode):
        return []
    found = []
    for key_node, value_node in node.value:
        name = str(key_node.value)
        if not isinstance(value_node, yaml.MappingNode):
            found.append(EntityType(kind, name, "", None, _src(file, key_node)))
            continue
        fields = _mapping(file, value_node, TYPE_KEYS, f"{kind} type", problems)
        description = ""
        if "description" in fields and isinstance(fields["description"], yaml.ScalarNode):
            description = str(fields["description"].value)
        attributes = None
        if "attributes" in fields:
            attributes = _attributes(file, fields["attributes"], problems)
        found.append(EntityType(kind, name, description, attributes, _src(file, key_node)))
    return found


def _attributes(file: str, node: yaml.Node, problems: list[Problem]) -> tuple[AttributeSpec, ...]:
    if not isinstance(node, yaml.MappingNode):
        problems.append(
            Problem(
                _src(file, node),
                "'attributes' must map each attribute name to its type",
                hint="e.g. 'team: string' or 'seats: {type: integer}'",
            )
        )
        return ()
    specs = []
    for key_node, value_node in node.value:
        name = str(key_node.value)
        if isinstance(value_node, yaml.MappingNode):
            fields = _mapping(file, value_node, ATTRIBUTE_KEYS, "attribute", problems)
            type_name = _string(file, fields.get("type"), "type", problems, required_in=value_node)
            items = _string(file, fields.get("items"), "items", problems)
        else:
            type_name, items = _string(file, value_node, name, problems), ""
        for what, value in (("type", type_name), ("items", items)):
            if value and value not in ATTRIBUTE_TYPES:
                problems.append(
                    Problem(
                        _src(file, value_node),
                        f"attribute {name!r}: unknown {what} {value!r}",
                        hint=f"use one of: {', '.join(ATTRIBUTE_TYPES)}",
                    )
                )
        if items and type_name != "array":
            problems.append(
                Problem(_src(file, value_node), f"attribute {name!r}: 'items' is for arrays")
            )
        specs.append(AttributeSpec(name, type_name, items, _src(file, key_node)))
    return tuple(specs)


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
