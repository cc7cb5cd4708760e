"""What SQLite and PostgreSQL spell differently, in one small object per backend.

SQL is written once with ``?`` placeholders and portable syntax (see authz.store.base); the few
differences left are asked of ``db.sql``: the column types of a migration (``{FLOAT}``,
``{BYTES}``, ``{BIGINT}``), locking a row for the rest of a write transaction, JSON aggregation
and extraction, GLOB matching, and what text a backend can hold.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["POSTGRESQL", "SQLITE", "Dialect", "SqlDialect", "dialect", "glob_to_regex"]

Dialect = Literal["sqlite", "postgresql"]

_GLOB_SPECIAL = set("\\.^$+(){}|*?[]")
_NUL_REPLACEMENT = "\ufffd"


def glob_to_regex(pattern: str) -> str:
    """A SQLite GLOB pattern (``*``, ``?``, ``[a-z]``, ``[^x]``) as an anchored PostgreSQL
    regular expression that matches the same strings (case-sensitive, like GLOB)."""
    out = ["^"]
    i = 0
    while i < len(pattern):
        char = pattern[i]
        if char == "*":
            out.append(".*")
        elif char == "?":
            out.append(".")
        elif char == "[":
            # A set: "]" right after "[" or "[^" belongs to the set. Without a closing "]"
            # the pattern matches nothing (as GLOB does).
            j = i + 1
            if j < len(pattern) and pattern[j] == "^":
                j += 1
            if j < len(pattern) and pattern[j] == "]":
                j += 1
            close = pattern.find("]", j)
            if close < 0:
                return "(?!)"
            inner = pattern[i + 1 : close].replace("\\", "\\\\")
            out.append("[" + inner + "]")
            i = close
        else:
            out.append("\\" + char if char in _GLOB_SPECIAL else char)
        i += 1
    out.append("$")
    return "".join(out)


def _same(value: Any) -> Any:
    return value


def _without_nul(value: Any) -> Any:
    """PostgreSQL text cannot hold NUL: U+FFFD is stored instead (audit verify expects it)."""
    if isinstance(value, str) and "\x00" in value:
        return value.replace("\x00", _NUL_REPLACEMENT)
    return value


@dataclass(frozen=True)
class SqlDialect:
    name: Dialect
    types: Mapping[str, str]
    """Placeholder → column type, for migrations."""
    lock_row: str
    """Appended to a SELECT inside a write transaction to lock the rows it reads (SQLite's
    BEGIN IMMEDIATE already holds the whole database)."""
    insertion_order: str
    """The column that orders a table's rows as inserted (a table without a key of its own)."""
    table_exists: str
    """A query with one ``?`` (the table name) giving one row when the table exists."""
    text: Callable[[Any], Any]
    """A value as this backend can store it (PostgreSQL: no NUL in text)."""

    def render(self, sql: str) -> str:
        """``sql`` with the migration type placeholders filled in."""
        for placeholder, type_name in self.types.items():
            sql = sql.replace(placeholder, type_name)
        return sql

    def json_array(self, *columns: str) -> str:
        fn = "json_array" if self.name == "sqlite" else "json_build_array"
        return f"{fn}({', '.join(columns)})"

    def json_group_array(self, expression: str, order: str) -> str:
        """An aggregate: the JSON array text of ``expression`` over a group, in ``order``
        (SQLite keeps the order of its input: order the subquery it reads by it too)."""
        if self.name == "sqlite":
            return f"json_group_array({expression})"
        return f"json_agg({expression} ORDER BY {order})::text"

    def json_text(self, column: str, *path: str) -> str:
        """The text at ``path`` in the JSON held by ``column`` (NULL where there is none)."""
        if self.name == "sqlite":
            return f"json_extract({column}, '$.{'.'.join(path)}')"
        # PostgreSQL's json cannot de-escape \u0000: such a (rare) value reads as NULL.
        return (
            f"(CASE WHEN strpos({column}, '\\u0000') = 0 "
            f"THEN {column}::json #>> '{{{','.join(path)}}}' END)"
        )

    def glob(self, column: str, pattern: str) -> tuple[str, str]:
        """A condition matching ``column`` against a GLOB pattern, and its parameter."""
        if self.name == "sqlite":
            return f"{column} GLOB ?", pattern
        return f"{column} ~ ?", glob_to_regex(pattern)

    def is_unique_violation(self, exc: BaseException, name: str) -> bool:
        """Whether ``exc`` is a unique-constraint violation on ``name`` (a column or index)."""
        if self.name == "sqlite":
            return isinstance(exc, sqlite3.IntegrityError) and name in str(exc)
        from psycopg import errors

        return isinstance(exc, errors.UniqueViolation) and name in str(
            exc.diag.constraint_name or ""
        )

    def is_error(self, exc: BaseException) -> bool:
        """Whether ``exc`` is a database (or I/O) error of this backend, not a bug."""
        if self.name == "sqlite":
            return isinstance(exc, sqlite3.Error | OSError)
        import psycopg

        return isinstance(exc, psycopg.Error | OSError)


SQLITE = SqlDialect(
    name="sqlite",
    types={"{FLOAT}": "REAL", "{BYTES}": "BLOB", "{BIGINT}": "INTEGER"},
    lock_row="",
    insertion_order="rowid",
    table_exists="SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?",
    text=_same,
)
POSTGRESQL = SqlDialect(
    name="postgresql",
    # SQLite's REAL is 8 bytes; PostgreSQL's REAL would be 4, too few for Unix timestamps.
    types={"{FLOAT}": "DOUBLE PRECISION", "{BYTES}": "BYTEA", "{BIGINT}": "BIGINT"},
    lock_row=" FOR UPDATE",
    insertion_order="id",
    table_exists="SELECT 1 WHERE to_regclass(?) IS NOT NULL",
    text=_without_nul,
)


def dialect(name: Dialect) -> SqlDialect:
    return SQLITE if name == "sqlite" else POSTGRESQL
