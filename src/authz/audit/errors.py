"""What can go wrong with the audit log, each with a message that says what to do."""

from __future__ import annotations

from authz.errors import AuthzError


class AuditError(AuthzError):
    """Base class of every audit log error."""


class AuditUnavailable(AuditError):
    """A decision could not be recorded, so it must not be answered (fail closed).

    Raised by `AuditLog.record` in durable mode when the record's transaction did not commit
    (disk full, database or chain head locked for longer than `commit_timeout`, any SQLite or
    PostgreSQL error, a lost connection), when the log is closed or not started, or when the
    writer has stopped. Also raised by the review functions when a PostgreSQL log cannot be
    reached.
    """


class AuditRecordInvalid(AuditError, ValueError):
    """The record handed to the log is malformed (a bug in the decision path, not an outage)."""


class AuditLogNotFound(AuditError, FileNotFoundError):
    """There is no audit log at the given path, or in the given PostgreSQL database."""


class AuditTampered(AuditError):
    """The hash chain does not verify; raised by `prune` rather than erase the evidence."""
