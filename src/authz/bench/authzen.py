"""Part 6: the AuthZEN API over HTTP/1.1 beside gRPC Check, end to end, and why they differ.

One authz server process serves both listeners (audit off, the shipped policies, access facts
from the simulator through a warm cache: the world of part 3), and both APIs are asked the same
question: may this SSO session open its add-on's dashboard (ALLOW)? h2load drives gRPC Check over
h2c with 4 connections × 16 streams, and the AuthZEN evaluation over HTTP/1.1 (`--h1`) with 64
connections of one request at a time (HTTP/1.1 has no multiplexing, and clients rarely
pipeline): 64 requests in flight either way, in interleaved rounds. The full run adds the
evaluation without its explanation and a batch of 10 on both APIs.

Then the translation alone, in this process: what turning the request's bytes into the decision
path's input, and the decision into the answer's bytes, costs on each API. The difference in
server CPU per request that translation does not explain is the transports': uvicorn's h11
parser and Starlette's routing, in Python, against grpc's C-core.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from typing import Any

import httpx

from authz.bench.common import Table, time_interleaved
from authz.bench.load import Run, measured_run
from authz.bench.world import (
    ACME,
    BATCH_ACTIONS,
    BATCH_ALLOWED,
    BATCH_PATH,
    CHECK_PATH,
    REQUEST_CONTEXT,
    AuthzServer,
    Lab,
    check_batch,
    check_session,
    grpc_frame,
    verify,
)

IN_FLIGHT = 64
GRPC_CLIENTS, GRPC_STREAMS = 4, 16


@dataclass(frozen=True)
class Scenario:
    key: str
    label: str
    http: bool  # AuthZEN over HTTP/1.1; else gRPC over h2c
    batch: bool
    explain: bool = True

    @property
    def decisions(self) -> int:
        return len(BATCH_ACTIONS) if self.batch else 1


SCENARIOS = (
    Scenario("grpc_check", "gRPC Check", http=False, batch=False),
    Scenario("authzen_evaluation", "AuthZEN evaluation (explained)", http=True, batch=False),
    Scenario(
        "authzen_evaluation_plain",
        "AuthZEN evaluation, options.explain false",
        http=True,
        batch=False,
        explain=False,
    ),
    Scenario("grpc_batch10", "gRPC CheckBatch ×10", http=False, batch=True),
    Scenario("authzen_batch10", "AuthZEN evaluations ×10", http=True, batch=True),
)
QUICK = ("grpc_check", "authzen_evaluation")


def authzen_body(server: AuthzServer, scenario: Scenario) -> dict[str, Any]:
    """The AuthZEN request asking what check_session / check_batch ask over gRPC."""
    body: dict[str, Any] = {
        "subject": {"type": "session", "id": server.tokens[ACME]},
        "resource": {"type": "addon", "id": server.addons[ACME]},
        "context": REQUEST_CONTEXT,
    }
    if scenario.batch:
        body["evaluations"] = [{"action": {"name": action}} for action in BATCH_ACTIONS]
    else:
        body["action"] = {"name": "dashboard.view"}
    if not scenario.explain:
        body["options"] = {"explain": False}
    return body


def _verify_http(port: int, scenario: Scenario, body: bytes) -> None:
    path = "/access/v1/evaluations" if scenario.batch else "/access/v1/evaluation"
    answer = httpx.post(
        f"http://127.0.0.1:{port}{path}",
        content=body,
        headers={"Content-Type": "application/json"},
        timeout=10,
    )
    answer.raise_for_status()
    if scenario.batch:
        got = tuple(e["decision"] for e in answer.json()["evaluations"])
        if got != BATCH_ALLOWED:
            raise AssertionError(f"AuthZEN evaluations answered {got}, expected {BATCH_ALLOWED}")
    elif answer.json()["decision"] is not True or ("context" in answer.json()) != scenario.explain:
        raise AssertionError(f"AuthZEN evaluation answered {answer.text}")


def run_authzen(
    lab: Lab, *, quick: bool, duration: float, warmup: float, rounds: int
) -> tuple[list[Table], dict[str, Any]]:
    scenarios = [s for s in SCENARIOS if not quick or s.key in QUICK]
    server = lab.authz("off", extra=("--http",))
    http_port = int(server.process.info["http_port"])
    bodies: dict[str, bytes] = {}
    for s in scenarios:
        if s.http:
            bodies[s.key] = json.dumps(authzen_body(server, s)).encode()
            _verify_http(http_port, s, bodies[s.key])
        else:
            request = check_batch(server) if s.batch else check_session(server)
            verify(server.process.address, "batch" if s.batch else "session", request)
            bodies[s.key] = grpc_frame(request)

    def run(s: Scenario) -> Run:
        return measured_run(
            server.process.pid,
            http_port if s.http else server.process.port,
            _path(s),
            bodies[s.key],
            duration=duration,
            warmup=warmup,
            clients=IN_FLIGHT if s.http else GRPC_CLIENTS,
            streams=1 if s.http else GRPC_STREAMS,
            h1=s.http,
        )

    runs: dict[str, list[Run]] = {s.key: [] for s in scenarios}
    for _ in range(rounds):
        for s in scenarios:
            runs[s.key].append(run(s))
    for s in scenarios:  # still the right answers after the load
        if s.http:
            _verify_http(http_port, s, bodies[s.key])
    server.stop()
    translation, translation_us = translation_costs()
    return _report(scenarios, runs, rounds, duration, translation, translation_us)


def _path(s: Scenario) -> str:
    if s.http:
        return "/access/v1/evaluations" if s.batch else "/access/v1/evaluation"
    return BATCH_PATH if s.batch else CHECK_PATH


def translation_costs(min_time: float = 0.05, repeats: int = 7) -> tuple[Table, dict[str, float]]:
    """µs to turn one request's bytes into the decision path's input and its decision into the
    answer's bytes, on each API, for the same single decision (the decision itself left out)."""
    from starlette.responses import JSONResponse

    from authz.decide import Outcome
    from authz.ids import new_decision_id
    from authz.policy.model import Decision, Effect, MatchedRule
    from authz.server import convert
    from authz.v1 import authorization_pb2 as pb
    from authz.web import authzen

    reason = "The user currently holds a role on the Heroku app that owns this add-on"
    outcome = Outcome(
        new_decision_id(),
        Decision(
            Effect.ALLOW,
            (MatchedRule("app-ownership", "app-members-use-addon", Effect.ALLOW, reason),),
            (reason,),
            (),
            "68f41ee94b93c567",
        ),
    )
    token = "azs_" + "t" * 43
    resource = "ce9b8461-8f28-4524-bffc-bd6d349c4ef0"
    grpc_bytes = pb.CheckRequest(
        session_token=token,
        action="dashboard.view",
        resource=pb.Resource(type="addon", id=resource),
        context=convert.dict_to_struct(REQUEST_CONTEXT),
        request_id="bench-session",
    ).SerializeToString()
    json_bytes = json.dumps(
        {
            "subject": {"type": "session", "id": token},
            "action": {"name": "dashboard.view"},
            "resource": {"type": "addon", "id": resource},
            "context": REQUEST_CONTEXT,
        }
    ).encode()

    def grpc_translation() -> bytes:
        request = pb.CheckRequest.FromString(grpc_bytes)
        convert.check_item(request)
        convert.struct_to_dict(request.context, "context")
        convert.request_id_of(request.request_id)
        return convert.check_response(outcome).SerializeToString()

    def authzen_translation(explain: bool) -> bytes:
        authzen.evaluation_of(authzen.parse_json(json_bytes))
        return bytes(JSONResponse(authzen.decision_answer(outcome, explain)).body)

    timings = time_interleaved(
        {
            "gRPC Check: protobuf in, protobuf out": grpc_translation,
            "AuthZEN evaluation: JSON in, checks, JSON out (explained)": lambda: (
                authzen_translation(True)
            ),
            "AuthZEN evaluation: the same, without the explanation": lambda: authzen_translation(
                False
            ),
        },
        min_time=min_time,
        repeats=repeats,
    )
    table = Table("Translating one request and its answer (in process)", ["API", "µs"])
    for name, timing in timings.items():
        table.add(name, timing.median_us)
    keys = ("grpc", "authzen", "authzen_plain")
    return table, {key: t.median_us for key, t in zip(keys, timings.values(), strict=True)}


