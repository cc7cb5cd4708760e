"""Issue 12 items 6 and 7: truncation is detectable with a checkpoint kept elsewhere, prune
anchors are chained (a forged one is found), and verify names every gap in seq.

Every test taking `target` runs on both backends; the attacks are plain SQL on the log's tables,
as someone with write access to the database would do.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from authz.audit import (
    AuditLog,
    AuditTampered,
    Checkpoint,
    chain_hash,
    checkpoint,
    migrate_audit,
    prune,
    query,
    verify,
)
from authz.audit.testing import execute_sql, fetch_all, make_record
from authz.cli.common import ExitCode
from authz.cli.main import main
from tests.pg import Backend

NOW = 1_700_000_000.0
DAY = 86400.0

Target = Path | str


@pytest.fixture
def target(backend: Backend, tmp_path: Path) -> Target:
    return tmp_path / "audit.db" if backend.name == "sqlite" else backend.target


def write(target: Target, count: int, *, start: float = NOW - 10 * DAY) -> list[str]:
    ids = []
    with AuditLog(target) as log:
        for i in range(count):
            rec = make_record(time=start + i * DAY)
            log.record_blocking(rec)
            ids.append(rec["decision_id"])
    return ids


def hash_of(target: Target, seq: int) -> str:
    [(digest,)] = fetch_all(target, "SELECT hash FROM audit_log WHERE seq = ?", (seq,))
    return str(digest)


def cli(target: Target, *argv: str) -> int:
    """`authz audit …` on this log (--data-dir or --database-url)."""
    where = (
        ["--data-dir", str(target.parent)]
        if isinstance(target, Path)
        else ["--database-url", target]
    )
    return main(["audit", *argv, *where])


def test_checkpoint_prints_the_head_of_a_log_that_verifies(
    target: Target, capsys: pytest.CaptureFixture[str]
) -> None:
    write(target, 5)
    head = checkpoint(target)
    assert head == Checkpoint(5, hash_of(target, 5))
    assert Checkpoint.parse(str(head)) == head
    assert cli(target, "checkpoint") == 0
    out, err = capsys.readouterr()
    assert out == f"{head}\n" and "--expect" in err
    assert verify(target, [head]).ok and cli(target, "verify", "--expect", str(head)) == 0
    execute_sql(target, "UPDATE audit_log SET record = replace(record, 'rev-1', 'rev-2')")
    with pytest.raises(AuditTampered, match="no checkpoint of a log that does not verify"):
        checkpoint(target)


def test_a_cut_tail_with_the_head_moved_back_is_found_with_a_checkpoint(
    target: Target, capsys: pytest.CaptureFixture[str]
) -> None:
    write(target, 10)
    kept = checkpoint(target)  # the operator keeps "10:…" elsewhere
    execute_sql(
        target,
        "DELETE FROM audit_log WHERE seq > 7",
        "DELETE FROM audit_rule WHERE seq > 7",
        ("UPDATE audit_head SET seq = 7, hash = ?", (hash_of(target, 7),)),
    )
    # Without the checkpoint the log is consistent, and verify can only say so (and show the
    # head, to compare with one kept elsewhere).
    alone = verify(target)
    assert alone.ok and alone.head_seq == 7
    assert cli(target, "verify") == 0
    out = capsys.readouterr().out
    assert f"head: 7:{hash_of(target, 7)}" in out and "--expect" in out
    # With it, the cut is found.
    report = verify(target, [kept])
    assert (report.ok, report.problem, report.seq) == (False, "truncated", 8)
    assert "cut off the end" in report.message and "seq 8-10" in report.message
    assert cli(target, "verify", "--expect", str(kept)) == ExitCode.TAMPERED
    assert "TAMPERED" in capsys.readouterr().err


def test_a_log_rewritten_after_a_checkpoint_is_found(target: Target) -> None:
    """Every hash from seq 4 on recomputed: internally consistent, but not the checkpoint's."""
    write(target, 6)
    kept = checkpoint(target)
    rows = fetch_all(target, "SELECT seq, record FROM audit_log WHERE seq >= 4 ORDER BY seq")
    prev = hash_of(target, 3)
    statements = []
    for seq, record in rows:
        forged = record.replace("rev-1", "rev-9")
        digest = chain_hash(prev, seq, forged)
        statements.append(
            (
                "UPDATE audit_log SET record = ?, policy_revision = 'rev-9', prev_hash = ?, "
                "hash = ? WHERE seq = ?",
                (forged, prev, digest, seq),
            )
        )
        prev = digest
    statements.append(("UPDATE audit_head SET hash = ?", (prev,)))
    execute_sql(target, *statements)
    assert verify(target).ok  # consistent in itself
    report = verify(target, [kept])
    assert (report.ok, report.problem, report.seq) == (False, "rewritten", 6)


