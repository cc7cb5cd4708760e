"""Attribute schemas: what declared principal and resource types may carry.

A policy set may declare, per principal type (`principal_types:`) and resource type
(`resource_types:`), the attributes and their JSON-Schema-like types. Then:

- at load, a condition reading `principal.attributes.X` (or `resource.attributes.X`, `has(...)`,
  `...attributes["X"]`) where no declared type that the rule can see has X is refused, with a
  "did you mean";
- at request time, `conform` refuses an entity of a declared type whose attributes do not match
  its schema (a wrong type, or an attribute the type does not declare); the gRPC and AuthZEN edges
  both call it and answer INVALID_ARGUMENT naming the attribute.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from typing import Any

from cel_expr_python import cel

from authz.policy import cel_ast
from authz.policy.model import AttributeSpec, EntityType, Problem, Rule, Source


class AttributeRefused(ValueError):
    """An entity's attributes do not match its type's declared schema."""

    def __init__(self, path: str, message: str) -> None:
        self.path = path
        super().__init__(f"{path}: {message}")


def attribute_problems(
    rule: Rule,
    program: cel.Expression,
    principal_types: Mapping[str, EntityType],
    resource_types: Mapping[str, EntityType],
) -> list[Problem]:
    """Attribute reads of a type-checked condition that no declared schema allows."""
    root = cel_ast.parse(program)
    if root is None:
        return []
    problems = _comparison_problems(rule, root, principal_types, resource_types)
    for variable, name, offset in _attribute_reads(root):
        visible = _visible(rule, variable, principal_types, resource_types)
        # Only where every type the rule can see declares a schema is a name provably wrong.
        if not visible or any(t.attributes is None for t in visible):
            continue
        declared = sorted({a.name for t in visible for a in t.attributes or ()})
        if name in declared:
            continue
        close = difflib.get_close_matches(name, declared, n=1, cutoff=0.6)
        types = ", ".join(t.name for t in visible)
        source, column = _position(rule, offset)
        problems.append(
            Problem(
                source,
                f"{variable}.attributes.{name}: no {variable} type this rule applies to "
                f"({types}) declares attribute {name!r}",
                rule_id=rule.id,
                column=column,
                hint=(f"did you mean {close[0]!r}? " if close else "")
                + f"declared: {', '.join(declared) or '(none)'}",
            )
        )
    return problems


_COMPARISONS = {"_==_", "_!=_", "_<_", "_<=_", "_>_", "_>=_"}


def _visible(
    rule: Rule,
    variable: str,
    principal_types: Mapping[str, EntityType],
    resource_types: Mapping[str, EntityType],
) -> list[EntityType]:
    if variable == "principal":
        return list(principal_types.values())
    if rule.resource_types:
        return [resource_types[t] for t in rule.resource_types if t in resource_types]
    return list(resource_types.values())


def _comparison_problems(
    rule: Rule,
    root: cel_ast.Node,
    principal_types: Mapping[str, EntityType],
    resource_types: Mapping[str, EntityType],
) -> list[Problem]:
    """A declared attribute compared with a constant of another kind (`seats == "3"`), when every
    type the rule can see that declares the attribute gives it the same type."""
    problems = []
    for node in root.walk():
        if node.kind != "call" or node.name not in _COMPARISONS or len(node.args) != 2:
            continue
        for read, other in (node.args, tuple(reversed(node.args))):
            found = _attribute_read(read)
            if found is None or other.kind != "const":
                continue
            variable, name = found
            specs = {
                spec.type
                for t in _visible(rule, variable, principal_types, resource_types)
                if (spec := t.attribute(name)) is not None
            }
            if len(specs) != 1:
                continue
            [declared] = specs
            if declared in ("array", "object") or _is(declared, other.value):
                continue
            if other.value is None or isinstance(other.value, bytes):
                continue
            source, column = _position(rule, node.offset)
            problems.append(
                Problem(
                    source,
                    f"{variable}.attributes.{name} is declared {_article(declared)} but is "
                    f"compared with {_kind(other.value)}",
                    rule_id=rule.id,
                    column=column,
                    hint=f"compare it with {_article(declared)} (see its type's 'attributes:')",
                )
            )
    return problems


def _attribute_read(node: cel_ast.Node) -> tuple[str, str] | None:
    """(variable, name) when `node` is VAR.attributes.NAME or VAR.attributes["NAME"]."""
    target, name = None, ""
    if node.kind == "select" and node.operand is not None:
        target, name = node.operand, node.name
    elif node.kind == "call" and node.name == "_[_]" and len(node.args) == 2:
        key = node.args[1]
        if key.kind == "const" and isinstance(key.value, str):
            target, name = node.args[0], key.value
    if (
        target is not None
        and target.kind == "select"
        and target.name == "attributes"
        and target.operand is not None
        and target.operand.kind == "ident"
        and target.operand.name in ("principal", "resource")
    ):
        return target.operand.name, name
    return None


def _attribute_reads(root: cel_ast.Node) -> list[tuple[str, str, int]]:
    """(variable, attribute name, offset) for each `VAR.attributes.NAME` or
    `VAR.attributes["NAME"]` in the condition."""
    found = []
    for node in root.walk():
        read = _attribute_read(node)
        if read is not None:
            found.append((*read, node.offset))
    return found


def _position(rule: Rule, offset: int) -> tuple[Source, int]:
    source = rule.when_source or rule.source
    if offset < 0:
        return source, 0
    before = rule.when[:offset]
    line = before.count("\n")
    column = offset - (before.rfind("\n") + 1) + 1 + source.column_offset
    return Source(source.file, source.line + line), column


# -- requests ------------------------------------------------------------------------------------


def conform(
    kind: str, entity_type: str, attributes: Mapping[str, Any], types: Mapping[str, EntityType]
) -> None:
    """Raise AttributeRefused when `attributes` break the schema of a declared `entity_type`
    (`kind` is "principal" or "resource", for the message). Types without a schema, and types
    not declared, take any attributes."""
    declared = types.get(entity_type)
    if declared is None or declared.attributes is None:
        return
    for name, value in attributes.items():
        spec = declared.attribute(name)
        path = f"{kind}.attributes.{name}"
        if spec is None:
            known = [a.name for a in declared.attributes]
            close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
            raise AttributeRefused(
                path,
                f"{kind} type {entity_type!r} declares no attribute {name!r}"
                + (f" (did you mean {close[0]!r}?)" if close else "")
                + f"; declared: {', '.join(known) or '(none)'}",
            )
        problem = _type_problem(spec, value)
        if problem:
            raise AttributeRefused(path, problem)


def conform_request(
    policy_set: Any,
    principal: tuple[str, Mapping[str, Any]] | None,
    resources: Iterable[tuple[str, Mapping[str, Any]]],
) -> None:
    """The one conformance check the request edges call: the principal (type, attributes),
    if the caller named one, and each resource, against the serving set's schemas."""
    if principal is not None:
        conform("principal", principal[0], principal[1], policy_set.principal_types)
    for resource_type, attributes in resources:
        conform("resource", resource_type, attributes, policy_set.entity_resource_types)


def _type_problem(spec: AttributeSpec, value: Any) -> str:
    if _is(spec.type, value):
        if spec.type == "array" and spec.items:
            for index, item in enumerate(value):
                if not _is(spec.items, item):
                    return f"item {index} must be {_article(spec.items)}, not {_kind(item)}"
        return ""
    wanted = f"an array of {spec.items}" if spec.items else _article(spec.type)
    return f"must be {wanted}, not {_kind(value)}"


def _is(type_name: str, value: Any) -> bool:
    if type_name == "string":
        return isinstance(value, str)
    if type_name == "boolean":
        return isinstance(value, bool)
    if type_name == "integer":
        return (isinstance(value, int) and not isinstance(value, bool)) or (
            isinstance(value, float) and value.is_integer()
        )
    if type_name == "number":
        return isinstance(value, int | float) and not isinstance(value, bool)
    if type_name == "array":
        return isinstance(value, list | tuple)
    if type_name == "object":
        return isinstance(value, Mapping)
    return True


def _article(type_name: str) -> str:
    return f"an {type_name}" if type_name[0] in "aeiou" else f"a {type_name}"


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list | tuple):
        return "an array"
    if isinstance(value, Mapping):
        return "an object"
    return type(value).__name__
