"""Where a session-token Check's time goes inside authz, step by step (in process, µs per call).

Each step of the servicer's path is timed on its own, on the real stores and the shipped
policies, so the profile of the server under load (py-spy, in the end-to-end part) can be read
against numbers that need no sampling. Some steps call decide.py's internals; a step whose
internals changed shows "n/a" instead of failing the run. Two rows are prototypes measured for
the proposals in docs/benchmarks.md, not code authz runs: one fused CEL program per action, and
a coroutine awaited directly instead of through ``asyncio.gather``.
"""

from __future__ import annotations

import asyncio
import inspect
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from authz.bench.common import Table, time_async_calls, time_calls
from authz.bench.engine import (
    ADDON_ID,
    APP_ID,
    SHIPPED_CASES,
    ShippedWorld,
    _decider_call,
    resolve_now,
)
from authz.decide import Outcome, access_fact
from authz.ids import new_decision_id
from authz.policy.engine import evaluate
from authz.server import convert
from authz.v1 import authorization_pb2 as pb


def fused_program(world: ShippedWorld, action: str, resource_type: str) -> Any:
    """Prototype: every candidate rule's condition for (action, resource type) in one CEL list."""
    policy_set = world.holder.current
    rules = [
        r
        for r in policy_set.rules_for(action)
        if r.program is not None and (not r.resource_types or resource_type in r.resource_types)
    ]
    return policy_set.env.compile("[" + ", ".join(f"({r.rule.when})" for r in rules) + "]")


def check_path_anatomy(
    policy_dir: Path, *, min_time: float = 0.2, repeats: int = 5
) -> tuple[Table, dict[str, Any]]:
    table = Table(
        "Check path anatomy: session-token Check, allow path (µs per call, in process)",
        ["step", "µs", "what it is"],
    )
    results: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="authz-bench-anatomy-") as tmp:
        world = ShippedWorld(policy_dir, Path(tmp))
        try:
            _measure(world, table, results, min_time, repeats)
        finally:
            world.close()
    table.notes.append(
        "best of the runs; rows marked prototype are measurements for proposals, not authz code. "
        "The steps overlap a little (Decider.check includes most of the rows above it)."
    )
    return table, results


def _measure(
    world: ShippedWorld,
    table: Table,
    results: dict[str, float],
    min_time: float,
    repeats: int,
) -> None:
    case = SHIPPED_CASES[0]
    decider = world.decider
    token = world.tokens["member"]
    subject = resolve_now(decider.subject_from_session(token))
    session_is_async = inspect.iscoroutinefunction(decider.subject_from_session)
    inputs = world.server_input(subject, case.action)
    policy_set = world.holder.current
    decision = evaluate(policy_set, inputs)
    outcome = Outcome(new_decision_id(), decision)
    wire = pb.CheckRequest(
        session_token=token,
        action=case.action,
        resource=pb.Resource(type="addon", id=ADDON_ID),
        request_id="bench",
    )
    wire.context.update({"ip": "203.0.113.7", "user_agent": "partner-dashboard/2.3"})
    body = wire.SerializeToString()

    def step(name: str, what: str, fn: Callable[[], Any], *, is_async: bool = False) -> None:
        try:
            fn() if not is_async else None
            timer = time_async_calls if is_async else time_calls
            us = timer(fn, min_time=min_time, repeats=repeats).best_us
        except Exception as exc:  # internals changed: say so, keep going
            table.add(name, "n/a", f"{what} ({type(exc).__name__})")
            return
        results[name] = us
        table.add(name, us, what)

    def parse() -> Any:
        request = pb.CheckRequest.FromString(body)
        convert.check_item(request)
        convert.struct_to_dict(request.context, "context")
        return convert.request_id_of(request.request_id)

    step("request: bytes → Item, context dict", "protobuf parse + convert.py validation", parse)
    step(
        "session lookup",
        "Decider.subject_from_session: SHA-256 + SQLite SELECT",
        lambda: decider.subject_from_session(token),
        is_async=session_is_async,
    )
    step(
        "add-on registry lookup",
        "AddonRegistry.get: SQLite SELECT",
        lambda: world.addons.get(ADDON_ID),
    )

    async def cached_access() -> Any:
        listing = await world.cache.get(APP_ID, ADDON_ID, deadline=2.0)
        return access_fact(listing, subject.principal["id"], time.time())

    step("access fact (warm cache)", "AccessCache.get + access_fact", cached_access, is_async=True)
    step("evaluate()", "the engine on the prebuilt input", lambda: evaluate(policy_set, inputs))
    activation = policy_set.env.Activation
    step("  of which: Activation", "cel Activation from the input dict", lambda: activation(inputs))
    fused = fused_program(world, case.action, "addon")
    step(
        "  prototype: one fused CEL program",
        "Activation + one eval of [cond1, …, condN] + reading the list",
        lambda: fused.eval(activation(inputs)).value(),
    )
    step("decision id", "new_decision_id (UUIDv7, lock + urandom)", new_decision_id)
    record = getattr(decider, "_record", None)
    step(
        "audit record built",
        "Decider._record incl. redact() (not built with audit off)",
        lambda: record(  # type: ignore[misc]
            "check", outcome, subject, inputs, time.time(), "bench", "anonymous"
        ),
    )
    try:
        from authz.decide import redact

        recorded = {k: v for k, v in inputs.items() if k != "now"}
        step(
            "redact() of the whole input",
            "for scale: a record redacts only attributes and context",
            lambda: redact(recorded),
        )
    except ImportError:
        pass
    step(
        "response → bytes",
        "convert.check_response + SerializeToString",
        lambda: convert.check_response(outcome).SerializeToString(),
    )

    async def one() -> int:
        return 1

    async def via_gather() -> Any:
        return await asyncio.gather(one())

    async def direct() -> Any:
        return await one()

    step(
        "asyncio.gather of one coroutine",
        "a Task + a loop turn (used twice per Check)",
        via_gather,
        is_async=True,
    )
    step(
        "  prototype: await it directly", "the same coroutine without gather", direct, is_async=True
    )
    step(
        "Decider.check() whole",
        "session lookup + all of the above that decide.py runs",
        _decider_call(world, case),
        is_async=True,
    )
