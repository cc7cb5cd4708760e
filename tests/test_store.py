"""The backend-neutral database interface and the schema migrations (authz.store), on SQLite and
on PostgreSQL."""

from __future__ import annotations

import logging
import multiprocessing
import sqlite3
import sys
import threading
import time
from pathlib import Path

import pytest

from authz.store import (
    MIGRATIONS,
    Database,
    Migration,
    MigrationSet,
    SqliteDatabase,
    StoreError,
    StoreUnavailable,
    applied_versions,
    as_database,
    database_url_from_env,
    ensure_schema,
    latest_version,
    migrate,
    open_database,
    open_store,
    redact_url,
)
from authz.store.migrations import portable
from authz.store.postgres import advisory_key, translate_placeholders
from authz.store.sqlite import open_sqlite
from tests.pg import Backend, count, tables

ALL_VERSIONS = [m.version for m in MIGRATIONS]
FACT_TABLES = {
    "addons",
    "heroku_oauth_tokens",
    "heroku_webhooks",
    "schema_migrations",
    "sessions",
    "sso_replay",
}


@pytest.fixture
def db(backend: Backend) -> Database:
    database = backend.open()
    migrate(database)
    return database


# -- choosing the backend ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, None),
        ({"DATABASE_URL": ""}, None),
        (
            {"DATABASE_URL": "postgres://u:pw@db.example:5432/d"},
            "postgresql://u:pw@db.example:5432/d",
        ),
        ({"DATABASE_URL": "postgresql://h/d"}, "postgresql://h/d"),
        ({"DATABASE_URL": "POSTGRES://h/d"}, "postgresql://h/d"),
        ({"DATABASE_URL": "mysql://h/d"}, None),  # somebody else's database: not ours to use
        (
            {"AUTHZ_DATABASE_URL": "postgres://a/x", "DATABASE_URL": "postgres://b/y"},
            "postgresql://a/x",
        ),
        ({"AUTHZ_DATABASE_URL": " ", "DATABASE_URL": "postgres://b/y"}, "postgresql://b/y"),
    ],
)
def test_database_url_from_env(env: dict[str, str], expected: str | None) -> None:
    assert database_url_from_env(env) == expected


def test_database_url_from_env_refuses_a_non_postgres_authz_url() -> None:
    with pytest.raises(StoreError, match="AUTHZ_DATABASE_URL") as info:
        database_url_from_env({"AUTHZ_DATABASE_URL": "mysql://user:secret@h/d"})
    assert "secret" not in str(info.value)


def test_database_url_from_a_file(tmp_path: Path) -> None:
    secret = tmp_path / "url"
    secret.write_text("postgres://u:pw@h/d\n")
    assert (
        database_url_from_env({"AUTHZ_DATABASE_URL_FILE": str(secret)}) == "postgresql://u:pw@h/d"
    )
    assert database_url_from_env({"DATABASE_URL_FILE": str(secret)}) == "postgresql://u:pw@h/d"
    with pytest.raises(StoreError, match="keep one"):
        database_url_from_env(
            {"AUTHZ_DATABASE_URL": "postgres://h/d", "AUTHZ_DATABASE_URL_FILE": str(secret)}
        )
    with pytest.raises(StoreError, match="cannot read"):
        database_url_from_env({"AUTHZ_DATABASE_URL_FILE": str(tmp_path / "missing")})


def test_redact_url() -> None:
    assert redact_url("postgresql://u:s3cret@h:5432/d") == "postgresql://u:***@h:5432/d"
    assert redact_url("postgresql://h/d?password=s3cret&sslmode=require") == (
        "postgresql://h/d?password=***&sslmode=require"
    )
    assert redact_url("postgresql://u@h/d") == "postgresql://u@h/d"


def test_translate_placeholders() -> None:
    assert translate_placeholders("SELECT ? , '?', \"a?\" FROM t WHERE x = ?") == (
        "SELECT %s , '?', \"a?\" FROM t WHERE x = %s"
    )
    assert translate_placeholders("SELECT 'it''s ?%' LIKE ?") == "SELECT 'it''s ?%%' LIKE %s"
    assert advisory_key("x") == advisory_key("x") != advisory_key("y")
    assert -(2**63) <= advisory_key("x") < 2**63


def test_open_store_chooses_sqlite_for_a_path(tmp_path: Path) -> None:
    with open_store(tmp_path / "sub" / "state.db") as db:
        assert isinstance(db, SqliteDatabase) and db.dialect == "sqlite"
        assert db.location.endswith("state.db") and "state.db" in repr(db)
        assert db.execute("PRAGMA journal_mode").scalar() == "wal"
    db.close()  # closing twice is harmless


def test_open_store_refuses_other_urls(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match=r"unsupported database URL mysql://u:\*\*\*@h/d"):
        open_store("mysql://u:secret@h/d")


