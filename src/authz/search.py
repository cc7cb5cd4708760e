"""Search: which actions, subjects or resources the policies allow, by deciding each candidate.

One use case for every API that searches (AuthorizationService.ListAllowedActions over gRPC, the
AuthZEN search endpoints over HTTP): a search is as exact as the policies because every
candidate is decided by `Decider.check`, exactly as a Check of it would be, and recorded in the
audit log like one, allowed or not. So the log says why an action was left out of a dashboard's
menu: its record holds the deny and its reasons.

Candidates come from the policy set, never from a guess:

- actions: the caller's list, or else the policy set's action catalogue, in catalogue order (a
  set without a catalogue has no finite list: `SearchUnsupported`);
- subjects or resources of a type: the data list the set declares for that type under
  `searchable:` (authz.policy.searchable), in list order; a type nobody declared has none
  (`SearchUnsupported`).

A search runs in pages (`start`, `limit`): candidates are decided from `start` on, in chunks no
larger than what is still missing from the page, until the page holds `limit` allowed
candidates, `budget` candidates were decided, or none are left. `SearchPage.next_start` says
where the next page starts (None: this was the last). A page may hold fewer than `limit` results
and still not be the last: the budget bounds the work of one request, whatever the list.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from authz.decide import Decider, Entity, Item, Outcome, Subject, direct_subject
from authz.errors import AuthzError
from authz.policy.compile import CompiledPolicySet
from authz.policy.searchable import ids_of, resolve

CHUNK = 100
"""Candidates decided per Decider.check call (CheckBatch's bound on items)."""


class SearchUnsupported(AuthzError):
    """The policy set gives no finite list of candidates for this search."""

    code = "SEARCH_UNSUPPORTED"
    kind = "refused"


@dataclass(frozen=True, slots=True)
class Found:
    """One candidate (an action name, or a subject's or resource's id) and its decision."""

    candidate: str
    outcome: Outcome

    @property
    def allowed(self) -> bool:
        return self.outcome.decision.allowed


@dataclass(frozen=True, slots=True)
class SearchPage:
    evaluated: tuple[Found, ...]
    """Every candidate decided for this page, allowed or not, in candidate order."""
    next_start: int | None
    """Where the next page starts in the candidate list; None when there is none."""

    @property
    def allowed(self) -> list[str]:
        return [found.candidate for found in self.evaluated if found.allowed]


@dataclass(frozen=True, slots=True)
class Asked:
    """Who asks and how, for the audit records of every decision a search makes."""

    context: Mapping[str, Any]
    request_id: str = ""
    caller: str = ""
    interface: str = "grpc"


Decide = Callable[[list[str]], Awaitable[list[Outcome]]]


async def search_actions(
    decider: Decider,
    subject: Subject,
    resource: Entity,
    asked: Asked,
    *,
    actions: Sequence[str] = (),
    start: int = 0,
    limit: int | None = None,
    budget: int | None = None,
) -> SearchPage:
    """The actions `subject` may do on `resource`: of `actions`, or else of the catalogue."""
    candidates = list(dict.fromkeys(actions)) or catalogue_actions(decider.policies.current)

    async def decide(chunk: list[str]) -> list[Outcome]:
        return await _check(decider, subject, [Item(a, resource) for a in chunk], asked)

    return await _page(candidates, decide, start, limit, budget)


async def search_subjects(
    decider: Decider,
    subject_type: str,
    action: str,
    resource: Entity,
    asked: Asked,
    *,
    start: int = 0,
    limit: int | None = None,
    budget: int | None = None,
) -> SearchPage:
    """The subjects of `subject_type` (from its searchable data list) that may do `action` on
    `resource`. Each is a principal named directly, with no attributes: what the policies know
    of it comes from `data`."""
    candidates = searchable_ids(decider.policies.current, "subjects", subject_type)

    async def decide(chunk: list[str]) -> list[Outcome]:
        # One subject per decision path call; run together, so that the audit log commits
        # their records together (group commit) rather than one after another.
        item = [Item(action, resource)]
        checks = [
            _check(decider, direct_subject(Entity(subject_type, candidate)), item, asked)
            for candidate in chunk
        ]
        return [outcome for outcomes in await asyncio.gather(*checks) for outcome in outcomes]

    return await _page(candidates, decide, start, limit, budget)


async def search_resources(
    decider: Decider,
    subject: Subject,
    action: str,
    resource_type: str,
    asked: Asked,
    *,
    start: int = 0,
    limit: int | None = None,
    budget: int | None = None,
) -> SearchPage:
    """The resources of `resource_type` (from its searchable data list) on which `subject` may
    do `action`."""
    candidates = searchable_ids(decider.policies.current, "resources", resource_type)

    async def decide(chunk: list[str]) -> list[Outcome]:
        items = [Item(action, Entity(resource_type, candidate)) for candidate in chunk]
        return await _check(decider, subject, items, asked)

    return await _page(candidates, decide, start, limit, budget)


def catalogue_actions(policy_set: CompiledPolicySet) -> list[str]:
    if not policy_set.catalogue:
        raise SearchUnsupported(
            "the policy set declares no action catalogue, so there is no list of actions to "
            "search; name the actions to consider, or catalogue them (policies/catalogue.yaml)"
        )
    return list(policy_set.catalogue)


def searchable_ids(policy_set: CompiledPolicySet, kind: str, entity_type: str) -> list[str]:
    """The ids of the data list declared searchable for (kind, type)."""
    for policy in policy_set.policies:
        for entry in policy.searchable:
            if entry.kind == kind and entry.type == entity_type:
                return ids_of(resolve(policy_set.data, entry.path)) or []
    singular = kind.removesuffix("s")
    raise SearchUnsupported(
        f"{singular} type {entity_type!r} is not searchable: no policy file lists its "
        f"{kind} in data (declare it under 'searchable: {{{kind}: {{{entity_type}: data...}}}}')"
    )


async def _check(
    decider: Decider, subject: Subject, items: list[Item], asked: Asked
) -> list[Outcome]:
    return await decider.check(
        subject,
        items,
        context=asked.context,
        request_id=asked.request_id,
        caller=asked.caller,
        interface=asked.interface,
    )


async def _page(
    candidates: list[str], decide: Decide, start: int, limit: int | None, budget: int | None
) -> SearchPage:
    end = len(candidates) if budget is None else min(len(candidates), start + budget)
    evaluated: list[Found] = []
    allowed = 0
    position = max(0, start)
    while position < end and (limit is None or allowed < limit):
        # No more candidates than the page still misses: none is decided (and recorded) twice.
        size = min(CHUNK, end - position, CHUNK if limit is None else limit - allowed)
        chunk = candidates[position : position + size]
        for candidate, outcome in zip(chunk, await decide(chunk), strict=True):
            evaluated.append(Found(candidate, outcome))
            allowed += outcome.decision.allowed
        position += size
    return SearchPage(tuple(evaluated), position if position < len(candidates) else None)
