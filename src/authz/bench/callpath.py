"""What the per-call path costs in server CPU, layer by layer (issue 19, "make each call cheaper").

``python -m authz.bench.callpath [--duration S] [--rounds N]`` starts, each in its own process
(authz.bench.serve), and drives with h2load in interleaved rounds:

- ``noop``: gRPC alone, a Check that returns a constant response;
- ``noop_guarded``: the same behind authz's caller admission (caller identity, budgets, the
  request read with its timeout: authz.server.identity and authz.server.guard);
- ``noop_unguarded_read``: the same admission with AUTHZ_REQUEST_TIMEOUT=0 (grpc reads the
  request; no read guard);
- ``direct``: authz, a Check naming its principal (no session, no registry), audit off;
- ``session``: authz, a session-token Check (session and registry lookups, warm access
  cache), audit off;
- with ``--workers N``: ``direct_workers`` and ``session_workers``, the same on authz with N
  worker processes (``authz serve --workers N``), for req/s against one process.

It prints the server's CPU µs per request (median over rounds) and the differences between
neighbours: ``noop_guarded − noop`` is the admission's cost, ``session − direct`` the
session and registry lookups'. On a shared machine these differences are noisy (tens of µs);
``--dispatch`` instead times, in process and without sampling noise, the part of the
admission that runs for every call before grpc reads the request: identifying the caller
(a bearer token) and picking the guarded handler.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

from authz.bench.e2e import CLIENTS, STREAMS
from authz.bench.load import measured_run
from authz.bench.world import (
    CHECK_PATH,
    Lab,
    check_direct,
    check_session,
    grpc_frame,
    verify,
)


class _Details(NamedTuple):
    """grpc's HandlerCallDetails, as grpc.aio hands it to a generic handler."""

    method: str
    invocation_metadata: tuple[tuple[str, str], ...]


def admission_dispatch_us(calls: int = 20_000, repeats: int = 7) -> float:
    """Best-of-``repeats`` µs per call of CallerAdmission.handler_for for a Check with a valid
    bearer token (the path every authenticated call takes)."""
    import grpc

    from authz.config import CallerToken
    from authz.server.identity import CallerAdmission

    async def check(request: Any, context: Any) -> Any:
        return request

    handler = grpc.unary_unary_rpc_method_handler(check)
    admission = CallerAdmission(tokens=(CallerToken.of("web", "web-token"),))
    details = _Details(
        "/authz.v1.AuthorizationService/Check", (("authorization", "Bearer web-token"),)
    )

    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        for _ in range(calls):
            admission.handler_for(details, handler)  # type: ignore[arg-type]
        best = min(best, (time.perf_counter() - started) / calls * 1e6)
    return best


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m authz.bench.callpath")
    parser.add_argument("--policies", default="policies")
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--warmup", type=float, default=0.5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--only", default="", help="comma-separated scenarios to run (default: all four)"
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="also run authz with this many worker processes (scenarios direct_workers and "
        "session_workers), to compare with one process",
    )
    parser.add_argument(
        "--dispatch", action="store_true", help="only time the admission's dispatch in process"
    )
    args = parser.parse_args(argv)
    if args.dispatch:
        print(f"admission dispatch (bearer token Check): {admission_dispatch_us():.2f} µs")
        return
    cpu: dict[str, list[float]] = {}
    rps: dict[str, list[float]] = {}
    with Lab(Path(args.policies)) as lab:
        authz = lab.authz("off")
        servers = {
            "noop": (lab.noop(), grpc_frame(check_session(authz))),
            "noop_guarded": (lab.noop(intercepted=True), grpc_frame(check_session(authz))),
            # AUTHZ_REQUEST_TIMEOUT=0: the same admission, grpc reading the request.
            "noop_unguarded_read": (
                lab._spawn(["--kind", "noop", "--intercepted", "--request-timeout", "0"]),
                grpc_frame(check_session(authz)),
            ),
            "direct": (authz.process, grpc_frame(check_direct(authz))),
            "session": (authz.process, grpc_frame(check_session(authz))),
        }
        if args.workers > 1:
            several = lab.authz("off", extra=("--workers", str(args.workers)))
            servers["direct_workers"] = (several.process, grpc_frame(check_direct(several)))
            servers["session_workers"] = (several.process, grpc_frame(check_session(several)))
        if args.only:
            servers = {k: v for k, v in servers.items() if k in args.only.split(",")}
        verify(authz.process.address, "session", check_session(authz))
        for _ in range(args.rounds):
            for name, (server, body) in servers.items():
                run = measured_run(
                    server.pid,
                    server.port,
                    CHECK_PATH,
                    body,
                    duration=args.duration,
                    warmup=args.warmup,
                    clients=CLIENTS,
                    streams=STREAMS,
                )
                cpu.setdefault(name, []).append(run.cpu_us_per_req)
                rps.setdefault(name, []).append(run.result.req_per_s)
    median = {name: statistics.median(values) for name, values in cpu.items()}
    print(f"{'scenario':14} {'CPU µs/req':>10} {'req/s':>8}   (median of {args.rounds} rounds)")
    for name, value in median.items():
        print(f"{name:14} {value:10.1f} {statistics.median(rps[name]):8.0f}")
    for label, more, less in (
        ("admission", "noop_guarded", "noop"),
        ("request-read guard", "noop_guarded", "noop_unguarded_read"),
        ("session + registry", "session", "direct"),
    ):
        if more in median and less in median:
            print(f"{label} ({more} - {less}): {median[more] - median[less]:.1f} µs")
    for name, values in cpu.items():
        print(f"{name} rounds: {', '.join(f'{v:.0f}' for v in values)}")


if __name__ == "__main__":
    main()