def test_a_prefix_removed_behind_a_forged_anchor_is_found(
    target: Target, capsys: pytest.CaptureFixture[str]
) -> None:
    write(target, 10)
    kept = checkpoint(target)
    four = hash_of(target, 4)
    execute_sql(
        target,
        "DELETE FROM audit_log WHERE seq <= 4",
        "DELETE FROM audit_rule WHERE seq <= 4",
        (
            "INSERT INTO audit_anchor (seq, hash, pruned_at, cutoff, pruned_count) "
            "VALUES (4, ?, ?, ?, 4)",
            (four, NOW, NOW - DAY),
        ),
    )
    # Found without a checkpoint: no prune entry in the chain accounts for the missing start.
    report = verify(target)
    assert (report.ok, report.problem, report.seq) == (False, "anchor", 4), report.message
    assert "no prune entry in the chain accounts for it" in report.message
    assert not verify(target, [kept]).ok
    assert cli(target, "verify") == ExitCode.TAMPERED
    assert "forged anchor" in capsys.readouterr().err
    # And the next prune refuses to carry it on (its own entry would vouch for the cut).
    with pytest.raises(AuditTampered, match="forged anchor"):
        prune(target, 2 * DAY, clock=lambda: NOW)


def test_prunes_are_chained_and_checkpoints_survive_them(target: Target) -> None:
    write(target, 10)  # days -10 … -1
    before = checkpoint(target)
    five = hash_of(target, 5)
    assert prune(target, 5.5 * DAY, clock=lambda: NOW) == 5
    [(entry_seq, entry_hash, entry)] = fetch_all(
        target, "SELECT seq, hash, record FROM audit_event"
    )
    assert entry_seq == 11
    assert json.loads(entry)["through"] == {"seq": 5, "hash": five}
    assert json.loads(entry)["previous"] is None
    report = verify(target, [before])  # seq 10 is still there
    assert report.ok and report.prunes == 1, report.message
    assert "prune entry seq 11" in report.message

    after = checkpoint(target)  # the head is the prune entry now
    assert after == Checkpoint(11, entry_hash)
    write(target, 3, start=NOW)  # seq 12-14
    assert prune(target, 1.5 * DAY, clock=lambda: NOW + DAY) == 5  # through seq 11
    [(second_seq, second)] = fetch_all(target, "SELECT seq, record FROM audit_event")
    assert second_seq == 15
    assert json.loads(second)["previous"] == {"seq": 11, "hash": entry_hash}
    assert json.loads(second)["through"] == {"seq": 11, "hash": entry_hash}
    report = verify(target, [after])  # pruned, but the prune verified up to it
    assert report.ok, report.message
    # A checkpoint somewhere inside what a prune removed cannot be confirmed any more.
    gone = verify(target, [before])
    assert (gone.ok, gone.problem) == (False, "unconfirmed")
    assert gone.message.startswith("audit log UNCONFIRMED: cannot confirm checkpoint seq 10")
    assert "only a checkpoint taken after the last prune" in gone.message


