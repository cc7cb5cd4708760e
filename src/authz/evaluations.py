"""Many evaluations in one request, each with its own subject, action, resource and context (as
AuthZEN's Access Evaluations API sends them), decided through `Decider.check`.

`Decisions` holds what every decision of one request shares: who asked (the caller), the
request id, the API it came through, and each subject resolved once (an SSO session is looked
up once per request, however many items name it). `Decisions.all` decides evaluations in one
decision path call per distinct subject and context, so facts are gathered once per group;
`Decisions.run` adds the short-circuit semantics, deciding one item at a time so that nothing
after the item that decides is decided or recorded.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from authz.decide import Decider, Entity, Item, Outcome, Subject, direct_subject
from authz.search import Asked

EXECUTE_ALL = "execute_all"
DENY_ON_FIRST_DENY = "deny_on_first_deny"
PERMIT_ON_FIRST_PERMIT = "permit_on_first_permit"
SEMANTICS = (EXECUTE_ALL, DENY_ON_FIRST_DENY, PERMIT_ON_FIRST_PERMIT)

Invalid = TypeVar("Invalid")
"""What stands for an item that is not a valid evaluation (the caller's error)."""


@dataclass(frozen=True, slots=True)
class SubjectRef:
    """A subject as a request names it: a principal, or an SSO session by its token."""

    principal: Entity | None
    session_token: str = ""

    @property
    def key(self) -> str:
        """The same text for the same subject."""
        if self.principal is None:
            return canonical(["session", self.session_token])
        return canonical([self.principal.type, self.principal.id, self.principal.attributes])


@dataclass(frozen=True, slots=True)
class Evaluation:
    subject: SubjectRef
    action: str
    resource: Entity
    context: dict[str, Any]
    """The evaluation's context, shared with the others that have the same."""
    item_context: dict[str, Any] = field(default_factory=dict)
    """Context of this evaluation's own, over `context` (keys it does not share)."""


class Decisions:
    """The decisions of one request."""

    def __init__(self, decider: Decider, request_id: str, caller: str, interface: str) -> None:
        self.decider = decider
        self.request_id = request_id
        self.caller = caller
        self.interface = interface
        self._subjects: dict[str, Subject] = {}

    def asked(self, context: Mapping[str, Any]) -> Asked:
        return Asked(context, self.request_id, self.caller, self.interface)

    async def subject(self, ref: SubjectRef) -> Subject:
        key = ref.key
        subject = self._subjects.get(key)
        if subject is None:
            if ref.principal is not None:
                subject = direct_subject(ref.principal)
            else:
                subject = await self.decider.subject_from_session(ref.session_token)
            self._subjects[key] = subject
        return subject

    async def all(self, evaluations: Sequence[Evaluation]) -> list[Outcome]:
        """Every evaluation decided, in order; one decision path call per subject and context."""
        groups: dict[tuple[str, str], list[int]] = {}
        for index, evaluation in enumerate(evaluations):
            key = (evaluation.subject.key, canonical(evaluation.context))
            groups.setdefault(key, []).append(index)
        outcomes: dict[int, Outcome] = {}
        for indexes in groups.values():
            first = evaluations[indexes[0]]
            decided = await self.decider.check(
                await self.subject(first.subject),
                [
                    Item(e.action, e.resource, e.item_context)
                    for e in (evaluations[i] for i in indexes)
                ],
                context=first.context,
                request_id=self.request_id,
                caller=self.caller,
                interface=self.interface,
            )
            outcomes.update(zip(indexes, decided, strict=True))
        return [outcomes[index] for index in range(len(evaluations))]

    async def run(
        self, items: Sequence[Evaluation | Invalid], semantic: str = EXECUTE_ALL
    ) -> list[Outcome | Invalid]:
        """Each item's outcome, or the item itself when it is not an Evaluation (it counts as a
        deny). execute_all: every item. deny_on_first_deny (like &&): up to and including the
        first deny or invalid item. permit_on_first_permit (like ||): up to and including the
        first permit."""
        if semantic == EXECUTE_ALL:
            decided = iter(await self.all([i for i in items if isinstance(i, Evaluation)]))
            return [next(decided) if isinstance(i, Evaluation) else i for i in items]
        results: list[Outcome | Invalid] = []
        for item in items:
            if isinstance(item, Evaluation):
                [outcome] = await self.all([item])
                results.append(outcome)
                allowed = outcome.decision.allowed
            else:
                results.append(item)
                allowed = False
            if allowed == (semantic == PERMIT_ON_FIRST_PERMIT):
                break
        return results


def canonical(value: Any) -> str:
    """One text per JSON value (sorted keys, no spaces, ASCII)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
