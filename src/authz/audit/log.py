"""AuditLog: every decision recorded, with group commit, before (or as) it is answered.

One writer thread owns one connection: to a SQLite file, or to a PostgreSQL database that several
replicas of the service share. Callers encode their record (in their own thread) and queue it;
the writer takes everything queued, up to `max_batch`, chains it, and commits it in one
transaction, so concurrent decisions share one fsync.

Fairness: the queue keeps one FIFO per caller (the record's "caller", the authenticated calling
service) and the writer takes them round robin, at most `max_batch` records and `max_batch_bytes`
bytes per transaction. Each caller may have at most `caller_budget` bytes queued or being
committed; beyond that *its* records wait for room while every other caller's pass, so one caller
flooding the log with large batches slows itself, not the others.

Several writers (processes on one SQLite file, or replicas on one PostgreSQL database) append to
ONE chain: each batch transaction first locks the chain head (SQLite: the file's write lock;
PostgreSQL: ``SELECT … FROM audit_head FOR UPDATE``), then reads its seq and hash, appends, moves
the head and commits, so seq stays gapless and every hash links to the record before it, whichever
replica wrote it.

Modes:

- ``durable`` (default): ``await record(rec)`` returns only after the transaction holding the
  record committed. If it cannot commit, the caller gets AuditUnavailable and must fail closed.
- ``async``: ``await record(rec)`` returns once the record is queued in memory, *before* it is
  durable. The queue is bounded; when it is full the caller waits (backpressure). A failed commit
  is retried until it succeeds; ``close()`` drains the queue. A crash of the process (SIGKILL,
  OOM kill, power loss) loses what was still queued and the batch being committed: at most
  ``queue_max + max_batch`` records. They never got a seq, so they leave no gap that ``verify``
  could see.
- ``off``: nothing is built or recorded (benchmarks only): `open_audit_log` gives a
  `NopAuditLog` instead, the same interface doing nothing.

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
import os
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self

from authz.audit.errors import AuditRecordInvalid, AuditUnavailable
from authz.audit.record import (
    INDEX_COLUMNS,
    DecisionRecord,
    PreparedPart,
    PreparedRecord,
    chain_hash,
    prepare,
    prepare_many,
)
from authz.audit.schema import (
    LOG,
    PART_USE,
    PARTS,
    RULES,
    Target,
    describe_target,
    lock_head,
    move_head,
    normalise_target,
    open_audit,
)
from authz.clock import Clock, system_clock
from authz.deadlines import Deadlines, Wait
from authz.store import Database, Dialect

log = logging.getLogger("authz.audit")

Mode = Literal["durable", "async", "off"]
MODES: tuple[Mode, ...] = ("durable", "async", "off")

Record = Mapping[str, Any] | DecisionRecord
"""What the log takes: a DecisionRecord (the decision path), or a dict of the same shape."""

_INSERT_LOG = (
    f"INSERT INTO {LOG} (seq, {', '.join(INDEX_COLUMNS)}, record, prev_hash, hash) "
    f"VALUES ({', '.join('?' * (len(INDEX_COLUMNS) + 4))})"
)
_INSERT_RULE = f"INSERT INTO {RULES} (seq, policy, rule_id, effect) VALUES (?, ?, ?, ?)"
_INSERT_PART = f"INSERT INTO {PARTS} (hash, body) VALUES (?, ?) ON CONFLICT (hash) DO NOTHING"
_USE_PART = (
    f"INSERT INTO {PART_USE} (hash, last_seq) VALUES (?, ?) "
    "ON CONFLICT (hash) DO UPDATE SET last_seq = excluded.last_seq"
)
ASYNC_LINGER = 0.002
"""Seconds the async writer waits after the first queued record for more to commit with it."""
DURABLE_LINGER = 0.001
"""Seconds the durable writer waits for more records when its last commit held several and
fewer are queued now: calls are arriving together, and a larger commit costs less CPU per
record (the write lock, index pages, the fsync), for at most this much more latency. A lone
call (a last commit of one record) is never held."""
_RETRY_FIRST = 0.05
_RETRY_MAX = 1.0


@dataclass(slots=True)
class _Item:
    """One queued record and whoever waits for its commit (nobody in async mode)."""

    prepared: PreparedRecord
    size: int
    """Bytes it adds to the log: its JSON, plus the parts of its batch for the first record."""
    loop: asyncio.AbstractEventLoop | None = None
    future: asyncio.Future[None] | None = None
    blocking: concurrent.futures.Future[None] | None = None


def _sized(prepared: list[PreparedRecord]) -> list[int]:
    """The size of each record of one batch; its shared parts count once, on the first."""
    sizes = [len(p.json) for p in prepared]
    if prepared and prepared[0].parts:
        sizes[0] += sum(len(part.json) for part in prepared[0].parts)
    return sizes


class _CallerQueues:
    """The records waiting for the writer: one FIFO per caller, taken round robin, and the bytes
    each caller has queued or being committed. The owner holds its lock around every call."""

    def __init__(self) -> None:
        self._by_caller: dict[str, collections.deque[_Item]] = {}
        self._turn: collections.deque[str] = collections.deque()  # callers with records queued
        self.depth = 0
        self.held: dict[str, int] = {}

    def __len__(self) -> int:
        return self.depth

    def fits(self, item: _Item, budget: int) -> bool:
        """Whether the item's caller has room for it (a caller holding nothing always has)."""
        held = self.held.get(item.prepared.caller, 0)
        return held == 0 or held + item.size <= budget

    def put(self, item: _Item) -> None:
        caller = item.prepared.caller
        queue = self._by_caller.get(caller)
        if queue is None:
            queue = self._by_caller[caller] = collections.deque()
            self._turn.append(caller)
        queue.append(item)
        self.depth += 1
        self.held[caller] = self.held.get(caller, 0) + item.size

    def take(self, max_items: int, max_bytes: int) -> list[_Item]:
        """Up to max_items records and (beyond the first) max_bytes, one per caller in turn."""
        batch: list[_Item] = []
        size = 0
        while self._turn and len(batch) < max_items:
            caller = self._turn[0]
            queue = self._by_caller[caller]
            if batch and size + queue[0].size > max_bytes:
                break
            item = queue.popleft()
            batch.append(item)
            size += item.size
            self._turn.rotate(-1)  # this caller goes to the back of the line
            if not queue:
                del self._by_caller[caller]
                self._turn.pop()
        self.depth -= len(batch)
        return batch

    def release(self, items: list[_Item]) -> None:
        """The items were committed or given up: their bytes no longer count to the budget."""
        for item in items:
            caller = item.prepared.caller
            left = self.held.get(caller, 0) - item.size
            if left > 0:
                self.held[caller] = left
            else:
                self.held.pop(caller, None)

    def drain(self) -> list[_Item]:
        items = [item for queue in self._by_caller.values() for item in queue]
        self._by_caller.clear()
        self._turn.clear()
        self.depth = 0
        return items


