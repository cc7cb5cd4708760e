"""The one small interface every fact store is written against.

A :class:`Database` runs one SQL statement at a time and hands back its rows at once (a
:class:`Result`), so no cursor outlives the call and a pooled connection goes straight back to its
pool. SQL is written once, for both backends:

- ``?`` placeholders (translated to ``%s`` for psycopg; a literal ``%`` needs no escaping);
- portable syntax: ``INSERT ... ON CONFLICT (...) DO NOTHING`` or ``DO UPDATE SET c = excluded.c``,
  ``CREATE ... IF NOT EXISTS``; column types that differ (REAL vs DOUBLE PRECISION, BLOB vs BYTEA)
  are only spelled in :mod:`authz.store.migrations`.

Outside a transaction every statement commits on its own. :meth:`Database.transaction` is a write
transaction that serialises read-then-write sequences: SQLite takes the database's write lock up
front (``BEGIN IMMEDIATE``); PostgreSQL runs on one pooled connection and, when ``lock`` is given,
first takes a transaction-scoped advisory lock on that name, so every transaction naming the same
lock runs one after the other (on SQLite they already do). A transaction belongs to the thread that
opened it: :meth:`Database.execute` on that thread joins it, and a nested ``transaction()`` becomes
a savepoint that rolls back alone.
"""

from __future__ import annotations

import abc
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

from authz.store.dialect import Dialect, SqlDialect

__all__ = ["Database", "Dialect", "Result", "StoreError", "StoreUnavailable"]


class StoreError(RuntimeError):
    """The database could not be opened or migrated; the message says why (never a password)."""


class StoreUnavailable(StoreError):
    """The database server could not be reached (or refused the connection)."""


@dataclass(frozen=True, slots=True)
class Result:
    """What one statement returned: all its rows (already fetched) and its row count."""

    rows: list[tuple[Any, ...]]
    rowcount: int
    """Rows inserted, updated or deleted (for a SELECT it differs between the backends)."""

    def fetchone(self) -> tuple[Any, ...] | None:
        return self.rows[0] if self.rows else None

    def fetchall(self) -> list[tuple[Any, ...]]:
        return list(self.rows)

    def scalar(self) -> Any:
        """The first column of the first row (None when there is no row)."""
        return self.rows[0][0] if self.rows else None

    def __iter__(self) -> Iterator[tuple[Any, ...]]:
        return iter(self.rows)


class Database(abc.ABC):
    """A SQLite file or a PostgreSQL database, used through the same few methods."""

    dialect: Dialect
    sql: SqlDialect
    """What this backend spells differently (authz.store.dialect)."""
    location: str
    """Where the data lives, safe to log (a PostgreSQL URL has its password replaced by ***)."""

    _schema_checked: bool = False
    """Set by :func:`authz.store.migrations.migrate`, so stores migrate a database only once."""

    @abc.abstractmethod
    def execute(self, sql: str, params: Sequence[Any] = ()) -> Result:
        """Run one statement (``?`` placeholders) and return its rows and row count.

        Joins the calling thread's open transaction on this database, if any; otherwise the
        statement commits on its own.
        """

    @abc.abstractmethod
    def transaction(self, lock: str | None = None) -> AbstractContextManager[Database]:
        """A write transaction (committed on success, rolled back on an exception).

        ``lock`` names what the transaction serialises on (e.g. ``"addon:<uuid>"``): two
        transactions naming the same lock never overlap, on either backend. Nested inside a
        transaction of the same thread it is a savepoint. Yields this database.
        """

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        """Run one statement for every row (PostgreSQL: pipelined, one round trip)."""
        for row in rows:
            self.execute(sql, row)

    def iterate(self, sql: str, params: Sequence[Any] = ()) -> Iterator[tuple[Any, ...]]:
        """The rows of a query, streamed when the backend can (inside `snapshot` or
        `transaction`: PostgreSQL reads through a server-side cursor), so a walk over millions
        of rows never holds them all. Close the iterator (or exhaust it) before the block ends."""
        yield from self.execute(sql, params).rows

    @abc.abstractmethod
    def snapshot(self) -> AbstractContextManager[Database]:
        """A read-only transaction that sees one consistent state of the database while
        writers keep committing (SQLite: a read transaction in WAL mode; PostgreSQL: REPEATABLE
        READ READ ONLY). Inside a transaction of the same thread it is that transaction."""

    def table_exists(self, name: str) -> bool:
        return self.execute(self.sql.table_exists, (name,)).fetchone() is not None

    def is_broken(self) -> bool:
        """Whether the connection was lost (a dedicated PostgreSQL connection), so that the
        outcome of the last commit is unknown."""
        return False

    def reconnect_if_broken(self) -> None:  # noqa: B027 (nothing to do unless overridden)
        """Reopen a dedicated connection the server dropped; pools and SQLite need nothing."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release the connection (or the pool). Closing twice is harmless."""

    def __enter__(self) -> Database:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.location}>"
