"""The audit database: tables, indexes and how every module opens it."""

from __future__ import annotations

from pathlib import Path

import sqlite_utils

from authz.audit.errors import AuditLogNotFound
from authz.store import open_database

AUDIT_DB_NAME = "audit.db"
LOG = "audit_log"
RULES = "audit_rule"
HEAD = "audit_head"
ANCHORS = "audit_anchor"

GENESIS_HASH = "0" * 64
"""The prev_hash of seq 1."""

SCHEMA_VERSION = 1


def audit_db_path(data_dir: Path | str) -> Path:
    """Where the service keeps its audit log inside AUTHZ_DATA_DIR."""
    return Path(data_dir) / AUDIT_DB_NAME


def ensure_schema(db: sqlite_utils.Database) -> None:
    """Create the tables and indexes if they are missing; safe to run from several processes."""
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
    if db.execute("PRAGMA user_version").fetchone()[0] == 0:
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


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
    db = open_database(path, busy_timeout_ms=busy_timeout_ms)
    try:
        if create:
            ensure_schema(db)
        elif LOG not in db.table_names():
            raise AuditLogNotFound(f"{path} is not an audit log (it has no {LOG} table)")
    except BaseException:
        db.conn.close()
        raise
    return db
