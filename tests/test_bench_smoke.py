"""The benchmark suite (python -m authz.bench) runs at tiny sizes: its tables have the rows they
should, the generated policies compile and decide without errors, the peers agree with authz, and
the Cerbos comparison's policy means the same on authz (and on Cerbos) as its oracle says.

No timing is asserted: numbers from a shared CI machine mean nothing. The peer comparison needs
`pip install -e '.[bench]'`; without it (CI installs only .[dev]) that test is skipped. The Cerbos
tests need the binary `make bench` installs into .tools/; without it they are skipped.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

from authz.bench import cerbos, documents
from authz.bench.common import Table
from authz.bench.engine import SHIPPED_CASES, generate_rules, generated_engine, shipped_engine
from authz.bench.load import (
    connections_per_process,
    h2load_path,
    non_2xx,
    process_tree_cpu_seconds,
)
from authz.bench.peers import available_peers, compare_peers
from authz.bench.report import (
    KEEP_END,
    KEEP_MARKER,
    at_least,
    at_most,
    cerbos_goals,
    goals_table,
    plain_summary,
    targets,
    write_markdown,
)
from authz.policy.compile import load_and_compile
from authz.policy.engine import evaluate
from authz.policy.inputs import build_input

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src"
POLICIES = ROOT / "policies"
TINY = {"min_time": 0.002, "repeats": 1}


def _numeric(cell: str) -> bool:
    try:
        float(cell.replace(",", ""))
    except ValueError:
        return False
    return True


def test_shipped_engine_table_has_every_case() -> None:
    table, results = shipped_engine(POLICIES, **TINY)
    assert table.column("case") == [c.name for c in SHIPPED_CASES]
    assert table.column("path") == [c.path for c in SHIPPED_CASES]
    for header in ("evaluate()", "input+evaluate()", "Decider.check()"):
        assert all(_numeric(cell) for cell in table.column(header)), header
    assert len(results["cases"]) == len(SHIPPED_CASES)


def test_generated_sets_compile_and_decide_without_errors() -> None:
    table, results = generated_engine((10, 100), **TINY, isolate=False)
    assert table.column("rules") == ["10", "100"]
    for row in results["sets"]:
        assert row["errors"] == 0
        # Every action carries the same five rules, whatever the size of the set.
        assert 5 <= row["rules_tried"] <= 6
    assert "ratio_1000_vs_10" not in results  # only with both sizes


def test_generated_rules_spread_over_many_actions() -> None:
    rules = generate_rules(1_000)
    assert len({r["id"] for r in rules}) == 1_000
    actions = {a for r in rules for a in r["actions"]}
    assert len(actions) >= 150
    assert sum(r["effect"] == "deny" for r in rules) == 200


def test_authz_agrees_with_the_oracle() -> None:
    """Runs with or without the peer packages: authz's own answers match the policy's meaning."""
    tables, results = compare_peers(n_requests=60, rounds=1, min_time=0.001)
    agreement = tables[0]
    assert agreement.column("engine")[0] == "authz (CEL)"
    assert agreement.column("disagreements with the oracle")[0] == "0"
    assert results["allowed"] > 0 and results["allowed"] < results["requests"]


def test_peers_agree() -> None:
    _, missing = available_peers()
    if missing:
        pytest.skip(
            f"peer package(s) not installed: {', '.join(missing)} (pip install -e '.[bench]')"
        )
    tables, results = compare_peers(n_requests=120, rounds=1, min_time=0.001)
    agreement, speed = tables
    assert agreement.column("engine") == [
        "authz (CEL)",
        "cedarpy (Cedar)",
        "regopy (OPA Rego)",
        "pycasbin (RBAC with domains)",
    ]
    assert results["all_agree"], results["disagreements"]
    assert set(agreement.column("disagreements with the oracle")) == {"0"}
    assert len(speed.rows) == 5
    assert set(results["us_per_decision"]) == {"authz", "cedarpy", "regopy", "pycasbin"}


def test_targets_say_what_was_not_run() -> None:
    verdicts = targets({})
    assert len(verdicts) == 7
    assert all(v.holds is None for v in verdicts)


def test_the_p99_target_states_what_the_no_op_server_itself_reached() -> None:
    def scenario(p99: float, achieved: float) -> dict[str, Any]:
        return {"req_per_s": 2 * achieved, "half": {"p99_ms": p99, "achieved": achieved}}

    e2e = {"noop": scenario(10.2, 3836), "check_session": scenario(6.5, 1052)}
    [p99] = [v for v in targets({"e2e": {"scenarios": e2e}}) if v.target.startswith("p99")]
    assert p99.holds is False
    assert "check_session 6.5 ms @ 1,052 req/s (worst: check_session)" in p99.measured
    assert p99.measured.endswith("the no-op server itself 10.2 ms @ 3,836 req/s")


def test_report_keeps_hand_written_text(tmp_path: Path) -> None:
    out = tmp_path / "benchmarks.md"
    table = Table("A table", ["what", "value"])
    table.add("x", 1.5)
    kwargs = {
        "machine": {"date": "today", "nproc": "2"},
        "sections": [("Part", [table], "intro")],
        "verdicts": targets({}),
        "goals": cerbos_goals({}),
        "command": "make bench",
        "elapsed_s": 1.0,
        "appendix": "## Appendix",
    }
    write_markdown(out, **kwargs)  # type: ignore[arg-type]
    text = out.read_text().replace(KEEP_MARKER, KEEP_MARKER + "\n## Notes by hand\n\nkept\n")
    out.write_text(text)
    write_markdown(out, **kwargs)  # type: ignore[arg-type]
    text = out.read_text()
    assert text.count(KEEP_MARKER) == 1 and text.count(KEEP_END) == 1
    assert "| x | 1.50 |" in text
    assert text.index("| x | 1.50 |") < text.index("## Notes by hand") < text.index("## Appendix")


# -- the Cerbos comparison (issue 19) -----------------------------------------------------------

# The documents policy without its suspension deny: a policy that no longer means what the oracle
# says, so the equivalence check must catch it.
WITHOUT_SUSPENSION = documents.AUTHZ_POLICY.replace(
    "when: principal.attributes.suspended == true", 'when: principal.id == ""'
)
assert WITHOUT_SUSPENSION != documents.AUTHZ_POLICY


def _engine_answers(policy_text: str, grid: documents.Grid) -> dict[tuple[str, str, str], bool]:
    with tempfile.TemporaryDirectory() as tmp:
        policy_set = load_and_compile(documents.write_authz_policies(Path(tmp), policy_text))
    answers = {}
    for person, document, action in grid.cases():
        decision = evaluate(
            policy_set,
            build_input(
                action=action,
                principal={"type": "user", "id": person.id, "attributes": person.attributes()},
                resource={
                    "type": "document",
                    "id": document.id,
                    "attributes": document.attributes(),
                },
            ),
        )
        assert not decision.errors, decision.errors
        answers[(person.id, document.id, action)] = decision.allowed
    return answers


def test_documents_policy_on_the_authz_engine_matches_the_oracle() -> None:
    grid = documents.grid()
    assert len(grid) == 2_880
    allowed = sum(documents.oracle(*case) for case in grid.cases())
    assert 0 < allowed < len(grid)
    assert (
        documents.disagreements("authz", _engine_answers(documents.AUTHZ_POLICY, grid), grid) == []
    )
    # The load generator's requests mix ALLOW and DENY: the single Check allows, the batch of 10
    # allows 3.
    assert documents.oracle(*documents.SINGLE)
    assert [documents.oracle(*case) for case in documents.BATCH].count(True) == 3


def test_equivalence_check_catches_a_policy_that_means_something_else() -> None:
    grid = documents.grid()
    wrong = documents.disagreements("authz", _engine_answers(WITHOUT_SUSPENSION, grid), grid)
    assert wrong and all(d.principal in {p.id for p in grid.people if p.suspended} for d in wrong)
    assert all(d.got and not d.expected for d in wrong)
    # A missing answer is a disagreement too: it was never checked.
    answers = _engine_answers(documents.AUTHZ_POLICY, grid)
    answers.pop(next(iter(answers)))
    assert len(documents.disagreements("authz", answers, grid)) == 1


def test_authz_server_answers_the_grid_as_the_oracle_over_grpc() -> None:
    """The harness's own check, against a real authz server process: the grid through CheckBatch,
    then the load generator's Check and CheckBatch bodies."""
    with cerbos.started([cerbos.BY_KEY["authz_off"]]) as servers:
        table, results = cerbos.check_agreement(servers)
        assert results["all_agree"], results["disagreements"]
        assert table.column("decisions") == ["2,880"]
        assert table.column("disagreements with the oracle") == ["0"]
        client = servers["authz_off"].client
        for workload in ("check", "batch10"):
            assert cerbos.verify(client, workload, client.request(workload)) > 5


