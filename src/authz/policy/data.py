"""Reference data policies can read: ``data/*.yaml|*.yml|*.json`` beside the policy files.

Each file's stem is a top-level key of the read-only CEL variable ``data``: ``data/users.yaml``
becomes ``data.users``. Only plain JSON values are accepted (strings, numbers, true/false, null,
lists, and mappings with string keys), so a value means the same in YAML and in JSON; YAML's
implicit conversions that surprise (``yes`` → true, ``2025-01-01`` → a date, ``0777`` → 511,
anchors and aliases) are refused with file:line and a hint to quote the value.

The whole set of files is counted in the policy revision, reloaded with the policies, and bounded
(see the limits below). The mapping is built once per policy set and handed to every evaluation
whose rules may read it; decisions whose rules do not read ``data`` never pay for it, and one
that does pays in proportion to its size (see MAX_DATA_VALUES).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from authz.policy.files import decode_utf8, entries, read_file, text_problem
from authz.policy.model import Problem, Source

DATA_DIR = "data"
DATA_SUFFIXES = (".yaml", ".yml", ".json")
MAX_DATA_FILE_BYTES = 1 << 20
MAX_DATA_BYTES = 2 << 20
# Every string, number, bool, null, list and mapping counts one. Reading `data` costs about
# 0.25 µs per value per decision (cel-expr-python 0.1.3 converts the whole mapping on first
# access in each evaluation and takes no pre-converted value), so this bounds it near 5 ms.
MAX_DATA_VALUES = 20_000
MAX_DATA_DEPTH = 32
_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_YAML_TAG = "tag:yaml.org,2002:"
_DECIMAL_INT = re.compile(r"^[-+]?(0|[1-9][0-9]*)$")
_PLAIN_FLOAT = re.compile(r"^[-+]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][-+]?[0-9]+)?$")
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml: ten times faster


_INVALID = object()  # a file whose value was refused (its problems are recorded)


class _Stop(Exception):
    """A limit was reached; the problem is already recorded."""


class _Budget:
    def __init__(self) -> None:
        self.left = MAX_DATA_VALUES
        self.exceeded = False

    def take(self, name: str, problems: list[Problem]) -> None:
        self.left -= 1
        if self.left < 0:
            if not self.exceeded:
                problems.append(
                    Problem(
                        Source(name, 0),
                        f"the data files hold more than {MAX_DATA_VALUES} values",
                        hint="policies pay for the size of data on every decision that reads "
                        "it; keep only what rules need",
                    )
                )
            self.exceeded = True
            raise _Stop


def load_data(
    policy_dir: Path, problems: list[Problem]
) -> tuple[dict[str, Any], list[tuple[str, bytes]]]:
    """(data, [(file name, bytes)]) for ``policy_dir/data``; problems appended. No folder: no
    data (an empty mapping)."""
    directory = policy_dir / DATA_DIR
    if not directory.exists() and not directory.is_symlink():
        return {}, []
    if not directory.is_dir():
        problems.append(
            Problem(
                Source(DATA_DIR, 0),
                "'data' beside the policy files must be a folder of data files",
                hint="move it, or make it a folder holding *.yaml / *.json files",
            )
        )
        return {}, []
    values: dict[str, Any] = {}
    raw: list[tuple[str, bytes]] = []
    origin: dict[str, str] = {}
    budget = _Budget()
    for path in entries(directory, DATA_SUFFIXES):
        name = f"{DATA_DIR}/{path.name}"
        content = read_file(path, name, MAX_DATA_FILE_BYTES, problems)
        if content is None:
            continue
        raw.append((name, content))
        key = path.stem
        if not _KEY.match(key):
            problems.append(
                Problem(
                    Source(name, 0),
                    f"data file name {key!r} cannot be a key of 'data'",
                    hint="name it like users.yaml: letters, digits and '_', not starting with "
                    "a digit (it is read as data.users)",
                )
            )
            continue
        if key in origin:
            problems.append(
                Problem(
                    Source(name, 0),
                    f"data.{key} is also defined by {origin[key]}",
                    hint="keep one file per key",
                )
            )
            continue
        origin[key] = name
        text = decode_utf8(content, name, problems)
        if text is None:
            continue
        try:
            if path.suffix == ".json":
                value = _json_value(text, name, budget, problems)
            else:
                value = _yaml_value(text, name, budget, problems)
        except _Stop:
            break
        if value is not _INVALID:
            values[key] = value
    total = sum(len(content) for _, content in raw)
    if total > MAX_DATA_BYTES:
        problems.append(
            Problem(
                Source(DATA_DIR, 0),
                f"the data files are larger than {MAX_DATA_BYTES >> 20} MiB together",
                hint="keep only what rules need",
            )
        )
    return values, raw


# -- YAML: walk the node tree, so every problem has its line ------------------------------------


def _yaml_value(text: str, name: str, budget: _Budget, problems: list[Problem]) -> Any:
    try:
        root = yaml.compose(text, Loader=_Loader)
    except RecursionError:
        problems.append(Problem(Source(name, 1), "YAML nested too deeply to read"))
        return _INVALID
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc)
        problems.append(
            Problem(
                Source(name, mark.line + 1 if mark else 1),
                f"YAML syntax error: {problem}",
                column=mark.column + 1 if mark else 0,
                hint="check indentation and quoting",
            )
        )
        return _INVALID
    if root is None:
        problems.append(
            Problem(Source(name, 1), "the data file is empty", hint="write a value, e.g. {}")
        )
        return _INVALID
    before = len(problems)
    value = _YamlWalk(name, budget, problems).value(root, "", 1)
    return _INVALID if len(problems) > before else value


class _YamlWalk:
    def __init__(self, name: str, budget: _Budget, problems: list[Problem]) -> None:
        self.name = name
        self.budget = budget
        self.problems = problems
        self.seen: set[int] = set()

    def problem(self, node: yaml.Node, path: str, message: str, hint: str = "") -> None:
        where = f"{path}: " if path else ""
        self.problems.append(
            Problem(
                Source(self.name, node.start_mark.line + 1),
                f"{where}{message}",
                column=node.start_mark.column + 1,
                hint=hint,
            )
        )

    def value(self, node: yaml.Node, path: str, depth: int) -> Any:
        self.budget.take(self.name, self.problems)
        if id(node) in self.seen:
            self.problem(
                node,
                path,
                "anchors and aliases (&name, *name) are not allowed in data files",
                "write the value out where it is used",
            )
            return None
        self.seen.add(id(node))
        if depth > MAX_DATA_DEPTH:
            self.problem(node, path, f"nested deeper than {MAX_DATA_DEPTH} levels", "flatten it")
            raise _Stop
        if isinstance(node, yaml.ScalarNode):
            return self.scalar(node, path)
        if isinstance(node, yaml.SequenceNode) and node.tag == _YAML_TAG + "seq":
            return [
                self.value(item, f"{path}[{index}]", depth + 1)
                for index, item in enumerate(node.value)
            ]
        if isinstance(node, yaml.MappingNode) and node.tag == _YAML_TAG + "map":
            return self.mapping(node, path, depth)
        self.problem(node, path, f"YAML type {node.tag!r} is not a plain JSON value")
        return None

    def mapping(self, node: yaml.MappingNode, path: str, depth: int) -> dict[str, Any]:
        result: dict[str, Any] = {}
        for key_node, value_node in node.value:
            if not (isinstance(key_node, yaml.ScalarNode) and key_node.tag == _YAML_TAG + "str"):
                self.problem(
                    key_node,
                    path,
                    f"mapping key {getattr(key_node, 'value', '?')!r} is not a string",
                    "quote the key (JSON keys are strings)",
                )
                continue
            key = key_node.value
            child = f"{path}.{key}" if path else key
            if key in result:
                self.problem(key_node, path, f"key {key!r} appears twice", "keep one of them")
                continue
            problem = text_problem(key)
            if problem:
                self.problem(key_node, child, problem[0], problem[1])
                continue
            result[key] = self.value(value_node, child, depth + 1)
        return result

    def scalar(self, node: yaml.ScalarNode, path: str) -> Any:
        text = node.value
        kind = node.tag[len(_YAML_TAG) :] if node.tag.startswith(_YAML_TAG) else node.tag
        quote = f'quote it ("{text}") if it is a string'
        if kind == "str":
            problem = text_problem(text)
            if problem:
                self.problem(node, path, problem[0], problem[1])
            return text
        if kind == "null":
            return None
        if kind == "bool":
            if text.lower() not in ("true", "false"):
                self.problem(
                    node, path, f"YAML reads {text!r} as a boolean", f"{quote}, or write true/false"
                )
            return text.lower() == "true"
        if kind == "int":
            if not _DECIMAL_INT.match(text):
                self.problem(
                    node, path, f"YAML reads {text!r} as a number in a non-decimal form", quote
                )
                return None
            return int(text)
        if kind == "float":
            number = float(text) if _PLAIN_FLOAT.match(text) else math.nan
            if not math.isfinite(number):
                self.problem(node, path, f"{text!r} is not a finite decimal number", quote)
                return None
            return number
        self.problem(node, path, f"YAML reads {text!r} as a {kind}, not a plain JSON value", quote)
        return None


# -- JSON: the standard parser, then the same checks by path -----------------------------------


def _json_value(text: str, name: str, budget: _Budget, problems: list[Problem]) -> Any:
    duplicates: list[str] = []

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        result: dict[str, Any] = {}
        for key, value in items:
            if key in result:
                duplicates.append(key)
            result[key] = value
        return result

    def constant(word: str) -> Any:
        raise ValueError(f"{word} is not a JSON number")

    try:
        value = json.loads(text, object_pairs_hook=pairs, parse_constant=constant)
    except json.JSONDecodeError as exc:
        problems.append(
            Problem(
                Source(name, exc.lineno),
                f"JSON syntax error: {exc.msg}",
                column=exc.colno,
                hint="check commas, quotes and brackets",
            )
        )
        return _INVALID
    except (ValueError, RecursionError) as exc:
        message = str(exc) if isinstance(exc, ValueError) else "nested too deeply to read"
        problems.append(Problem(Source(name, 0), f"JSON: {message}"))
        return _INVALID
    before = len(problems)
    for key in duplicates:
        problems.append(
            Problem(Source(name, 0), f"key {key!r} appears twice in one object", hint="keep one")
        )
    for path, message, hint in _json_problems(value, "", 1, name, budget, problems):
        problems.append(Problem(Source(name, 0), f"{path or '(top)'}: {message}", hint=hint))
    return _INVALID if len(problems) > before else value


def _json_problems(
    value: Any, path: str, depth: int, name: str, budget: _Budget, problems: list[Problem]
) -> Iterator[tuple[str, str, str]]:
    budget.take(name, problems)
    if depth > MAX_DATA_DEPTH:
        yield path, f"nested deeper than {MAX_DATA_DEPTH} levels", "flatten it"
        raise _Stop
    if isinstance(value, str):
        problem = text_problem(value)
        if problem:
            yield path, *problem
    elif isinstance(value, float) and not math.isfinite(value):
        yield path, f"{value} is not a finite number", "JSON numbers are finite"
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _json_problems(item, f"{path}[{index}]", depth + 1, name, budget, problems)
    elif isinstance(value, dict):
        for key, item in value.items():
            child = f"{path}.{key}" if path else key
            problem = text_problem(key)
            if problem:
                yield child, *problem
            yield from _json_problems(item, child, depth + 1, name, budget, problems)
