"""One connection to the audit log, on either backend: a SQLite file or a PostgreSQL database.

The audit modules write their SQL once, with ``?`` placeholders, and run it through an
:class:`AuditDb`; the few statements that differ between the backends branch on ``db.dialect``.

- :meth:`AuditDb.snapshot` is a read-only, consistent view (SQLite: a deferred read transaction
  in WAL mode; PostgreSQL: ``REPEATABLE READ READ ONLY``), so `verify` and `stats` see every
  committed batch whole or not at all while writers keep committing.
- :meth:`AuditDb.write` is a write transaction. SQLite takes the file's write lock up front
  (``BEGIN IMMEDIATE``); PostgreSQL starts a READ COMMITTED transaction and, given ``lock``,
  takes a transaction-scoped advisory lock of that name first.
- :meth:`AuditDb.iterate` streams a large result (PostgreSQL: a server-side cursor, so verifying
  millions of records never holds them all in memory); it must run inside a transaction.

A target is a SQLite path or a ``postgresql://`` / ``postgres://`` URL (its ``options`` may set
``search_path``, as the tests do).
"""

from __future__ import annotations

import abc
import os
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any, TypeAlias

from authz.store.base import Dialect
from authz.store.connect import is_postgres_url, normalise_postgres_url, redact_url

__all__ = ["AuditDb", "SqliteAuditDb", "Target", "describe_target", "is_postgres_target"]

Target: TypeAlias = Path | str | os.PathLike[str]
"""Where an audit log lives: a SQLite file, or a PostgreSQL URL."""


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


class AuditDb(abc.ABC):
    """One connection to an audit store; used by one thread at a time."""

    dialect: Dialect
    location: str
    """Where the log is, safe to print (no password)."""

    @abc.abstractmethod
    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        """Run one statement (``?`` placeholders); returns a cursor (fetchone, fetchall,
        iteration, rowcount). Outside a transaction it commits by itself."""

    @abc.abstractmethod
    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        """Run one statement for every row (PostgreSQL: pipelined, one round trip)."""

    @abc.abstractmethod
    def iterate(self, sql: str, params: Sequence[Any] = ()) -> Iterator[tuple[Any, ...]]:
        """Stream the rows of a query; only inside snapshot() or write()."""

    @abc.abstractmethod
    def snapshot(self) -> AbstractContextManager[None]:
        """A read-only transaction that sees one consistent state of the log."""

    @abc.abstractmethod
    def write(self, lock: str | None = None) -> AbstractContextManager[None]:
        """A write transaction: committed when the block ends, rolled back on an exception."""

    @abc.abstractmethod
    def table_exists(self, name: str) -> bool: ...

    @abc.abstractmethod
    def is_duplicate_decision(self, exc: BaseException) -> bool:
        """Whether ``exc`` says a decision_id is already in the log (a caller's bug)."""

    @abc.abstractmethod
    def is_error(self, exc: BaseException) -> bool:
        """Whether ``exc`` is a database error of this backend (as opposed to a bug)."""

    def stored(self, value: Any) -> Any:
        """``value`` as this backend stores it (PostgreSQL text cannot hold NUL characters)."""
        return value

    def reconnect_if_broken(self) -> None:  # noqa: B027 (a no-op unless overridden)
        """Reopen a connection the server dropped (PostgreSQL); nothing to do for SQLite."""

    @property
    @abc.abstractmethod
    def raw(self) -> Any:
        """The underlying sqlite3 or psycopg connection (tests, backend-specific tools)."""

    @abc.abstractmethod
    def close(self) -> None: ...

    def __enter__(self) -> AuditDb:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SqliteAuditDb(AuditDb):
    """The embedded log: a SQLite file in WAL mode with synchronous=FULL."""

    dialect: Dialect = "sqlite"

    def __init__(self, conn: sqlite3.Connection, location: str) -> None:
        self._conn = conn
        self.location = location

    @property
    def raw(self) -> sqlite3.Connection:
        return self._conn

    def execute(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Cursor:
        return self._conn.execute(sql, tuple(params))

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        self._conn.executemany(sql, rows)

    def iterate(self, sql: str, params: Sequence[Any] = ()) -> Iterator[tuple[Any, ...]]:
        yield from self._conn.execute(sql, tuple(params))

    @contextmanager
    def snapshot(self) -> Iterator[None]:
        self._conn.execute("BEGIN")  # WAL: the first read fixes the snapshot
        try:
            yield
        finally:
            if self._conn.in_transaction:
                self._conn.execute("COMMIT")

    @contextmanager
    def write(self, lock: str | None = None) -> Iterator[None]:
        # ``lock`` needs nothing here: BEGIN IMMEDIATE already serialises every writer.
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield
            conn.execute("COMMIT")
        except BaseException:
            try:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass  # the original error says more
            raise

    def table_exists(self, name: str) -> bool:
        row = self._conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)
        ).fetchone()
        return row is not None

    def is_duplicate_decision(self, exc: BaseException) -> bool:
        return isinstance(exc, sqlite3.IntegrityError) and "decision_id" in str(exc)

    def is_error(self, exc: BaseException) -> bool:
        return isinstance(exc, sqlite3.Error | OSError)

    def close(self) -> None:
        self._conn.close()
