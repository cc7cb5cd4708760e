"""evaluate(compiled set, input) → Decision. Deny overrides, default deny, errors fail closed,
and in a closed catalogue an action nobody catalogued is denied before any rule is consulted."""

from __future__ import annotations

import contextlib
import marshal
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from cel_expr_python import cel

from authz.policy.compile import CompiledPolicySet
from authz.policy.inputs import VARIABLE_NAMES
from authz.policy.model import Decision, Effect
from authz.policy.plan import (
    BATCH_RESOURCES,
    DECISIONS_PER_PLAN,
    MASKS_KEY_BYTES,
    MASKS_PER_PLAN,
    CompiledRule,
    Plan,
)

_ERROR = cel.Type.ERROR
_BOOL = cel.Type.BOOL
_DENY = Effect.DENY
ACTION_UNKNOWN = "ACTION_UNKNOWN"
_SHARED_VARIABLES = tuple(name for name in VARIABLE_NAMES if name not in ("action", "resource"))
"""What items evaluated together share (evaluate_many): every declared variable but these."""
_ABSENT = object()
_ABSENTS = (_ABSENT,) * len(_SHARED_VARIABLES)  # each variable's default, for map()


def evaluate(policy_set: CompiledPolicySet, inputs: Mapping[str, Any]) -> Decision:
    """Decide one request. `inputs` holds every declared variable (see compile.VARIABLES)
    except `data`, which comes from the policy set (an input may replace it, as a test suite
    does; the server never does).

    ALLOW only when at least one allow rule holds and no deny rule holds. A condition that
    errors or yields a non-bool never lets a request through: a deny rule counts as held,
    an allow rule as not held, and the error is reported. In a closed catalogue (see
    CompiledPolicySet.closed) an uncatalogued action is denied with ACTION_UNKNOWN and no rule.
    """
    action: str = inputs["action"]
    if policy_set.closed and action not in policy_set.catalogue:
        return unknown_action(policy_set, action)
    plan = policy_set.plan(action, inputs["resource"].get("type", ""))
    masks: list[int] = []  # per chunk: which of its rules held, low bit first
    errors: list[str] = []
    key = None
    if plan.chunks:
        if plan.reads_data and "data" not in inputs:
            # The set's one prebuilt mapping; only plans that read it pay for the copy.
            inputs = {**inputs, "data": policy_set.data}
        # Only what the conditions read is converted to CEL values.
        projected = inputs if plan.project is None else plan.project(inputs)
        key = _read_key(plan, projected)
        known = _recalled(plan, key)
        if known is not None:
            return _shared_decision(policy_set, plan, action, known)
        activation = None
        for chunk in plan.chunks:
            # One chunk (the usual case): eval(data=...) converts the input itself, which is
            # cheaper than an Activation; several share one Activation.
            if chunk.program is None:
                result = None
            elif len(plan.chunks) == 1:
                result = chunk.program.eval(data=projected)
            else:
                activation = activation or policy_set.env.Activation(projected)
                result = chunk.program.eval(activation)
            # plain_value(): the int, or the error's text (one call instead of type and value).
            mask = None if result is None else result.plain_value()
            if type(mask) is int:
                masks.append(mask)
                continue
            # Something in this chunk errored (or it could not be fused): rule by rule.
            activation = activation or policy_set.env.Activation(projected)
            mask = 0
            for bit, position in enumerate(chunk.positions):
                if _holds(plan.rules[position], activation, errors):
                    mask |= 1 << bit
            masks.append(mask)
    if errors:
        return _decision(policy_set, plan, action, _held(plan, masks), tuple(errors))
    found = tuple(masks)
    if key is not None:
        _remember(plan, key, found)
    return _shared_decision(policy_set, plan, action, found)


