"""`authz audit …`: table/JSON/CSV output, show explains, verify/prune/stats exit codes, and the
log found through the same settings as `authz serve` (AUTHZ_DATA_DIR, DATABASE_URL).

The tests taking `log` run on both backends: `--data-dir DIR` (SQLite) and `--database-url URL`
(PostgreSQL), or the environment alone.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from authz.audit import AuditLog
from authz.audit.testing import execute_sql, fetch_all, make_record
from authz.cli.common import ExitCode
from authz.cli.main import main
from tests.pg import BACKENDS, use_backend

DENY_SUSPENDED = ("base", "deny-suspended", "DENY", "the add-on is suspended")
OWNER_READS = ("base", "owner-reads", "ALLOW", "owners may read")


DATABASE_VARIABLES = ("AUTHZ_DATABASE_URL", "AUTHZ_DATABASE_URL_FILE", "DATABASE_URL")


def run(argv: list[str], data_dir: Path | None = None, database_url: str | None = None) -> int:
    """`authz …` with AUTHZ_DATA_DIR (default a directory that does not exist) and DATABASE_URL
    set as given, the way an operator's shell has them."""
    saved = {name: os.environ.get(name) for name in ("AUTHZ_DATA_DIR", *DATABASE_VARIABLES)}
    try:
        for name in DATABASE_VARIABLES:
            os.environ.pop(name, None)
        os.environ["AUTHZ_DATA_DIR"] = str(data_dir or Path("/nonexistent"))
        if database_url:
            os.environ["DATABASE_URL"] = database_url
        return main(argv)
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@dataclass
class Log:
    target: Path | str
    where: list[str]
    """The flags naming it: --data-dir DIR or --database-url URL."""
    data_dir: Path | None = None
    url: str | None = None


@pytest.fixture(params=BACKENDS)
def log(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Log]:
    with use_backend(request.param, tmp_path) as chosen:
        if chosen.name == "sqlite":
            chosen_log = Log(tmp_path / "audit.db", ["--data-dir", str(tmp_path)], tmp_path)
        else:
            chosen_log = Log(chosen.target, ["--database-url", chosen.target], url=chosen.target)
        fill(chosen_log.target)
        yield chosen_log


def fill(target: Path | str) -> None:
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
    with AuditLog(target) as audit:
        for rec in records:
            audit.record_blocking(rec)


def ids(log: Log) -> dict[str, str]:
    return dict(fetch_all(log.target, "SELECT principal_id, decision_id FROM audit_log"))


def test_query_prints_a_table(log: Log, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["audit", "query", *log.where]) == 0
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
    assert "carol@example.com" in out[2] and "sso.login" in out[2] and ids(log)["carol"] in out[2]
    assert "base/deny-suspended base/owner-reads" in out[3]


def test_query_json_lines(log: Log, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["audit", "query", *log.where, "--json", "--effect", "deny"]) == 0
    lines = capsys.readouterr().out.splitlines()
    records = [json.loads(line) for line in lines]
    assert [r["principal"]["id"] for r in records] == ["carol", "bob"]
    assert all(r["decision_id"] for r in records)
    assert records[1]["input"]["access"]["role"] == "collaborator"


