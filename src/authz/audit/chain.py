"""Tamper evidence: the hash chain, verifying it, and pruning old records without breaking it.

Record `seq` n stores prev_hash (the hash of record n-1, or GENESIS_HASH for n = 1) and

    hash = sha256(prev_hash + canonical_json({"record": record, "seq": n}))

as lowercase hex. Editing, deleting or moving any record therefore breaks the chain at that point.
The chain is unkeyed: it proves the log is internally consistent, not who wrote it; someone able
to rewrite the file *and* recompute every later hash is caught only by comparing with a copy of
an earlier head (export `audit_head` or the verify output elsewhere if that matters).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

from authz.audit.backend import AuditDb, Target
from authz.audit.errors import AuditRecordInvalid, AuditTampered
from authz.audit.record import INDEX_COLUMNS, RuleRow, index_columns, matched_rules
from authz.audit.schema import ANCHORS, GENESIS_HASH, HEAD, LOG, RULES, open_audit
from authz.clock import Clock, rfc3339, system_clock
from authz.store.base import Dialect

Problem = Literal["edited", "deleted", "reordered", "anchor", "head"]


def chain_hash(prev_hash: str, seq: int, record_json: str) -> str:
    """The hash of record `seq` whose canonical JSON is `record_json`, chained to `prev_hash`.

    '{"record":' + json + ',"seq":' + n + '}' is exactly the canonical JSON of
    {"record": record, "seq": n}, built without re-encoding the record.
    """
    content = '{"record":' + record_json + ',"seq":' + str(int(seq)) + "}"
    return hashlib.sha256((prev_hash + content).encode("utf-8")).hexdigest()


@dataclass(frozen=True, slots=True)
class VerifyReport:
    """The outcome of walking the chain: ok with counts, or the first bad record."""

    ok: bool
    checked: int
    """How many records were checked."""
    first_seq: int | None
    last_seq: int | None
    anchor_seq: int | None
    """The chain starts after this seq (records up to it were pruned), or None."""
    head_seq: int
    problem: Problem | None = None
    seq: int | None = None
    """The seq of the first bad (or first missing) record."""
    decision_id: str | None = None
    """The decision id of the first bad record (for a gap: of the record right after it)."""
    message: str = ""

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True, slots=True)
class _Finding:
    problem: Problem
    seq: int
    decision_id: str | None
    message: str


_ROW_SQL = (
    f"SELECT seq, {', '.join(INDEX_COLUMNS)}, record, prev_hash, hash FROM {LOG} "
    "WHERE seq <= ? ORDER BY seq"
)
_RULES_SQL: dict[Dialect, str] = {
    "sqlite": (
        f"SELECT seq, json_group_array(json_array(policy, rule_id, effect)) FROM "
        f"(SELECT seq, policy, rule_id, effect FROM {RULES} WHERE seq <= ? ORDER BY seq, rowid) "
        "GROUP BY seq ORDER BY seq"
    ),
    "postgresql": (
        "SELECT seq, json_agg(json_build_array(policy, rule_id, effect) ORDER BY id)::text "
        f"FROM {RULES} WHERE seq <= ? GROUP BY seq ORDER BY seq"
    ),
}


def _rule_groups(db: AuditDb, upto: int) -> Iterator[tuple[int, list[tuple[str, ...]]]]:
    with contextlib.closing(db.iterate(_RULES_SQL[db.dialect], (upto,))) as groups:
        for seq, text in groups:
            yield (
                int(seq),
                [tuple("" if v is None else v for v in item) for item in json.loads(text)],
            )


def _predecessor_present(db: AuditDb, prev_hash: str, anchor: tuple[int, str] | None) -> bool:
    """Whether the record a row links to (by its prev_hash) is still in the log (or the anchor)."""
    if prev_hash == GENESIS_HASH or (anchor is not None and prev_hash == anchor[1]):
        return True
    row = db.execute(f"SELECT 1 FROM {LOG} WHERE hash = ? LIMIT 1", (prev_hash,)).fetchone()
    return row is not None


def _written_as(
    db: AuditDb, seq: int, record_json: str, prev_hash: str, stored_hash: str
) -> int | None:
    """The seq this record's hash was made for, if not `seq` (searching outward; failure path)."""
    (top,) = db.execute(f"SELECT max(seq) FROM {LOG}").fetchone()
    upper = max(int(top or 0), seq) + 1
    for distance in range(1, upper):
        for candidate in (seq - distance, seq + distance):
            if 1 <= candidate <= upper and (
                chain_hash(prev_hash, candidate, record_json) == stored_hash
            ):
                return candidate
    return None


