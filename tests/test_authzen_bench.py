"""The benchmark's AuthZEN part (python -m authz.bench --parts authzen) at tiny settings: its
tables have the rows they should and its numbers are numbers. No timing is asserted."""

from __future__ import annotations

from pathlib import Path

import pytest

from authz.bench.authzen import QUICK, run_authzen, translation_costs
from authz.bench.load import h2load_path, non_2xx
from authz.bench.world import Lab

ROOT = Path(__file__).resolve().parent.parent

# h2load's summary of an HTTP/1.1 run where requests straddled the end of the warm-up (seen in a
# run): they are "done", but their statuses, read in the warm-up, are in no count.
H1_SUMMARY = """
finished in 1.51s, 1241.00 req/s, 855.99KB/s
requests: 1241 total, 1241 started, 1241 done, 1241 succeeded, 0 failed, 0 errored, 0 timeout
status codes: 1228 2xx, 0 3xx, 0 4xx, 0 5xx
"""


def test_http1_runs_refuse_only_non_2xx_replies() -> None:
    assert not non_2xx(H1_SUMMARY, in_flight=64)  # 13 statuses read in the warm-up
    assert non_2xx(H1_SUMMARY, in_flight=4)  # more missing statuses than requests in flight
    assert non_2xx(H1_SUMMARY.replace("0 4xx", "2 4xx"), in_flight=64)
    assert non_2xx(H1_SUMMARY.replace("0 5xx", "1 5xx"), in_flight=64)


def test_translation_costs_are_measured_for_both_apis() -> None:
    table, costs = translation_costs(min_time=0.002, repeats=1)
    assert len(table.rows) == 3
    assert set(costs) == {"grpc", "authzen", "authzen_plain"}
    assert all(value > 0 for value in costs.values())


@pytest.mark.skipif(h2load_path() is None, reason="h2load not installed (nghttp2-client)")
def test_the_authzen_part_runs_against_a_real_server() -> None:
    with Lab(ROOT / "policies") as lab:
        tables, results = run_authzen(lab, quick=True, duration=0.3, warmup=0.1, rounds=1)
    load, translation = tables
    assert [row[0] for row in load.rows] == ["gRPC Check", "AuthZEN evaluation (explained)"]
    assert set(results["scenarios"]) == set(QUICK)
    assert all(s["failed"] == 0 and s["req_per_s"] > 0 for s in results["scenarios"].values())
    assert any(note.startswith("Why they differ:") for note in load.notes)
    assert set(results["why"]) >= {"extra_cpu_us", "extra_translation_us", "transport_us"}
    assert translation.title.startswith("Translating one request")
