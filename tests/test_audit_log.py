"""The audit writer: each decision written exactly once, group commit, backpressure, fail closed."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import math
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from authz.audit import AuditLog, AuditRecordInvalid, AuditUnavailable, verify
from authz.audit.testing import make_record


def rows(path: Path) -> list[tuple[int, str, str, str]]:
    with sqlite3.connect(path) as conn:
        return conn.execute(
            "SELECT seq, decision_id, prev_hash, hash FROM audit_log ORDER BY seq"
        ).fetchall()


def assert_written_exactly(path: Path, ids: list[str]) -> None:
    stored = rows(path)
    assert [r[0] for r in stored] == list(range(1, len(stored) + 1)), "seq must be gapless"
    assert sorted(r[1] for r in stored) == sorted(ids)
    report = verify(path)
    assert report.ok, report.message


@pytest.mark.parametrize("mode", ["durable", "async"])
def test_concurrent_records_are_each_written_once_in_few_commits(tmp_path: Path, mode: str) -> None:
    path = tmp_path / "audit.db"
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


def test_durable_record_has_committed_when_it_returns(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"

    async def main() -> None:
        async with AuditLog(path) as log:
            for _ in range(5):
                rec = make_record()
                await log.record(rec)
                # Another connection (another process, in effect) sees it right away.
                with sqlite3.connect(path) as conn:
                    found = conn.execute(
                        "SELECT count(*) FROM audit_log WHERE decision_id = ?",
                        (rec["decision_id"],),
                    ).fetchone()
                assert found == (1,)

    asyncio.run(main())


def test_async_mode_backpressure_with_tiny_queue_never_drops(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    log = AuditLog(path, mode="async", queue_max=3, max_batch=2).start()
    original = log._write

    def slow_write(batch: Any) -> None:
        time.sleep(0.001)
        original(batch)

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


def test_blocking_callers_from_threads_with_backpressure(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
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


def test_callers_on_several_event_loops_and_threads(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
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


def test_record_many_shares_one_commit(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    batch = [make_record() for _ in range(50)]

    async def main() -> AuditLog:
        async with AuditLog(path) as log:
            await log.record_many(batch)
            assert log.records_written == 50
        return log

    log = asyncio.run(main())
    assert log.commits == 1
    assert_written_exactly(path, [r["decision_id"] for r in batch])


def test_durable_fails_closed_when_database_is_locked(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    log = AuditLog(path, commit_timeout=0.2).start()
    first = make_record()
    log.record_blocking(first)

    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # another writer holds the lock past commit_timeout
    refused = [make_record() for _ in range(20)]

    async def main() -> list[BaseException | None]:
        return await asyncio.gather(*(log.record(r) for r in refused), return_exceptions=True)

    started = time.monotonic()
    results = asyncio.run(main())
    assert time.monotonic() - started < 5
    assert all(isinstance(r, AuditUnavailable) for r in results), results
    assert "locked" in str(results[0])
    assert log.records_failed == 20

    blocker.execute("ROLLBACK")
    blocker.close()
    after = make_record()
    log.record_blocking(after)  # the log recovers once the lock is gone
    log.close()
    assert log.records_written == 2
    assert_written_exactly(path, [first["decision_id"], after["decision_id"]])


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


def test_invalid_records_are_refused_by_the_caller_and_poison_nothing(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
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


def test_duplicate_decision_id_is_refused_alone(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
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


def test_restart_continues_the_chain(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
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


def test_two_writers_on_one_file_keep_one_chain(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    records = [make_record() for _ in range(400)]

    async def main() -> None:
        async with AuditLog(path) as a, AuditLog(path) as b:
            await asyncio.gather(*((a if i % 2 else b).record(r) for i, r in enumerate(records)))

    asyncio.run(main())
    assert_written_exactly(path, [r["decision_id"] for r in records])


def test_record_time_is_stamped_by_the_clock_when_missing(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    rec = make_record()
    del rec["time"]
    with AuditLog(path, clock=lambda: 1234.5) as log:
        log.record_blocking(rec)
    assert "time" not in rec  # the caller's dict is left alone
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT time FROM audit_log").fetchone() == (1234.5,)


def test_closed_or_unstarted_log_refuses_records(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.db")
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


def test_off_mode_records_nothing(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"

    async def main() -> None:
        async with AuditLog(path, mode="off") as log:
            await log.record(make_record())
            log.record_blocking(make_record())
            assert log.records_written == 0

    asyncio.run(main())
    assert not path.exists()


def test_unwritable_location_fails_at_start(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    with pytest.raises(AuditUnavailable, match="cannot open"):
        AuditLog(not_a_dir / "audit.db").start()


def test_bad_settings_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="mode"):
        AuditLog(tmp_path / "a.db", mode="sometimes")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        AuditLog(tmp_path / "a.db", queue_max=0)


def test_a_broken_chain_head_is_an_outage_not_a_rejected_record(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    log = AuditLog(path).start()
    log.record_blocking(make_record())
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE audit_head SET seq = 0")  # the next insert clashes with seq 1
    with pytest.raises(AuditUnavailable, match="UNIQUE constraint failed: audit_log.seq"):
        log.record_blocking(make_record())
    log.close()
    assert (log.records_rejected, log.records_failed) == (0, 1)


def test_a_cancelled_durable_caller_leaves_nothing_dangling(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "audit.db"
    log = AuditLog(path, commit_timeout=0.2).start()
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")

    async def main(log: AuditLog) -> None:
        task = asyncio.ensure_future(log.record_many([make_record() for _ in range(3)]))
        await asyncio.sleep(0.05)
        task.cancel()  # e.g. the gRPC deadline passed while the commit was waiting for the lock
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await asyncio.sleep(0.4)  # the commit fails meanwhile; nobody is waiting for it

    asyncio.run(main(log))
    blocker.execute("ROLLBACK")
    blocker.close()
    log.close()
    counts = (log.records_failed, log.records_written)
    del log
    gc.collect()  # a failed future nobody retrieved would complain here
    assert counts == (3, 0)
    assert "never retrieved" not in caplog.text
