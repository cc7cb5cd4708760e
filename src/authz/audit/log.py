"""AuditLog: every decision recorded, with group commit, before (or as) it is answered.

One writer thread owns one connection: to a SQLite file, or to a PostgreSQL database that several
replicas of the service share. Callers encode their record (in their own thread) and queue it;
the writer takes everything queued, up to `max_batch`, chains it, and commits it in one
transaction, so concurrent decisions share one fsync.

Several writers (processes on one SQLite file, or replicas on one PostgreSQL database) append to
ONE chain: each batch transaction first locks the chain head (SQLite: the file's write lock;
PostgreSQL: ``SELECT … FROM audit_head FOR UPDATE``), then reads its seq and hash, appends, moves
the head and commits, so seq stays gapless and every hash links to the record before it, whichever
replica wrote it.

Modes:

- ``durable`` (default): ``await record(rec)`` returns only after the transaction holding the
  record committed. If it cannot commit, the caller gets AuditUnavailable and must fail closed.
- ``async``: ``await record(rec)`` returns once the record is queued. The queue is bounded; when
  it is full the caller waits (backpressure), it is never dropped. A failed commit is retried
  until it succeeds; ``close()`` drains the queue.
- ``off``: nothing is recorded (benchmarks only).

In both recording modes the number of records written equals the number of calls that returned
without an exception, with one exception in the safe direction: a durable caller that is
cancelled, or gives up after `wait_timeout`, once its record is queued may still have it written.
"""

from __future__ import annotations

import asyncio
import atexit
import collections
import concurrent.futures
import contextlib
import logging
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self

from authz.audit.backend import AuditDb, Target, describe_target, normalise_target
from authz.audit.chain import chain_hash
from authz.audit.errors import AuditRecordInvalid, AuditUnavailable
from authz.audit.record import INDEX_COLUMNS, PreparedRecord, prepare
from authz.audit.schema import HEAD, LOG, RULES, open_audit
from authz.clock import Clock, system_clock
from authz.store.base import Dialect

log = logging.getLogger("authz.audit")

Mode = Literal["durable", "async", "off"]
MODES: tuple[Mode, ...] = ("durable", "async", "off")

_INSERT_LOG = (
    f"INSERT INTO {LOG} (seq, {', '.join(INDEX_COLUMNS)}, record, prev_hash, hash) "
    f"VALUES ({', '.join('?' * (len(INDEX_COLUMNS) + 4))})"
)
_INSERT_RULE = f"INSERT INTO {RULES} (seq, policy, rule_id, effect) VALUES (?, ?, ?, ?)"
_HEAD_SQL: dict[Dialect, str] = {
    "sqlite": f"SELECT seq, hash FROM {HEAD} WHERE id = 1",  # BEGIN IMMEDIATE holds the lock
    "postgresql": f"SELECT seq, hash FROM {HEAD} WHERE id = 1 FOR UPDATE",
}
_RETRY_FIRST = 0.05
_RETRY_MAX = 1.0


@dataclass(slots=True)
class _Item:
    """One queued record and whoever waits for its commit (nobody in async mode)."""

    prepared: PreparedRecord
    loop: asyncio.AbstractEventLoop | None = None
    future: asyncio.Future[None] | None = None
    blocking: concurrent.futures.Future[None] | None = None


def _settle(pairs: list[tuple[asyncio.Future[None], BaseException | None]]) -> None:
    """Runs on the caller's loop: resolve the futures of one committed (or failed) batch."""
    for future, error in pairs:
        if future.done():  # the caller was cancelled or gave up
            continue
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(error)


def _retrieve(future: asyncio.Future[None]) -> None:
    """Mark a failure as seen even if its caller stopped waiting (the writer logged it)."""
    if not future.cancelled():
        future.exception()


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _expire(future: asyncio.Future[None], message: str) -> None:
    if not future.done():
        future.set_exception(AuditUnavailable(message))


async def _await(
    loop: asyncio.AbstractEventLoop, future: asyncio.Future[None], timeout: float, message: str
) -> None:
    """Await a future, failing it with AuditUnavailable(message) after `timeout` seconds."""
    handle = loop.call_later(timeout, _expire, future, message)
    try:
        await future
    finally:
        handle.cancel()


