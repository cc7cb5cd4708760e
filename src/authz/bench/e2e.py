"""Part 3: end to end over gRPC, the load generator (h2load) in its own process.

Scenarios, each against a server in its own process:

- the no-op baseline: an AuthorizationService on the same proto path whose Check returns a
  constant response (authz.bench.serve), started the same way as authz;
- authz Check with a principal given directly, and with a session-token subject (SSO user, access
  facts from the simulator through a warm cache), audit off;
- the session-token Check with durable audit (SQLite, group commit, synchronous=FULL);
- CheckBatch of 10 items for one session (and with durable audit in the full run);
- on a machine of several cores, the session-token Check on ``authz serve --workers N`` (one
  worker per core; the others run in one process, so that their CPU per request compares).

Each is driven at the maximum rate the in-flight limit allows (4 connections × 16 streams = 64 in
flight), in interleaved rounds so that a noisy neighbour hits every scenario alike, and then at a
fixed offered load of half its own maximum. Reported: req/s, decisions/s, latency percentiles from
h2load's per-request log, and the server's CPU time per request.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from authz.bench import profile as prof
from authz.bench.common import Table, ratio
from authz.bench.load import LoadResult, Run, measured_run
from authz.bench.world import (
    BATCH_PATH,
    CHECK_PATH,
    AuthzServer,
    Lab,
    check_batch,
    check_direct,
    check_session,
    grpc_frame,
    verify,
)
from authz.server.workers import available_cores

CLIENTS = 4
STREAMS = 16
WORKERS = available_cores()


@dataclass(frozen=True)
class Scenario:
    key: str
    label: str
    server: str  # noop | noop_intercepted | off | async | durable
    kind: str  # session | direct | batch
    decisions: int  # per request


SCENARIOS = (
    Scenario("noop", "no-op server: Check (constant reply)", "noop", "session", 1),
    Scenario(
        "noop_intercepted",
        "no-op server + authz's caller admission",
        "noop_intercepted",
        "session",
        1,
    ),
    Scenario("check_direct", "authz Check, direct principal, audit off", "off", "direct", 1),
    Scenario("check_session", "authz Check, session token, audit off", "off", "session", 1),
    Scenario(
        "check_session_durable",
        "authz Check, session token, durable audit",
        "durable",
        "session",
        1,
    ),
    Scenario(
        "check_session_async",
        "authz Check, session token, async audit",
        "async",
        "session",
        1,
    ),
    Scenario("batch10", "authz CheckBatch ×10, session token, audit off", "off", "batch", 10),
    Scenario(
        "batch10_durable",
        "authz CheckBatch ×10, session token, durable audit",
        "durable",
        "batch",
        10,
    ),
)
if WORKERS > 1:  # the same Check on `authz serve --workers N`, one worker per core
    SCENARIOS += (
        Scenario(
            "check_session_workers",
            f"authz Check, session token, audit off, {WORKERS} workers",
            "workers",
            "session",
            1,
        ),
    )
QUICK = ("noop", "check_session", "check_session_durable", "batch10", "check_session_workers")


def _run(
    pid: int,
    port: int,
    scenario: Scenario,
    body: bytes,
    *,
    duration: float,
    warmup: float,
    rps_per_client: float | None = None,
) -> Run:
    return measured_run(
        pid,
        port,
        BATCH_PATH if scenario.kind == "batch" else CHECK_PATH,
        body,
        duration=duration,
        warmup=warmup,
        clients=CLIENTS,
        streams=STREAMS,
        rps_per_client=rps_per_client,
    )


def run_e2e(
    lab: Lab,
    *,
    quick: bool,
    duration: float,
    warmup: float,
    rounds: int,
    profile_dir: Path | None = None,
    keep_profile: bool = False,
) -> tuple[list[Table], dict[str, Any]]:
    scenarios = [s for s in SCENARIOS if not quick or s.key in QUICK]
    noop = lab.noop()
    intercepted = (
        lab.noop(intercepted=True)
        if any(s.server == "noop_intercepted" for s in scenarios)
        else None
    )
    off = lab.authz("off")
    durable = lab.authz("durable") if any(s.server == "durable" for s in scenarios) else None
    queued = lab.authz("async") if any(s.server == "async" for s in scenarios) else None
    several = (
        lab.authz("off", extra=("--workers", str(WORKERS)))
        if any(s.server == "workers" for s in scenarios)
        else None
    )
    servers: dict[str, tuple[int, int, str]] = {
        "noop": (noop.pid, noop.port, noop.address),
        "off": (off.process.pid, off.process.port, off.process.address),
    }
    if intercepted is not None:
        servers["noop_intercepted"] = (intercepted.pid, intercepted.port, intercepted.address)
    if durable is not None:
        servers["durable"] = (durable.process.pid, durable.process.port, durable.process.address)
    if queued is not None:
        servers["async"] = (queued.process.pid, queued.process.port, queued.process.address)
    if several is not None:
        servers["workers"] = (several.process.pid, several.process.port, several.process.address)
    audited = {"durable": durable, "async": queued, "workers": several}
    is_noop = {"noop", "noop_intercepted"}

    reply_sizes: dict[str, int] = {}
    builders = {"session": check_session, "direct": check_direct, "batch": check_batch}

    def body_for(s: Scenario) -> bytes:
        source = audited.get(s.server) or off
        request = builders[s.kind](source)
        kind = "noop" if s.server in is_noop else s.kind
        reply_sizes[s.key] = verify(servers[s.server][2], kind, request)
        return grpc_frame(request)

    bodies = {s.key: body_for(s) for s in scenarios}
    max_runs: dict[str, list[Run]] = {s.key: [] for s in scenarios}
    for _ in range(rounds):
        for s in scenarios:
            pid, port, _ = servers[s.server]
            max_runs[s.key].append(
                _run(pid, port, s, bodies[s.key], duration=duration, warmup=warmup)
            )
    chosen: dict[str, Run] = {}
    for s in scenarios:
        runs = sorted(max_runs[s.key], key=lambda r: r.result.req_per_s)
        chosen[s.key] = runs[len(runs) // 2]  # the median run, latencies included
    half_runs: dict[str, Run] = {}
    for s in scenarios:
        pid, port, _ = servers[s.server]
        offered = chosen[s.key].result.req_per_s / 2
        half_runs[s.key] = _run(
            pid,
            port,
            s,
            bodies[s.key],
            duration=duration,
            warmup=warmup,
            rps_per_client=offered / CLIENTS,
        )

    # Correctness after the load: every body still gets the right answer, and under load every
    # request got a complete reply body (a gRPC error would have none).
    incomplete: list[str] = []
    for s in scenarios:
        kind = "noop" if s.server in is_noop else s.kind
        verify(servers[s.server][2], kind, _decode(s, bodies))
        for run in [*max_runs[s.key], half_runs[s.key]]:
            if not run.result.complete_replies(reply_sizes[s.key]):
                incomplete.append(s.key)

    profile_tables: list[Table] = []
    profile_note = ""
    if profile_dir is not None:
        profile_tables, profile_note = _profile(
            off, bodies.get("check_session"), duration, warmup, profile_dir, keep_profile
        )

    noop.stop()
    if intercepted is not None:
        intercepted.stop()
    off.stop()
    if queued is not None:
        queued.stop()
    if several is not None:
        several.stop()
    audit_check: dict[str, Any] = {}
    if durable is not None:
        final = durable.stop()
        written = int(final.get("audit", {}).get("records_written", 0))
        answered = sum(
            run.result.done * s.decisions
            for s in scenarios
            if s.server == "durable"
            for run in [*max_runs[s.key], half_runs[s.key]]
        )
        audit_check = {"records_written": written, "decisions_answered_under_load": answered}

    tables, results = _report(scenarios, max_runs, chosen, half_runs, rounds, duration)
    results["audit_check"] = audit_check
    results["incomplete_replies"] = sorted(set(incomplete))
    tables[0].notes.append(
        "every request of every run got a complete reply body (no gRPC errors)"
        if not incomplete
        else f"INCOMPLETE REPLIES (gRPC errors?) in: {', '.join(sorted(set(incomplete)))}"
    )
    if audit_check:
        ok = audit_check["records_written"] >= audit_check["decisions_answered_under_load"]
        tables[0].notes.append(
            f"durable audit: {audit_check['records_written']:,} records written for "
            f"{audit_check['decisions_answered_under_load']:,} decisions answered under load "
            f"({'every answered decision was recorded' if ok else 'RECORDS MISSING'})."
        )
        results["audit_check"]["ok"] = ok
    if profile_note:
        results["profile"] = profile_note
    return tables + profile_tables, results


def _decode(s: Scenario, bodies: dict[str, bytes]) -> Any:
    from authz.v1 import authorization_pb2 as pb

    message = pb.CheckBatchRequest() if s.kind == "batch" else pb.CheckRequest()
    message.ParseFromString(bodies[s.key][5:])
    return message


def _report(
    scenarios: list[Scenario],
    max_runs: dict[str, list[Run]],
    chosen: dict[str, Run],
    half_runs: dict[str, Run],
    rounds: int,
    duration: float,
) -> tuple[list[Table], dict[str, Any]]:
    base = (
        statistics.median(x.result.req_per_s for x in max_runs["noop"])
        if "noop" in max_runs
        else float("nan")
    )
    at_max = Table(
        f"End to end at the maximum rate ({CLIENTS * STREAMS} in flight)",
        [
            "scenario",
            "req/s",
            "decisions/s",
            "× no-op req/s",
            "p50 ms",
            "p95 ms",
            "p99 ms",
            "server CPU µs/req",
        ],
    )
    at_half = Table(
        "End to end at a fixed offered load of half the maximum",
        ["scenario", "offered req/s", "achieved req/s", "p50 ms", "p95 ms", "p99 ms", "max ms"],
    )
    results: dict[str, Any] = {"scenarios": {}}
    for s in scenarios:
        run = chosen[s.key]
        r = run.result
        all_rps = [x.result.req_per_s for x in max_runs[s.key]]
        at_max.add(
            s.label,
            statistics.median(all_rps),
            statistics.median(all_rps) * s.decisions,
            ratio(statistics.median(all_rps), base),
            r.latency.p50,
            r.latency.p95,
            r.latency.p99,
            statistics.median(x.cpu_us_per_req for x in max_runs[s.key]),
        )
        h = half_runs[s.key].result
        at_half.add(
            s.label,
            h.offered_rps or 0,
            h.req_per_s,
            h.latency.p50,
            h.latency.p95,
            h.latency.p99,
            h.latency.max,
        )
        results["scenarios"][s.key] = {
            "label": s.label,
            "decisions_per_request": s.decisions,
            "req_per_s_rounds": all_rps,
            "req_per_s": statistics.median(all_rps),
            "decisions_per_s": statistics.median(all_rps) * s.decisions,
            "max": _latency_dict(r),
            "server_cpu_us_per_req": statistics.median(x.cpu_us_per_req for x in max_runs[s.key]),
            "half": {
                "offered": h.offered_rps,
                "achieved": h.req_per_s,
                **_latency_dict(h),
            },
            "failed": sum(x.result.failed for x in max_runs[s.key]) + h.failed,
        }
    at_max.notes.append(
        f"req/s is the median of {rounds} interleaved round(s) of {duration:g} s per scenario; "
        "latencies come from the median round. h2load: "
        f"{CLIENTS} connections × {STREAMS} streams, gRPC-framed bodies."
    )
    failed = sum(v["failed"] for v in results["scenarios"].values())
    at_max.notes.append(f"failed or errored requests across all runs: {failed}")
    return [at_max, at_half], results


def _latency_dict(r: LoadResult) -> dict[str, float]:
    return {
        "p50_ms": r.latency.p50,
        "p95_ms": r.latency.p95,
        "p99_ms": r.latency.p99,
        "max_ms": r.latency.max,
        "count": r.latency.count,
    }


def _profile(
    server: AuthzServer,
    body: bytes | None,
    duration: float,
    warmup: float,
    out_dir: Path,
    keep_raw: bool,
) -> tuple[list[Table], str]:
    """Sample the audit-off server with py-spy during one more session-token Check run."""
    if body is None:
        return [], ""
    out_dir.mkdir(parents=True, exist_ok=True)
    raw = out_dir / "check_session.pyspy.txt"
    if prof.pyspy_path() is None:
        return [], "py-spy not installed: no profile taken"
    spy = prof.start_pyspy(server.process.pid, duration + warmup + 1, raw)
    scenario = next(s for s in SCENARIOS if s.key == "check_session")
    try:
        run = _run(
            server.process.pid,
            server.process.port,
            scenario,
            body,
            duration=duration,
            warmup=warmup,
        )
    finally:
        try:
            spy.communicate(timeout=60)
        except Exception:
            spy.kill()
    if not raw.exists():
        return [], "py-spy produced no profile (is ptrace allowed?)"
    own, inclusive, samples = prof.summarize_pyspy(raw)
    note = (
        f"py-spy, {samples} samples during a session-token Check run at the maximum rate "
        f"({run.result.req_per_s:.0f} req/s while sampled); "
        + (f"raw stacks in {raw}" if keep_raw else "keep the raw stacks with --profile-dir DIR")
    )
    own.notes.append(note)
    own.notes.append(
        "Handle._run's own time is grpc.aio's Cython call machinery and the C-core calls it makes "
        "on the event-loop thread (py-spy shows Cython code as its calling Python frame); "
        "Thread.run is grpc's completion-queue poller thread."
    )
    return [own, inclusive], note
