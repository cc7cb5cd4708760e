"""The decision audit log: every decision recorded durably, hash-chained, and reviewable.

    audit = AuditLog(data_dir / "audit.db").start()      # mode="durable" by default
    await audit.record(record)                           # returns once committed
    audit.close()

    verify(path)            # walk the hash chain, report the first edited/deleted/moved record
    prune(path, 90 * 86400) # drop old records, keep the chain verifiable through an anchor
    query(path, since="1h", effect="DENY", principal="user:alice")
    get(path, decision_id); stats(path, since="24h")

The `authz audit …` commands live in authz.audit.commands.
"""

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
from authz.audit.schema import AUDIT_DB_NAME, GENESIS_HASH, audit_db_path

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
    "VerifyReport",
    "audit_db_path",
    "canonical_json",
    "chain_hash",
    "get",
    "get_entry",
    "parse_duration",
    "parse_time",
    "prune",
    "query",
    "stats",
    "verify",
]