class AuditLog:
    """The decision audit log at `target`: a SQLite file (the service uses
    AUTHZ_DATA_DIR/audit.db) or a PostgreSQL URL (DATABASE_URL, shared by replicas).

    >>> with AuditLog(tmp / "audit.db") as audit:          # doctest: +SKIP
    ...     await audit.record(decision_record)             # returns once committed
    >>> AuditLog("postgresql://db.example/authz").start()   # doctest: +SKIP

    Safe to use from coroutines on any event loops and from plain threads (`record_blocking`).
    """

    def __init__(
        self,
        target: Target,
        *,
        mode: Mode = "durable",
        max_batch: int = 512,
        queue_max: int = 10_000,
        commit_timeout: float = 5.0,
        wait_timeout: float | None = None,
        clock: Clock = system_clock,
    ) -> None:
        """
        max_batch: most records committed in one transaction.
        queue_max: most records waiting for the writer; callers beyond it wait for room.
        commit_timeout: how long a commit may wait for a database lock (SQLite's busy timeout;
            PostgreSQL's lock_timeout on the chain head, and its connect timeout); in async mode
            also how long a caller waits for room while commits are failing, and how long
            close() keeps retrying a failing commit.
        wait_timeout: the longest a durable caller waits for its commit before AuditUnavailable
            (default 2 × commit_timeout + 1 s): a safety net should the writer hang.
        clock: stamps records that come without a "time".
        """
        if mode not in MODES:
            raise ValueError(f"audit mode {mode!r} must be one of {', '.join(MODES)}")
        if max_batch < 1 or queue_max < 1:
            raise ValueError("max_batch and queue_max must be at least 1")
        if commit_timeout <= 0:
            raise ValueError("commit_timeout must be more than 0 seconds")
        self.target: Path | str = normalise_target(target)
        """A Path (SQLite) or a postgresql:// URL; what verify/query/prune/stats take."""
        self.path: Path | str = self.target
        """The same as target (the name it had when the log was SQLite only)."""
        self.location = describe_target(self.target)
        """The target, safe to log (a URL's password replaced by ***)."""
        self.dialect: Dialect = "postgresql" if isinstance(self.target, str) else "sqlite"
        self.mode: Mode = mode
        self.max_batch = max_batch
        self.queue_max = queue_max
        self.commit_timeout = commit_timeout
        self.wait_timeout = 2 * commit_timeout + 1.0 if wait_timeout is None else wait_timeout
        self._clock = clock

        self._lock = threading.Lock()
        self._not_empty = threading.Condition(self._lock)
        self._not_full = threading.Condition(self._lock)
        self._items: collections.deque[_Item] = collections.deque()
        self._space_waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
        self._started = False
        self._closing = False
        self._closed = False
        self._failing = False
        self._dead: BaseException | None = None
        self._last_error = ""  # a message only: the exception would keep the batch alive
        self._db: AuditDb | None = None
        self._thread: threading.Thread | None = None

        # Counters (read them any time; written only by the writer thread or under the lock).
        self.records_written = 0
        """Records committed."""
        self.commits = 0
        """Transactions committed; far fewer than records_written under concurrent load."""
        self.largest_batch = 0
        self.failed_commits = 0
        """Transactions that failed (each attempt counts, including async-mode retries)."""
        self.records_failed = 0
        """Durable records whose callers got AuditUnavailable from the writer."""
        self.records_rejected = 0
        """Records refused by the database (a duplicate decision_id): a bug in the caller."""
        self.records_lost = 0
        """Async-mode records that close() could not write (it raised AuditUnavailable)."""
        self.queue_high_water = 0
        """The most records ever waiting in the queue (never more than queue_max)."""

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> Self:
        """Open the database, create its schema and start the writer thread."""
        if self._started:
            return self
        self._started = True
        if self.mode == "off":
            return self
        try:
            db = open_audit(
                self.target,
                create=True,
                timeout=self.commit_timeout,
                application_name="authz-audit-writer",
            )
        except AuditUnavailable as exc:
            self._dead = exc
            raise
        except Exception as exc:  # sqlite3.Error, OSError
            self._dead = exc
            raise AuditUnavailable(f"cannot open the audit log at {self.location}: {exc}") from exc
        if db.dialect == "postgresql":
            from authz.audit.postgres import PostgresAuditDb

            assert isinstance(db, PostgresAuditDb)
            try:
                # Wait at most commit_timeout for the chain head; commit only once durable.
                db.configure(
                    lock_timeout=f"{max(1, round(self.commit_timeout * 1000))}ms",
                    synchronous_commit="on",
                )
            except Exception as exc:
                db.close()
                self._dead = exc
                raise AuditUnavailable(
                    f"cannot open the audit log at {self.location}: {exc}"
                ) from exc
        self._db = db
        self._thread = threading.Thread(target=self._run, name="authz-audit-writer", daemon=True)
        self._thread.start()
        atexit.register(self._close_at_exit)
        return self

    def close(self, timeout: float | None = None) -> None:
        """Write everything queued, then stop the writer. Idempotent.

        Raises AuditUnavailable if queued async-mode records could not be written (they are
        counted in records_lost and logged), or if the writer did not finish within `timeout`.
        """
        with self._lock:
            if self._closed:
                return
            self._closing = True
            self._not_empty.notify_all()
            self._not_full.notify_all()
            waiters, self._space_waiters = self._space_waiters, []
        self._wake_space(waiters)  # callers waiting for room now find the log closed
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                raise AuditUnavailable(
                    f"the audit writer did not finish within {timeout} s; "
                    f"{self.queue_depth} records are still queued"
                )
        atexit.unregister(self._close_at_exit)
        with self._lock:
            self._closed = True
        if self._db is not None:
            self._db.close()
            self._db = None
        if self.records_lost:
            raise AuditUnavailable(
                f"{self.records_lost} queued audit records could not be written to "
                f"{self.location}: {self._last_error}"
            )

    async def aclose(self) -> None:
        """close() without blocking the event loop."""
        await asyncio.to_thread(self.close)

    def _close_at_exit(self) -> None:
        try:
            self.close(timeout=self.wait_timeout)
        except AuditUnavailable as exc:
            log.critical("audit log not flushed at exit: %s", exc)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    async def __aenter__(self) -> Self:
        return self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    @property
    def _conn(self) -> Any:
        """The writer's sqlite3 or psycopg connection (for tests and diagnostics)."""
        return None if self._db is None else self._db.raw

    @property
    def queue_depth(self) -> int:
        return len(self._items)

    def counters(self) -> dict[str, int]:
        """The counters as one dict (for metrics and /debug pages)."""
        return {
            "records_written": self.records_written,
            "commits": self.commits,
            "largest_batch": self.largest_batch,
            "failed_commits": self.failed_commits,
            "records_failed": self.records_failed,
            "records_rejected": self.records_rejected,
            "records_lost": self.records_lost,
            "queue_depth": self.queue_depth,
            "queue_high_water": self.queue_high_water,
        }

    # -- recording -------------------------------------------------------------------------

    async def record(self, rec: Mapping[str, Any]) -> None:
        """Record one decision (see the module docstring for what returning means per mode).

        Raises AuditUnavailable (fail closed) or AuditRecordInvalid (a malformed record).
        """
        if self.mode == "off":
            return
        await self.record_many((rec,))

    async def record_many(self, recs: Iterable[Mapping[str, Any]]) -> None:
        """Record several decisions (a CheckBatch); they normally share one commit.

        In durable mode returns once all of them committed; if any failed, raises
        AuditUnavailable (the others may have been written).
        """
        if self.mode == "off":
            return
        prepared = [prepare(rec, self._clock) for rec in recs]
        if not prepared:
            return
        loop = asyncio.get_running_loop()
        durable = self.mode == "durable"
        items = [_Item(p, loop, loop.create_future()) if durable else _Item(p) for p in prepared]
        for item in items:
            if item.future is not None:
                item.future.add_done_callback(_retrieve)
        await self._put_async(loop, items)
        if durable:
            message = f"audit record not committed within {self.wait_timeout:g} s"
            errors: list[BaseException] = []
            for item in items:
                assert item.future is not None
                try:
                    await _await(loop, item.future, self.wait_timeout, message)
                except AuditUnavailable as exc:  # keep waiting for the others, then report
                    errors.append(exc)
            if errors:
                raise errors[0]

    def record_blocking(self, rec: Mapping[str, Any]) -> None:
        """record() for code without an event loop (CLI tools, tests, worker threads).

        Do not call it from a coroutine: it blocks the thread until the commit (durable) or
        until there is room in the queue (async).
        """
        if self.mode == "off":
            return
        prepared = prepare(rec, self._clock)
        waiter: concurrent.futures.Future[None] | None = None
        if self.mode == "durable":
            waiter = concurrent.futures.Future()
        self._put_blocking(_Item(prepared, blocking=waiter))
        if waiter is not None:
            try:
                waiter.result(timeout=self.wait_timeout)
            except concurrent.futures.TimeoutError:
                raise AuditUnavailable(
                    f"audit record not committed within {self.wait_timeout:g} s"
                ) from None

    # -- the queue -------------------------------------------------------------------------

    def _refuse(self) -> AuditUnavailable | None:
        """Why nothing can be queued now, if so. Called with the lock held."""
        if self._dead is not None:
            return AuditUnavailable(f"the audit writer stopped: {self._dead}")
        if self._closing:
            return AuditUnavailable(f"the audit log at {self.location} is closed")
        if not self._started:
            return AuditUnavailable("the audit log was not started (call start())")
        return None

    def _enqueue(self, items: list[_Item]) -> None:
        """Append items and wake the writer. Called with the lock held and room checked."""
        self._items.extend(items)
        depth = len(self._items)
        if depth > self.queue_high_water:
            self.queue_high_water = depth
        self._not_empty.notify()

    async def _put_async(self, loop: asyncio.AbstractEventLoop, items: list[_Item]) -> None:
        position = 0
        while position < len(items):
            with self._lock:
                refusal = self._refuse()
                if refusal is not None:
                    raise refusal
                room = self.queue_max - len(self._items)
                if room > 0:
                    self._enqueue(items[position : position + room])
                    position += room
                    continue
                space = loop.create_future()
                self._space_waiters.append((loop, space))
                failing = self._failing
            if failing:
                # The writer cannot commit: wait a bounded time, then fail closed.
                await _await(
                    loop,
                    space,
                    self.commit_timeout,
                    f"the audit queue is full and commits are failing: {self._last_error}",
                )
            else:
                await space  # backpressure: the writer wakes us when it takes a batch

    def _put_blocking(self, item: _Item) -> None:
        with self._lock:
            while True:
                refusal = self._refuse()
                if refusal is not None:
                    raise refusal
                if len(self._items) < self.queue_max:
                    self._enqueue([item])
                    return
                if self._failing:
                    if not self._not_full.wait(self.commit_timeout):
                        raise AuditUnavailable(
                            f"the audit queue is full and commits are failing: {self._last_error}"
                        )
                else:
                    self._not_full.wait()

    @staticmethod
    def _wake_space(
        waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]],
    ) -> None:
        for loop, future in waiters:
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits there any more
                loop.call_soon_threadsafe(_wake, future)

    def _take_batch(self) -> list[_Item] | None:
        """Block until records are queued; None once closing and drained."""
        with self._lock:
            while not self._items and not self._closing:
                self._not_empty.wait()
            if not self._items:
                return None
            count = min(len(self._items), self.max_batch)
            batch = [self._items.popleft() for _ in range(count)]
            waiters, self._space_waiters = self._space_waiters, []
            self._not_full.notify_all()
        self._wake_space(waiters)
        return batch

    # -- the writer thread -----------------------------------------------------------------

    def _run(self) -> None:
        try:
            while (batch := self._take_batch()) is not None:
                self._process(batch)
        except BaseException as exc:  # a bug: fail everyone waiting rather than hang them
            log.critical("audit writer stopped", exc_info=True)
            with self._lock:
                self._dead = exc
                left = list(self._items)
                self._items.clear()
                waiters, self._space_waiters = self._space_waiters, []
                self._not_full.notify_all()
            self._wake_space(waiters)
            self._resolve(left, exc)
            if self.mode == "async":
                self.records_lost += len(left)
            raise

    def _write(self, batch: list[_Item]) -> None:
        """Chain and insert the batch in one transaction; raises on any failure (rolled back)."""
        db = self._db
        assert db is not None
        db.reconnect_if_broken()
        with db.write():
            # Lock and read the head inside the write transaction, so the chain stays linear
            # while other processes or replicas append to the same log.
            head_row = db.execute(_HEAD_SQL[db.dialect]).fetchone()
            if head_row is None:
                raise AuditUnavailable(f"the chain head ({HEAD}) of {self.location} is missing")
            seq, head = int(head_row[0]), str(head_row[1])
            rows: list[tuple[Any, ...]] = []
            rule_rows: list[tuple[Any, ...]] = []
            for item in batch:
                p = item.prepared
                seq += 1
                digest = chain_hash(head, seq, p.json)
                rows.append((seq, *p.columns, p.json, head, digest))
                rule_rows.extend((seq, *rule) for rule in p.rules)
                head = digest
            db.executemany(_INSERT_LOG, rows)
            if rule_rows:
                db.executemany(_INSERT_RULE, rule_rows)
            db.execute(f"UPDATE {HEAD} SET seq = ?, hash = ? WHERE id = 1", (seq, head))

    def _committed_before(self, batch: list[_Item]) -> bool:
        """After a commit whose outcome is unknown (the connection broke during it): whether
        the batch is in fact in the log. A transaction is all or nothing, so any one record
        tells; all of them are checked anyway."""
        db = self._db
        assert db is not None
        db.reconnect_if_broken()
        ids = [item.prepared.decision_id for item in batch]
        marks = ", ".join("?" * len(ids))
        found = db.execute(f"SELECT count(*) FROM {LOG} WHERE decision_id IN ({marks})", ids)
        return int(found.fetchone()[0]) == len(ids)

    def _process(self, batch: list[_Item]) -> None:
        """Commit one batch and settle its waiters; in async mode retry until it commits."""
        delay = _RETRY_FIRST
        give_up_at: float | None = None
        db = self._db
        assert db is not None
        uncertain = False  # the last attempt's outcome is unknown: the connection broke
        while True:
            error: Exception
            try:
                if uncertain and self._committed_before(batch):
                    self._committed(batch)
                    return
                self._write(batch)
            except Exception as exc:
                if db.is_duplicate_decision(exc):  # the caller's bug, not an outage
                    if len(batch) == 1:
                        self._reject(batch[0])
                    else:  # commit the others, one by one
                        for item in batch:
                            self._process([item])
                    return
                error = exc  # e.g. a seq clash after tampering, a lost connection: an outage
                uncertain = self._connection_lost(db)
            else:
                self._committed(batch)
                return
            self.failed_commits += 1
            self._last_error = f"{type(error).__name__}: {error}"
            self._set_failing(True)
            if self.mode == "durable":
                log.error("audit commit of %d records failed: %s", len(batch), self._last_error)
                self.records_failed += len(batch)
                self._resolve(batch, error)
                return
            # async: these records were acknowledged, so retry until they are written.
            if self._closing:
                now = time.monotonic()
                give_up_at = give_up_at or now + self.commit_timeout
                if now >= give_up_at:
                    self._lose(batch, error)
                    return
            log.warning("audit commit failed, retrying in %.2f s: %s", delay, self._last_error)
            time.sleep(delay)
            delay = min(delay * 2, _RETRY_MAX)

    @staticmethod
    def _connection_lost(db: AuditDb) -> bool:
        raw = db.raw
        return db.dialect == "postgresql" and bool(raw.closed or raw.broken)

    def _committed(self, batch: list[_Item]) -> None:
        self.records_written += len(batch)
        self.commits += 1
        self.largest_batch = max(self.largest_batch, len(batch))
        if self._failing:
            log.info("audit commits succeed again")
            self._set_failing(False)
        self._resolve(batch, None)

    def _set_failing(self, failing: bool) -> None:
        with self._lock:
            self._failing = failing
            waiters, self._space_waiters = self._space_waiters, []
            self._not_full.notify_all()
        self._wake_space(waiters)  # let blocked callers re-decide how long to wait

    def _reject(self, item: _Item) -> None:
        """A record whose decision_id is already in the log: a bug in the caller, not an outage."""
        self.records_rejected += 1
        decision_id = item.prepared.decision_id
        log.error("audit record %s rejected: its decision_id is already in the log", decision_id)
        self._resolve(
            [item], AuditRecordInvalid(f"decision {decision_id} is already in the audit log")
        )

    def _lose(self, batch: list[_Item], exc: BaseException) -> None:
        """Closing with commits still failing: give up on this batch and everything queued."""
        with self._lock:
            lost = len(batch) + len(self._items)
            self._items.clear()
        self.records_lost += lost
        log.critical(
            "audit log closing: %d acknowledged records could not be written: %s",
            lost,
            self._last_error,
        )

    def _resolve(self, batch: list[_Item], error: BaseException | None) -> None:
        """Tell every waiter in the batch how its commit went (one wake-up per event loop)."""
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[None], Any]]] = {}
        for item in batch:
            failure = None if error is None else self._failure(error, item)
            if item.blocking is not None:
                if failure is None:
                    item.blocking.set_result(None)
                else:
                    item.blocking.set_exception(failure)
            elif item.loop is not None and item.future is not None:
                by_loop.setdefault(item.loop, []).append((item.future, failure))
        for loop, pairs in by_loop.items():
            with contextlib.suppress(RuntimeError):  # the caller's loop is gone
                loop.call_soon_threadsafe(_settle, pairs)

    def _failure(self, error: BaseException, item: _Item) -> BaseException:
        """A fresh exception per waiter (one instance raised in many tasks tangles tracebacks)."""
        if isinstance(error, AuditRecordInvalid | AuditUnavailable):
            return error
        failure = AuditUnavailable(
            f"decision {item.prepared.decision_id} was not recorded in the audit log at "
            f"{self.location}: {type(error).__name__}: {error}"
        )
        failure.__cause__ = error
        return failure
