"""The decision audit log: every decision recorded durably, hash-chained, and reviewable.

    target = audit_target(data_dir, database_url)        # data_dir/audit.db, or the PostgreSQL URL
    audit = AuditLog(target).start()                     # mode="durable" by default
    await audit.record(record)                           # returns once committed
    audit.close()

    verify(target)            # walk the hash chain, report the first edited/deleted/moved record
    prune(target, 90 * 86400) # drop old records, keep the chain verifiable through an anchor
    query(target, since="1h", effect="DENY", principal="user:alice")
    get(target, decision_id); stats(target, since="24h")

A target is a SQLite path or a ``postgresql://`` URL; on PostgreSQL every replica's writer appends
to one chain.

The `authz audit …` commands live in authz.audit.commands.
"""

from authz.audit.backend import Target, describe_target, is_postgres_target
from authz.audit.chain import VerifyReport, chain_hash, prune, verify
from authz.audit.errors import (
    AuditError,
    AuditLogNotFound,
    AuditRecordInvalid,
    AuditTampered,
    AuditUnavailable,
)
from authz.audit.log import MODES, AuditLog, Mode
from authz.audit.query import (
    AuditEntry,
    get,
    get_entry,
    parse_duration,
    parse_time,
    query,
    stats,
)
from authz.audit.record import canonical_json
from authz.audit.schema import (
    AUDIT_DB_NAME,
    GENESIS_HASH,
    audit_db_path,
    audit_target,
    migrate_audit,
)

__all__ = [
    "AUDIT_DB_NAME",
    "GENESIS_HASH",
    "MODES",
    "AuditEntry",
    "AuditError",
    "AuditLog",
    "AuditLogNotFound",
    "AuditRecordInvalid",
    "AuditTampered",
    "AuditUnavailable",
    "Mode",
    "Target",
    "VerifyReport",
    "audit_db_path",
    "audit_target",
    "canonical_json",
    "chain_hash",
    "describe_target",
    "get",
    "get_entry",
    "is_postgres_target",
    "migrate_audit",
    "parse_duration",
    "parse_time",
    "prune",
    "query",
    "stats",
    "verify",
]
