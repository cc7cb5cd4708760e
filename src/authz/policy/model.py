"""Policy, Rule, Effect, Decision: plain values, no behaviour beyond describing themselves."""

from __future__ import annotations

import enum
from dataclasses import dataclass


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
        return f"{self.file}:{self.line}"


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


@dataclass(frozen=True, slots=True)
class Policy:
    name: str
    description: str
    rules: tuple[Rule, ...]
    # Action catalogue entries this file declares: action name -> description.
    actions: tuple[tuple[str, str], ...]
    source: Source


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

    @property
    def allowed(self) -> bool:
        return self.effect is Effect.ALLOW
