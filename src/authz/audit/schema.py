"""The audit database: tables, indexes and how every module opens it, on either backend.

SQLite (the default, ``AUTHZ_DATA_DIR/audit.db``) keeps its schema version in
``PRAGMA user_version``. PostgreSQL keeps it in ``audit_schema_version``: the audit log manages its
own versioned schema (it does not use :mod:`authz.store.migrations`, whose versions belong to the
state store), applied when a writer starts. Versions are applied under a transaction-scoped
advisory lock, in one transaction each (DDL is transactional), so replicas starting at the same
moment apply each version once; the others wait, then find nothing left to do.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import sqlite_utils

from authz.audit.backend import (
    AuditDb,
    SqliteAuditDb,
    Target,
    describe_target,
    is_postgres_target,
    normalise_target,
)
from authz.audit.errors import AuditLogNotFound, AuditUnavailable
from authz.audit.record import canonical_json, chain_hash, prune_entry
from authz.store import open_database
from authz.store.base import Dialect

AUDIT_DB_NAME = "audit.db"
LOG = "audit_log"
RULES = "audit_rule"
HEAD = "audit_head"
ANCHORS = "audit_anchor"
EVENTS = "audit_event"
PARTS = "audit_part"
PART_USE = "audit_part_use"

GENESIS_HASH = "0" * 64
"""The prev_hash of seq 1."""

SCHEMA_VERSION = 3
"""1: records, rules, head, anchors. 2: shared parts, and chain entries that are not decisions
(prune entries), which share the records' seq numbers. 3: indexes for the review pages' filters
on caller and effect (authz.audit.browse), newest first."""


def audit_db_path(data_dir: Path | str) -> Path:
    """Where the service keeps its audit log inside AUTHZ_DATA_DIR."""
    return Path(data_dir) / AUDIT_DB_NAME


def audit_target(data_dir: Path | str, database_url: str | None = None) -> Path | str:
    """Where the service keeps its audit log: the PostgreSQL database when ``database_url`` is
    set (``DATABASE_URL`` / ``AUTHZ_DATABASE_URL``), else ``data_dir/audit.db``."""
    if database_url:
        if not is_postgres_target(database_url):
            raise ValueError("the audit log's database URL must be postgresql://...")
        return normalise_target(database_url)
    return audit_db_path(data_dir)


def ensure_schema(db: sqlite_utils.Database, location: str = "") -> list[int]:
    """Create the tables and indexes if they are missing, or bring an older log up to date;
    returns the versions applied. Safe to run from several processes (the first takes the
    write lock and applies them, the others wait, then find nothing left to do)."""
    if int(db.execute("PRAGMA user_version").fetchone()[0]) >= SCHEMA_VERSION:
        return []
    conn = db.conn
    conn.execute("BEGIN IMMEDIATE")  # a read-then-create would fail at once under contention
    try:
        before = int(db.execute("PRAGMA user_version").fetchone()[0])
        _create_sqlite_schema(db)
        if before < 2:
            adopt_legacy_anchor(SqliteAuditDb(conn, location))
        db.execute(f"PRAGMA user_version = {max(before, SCHEMA_VERSION)}")
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return list(range(before + 1, SCHEMA_VERSION + 1))


def _create_sqlite_schema(db: sqlite_utils.Database) -> None:
    db[LOG].create(
        {
            "seq": int,  # 1, 2, 3, … without gaps (the chain position)
            "decision_id": str,
            "time": float,
            "kind": str,
            "caller": str,
            "request_id": str,
            "principal_type": str,
            "principal_id": str,
            "action": str,
            "resource_type": str,
            "resource_id": str,
            "app_id": str,
            "effect": str,
            "policy_revision": str,
            "rule_ids": str,  # JSON array of the matched rule ids
            "record": str,  # the whole record, canonical JSON
            "prev_hash": str,
            "hash": str,
        },
        pk="seq",
        not_null={
            "decision_id",
            "time",
            "kind",
            "effect",
            "rule_ids",
            "record",
            "prev_hash",
            "hash",
        },
        if_not_exists=True,
    )
    log = db.table(LOG)
    log.create_index(["decision_id"], unique=True, if_not_exists=True)
    log.create_index(["time"], if_not_exists=True)
    log.create_index(["principal_id", "time"], if_not_exists=True)
    log.create_index(["resource_id", "time"], if_not_exists=True)
    log.create_index(["app_id", "time"], if_not_exists=True)
    log.create_index(["action", "time"], if_not_exists=True)
    log.create_index(["policy_revision", "time"], if_not_exists=True)
    # One row per matched rule, so "which decisions did rule X decide" is an index lookup.
    db[RULES].create(
        {"seq": int, "policy": str, "rule_id": str, "effect": str},
        not_null={"seq", "rule_id"},
        if_not_exists=True,
    )
    rules = db.table(RULES)
    rules.create_index(["rule_id", "seq"], if_not_exists=True)
    rules.create_index(["seq"], if_not_exists=True)
    # The chain head, updated in the same transaction as every insert: restarts continue from it
    # and verify notices records cut off the end.
    db[HEAD].create({"id": int, "seq": int, "hash": str}, pk="id", if_not_exists=True)
    db.execute(f"INSERT OR IGNORE INTO {HEAD} (id, seq, hash) VALUES (1, 0, ?)", [GENESIS_HASH])
    # Retention: the seq and hash of the last pruned record, where the remaining chain starts.
    db[ANCHORS].create(
        {"seq": int, "hash": str, "pruned_at": float, "cutoff": float, "pruned_count": int},
        pk="seq",
        if_not_exists=True,
    )
    # Version 2. Chain entries that are not decisions (a prune), in the same seq space.
    db[EVENTS].create(
        {
            "seq": int,
            "kind": str,
            "time": float,
            "record": str,
            "prev_hash": str,
            "hash": str,
        },
        pk="seq",
        not_null={"kind", "time", "record", "prev_hash", "hash"},
        if_not_exists=True,
    )
    # Shared parts by hash, and the last seq that uses each (apart, so that reusing a large
    # part only rewrites a small row: SQLite rewrites a whole row on UPDATE).
    db[PARTS].create({"hash": str, "body": str}, pk="hash", not_null={"body"}, if_not_exists=True)
    db[PART_USE].create(
        {"hash": str, "last_seq": int}, pk="hash", not_null={"last_seq"}, if_not_exists=True
    )
    db.table(PART_USE).create_index(["last_seq"], if_not_exists=True)
    # Version 3. The review pages list decisions newest first by any filter (authz.audit.browse);
    # the other filter columns had their (column, time) index from version 1.
    log.create_index(["caller", "time"], if_not_exists=True)
    log.create_index(["effect", "time"], if_not_exists=True)


def open_audit_db(
    path: Path | str, *, create: bool = False, busy_timeout_ms: int = 5000
) -> sqlite_utils.Database:
    """Open the audit database (WAL, synchronous=FULL); create=True also creates the schema.

    Review commands pass create=False: a mistyped --data-dir, or a file that is not an audit
    log, is an error (AuditLogNotFound) rather than a new empty log.
    """
    path = Path(path)
    if not create and not path.is_file():
        raise AuditLogNotFound(f"no audit log at {path} (check --data-dir / AUTHZ_DATA_DIR)")
    db = _open_sqlite(path, busy_timeout_ms)
    try:
        if create:
            ensure_schema(db, str(path))
        elif LOG not in db.table_names():
            raise AuditLogNotFound(f"{path} is not an audit log (it has no {LOG} table)")
    except BaseException:
        db.conn.close()
        raise
    return db


def _open_sqlite(path: Path, busy_timeout_ms: int) -> sqlite_utils.Database:
    """open_database, retried for up to the busy timeout while another process switches a new
    file to WAL (that PRAGMA fails at once, without waiting, when it meets a lock)."""
    deadline = time.monotonic() + busy_timeout_ms / 1000
    delay = 0.005
    while True:
        try:
            return open_database(path, busy_timeout_ms=busy_timeout_ms)
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
        time.sleep(delay)
        delay = min(delay * 2, 0.1)


# -- PostgreSQL ------------------------------------------------------------------------------

PG_SCHEMA_TABLE = "audit_schema_version"
PG_SCHEMA_LOCK = "authz:audit-schema"

PG_SCHEMA: Mapping[int, tuple[str, ...]] = {
    1: (
        # The record is TEXT, not JSONB: the hash covers exactly the canonical JSON stored here.
        f"""
        CREATE TABLE IF NOT EXISTS {LOG} (
            seq BIGINT PRIMARY KEY,
            decision_id TEXT NOT NULL,
            time DOUBLE PRECISION NOT NULL,
            kind TEXT NOT NULL,
            caller TEXT,
            request_id TEXT,
            principal_type TEXT,
            principal_id TEXT,
            action TEXT,
            resource_type TEXT,
            resource_id TEXT,
            app_id TEXT,
            effect TEXT NOT NULL,
            policy_revision TEXT,
            rule_ids TEXT NOT NULL,
            record TEXT NOT NULL,
            prev_hash TEXT NOT NULL,
            hash TEXT NOT NULL
        )
        """,
        f"CREATE UNIQUE INDEX IF NOT EXISTS {LOG}_decision_id ON {LOG} (decision_id)",
        f"CREATE INDEX IF NOT EXISTS {LOG}_time ON {LOG} (time)",
        f"CREATE INDEX IF NOT EXISTS {LOG}_principal_id_time ON {LOG} (principal_id, time)",
        f"CREATE INDEX IF NOT EXISTS {LOG}_resource_id_time ON {LOG} (resource_id, time)",
        f"CREATE INDEX IF NOT EXISTS {LOG}_app_id_time ON {LOG} (app_id, time)",
        f"CREATE INDEX IF NOT EXISTS {LOG}_action_time ON {LOG} (action, time)",
        f"CREATE INDEX IF NOT EXISTS {LOG}_policy_revision_time ON {LOG} (policy_revision, time)",
        # id keeps the rules of one record in their order (SQLite uses its rowid).
        f"""
        CREATE TABLE IF NOT EXISTS {RULES} (
            id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            seq BIGINT NOT NULL,
            policy TEXT,
            rule_id TEXT NOT NULL,
            effect TEXT
        )
        """,
        f"CREATE INDEX IF NOT EXISTS {RULES}_rule_id_seq ON {RULES} (rule_id, seq)",
        f"CREATE INDEX IF NOT EXISTS {RULES}_seq ON {RULES} (seq)",
        # The chain head: every batch locks this row (FOR UPDATE) before it appends, so
        # replicas writing at once still make one gapless chain.
        f"""
        CREATE TABLE IF NOT EXISTS {HEAD} (
            id INTEGER PRIMARY KEY,
            seq BIGINT NOT NULL,
            hash TEXT NOT NULL
        )
        """,
        f"INSERT INTO {HEAD} (id, seq, hash) VALUES (1, 0, '{GENESIS_HASH}') "
        "ON CONFLICT (id) DO NOTHING",
        f"""
        CREATE TABLE IF NOT EXISTS {ANCHORS} (
            seq BIGINT PRIMARY KEY,
            hash TEXT NOT NULL,
            pruned_at DOUBLE PRECISION,
            cutoff DOUBLE PRECISION,
            pruned_count BIGINT
        )
        """,
    ),
    2: (
        f"""
        CREATE TABLE IF NOT EXISTS {EVENTS} (
            seq BIGINT PRIMARY KEY,
            kind TEXT NOT NULL,
            time DOUBLE PRECISION NOT NULL,
            record TEXT NOT NULL,
            prev_hash TEXT NOT NULL,
            hash TEXT NOT NULL
        )
        """,
        f"CREATE TABLE IF NOT EXISTS {PARTS} (hash TEXT PRIMARY KEY, body TEXT NOT NULL)",
        f"CREATE TABLE IF NOT EXISTS {PART_USE} (hash TEXT PRIMARY KEY, last_seq BIGINT NOT NULL)",
        f"CREATE INDEX IF NOT EXISTS {PART_USE}_last_seq ON {PART_USE} (last_seq)",
    ),
    3: (
        f"CREATE INDEX IF NOT EXISTS {LOG}_caller_time ON {LOG} (caller, time)",
        f"CREATE INDEX IF NOT EXISTS {LOG}_effect_time ON {LOG} (effect, time)",
    ),
}
"""The PostgreSQL schema by version; append a version, never edit an applied one."""

# -- the chain head ----------------------------------------------------------------------------

_HEAD_SQL: dict[Dialect, str] = {
    "sqlite": f"SELECT seq, hash FROM {HEAD} WHERE id = 1",  # BEGIN IMMEDIATE holds the lock
    "postgresql": f"SELECT seq, hash FROM {HEAD} WHERE id = 1 FOR UPDATE",
}


def lock_head(db: AuditDb) -> tuple[int, str]:
    """Lock the chain head inside a write transaction and read its seq and hash, so the chain
    stays linear while other processes or replicas append to the same log."""
    row = db.execute(_HEAD_SQL[db.dialect]).fetchone()
    if row is None:
        raise AuditUnavailable(f"the chain head ({HEAD}) of {db.location} is missing")
    return int(row[0]), str(row[1])


def move_head(db: AuditDb, seq: int, digest: str) -> None:
    db.execute(f"UPDATE {HEAD} SET seq = ?, hash = ? WHERE id = 1", (seq, digest))


def append_event(db: AuditDb, event: Mapping[str, object]) -> tuple[int, str]:
    """Append one non-decision entry (e.g. a prune) to the chain, inside a write transaction;
    returns its seq and hash."""
    seq, head = lock_head(db)
    seq += 1
    text = canonical_json(event)
    digest = chain_hash(head, seq, text)
    db.execute(
        f"INSERT INTO {EVENTS} (seq, kind, time, record, prev_hash, hash) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        (seq, event["event"], event["time"], text, head, digest),
    )
    move_head(db, seq, digest)
    return seq, digest


def adopt_legacy_anchor(db: AuditDb) -> None:
    """Version 1 kept a prune anchor as a free-standing row, which anyone able to write the
    database could forge. On upgrading, the anchor found is recorded once in the chain as a
    prune entry (taken on trust, and marked so), as every later prune is."""
    row = db.execute(f"SELECT seq, hash FROM {ANCHORS} ORDER BY seq DESC LIMIT 1").fetchone()
    if row is None:
        return
    (events,) = db.execute(f"SELECT count(*) FROM {EVENTS}").fetchone()
    if int(events):
        return
    append_event(
        db,
        prune_entry(
            time=time.time(),
            through=(int(row[0]), str(row[1])),
            previous=None,
            adopted="an anchor written before prunes were chained (schema 1), taken on trust",
        ),
    )


PG_AFTER: Mapping[int, Callable[[AuditDb], object]] = {2: adopt_legacy_anchor}
"""Steps in Python run after a version's statements, in the same transaction, when upgrading."""