def test_authz_server_with_a_wrong_policy_is_refused() -> None:
    with cerbos.started([cerbos.BY_KEY["authz_off"]], authz_policy=WITHOUT_SUSPENSION) as servers:
        table, results = cerbos.check_agreement(servers)
    assert not results["all_agree"]
    assert results["disagreements_per_server"]["authz_off"] > 0
    assert "no speed is reported" in table.notes[-1]
    goals = cerbos_goals({"cerbos": results})
    assert [g.holds for g in goals] == [None] * 5
    assert all("disagree" in g.measured for g in goals)


def test_cerbos_part_is_skipped_with_its_reason_when_cerbos_is_missing(tmp_path: Path) -> None:
    missing = tmp_path / "no-cerbos-here"
    tables, results = cerbos.run_cerbos(
        quick=True, duration=0.1, warmup=0.1, rounds=1, binary=str(missing)
    )
    assert tables == []
    assert "h2load" in results["skipped"] or str(missing) in results["skipped"]
    goals = cerbos_goals({"cerbos": results})
    assert all(g.holds is None and results["skipped"] in g.measured for g in goals)


def test_goals_say_by_how_much() -> None:
    assert at_least(0.36, 1.0) == "0.36× against ≥ 1.00×: 64% short, needs 2.78× what it has"
    assert at_least(1.6, 1.5).endswith("7% to spare")
    assert at_most(2.0, 1.3) == "2.00× against ≤ 1.30×: 54% over, must come down by 35%"
    assert at_most(1.0, 1.3).endswith("23% to spare")

    def row(**numbers: float) -> dict[str, float]:
        return {"req_per_s": 0.0, "decisions_per_s": 0.0, "cpu_us_per_req": 0.0, **numbers}

    rows = {
        "check:authz_off:64": row(req_per_s=3_545, cpu_us_per_req=303),
        "check:cerbos_off:64": row(req_per_s=9_889, cpu_us_per_req=149),
        "batch10:authz_off:64": row(decisions_per_s=40_000),
        "batch10:cerbos_off:64": row(decisions_per_s=20_000),
    }
    goals = cerbos_goals({"cerbos": {"all_agree": True, "rows": rows}})
    assert [g.holds for g in goals] == [False, True, None, False, None]
    assert goals[0].measured == "authz 3,545 vs Cerbos 9,889 req/s = 0.36×"
    sentences = plain_summary(goals)
    assert sentences[0].startswith("Check req/s ≥ 1.0× Cerbos's: not met — 0.36× against")
    assert sentences[1].startswith("Batch of 10: decisions/s ≥ 1.5× Cerbos's: met — 2.00×")
    assert sentences[2].endswith("not run.")
    # The report names each goal missed, and only those, and points at the hand-written analysis.
    placeholder = goals_table(goals).notes[-1]
    assert placeholder.startswith("Goals missed:") and "written by hand below" in placeholder
    assert "Check req/s" in placeholder and "Server CPU per Check" in placeholder
    assert "Batch of 10" not in placeholder
    # A goal holds only if it holds with every question evaluated as well (h2load's one body is
    # otherwise all recalled questions).
    rows["batch10:authz_eval:64"] = row(decisions_per_s=25_000)
    batch = cerbos_goals({"cerbos": {"all_agree": True, "rows": rows}})[1]
    assert batch.holds is False
    assert batch.measured.endswith("; every question evaluated: authz 25,000 = 1.25×")
    assert batch.margin.endswith(
        "; evaluated: 1.25× against ≥ 1.50×: 17% short, needs 1.20× what it has"
    )


