"""Issue 16 runbook: move from SQLite to PostgreSQL with `authz db copy`, losing nothing.

A real server fills a SQLite data directory (an add-on with its OAuth tokens, a session, decisions
with a shared part); the real `authz` binary copies it into a throwaway PostgreSQL schema; a new
server on PostgreSQL then serves the same session with the same tokens, and the audit log
verifies against the checkpoint taken before the move.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from authz.config import Settings
from authz.devtools.heroku_sim import HerokuSimulator, load_fixture
from authz.store import open_store
from authz.v1 import authorization_pb2 as pb
from tests.conftest import ROOT, RunningService
from tests.heroku_world import World, world_settings
from tests.pg import count, tables, use_backend
from tests.served import clean_env

ACME = "authz-curved-12345"


def authz(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "authz.cli", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=clean_env(),
        timeout=120,
    )


@pytest.fixture
def sim() -> Iterator[HerokuSimulator]:
    with HerokuSimulator(load_fixture()) as simulator:
        yield simulator


@pytest.fixture
def postgres_url(tmp_path: Path) -> Iterator[str]:
    with use_backend("postgresql", tmp_path) as backend:
        yield backend.target


def fill(world: World) -> tuple[str, str, list[str]]:
    """An add-on with tokens, a session, and decisions; (resource id, session token, ids)."""
    acme = world.provision(ACME)
    token = world.login(acme, "alice")
    ids = [world.check(token, "dashboard.view", acme).decision_id]
    large = {"note": "x" * 2000}  # over 512 bytes: stored once, as a shared part
    principal = pb.Principal(type="service", id="svc-web")
    principal.attributes.update(large)
    batch = world.authz.CheckBatch(
        pb.CheckBatchRequest(
            principal=principal,
            items=[
                pb.CheckItem(action=a, resource=pb.Resource(type="account", id="1"))
                for a in ("billing.update", "account.deactivate")
            ],
        )
    )
    ids += [r.decision_id for r in batch.results]
    return acme, token, ids


def test_a_copy_keeps_sessions_tokens_and_the_audit_chain(
    sim: HerokuSimulator,
    start: Callable[..., RunningService],
    base_settings: Settings,
    tmp_path: Path,
    postgres_url: str,
) -> None:
    data = tmp_path / "sqlite"
    first = World(sim, start(world_settings(replace(base_settings, data_dir=data), sim)))
    acme, session, ids = fill(first)
    first.svc.stop()
    first.svc.stop = lambda: None  # type: ignore[method-assign]  # the fixture stops it too
    taken = authz("audit", "checkpoint", "--data-dir", str(data))
    assert taken.returncode == 0, taken.stderr
    head = taken.stdout.strip().splitlines()[-1]

    copied = authz("db", "copy", "--data-dir", str(data), "--database-url", postgres_url)
    assert copied.returncode == 0, copied.stderr
    assert "addons: 1 rows" in copied.stdout and "heroku_oauth_tokens: 1 rows" in copied.stdout
    assert "audit_part: 1 rows" in copied.stdout
    assert f"audit log head {head} " in copied.stdout

    proved = authz("audit", "verify", "--database-url", postgres_url, "--expect", head)
    assert proved.returncode == 0, proved.stderr
    for decision_id in ids:
        shown = authz("audit", "show", decision_id, "--database-url", postgres_url)
        assert shown.returncode == 0 and f"Decision {decision_id}" in shown.stdout
    assert (
        '"note": "' + "x" * 2000
        in authz("audit", "show", ids[1], "--json", "--database-url", postgres_url).stdout
    )

    # A server on PostgreSQL: the same session, and the add-on's tokens still fetch its app's
    # access list (a fresh cache), so alice is still allowed; its decision extends the chain.
    settings = world_settings(
        replace(base_settings, data_dir=tmp_path / "unused", database_url=postgres_url), sim
    )
    second = World(sim, start(settings))
    answer = second.check(session, "dashboard.view", acme)
    assert answer.allowed, answer.reasons
    second.svc.stop()
    second.svc.stop = lambda: None  # type: ignore[method-assign]
    again = authz("audit", "verify", "--database-url", postgres_url, "--expect", head)
    assert again.returncode == 0, again.stderr

    # A second copy into the same database is refused; nothing is added.
    with open_store(postgres_url) as db:
        before = count(db, "audit_log")
    refused = authz("db", "copy", "--data-dir", str(data), "--database-url", postgres_url)
    assert refused.returncode == 1
    assert "the target database is not empty" in refused.stderr
    with open_store(postgres_url) as db:
        assert count(db, "audit_log") == before


def test_a_log_that_does_not_verify_is_not_copied(
    start: Callable[..., RunningService],
    base_settings: Settings,
    tmp_path: Path,
    postgres_url: str,
) -> None:
    data = tmp_path / "sqlite"
    svc = start(replace(base_settings, data_dir=data))
    svc.channel.close()
    svc.stop()
    svc.stop = lambda: None  # type: ignore[method-assign]
    # No decision yet: a log with one forged entry.
    with sqlite3.connect(data / "audit.db") as db:
        db.execute(
            "INSERT INTO audit_log (seq, decision_id, time, kind, effect, rule_ids, record, "
            "prev_hash, hash) VALUES (1, 'forged', 0, 'check', 'ALLOW', '[]', '{}', ?, ?)",
            ("0" * 64, "f" * 64),
        )
        db.execute("UPDATE audit_head SET seq = 1, hash = ?", ("f" * 64,))
    refused = authz("db", "copy", "--data-dir", str(data), "--database-url", postgres_url)
    assert refused.returncode == 1
    assert "does not verify" in refused.stderr and "nothing was copied" in refused.stderr
    with open_store(postgres_url) as db:
        assert tables(db) == []  # refused before anything was written there


def test_copy_needs_a_postgresql_target(tmp_path: Path) -> None:
    result = authz("db", "copy", "--data-dir", str(tmp_path))
    assert result.returncode == 2
    assert "name the PostgreSQL database" in result.stderr
    missing = authz(
        "db", "copy", "--data-dir", str(tmp_path), "--database-url", "postgresql://x@127.0.0.1/x"
    )
    assert missing.returncode == 1 and "no state.db in" in missing.stderr