def pg_schema_version(db: AuditDb) -> int:
    """The newest audit schema version applied to a PostgreSQL database (0: none)."""
    if not db.table_exists(PG_SCHEMA_TABLE):
        return 0
    return int(db.execute(f"SELECT coalesce(max(version), 0) FROM {PG_SCHEMA_TABLE}").fetchone()[0])


def ensure_pg_schema(db: AuditDb) -> list[int]:
    """Apply the audit schema versions the PostgreSQL database lacks; returns those applied.

    Safe when several replicas start at once (an advisory lock serialises them); cheap when
    the schema is current (one query, no lock).
    """
    latest = max(PG_SCHEMA)
    if pg_schema_version(db) >= latest:
        return []
    applied: list[int] = []
    with db.write(lock=PG_SCHEMA_LOCK):
        db.execute(
            f"CREATE TABLE IF NOT EXISTS {PG_SCHEMA_TABLE} "
            "(version INTEGER PRIMARY KEY, applied_at DOUBLE PRECISION NOT NULL)"
        )
        done = {int(row[0]) for row in db.execute(f"SELECT version FROM {PG_SCHEMA_TABLE}")}
        for version in sorted(PG_SCHEMA):
            if version in done:
                continue
            for statement in PG_SCHEMA[version]:
                db.execute(statement)
            if version in PG_AFTER:
                PG_AFTER[version](db)
            db.execute(
                f"INSERT INTO {PG_SCHEMA_TABLE} (version, applied_at) VALUES (?, ?)",
                (version, time.time()),
            )
            applied.append(version)
    return applied


