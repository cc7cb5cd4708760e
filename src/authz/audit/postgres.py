"""The audit log on PostgreSQL: a connection of its own (autocommit, transactions on demand).

Every replica of the service runs one writer with one connection; they append to one chain by
locking its head row (``SELECT … FROM audit_head … FOR UPDATE``) inside each batch transaction.
Review tools open a short-lived connection per call.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg import errors as pg_errors

from authz.audit.backend import AuditDb
from authz.store.base import Dialect
from authz.store.connect import redact_url
from authz.store.postgres import advisory_key, translate_placeholders

__all__ = ["PostgresAuditDb"]

_ITERSIZE = 2000
_REPLACEMENT = "\ufffd"


def _text(value: Any) -> Any:
    """PostgreSQL text cannot hold NUL: store U+FFFD instead (verify expects the same)."""
    if isinstance(value, str) and "\x00" in value:
        return value.replace("\x00", _REPLACEMENT)
    return value


def _params(params: Sequence[Any]) -> tuple[Any, ...]:
    return tuple(_text(v) for v in params)


class PostgresAuditDb(AuditDb):
    """One psycopg connection (autocommit; :meth:`write` and :meth:`snapshot` open transactions).

    settings: ``SET`` parameters applied on every (re)connection, e.g. ``lock_timeout``.
    """

    dialect: Dialect = "postgresql"

    def __init__(
        self,
        url: str,
        *,
        connect_timeout: float = 5.0,
        application_name: str = "authz-audit",
        settings: dict[str, str] | None = None,
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
        self._settings = dict(settings or {})
        self._cursors = itertools.count(1)
        self._conn: psycopg.Connection[Any] = self._connect()

    def _connect(self) -> psycopg.Connection[Any]:
        conn = psycopg.connect(self._url, **self._kwargs)
        try:
            for name, value in self._settings.items():
                conn.execute("SELECT set_config(%s, %s, false)", (name, value))
        except BaseException:
            conn.close()
            raise
        return conn

    def configure(self, **settings: str) -> None:
        """SET these now and on every reconnection."""
        for name, value in settings.items():
            self._conn.execute("SELECT set_config(%s, %s, false)", (name, value))
        self._settings.update(settings)

    @property
    def raw(self) -> psycopg.Connection[Any]:
        return self._conn

    @property
    def backend_pid(self) -> int:
        return int(self._conn.info.backend_pid)

    def reconnect_if_broken(self) -> None:
        if self._conn.closed or self._conn.broken:
            self._conn.close()
            self._conn = self._connect()

    def execute(self, sql: str, params: Sequence[Any] = ()) -> psycopg.Cursor[Any]:
        return self._conn.execute(translate_placeholders(sql), _params(params))

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        with self._conn.cursor() as cursor:
            cursor.executemany(translate_placeholders(sql), [_params(r) for r in rows])

    def iterate(self, sql: str, params: Sequence[Any] = ()) -> Iterator[tuple[Any, ...]]:
        name = f"authz_audit_{next(self._cursors)}"
        with self._conn.cursor(name=name) as cursor:
            cursor.itersize = _ITERSIZE
            cursor.execute(translate_placeholders(sql), _params(params))
            yield from cursor

    def _rollback_quietly(self) -> None:
        if self._conn.closed or self._conn.broken:
            return
        with contextlib.suppress(psycopg.Error):  # the original error says more
            self._conn.execute("ROLLBACK")

    @contextmanager
    def snapshot(self) -> Iterator[None]:
        self._conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        try:
            yield
        except BaseException:
            self._rollback_quietly()
            raise
        self._conn.execute("COMMIT")

    @contextmanager
    def write(self, lock: str | None = None) -> Iterator[None]:
        self._conn.execute("BEGIN")
        try:
            if lock is not None:
                self._conn.execute("SELECT pg_advisory_xact_lock(%s)", (advisory_key(lock),))
            yield
            self._conn.execute("COMMIT")
        except BaseException:
            self._rollback_quietly()
            raise

    def table_exists(self, name: str) -> bool:
        row = self._conn.execute("SELECT to_regclass(%s) IS NOT NULL", (name,)).fetchone()
        return bool(row and row[0])

    def is_duplicate_decision(self, exc: BaseException) -> bool:
        return isinstance(exc, pg_errors.UniqueViolation) and "decision_id" in str(
            exc.diag.constraint_name or ""
        )

    def is_error(self, exc: BaseException) -> bool:
        return isinstance(exc, psycopg.Error | OSError)

    def stored(self, value: Any) -> Any:
        return _text(value)

    def close(self) -> None:
        self._conn.close()