def test_query_csv(log: Log, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["audit", "query", *log.where, "--csv", "--since", "1h"]
    assert run(argv) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [r["principal_id"] for r in rows] == ["carol", "bob"]
    assert rows[1]["matched_rules"] == "base/deny-suspended base/owner-reads"
    assert rows[1]["principal_email"] == "bob@example.com"
    assert rows[1]["time"].endswith("Z")


def test_query_other_filters(log: Log, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["audit", "query", *log.where, "--json"]
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


def test_query_bad_input(log: Log, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["audit", "query", *log.where, "--since", "someday"]) == 2
    assert "cannot read time 'someday'" in capsys.readouterr().err


def test_a_missing_log_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["audit", "query", "--data-dir", str(tmp_path / "missing")]) == ExitCode.NOT_FOUND
    assert "no audit log at" in capsys.readouterr().err
    with use_backend("postgresql", tmp_path) as empty:
        assert run(["audit", "verify", "--database-url", empty.target]) == ExitCode.NOT_FOUND
        err = capsys.readouterr().err
        assert "no audit log in postgresql://" in err and "no audit_log table" in err
    down = "postgresql://authz:s3cret@127.0.0.1:1/authz"
    assert run(["audit", "stats", "--database-url", down]) == ExitCode.ERROR
    err = capsys.readouterr().err
    assert "cannot open the audit log at postgresql://authz:***@127.0.0.1:1/authz" in err
    assert "s3cret" not in err


def test_the_log_defaults_to_the_getters(log: Log, capsys: pytest.CaptureFixture[str]) -> None:
    # No flag: the database URL (DATABASE_URL) when set, else DATA_DIR/audit.db.
    assert run(["audit", "query", "--json"], data_dir=log.data_dir, database_url=log.url) == 0
    assert len(capsys.readouterr().out.splitlines()) == 3


def test_flags_beat_the_environment(log: Log, capsys: pytest.CaptureFixture[str]) -> None:
    elsewhere = Path("/nonexistent/data")
    # --database-url beats DATA_DIR; --data-dir beats a DATABASE_URL.
    argv = ["audit", "query", "--json", *log.where]
    if log.url:
        assert run(argv, data_dir=elsewhere) == 0
    else:
        assert run(argv, database_url="postgresql://nobody@127.0.0.1:1/nothing") == 0
    assert len(capsys.readouterr().out.splitlines()) == 3


def test_database_url_flag_is_checked(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    both = ["--data-dir", str(tmp_path), "--database-url", "postgresql://h/db"]
    assert run(["audit", "verify", *both]) == 2
    assert "give --database-url or --data-dir, not both" in capsys.readouterr().err
    assert run(["audit", "query", "--database-url", "mysql://h/db"]) == 2
    assert "must be a postgresql:// (or postgres://) URL" in capsys.readouterr().err


def test_every_command_finds_the_log_where_serve_does(
    log: Log, capsys: pytest.CaptureFixture[str]
) -> None:
    """No flag: Settings.from_env().audit_target, the log `authz serve` writes."""
    env = {"data_dir": log.data_dir, "database_url": log.url}
    assert run(["audit", "verify"], **env) == 0
    assert "3 records verified" in capsys.readouterr().out
    assert run(["audit", "checkpoint"], **env) == 0
    assert capsys.readouterr().out.startswith("3:")
    assert run(["audit", "stats", "--json", "--since", "3h"], **env) == 0
    assert json.loads(capsys.readouterr().out)["total"] == 3
    assert run(["audit", "show", ids(log)["bob"]], **env) == 0
    assert "DENIED by 1 deny rule(s)" in capsys.readouterr().out


def test_a_bad_database_url_in_the_environment_is_a_usage_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("AUTHZ_DATABASE_URL", "sqlite:///x.db")
    assert main(["audit", "verify"]) == ExitCode.USAGE
    assert "AUTHZ_DATABASE_URL must be a postgresql://" in capsys.readouterr().err


def test_exports_are_complete(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--json and --csv write every matching record; only the table stops at 100 by default."""
    with AuditLog(tmp_path / "audit.db") as audit:
        for i in range(130):
            audit.record_blocking(make_record(time=1_000_000.0 + i))
    where = ["--data-dir", str(tmp_path)]
    assert run(["audit", "query", "--json", *where]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 130
    assert run(["audit", "query", "--csv", *where]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 131  # and the header
    assert run(["audit", "query", "--csv", "--limit", "7", *where]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 8
    assert run(["audit", "query", *where]) == 0
    out, err = capsys.readouterr()
    assert len(out.splitlines()) == 102 and "showing the newest 100" in err


def test_show_explains_a_deny_by_rule(log: Log, capsys: pytest.CaptureFixture[str]) -> None:
    decision_id = ids(log)["bob"]
    assert run(["audit", "show", decision_id, *log.where]) == 0
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


def test_show_explains_default_deny_and_allow(log: Log, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["audit", "show", ids(log)["carol"], *log.where]) == 0
    out = capsys.readouterr().out
    assert "DENIED by default: no allow rule matched." in out
    assert "sso decision" in out
    assert run(["audit", "show", ids(log)["alice"], *log.where]) == 0
    out = capsys.readouterr().out
    assert "ALLOWED: 1 allow rule(s) matched and no deny rule matched." in out
    assert "role 'owner', fact 12.5 s old" in out


def test_show_json_and_unknown_id(log: Log, capsys: pytest.CaptureFixture[str]) -> None:
    decision_id = ids(log)["alice"]
    assert run(["audit", "show", decision_id, "--json", *log.where]) == 0
    assert json.loads(capsys.readouterr().out)["decision_id"] == decision_id
    assert run(["audit", "show", "nope", *log.where]) == ExitCode.NOT_FOUND
    assert "no decision nope" in capsys.readouterr().err


def test_show_and_query_put_shared_parts_back(log: Log, capsys: pytest.CaptureFixture[str]) -> None:
    """A batch's principal is stored once; show, query --json and --csv show it whole."""
    record = make_record(principal=("user", "dave"), email="dave@example.com")
    principal = {"type": "user", "id": "dave", "attributes": {"team": "t" * 800}}
    del record["input"]["principal"]
    with AuditLog(log.target) as audit:
        asyncio.run(audit.record_many([record], {"input.principal": principal}))
    ((stored,),) = fetch_all(
        log.target, "SELECT record FROM audit_log WHERE decision_id = ?", (record["decision_id"],)
    )
    assert "t" * 800 not in stored  # stored once, apart
    assert run(["audit", "show", record["decision_id"], *log.where]) == 0
    out = capsys.readouterr().out
    assert "input.principal is stored once for its batch: shared part" in out
    assert '"team": "' + "t" * 800 in out  # the facts, whole
    assert run(["audit", "show", record["decision_id"], "--json", *log.where]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown == {**record, "input": {**record["input"], "principal": principal}}
    assert run(["audit", "query", "--json", "--principal", "user:dave", *log.where]) == 0
    assert json.loads(capsys.readouterr().out) == shown
    assert run(["audit", "verify", *log.where]) == 0


def test_verify_exit_codes(log: Log, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["audit", "verify", *log.where]) == 0
    assert "audit log OK: 3 records verified" in capsys.readouterr().out
    bob = ids(log)["bob"]
    execute_sql(
        log.target, "UPDATE audit_log SET record = replace(record, 'DENY', 'ALLOW') WHERE seq = 2"
    )
    assert run(["audit", "verify", *log.where]) == ExitCode.TAMPERED
    err = capsys.readouterr().err
    assert "TAMPERED" in err and "seq 2" in err and bob in err


def test_prune_and_stats(log: Log, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["audit", "prune", "--older-than", "1h", *log.where]) == 0
    out = capsys.readouterr().out
    assert "pruned 1 decision records older than 1h" in out
    assert "records up to seq 1" in out
    assert run(["audit", "verify", *log.where]) == 0
    assert "prune anchor at seq 1" in capsys.readouterr().out

    assert run(["audit", "stats", *log.where]) == 0
    out = capsys.readouterr().out
    assert "2 decisions (since " in out
    assert "ALLOW 0, DENY 2" in out
    assert "base/deny-suspended" in out
    assert "user:bob (bob@example.com)  1" in out

    assert run(["audit", "stats", "--json", "--since", "45s", *log.where]) == 0
    result: dict[str, Any] = json.loads(capsys.readouterr().out)
    assert result["total"] == 1 and result["by_kind"] == {"sso": 1}


def test_prune_needs_a_duration(log: Log, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        run(["audit", "prune", *log.where])
    assert run(["audit", "prune", "--older-than", "later", *log.where]) == 2
    assert "cannot read duration" in capsys.readouterr().err


def test_audit_needs_a_subcommand() -> None:
    with pytest.raises(SystemExit):
        run(["audit"])