def test_the_comparison_splits_authz_cpu_by_thread_for_its_rows_at_the_maximum_rate() -> None:
    """Only authz's rows at 64 in flight: Cerbos's threads are Go's, and at one in flight the
    split would say nothing new."""
    from authz.bench.cerbos import ROWS, _by_thread
    from authz.bench.load import THREAD_ROLES

    split = {"event loop": 250.0, "audit writer": 60.0, "other threads": 40.0, "supervisor": 0.0}
    summaries = {
        r.key: {
            "product": cerbos.BY_KEY[r.server].product,
            "cpu_us_per_req": 360.0,
            "threads_us_per_req": split,
        }
        for r in ROWS
    }
    table = _by_thread(list(ROWS), summaries)
    wanted = [
        r.label for r in ROWS if cerbos.BY_KEY[r.server].product == "authz" and r.in_flight > 1
    ]
    assert table.column("scenario") == wanted and wanted
    assert table.headers == ["scenario", "all threads", *THREAD_ROLES]
    assert set(table.column("audit writer")) == {"60.0"}


# h2load's summary of a run where one request straddled the end of the warm-up (seen in a run).
H2LOAD_SUMMARY = """
finished in 1.00s, 2096.00 req/s, 270.75KB/s
requests: 1048 total, 1048 started, 1048 done, 1048 succeeded, 0 failed, 0 errored, 0 timeout
status codes: 1049 2xx, 0 3xx, 0 4xx, 0 5xx
"""