def _check_row(
    db: AuditDb,
    row: tuple[object, ...],
    prev: str,
    anchor: tuple[int, str] | None,
) -> _Finding | tuple[RuleRow, ...]:
    """The first problem with one row, or (when it is sound) the matched rules of its record."""
    seq = int(row[0])  # type: ignore[call-overload]
    columns = row[1 : 1 + len(INDEX_COLUMNS)]
    record_json, prev_hash, stored_hash = (str(v) for v in row[1 + len(INDEX_COLUMNS) :])
    decision_id = str(columns[0])
    where = f"record seq {seq} (decision {decision_id})"
    if chain_hash(prev_hash, seq, record_json) != stored_hash:
        original = _written_as(db, seq, record_json, prev_hash, stored_hash)
        if original is None:
            return _Finding(
                "edited",
                seq,
                decision_id,
                f"{where} was edited: its content no longer matches its hash",
            )
        if original > seq and not _predecessor_present(db, prev_hash, anchor):
            return _Finding(
                "deleted",
                seq,
                decision_id,
                f"records before seq {seq} were deleted and the rest renumbered: {where} was "
                f"written as seq {original}",
            )
        return _Finding(
            "reordered", seq, decision_id, f"{where} was moved: it was written as seq {original}"
        )
    if prev_hash != prev:
        if not _predecessor_present(db, prev_hash, anchor):
            return _Finding(
                "edited",
                seq - 1,
                decision_id,
                f"record seq {seq - 1} was rewritten or replaced: {where} links to a record that "
                "is no longer in the log",
            )
        return _Finding(
            "reordered",
            seq,
            decision_id,
            f"{where} links to a record elsewhere in the log, not to the one before it",
        )
    try:
        record = json.loads(record_json)
        rules = matched_rules(record)
        expected = index_columns(record, rules)
    except (ValueError, AuditRecordInvalid) as exc:
        return _Finding("edited", seq, decision_id, f"record seq {seq} is unreadable: {exc}")
    for name, have, want in zip(INDEX_COLUMNS, columns, expected, strict=True):
        if have != db.stored(want):
            return _Finding(
                "edited",
                seq,
                decision_id,
                f"record seq {seq} (decision {decision_id}) was edited: column {name} says "
                f"{have!r} but the record says {want!r}",
            )
    return rules


@dataclass(slots=True)
class _Walk:
    finding: _Finding | None = None
    checked: int = 0
    first: int | None = None
    last: int = 0
    last_hash: str = GENESIS_HASH
    anchor: tuple[int, str] | None = None


def _walk(db: AuditDb, upto: int) -> _Walk:
    """Check the records with seq <= upto in order, stopping at the first problem.

    Run it inside db.snapshot() (or a write transaction): it streams the rows.
    """
    anchor_row = db.execute(f"SELECT seq, hash FROM {ANCHORS} ORDER BY seq DESC LIMIT 1").fetchone()
    walk = _Walk()
    if anchor_row is not None:
        walk.anchor = (int(anchor_row[0]), str(anchor_row[1]))
        walk.last, walk.last_hash = walk.anchor
    with (
        contextlib.closing(_rule_groups(db, upto)) as rules,
        contextlib.closing(db.iterate(_ROW_SQL, (upto,))) as rows,
    ):
        _walk_rows(db, walk, rules, rows)
    return walk


