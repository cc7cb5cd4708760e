"""The audit database: its tables (declared once, for both backends), where it lives, the chain
head, and how every module opens it.

The schema is the ``audit`` migration set of authz.store.migrations, recorded in
``schema_migrations`` beside the state set (on PostgreSQL they share the table; on SQLite it is
in ``audit.db``). A log written before migration sets existed kept its version in ``PRAGMA
user_version`` (SQLite) or ``audit_schema_version`` (PostgreSQL): those versions are adopted as
applied, once, and left in place for an older release still running during an upgrade.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TypeAlias

from authz.audit.errors import AuditLogNotFound, AuditUnavailable
from authz.audit.record import canonical_json, chain_hash, prune_entry
from authz.store import Database, Migration, MigrationSet, StoreError, migrate, open_store
from authz.store.migrations import portable
from authz.store.urls import is_postgres_url, normalise_postgres_url, redact_url

Target: TypeAlias = Path | str | os.PathLike[str]
"""Where an audit log lives: a SQLite file, or a PostgreSQL URL."""

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


def is_postgres_target(target: object) -> bool:
    """Whether ``target`` names a PostgreSQL database (a postgresql:// or postgres:// URL)."""
    return is_postgres_url(target)


def normalise_target(target: Target) -> Path | str:
    """A PostgreSQL URL as ``postgresql://…``; anything else as a Path."""
    if is_postgres_url(target):
        return normalise_postgres_url(str(target))
    return Path(target)


def describe_target(target: Target) -> str:
    """The target, safe to print: a path, or the URL with its password replaced by ***."""
    return redact_url(str(target)) if is_postgres_url(target) else str(target)


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


# -- the chain head ----------------------------------------------------------------------------


def lock_head(db: Database) -> tuple[int, str]:
    """Lock the chain head inside a write transaction and read its seq and hash, so the chain
    stays linear while other processes or replicas append to the same log."""
    row = db.execute(f"SELECT seq, hash FROM {HEAD} WHERE id = 1{db.sql.lock_row}").fetchone()
    if row is None:
        raise AuditUnavailable(f"the chain head ({HEAD}) of {db.location} is missing")
    return int(row[0]), str(row[1])


def move_head(db: Database, seq: int, digest: str) -> None:
    db.execute(f"UPDATE {HEAD} SET seq = ?, hash = ? WHERE id = 1", (seq, digest))


def append_event(db: Database, event: Mapping[str, object]) -> tuple[int, str]:
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


def adopt_legacy_anchor(db: Database) -> None:
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


def _legacy_version(db: Database) -> int:
    """The audit schema version a log written before migration sets recorded."""
    if db.dialect == "sqlite":
        return int(db.execute("PRAGMA user_version").scalar() or 0)
    if not db.table_exists("audit_schema_version"):
        return 0
    return int(db.execute("SELECT coalesce(max(version), 0) FROM audit_schema_version").scalar())


_RULE_TABLE = {
    # The rules of one record keep their order: SQLite by rowid, PostgreSQL by id.
    "sqlite": """
        CREATE TABLE IF NOT EXISTS audit_rule (
            seq INTEGER NOT NULL,
            policy TEXT,
            rule_id TEXT NOT NULL,
            effect TEXT
        )
        """,
    "postgresql": """
        CREATE TABLE IF NOT EXISTS audit_rule (
            id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            seq BIGINT NOT NULL,
            policy TEXT,
            rule_id TEXT NOT NULL,
            effect TEXT
        )
        """,
}


def _version_1() -> dict[str, tuple[str, ...]]:
    log = portable(
        # seq: 1, 2, 3, … without gaps (the chain position). The record is TEXT, not JSONB:
        # the hash covers exactly the canonical JSON stored here; the other columns are
        # derived from it for review (verify checks that they agree).
        """
        CREATE TABLE IF NOT EXISTS audit_log (
            seq {BIGINT} PRIMARY KEY,
            decision_id TEXT NOT NULL,
            time {FLOAT} NOT NULL,
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
        "CREATE UNIQUE INDEX IF NOT EXISTS audit_log_decision_id ON audit_log (decision_id)",
        "CREATE INDEX IF NOT EXISTS audit_log_time ON audit_log (time)",
        "CREATE INDEX IF NOT EXISTS audit_log_principal_id_time ON audit_log (principal_id, time)",
        "CREATE INDEX IF NOT EXISTS audit_log_resource_id_time ON audit_log (resource_id, time)",
        "CREATE INDEX IF NOT EXISTS audit_log_app_id_time ON audit_log (app_id, time)",
        "CREATE INDEX IF NOT EXISTS audit_log_action_time ON audit_log (action, time)",
        "CREATE INDEX IF NOT EXISTS audit_log_policy_revision_time "
        "ON audit_log (policy_revision, time)",
    )
    rest = portable(
        # One row per matched rule, so "which decisions did rule X decide" is an index lookup.
        "CREATE INDEX IF NOT EXISTS audit_rule_rule_id_seq ON audit_rule (rule_id, seq)",
        "CREATE INDEX IF NOT EXISTS audit_rule_seq ON audit_rule (seq)",
        # The chain head, updated in the same transaction as every append: every batch locks it
        # first, so writers (processes, replicas) make one gapless chain; restarts continue from
        # it and verify notices records cut off the end.
        """
        CREATE TABLE IF NOT EXISTS audit_head (
            id INTEGER PRIMARY KEY,
            seq {BIGINT} NOT NULL,
            hash TEXT NOT NULL
        )
        """,
        f"INSERT INTO audit_head (id, seq, hash) VALUES (1, 0, '{GENESIS_HASH}') "
        "ON CONFLICT (id) DO NOTHING",
        # Retention: the seq and hash of the last pruned record, where the remaining chain starts.
        """
        CREATE TABLE IF NOT EXISTS audit_anchor (
            seq {BIGINT} PRIMARY KEY,
            hash TEXT NOT NULL,
            pruned_at {FLOAT},
            cutoff {FLOAT},
            pruned_count {BIGINT}
        )
        """,
    )
    return {d: (*log[d], _RULE_TABLE[d], *rest[d]) for d in ("sqlite", "postgresql")}


AUDIT = MigrationSet(
    "audit",
    (
        Migration(1, "decision records, matched rules, chain head, prune anchors", _version_1()),
        Migration(
            2,
            "chain entries that are not decisions (prunes), shared parts",
            portable(
                # Chain entries that are not decisions (a prune), in the same seq space.
                """
                CREATE TABLE IF NOT EXISTS audit_event (
                    seq {BIGINT} PRIMARY KEY,
                    kind TEXT NOT NULL,
                    time {FLOAT} NOT NULL,
                    record TEXT NOT NULL,
                    prev_hash TEXT NOT NULL,
                    hash TEXT NOT NULL
                )
                """,
                # Shared parts by hash, and the last seq that uses each (apart, so that reusing
                # a large part only rewrites a small row: SQLite rewrites a whole row on UPDATE).
                "CREATE TABLE IF NOT EXISTS audit_part (hash TEXT PRIMARY KEY, body TEXT NOT NULL)",
                "CREATE TABLE IF NOT EXISTS audit_part_use "
                "(hash TEXT PRIMARY KEY, last_seq {BIGINT} NOT NULL)",
                "CREATE INDEX IF NOT EXISTS audit_part_use_last_seq ON audit_part_use (last_seq)",
            ),
            after=adopt_legacy_anchor,
        ),
        Migration(
            3,
            "indexes for the review pages' caller and effect filters, newest first",
            # authz.audit.browse lists decisions newest first by any filter; the other filter
            # columns have had their (column, time) index since version 1.
            portable(
                "CREATE INDEX IF NOT EXISTS audit_log_caller_time ON audit_log (caller, time)",
                "CREATE INDEX IF NOT EXISTS audit_log_effect_time ON audit_log (effect, time)",
            ),
        ),
    ),
    adopt=_legacy_version,
)
"""The audit log's schema: append a version, never edit an applied one."""

SCHEMA_VERSION = max(m.version for m in AUDIT.migrations)


# -- opening either backend --------------------------------------------------------------------


def open_audit(
    target: Target,
    *,
    create: bool = False,
    timeout: float = 5.0,
    application_name: str = "authz-audit-review",
    session: Mapping[str, str] | None = None,
) -> Database:
    """Open the audit log at ``target`` (a SQLite path or a PostgreSQL URL) on a connection of
    its own (never a pool's: the writer holds it for its lifetime).

    create=True creates or upgrades the schema (the writer does); review tools pass
    create=False, and a mistyped location, or a database without an audit log, is
    AuditLogNotFound rather than a new empty log. A PostgreSQL server that cannot be reached
    within ``timeout`` seconds is AuditUnavailable (the message names the server, never the
    password). ``timeout`` is also SQLite's busy timeout; ``session``: PostgreSQL settings
    applied on every (re)connection.
    """
    where = describe_target(target)
    if not is_postgres_target(target) and not create and not Path(target).is_file():
        raise AuditLogNotFound(f"no audit log at {where} (check --data-dir / AUTHZ_DATA_DIR)")
    db = _open(target, timeout, application_name, session)
    try:
        if create:
            migrate(db, AUDIT)
        elif not db.table_exists(LOG):
            if db.dialect == "sqlite":
                raise AuditLogNotFound(f"{where} is not an audit log (it has no {LOG} table)")
            raise AuditLogNotFound(
                f"no audit log in {where} (it has no {LOG} table; a server started with "
                "this database URL creates it)"
            )
    except AuditLogNotFound:
        db.close()
        raise
    except (StoreError, sqlite3.Error, OSError) as exc:
        db.close()
        raise AuditUnavailable(f"cannot open the audit log at {where}: {exc}") from exc
    except Exception as exc:
        db.close()
        if db.sql.is_error(exc):
            raise AuditUnavailable(f"cannot open the audit log at {where}: {exc}") from exc
        raise
    return db


def _open(
    target: Target, timeout: float, application_name: str, session: Mapping[str, str] | None
) -> Database:
    """A dedicated connection; on SQLite retried for up to the busy timeout while another process
    switches a new file to WAL (that PRAGMA fails at once, without waiting, on a lock)."""
    deadline = time.monotonic() + timeout
    delay = 0.005
    while True:
        try:
            return open_store(
                str(normalise_target(target)),
                pooled=False,
                timeout=timeout,
                busy_timeout=timeout,
                application_name=application_name,
                session=session,
            )
        except StoreError as exc:  # StoreUnavailable: PostgreSQL cannot be reached
            where = describe_target(target)
            raise AuditUnavailable(f"cannot open the audit log at {where}: {exc}") from None
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise AuditUnavailable(
                    f"cannot open the audit log at {describe_target(target)}: {exc}"
                ) from exc
        time.sleep(delay)
        delay = min(delay * 2, 0.1)


def migrate_audit(target: Target, *, timeout: float = 10.0) -> list[int]:
    """Create the audit log's schema at ``target``, or bring it up to date; returns the
    versions applied now ([] when current). Writers do this when they start; ``authz db
    migrate`` may do it ahead of them. Safe while replicas start or write."""
    db = _open(target, timeout, "authz-audit-migrate", None)
    try:
        return migrate(db, AUDIT)
    except StoreError as exc:
        raise AuditUnavailable(str(exc)) from exc
    finally:
        db.close()