def test_load_run_refuses_non_2xx_replies_only() -> None:
    # One more 2xx than "done": the warm-up's straddler.
    assert not non_2xx(H2LOAD_SUMMARY, in_flight=64)
    assert non_2xx(H2LOAD_SUMMARY.replace("0 4xx", "3 4xx"), in_flight=64)
    # A status read in the warm-up of a stream that ended after it (seen once, Cerbos at 9,000
    # req/s): fewer 2xx than "done", by no more than the requests in flight.
    assert not non_2xx(H2LOAD_SUMMARY.replace("1049 2xx", "1047 2xx"), in_flight=64)
    assert non_2xx(H2LOAD_SUMMARY.replace("1049 2xx", "1040 2xx"), in_flight=4)


# A grandchild that burns 0.3 s of CPU, says so, and stays alive until its stdin closes.
BURN = """
import sys, time
while time.process_time() < 0.3:
    pass
print("burnt", flush=True)
sys.stdin.read()
"""


def test_server_cpu_counts_every_process_of_the_server() -> None:
    """A server of several processes: its children's CPU is counted, not only the root's."""
    spawn = f"import subprocess, sys; subprocess.run([sys.executable, '-c', {BURN!r}])"
    root = subprocess.Popen(
        [sys.executable, "-c", spawn], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert root.stdout is not None
        assert root.stdout.readline().strip() == "burnt"  # the grandchild is alive and has burnt
        fields = Path(f"/proc/{root.pid}/stat").read_text().rsplit(")", 1)[1].split()
        root_only = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        assert process_tree_cpu_seconds(root.pid) >= 0.25 > root_only
    finally:
        root.communicate(timeout=30)
    assert process_tree_cpu_seconds(root.pid) != process_tree_cpu_seconds(root.pid)  # gone: NaN


# A worker process: its main thread burns 0.15 s of CPU; then, told to go, its audit writer
# thread (named as authz names it) burns 0.3 s while the main thread waits; then both wait.
THREADS = """
import sys, threading, time
from authz.audit import log

go, done = threading.Event(), threading.Event()

def writer():
    log._name_for_the_system()
    go.wait()
    started = time.thread_time()
    while time.thread_time() - started < 0.3:
        pass
    done.set()
    threading.Event().wait()  # a live thread: an ended one's CPU is no longer its own

threading.Thread(target=writer, daemon=True).start()
started = time.thread_time()
while time.thread_time() - started < 0.15:
    pass
print("loop burnt", flush=True)
sys.stdin.readline()
go.set()
done.wait()
print("writer burnt", flush=True)
sys.stdin.read()
"""


def test_server_cpu_is_split_by_thread() -> None:
    """The A/B report's split: a worker's main thread is its event loop, the thread named as
    the audit writer names itself is the writer, and the root over workers is the supervisor."""
    from authz.bench.load import thread_cpu_seconds

    spawn = f"import subprocess, sys; subprocess.run([sys.executable, '-c', {THREADS!r}])"
    root = subprocess.Popen(
        [sys.executable, "-c", spawn], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert root.stdout is not None and root.stdin is not None
        assert root.stdout.readline().strip() == "loop burnt"
        before = thread_cpu_seconds(root.pid)
        root.stdin.write("go\n")
        root.stdin.flush()
        assert root.stdout.readline().strip() == "writer burnt"
        after = thread_cpu_seconds(root.pid)
    finally:
        root.communicate(timeout=30)
    assert before["event loop"] >= 0.1  # the worker's main thread, not the root's
    assert after["audit writer"] - before["audit writer"] >= 0.25
    assert after["event loop"] - before["event loop"] < 0.1  # the writer's CPU is not the loop's
    assert after["supervisor"] < 0.25  # the root only waited (its start-up is all it used)


def test_connections_are_counted_per_worker_of_the_server(tmp_path: Path) -> None:
    """The report's spread of connections over authz's workers: every connection is found, in
    the worker that holds it, and each listening worker is listed (with 0 if it holds none)."""
    import socket
    import time

    from authz.bench.world import ServerProcess

    policies = cerbos.write_authz_policies(tmp_path / "policies", cerbos.AUTHZ_POLICY)
    server = ServerProcess(
        [
            "--kind",
            "authz",
            "--audit",
            "off",
            "--policies",
            str(policies),
            "--data-dir",
            str(tmp_path / "data"),
            "--max-seconds",
            "120",
            "--workers",
            "2",
        ],
        tmp_path / "server.log",
    )
    clients: list[socket.socket] = []
    try:
        deadline = time.monotonic() + 30
        while len(connections_per_process(server.pid, server.port)) < 2:
            assert time.monotonic() < deadline, "two workers never listened"
            time.sleep(0.1)
        assert connections_per_process(server.pid, server.port) == (0, 0)
        clients = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(6)]
        while sum(spread := connections_per_process(server.pid, server.port)) < 6:
            assert time.monotonic() < deadline, f"connections not all found: {spread}"
            time.sleep(0.1)
        assert len(spread) == 2 and sum(spread) == 6 and spread[0] >= spread[1]
    finally:
        for client in clients:
            client.close()
        server.stop()


CERBOS_BINARY, CERBOS_MISSING = cerbos.find_cerbos()
needs_cerbos = pytest.mark.skipif(CERBOS_BINARY is None, reason=CERBOS_MISSING)


@needs_cerbos
def test_cerbos_and_authz_agree_with_the_oracle() -> None:
    """Both servers on their own policy files answer all 2,880 decisions as the oracle; the
    Cerbos request bodies (built from its reflection descriptors) get the oracle's answers."""
    keys = ("authz_off", "cerbos_off")
    with cerbos.started([cerbos.BY_KEY[k] for k in keys], cerbos=CERBOS_BINARY) as servers:
        table, results = cerbos.check_agreement(servers)
        assert results["all_agree"], results["disagreements"]
        assert table.column("disagreements with the oracle") == ["0", "0"]
        client = servers["cerbos_off"].client
        assert isinstance(client, cerbos.CerbosClient)
        for workload in ("check", "batch10"):
            assert cerbos.verify(client, workload, client.request(workload)) > 5


@needs_cerbos
def test_cerbos_part_refuses_to_measure_speed_when_answers_disagree() -> None:
    tables, results = cerbos.run_cerbos(
        quick=True,
        duration=0.1,
        warmup=0.1,
        rounds=1,
        binary=str(CERBOS_BINARY),
        authz_policy=WITHOUT_SUSPENSION,
    )
    if "skipped" in results:
        pytest.skip(results["skipped"])
    assert [t.title for t in tables] == ["Against Cerbos: agreement with the oracle"]
    assert "rows" not in results
    per_server = results["disagreements_per_server"]
    assert per_server["cerbos_off"] == 0 and per_server["authz_off"] > 0


def test_servicer_bench_times_authz_code_without_grpc() -> None:
    import asyncio

    from authz.bench import servicer
    from authz.policy import engine
    from authz.server import convert

    runs = [{"recall": recall} for recall in ("on", "off")]
    runs += [{"halves": halves} for halves in servicer.SPLIT]  # --split
    for run in runs:
        timed = asyncio.run(servicer.measure(calls=40, repeats=1, **run))
        assert set(timed) == {"check", "batch10"}
        assert 0 < timed["check"] < timed["batch10"]  # ten decisions cost more than one
        # Each run leaves the process as it found it: AUTHZ_RECALL's default, on.
        assert engine.recall(True) is True and convert.keep_entities(True) is True


def test_audit_record_bench_reports_the_loop_thread_and_its_steps_apart() -> None:
    from authz.bench.audit_record import MODES, measure

    result = measure(
        Path("policies"), decisions=64, concurrency=4, batch=1, rounds=1, database_url=None
    )
    assert result["verify_ok"]
    for mode in MODES:
        row = result[mode]
        # The loop thread's CPU is part of the process's; the writer's is the rest.
        assert 0 < row["loop_us_per_decision"] <= row["cpu_us_per_decision"] + 1
    # off, and the runs that split the loop's share (built, encoded), have no writer.
    for mode in ("off", "built", "encoded"):
        assert result[mode]["writer_us_per_decision"] == 0
        assert result[mode]["records_per_commit"] == 0
    assert result["durable"]["records_per_commit"] >= 1
    assert result["off"]["evaluate_us_per_decision"] is None  # timed only with --steps


def test_ab_refuses_what_is_not_a_tree_or_a_variable(tmp_path: Path) -> None:
    from authz.bench import ab

    tree = ab.Tree.parse(f"{SRC}:AUTHZ_X=1,AUTHZ_Y=a=b")
    assert tree.env == {"AUTHZ_X": "1", "AUTHZ_Y": "a=b"} and tree.src == SRC.resolve()
    with pytest.raises(Exception, match="holds no authz package"):
        ab.Tree.parse(str(tmp_path))
    with pytest.raises(Exception, match="is not NAME=VALUE"):
        ab.Tree.parse(f"{SRC}:AUTHZ_X")


@pytest.mark.skipif(h2load_path() is None, reason="h2load (Debian's nghttp2-client) is missing")
def test_ab_measures_each_tree_in_turn_and_reports_ratios_to_the_first(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from authz.bench import ab

    code = ab.main(
        [str(SRC), f"{SRC}:AUTHZ_BENCH_UNUSED=1", "--audit", "off", "--rounds", "1"]
        + ["--seconds", "0.5", "--in-flight", "1"]
    )
    out = capsys.readouterr()
    assert code == 0
    assert out.err.count("round 1:") == 2 and "round 2:" not in out.err
    rows = [line for line in out.out.splitlines() if line.startswith(str(SRC.resolve()))]
    assert len(rows) == 2, out.out
    assert "1.00×" in rows[0] and "AUTHZ_BENCH_UNUSED=1" in rows[1]


def test_rebalance_bench_moves_connections_between_workers_without_failing_a_call() -> None:
    """`python -m authz.bench.rebalance --no-kill`: two workers, connections past their age
    (1 s) moving all along under eight callers, and not one call fails."""
    from authz.bench import rebalance

    outcome = rebalance.measure(1.0, windows=2, window=2.0, kill=False)
    assert outcome.calls > 100 and outcome.failures == []
    # Each of the two channels opened its first connection and, 1 s on, at least another.
    assert outcome.connections >= 2 * rebalance.CHANNELS, outcome
    assert len(outcome.shares) == 2
