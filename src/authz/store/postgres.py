"""The shared backend: PostgreSQL through psycopg 3 and a small connection pool.

Connections are in autocommit mode, so a statement outside a transaction commits by itself and
the connection goes straight back to the pool. :meth:`PostgresDatabase.transaction` keeps one
connection for its whole duration and runs ``BEGIN`` ... ``COMMIT`` on it (READ COMMITTED); its
``lock`` is a transaction-scoped advisory lock (``pg_advisory_xact_lock``), released by the commit
or rollback, so it cannot leak even when a replica dies half way.
"""

from __future__ import annotations

import functools
import hashlib
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout

from authz.store.base import Database, Result, StoreUnavailable
from authz.store.connect import redact_url

__all__ = ["PostgresDatabase", "advisory_key", "translate_placeholders"]


@functools.lru_cache(maxsize=512)
def translate_placeholders(sql: str) -> str:
    """``?`` placeholders → psycopg's ``%s``, and ``%`` → ``%%``; a ``?`` in quotes is left alone.

    Our SQL has no comments; a ``?`` or a lone quote inside a ``--`` comment would confuse it.
    """
    out: list[str] = []
    quote = ""
    for char in sql:
        if quote:
            if char == quote:
                quote = ""
        elif char in "'\"":
            quote = char
        elif char == "?":
            out.append("%s")
            continue
        if char == "%":
            out.append("%%")
        else:
            out.append(char)
    return "".join(out)


def advisory_key(name: str) -> int:
    """A stable signed 64-bit key for ``pg_advisory_xact_lock`` from a lock name."""
    return int.from_bytes(hashlib.sha256(name.encode("utf-8")).digest()[:8], "big", signed=True)


def _run(conn: psycopg.Connection[Any], sql: str, params: Sequence[Any]) -> Result:
    cursor = conn.execute(translate_placeholders(sql), tuple(params))
    rows = cursor.fetchall() if cursor.description is not None else []
    return Result(rows, cursor.rowcount)


def _why_not(url: str, kwargs: dict[str, Any]) -> str:
    """libpq's own reason a connection fails (wrong host, password, database name...)."""
    try:
        psycopg.connect(url, **kwargs).close()
    except psycopg.Error as exc:
        return (str(exc).strip() or type(exc).__name__).replace("\n", " ")
    return "the pool's connections did not succeed in time"


class PostgresDatabase(Database):
    """A PostgreSQL database behind a psycopg_pool.ConnectionPool (``min_size``..``max_size``)."""

    dialect = "postgresql"

    def __init__(
        self,
        url: str,
        *,
        min_size: int = 1,
        max_size: int = 8,
        timeout: float = 10.0,
        connect_timeout: int = 5,
        application_name: str = "authz",
    ) -> None:
        self.location = redact_url(url)
        kwargs: dict[str, Any] = {
            "autocommit": True,
            "connect_timeout": connect_timeout,
            "application_name": application_name,
        }
        self._pool: ConnectionPool[psycopg.Connection[Any]] = ConnectionPool(
            url,
            kwargs=kwargs,
            min_size=min_size,
            max_size=max_size,
            timeout=timeout,
            open=False,
            name="authz",
            num_workers=2,
        )
        try:
            # Waits for min_size connections, retrying meanwhile (a server still starting up).
            self._pool.open(wait=True, timeout=timeout)
        except PoolTimeout:
            self._pool.close()
            raise StoreUnavailable(
                f"cannot connect to PostgreSQL at {self.location} within {timeout:g} s: "
                f"{_why_not(url, kwargs)}"
            ) from None
        self._local = threading.local()

    def _current(self) -> psycopg.Connection[Any] | None:
        return getattr(self._local, "conn", None)

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Result:
        conn = self._current()
        if conn is not None:
            return _run(conn, sql, params)
        with self._pool.connection() as conn:
            return _run(conn, sql, params)

    @contextmanager
    def transaction(self, lock: str | None = None) -> Iterator[Database]:
        conn = self._current()
        if conn is not None:  # nested: a savepoint on the thread's connection
            with conn.transaction():
                if lock is not None:
                    self._lock(conn, lock)
                yield self
            return
        with self._pool.connection() as conn:
            self._local.conn = conn
            try:
                with conn.transaction():
                    if lock is not None:
                        self._lock(conn, lock)
                    yield self
            finally:
                self._local.conn = None

    @staticmethod
    def _lock(conn: psycopg.Connection[Any], name: str) -> None:
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (advisory_key(name),))

    def close(self) -> None:
        self._pool.close()