def _walk_rows(
    db: AuditDb,
    walk: _Walk,
    rules: Iterator[tuple[int, list[tuple[str, ...]]]],
    rows: Iterator[tuple[Any, ...]],
) -> None:
    pending = next(rules, None)
    for row in rows:
        seq = int(row[0])
        decision_id = str(row[1])
        expected = walk.last + 1
        if seq < expected:
            walk.finding = _Finding(
                "anchor",
                seq,
                decision_id,
                f"record seq {seq} (decision {decision_id}) lies before the prune anchor at seq "
                f"{walk.last}: the record or the anchor was tampered with",
            )
            return
        if seq > expected:
            missing = f"seq {expected}" if seq == expected + 1 else f"seq {expected}-{seq - 1}"
            walk.finding = _Finding(
                "deleted",
                expected,
                decision_id,
                f"record {missing} was deleted: the log jumps from seq {walk.last} to seq {seq} "
                f"(decision {decision_id})",
            )
            return
        checked = _check_row(db, row, walk.last_hash, walk.anchor)
        if isinstance(checked, _Finding):
            walk.finding = checked
            return
        # The audit_rule rows of this record must be exactly its matched rules.
        if pending is not None and pending[0] < seq:
            walk.finding = _Finding(
                "edited", pending[0], None, f"audit_rule rows for seq {pending[0]} have no record"
            )
            return
        have: list[tuple[str, ...]] = []  # the audit_rule rows of this record
        if pending is not None and pending[0] == seq:
            have = pending[1]
            pending = next(rules, None)
        want = [tuple(db.stored(v) for v in rule) for rule in checked]
        if have != want:
            walk.finding = _Finding(
                "edited",
                seq,
                decision_id,
                f"the rule index (audit_rule) of record seq {seq} (decision {decision_id}) "
                "was edited",
            )
            return
        walk.last, walk.last_hash = seq, str(row[-1])
        walk.first = seq if walk.first is None else walk.first
        walk.checked += 1
    if pending is not None:
        walk.finding = _Finding(
            "edited", pending[0], None, f"audit_rule rows for seq {pending[0]} have no record"
        )


def verify(target: Target) -> VerifyReport:
    """Walk the whole chain (from the prune anchor, if any) and report the first problem.

    target: the SQLite file or the PostgreSQL URL of the log. Sees one consistent snapshot
    while writers (every replica's) keep committing.
    """
    with open_audit(target) as db, db.snapshot():
        head_row = db.execute(f"SELECT seq, hash FROM {HEAD} WHERE id = 1").fetchone()
        walk = _walk(db, 2**62)
    head_seq, head_hash = (0, GENESIS_HASH) if head_row is None else (int(head_row[0]), head_row[1])
    finding = walk.finding
    if finding is None and head_row is None:
        finding = _Finding("head", 0, None, "the chain head (audit_head) is missing")
    if finding is None and (head_seq, head_hash) != (walk.last, walk.last_hash):
        if head_seq > walk.last:
            finding = _Finding(
                "deleted",
                walk.last + 1,
                None,
                f"records seq {walk.last + 1}-{head_seq} were deleted from the end of the log "
                f"(the chain head is seq {head_seq}, the last record is seq {walk.last})",
            )
        else:
            finding = _Finding(
                "head",
                head_seq,
                None,
                f"the chain head (seq {head_seq}) does not match the last record (seq {walk.last})",
            )
    anchor_seq = None if walk.anchor is None else walk.anchor[0]
    if finding is not None:
        return VerifyReport(
            ok=False,
            checked=walk.checked,
            first_seq=walk.first,
            last_seq=walk.last if walk.checked else None,
            anchor_seq=anchor_seq,
            head_seq=head_seq,
            problem=finding.problem,
            seq=finding.seq,
            decision_id=finding.decision_id,
            message=f"audit log TAMPERED: {finding.message}",
        )
    span = f"seq {walk.first}-{walk.last}" if walk.checked else "no records"
    after = f", continuing from the prune anchor at seq {anchor_seq}" if anchor_seq else ""
    return VerifyReport(
        ok=True,
        checked=walk.checked,
        first_seq=walk.first,
        last_seq=walk.last if walk.checked else None,
        anchor_seq=anchor_seq,
        head_seq=head_seq,
        message=f"audit log OK: {walk.checked} records verified ({span}){after}",
    )


PRUNE_CHUNK = 2000
"""Records deleted per write transaction, so a running service's writer is never held up long."""


PRUNE_LOCK = "authz:audit-prune"
"""PostgreSQL: serialises prunes (SQLite's BEGIN IMMEDIATE already does)."""


def _anchor_seq(db: AuditDb) -> int:
    (seq,) = db.execute(f"SELECT max(seq) FROM {ANCHORS}").fetchone()
    return int(seq or 0)


def _anchor_hash(db: AuditDb, end: int) -> str | None:
    """The hash the chain continues from after seq `end`: that record's hash or, if it is gone
    (force), the prev_hash of the next record or the head."""
    row = db.execute(f"SELECT hash FROM {LOG} WHERE seq = ?", (end,)).fetchone()
    if row is None:
        row = db.execute(
            f"SELECT prev_hash FROM {LOG} WHERE seq > ? ORDER BY seq LIMIT 1", (end,)
        ).fetchone()
    if row is None:
        row = db.execute(f"SELECT hash FROM {HEAD} WHERE id = 1 AND seq = ?", (end,)).fetchone()
    return None if row is None else str(row[0])


