"""Part 4: access facts. What a Check costs when the app's access list is cached, and when not.

- Warm: sequential session-token Checks while the access list is cached.
- Cold: the same Check right after ``AdminService.InvalidateAccess`` for the app, so each one
  fetches the access list from the Heroku simulator on loopback (add-on → app → collaborators,
  and the team's members for a team app). Only the Check is timed, not the invalidation.
- Single flight: 200 concurrent Checks on a cold app; the simulator's request counters say how many
  upstream requests that took (the cache promises one fetch sequence per app, however many ask).

The client is a plain gRPC client in this process (so its own overhead is in both figures alike);
the server runs with audit off so that only the facts differ.
"""

from __future__ import annotations

import time
from typing import Any

from authz.bench.common import Latency, Table, ratio
from authz.bench.world import ACME, GLOBEX, AuthzServer, Lab, check_session
from authz.v1 import admin_pb2

APP_LABELS = {ACME: "personal app (acme-billing)", GLOBEX: "team app (globex-api)"}


def _timed_checks(server: AuthzServer, addon: str, count: int, *, cold: bool) -> Latency:
    request = check_session(server, addon)
    stub, admin = server.authz, server.admin
    invalidate = admin_pb2.InvalidateAccessRequest(app_id=server.apps[addon])
    values: list[float] = []
    for _ in range(count):
        if cold:
            admin.InvalidateAccess(invalidate, timeout=10)
        started = time.perf_counter()
        reply = stub.Check(request, timeout=10)
        values.append((time.perf_counter() - started) * 1000)
        if not reply.allowed:
            raise AssertionError(f"{'cold' if cold else 'warm'} Check denied: {reply}")
    return Latency.of(values)


def _single_flight(
    lab: Lab, server: AuthzServer, addon: str, *, concurrent: int, rounds: int
) -> dict[str, Any]:
    request = check_session(server, addon)
    stub, admin = server.authz, server.admin
    invalidate = admin_pb2.InvalidateAccessRequest(app_id=server.apps[addon])
    per_round: list[int] = []
    walls: list[float] = []
    breakdown: dict[str, int] = {}
    denied = 0
    for _ in range(rounds):
        admin.InvalidateAccess(invalidate, timeout=10)
        lab.sim.reset_counters()
        started = time.perf_counter()
        futures = [stub.Check.future(request, timeout=30) for _ in range(concurrent)]
        replies = [f.result(timeout=60) for f in futures]
        walls.append((time.perf_counter() - started) * 1000)
        denied += sum(not r.allowed for r in replies)
        counters = lab.sim.counters()
        per_round.append(int(counters["total"]))
        breakdown = _generic_paths(counters["requests"], server)
    return {
        "concurrent": concurrent,
        "rounds": rounds,
        "upstream_per_round": per_round,
        "upstream_per_cold_app": max(per_round) if per_round else 0,
        "breakdown": breakdown,
        "denied": denied,
        "wall_ms": sorted(walls)[len(walls) // 2] if walls else float("nan"),
    }


def _generic_paths(requests: dict[str, int], server: AuthzServer) -> dict[str, int]:
    """'GET /apps/<uuid>/collaborators' rather than ids, for the report."""
    names = {v: f"<{k.split('-')[1]}>" for k, v in server.addons.items()}
    names.update({v: "<app>" for v in server.apps.values()})
    out: dict[str, int] = {}
    for key, n in requests.items():
        for raw, label in names.items():
            key = key.replace(raw, label)
        parts = key.split("/")
        key = "/".join("<id>" if len(p) == 36 and p.count("-") == 4 else p for p in parts)
        out[key] = out.get(key, 0) + n
    return out


def run_facts(
    lab: Lab, *, warm_count: int, cold_count: int, concurrent: int, rounds: int
) -> tuple[list[Table], dict[str, Any]]:
    server = lab.authz("off")
    try:
        latency = Table(
            "Access facts: session-token Check latency, warm vs cold access cache (ms)",
            ["app", "cache", "checks", "mean", "p50", "p95", "p99", "max", "cold ÷ warm (p50)"],
        )
        flight = Table(
            f"Access facts: {concurrent} concurrent Checks on a cold app",
            ["app", "rounds", "upstream requests per cold app", "which", "denied", "wall ms (p50)"],
        )
        results: dict[str, Any] = {"latency": {}, "single_flight": {}}
        for addon in (ACME, GLOBEX):
            _timed_checks(server, addon, 20, cold=False)  # settle connections and the loop
            warm = _timed_checks(server, addon, warm_count, cold=False)
            cold = _timed_checks(server, addon, cold_count, cold=True)
            label = APP_LABELS[addon]
            latency.add(
                label, "warm", warm.count, warm.mean, warm.p50, warm.p95, warm.p99, warm.max, ""
            )
            latency.add(
                label,
                "cold",
                cold.count,
                cold.mean,
                cold.p50,
                cold.p95,
                cold.p99,
                cold.max,
                f"{ratio(cold.p50, warm.p50):.1f}×",
            )
            sf = _single_flight(lab, server, addon, concurrent=concurrent, rounds=rounds)
            flight.add(
                label,
                rounds,
                sf["upstream_per_cold_app"],
                ", ".join(f"{k} ×{v}" for k, v in sorted(sf["breakdown"].items())),
                sf["denied"],
                sf["wall_ms"],
            )
            results["latency"][addon] = {"warm": _lat(warm), "cold": _lat(cold)}
            results["single_flight"][addon] = sf
        latency.notes.append(
            "cold = InvalidateAccess just before the Check (not timed), so the Check fetches the "
            "app's access list from the Heroku simulator on loopback; client: grpc in-process."
        )
        flight.notes.append(
            "upstream requests per cold app = the simulator's request counter for the whole round "
            "(the largest over rounds); the access cache fetches once per app however many ask."
        )
    finally:
        server.stop()
    return [latency, flight], results


def _lat(value: Latency) -> dict[str, float]:
    return {
        "count": value.count,
        "mean_ms": value.mean,
        "p50_ms": value.p50,
        "p95_ms": value.p95,
        "p99_ms": value.p99,
        "max_ms": value.max,
    }
