"""`authz audit …` handlers: table/JSON/CSV output, show explains, verify/prune/stats exit codes."""

from __future__ import annotations

import argparse
import csv
import io
import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from authz.audit import AuditLog
from authz.audit.commands import add_audit_commands, default_data_dir
from authz.audit.testing import make_record

DENY_SUSPENDED = ("base", "deny-suspended", "DENY", "the add-on is suspended")
OWNER_READS = ("base", "owner-reads", "ALLOW", "owners may read")


def run(argv: list[str], data_dir: Path | None = None) -> int:
    parser = argparse.ArgumentParser(prog="authz")
    subparsers = parser.add_subparsers(dest="command", required=True)
    add_audit_commands(subparsers, lambda: data_dir or Path("/nonexistent"))
    args = parser.parse_args(argv)
    status: int = args.func(args)
    return status


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    now = time.time()
    records = [
        make_record(time=now - 7200, principal=("user", "alice"), rules=[OWNER_READS]),
        make_record(
            time=now - 60,
            principal=("user", "bob"),
            email="bob@example.com",
            effect="DENY",
            rules=[DENY_SUSPENDED, OWNER_READS],
            errors=["base/deny-suspended: no such key: state; counted as matched"],
            access_role="collaborator",
            access_age=42.0,
        ),
        make_record(
            time=now - 30,
            kind="sso",
            principal=("user", "carol"),
            email="carol@example.com",
            effect="DENY",
            rules=[],
            action="sso.login",
            access_role=None,
        ),
    ]
    with AuditLog(tmp_path / "audit.db") as log:
        for rec in records:
            log.record_blocking(rec)
    return tmp_path


def ids(data_dir: Path) -> dict[str, str]:
    with sqlite3.connect(data_dir / "audit.db") as conn:
        return dict(conn.execute("SELECT principal_id, decision_id FROM audit_log"))


