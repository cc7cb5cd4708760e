"""The decision audit log: every decision recorded durably, hash-chained, and reviewable.

    target = audit_target(data_dir, database_url)        # data_dir/audit.db, or the PostgreSQL URL
    audit = AuditLog(target).start()                     # mode="durable" by default
    await audit.record(record)                           # returns once committed
    audit.close()

    await audit.record_many(records, shared={"input.principal": p})  # p stored once
    verify(target)            # walk the hash chain, report the first edited/deleted/moved record
    head = checkpoint(target) # keep str(head) elsewhere; verify(target, expect=[head]) later
    prune(target, 90 * 86400) # drop old records, keep the chain verifiable (a prune entry)
    query(target, since="1h", effect="DENY", principal="user:alice")  # iter_query streams
    get(target, decision_id); stats(target, since="24h")
    for rec in read_for_replay(Settings.from_env(), since=...): ...  # DecisionRecords, oldest first

A target is a SQLite path or a ``postgresql://`` URL; on PostgreSQL every replica's writer appends
to one chain.

The `authz audit …` commands live in authz.cli.audit; `explain` (a record in words) in
authz.audit.explain, JSON-lines and CSV export in authz.audit.export.
"""

from authz.audit.chain import Checkpoint, VerifyReport, chain_hash, checkpoint, prune, verify
from authz.audit.errors import (
    AuditError,
    AuditLogNotFound,
    AuditRecordInvalid,
    AuditTampered,
    AuditUnavailable,
)
from authz.audit.log import MODES, AuditLog, Mode, NopAuditLog, open_audit_log
from authz.audit.query import (
    AuditEntry,
    aiter_query,
    get,
    get_entry,
    iter_query,
    iter_records,
    parse_duration,
    parse_time,
    query,
    read_for_replay,
    stats,
)
from authz.audit.record import DecisionRecord, MatchedRule, Stage, canonical_json
from authz.audit.schema import (
    AUDIT_DB_NAME,
    GENESIS_HASH,
    Target,
    audit_db_path,
    audit_target,
    describe_target,
    is_postgres_target,
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
    "Checkpoint",
    "DecisionRecord",
    "MatchedRule",
    "Mode",
    "NopAuditLog",
    "Stage",
    "Target",
    "VerifyReport",
    "aiter_query",
    "audit_db_path",
    "audit_target",
    "canonical_json",
    "chain_hash",
    "checkpoint",
    "describe_target",
    "get",
    "get_entry",
    "is_postgres_target",
    "iter_query",
    "iter_records",
    "migrate_audit",
    "parse_duration",
    "parse_time",
    "prune",
    "open_audit_log",
    "query",
    "read_for_replay",
    "stats",
    "verify",
]
