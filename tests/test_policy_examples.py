"""The shipped example policy sets stay valid and their own suites stay green."""

from __future__ import annotations

import pytest

from authz.cli import main
from authz.policy.compile import load_and_compile
from authz.policy.suites import run_suites
from tests.conftest import ROOT

AUTHZEN_TODO = ROOT / "examples" / "authzen-todo"


def test_authzen_todo_validates_strictly(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["policy", "validate", "--strict", str(AUTHZEN_TODO)]) == 0
    assert capsys.readouterr().out.startswith("ok: 3 policies, 11 rules, 9 catalogued actions")


def test_authzen_todo_suites_pass_with_full_coverage(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["policy", "test", "--min-coverage", "100", str(AUTHZEN_TODO)]) == 0
    report = run_suites(AUTHZEN_TODO)
    assert report.passed and not report.problems, capsys.readouterr().out
    assert {s.name for s in report.suites} == {"todo", "roles-read-literally", "gateway"}
    assert len(report.results) >= 100
    assert report.rule_coverage == 100.0 and report.condition_coverage == 100.0


def test_authzen_todo_directory_holds_the_five_pids() -> None:
    """The scenario's PIDs differ in one character only, the 7th (A, E, I, M, Q)."""
    users = load_and_compile(AUTHZEN_TODO).data["users"]
    pids = sorted(users)
    assert [pid[6] for pid in pids] == ["A", "E", "I", "M", "Q"]
    assert {f"{pid[:6]}_{pid[7:]}" for pid in pids} == {
        "CiRmZD_2MTRkMy1jMzlhLTQ3ODEtYjdiZC04Yjk2ZjVhNTEwMGQSBWxvY2Fs"
    }
    assert {users[pid]["id"]: users[pid]["roles"] for pid in pids} == {
        "rick@the-citadel.com": ["admin", "evil_genius"],
        "morty@the-citadel.com": ["editor"],
        "summer@the-smiths.com": ["editor"],
        "beth@the-smiths.com": ["viewer"],
        "jerry@the-smiths.com": ["viewer"],
    }
