"""Evaluation plans: the rules that apply to one (action, resource type), with their conditions
fused into as few CEL programs as possible.

A fused program computes a bitmask — `(c1 ? 1 : 0) + (c2 ? 2 : 0) + …` — so one evaluation says
which conditions hold. If any condition errors or yields a non-bool, the whole program errors and
the engine falls back to evaluating that chunk rule by rule, so errors are still attributed to
their rule and fail closed exactly as before. The fast path is only ever a shortcut.

A plan also knows which fields of the input its conditions read (`projection`): the engine hands
CEL only those, since converting the rest of the input to CEL values is most of the cost.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cel_expr_python import cel

from authz.policy import cel_ast
from authz.policy.inputs import VARIABLE_NAMES
from authz.policy.model import Decision, MatchedRule, Rule

CHUNK = 62  # bits of a CEL int (int64) that stay positive
BATCH_RESOURCES = "__resources"
"""The variable a batched program maps over: the resources of items that share everything else
(`Chunk.batched`). Declared only in the environment batched programs compile in, so no
condition can name it."""

# The input paths a condition reads, e.g. ("principal", "auth", "method"); ("context",) reads
# the whole variable. None: not known (the whole input is passed).
Reads = frozenset[tuple[str, ...]] | None
# variable -> True (the whole value) or a projection of its fields.
Projection = dict[str, Any]


@dataclass(frozen=True, slots=True)
class CompiledRule:
    rule: Rule
    program: cel.Expression | None  # None: no condition, always holds
    resource_types: frozenset[str]
    reads_data: bool = False
    reads: Reads = frozenset()

    @property
    def matched(self) -> MatchedRule:
        rule = self.rule
        return MatchedRule(rule.policy, rule.id, rule.effect, rule.reason)


def reads_of(program: cel.Expression) -> Reads:
    """The input paths a type-checked condition reads: every chain of field selections that
    starts at a declared variable, cut where something else (an index, a call) takes over."""
    root = cel_ast.parse(program)
    if root is None:
        return None
    paths: set[tuple[str, ...]] = set()
    shadowed: set[str] = set()

    def visit(node: cel_ast.Node) -> bool:
        if node.kind == "unknown":
            return False
        if node.kind == "comprehension" and node.name in VARIABLE_NAMES:
            shadowed.add(node.name)
        if node.kind == "select":
            chain = [node.name]
            operand = node.operand
            while operand is not None and operand.kind == "select":
                chain.append(operand.name)
                operand = operand.operand
            if operand is not None and operand.kind == "ident":
                if operand.name in VARIABLE_NAMES:
                    paths.add((operand.name, *reversed(chain)))
                return True
            return operand is None or visit(operand)
        if node.kind == "ident" and node.name in VARIABLE_NAMES:
            paths.add((node.name,))
            return True
        children = [node.operand] if node.operand is not None else []
        return all(visit(child) for child in [*children, *node.args])

    if not visit(root) or shadowed:
        return None
    return frozenset(paths)


def projection_of(rules: tuple[CompiledRule, ...]) -> Projection | None:
    """What the conditions of these rules read, as a tree; None when any read is not known."""
    tree: Projection = {}
    for compiled in rules:
        if compiled.program is None:
            continue
        if compiled.reads is None:
            return None
        for path in compiled.reads:
            node = tree
            for depth, part in enumerate(path):
                if node.get(part) is True:
                    break
                if depth == len(path) - 1:
                    node[part] = True
                else:
                    node = node.setdefault(part, {})
    return tree


def projector(tree: Projection) -> Any:
    """`project` for one tree, as one generated expression: a plan runs it per evaluation. It
    assumes every key is there, as the input builders make it; when one is not (a partial input
    in a test), it falls back to `project`, which leaves the key out."""

    def build(path: str, node: Projection) -> str:
        items = []
        for key, sub in node.items():
            value = f"{path}[{key!r}]"
            items.append(f"{key!r}: {value if sub is True else build(value, sub)}")
        return "{" + ", ".join(items) + "}"

    fast = eval(f"lambda i: {build('i', tree)}")  # noqa: S307 (keys are declared field names)

    def run(value: Mapping[str, Any]) -> dict[str, Any]:
        try:
            return fast(value)  # type: ignore[no-any-return]
        except (KeyError, TypeError):
            return project(value, tree)

    return run


def project(value: Mapping[str, Any], tree: Projection) -> dict[str, Any]:
    """The parts of `value` the tree names (a key the value lacks stays out: CEL then reports
    it missing, as it would have)."""
    out = {}
    for key, sub in tree.items():
        item = value.get(key, _MISSING)
        if item is _MISSING:
            continue
        if sub is True or not isinstance(item, dict):
            out[key] = item
        else:
            out[key] = project(item, sub)
    return out


_MISSING = object()


@dataclass(frozen=True, slots=True)
class Chunk:
    # Positions (in Plan.rules) of the conditional rules this program covers, low bit first.
    positions: tuple[int, ...]
    program: cel.Expression | None  # None: fusing failed; evaluate rule by rule
    # The same mask for many resources at once, `BATCH_RESOURCES.map(resource, mask)`: one
    # bitmask per resource, `resource` bound to each in turn (a comprehension's variable
    # shadows the declared one), every other variable shared (engine.evaluate_many). None: no
    # batch environment, or it did not compile; the items are then evaluated one by one.
    batched: cel.Expression | None = None


@dataclass(slots=True)
class Recall:
    """How Plan.masks_by_input serves: its hits since it was last emptied, and whether it is
    off. It is off from the start for a plan whose conditions may read `data` (the set's
    reference data is large to key on, and a test suite may pass its own). A memo that fills
    up without one hit is turned off for good (for this plan, until the policies reload): its
    conditions read something that never repeats, such as the access fact's age, and every
    key would only cost."""

    hits: int = 0
    off: bool = False


@dataclass(frozen=True, slots=True)
class Plan:
    rules: tuple[CompiledRule, ...]  # every candidate, in file order
    always: tuple[int, ...]  # positions of rules without a condition
    chunks: tuple[Chunk, ...]
    reads_data: bool = False  # some condition here may read `data`
    projection: Projection | None = None  # what the conditions read; None: everything
    # `projection` as one call (plan.projector); None: pass the whole input.
    project: Any = None
    # Each rule's MatchedRule, built once: the engine reports these.
    matched: tuple[MatchedRule, ...] = ()
    # What the conditions read of one resource (`resource`'s part of `project`), as one call:
    # a batched program gets it for each resource.
    project_resource: Any = None
    # The decisions this plan has given, by (action, each chunk's bitmask), when no condition
    # errored: with the rules without a condition, which always hold, the masks say which
    # rules held, and a decision is a function of that and the action alone; so each is built
    # once and shared (authz.policy.engine; bounded by DECISIONS_PER_PLAN). A plan belongs
    # to one policy set, so to one revision.
    decisions: dict[tuple[str, tuple[int, ...]], Decision] = field(
        default_factory=dict, compare=False, hash=False
    )
    # Each chunk's bitmask by what the conditions read (authz.policy.engine._read_key): CEL
    # is deterministic, so equal values read give equal masks, and a question asked again
    # (the same principal and resource, attributes and facts) costs a lookup, not an
    # evaluation. Kept only when nothing errored; emptied when MASKS_PER_PLAN are kept.
    masks_by_input: dict[Any, tuple[int, ...]] = field(
        default_factory=dict, compare=False, hash=False
    )
    recall: Recall = field(default_factory=Recall, compare=False, hash=False)


DECISIONS_PER_PLAN = 1024
MASKS_PER_PLAN = 4096
MASKS_KEY_BYTES = 1024
"""Inputs whose masks a plan keeps, and the largest (marshalled) it keeps: at most 4 MiB."""


def build_plan(
    env: cel.Env, rules: tuple[CompiledRule, ...], batch_env: cel.Env | None = None
) -> Plan:
    always = tuple(i for i, r in enumerate(rules) if r.program is None)
    conditional = [i for i, r in enumerate(rules) if r.program is not None]
    chunks = []
    for start in range(0, len(conditional), CHUNK):
        positions = tuple(conditional[start : start + CHUNK])
        covered = [rules[i] for i in positions]
        chunks.append(Chunk(positions, _fuse(env, covered), _batched(batch_env, covered)))
    projection = projection_of(rules)
    reads_data = any(r.reads_data for r in rules)
    return Plan(
        rules,
        always,
        tuple(chunks),
        reads_data,
        projection,
        project=projector(projection) if projection is not None else None,
        matched=tuple(r.matched for r in rules),
        project_resource=_resource_projector(projection),
        recall=Recall(off=reads_data),
    )


def _resource_projector(projection: Projection | None) -> Any:
    read = True if projection is None else projection.get("resource", {})
    if read is True:
        return lambda resource: resource
    if not read:  # no condition reads the resource: each is an empty map
        return lambda resource: {}
    return projector(read)


def _batched(batch_env: cel.Env | None, rules: list[CompiledRule]) -> cel.Expression | None:
    if batch_env is None:
        return None
    try:
        return batch_env.compile(f"{BATCH_RESOURCES}.map(resource, {_mask_text(rules)})")
    except Exception:  # e.g. CEL's parser depth limit: evaluate item by item
        return None


def _fuse(env: cel.Env, rules: list[CompiledRule]) -> cel.Expression | None:
    if len(rules) == 1:
        return None  # one condition: the rule's own program is as fast
    try:
        return env.compile(_mask_text(rules))
    except Exception:  # e.g. CEL's parser depth limit: evaluate these rule by rule
        return None


def _mask_text(rules: list[CompiledRule]) -> str:
    """`(c1 ? 1 : 0) + (c2 ? 2 : 0) + …` for these rules' conditions."""
    # Newlines keep a `//` comment inside a condition from swallowing the rest.
    terms = [f"((\n{r.rule.when}\n) ? {1 << bit} : 0)" for bit, r in enumerate(rules)]
    return _balanced_sum(terms)


def _balanced_sum(terms: list[str]) -> str:
    """`a + b + c + d` as `(a + b) + (c + d)`: CEL's parser limits nesting to 32 levels."""
    while len(terms) > 1:
        terms = [
            f"({terms[i]} + {terms[i + 1]})" if i + 1 < len(terms) else terms[i]
            for i in range(0, len(terms), 2)
        ]
    return terms[0]