def _yield_on_waking() -> None:
    """Make the calling thread (the writer) wait for its core rather than take it from the
    thread running there when it wakes (Linux's SCHED_BATCH). A worker kept to one core runs
    its event loop and its writer there, and the writer, woken for each commit, preempted the
    loop in the middle of calls. Now the loop finishes what it holds first and each commit
    takes more records; when the core is idle (a lone call waiting for its commit) the writer
    runs at once, as before (docs/benchmarks.md: "The audit writer waits for its core")."""
    with contextlib.suppress(AttributeError, OSError):  # not Linux: nothing changes
        os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))


WRITER_THREAD = "authz-audit"
"""The writer thread's name for the system (`top -H`, `ps -L`, /proc/PID/task/TID/comm), which
keeps only its first 15 bytes; Python's name for it is `authz-audit-writer`."""


def _name_for_the_system() -> None:
    """Give the calling thread WRITER_THREAD as its system name (Linux; elsewhere nothing)."""
    with contextlib.suppress(OSError):
        Path(f"/proc/self/task/{threading.get_native_id()}/comm").write_text(WRITER_THREAD)


def _settle(pairs: list[tuple[asyncio.Future[None], BaseException | None]]) -> None:
    """Runs on the caller's loop: resolve the futures of one committed (or failed) batch."""
    for future, error in pairs:
        if future.done():  # the caller was cancelled or gave up
            continue
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(error)


def _abandon(futures: list[asyncio.Future[None]]) -> None:
    """The caller stopped waiting (cancelled, or a failure before queueing): cancel what is
    still pending (the writer skips it) and mark failures as seen (the writer logged them)."""
    for future in futures:
        if not future.done():
            future.cancel()
        elif not future.cancelled():
            future.exception()


