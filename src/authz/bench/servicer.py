"""What authz's own code costs per call, without gRPC: the Cerbos comparison's Check and batch
of 10 (authz.bench.cerbos), parsed, answered by AuthorizationServicer and serialized in process.

The difference between this and the server CPU per request at load (section 5 of the report) is
the transport and the per-call machinery around authz's code.

    python -m authz.bench.servicer [--calls N] [--repeats R] [--recall off]

With ``--recall off`` (AUTHZ_RECALL) every call is converted and evaluated again, as a call
whose question was never asked before is. ``--split`` measures the setting's two halves apart:
principal and resource messages converted again or kept (`convert.keep_entities`), questions
evaluated again or recalled (`engine.recall`), in each of the four combinations.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from authz.bench import cerbos
from authz.config import RECALL_MODES, Settings
from authz.policy import engine
from authz.server import convert
from authz.server.app import apply_recall, start_service
from authz.server.authorization import AuthorizationServicer

WORKLOADS = ("check", "batch10")


def _run(coroutine: Any) -> Any:
    """A coroutine that never suspends (the servicer on warm facts, audit off), run to its end
    without an event loop turn, as the server's task runs it."""
    try:
        coroutine.send(None)
    except StopIteration as done:
        return done.value
    coroutine.close()
    raise RuntimeError("the servicer waited for something: its facts are not warm")


async def measure(
    calls: int, repeats: int, recall: str = "on", halves: tuple[bool, bool] | None = None
) -> dict[str, float]:
    """Best-of-`repeats` µs per call, parse to serialized reply, for each workload. `halves`
    (entities kept, questions recalled) overrides what `recall` sets for each."""
    out: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="authz-bench-servicer-") as tmp:
        workdir = Path(tmp)
        policies = cerbos.write_authz_policies(workdir / "policies", cerbos.AUTHZ_POLICY)
        settings = Settings(
            listen="127.0.0.1:0",
            policy_dir=policies,
            data_dir=workdir / "data",
            sso_salts=("bench-sso-salt-0123456789",),
            heroku_api_url="http://127.0.0.1:9",
            heroku_id_url="http://127.0.0.1:9",
            audit_mode="off",
            recall=recall,
        )
        service = await start_service(settings, watch_interval=None)
        if halves is not None:
            convert.keep_entities(halves[0])
            engine.recall(halves[1])
        client = cerbos.AuthzClient(f"127.0.0.1:{service.port}")  # builds the requests only
        try:
            servicer = AuthorizationServicer(service.decider)
            for workload in WORKLOADS:
                request = client.request(workload)
                raw, parse = request.SerializeToString(), type(request).FromString
                method = servicer.Check if workload == "check" else servicer.CheckBatch
                for _ in range(calls // 4):  # warm
                    _run(method(parse(raw), None)).SerializeToString()
                best = float("inf")
                for _ in range(repeats):
                    started = time.perf_counter()
                    for _ in range(calls):
                        _run(method(parse(raw), None)).SerializeToString()
                    best = min(best, (time.perf_counter() - started) / calls * 1e6)
                out[workload] = best
        finally:
            client.close()
            await service.stop(grace=0)
            apply_recall(Settings())
    return out


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m authz.bench.servicer")
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--recall", choices=RECALL_MODES, default=Settings.recall)
    parser.add_argument(
        "--split", action="store_true", help="entities kept and questions recalled, apart"
    )
    args = parser.parse_args(argv)
    if not args.split:
        for workload, us in asyncio.run(measure(args.calls, args.repeats, args.recall)).items():
            print(f"{workload}: {us:.1f} µs per call in process (parse, servicer, serialize)")
        return
    print(f"{'entities':10} {'questions':10} " + " ".join(f"{w:>9}" for w in WORKLOADS))
    for halves in SPLIT:
        result = asyncio.run(measure(args.calls, args.repeats, halves=halves))
        entities = "kept" if halves[0] else "converted"
        questions = "recalled" if halves[1] else "evaluated"
        print(f"{entities:10} {questions:10} " + " ".join(f"{result[w]:7.1f}µs" for w in WORKLOADS))


SPLIT = ((True, True), (True, False), (False, True), (False, False))
"""(entities kept, questions recalled): AUTHZ_RECALL=on, its halves, and off."""


if __name__ == "__main__":
    main()
