"""`searchable:` in a policy file: which lists in `data` hold the subjects and resources that
subject and resource search may return (authz.search).

A search decides every candidate as a Check would, so it needs a finite list of them. Actions
have one, the action catalogue; principals and resources have one only where the policy set's
own reference data lists them. A policy file names those lists by type:

    searchable:
      subjects:
        user: data.users          # principal type -> the data list of its ids
      resources:
        project: data.projects.active

A list is named by its path in `data` (`data.<file stem>` and optionally `.<key>` steps into
mappings) and must be a mapping, whose keys are the ids, or a list of strings (the ids), or a
list of mappings that each have a string `id`. Checked when the set loads, with file:line: a path
that names nothing, or names a value of another shape, refuses the set. A type may be declared
once per kind in the whole set. Types that no file declares are not searchable: a search for
them finds nothing.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import yaml

from authz.policy.model import Policy, Problem, Source

KINDS = ("subjects", "resources")
_PATH = re.compile(r"^data(\.[A-Za-z_][A-Za-z0-9_]*)+$")
_TYPE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:-]*$")
_EXAMPLE = "e.g. 'searchable: {subjects: {user: data.users}}'"


@dataclass(frozen=True, slots=True)
class Searchable:
    """One declared list: the `kind` of entity ("subjects" or "resources"), its `type`, and the
    path of its list in `data` (without the leading "data")."""

    kind: str
    type: str
    path: tuple[str, ...]
    source: Source

    @property
    def reference(self) -> str:
        return ".".join(("data", *self.path))


def parse_searchable(
    file: str, node: yaml.Node | None, problems: list[Problem]
) -> tuple[Searchable, ...]:
    """The `searchable:` mapping of one policy file; problems appended."""
    if node is None:
        return ()
    found: list[Searchable] = []
    if not isinstance(node, yaml.MappingNode):
        problems.append(_problem(file, node, "'searchable' must be a mapping", _EXAMPLE))
        return ()
    for kind_node, types_node in node.value:
        kind = kind_node.value if isinstance(kind_node, yaml.ScalarNode) else None
        if kind not in KINDS:
            problems.append(
                _problem(
                    file,
                    kind_node,
                    f"unknown searchable kind {kind!r}",
                    f"use {' or '.join(KINDS)} (actions are searched in the action catalogue)",
                )
            )
            continue
        if not isinstance(types_node, yaml.MappingNode):
            problems.append(
                _problem(
                    file,
                    types_node,
                    f"'searchable.{kind}' must map each type to a data list",
                    _EXAMPLE,
                )
            )
            continue
        for type_node, path_node in types_node.value:
            name = str(type_node.value) if isinstance(type_node, yaml.ScalarNode) else ""
            path = path_node.value if isinstance(path_node, yaml.ScalarNode) else ""
            if not _TYPE.match(name):
                problems.append(
                    _problem(file, type_node, f"searchable {kind} type {name!r} is not a type")
                )
            elif path_node.tag != "tag:yaml.org,2002:str" or not _PATH.match(path):
                problems.append(
                    _problem(
                        file,
                        path_node,
                        f"searchable.{kind}.{name} must name a list in data, like data.users",
                        "write data.<file stem>, then .<key> for each step into a mapping",
                    )
                )
            else:
                source = Source(file, type_node.start_mark.line + 1)
                found.append(Searchable(kind, name, tuple(path.split(".")[1:]), source))
    return tuple(found)


def check_searchable(
    policies: Iterable[Policy], data: Mapping[str, Any], problems: list[Problem]
) -> None:
    """Every declared list exists in `data` and holds ids; each type is declared once."""
    seen: dict[tuple[str, str], Source] = {}
    for policy in policies:
        for entry in policy.searchable:
            key = (entry.kind, entry.type)
            if key in seen:
                problems.append(
                    Problem(
                        entry.source,
                        f"searchable {entry.kind} type {entry.type!r} is also declared at "
                        f"{seen[key]}",
                        hint="declare each type once",
                    )
                )
                continue
            seen[key] = entry.source
            value = resolve(data, entry.path)
            if value is None or ids_of(value) is None:
                what = "names nothing" if value is None else "is not a list of ids"
                problems.append(
                    Problem(
                        entry.source,
                        f"searchable.{entry.kind}.{entry.type}: {entry.reference} {what}",
                        hint="name a mapping (its keys are the ids), a list of strings, or a "
                        "list of mappings that each have a string 'id'",
                    )
                )


def resolve(data: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    """The value at `path` in `data`, None when a step is missing or not a mapping."""
    value: Any = data
    for step in path:
        if not isinstance(value, Mapping) or step not in value:
            return None
        value = value[step]
    return value


def ids_of(value: Any) -> list[str] | None:
    """The ids a declared list holds, in order; None when it is not a list of ids."""
    if isinstance(value, Mapping):
        return list(value)
    if not isinstance(value, list):
        return None
    if all(isinstance(item, str) for item in value):
        return list(value)
    if all(isinstance(item, Mapping) and isinstance(item.get("id"), str) for item in value):
        return [item["id"] for item in value]
    return None


def _problem(file: str, node: yaml.Node, message: str, hint: str = "") -> Problem:
    return Problem(Source(file, node.start_mark.line + 1), message, hint=hint)
