"""Evaluation plans: the rules that apply to one (action, resource type), with their conditions
fused into as few CEL programs as possible.

A fused program computes a bitmask — `(c1 ? 1 : 0) + (c2 ? 2 : 0) + …` — so one evaluation says
which conditions hold. If any condition errors or yields a non-bool, the whole program errors and
the engine falls back to evaluating that chunk rule by rule, so errors are still attributed to
their rule and fail closed exactly as before. The fast path is only ever a shortcut.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from cel_expr_python import cel

if TYPE_CHECKING:
    from authz.policy.compile import CompiledRule

CHUNK = 62  # bits of a CEL int (int64) that stay positive


@dataclass(frozen=True, slots=True)
class Chunk:
    # Positions (in Plan.rules) of the conditional rules this program covers, low bit first.
    positions: tuple[int, ...]
    program: cel.Expression | None  # None: fusing failed; evaluate rule by rule


@dataclass(frozen=True, slots=True)
class Plan:
    rules: tuple[CompiledRule, ...]  # every candidate, in file order
    always: tuple[int, ...]  # positions of rules without a condition
    chunks: tuple[Chunk, ...]
    reads_data: bool = False  # some condition here may read `data`


def build_plan(env: cel.Env, rules: tuple[CompiledRule, ...]) -> Plan:
    always = tuple(i for i, r in enumerate(rules) if r.program is None)
    conditional = [i for i, r in enumerate(rules) if r.program is not None]
    chunks = []
    for start in range(0, len(conditional), CHUNK):
        positions = tuple(conditional[start : start + CHUNK])
        chunks.append(Chunk(positions, _fuse(env, [rules[i] for i in positions])))
    return Plan(rules, always, tuple(chunks), any(r.reads_data for r in rules))


def _fuse(env: cel.Env, rules: list[CompiledRule]) -> cel.Expression | None:
    if len(rules) == 1:
        return None  # one condition: the rule's own program is as fast
    # Newlines keep a `//` comment inside a condition from swallowing the rest.
    terms = [f"((\n{r.rule.when}\n) ? {1 << bit} : 0)" for bit, r in enumerate(rules)]
    try:
        return env.compile(_balanced_sum(terms))
    except Exception:  # e.g. CEL's parser depth limit: evaluate these rule by rule
        return None


def _balanced_sum(terms: list[str]) -> str:
    """`a + b + c + d` as `(a + b) + (c + d)`: CEL's parser limits nesting to 32 levels."""
    while len(terms) > 1:
        terms = [
            f"({terms[i]} + {terms[i + 1]})" if i + 1 < len(terms) else terms[i]
            for i in range(0, len(terms), 2)
        ]
    return terms[0]