def evaluate_many(
    policy_set: CompiledPolicySet, inputs: Sequence[Mapping[str, Any]]
) -> list[Decision]:
    """`evaluate` of each input, in order, with the same decisions. Inputs that differ only in
    their resource (the items of one batch: one subject, one context, resources of one type
    and app under one action) are evaluated together, one CEL call per chunk of conditions
    (`Chunk.batched`) rather than one per input; any error in that call sends them
    through `evaluate` one by one, which attributes it to its rule."""
    if len(inputs) == 1:
        return [evaluate(policy_set, inputs[0])]
    alike: dict[tuple[Any, ...], list[int]] = {}
    for index, one in enumerate(inputs):
        # Identity, not equality: the builders share one object per subject, context and app.
        # (Keys no condition may name cannot change a decision.)
        key = (
            one["action"],
            one["resource"].get("type", ""),
            *map(id, map(one.get, _SHARED_VARIABLES, _ABSENTS)),
        )
        alike.setdefault(key, []).append(index)
    decisions: list[Decision] = [None] * len(inputs)  # type: ignore[list-item]
    for indexes in alike.values():
        group = [inputs[i] for i in indexes]
        decided = _evaluate_alike(policy_set, group) if len(group) > 1 else None
        if decided is None:
            decided = [evaluate(policy_set, one) for one in group]
        for i, decision in zip(indexes, decided, strict=True):
            decisions[i] = decision
    return decisions


def _evaluate_alike(
    policy_set: CompiledPolicySet, group: list[Mapping[str, Any]]
) -> list[Decision] | None:
    """The decisions of inputs that differ only in `resource`; None when they must be evaluated
    one by one (an uncatalogued action, a chunk with no batched program, or any error)."""
    first = group[0]
    action: str = first["action"]
    if policy_set.closed and action not in policy_set.catalogue:
        return None
    plan = policy_set.plan(action, first["resource"].get("type", ""))
    if not plan.chunks:
        return None  # no condition to evaluate: each is only a lookup
    if plan.reads_data and "data" not in first:
        first = {**first, "data": policy_set.data}
    # What the items share, projected once; of each resource only what the conditions read.
    shared = dict(first) if plan.project is None else plan.project(first)
    shared.pop("resource", None)
    resources = [plan.project_resource(one["resource"]) for one in group]
    # Keyed as (what they share, the resource), never equal to evaluate's keys (bytes).
    shared_key = _read_key(plan, shared)
    keys = [
        None if shared_key is None or (own := _read_key(plan, r)) is None else (shared_key, own)
        for r in resources
    ]
    recalled = [m for k in keys if (m := _recalled(plan, k)) is not None]
    if len(recalled) == len(group):  # every item asked before: no CEL call
        return [_shared_decision(policy_set, plan, action, m) for m in recalled]
    shared[BATCH_RESOURCES] = resources
    masks: list[list[int]] = [[] for _ in group]  # per item, per chunk
    for chunk in plan.chunks:
        if chunk.batched is None:
            return None
        result = chunk.batched.eval(data=shared)
        if result.type() == _ERROR:
            return None  # some condition errored or yielded a non-bool: rule by rule says which
        values = result.plain_value()  # one bitmask per resource, as Python ints
        if len(values) != len(group):
            return None
        for item_masks, mask in zip(masks, values, strict=True):
            if type(mask) is not int:
                return None
            item_masks.append(mask)
    found = [tuple(m) for m in masks]
    for k, item_masks in zip(keys, found, strict=True):
        if k is not None:
            _remember(plan, k, item_masks)
    return [_shared_decision(policy_set, plan, action, m) for m in found]


_recalling = True


def recall(on: bool) -> bool:
    """Turn recall (Plan.masks_by_input) on or off for this process; returns what it was.
    Off, every question is evaluated: AUTHZ_RECALL=off (authz.server.app.apply_recall)."""
    global _recalling
    before, _recalling = _recalling, on
    return before


@contextlib.contextmanager
def evaluating_every_time() -> Iterator[None]:
    """Within it nothing is kept or looked up by input: the engine's own benchmarks measure
    CEL evaluation, and they ask the same questions over and over (one thread at a time)."""
    before = recall(False)
    try:
        yield
    finally:
        recall(before)


