"""The benchmark suite (python -m authz.bench) runs at tiny sizes: its tables have the rows they
should, the generated policies compile and decide without errors, and the peers agree with authz.

No timing is asserted: numbers from a shared CI machine mean nothing. The peer comparison needs
`pip install -e '.[bench]'`; without it (CI installs only .[dev]) that test is skipped.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from authz.bench.common import Table
from authz.bench.engine import SHIPPED_CASES, generate_rules, generated_engine, shipped_engine
from authz.bench.peers import available_peers, compare_peers
from authz.bench.report import KEEP_END, KEEP_MARKER, targets, write_markdown

ROOT = Path(__file__).resolve().parent.parent
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


def test_report_keeps_hand_written_text(tmp_path: Path) -> None:
    out = tmp_path / "benchmarks.md"
    table = Table("A table", ["what", "value"])
    table.add("x", 1.5)
    kwargs = {
        "machine": {"date": "today", "nproc": "2"},
        "sections": [("Part", [table], "intro")],
        "verdicts": targets({}),
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