def test_open_store_reports_an_unreachable_server_without_the_password() -> None:
    started = time.monotonic()
    with pytest.raises(StoreUnavailable) as info:
        open_store("postgres://authz:s3cret@127.0.0.1:1/none", timeout=0.5)
    assert time.monotonic() - started < 4
    message = str(info.value)
    assert "s3cret" not in message and "postgresql://authz:***@127.0.0.1:1/none" in message
    assert "refused" in message  # libpq's own reason


def test_stores_still_accept_a_sqlite_utils_database(tmp_path: Path) -> None:
    legacy = open_database(tmp_path / "state.db")
    adapted = as_database(legacy)
    assert as_database(legacy) is adapted  # one adapter (and one lock) per connection
    assert as_database(adapted) is adapted
    assert ensure_schema(legacy) is adapted and set(tables(adapted)) == FACT_TABLES
    adapted.close()  # borrowed: the connection stays open for its owner
    assert legacy.conn.execute("SELECT 1").fetchone() == (1,)
    with pytest.raises(TypeError):
        as_database("state.db")  # type: ignore[arg-type]


# -- the interface, the same on both backends ----------------------------------------------------


def test_execute_returns_rows_and_rowcount(db: Database) -> None:
    insert = "INSERT INTO sso_replay (replay_key, expires_at) VALUES (?, ?)"
    assert db.execute(insert, ("a%", 1.5)).rowcount == 1
    assert db.execute(insert, ("b?", 2.5)).rowcount == 1
    result = db.execute("SELECT replay_key, expires_at FROM sso_replay ORDER BY replay_key")
    assert result.rows == [("a%", 1.5), ("b?", 2.5)] and result.fetchall() == result.rows
    assert result.fetchone() == ("a%", 1.5)
    assert db.execute("SELECT COUNT(*) FROM sso_replay WHERE replay_key LIKE 'a%'").scalar() == 1
    assert db.execute("SELECT 1 FROM sso_replay WHERE replay_key = ?", ("zz",)).fetchone() is None
    assert db.execute("UPDATE sso_replay SET expires_at = ?", (3.0,)).rowcount == 2
    conflict = insert + " ON CONFLICT (replay_key) DO NOTHING"
    assert db.execute(conflict, ("a%", 9.0)).rowcount == 0


def test_values_round_trip_exactly(db: Database) -> None:
    # Unix timestamps with microseconds need 8-byte floats (PostgreSQL REAL would round them).
    stamp = 1_767_225_600.123456
    db.execute(
        "INSERT INTO heroku_oauth_tokens (resource_id, key_id, nonce, ciphertext, expires_at, "
        "updated_at) VALUES (?, ?, ?, ?, ?, ?)",
        ("r", "k", bytes(range(12)), b"\x00\xff" * 40, stamp, stamp),
    )
    row = db.execute("SELECT nonce, ciphertext, expires_at FROM heroku_oauth_tokens").fetchone()
    assert row == (bytes(range(12)), b"\x00\xff" * 40, stamp)
    assert isinstance(row[0], bytes)


def test_transaction_commits_or_rolls_back(backend: Backend, db: Database) -> None:
    other = backend.open()
    insert = "INSERT INTO sso_replay (replay_key, expires_at) VALUES (?, 1)"
    with db.transaction() as tx:
        assert tx is db
        db.execute(insert, ("kept",))
        assert count(db, "sso_replay") == 1  # the thread's statements join its transaction
        assert count(other, "sso_replay") == 0  # nobody else sees it before the commit
    assert count(other, "sso_replay") == 1
    with pytest.raises(ZeroDivisionError), db.transaction():
        db.execute(insert, ("dropped",))
        _ = 1 / 0
    assert [r[0] for r in other.execute("SELECT replay_key FROM sso_replay")] == ["kept"]


def test_nested_transaction_is_a_savepoint(db: Database) -> None:
    insert = "INSERT INTO sso_replay (replay_key, expires_at) VALUES (?, 1)"
    with db.transaction():
        db.execute(insert, ("outer",))
        with pytest.raises(KeyError), db.transaction(lock="inner"):
            db.execute(insert, ("inner",))
            raise KeyError("inner")
        with db.transaction():
            db.execute(insert, ("second",))
    keys = [r[0] for r in db.execute("SELECT replay_key FROM sso_replay ORDER BY replay_key")]
    assert keys == ["outer", "second"]


def test_a_failed_statement_rolls_the_transaction_back(db: Database) -> None:
    insert = "INSERT INTO sso_replay (replay_key, expires_at) VALUES (?, 1)"
    with pytest.raises(Exception), db.transaction():  # noqa: B017 - each backend's own error
        db.execute(insert, ("first",))
        db.execute(insert, ("first",))  # primary key violation
    assert count(db, "sso_replay") == 0
    db.execute(insert, ("after",))  # the connection is usable again
    assert count(db, "sso_replay") == 1