# -- opening either backend --------------------------------------------------------------------


def open_audit(
    target: Target,
    *,
    create: bool = False,
    timeout: float = 5.0,
    application_name: str = "authz-audit-review",
) -> AuditDb:
    """Open the audit log at ``target`` (a SQLite path or a PostgreSQL URL).

    create=True creates the schema (the writer does); review tools pass create=False, and a
    mistyped location, or a database without an audit log, is AuditLogNotFound rather than a
    new empty log. A PostgreSQL server that cannot be reached within ``timeout`` seconds is
    AuditUnavailable (the message names the server, never the password). ``timeout`` is also
    SQLite's busy timeout.
    """
    if not is_postgres_target(target):
        path = Path(target)
        db = open_audit_db(path, create=create, busy_timeout_ms=int(timeout * 1000))
        return SqliteAuditDb(db.conn, str(path))

    def check(pg: AuditDb) -> None:
        if create:
            ensure_pg_schema(pg)
        elif not pg.table_exists(LOG):
            raise AuditLogNotFound(
                f"no audit log in {pg.location} (it has no {LOG} table; a server started with "
                "this database URL creates it)"
            )

    return _open_postgres(str(target), timeout, application_name, check)


def _open_postgres(
    target: str, timeout: float, application_name: str, then: Callable[[AuditDb], object]
) -> AuditDb:
    """A connection to the PostgreSQL log, after ``then(db)`` succeeded on it; psycopg errors
    become AuditUnavailable naming the server (never the password)."""
    import psycopg

    from authz.audit.postgres import PostgresAuditDb

    url = str(normalise_target(target))
    where = describe_target(url)
    try:
        pg = PostgresAuditDb(url, connect_timeout=timeout, application_name=application_name)
    except psycopg.Error as exc:
        reason = (str(exc).strip() or type(exc).__name__).replace("\n", " ")
        raise AuditUnavailable(f"cannot open the audit log at {where}: {reason}") from None
    try:
        then(pg)
    except psycopg.Error as exc:
        pg.close()
        raise AuditUnavailable(f"cannot open the audit log at {where}: {exc}") from exc
    except BaseException:
        pg.close()
        raise
    return pg


def migrate_audit(target: Target, *, timeout: float = 10.0) -> list[int]:
    """Create the audit log's schema at ``target``, or bring it up to date; returns the
    versions applied now ([] when current). Writers do this when they start; ``authz db
    migrate`` may do it ahead of them. Safe while replicas start or write."""
    if not is_postgres_target(target):
        path = Path(target)
        db = _open_sqlite(path, int(timeout * 1000))
        try:
            return ensure_schema(db, str(path))
        finally:
            db.conn.close()
    applied: list[int] = []
    db = _open_postgres(
        str(target), timeout, "authz-audit-migrate", lambda pg: applied.extend(ensure_pg_schema(pg))
    )
    db.close()
    return applied