class _CommitWait(Wait):
    """A durable caller waiting for its records' commits: at wait_timeout they fail."""

    __slots__ = ("futures", "message")

    def __init__(self, futures: Sequence[asyncio.Future[None]], message: str) -> None:
        super().__init__()
        self.futures = futures
        self.message = message

    def expire(self) -> None:
        for future in self.futures:
            _expire(future, self.message)


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
        max_batch_bytes: int = 4 << 20,
        queue_max: int = 10_000,
        caller_budget: int = 8 << 20,
        commit_timeout: float = 5.0,
        wait_timeout: float | None = None,
        clock: Clock = system_clock,
    ) -> None:
        """
        max_batch: most records committed in one transaction.
        max_batch_bytes: most bytes committed in one transaction (a larger record goes alone),
            so that a transaction, and whoever waits for it, is never held up long.
        queue_max: most records waiting for the writer; callers beyond it wait for room.
        caller_budget: most bytes one caller may have queued or being committed; its further
            records wait (a caller holding nothing may always queue one record, however large).
        commit_timeout: how long a commit may wait for a database lock (SQLite's busy timeout;
            PostgreSQL's lock_timeout on the chain head, and its connect timeout); in async mode
            also how long a caller waits for room while commits are failing, and how long
            close() keeps retrying a failing commit.
        wait_timeout: the longest a durable caller waits for its commit before AuditUnavailable
            (default 2 × commit_timeout + 1 s): a safety net should the writer hang.
        clock: stamps records that come without a "time".
        """
        if mode not in ("durable", "async"):
            hint = " (open_audit_log gives a NopAuditLog for off)" if mode == "off" else ""
            raise ValueError(f"audit mode {mode!r} must be durable or async{hint}")
        if min(max_batch, queue_max, max_batch_bytes, caller_budget) < 1:
            raise ValueError(
                "max_batch, max_batch_bytes, queue_max and caller_budget must be at least 1"
            )
        if commit_timeout <= 0:
            raise ValueError("commit_timeout must be more than 0 seconds")
        self.target: Path | str = normalise_target(target)
        """A Path (SQLite) or a postgresql:// URL; what verify/query/prune/stats take."""
        self.path: Path | str = self.target
        """The same as target (the name it had when the log was SQLite only)."""
        self.location = describe_target(self.target)
        """The target, safe to log (a URL's password replaced by ***)."""
        self.dialect: Dialect = "sqlite" if isinstance(self.target, Path) else "postgresql"
        self.mode: Mode = mode
        self.recording = True
        """Whether decisions are recorded (NopAuditLog: False, and the decision path builds
        no record)."""
        self.max_batch = max_batch
        self.max_batch_bytes = max_batch_bytes
        self.queue_max = queue_max
        self.caller_budget = caller_budget
        self.commit_timeout = commit_timeout
        self.wait_timeout = 2 * commit_timeout + 1.0 if wait_timeout is None else wait_timeout
        self._waits = Deadlines(self.wait_timeout)
        self._late = f"audit record not committed within {self.wait_timeout:g} s"
        self._clock = clock

        self._lock = threading.Lock()
        self._not_empty = threading.Condition(self._lock)
        self._not_full = threading.Condition(self._lock)
        self._items = _CallerQueues()
        self._space_waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
        self._started = False
        self._closing = False
        self._closed = False
        self._failing = False
        self._dead: BaseException | None = None
        self._last_error = ""  # a message only: the exception would keep the batch alive
        self._db: Database | None = None
        self._thread: threading.Thread | None = None

        # Counters (read them any time; written only by the writer thread or under the lock).
        self.records_written = 0
        """Records committed."""
        self.bytes_written = 0
        """Bytes of record JSON and new shared parts committed."""
        self.commits = 0
        """Transactions committed; far fewer than records_written under concurrent load."""
        self.largest_batch = 0
        self._last_batch = 0  # records in the last commit (the durable linger's yardstick)
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
        try:
            # Wait at most commit_timeout for the chain head (PostgreSQL's lock_timeout; SQLite's
            # busy timeout), and commit only once durable.
            db = open_audit(
                self.target,
                create=True,
                timeout=self.commit_timeout,
                application_name="authz-audit-writer",
                session={
                    "lock_timeout": f"{max(1, round(self.commit_timeout * 1000))}ms",
                    "synchronous_commit": "on",
                },
            )
        except AuditUnavailable as exc:
            self._dead = exc
            raise
        except Exception as exc:  # sqlite3.Error, OSError
            self._dead = exc
            raise AuditUnavailable(f"cannot open the audit log at {self.location}: {exc}") from exc
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
        return (
            None
            if self._db is None
            else getattr(self._db, "raw", None) or getattr(self._db, "conn", None)
        )

    @property
    def queue_depth(self) -> int:
        return len(self._items)

    def counters(self) -> dict[str, int]:
        """The counters as one dict (for metrics and /debug pages)."""
        return {
            "records_written": self.records_written,
            "bytes_written": self.bytes_written,
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

    async def record(self, rec: Record) -> None:
        """Record one decision (see the module docstring for what returning means per mode).

        Raises AuditUnavailable (fail closed) or AuditRecordInvalid (a malformed record).
        """
        await self.record_many((rec,))

    async def record_many(
        self, recs: Iterable[Record], shared: Mapping[str, Any] | None = None
    ) -> None:
        """Record several decisions (a CheckBatch); they normally share one commit.

        shared: what the records have in common, by path ("input.principal": value), stored
        once for the batch rather than in every record (see record.prepare_many).

        In durable mode returns once all of them committed; if any failed, raises
        AuditUnavailable (the others may have been written).
        """
        prepared = prepare_many(recs, self._clock, shared)
        if not prepared:
            return
        loop = asyncio.get_running_loop()
        if self.mode != "durable":
            await self._put_async(
                loop, [_Item(p, size) for p, size in zip(prepared, _sized(prepared), strict=True)]
            )
            return
        items = [
            _Item(p, size, loop, loop.create_future())
            for p, size in zip(prepared, _sized(prepared), strict=True)
        ]
        futures = [item.future for item in items if item.future is not None]
        # A safety net should the writer hang: the batch's futures fail at wait_timeout.
        wait = self._waits.add(_CommitWait(futures, self._late))
        errors: list[BaseException] = []
        try:
            await self._put_async(loop, items)
            for future in futures:
                try:
                    await future
                except AuditUnavailable as exc:  # keep waiting for the others, then report
                    errors.append(exc)
        finally:
            wait.done = True
            wait.futures = ()
            _abandon(futures)
        if errors:
            raise errors[0]

    def record_blocking(self, rec: Record) -> None:
        """record() for code without an event loop (CLI tools, tests, worker threads).

        Do not call it from a coroutine: it blocks the thread until the commit (durable) or
        until there is room in the queue (async).
        """
        prepared = prepare(rec, self._clock)
        waiter: concurrent.futures.Future[None] | None = None
        if self.mode == "durable":
            waiter = concurrent.futures.Future()
        self._put_blocking(_Item(prepared, len(prepared.json), blocking=waiter))
        if waiter is not None:
            try:
                waiter.result(timeout=self.wait_timeout)
            except concurrent.futures.TimeoutError:
                raise AuditUnavailable(self._late) from None

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

    def _enqueue(self, items: list[_Item]) -> int:
        """Queue the leading items that have room, wake the writer, return how many were
        queued. Called with the lock held."""
        queued = 0
        for item in items:
            if len(self._items) >= self.queue_max or not self._items.fits(item, self.caller_budget):
                break
            self._items.put(item)
            queued += 1
        if queued:
            self.queue_high_water = max(self.queue_high_water, len(self._items))
            self._not_empty.notify()
        return queued

    async def _put_async(self, loop: asyncio.AbstractEventLoop, items: list[_Item]) -> None:
        position = 0
        while position < len(items):
            with self._lock:
                refusal = self._refuse()
                if refusal is not None:
                    raise refusal
                queued = self._enqueue(items[position:])
                if queued:
                    position += queued
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
                if self._enqueue([item]):
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
            linger = self._linger()
        if linger:
            # Gather more records for this commit (fewer, larger transactions cost less CPU per
            # record) instead of waking for each.
            time.sleep(linger)
        with self._lock:
            if not self._items:
                return None
            batch = self._items.take(self.max_batch, self.max_batch_bytes)
            waiters, self._space_waiters = self._space_waiters, []
            self._not_full.notify_all()
        self._wake_space(waiters)
        return batch

    def _linger(self) -> float:
        """Seconds to wait for more records before taking a batch. Called with the lock held."""
        queued = len(self._items)
        if self._closing or queued >= self.max_batch:
            return 0.0
        if self.mode == "async":  # acknowledged already: nobody waits for this commit
            return ASYNC_LINGER
        # A last commit of one record: calls come one at a time, and none is held.
        return DURABLE_LINGER if self._last_batch > 1 and queued < self._last_batch else 0.0

    def _release(self, items: list[_Item]) -> None:
        """Give the items' bytes back to their callers' budgets and wake whoever waits."""
        with self._lock:
            self._items.release(items)
            waiters, self._space_waiters = self._space_waiters, []
            self._not_full.notify_all()
        self._wake_space(waiters)

    # -- the writer thread -----------------------------------------------------------------

    def _run(self) -> None:
        _name_for_the_system()
        _yield_on_waking()
        try:
            while (batch := self._take_batch()) is not None:
                try:
                    self._process(batch)
                finally:
                    self._release(batch)
        except BaseException as exc:  # a bug: fail everyone waiting rather than hang them
            log.critical("audit writer stopped", exc_info=True)
            with self._lock:
                self._dead = exc
                left = self._items.drain()
                self._items.release(left)
                waiters, self._space_waiters = self._space_waiters, []
                self._not_full.notify_all()
            self._wake_space(waiters)
            self._resolve(left, exc)
            if self.mode == "async":
                self.records_lost += len(left)
            raise

    def _write(self, batch: list[_Item]) -> int:
        """Chain and insert the batch in one transaction; returns the bytes written. Raises on
        any failure (rolled back)."""
        db = self._db
        assert db is not None
        db.reconnect_if_broken()
        with db.transaction():
            seq, head = lock_head(db)
            rows: list[tuple[Any, ...]] = []
            rule_rows: list[tuple[Any, ...]] = []
            parts: dict[str, tuple[PreparedPart, int]] = {}  # hash -> (part, last seq using it)
            written = 0
            for item in batch:
                p = item.prepared
                seq += 1
                digest = chain_hash(head, seq, p.json)
                rows.append((seq, *p.columns, p.json, head, digest))
                rule_rows.extend((seq, *rule) for rule in p.rules)
                for part in p.parts:
                    parts[part.hash] = (part, seq)
                written += len(p.json)
                head = digest
            db.executemany(_INSERT_LOG, rows)
            if rule_rows:
                db.executemany(_INSERT_RULE, rule_rows)
            for part, _ in parts.values():  # a part already stored (same content) is kept
                if db.execute(_INSERT_PART, (part.hash, part.json)).rowcount:
                    written += len(part.json)
            if parts:
                db.executemany(_USE_PART, [(h, last) for h, (_, last) in parts.items()])
            move_head(db, seq, head)
        return written

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
                    self._committed(batch, sum(len(i.prepared.json) for i in batch))
                    return
                written = self._write(batch)
            except Exception as exc:
                if db.sql.is_unique_violation(exc, "decision_id"):  # the caller's bug
                    if len(batch) == 1:
                        self._reject(batch[0])
                    else:  # commit the others, one by one
                        for item in batch:
                            self._process([item])
                    return
                error = exc  # e.g. a seq clash after tampering, a lost connection: an outage
                uncertain = self._connection_lost(db)
            else:
                self._committed(batch, written)
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
    def _connection_lost(db: Database) -> bool:
        return db.is_broken()

    def _committed(self, batch: list[_Item], written: int) -> None:
        self.records_written += len(batch)
        self.bytes_written += written
        self.commits += 1
        self.largest_batch = max(self.largest_batch, len(batch))
        self._last_batch = len(batch)
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
            left = self._items.drain()
            self._items.release(left)
            lost = len(batch) + len(left)
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


class NopAuditLog:
    """The audit sink of ``AUTHZ_AUDIT_MODE=off`` (benchmarks): the interface of `AuditLog`,
    recording nothing. Its ``recording`` is False, so the decision path builds no record."""

    mode: Mode = "off"
    recording = False
    records_written = 0
    commits = 0
    queue_depth = 0

    def __init__(self, target: Target | None = None) -> None:
        self.target: Path | str | None = None if target is None else normalise_target(target)
        self.location = "off" if self.target is None else describe_target(self.target)

    def start(self) -> Self:
        return self

    def close(self, timeout: float | None = None) -> None:
        pass

    async def aclose(self) -> None:
        pass

    async def record(self, rec: Record) -> None:
        pass

    async def record_many(
        self, recs: Iterable[Record], shared: Mapping[str, Any] | None = None
    ) -> None:
        pass

    def record_blocking(self, rec: Record) -> None:
        pass

    def counters(self) -> dict[str, int]:
        return dict.fromkeys(
            (
                "records_written",
                "bytes_written",
                "commits",
                "largest_batch",
                "failed_commits",
                "records_failed",
                "records_rejected",
                "records_lost",
                "queue_depth",
                "queue_high_water",
            ),
            0,
        )

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        pass


def open_audit_log(
    target: Target, *, mode: Mode = "durable", **options: Any
) -> AuditLog | NopAuditLog:
    """The audit log for a mode: an `AuditLog` (durable, async) or a `NopAuditLog` (off); not
    started. ``options`` are AuditLog's (max_batch, commit_timeout, ...)."""
    if mode == "off":
        return NopAuditLog(target)
    return AuditLog(target, mode=mode, **options)