def test_transactions_naming_the_same_lock_never_overlap(backend: Backend, db: Database) -> None:
    # Read-modify-write of one counter from several connections: without serialisation,
    # increments would be lost (PostgreSQL's READ COMMITTED lets both read the old value).
    db.execute("INSERT INTO sso_replay (replay_key, expires_at) VALUES ('counter', 0)")
    threads_n, rounds = 4, 8
    databases = [backend.open() for _ in range(threads_n)]
    barrier = threading.Barrier(threads_n)

    def run(mine: Database) -> None:
        barrier.wait()
        for _ in range(rounds):
            with mine.transaction(lock="counter"):
                value = mine.execute(
                    "SELECT expires_at FROM sso_replay WHERE replay_key = 'counter'"
                ).scalar()
                time.sleep(0.002)
                mine.execute(
                    "UPDATE sso_replay SET expires_at = ? WHERE replay_key = 'counter'",
                    (value + 1,),
                )

    workers = [threading.Thread(target=run, args=(d,)) for d in databases]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    final = db.execute("SELECT expires_at FROM sso_replay WHERE replay_key = 'counter'").scalar()
    assert final == threads_n * rounds


# -- migrations -----------------------------------------------------------------------------------


def test_migrate_applies_everything_once(backend: Backend) -> None:
    db = backend.open()
    assert applied_versions(db) == []
    assert migrate(db) == ALL_VERSIONS == list(range(1, latest_version() + 1))
    assert set(tables(db)) == FACT_TABLES
    assert applied_versions(db) == ALL_VERSIONS
    assert migrate(db) == []
    assert migrate(backend.open()) == []  # another process starting later
    names = [r[0] for r in db.execute("SELECT name FROM schema_migrations ORDER BY version")]
    assert names == [m.name for m in MIGRATIONS]


def test_migration_sets_share_one_table(backend: Backend) -> None:
    """Named sets, as sqlite-utils keeps them: each has its own versions, in one table."""
    db = backend.open()
    other = MigrationSet(
        "other",
        (
            Migration(1, "one", portable("CREATE TABLE other_one (n {BIGINT}, at {FLOAT})")),
            Migration(2, "two", portable("CREATE TABLE other_two (n {BIGINT})")),
        ),
    )
    assert migrate(db, other) == [1, 2]
    assert migrate(db) == ALL_VERSIONS  # the state set's version 1 is not the other's
    assert migrate(db, other) == [] and migrate(db) == []
    assert applied_versions(db, "other") == [1, 2] and applied_versions(db) == ALL_VERSIONS
    rows = db.execute("SELECT migration_set, count(*) FROM schema_migrations GROUP BY 1 ORDER BY 1")
    assert rows.fetchall() == [("other", 2), ("state", len(ALL_VERSIONS))]


def test_a_set_versioned_another_way_is_adopted(backend: Backend) -> None:
    db = backend.open()
    db.execute("CREATE TABLE legacy_marker (version INTEGER)")
    db.execute("INSERT INTO legacy_marker VALUES (1)")
    made = MigrationSet(
        "made",
        (
            Migration(1, "had", portable("CREATE TABLE made_had (n {BIGINT})")),
            Migration(2, "new", portable("CREATE TABLE made_new (n {BIGINT})")),
        ),
        adopt=lambda tx: int(tx.execute("SELECT max(version) FROM legacy_marker").scalar()),
    )
    assert migrate(db, made) == [2]  # version 1 taken as there (its table never made here)
    assert "made_had" not in tables(db) and "made_new" in tables(db)
    assert applied_versions(db, "made") == [1, 2]


def test_stores_migrate_a_fresh_database_themselves(backend: Backend) -> None:
    from authz.facts.replay import ReplayGuard

    db = backend.open()
    ReplayGuard(db, lambda: 0.0)
    assert applied_versions(db) == ALL_VERSIONS


def test_migrations_racing_apply_each_version_once(backend: Backend) -> None:
    n = 6
    databases = [backend.open() for _ in range(n)]
    barrier = threading.Barrier(n)
    results: list[list[int]] = [[] for _ in range(n)]
    errors: list[BaseException] = []

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = migrate(databases[i])
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    workers = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert not errors
    assert sorted(v for r in results for v in r) == ALL_VERSIONS
    assert sorted(map(len, results)) == [0] * (n - 1) + [len(ALL_VERSIONS)]
    assert count(databases[0], "schema_migrations") == len(ALL_VERSIONS)


def _migrate_in_process(target: str, barrier: object, out: object) -> None:
    with open_store(target) as db:
        barrier.wait()  # type: ignore[attr-defined]
        out.put(migrate(db))  # type: ignore[attr-defined]


