"""Tamper evidence: verify finds edited, deleted and moved records; prune keeps it verifiable.

Every test taking `target` or `fresh` runs on both backends (SQLite file, PostgreSQL schema);
tampering is plain SQL on the log's tables, as someone with access to the database would do.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from authz.audit import (
    GENESIS_HASH,
    AuditLog,
    AuditLogNotFound,
    AuditTampered,
    canonical_json,
    chain_hash,
    prune,
    verify,
)
from authz.audit.chain import describe_anchor
from authz.audit.testing import execute_sql, fetch_all, make_record
from tests.pg import BACKENDS, tables, use_backend

NOW = 1_700_000_000.0
DAY = 86400.0

Target = Path | str


@pytest.fixture(params=BACKENDS)
def fresh(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[], Target]]:
    """Makes empty audit logs on the backend: DIR/audit.db files, or PostgreSQL schemas."""
    with contextlib.ExitStack() as stack:
        numbers = itertools.count()

        def make() -> Target:
            directory = tmp_path / f"log{next(numbers)}"
            directory.mkdir()
            chosen = stack.enter_context(use_backend(request.param, directory))
            return directory / "audit.db" if chosen.name == "sqlite" else chosen.target

        yield make


@pytest.fixture
def target(fresh: Callable[[], Target]) -> Target:
    return fresh()


def write(
    path: Target, count: int, *, start: float = NOW - 10 * DAY, step: float = DAY
) -> list[str]:
    """`count` records, one per `step` seconds from `start`; some denied, some with two rules."""
    ids = []
    with AuditLog(path) as log:
        for i in range(count):
            rec = make_record(
                time=start + i * step,
                effect="DENY" if i % 3 == 0 else "ALLOW",
                rules=[("base", f"rule-{i % 4}", "ALLOW", "why")] * (1 + i % 2),
            )
            log.record_blocking(rec)
            ids.append(rec["decision_id"])
    return ids


sql = execute_sql


@pytest.fixture
def chain(target: Target) -> tuple[Target, list[str]]:
    return target, write(target, 10)


def test_intact_chain_verifies(chain: tuple[Target, list[str]]) -> None:
    path, _ = chain
    report = verify(path)
    assert report.ok
    assert (report.checked, report.first_seq, report.last_seq, report.head_seq) == (10, 1, 10, 10)
    assert report.message == "audit log OK: 10 records verified (seq 1-10)"


def test_empty_log_verifies(target: Target) -> None:
    path = target
    AuditLog(path).start().close()
    report = verify(path)
    assert report.ok and report.checked == 0


def test_hash_is_sha256_over_prev_hash_and_canonical_content(
    chain: tuple[Target, list[str]],
) -> None:
    path, _ = chain
    ((record, prev, digest),) = fetch_all(
        path, "SELECT record, prev_hash, hash FROM audit_log WHERE seq = 1"
    )
    assert prev == GENESIS_HASH
    content = canonical_json({"record": json.loads(record), "seq": 1})
    assert digest == hashlib.sha256((prev + content).encode()).hexdigest()
    assert digest == chain_hash(prev, 1, record)


def test_edited_record_is_found(chain: tuple[Target, list[str]]) -> None:
    path, ids = chain
    sql(
        path, "UPDATE audit_log SET record = replace(record, '\"DENY\"', '\"ALLOW\"') WHERE seq = 4"
    )
    report = verify(path)
    assert not report.ok
    assert (report.problem, report.seq, report.decision_id) == ("edited", 4, ids[3])
    assert "seq 4" in report.message and ids[3] in report.message
    assert report.checked == 3


def test_edited_index_column_is_found(chain: tuple[Target, list[str]]) -> None:
    path, ids = chain
    sql(path, "UPDATE audit_log SET effect = 'ALLOW' WHERE seq = 7")  # record JSON untouched
    report = verify(path)
    assert (report.ok, report.problem, report.seq, report.decision_id) == (
        False,
        "edited",
        7,
        ids[6],
    )
    assert "column effect" in report.message


def test_edited_rule_index_is_found(chain: tuple[Target, list[str]]) -> None:
    path, ids = chain
    sql(path, "UPDATE audit_rule SET rule_id = 'innocent' WHERE seq = 5")
    report = verify(path)
    assert (report.ok, report.problem, report.seq, report.decision_id) == (
        False,
        "edited",
        5,
        ids[4],
    )


def test_rewritten_record_with_recomputed_hash_is_found(chain: tuple[Target, list[str]]) -> None:
    path, ids = chain
    ((record, prev),) = fetch_all(path, "SELECT record, prev_hash FROM audit_log WHERE seq = 6")
    forged = record.replace('"duration_ms":0.42', '"duration_ms":99.0')
    assert forged != record
    sql(
        path,
        (
            "UPDATE audit_log SET record = ?, hash = ? WHERE seq = 6",
            (forged, chain_hash(prev, 6, forged)),
        ),
    )
    report = verify(path)
    assert (report.ok, report.problem, report.seq) == (False, "edited", 6)
    assert "seq 6 was rewritten" in report.message


def test_deleted_record_is_found(chain: tuple[Target, list[str]]) -> None:
    path, ids = chain
    sql(path, "DELETE FROM audit_log WHERE seq = 5", "DELETE FROM audit_rule WHERE seq = 5")
    report = verify(path)
    assert (report.ok, report.problem, report.seq, report.decision_id) == (
        False,
        "gap",
        5,
        ids[5],
    )
    assert report.gaps == ((5, 5),)
    assert "missing, seq must be gapless: seq 5" in report.message


def test_deleted_first_and_last_records_are_found(fresh: Callable[[], Target]) -> None:
    first = fresh()
    write(first, 5)
    sql(first, "DELETE FROM audit_log WHERE seq = 1")
    report = verify(first)
    assert (report.problem, report.seq, report.gaps) == ("gap", 1, ((1, 1),))

    last = fresh()
    write(last, 5)
    sql(last, "DELETE FROM audit_log WHERE seq >= 4", "DELETE FROM audit_rule WHERE seq >= 4")
    report = verify(last)
    assert (report.ok, report.problem, report.seq, report.gaps) == (False, "gap", 4, ((4, 5),))
    assert "seq 4-5, cut off the end (the chain head is seq 5)" in report.message


def test_deleted_and_renumbered_records_are_found(chain: tuple[Target, list[str]]) -> None:
    path, _ = chain
    sql(
        path,
        "DELETE FROM audit_log WHERE seq = 3",
        "DELETE FROM audit_rule WHERE seq = 3",
        "UPDATE audit_log SET seq = seq - 1 WHERE seq > 3",
        "UPDATE audit_rule SET seq = seq - 1 WHERE seq > 3",
        "UPDATE audit_head SET seq = seq - 1",
    )
    report = verify(path)
    assert (report.ok, report.problem, report.seq) == (False, "deleted", 3)
    assert "deleted and the rest renumbered" in report.message


def test_swapped_records_are_found(chain: tuple[Target, list[str]]) -> None:
    path, ids = chain
    sql(
        path,
        "UPDATE audit_log SET seq = -1 WHERE seq = 4",
        "UPDATE audit_log SET seq = 4 WHERE seq = 5",
        "UPDATE audit_log SET seq = 5 WHERE seq = -1",
    )
    report = verify(path)
    assert (report.ok, report.problem, report.seq, report.decision_id) == (
        False,
        "reordered",
        4,
        ids[4],
    )
    assert "was written as seq 5" in report.message


def test_swapped_contents_are_found(chain: tuple[Target, list[str]]) -> None:
    path, ids = chain
    columns = "decision_id, time, effect, rule_ids, record, prev_hash, hash"
    ((two),) = fetch_all(path, f"SELECT {columns} FROM audit_log WHERE seq = 2")
    ((three),) = fetch_all(path, f"SELECT {columns} FROM audit_log WHERE seq = 3")
    assign = ", ".join(f"{c} = ?" for c in columns.split(", "))
    sql(
        path,
        "UPDATE audit_log SET decision_id = 'tmp' WHERE seq = 2",
        (f"UPDATE audit_log SET {assign} WHERE seq = 3", two),
        (f"UPDATE audit_log SET {assign} WHERE seq = 2", three),
    )
    report = verify(path)
    assert (report.ok, report.problem, report.seq, report.decision_id) == (
        False,
        "reordered",
        2,
        ids[2],
    )


def test_prune_keeps_the_chain_verifiable_and_restart_continues(target: Target) -> None:
    path = target
    ids = write(path, 10)  # days -10 … -1 before NOW
    deleted = prune(path, 5.5 * DAY, clock=lambda: NOW)
    assert deleted == 5
    report = verify(path)
    assert report.ok, report.message
    assert (report.anchor_seq, report.first_seq, report.last_seq) == (5, 6, 10)
    assert "prune anchor at seq 5" in report.message
    kept = [r[0] for r in fetch_all(path, "SELECT decision_id FROM audit_log ORDER BY seq")]
    ((rule_rows,),) = fetch_all(path, "SELECT count(*) FROM audit_rule WHERE seq <= 5")
    assert kept == ids[5:]
    assert rule_rows == 0

    assert prune(path, 5.5 * DAY, clock=lambda: NOW) == 0  # nothing more to do
    more = write(path, 3, start=NOW)
    assert verify(path).ok

    # Pruning everything still leaves a chain that verifies and continues. Seq 11 was the
    # first prune's entry; it goes with the records (up to seq 14), the new one is seq 15.
    assert prune(path, 0, clock=lambda: NOW + 10 * DAY) == 8
    report = verify(path)
    assert report.ok and report.checked == 0 and report.anchor_seq == 14
    assert (report.head_seq, report.prunes) == (15, 1)
    write(path, 2, start=NOW + 11 * DAY)
    report = verify(path)
    assert report.ok and (report.first_seq, report.last_seq) == (16, 17)
    assert more  # (the three written before are gone now)


def test_tampering_after_prune_is_found(target: Target) -> None:
    path = target
    ids = write(path, 8)
    prune(path, 5.5 * DAY, clock=lambda: NOW)
    sql(path, "DELETE FROM audit_log WHERE seq = 6")  # the first kept record
    report = verify(path)
    assert (report.ok, report.problem, report.seq, report.decision_id) == (
        False,
        "gap",
        6,
        ids[6],
    )


def test_prune_refuses_to_erase_tampered_records(target: Target) -> None:
    path = target
    write(path, 8)
    sql(path, "UPDATE audit_log SET record = replace(record, 'rev-1', 'rev-2') WHERE seq = 2")
    with pytest.raises(AuditTampered, match="seq 2"):
        prune(path, 5.5 * DAY, clock=lambda: NOW)
    assert not verify(path).ok  # the evidence is still there
    assert prune(path, 5.5 * DAY, clock=lambda: NOW, force=True) == 5
    assert verify(path).ok


def test_verify_while_the_writer_commits(target: Target) -> None:
    path = target
    log = AuditLog(path, mode="async", max_batch=16).start()

    def produce() -> None:
        for _ in range(3000):
            log.record_blocking(make_record())

    producer = threading.Thread(target=produce)
    producer.start()
    verified = 0
    try:
        while producer.is_alive() or verified == 0:
            report = verify(path)  # one consistent snapshot while commits go on
            assert report.ok, report.message
            verified += 1
    finally:
        producer.join()
        log.close()
    assert verify(path).checked == log.records_written == 3000


def test_prune_in_small_chunks_keeps_one_anchor(target: Target) -> None:
    path = target
    ids = write(path, 10)
    assert prune(path, 2.5 * DAY, clock=lambda: NOW, chunk=3) == 8
    anchors = fetch_all(path, "SELECT seq, pruned_count FROM audit_anchor")
    kept = [r[0] for r in fetch_all(path, "SELECT decision_id FROM audit_log ORDER BY seq")]
    assert anchors == [(8, 8)]
    assert kept == ids[8:]
    assert verify(path).ok


def test_prune_does_not_hold_up_a_durable_writer(target: Target) -> None:
    path = target
    old = [make_record(time=NOW - 100 * DAY + i) for i in range(10_000)]
    with AuditLog(path) as log:
        asyncio.run(log.record_many(old))
    log = AuditLog(path, commit_timeout=1.0).start()
    stop = threading.Event()
    latencies: list[float] = []

    def produce() -> None:
        while not stop.is_set():
            started = time.monotonic()
            log.record_blocking(make_record(time=NOW))
            latencies.append(time.monotonic() - started)

    producer = threading.Thread(target=produce)
    producer.start()
    try:
        assert prune(path, 90 * DAY, clock=lambda: NOW) == 10_000
    finally:
        stop.set()
        producer.join()
        log.close()
    assert log.records_failed == 0
    assert latencies and max(latencies) < 1.0
    report = verify(path)
    assert report.ok and report.anchor_seq == 10_000 and report.checked == log.records_written


def test_prune_with_force_skips_over_a_gap(target: Target) -> None:
    path = target
    ids = write(path, 8)  # days -10 … -3
    sql(
        path,
        "DELETE FROM audit_log WHERE seq IN (3, 4)",
        "DELETE FROM audit_rule WHERE seq IN (3, 4)",
    )
    with pytest.raises(AuditTampered, match="seq 3"):
        prune(path, 4.5 * DAY, clock=lambda: NOW)
    assert prune(path, 4.5 * DAY, clock=lambda: NOW, force=True, chunk=2) == 4
    report = verify(path)
    assert report.ok, report.message
    assert (report.anchor_seq, report.first_seq, report.last_seq) == (6, 7, 8)
    kept = fetch_all(path, "SELECT decision_id FROM audit_log ORDER BY seq")
    assert [r[0] for r in kept] == ids[6:]


def test_review_functions_refuse_a_file_that_is_not_an_audit_log(tmp_path: Path) -> None:
    other = tmp_path / "other.db"
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE t (x)")
    with pytest.raises(AuditLogNotFound, match="not an audit log"):
        verify(other)
    with sqlite3.connect(other) as conn:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master")]
    assert tables == ["t"]


def test_review_functions_refuse_a_postgres_database_without_an_audit_log(tmp_path: Path) -> None:
    with use_backend("postgresql", tmp_path) as backend:
        for review in (verify, describe_anchor, lambda url: prune(url, 0)):
            with pytest.raises(AuditLogNotFound, match="no audit log in"):
                review(backend.target)
        assert tables(backend.open()) == []  # and nothing was created