def _report(
    scenarios: list[Scenario],
    runs: dict[str, list[Run]],
    rounds: int,
    duration: float,
    translation: Table,
    translation_us: dict[str, float],
) -> tuple[list[Table], dict[str, Any]]:
    table = Table(
        f"AuthZEN over HTTP/1.1 beside gRPC ({IN_FLIGHT} requests in flight)",
        [
            "scenario",
            "transport",
            "req/s",
            "decisions/s",
            "p50 ms",
            "p99 ms",
            "server CPU µs/req",
        ],
    )
    results: dict[str, Any] = {"scenarios": {}}
    for s in scenarios:
        rps = statistics.median(r.result.req_per_s for r in runs[s.key])
        median_run = sorted(runs[s.key], key=lambda r: r.result.req_per_s)[len(runs[s.key]) // 2]
        cpu = statistics.median(r.cpu_us_per_req for r in runs[s.key])
        transport = (
            f"HTTP/1.1, {IN_FLIGHT} connections"
            if s.http
            else f"h2c, {GRPC_CLIENTS} connections × {GRPC_STREAMS} streams"
        )
        latency = median_run.result.latency
        table.add(s.label, transport, rps, rps * s.decisions, latency.p50, latency.p99, cpu)
        results["scenarios"][s.key] = {
            "label": s.label,
            "req_per_s": rps,
            "decisions_per_s": rps * s.decisions,
            "p50_ms": latency.p50,
            "p99_ms": latency.p99,
            "server_cpu_us_per_req": cpu,
            "failed": sum(r.result.failed for r in runs[s.key]),
        }
    table.notes.append(
        f"req/s is the median of {rounds} interleaved round(s) of {duration:g} s per scenario; "
        "latencies come from the median round. Both APIs ask the same question (an SSO "
        "session opening its add-on's dashboard: ALLOW) of the same server process, audit off."
    )
    results["translation_us"] = translation_us
    grpc = results["scenarios"].get("grpc_check")
    http = results["scenarios"].get("authzen_evaluation")
    if grpc and http:
        results["why"] = why = _why(grpc, http, translation_us)
        table.notes.append(
            f"Why they differ: the server spends {why['authzen_cpu_us']:.0f} µs of CPU per AuthZEN "
            f"evaluation and {why['grpc_cpu_us']:.0f} µs per gRPC Check "
            f"({why['extra_cpu_us']:+.0f} µs). Translating JSON (parsed with each key checked "
            "once, every field checked as gRPC's converter does, the explanation rendered) "
            f"costs {why['extra_translation_us']:+.0f} µs against protobuf (second table), so "
            f"the transports account for {why['transport_us']:+.0f} µs. While serving, the "
            f"process used {why['authzen_cores']:.2f} cores for AuthZEN and "
            f"{why['grpc_cores']:.2f} for gRPC: uvicorn parses HTTP/1.1 (h11) and Starlette "
            "routes on the one event-loop thread that also decides, while grpc's C-core frames "
            "HTTP/2 and moves bytes on threads of its own, beside the loop. At the same 64 "
            "requests in flight, req/s follows the loop thread's work per request, and "
            "latency follows req/s."
        )
    failed = sum(v["failed"] for v in results["scenarios"].values())
    table.notes.append(f"failed or errored requests across all runs: {failed}")
    return [table, translation], results


def _why(
    grpc: dict[str, float], http: dict[str, float], translation_us: dict[str, float]
) -> dict[str, float]:
    """The numbers the explanation of the difference rests on."""
    extra_cpu = http["server_cpu_us_per_req"] - grpc["server_cpu_us_per_req"]
    extra_translation = translation_us["authzen"] - translation_us["grpc"]
    return {
        "grpc_cpu_us": grpc["server_cpu_us_per_req"],
        "authzen_cpu_us": http["server_cpu_us_per_req"],
        "extra_cpu_us": extra_cpu,
        "extra_translation_us": extra_translation,
        "transport_us": extra_cpu - extra_translation,
        "grpc_cores": grpc["server_cpu_us_per_req"] * grpc["req_per_s"] / 1e6,
        "authzen_cores": http["server_cpu_us_per_req"] * http["req_per_s"] / 1e6,
    }