def test_query_prints_a_table(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["audit", "query", "--data-dir", str(data_dir)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == [
        "TIME",
        "(UTC)",
        "EFFECT",
        "KIND",
        "PRINCIPAL",
        "ACTION",
        "RESOURCE",
        "RULES",
        "DECISION",
        "ID",
    ]
    assert len(out) == 2 + 3
    assert (
        "carol@example.com" in out[2] and "sso.login" in out[2] and ids(data_dir)["carol"] in out[2]
    )
    assert "base/deny-suspended base/owner-reads" in out[3]


def test_query_json_lines(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["audit", "query", "--data-dir", str(data_dir), "--json", "--effect", "deny"]) == 0
    lines = capsys.readouterr().out.splitlines()
    records = [json.loads(line) for line in lines]
    assert [r["principal"]["id"] for r in records] == ["carol", "bob"]
    assert all(r["decision_id"] for r in records)
    assert records[1]["input"]["access"]["role"] == "collaborator"


def test_query_csv(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["audit", "query", "--data-dir", str(data_dir), "--csv", "--since", "1h"]
    assert run(argv) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [r["principal_id"] for r in rows] == ["carol", "bob"]
    assert rows[1]["matched_rules"] == "base/deny-suspended base/owner-reads"
    assert rows[1]["principal_email"] == "bob@example.com"
    assert rows[1]["time"].endswith("Z")


def test_query_other_filters(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["audit", "query", "--data-dir", str(data_dir), "--json"]
    for extra, expected in [
        (["--principal", "user:alice"], ["alice"]),
        (["--rule", "deny-suspended"], ["bob"]),
        (["--action", "account.*", "--limit", "1"], ["bob"]),
        (["--kind", "sso"], ["carol"]),
        (["--resource", "addon:a-1", "--app", "app-1", "--until", "45s"], ["bob", "alice"]),
    ]:
        assert run(base + extra) == 0
        lines = capsys.readouterr().out.splitlines()
        assert [json.loads(x)["principal"]["id"] for x in lines] == expected, extra


def test_query_bad_input(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["audit", "query", "--data-dir", str(data_dir), "--since", "someday"]) == 2
    assert "cannot read time 'someday'" in capsys.readouterr().err
    assert run(["audit", "query", "--data-dir", str(data_dir / "missing")]) == 1
    assert "no audit log at" in capsys.readouterr().err


def test_data_dir_defaults_to_the_getter(
    data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(["audit", "query", "--json"], data_dir=data_dir) == 0
    assert len(capsys.readouterr().out.splitlines()) == 3


def test_default_data_dir_reads_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AUTHZ_DATA_DIR", raising=False)
    assert default_data_dir() == Path("data")
    monkeypatch.setenv("AUTHZ_DATA_DIR", "/srv/authz")
    assert default_data_dir() == Path("/srv/authz")


def test_show_explains_a_deny_by_rule(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    decision_id = ids(data_dir)["bob"]
    assert run(["audit", "show", decision_id, "--data-dir", str(data_dir)]) == 0
    out = capsys.readouterr().out
    assert f"Decision {decision_id}: DENY" in out
    assert "user:bob (bob@example.com)" in out
    assert "account.read on addon:a-1 of app app-1" in out
    assert "DENIED by 1 deny rule(s)" in out
    assert "DENY rule base/deny-suspended: the add-on is suspended" in out
    assert "overridden" in out and "ALLOW rule base/owner-reads: owners may read" in out
    assert "no such key: state" in out
    assert "access:    role 'collaborator', fact 42.0 s old, fetched from Heroku at" in out
    assert "policy:   revision rev-1" in out
    assert "took:     0.420 ms" in out
    assert "Chain: seq 2" in out


def test_show_explains_default_deny_and_allow(
    data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(["audit", "show", ids(data_dir)["carol"], "--data-dir", str(data_dir)]) == 0
    out = capsys.readouterr().out
    assert "DENIED by default: no allow rule matched." in out
    assert "sso decision" in out
    assert run(["audit", "show", ids(data_dir)["alice"], "--data-dir", str(data_dir)]) == 0
    out = capsys.readouterr().out
    assert "ALLOWED: 1 allow rule(s) matched and no deny rule matched." in out
    assert "role 'owner', fact 12.5 s old" in out


def test_show_json_and_unknown_id(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    decision_id = ids(data_dir)["alice"]
    assert run(["audit", "show", decision_id, "--json", "--data-dir", str(data_dir)]) == 0
    assert json.loads(capsys.readouterr().out)["decision_id"] == decision_id
    assert run(["audit", "show", "nope", "--data-dir", str(data_dir)]) == 1
    assert "no decision nope" in capsys.readouterr().err


def test_verify_exit_codes(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["audit", "verify", "--data-dir", str(data_dir)]) == 0
    assert "audit log OK: 3 records verified" in capsys.readouterr().out
    bob = ids(data_dir)["bob"]
    with sqlite3.connect(data_dir / "audit.db") as conn:
        conn.execute("UPDATE audit_log SET record = replace(record, 'DENY', 'ALLOW') WHERE seq = 2")
    assert run(["audit", "verify", "--data-dir", str(data_dir)]) == 1
    err = capsys.readouterr().err
    assert "TAMPERED" in err and "seq 2" in err and bob in err


def test_prune_and_stats(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["audit", "prune", "--older-than", "1h", "--data-dir", str(data_dir)]) == 0
    out = capsys.readouterr().out
    assert "pruned 1 decision records older than 1h" in out
    assert "records up to seq 1" in out
    assert run(["audit", "verify", "--data-dir", str(data_dir)]) == 0
    assert "prune anchor at seq 1" in capsys.readouterr().out

    assert run(["audit", "stats", "--data-dir", str(data_dir)]) == 0
    out = capsys.readouterr().out
    assert "2 decisions (since " in out
    assert "ALLOW 0, DENY 2" in out
    assert "base/deny-suspended" in out
    assert "user:bob (bob@example.com)  1" in out

    assert run(["audit", "stats", "--json", "--since", "45s", "--data-dir", str(data_dir)]) == 0
    result: dict[str, Any] = json.loads(capsys.readouterr().out)
    assert result["total"] == 1 and result["by_kind"] == {"sso": 1}


def test_prune_needs_a_duration(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        run(["audit", "prune", "--data-dir", str(data_dir)])
    assert run(["audit", "prune", "--older-than", "later", "--data-dir", str(data_dir)]) == 2
    assert "cannot read duration" in capsys.readouterr().err


def test_audit_needs_a_subcommand() -> None:
    with pytest.raises(SystemExit):
        run(["audit"])
