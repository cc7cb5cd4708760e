"""The audit writer: each decision written exactly once, group commit, backpressure, fail closed.

Every test taking `target` runs on both backends: a SQLite file and a PostgreSQL database (a
fresh schema of the test run's throwaway database; see tests/pg.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import math
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from authz.audit import AuditLog, AuditRecordInvalid, AuditUnavailable, migrate_audit, verify
from authz.audit.log import open_audit_log
from authz.audit.testing import execute_sql, fetch_all, hold_write_lock, make_record
from tests.pg import Backend, postgres, tables, use_backend

Target = Path | str


@pytest.fixture
def target(backend: Backend, tmp_path: Path) -> Target:
    """An empty audit log: tmp_path/audit.db, or a PostgreSQL URL (search_path = a new schema)."""
    return tmp_path / "audit.db" if backend.name == "sqlite" else backend.target


@pytest.fixture
def pg_target(tmp_path: Path) -> Iterator[str]:
    with use_backend("postgresql", tmp_path) as chosen:
        yield chosen.target


def rows(target: Target) -> list[tuple[Any, ...]]:
    return fetch_all(target, "SELECT seq, decision_id, prev_hash, hash FROM audit_log ORDER BY seq")


def assert_written_exactly(target: Target, ids: list[str]) -> None:
    stored = rows(target)
    assert [r[0] for r in stored] == list(range(1, len(stored) + 1)), "seq must be gapless"
    assert sorted(r[1] for r in stored) == sorted(ids)
    report = verify(target)
    assert report.ok, report.message


@pytest.mark.parametrize("mode", ["durable", "async"])
def test_concurrent_records_are_each_written_once_in_few_commits(target: Target, mode: str) -> None:
    path = target
    records = [make_record() for _ in range(2000)]

    async def main() -> AuditLog:
        log = AuditLog(path, mode=mode).start()  # type: ignore[arg-type]
        await asyncio.gather(*(log.record(r) for r in records))
        if mode == "durable":
            # Durable: every record() returned only after its commit.
            assert log.records_written == 2000
        await log.aclose()
        return log

    log = asyncio.run(main())
    assert log.records_written == 2000
    # Group commit: concurrent decisions share transactions.
    assert log.commits <= 2000 // 10, log.counters()
    assert log.largest_batch <= log.max_batch
    assert_written_exactly(path, [r["decision_id"] for r in records])


@pytest.mark.skipif(not hasattr(os, "SCHED_BATCH"), reason="Linux scheduling policies")
def test_the_writer_waits_for_its_core_rather_than_preempting_the_callers(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.db").start()
    try:
        log.record_blocking(make_record())  # the writer has started and committed
        assert log._thread is not None and log._thread.native_id is not None
        assert os.sched_getscheduler(log._thread.native_id) == os.SCHED_BATCH
        assert os.sched_getscheduler(0) == os.SCHED_OTHER  # the caller's thread is left alone
    finally:
        log.close()


def test_durable_record_has_committed_when_it_returns(target: Target) -> None:
    path = target

    async def main() -> None:
        async with AuditLog(path) as log:
            for _ in range(5):
                rec = make_record()
                await log.record(rec)
                # Another connection (another process, in effect) sees it right away.
                found = fetch_all(
                    path,
                    "SELECT count(*) FROM audit_log WHERE decision_id = ?",
                    (rec["decision_id"],),
                )
                assert found == [(1,)]

    asyncio.run(main())


def test_async_mode_backpressure_with_tiny_queue_never_drops(target: Target) -> None:
    path = target
    log = AuditLog(path, mode="async", queue_max=3, max_batch=2).start()
    original = log._write

    def slow_write(batch: Any) -> int:
        time.sleep(0.001)
        return original(batch)

    log._write = slow_write  # type: ignore[method-assign]
    records = [make_record() for _ in range(300)]

    async def main() -> None:
        await asyncio.gather(*(log.record(r) for r in records))

    asyncio.run(main())
    log.close()
    assert log.queue_high_water == 3  # the queue filled up, so callers had to wait
    assert log.records_written == 300
    assert log.records_lost == 0
    assert_written_exactly(path, [r["decision_id"] for r in records])


def test_blocking_callers_from_threads_with_backpressure(target: Target) -> None:
    path = target
    ids: list[str] = []
    ids_lock = threading.Lock()
    with AuditLog(path, mode="async", queue_max=4, max_batch=3) as log:

        def work() -> None:
            for _ in range(100):
                rec = make_record()
                log.record_blocking(rec)
                with ids_lock:
                    ids.append(rec["decision_id"])

        threads = [threading.Thread(target=work) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert log.queue_high_water <= 4
    assert log.records_written == 400
    assert_written_exactly(path, ids)


def test_callers_on_several_event_loops_and_threads(target: Target) -> None:
    path = target
    log = AuditLog(path).start()
    ids: list[str] = []
    ids_lock = threading.Lock()

    def run_loop() -> None:
        records = [make_record() for _ in range(150)]

        async def main() -> None:
            await asyncio.gather(*(log.record(r) for r in records))

        asyncio.run(main())
        with ids_lock:
            ids.extend(r["decision_id"] for r in records)

    threads = [threading.Thread(target=run_loop) for _ in range(4)]
    for t in threads:
        t.start()
    blocking = [make_record() for _ in range(20)]
    for rec in blocking:
        log.record_blocking(rec)
    for t in threads:
        t.join()
    log.close()
    assert log.records_written == 620
    assert_written_exactly(path, ids + [r["decision_id"] for r in blocking])


def test_record_many_shares_one_commit(target: Target) -> None:
    path = target
    batch = [make_record() for _ in range(50)]

    async def main() -> AuditLog:
        async with AuditLog(path) as log:
            await log.record_many(batch)
            assert log.records_written == 50
        return log

    log = asyncio.run(main())
    assert log.commits == 1
    assert_written_exactly(path, [r["decision_id"] for r in batch])


def test_durable_fails_closed_when_database_is_locked(target: Target) -> None:
    path = target
    log = AuditLog(path, commit_timeout=0.2).start()
    first = make_record()
    log.record_blocking(first)

    refused = [make_record() for _ in range(20)]

    async def main() -> list[BaseException | None]:
        return await asyncio.gather(*(log.record(r) for r in refused), return_exceptions=True)

    with hold_write_lock(path):  # another writer holds the lock past commit_timeout
        started = time.monotonic()
        results = asyncio.run(main())
        assert time.monotonic() - started < 5
    assert all(isinstance(r, AuditUnavailable) for r in results), results
    # SQLite: "database is locked"; PostgreSQL: "canceling statement due to lock timeout".
    assert "lock" in str(results[0])
    assert log.records_failed == 20

    after = make_record()
    log.record_blocking(after)  # the log recovers once the lock is gone
    log.close()
    assert log.records_written == 2
    assert_written_exactly(path, [first["decision_id"], after["decision_id"]])


def test_a_durable_caller_gives_up_at_wait_timeout_while_the_writer_is_stuck(
    tmp_path: Path,
) -> None:
    """The safety net should the writer hang: here it waits for a lock longer than callers may
    wait (commit_timeout 5 s, wait_timeout 0.3 s). Each caller fails closed at its own deadline,
    on whichever event loop it runs; the records were queued, so they are written once the lock
    is gone (the safe direction: recorded but refused, never answered but unrecorded)."""
    path = tmp_path / "audit.db"
    log = AuditLog(path, commit_timeout=5.0, wait_timeout=0.3).start()
    log.record_blocking(make_record())
    stuck = [make_record() for _ in range(6)]

    async def one_loop(records: list[dict[str, Any]]) -> list[tuple[BaseException | None, float]]:
        async def timed(rec: dict[str, Any]) -> tuple[BaseException | None, float]:
            started = time.monotonic()
            try:
                await log.record(rec)
            except AuditUnavailable as exc:
                return exc, time.monotonic() - started
            return None, time.monotonic() - started

        return await asyncio.gather(*(timed(r) for r in records))

    results: list[tuple[BaseException | None, float]] = []
    with hold_write_lock(path):
        others = threading.Thread(target=lambda: results.extend(asyncio.run(one_loop(stuck[3:]))))
        others.start()
        results.extend(asyncio.run(one_loop(stuck[:3])))
        others.join(10)
    assert len(results) == 6
    for error, waited in results:
        assert isinstance(error, AuditUnavailable), error
        assert "not committed within 0.3 s" in str(error)
        assert 0.25 <= waited < 2.0, waited
    deadline = time.monotonic() + 10
    while log.records_written < 7 and time.monotonic() < deadline:
        time.sleep(0.01)
    log.close()
    assert log.records_written == 7
    assert log.records_failed == 0


def test_durable_fails_closed_when_the_disk_is_full(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    log = AuditLog(path).start()
    log.record_blocking(make_record())
    assert log._conn is not None
    (pages,) = log._conn.execute("PRAGMA page_count").fetchone()
    log._conn.execute(f"PRAGMA max_page_count = {pages}")  # SQLite's own "disk full"
    big = make_record()
    big["input"]["context"] = {"blob": "x" * 200_000}
    with pytest.raises(AuditUnavailable, match="full"):
        log.record_blocking(big)
    log._conn.execute("PRAGMA max_page_count = 1073741823")
    log.record_blocking(big)
    log.close()
    assert log.records_written == 2
    assert verify(path).ok


def test_async_mode_retries_a_failed_commit_until_it_succeeds(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    log = AuditLog(path, mode="async").start()
    assert log._conn is not None
    log.record_blocking(make_record(time=1.0))  # create the first pages
    deadline = time.monotonic() + 5
    while log.records_written < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    (pages,) = log._conn.execute("PRAGMA page_count").fetchone()
    log._conn.execute(f"PRAGMA max_page_count = {pages}")
    big = [make_record() for _ in range(3)]
    for rec in big:
        rec["input"]["context"] = {"blob": "y" * 100_000}
        log.record_blocking(rec)  # acknowledged: queued
    while log.failed_commits < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert log.failed_commits >= 2
    log._conn.execute("PRAGMA max_page_count = 1073741823")
    log.close()
    assert log.records_written == 4
    assert log.records_lost == 0
    assert verify(path).ok


def test_async_close_reports_records_it_could_not_write(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    log = AuditLog(path, mode="async", commit_timeout=0.2, queue_max=2, max_batch=1).start()
    assert log._conn is not None
    (pages,) = log._conn.execute("PRAGMA page_count").fetchone()
    log._conn.execute(f"PRAGMA max_page_count = {pages}")
    accepted = 0

    async def main() -> None:
        nonlocal accepted
        for _ in range(4):
            rec = make_record()
            rec["input"]["context"] = {"blob": "z" * 100_000}
            await log.record(rec)
            accepted += 1

    # 1 record being retried + 2 queued; the 4th caller finds the queue full while commits
    # fail, waits commit_timeout, then fails closed instead of waiting forever.
    with pytest.raises(AuditUnavailable, match="queue is full"):
        asyncio.run(main())
    assert accepted == 3
    with pytest.raises(AuditUnavailable, match="3 queued audit records could not be written"):
        log.close()
    assert log.records_lost == 3
    assert log.records_written == 0


def test_invalid_records_are_refused_by_the_caller_and_poison_nothing(target: Target) -> None:
    path = target
    good = make_record()
    bad_records: list[Any] = [
        {**make_record(), "decision_id": ""},
        {**make_record(), "effect": "MAYBE"},
        {**make_record(), "time": math.nan},
        {**make_record(), "duration_ms": math.inf},
        {**make_record(), "input": {"when": {1, 2}}},
        {**make_record(), "matched_rules": [{"policy": "p"}]},
        ["not", "a", "dict"],
    ]
    with AuditLog(path) as log:
        for bad in bad_records:
            with pytest.raises(AuditRecordInvalid):
                log.record_blocking(bad)
        log.record_blocking(good)
    assert log.records_written == 1
    assert_written_exactly(path, [good["decision_id"]])


def test_duplicate_decision_id_is_refused_alone(target: Target) -> None:
    path = target
    first, second = make_record(), make_record()
    duplicate = {**make_record(), "decision_id": first["decision_id"]}

    async def main() -> AuditLog:
        async with AuditLog(path) as log:
            await log.record(first)
            with pytest.raises(AuditRecordInvalid, match="already in the audit log"):
                await log.record_many([duplicate, second])
        return log

    log = asyncio.run(main())
    assert log.records_rejected == 1
    assert log.records_written == 2
    assert_written_exactly(path, [first["decision_id"], second["decision_id"]])


def test_restart_continues_the_chain(target: Target) -> None:
    path = target
    ids = []
    for _ in range(3):
        with AuditLog(path) as log:
            for _ in range(4):
                rec = make_record()
                log.record_blocking(rec)
                ids.append(rec["decision_id"])
    stored = rows(path)
    assert [r[0] for r in stored] == list(range(1, 13))
    for before, after in zip(stored, stored[1:], strict=False):
        assert after[2] == before[3]  # prev_hash links to the previous record's hash
    assert_written_exactly(path, ids)


def test_two_writers_on_one_log_keep_one_chain(target: Target) -> None:
    path = target
    records = [make_record() for _ in range(400)]

    async def main() -> None:
        async with AuditLog(path) as a, AuditLog(path) as b:
            await asyncio.gather(*((a if i % 2 else b).record(r) for i, r in enumerate(records)))

    asyncio.run(main())
    assert_written_exactly(path, [r["decision_id"] for r in records])


def test_replicas_writing_at_once_make_one_gapless_chain(target: Target) -> None:
    """Three AuditLogs (three replicas: each its own writer thread and connection, its callers
    on their own event loop), all durable, all writing at the same time."""
    replicas = [AuditLog(target, max_batch=64).start() for _ in range(3)]
    acknowledged: list[list[str]] = [[] for _ in replicas]
    barrier = threading.Barrier(len(replicas))

    def serve(i: int) -> None:
        log = replicas[i]

        async def caller() -> None:
            for _ in range(100):
                rec = make_record(caller=f"replica-{i}")
                await log.record(rec)
                acknowledged[i].append(rec["decision_id"])

        async def main() -> None:
            await asyncio.gather(*(caller() for _ in range(8)))

        barrier.wait()
        asyncio.run(main())

    threads = [threading.Thread(target=serve, args=(i,)) for i in range(len(replicas))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for log in replicas:
        log.close()
    assert [len(ids) for ids in acknowledged] == [800] * 3
    assert [log.records_written for log in replicas] == [800] * 3
    all_ids = [i for ids in acknowledged for i in ids]
    assert_written_exactly(target, all_ids)
    # The replicas' commits interleave: the chain passes from one writer to another.
    callers = [r[0] for r in fetch_all(target, "SELECT caller FROM audit_log ORDER BY seq")]
    switches = sum(1 for a, b in zip(callers, callers[1:], strict=False) if a != b)
    assert switches >= 2, "the writers never interleaved"
    report = verify(target)
    assert report.ok and report.checked == report.head_seq == 2400, report.message


def test_record_time_is_stamped_by_the_clock_when_missing(target: Target) -> None:
    path = target
    rec = make_record()
    del rec["time"]
    with AuditLog(path, clock=lambda: 1234.5) as log:
        log.record_blocking(rec)
    assert "time" not in rec  # the caller's dict is left alone
    assert fetch_all(path, "SELECT time FROM audit_log") == [(1234.5,)]


def test_closed_or_unstarted_log_refuses_records(target: Target) -> None:
    log = AuditLog(target)
    with pytest.raises(AuditUnavailable, match="not started"):
        log.record_blocking(make_record())
    log.start()
    log.close()
    log.close()  # idempotent
    with pytest.raises(AuditUnavailable, match="closed"):
        log.record_blocking(make_record())

    async def main() -> None:
        await log.record(make_record())

    with pytest.raises(AuditUnavailable, match="closed"):
        asyncio.run(main())


def test_off_mode_records_nothing(target: Target, backend: Backend) -> None:
    path = target

    async def main() -> None:
        async with open_audit_log(path, mode="off") as log:
            await log.record(make_record())
            log.record_blocking(make_record())
            assert log.records_written == 0

    asyncio.run(main())
    if isinstance(path, Path):
        assert not path.exists()
    else:
        assert tables(backend.open()) == []  # not even the schema


def test_unwritable_location_fails_at_start(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    with pytest.raises(AuditUnavailable, match="cannot open"):
        AuditLog(not_a_dir / "audit.db").start()


def test_unreachable_postgres_fails_at_start_without_the_password() -> None:
    url = "postgresql://authz:s3cret@127.0.0.1:1/authz"
    log = AuditLog(url, commit_timeout=1.0)
    with pytest.raises(AuditUnavailable, match="cannot open the audit log at") as info:
        log.start()
    assert "s3cret" not in str(info.value) and "***" in str(info.value)
    with pytest.raises(AuditUnavailable, match="writer stopped"):
        log.record_blocking(make_record())


def test_bad_settings_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="mode"):
        AuditLog(tmp_path / "a.db", mode="sometimes")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        AuditLog(tmp_path / "a.db", queue_max=0)


# -- PostgreSQL only: a connection the server drops ---------------------------------------------


def terminate_writer(log: AuditLog) -> None:
    """Drop the writer's connection from the server side (a failover, an idle-connection reaper,
    pg_terminate_backend)."""
    pid = log._db.backend_pid  # type: ignore[union-attr]
    postgres().admin.execute("SELECT pg_terminate_backend(%s)", (pid,))


def test_postgres_durable_fails_closed_when_the_connection_drops_then_reconnects(
    pg_target: str,
) -> None:
    log = AuditLog(pg_target).start()
    first = make_record()
    log.record_blocking(first)
    terminate_writer(log)
    with pytest.raises(AuditUnavailable, match="not recorded"):
        log.record_blocking(make_record())  # its commit may not have happened: fail closed
    after = make_record()
    log.record_blocking(after)  # the next batch opens a new connection
    log.close()
    assert (log.records_written, log.records_failed) == (2, 1)
    assert_written_exactly(pg_target, [first["decision_id"], after["decision_id"]])


def test_postgres_async_retries_across_a_dropped_connection(pg_target: str) -> None:
    log = AuditLog(pg_target, mode="async", commit_timeout=0.3).start()
    ids = []
    for _ in range(3):
        rec = make_record()
        log.record_blocking(rec)
        ids.append(rec["decision_id"])
    deadline = time.monotonic() + 5
    while log.records_written < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    terminate_writer(log)
    with hold_write_lock(pg_target):  # and commits fail for a while after it reconnects
        for _ in range(5):
            rec = make_record()
            log.record_blocking(rec)  # acknowledged: queued
            ids.append(rec["decision_id"])
        while log.failed_commits < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
    log.close()
    assert log.failed_commits >= 2
    assert (log.records_written, log.records_lost, log.records_rejected) == (8, 0, 0)
    assert_written_exactly(pg_target, ids)


def test_postgres_commit_whose_answer_was_lost_is_not_written_twice(pg_target: str) -> None:
    """The connection breaks after COMMIT reached the server but before its answer came back:
    async mode retries the batch, finds it already in the log, and does not write it again."""
    log = AuditLog(pg_target, mode="async").start()
    original = log._write
    broken = threading.Event()

    def commit_then_lose_the_answer(batch: Any) -> int:
        written = original(batch)
        if not broken.is_set():
            broken.set()
            log._db.raw.close()  # type: ignore[union-attr]
            raise psycopg.OperationalError("server closed the connection unexpectedly")
        return written

    log._write = commit_then_lose_the_answer  # type: ignore[method-assign]
    records = [make_record() for _ in range(10)]
    asyncio.run(log.record_many(records))
    log.close()
    assert broken.is_set()
    assert (log.failed_commits, log.records_written, log.records_rejected) == (1, 10, 0)
    assert_written_exactly(pg_target, [r["decision_id"] for r in records])


def test_a_broken_chain_head_is_an_outage_not_a_rejected_record(target: Target) -> None:
    path = target
    log = AuditLog(path).start()
    log.record_blocking(make_record())
    execute_sql(path, "UPDATE audit_head SET seq = 0")  # the next insert clashes with seq 1
    clash = (
        "UNIQUE constraint failed: audit_log.seq"
        if isinstance(path, Path)
        else 'duplicate key value violates unique constraint "audit_log_pkey"'
    )
    with pytest.raises(AuditUnavailable, match=clash):
        log.record_blocking(make_record())
    log.close()
    assert (log.records_rejected, log.records_failed) == (0, 1)


def test_a_cancelled_durable_caller_leaves_nothing_dangling(
    target: Target, caplog: pytest.LogCaptureFixture
) -> None:
    path = target
    log = AuditLog(path, commit_timeout=0.2).start()

    async def main(log: AuditLog) -> None:
        task = asyncio.ensure_future(log.record_many([make_record() for _ in range(3)]))
        await asyncio.sleep(0.05)
        task.cancel()  # e.g. the gRPC deadline passed while the commit was waiting for the lock
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await asyncio.sleep(0.4)  # the commit fails meanwhile; nobody is waiting for it

    with hold_write_lock(path):
        asyncio.run(main(log))
    log.close()
    counts = (log.records_failed, log.records_written)
    del log
    gc.collect()  # a failed future nobody retrieved would complain here
    assert counts == (3, 0)
    assert "never retrieved" not in caplog.text


def test_schema_is_made_once_when_replicas_start_together(target: Target) -> None:
    """Four replicas start at the same moment on an empty database: each version is applied
    exactly once (PostgreSQL: under an advisory lock), none fails, and all share one chain."""
    barrier = threading.Barrier(4)
    logs: list[AuditLog] = []
    errors: list[BaseException] = []

    def start() -> None:
        barrier.wait()
        try:
            log = AuditLog(target).start()
            log.record_blocking(make_record())
            logs.append(log)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    for log in logs:
        log.close()
    assert not errors and len(logs) == 4
    versions = fetch_all(
        target, "SELECT version FROM schema_migrations WHERE migration_set = 'audit' ORDER BY 1"
    )
    assert versions == [(1,), (2,), (3,)]
    assert migrate_audit(target) == []  # up to date
    report = verify(target)
    assert report.ok and report.checked == 4


def test_migrate_audit_creates_the_schema_ahead_of_the_writers(target: Target) -> None:
    assert migrate_audit(target) == [1, 2, 3]
    assert migrate_audit(target) == []
    report = verify(target)  # an empty log, not "no audit log"
    assert report.ok and report.checked == 0


def test_durable_writer_waits_for_company_only_when_calls_arrive_together(tmp_path: Path) -> None:
    """The durable linger (authz.audit.log.DURABLE_LINGER): after a commit of several records
    the writer waits a moment for as many again; after a commit of one it never waits, so a
    lone call is not held; async mode always gathers; nothing waits while closing."""
    from authz.audit.log import ASYNC_LINGER, DURABLE_LINGER

    durable = AuditLog(tmp_path / "durable.db", mode="durable").start()
    try:
        for _ in range(3):  # one call at a time: every commit holds one record
            durable.record_blocking(make_record())
        assert durable.commits == 3
        with durable._lock:
            durable._items.put(_queued(make_record()))
            assert durable._linger() == 0.0  # the last commit held one record
            durable._items.drain()
        durable._last_batch = 5  # as after a commit of five records
        with durable._lock:
            for _ in range(2):
                durable._items.put(_queued(make_record()))
            assert durable._linger() == DURABLE_LINGER  # two queued, five last time
            for _ in range(3):
                durable._items.put(_queued(make_record()))
            assert durable._linger() == 0.0  # as many as last time: go
            durable._items.drain()
    finally:
        durable.close()
    lone = AuditLog(tmp_path / "async.db", mode="async").start()
    try:
        with lone._lock:
            lone._items.put(_queued(make_record()))
            assert lone._linger() == ASYNC_LINGER
            lone._closing = True
            assert lone._linger() == 0.0
            lone._closing = False
    finally:
        lone.close()


def _queued(record: dict[str, Any]) -> Any:
    from authz.audit.log import _Item
    from authz.audit.record import prepare
    from authz.clock import system_clock

    prepared = prepare(record, system_clock)
    return _Item(prepared, len(prepared.json))