@pytest.mark.skipif(sys.platform != "linux", reason="uses the fork start method")
def test_replicas_starting_at_once_migrate_once(backend: Backend) -> None:
    processes_n = 3
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(processes_n)
    out = ctx.Queue()
    procs = [
        ctx.Process(target=_migrate_in_process, args=(backend.target, barrier, out))
        for _ in range(processes_n)
    ]
    for p in procs:
        p.start()
    results = [out.get(timeout=30) for _ in procs]
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    assert sorted(v for r in results for v in r) == ALL_VERSIONS
    assert applied_versions(backend.open()) == ALL_VERSIONS


def test_a_failing_migration_leaves_no_trace(db: Database) -> None:
    broken = Migration(
        latest_version() + 1,
        "broken",
        portable("CREATE TABLE half_done (x {FLOAT})", "CREATE TABLE oops (syntax error here"),
    )
    with pytest.raises(StoreError, match=f"at state version {broken.version}"):
        migrate(db, (*MIGRATIONS, broken))
    assert applied_versions(db) == ALL_VERSIONS
    assert "half_done" not in tables(db)  # DDL is transactional on both backends
    fixed = Migration(broken.version, "fixed", portable("CREATE TABLE half_done (x {FLOAT})"))
    assert migrate(db, (*MIGRATIONS, fixed)) == [fixed.version]
    assert "half_done" in tables(db)


def test_a_newer_schema_is_left_alone(db: Database, caplog: pytest.LogCaptureFixture) -> None:
    db.execute("INSERT INTO schema_migrations VALUES ('state', ?, 'from the future', 0)", (999,))
    with caplog.at_level(logging.WARNING, logger="authz.store"):
        assert migrate(db) == []
    assert "[999]" in caplog.text


def test_migration_versions_must_be_unique() -> None:
    with pytest.raises(StoreError, match="unique"):
        migrate(as_database(open_database(":memory:")), (*MIGRATIONS, MIGRATIONS[0]))


def test_a_state_db_from_before_migrations_is_adopted(tmp_path: Path) -> None:
    # The tables as the stores used to create them themselves (REAL, BLOB, no bookkeeping).
    path = tmp_path / "state.db"
    legacy = open_database(path)
    legacy.conn.execute(
        "CREATE TABLE sessions (token_sha256 TEXT PRIMARY KEY, session_id TEXT NOT NULL UNIQUE, "
        "user_id TEXT NOT NULL, resource_id TEXT NOT NULL, email TEXT NOT NULL, "
        "issued_at REAL NOT NULL, expires_at REAL NOT NULL, revoked_at REAL)"
    )
    legacy.conn.execute(
        "INSERT INTO sessions VALUES ('h', 'ses_1', 'u', 'r', 'e', 1.0, 9999999999.0, NULL)"
    )
    legacy.conn.execute(
        "CREATE TABLE sso_replay (replay_key TEXT PRIMARY KEY, expires_at REAL NOT NULL)"
    )
    legacy.conn.close()
    with open_store(path) as db:
        assert migrate(db) == ALL_VERSIONS
        assert set(tables(db)) == FACT_TABLES
        assert db.execute("SELECT session_id FROM sessions").rows == [("ses_1",)]


def test_a_sqlite_write_transaction_waits_for_another_then_gives_up_at_the_busy_timeout(
    tmp_path: Path,
) -> None:
    """BEGIN IMMEDIATE retried by SqliteDatabase itself (not SQLite's busy handler): it waits
    while another connection writes, gives up with SQLite's own error once the connection's
    busy timeout has passed, and leaves that timeout as it was."""
    path = tmp_path / "shared.db"
    holder = open_sqlite(path)
    waiter = open_sqlite(path, busy_timeout_ms=200)
    holder.execute("CREATE TABLE t (v INTEGER)")

    with holder.transaction():
        holder.execute("INSERT INTO t VALUES (1)")
        with pytest.raises(sqlite3.OperationalError, match="locked"), waiter.transaction():
            pass
    assert waiter.execute("PRAGMA busy_timeout").scalar() == 200

    holding = threading.Event()

    def hold() -> None:
        with holder.transaction():
            holder.execute("INSERT INTO t VALUES (2)")
            holding.set()
            time.sleep(0.05)

    other = threading.Thread(target=hold)
    other.start()
    holding.wait(5)
    with waiter.transaction():  # waits for the other's commit, then writes
        waiter.execute("INSERT INTO t VALUES (3)")
    other.join()
    assert [r[0] for r in waiter.execute("SELECT v FROM t ORDER BY v").rows] == [1, 2, 3]
    assert waiter.execute("PRAGMA busy_timeout").scalar() == 200
    holder.close()
    waiter.close()