def _read_key(plan: Plan, read: Mapping[str, Any]) -> bytes | None:
    """What the conditions read, as bytes that are equal only for equal values (marshal, format
    2: no back-references, so the same values give the same bytes; bool, int and float stay
    apart), or None when it cannot be a key: recall is off for the plan (see plan.Recall), a
    value marshal does not take (a datetime, such as `now`), or more than MASKS_KEY_BYTES."""
    if plan.recall.off or not _recalling:
        return None
    try:
        key = marshal.dumps(read, 2)
    except ValueError:
        return None
    return key if len(key) <= MASKS_KEY_BYTES else None


def _recalled(plan: Plan, key: Any) -> tuple[int, ...] | None:
    """The masks kept for `key` (None: no key, or none kept), counted as a hit if found."""
    if key is None:
        return None
    known = plan.masks_by_input.get(key)
    if known is not None:
        plan.recall.hits += 1
    return known


def _remember(plan: Plan, key: Any, masks: tuple[int, ...]) -> None:
    """Keep the masks evaluated for `key`; all are let go once MASKS_PER_PLAN are kept (a
    dict let go of its oldest one at a time costs a µs per key, a scan past the gaps), and
    none is kept again if not one of them was asked for again (see plan.Recall)."""
    kept, recall = plan.masks_by_input, plan.recall
    if len(kept) >= MASKS_PER_PLAN:
        kept.clear()
        recall.off, recall.hits = recall.hits == 0, 0
        if recall.off:
            return
    kept[key] = masks


def _held(plan: Plan, masks: Sequence[int]) -> list[bool]:
    """Whether each rule of the plan held, given each chunk's bitmask."""
    held = [False] * len(plan.rules)
    for position in plan.always:
        held[position] = True
    for chunk, mask in zip(plan.chunks, masks, strict=True):
        for bit, position in enumerate(chunk.positions):
            held[position] = bool(mask >> bit & 1)
    return held


def _shared_decision(
    policy_set: CompiledPolicySet, plan: Plan, action: str, masks: tuple[int, ...]
) -> Decision:
    """The decision for these chunk bitmasks and no error: built once per plan and shared."""
    key = (action, masks)
    decision = plan.decisions.get(key)
    if decision is None:
        decision = _decision(policy_set, plan, action, _held(plan, masks), ())
        if len(plan.decisions) < DECISIONS_PER_PLAN:
            plan.decisions[key] = decision
    return decision


def _decision(
    policy_set: CompiledPolicySet,
    plan: Plan,
    action: str,
    held: list[bool],
    errors: tuple[str, ...],
) -> Decision:
    matched = tuple(m for m, h in zip(plan.matched, held, strict=True) if h)
    denies = tuple(m.reason for m in matched if m.effect is _DENY)
    if denies:
        return Decision(Effect.DENY, matched, denies, errors, policy_set.revision)
    if matched:
        reasons = tuple(m.reason for m in matched)
        return Decision(Effect.ALLOW, matched, reasons, errors, policy_set.revision)
    reasons = (f"no allow rule matched action {action!r} (default deny)",)
    return Decision(Effect.DENY, matched, reasons, errors, policy_set.revision, True)


def unknown_action(policy_set: CompiledPolicySet, action: str) -> Decision:
    """The decision for an action no catalogue lists, in a closed catalogue."""
    reason = (
        f"{ACTION_UNKNOWN}: action {action!r} is in no action catalogue, so no rule decides it "
        "(catalogue it, or declare 'catalogue: open')"
    )
    return Decision(Effect.DENY, (), (reason,), (), policy_set.revision)


def _holds(compiled: CompiledRule, activation: Any, errors: list[str]) -> bool:
    rule = compiled.rule
    is_deny = rule.effect is Effect.DENY
    result = compiled.program.eval(activation)  # type: ignore[union-attr]
    kind = result.type()
    if kind == _BOOL:
        return bool(result.value())
    detail = result.value() if kind == _ERROR else f"condition yielded {kind}, not bool"
    consequence = "deny rule applied (fail closed)" if is_deny else "allow rule skipped"
    errors.append(f"{rule.policy}/{rule.id}: {detail}; {consequence}")
    return is_deny
