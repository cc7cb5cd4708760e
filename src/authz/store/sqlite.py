"""The embedded backend: SQLite files opened the same way everywhere."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeAlias

import sqlite_utils

from authz.store.base import Database, Result
from authz.store.dialect import SQLITE

_FIRST_PAUSE = 0.000_05
_LONGEST_PAUSE = 0.001
"""Seconds between tries for the write lock while another connection holds it (doubling)."""

__all__ = ["SqliteDatabase", "StoreLike", "as_database", "open_database", "open_sqlite"]


def _connect(path: Path | str, busy_timeout_ms: int) -> sqlite3.Connection:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("PRAGMA foreign_keys = ON")
    return conn


def open_database(path: Path | str, *, busy_timeout_ms: int = 5000) -> sqlite_utils.Database:
    """Open (creating if needed) a SQLite file in WAL mode, usable from any one thread at a time.

    WAL lets readers (audit queries, a second process) run while the writer commits;
    synchronous=FULL makes a commit durable against power loss, which the audit log promises.
    """
    return sqlite_utils.Database(_connect(path, busy_timeout_ms))


def open_sqlite(path: Path | str, *, busy_timeout_ms: int = 5000) -> SqliteDatabase:
    """A :class:`Database` on a SQLite file, opened like :func:`open_database`."""
    return SqliteDatabase(_connect(path, busy_timeout_ms), location=str(path), owned=True)


class SqliteDatabase(Database):
    """One SQLite connection shared by every store of the process, one thread at a time.

    Every statement and transaction holds the database's lock, so a transaction of one thread
    never takes in another thread's statements. Works on the autocommit connections
    :func:`open_sqlite` makes and on connections in the sqlite3 module's legacy transaction mode
    (a plain ``sqlite_utils.Database(path)``), whose implicit transactions are committed.
    """

    dialect = "sqlite"
    sql = SQLITE

    def __init__(self, conn: sqlite3.Connection, *, location: str = "", owned: bool = False):
        self._conn = conn
        self._owned = owned
        self._lock = threading.RLock()
        self._busy_ms: int | None = None  # the connection's busy timeout, read when first needed
        self._savepoints = 0
        self.location = location or "sqlite"

    @property
    def conn(self) -> sqlite3.Connection:
        """The underlying connection (for SQLite-only tools such as ``iterdump``)."""
        return self._conn

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Result:
        with self._lock:
            conn = self._conn
            outer = conn.in_transaction
            cursor = conn.execute(sql, tuple(params))
            rows = cursor.fetchall() if cursor.description is not None else []
            result = Result(rows, cursor.rowcount)
            if not outer and conn.in_transaction:
                conn.commit()  # the implicit transaction of a legacy-mode connection
            return result

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        with self._lock:
            conn = self._conn
            outer = conn.in_transaction
            conn.executemany(sql, rows)
            if not outer and conn.in_transaction:
                conn.commit()

    def iterate(self, sql: str, params: Sequence[Any] = ()) -> Iterator[tuple[Any, ...]]:
        with self._lock:
            yield from self._conn.execute(sql, tuple(params))

    @contextmanager
    def snapshot(self) -> Iterator[Database]:
        with self._lock:
            conn = self._conn
            if conn.in_transaction:
                yield self
                return
            conn.execute("BEGIN")  # WAL: the first read fixes the snapshot
            try:
                yield self
            finally:
                if conn.in_transaction:
                    conn.execute("COMMIT")

    @contextmanager
    def transaction(self, lock: str | None = None) -> Iterator[Database]:
        # ``lock`` needs nothing here: BEGIN IMMEDIATE already serialises every write transaction.
        with self._lock:
            conn = self._conn
            if conn.in_transaction:  # ours (nested) or one the caller began on the connection
                name = f"authz_savepoint_{self._savepoints}"
                self._savepoints += 1
                try:
                    conn.execute(f"SAVEPOINT {name}")
                    try:
                        yield self
                    except BaseException:
                        conn.execute(f"ROLLBACK TO {name}")
                        conn.execute(f"RELEASE {name}")
                        raise
                    conn.execute(f"RELEASE {name}")
                finally:
                    self._savepoints -= 1
            else:
                self._begin_immediate(conn)
                try:
                    yield self
                    conn.execute("COMMIT")  # a failed commit (disk full) rolls back too
                except BaseException:
                    try:
                        if conn.in_transaction:
                            conn.execute("ROLLBACK")
                    except sqlite3.Error:
                        pass  # the original error says more
                    raise

    def _begin_immediate(self, conn: sqlite3.Connection) -> None:
        """BEGIN IMMEDIATE, waiting for another connection's write transaction by trying again
        every millisecond at most, instead of through SQLite's busy handler, whose pauses grow
        to 100 ms (1, 2, 5, 10, … ms): two workers' audit writers, taking turns on one file,
        each spent about a third of the time asleep there, up to 430 ms at once. Gives up, as
        the handler would, after the connection's busy timeout."""
        if self._busy_ms is None:
            self._busy_ms = int(conn.execute("PRAGMA busy_timeout").fetchone()[0])
        if not self._busy_ms:
            conn.execute("BEGIN IMMEDIATE")
            return
        conn.execute("PRAGMA busy_timeout = 0")
        try:
            deadline: float | None = None
            pause = _FIRST_PAUSE
            while True:
                try:
                    conn.execute("BEGIN IMMEDIATE")
                    return
                except sqlite3.OperationalError as exc:
                    if exc.sqlite_errorcode & 0xFF != sqlite3.SQLITE_BUSY:
                        raise
                    now = time.monotonic()
                    deadline = deadline or now + self._busy_ms / 1000
                    if now >= deadline:
                        raise
                time.sleep(min(pause, deadline - now))
                pause = min(pause * 2, _LONGEST_PAUSE)
        finally:
            conn.execute(f"PRAGMA busy_timeout = {self._busy_ms}")

    def close(self) -> None:
        # After the statement or transaction of another thread (an offloaded call that outlived
        # its request): closing the connection under it would crash the process.
        with self._lock:
            if self._owned:
                self._conn.close()


StoreLike: TypeAlias = Database | sqlite_utils.Database
"""What the fact stores accept: a :class:`Database`, or (as before) a ``sqlite_utils.Database``."""

_ADAPTER = "_authz_store_database"


def as_database(db: StoreLike) -> Database:
    """``db`` as a :class:`Database`; a ``sqlite_utils.Database`` is wrapped once and the
    wrapper shared (so all stores on one connection share one lock). The wrapper does not close
    the connection: whoever opened it does."""
    if isinstance(db, Database):
        return db
    if isinstance(db, sqlite_utils.Database):
        adapter = getattr(db, _ADAPTER, None)
        if adapter is None:
            main = db.conn.execute("PRAGMA database_list").fetchone()
            adapter = SqliteDatabase(db.conn, location=(main[2] if main else "") or ":memory:")
            setattr(db, _ADAPTER, adapter)
        return adapter
    raise TypeError(f"expected an authz.store.Database, got {type(db).__name__}")
