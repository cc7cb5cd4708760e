"""Databases written by the release before the store and audit layers were merged (main 91e7a25,
tests/data/main-2026-12) upgrade in place: the state set's versions are kept, the audit log's
older version markers are adopted, and the log goes on as the same verified hash chain."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest

from authz.audit import AuditLog, migrate_audit, read_for_replay, verify
from authz.audit.testing import fetch_all, make_record
from authz.cli.main import main
from authz.store import MIGRATIONS, applied_versions, latest_version, migrate, open_store
from tests.pg import Backend

FIXTURE = Path(__file__).parent / "data" / "main-2026-12"
FIXTURE_SCHEMA = "authz_fixture"
STATE_VERSIONS = [m.version for m in MIGRATIONS]
KEPT = ["003", "004", "005", "010", "011", "012"]
"""The decisions the fixture still holds (its first three were pruned)."""


def restore(backend: Backend, tmp_path: Path) -> tuple[str, str]:
    """The fixture on this backend: (state target, audit target)."""
    if backend.name == "sqlite":
        for name in ("state.db", "audit.db"):
            shutil.copy(FIXTURE / name, tmp_path / name)
        return str(tmp_path / "state.db"), str(tmp_path / "audit.db")
    from tests.pg import postgres

    schema = backend.target.rsplit("search_path%3D", 1)[-1].rsplit("search_path=", 1)[-1]
    dump = (FIXTURE / "postgresql.sql").read_text()
    dump = dump.replace(f"CREATE SCHEMA {FIXTURE_SCHEMA};", "")
    postgres().admin.execute(dump.replace(f"{FIXTURE_SCHEMA}.", f'"{schema}".'))
    return backend.target, backend.target


def test_the_previous_release_s_databases_upgrade_in_place(
    backend: Backend, tmp_path: Path
) -> None:
    state, audit = restore(backend, tmp_path)
    assert latest_version() == 7, "a new state version: this test still holds, update it"
    with open_store(state) as db:
        assert applied_versions(db) == STATE_VERSIONS  # read before the table is converted
        assert migrate(db) == []  # nothing to apply: the table gains its migration_set
        assert applied_versions(db) == STATE_VERSIONS
        assert db.execute("SELECT app_name FROM addons").scalar() == "demo"
    before = verify(audit)
    assert before.ok and before.checked == 6 and before.prunes == 1, before.message
    assert migrate_audit(audit) == [3]  # versions 1 and 2 adopted, not run again; 3 is new
    sets = fetch_all(
        audit, "SELECT migration_set, version, name FROM schema_migrations ORDER BY 1, 2"
    )
    audit_sets = [(v, name) for s, v, name in sets if s == "audit"]
    assert [v for v, _ in audit_sets] == [1, 2, 3]
    assert [name.endswith("(adopted)") for _, name in audit_sets] == [True, True, False]

    # The log goes on: new records chain onto the old head, and every reader reads both.
    async def record() -> None:
        async with AuditLog(audit) as log:
            await log.record(make_record(decision_id="00000000-0000-7000-8000-000000000020"))

    asyncio.run(record())
    after = verify(audit)
    assert after.ok and after.checked == 7 and after.head_seq == before.head_seq + 1
    records = list(read_for_replay(audit))
    assert [r.decision_id[-3:] for r in records] == [*KEPT, "020"]
    assert records[3].input["principal"]["attributes"]["note"] == "x" * 600  # a shared part


def test_db_migrate_on_a_data_directory_of_the_previous_release(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in ("state.db", "audit.db"):
        shutil.copy(FIXTURE / name, tmp_path / name)
    for name in ("AUTHZ_DATABASE_URL", "AUTHZ_DATABASE_URL_FILE", "DATABASE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AUTHZ_DATA_DIR", str(tmp_path))
    assert main(["db", "migrate"]) == 0
    out = capsys.readouterr().out
    assert "state.db: up to date" in out and "audit log: applied schema versions [3]" in out
    assert main(["audit", "verify"]) == 0
    assert "6 records verified" in capsys.readouterr().out
