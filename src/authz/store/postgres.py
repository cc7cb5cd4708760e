"""The shared backend: PostgreSQL through psycopg 3, pooled (`PostgresDatabase`, the state
store) or on one dedicated connection (`PostgresConnection`, the audit writer and review tools).

Connections are in autocommit mode, so a statement outside a transaction commits by itself and
the connection goes straight back to the pool. :meth:`PostgresDatabase.transaction` keeps one
connection for its whole duration and runs ``BEGIN`` ... ``COMMIT`` on it (READ COMMITTED); its
``lock`` is a transaction-scoped advisory lock (``pg_advisory_xact_lock``), released by the commit
or rollback, so it cannot leak even when a replica dies half way.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import itertools
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout

from authz.store.base import Database, Result, StoreUnavailable
from authz.store.dialect import POSTGRESQL
from authz.store.urls import redact_url

__all__ = ["PostgresConnection", "PostgresDatabase", "advisory_key", "translate_placeholders"]

_ITERSIZE = 2000


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


class _Postgres(Database):
    """What the pooled and the dedicated kinds share: statements run on the calling thread's
    open transaction if any, else on a connection of their own."""

    dialect = "postgresql"
    sql = POSTGRESQL
    _local: threading.local
    _cursors = itertools.count(1)

    def _connection(self) -> AbstractContextManager[psycopg.Connection[Any]]:
        raise NotImplementedError

    def _params(self, params: Sequence[Any]) -> tuple[Any, ...]:
        return tuple(params)

    def _current(self) -> psycopg.Connection[Any] | None:
        return getattr(self._local, "conn", None)

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Result:
        conn = self._current()
        if conn is not None:
            return _run(conn, sql, self._params(params))
        with self._connection() as conn:
            return _run(conn, sql, self._params(params))

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        conn = self._current()
        with contextlib.ExitStack() as stack:
            if conn is None:
                conn = stack.enter_context(self._connection())
            with conn.cursor() as cursor:
                cursor.executemany(translate_placeholders(sql), [self._params(r) for r in rows])

    def iterate(self, sql: str, params: Sequence[Any] = ()) -> Iterator[tuple[Any, ...]]:
        conn = self._current()
        if conn is None:  # no transaction to hold a server-side cursor: read at once
            yield from self.execute(sql, params).rows
            return
        with conn.cursor(name=f"authz_cursor_{next(self._cursors)}") as cursor:
            cursor.itersize = _ITERSIZE
            cursor.execute(translate_placeholders(sql), self._params(params))
            yield from cursor

    @contextmanager
    def snapshot(self) -> Iterator[Database]:
        if self._current() is not None:
            yield self
            return
        with self._connection() as conn:
            self._local.conn = conn
            try:
                conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                try:
                    yield self
                except BaseException:
                    _rollback_quietly(conn)
                    raise
                conn.execute("COMMIT")
            finally:
                self._local.conn = None

    @staticmethod
    def _lock(conn: psycopg.Connection[Any], name: str) -> None:
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (advisory_key(name),))


def _rollback_quietly(conn: psycopg.Connection[Any]) -> None:
    if conn.closed or conn.broken:
        return
    with contextlib.suppress(psycopg.Error):  # the original error says more
        conn.execute("ROLLBACK")


class PostgresDatabase(_Postgres):
    """A PostgreSQL database behind a psycopg_pool.ConnectionPool (``min_size``..``max_size``)."""

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

    def _connection(self) -> AbstractContextManager[psycopg.Connection[Any]]:
        return self._pool.connection()

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

    def close(self) -> None:
        self._pool.close()


class PostgresConnection(_Postgres):
    """One dedicated psycopg connection (autocommit; transactions on demand), used by one thread
    at a time: the audit writer, whose replicas append to one chain, and review tools.

    ``session``: settings applied on every (re)connection (``lock_timeout``...). Text parameters
    holding NUL are stored with U+FFFD instead (PostgreSQL text cannot hold NUL).
    """

    def __init__(
        self,
        url: str,
        *,
        connect_timeout: float = 5.0,
        application_name: str = "authz",
        session: Mapping[str, str] | None = None,
    ) -> None:
        self._url = url
        self.location = redact_url(url)
        self._kwargs: dict[str, Any] = {
            "autocommit": True,
            "connect_timeout": max(1, round(connect_timeout)),
            "application_name": application_name,
            # Notice a server that vanished (no FIN) within ~10 s instead of hanging.
            "keepalives": 1,
            "keepalives_idle": 5,
            "keepalives_interval": 2,
            "keepalives_count": 3,
        }
        self._session = dict(session or {})
        self._local = threading.local()
        self._conn: psycopg.Connection[Any] = self._connect()

    def _connect(self) -> psycopg.Connection[Any]:
        conn = psycopg.connect(self._url, **self._kwargs)
        try:
            for name, value in self._session.items():
                conn.execute("SELECT set_config(%s, %s, false)", (name, value))
        except BaseException:
            conn.close()
            raise
        return conn

    @contextmanager
    def _connection(self) -> Iterator[psycopg.Connection[Any]]:
        yield self._conn

    def _params(self, params: Sequence[Any]) -> tuple[Any, ...]:
        text = POSTGRESQL.text
        return tuple(text(v) for v in params)

    @property
    def backend_pid(self) -> int:
        return int(self._conn.info.backend_pid)

    @property
    def raw(self) -> psycopg.Connection[Any]:
        """The psycopg connection (tests, PostgreSQL-only tools)."""
        return self._conn

    def is_broken(self) -> bool:
        return bool(self._conn.closed or self._conn.broken)

    def reconnect_if_broken(self) -> None:
        if self.is_broken():
            self._conn.close()
            self._conn = self._connect()

    @contextmanager
    def transaction(self, lock: str | None = None) -> Iterator[Database]:
        conn = self._conn
        if self._current() is not None:  # nested: a savepoint
            with conn.transaction():
                if lock is not None:
                    self._lock(conn, lock)
                yield self
            return
        self._local.conn = conn
        try:
            conn.execute("BEGIN")
            try:
                if lock is not None:
                    self._lock(conn, lock)
                yield self
                conn.execute("COMMIT")
            except BaseException:
                _rollback_quietly(conn)
                raise
        finally:
            self._local.conn = None

    def close(self) -> None:
        self._conn.close()