def test_removing_a_prune_entry_leaves_a_gap(target: Target) -> None:
    write(target, 6)
    prune(target, 7.5 * DAY, clock=lambda: NOW)  # through seq 2; its entry is seq 7
    write(target, 2, start=NOW)
    assert verify(target).ok
    execute_sql(target, "DELETE FROM audit_event")
    report = verify(target)
    assert (report.ok, report.problem, report.gaps) == (False, "gap", ((7, 7),))


def test_a_legacy_anchor_is_taken_into_the_chain_when_the_log_is_migrated(
    target: Target,
) -> None:
    """A log pruned by schema 1 (a free-standing anchor) verifies again once migrated: the
    migration records that anchor in the chain, once, marked as taken on trust."""
    ids = write(target, 8)
    four = hash_of(target, 4)
    execute_sql(
        target,
        "DROP TABLE audit_event",
        "DROP TABLE audit_part",
        "DROP TABLE audit_part_use",
        "DELETE FROM audit_log WHERE seq <= 4",
        "DELETE FROM audit_rule WHERE seq <= 4",
        (
            "INSERT INTO audit_anchor (seq, hash, pruned_at, cutoff, pruned_count) "
            "VALUES (4, ?, ?, ?, 4)",
            (four, NOW, NOW - DAY),
        ),
        "DELETE FROM schema_migrations WHERE migration_set = 'audit' AND version >= 2",
    )
    report = verify(target)  # schema 1, not yet migrated
    assert (report.ok, report.problem) == (False, "anchor")
    assert "authz db migrate" in report.message
    assert [r["decision_id"] for r in query(target, oldest_first=True)] == ids[4:]

    assert migrate_audit(target) == [2, 3]  # (3: the review pages' indexes)
    report = verify(target)
    assert report.ok and report.prunes == 1 and report.checked == 4, report.message
    [(entry,)] = fetch_all(target, "SELECT record FROM audit_event")
    assert json.loads(entry)["through"] == {"seq": 4, "hash": four}
    assert "taken on trust" in json.loads(entry)["adopted"]
    assert migrate_audit(target) == []  # once
    write(target, 1, start=NOW)
    assert verify(target).ok


def test_verify_names_every_gap_in_seq(target: Target) -> None:
    ids = write(target, 10)
    execute_sql(
        target,
        "DELETE FROM audit_log WHERE seq IN (3, 7, 8)",
        "DELETE FROM audit_rule WHERE seq IN (3, 7, 8)",
    )
    report = verify(target)
    assert (report.ok, report.problem, report.seq, report.decision_id) == (
        False,
        "gap",
        3,
        ids[3],
    )
    assert report.gaps == ((3, 3), (7, 8))
    assert "seq must be gapless: seq 3, seq 7-8" in report.message
    # Records after a gap are still checked.
    execute_sql(
        target, "UPDATE audit_log SET record = replace(record, 'rev-1', 'rev-2') WHERE seq = 9"
    )
    report = verify(target)
    assert report.gaps == ((3, 3), (7, 8)) and "seq 9" in report.message


def test_a_prune_interrupted_while_deleting_verifies_and_is_finished_by_the_next(
    target: Target, monkeypatch: pytest.MonkeyPatch
) -> None:
    from authz.audit import chain

    ids = write(target, 10)
    original = chain._delete_through

    def crash_midway(db: object, through: int, *args: object) -> int:
        original(db, 3, *args)  # type: ignore[arg-type]
        raise RuntimeError("killed while deleting")

    monkeypatch.setattr(chain, "_delete_through", crash_midway)
    with pytest.raises(RuntimeError, match="killed"):
        prune(target, 2.5 * DAY, clock=lambda: NOW)  # through seq 8; stopped after seq 3
    monkeypatch.undo()
    report = verify(target)
    assert report.ok and report.anchor_seq == 3 and report.first_seq == 4, report.message
    assert prune(target, 2.5 * DAY, clock=lambda: NOW) == 5  # seq 4-8: the rest of that prune
    report = verify(target)
    assert report.ok and report.anchor_seq == 8 and report.prunes == 1, report.message
    assert [r["decision_id"] for r in query(target, oldest_first=True)] == ids[8:]