class _Restart(Exception):
    """Another prune moved the anchor meanwhile: roll back and start over."""


def prune(
    target: Target,
    older_than_seconds: float,
    clock: Clock = system_clock,
    *,
    force: bool = False,
    chunk: int = PRUNE_CHUNK,
) -> int:
    """Delete the records older than `older_than_seconds` and anchor the chain; returns how many.

    Only a prefix of the chain is deleted: everything before the first record that is recent
    enough (a later record with an earlier time is kept). The seq and hash of the last deleted
    record are kept in audit_anchor, where verify starts. Works in chunks: each is verified in a
    read snapshot, then deleted in a short write transaction, so a service writing to the same
    file keeps committing. If a chunk was tampered with, AuditTampered is raised rather than
    erase the evidence (earlier, intact chunks stay pruned); force=True prunes anyway.
    """
    if older_than_seconds < 0:
        raise ValueError("older_than_seconds must not be negative")
    if chunk < 1:
        raise ValueError("chunk must be at least 1")
    now = clock()
    cutoff = now - older_than_seconds
    total = 0
    run_anchor: int | None = None  # the audit_anchor row this prune moves forward
    with open_audit(target) as db:
        # One statement, one snapshot: records committed meanwhile are recent, never pruned.
        first_kept, last = db.execute(
            f"SELECT (SELECT min(seq) FROM {LOG} WHERE time >= ?), (SELECT max(seq) FROM {LOG})",
            (cutoff,),
        ).fetchone()
        boundary = last if first_kept is None else int(first_kept) - 1
        while boundary is not None:
            # 1. Verify the next chunk in a read snapshot, without holding up the writers.
            with db.snapshot():
                start = _anchor_seq(db)
                end = min(start + chunk, boundary)
                walk = None if force or start >= boundary else _walk(db, end)
            if start >= boundary:
                break
            if walk is not None:
                finding = walk.finding
                if finding is None and walk.last != end:
                    finding = _Finding(
                        "deleted", walk.last + 1, None, f"record seq {walk.last + 1} was deleted"
                    )
                if finding is not None:
                    raise AuditTampered(
                        f"not pruning: {finding.message}; run `authz audit verify` and keep a "
                        "copy of the database as evidence (or prune with force)"
                    )
            # 2. Delete it in a short write transaction, if nothing moved in between.
            try:
                with db.write(lock=PRUNE_LOCK):
                    if _anchor_seq(db) != start:  # another prune got there first
                        raise _Restart
                    anchor_hash = _anchor_hash(db, end)
                    if anchor_hash is None or (walk is not None and anchor_hash != walk.last_hash):
                        raise AuditTampered(f"not pruning: record seq {end} changed while pruning")
                    deleted = db.execute(f"DELETE FROM {LOG} WHERE seq <= ?", (end,)).rowcount
                    db.execute(f"DELETE FROM {RULES} WHERE seq <= ?", (end,))
                    if run_anchor is None:
                        db.execute(
                            f"INSERT INTO {ANCHORS} (seq, hash, pruned_at, cutoff, pruned_count) "
                            "VALUES (?, ?, ?, ?, ?) ON CONFLICT (seq) DO UPDATE SET "
                            "hash = excluded.hash, pruned_at = excluded.pruned_at, "
                            "cutoff = excluded.cutoff, pruned_count = excluded.pruned_count",
                            (end, anchor_hash, now, cutoff, deleted),
                        )
                    else:
                        db.execute(
                            f"UPDATE {ANCHORS} SET seq = ?, hash = ?, "
                            "pruned_count = pruned_count + ? WHERE seq = ?",
                            (end, anchor_hash, deleted, run_anchor),
                        )
            except _Restart:
                continue  # (rolled back) start over from the new anchor
            run_anchor = end
            total += int(deleted)
    return total


def describe_anchor(target: Target) -> str | None:
    """A sentence about the latest prune anchor, or None when nothing was pruned."""
    with open_audit(target) as db:
        row = db.execute(
            f"SELECT seq, hash, pruned_at, cutoff, pruned_count FROM {ANCHORS} "
            "ORDER BY seq DESC LIMIT 1"
        ).fetchone()
    if row is None:
        return None
    seq, hash_, pruned_at, cutoff, count = row
    return (
        f"records up to seq {seq} (before {rfc3339(cutoff)}) were pruned at {rfc3339(pruned_at)} "
        f"({count} in the last prune); the chain continues from hash {hash_[:16]}…"
    )
