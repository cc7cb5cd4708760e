"""Policy, Rule, Effect, Decision, Problem: plain values that only describe themselves."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from authz.policy.searchable import Searchable


class Effect(enum.StrEnum):
    ALLOW = "ALLOW"
    DENY = "DENY"


@dataclass(frozen=True, slots=True)
class Source:
    """Where something was written: the policy file name and its 1-based line."""

    file: str
    line: int
    # For CEL text: the file column of the condition's first character, minus one.
    column_offset: int = 0

    def __str__(self) -> str:
        # Line 0: the whole file (or directory), e.g. one that cannot be read at all.
        return f"{self.file}:{self.line}" if self.line else self.file


@dataclass(frozen=True, slots=True)
class Rule:
    id: str
    effect: Effect
    actions: tuple[str, ...]
    reason: str
    policy: str
    source: Source
    resource_types: tuple[str, ...] = ()
    when: str = ""
    when_source: Source | None = None


ATTRIBUTE_TYPES = ("string", "integer", "number", "boolean", "array", "object")


@dataclass(frozen=True, slots=True)
class AttributeSpec:
    """One declared attribute, JSON-Schema-like: `type`, and `items` (the type of an array's
    elements) when the type is array."""

    name: str
    type: str  # one of ATTRIBUTE_TYPES
    items: str = ""
    source: Source | None = None


@dataclass(frozen=True, slots=True)
class EntityType:
    """A declared principal or resource type. `attributes` is None when the type declares no
    schema (anything goes), else every attribute it may carry."""

    kind: str  # "principal" or "resource"
    name: str
    description: str
    attributes: tuple[AttributeSpec, ...] | None
    source: Source

    def attribute(self, name: str) -> AttributeSpec | None:
        return next((a for a in self.attributes or () if a.name == name), None)


@dataclass(frozen=True, slots=True)
class Policy:
    name: str
    description: str
    rules: tuple[Rule, ...]
    # Action catalogue entries this file declares: action name -> description.
    actions: tuple[tuple[str, str], ...]
    source: Source
    # Resource type catalogue entries this file declares: type name -> description.
    resource_types: tuple[tuple[str, str], ...] = ()
    # `catalogue: open | closed` as the file declares it; "" when it says nothing.
    catalogue: str = ""
    # The data lists subject and resource search take candidates from (authz.policy.searchable).
    searchable: tuple[Searchable, ...] = ()
    # Declared types with their attribute schemas (`principal_types:`, `resource_types:`).
    principal_types: tuple[EntityType, ...] = ()
    entity_types: tuple[EntityType, ...] = ()


@dataclass(frozen=True, slots=True)
class MatchedRule:
    policy: str
    rule_id: str
    effect: Effect
    reason: str


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome of one evaluation, explained: who decided, why, and what went wrong."""

    effect: Effect
    # Every rule whose condition held (deny rules whose condition errored count as held).
    matched: tuple[MatchedRule, ...]
    # The reasons of the rules that decided (deny reasons for a deny, allow reasons for an allow),
    # or the default-deny explanation when no rule matched.
    reasons: tuple[str, ...]
    errors: tuple[str, ...]
    policy_revision: str
    # True when no rule matched and the engine's default deny decided (not a refusal before
    # evaluation, not a rule).
    by_default: bool = False

    @property
    def allowed(self) -> bool:
        return self.effect is Effect.ALLOW

    @property
    def deciding(self) -> tuple[MatchedRule, ...]:
        """The matched rules of the winning effect (none for a default deny)."""
        return tuple(m for m in self.matched if m.effect is self.effect)


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
