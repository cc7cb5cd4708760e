"""Tamper evidence: the hash chain, verifying it, checkpoints, and pruning without breaking it.

Chain entry `seq` n (a decision record in audit_log, or a prune entry in audit_event; they
share one gapless seq space) stores prev_hash (the hash of entry n-1, or GENESIS_HASH for n = 1)
and

    hash = sha256(prev_hash + canonical_json({"record": record, "seq": n}))

as lowercase hex. Editing, deleting or moving any entry therefore breaks the chain at that point;
a record's shared parts are named by hash inside the record, so they are covered too.

The chain is unkeyed: it proves the log is internally consistent, not who wrote it. What it
cannot show by itself is an end cut off (with audit_head moved back) or a log rewritten from
some point on with every later hash recomputed: compare with a head kept elsewhere
(`checkpoint`, then ``verify(target, expect=[checkpoint])``). Removing the oldest entries is what
prune does; each prune appends a prune entry to the chain naming what it removed and the prune
entry before it, and verify accepts a log that starts after seq 1 only if such an entry accounts
for it, so a free-standing (forged) anchor is found.
"""

from __future__ import annotations

import collections
import contextlib
import heapq
import json
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from authz.audit.errors import AuditRecordInvalid, AuditTampered
from authz.audit.record import (
    INDEX_COLUMNS,
    RuleRow,
    chain_hash,
    index_columns,
    matched_rules,
    part_hash,
    part_refs,
    prune_entry,
)
from authz.audit.schema import (
    ANCHORS,
    EVENTS,
    GENESIS_HASH,
    HEAD,
    LOG,
    PART_USE,
    PARTS,
    RULES,
    Target,
    append_event,
    open_audit,
)
from authz.clock import Clock, rfc3339, system_clock
from authz.store import Database

__all__ = ["Checkpoint", "VerifyReport", "chain_hash", "checkpoint", "prune", "verify"]

Problem = Literal[
    "edited",
    "deleted",
    "reordered",
    "gap",
    "part",
    "anchor",
    "head",
    "truncated",
    "rewritten",
    "unconfirmed",
]
"""What verify found; every one but "unconfirmed" (a checkpoint from before the last prune,
which cannot be checked any more) is evidence of tampering."""


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A head of the chain (seq and hash) an operator keeps outside the database."""

    seq: int
    hash: str

    _FORM = re.compile(r"(\d+):([0-9a-f]{64})")

    @classmethod
    def parse(cls, text: str) -> Checkpoint:
        """ "SEQ:HASH" as `authz audit checkpoint` prints it; ValueError otherwise."""
        match = cls._FORM.fullmatch(text.strip().lower())
        if match is None:
            raise ValueError(
                f"cannot read checkpoint {text!r}: give SEQ:HASH as `authz audit checkpoint` "
                "prints it (a number, a colon, 64 hex digits)"
            )
        return cls(int(match.group(1)), match.group(2))

    def __str__(self) -> str:
        return f"{self.seq}:{self.hash}"


@dataclass(frozen=True, slots=True)
class VerifyReport:
    """The outcome of walking the chain: ok with counts, or the first bad entry."""

    ok: bool
    checked: int
    """How many decision records were checked."""
    first_seq: int | None
    last_seq: int | None
    anchor_seq: int | None
    """The chain starts after this seq (entries up to it were pruned), or None."""
    head_seq: int
    problem: Problem | None = None
    seq: int | None = None
    """The seq of the first bad (or first missing) entry."""
    decision_id: str | None = None
    """The decision id of the first bad record (for a gap: of the record right after it)."""
    message: str = ""
    head_hash: str = GENESIS_HASH
    gaps: tuple[tuple[int, int], ...] = ()
    """Every range of missing seq numbers (first, last), in order."""
    prunes: int = 0
    """How many prune entries the remaining chain holds."""

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True, slots=True)
class _Finding:
    problem: Problem
    seq: int
    decision_id: str | None
    message: str


@dataclass(frozen=True, slots=True)
class _Prune:
    """A prune entry of the chain: it removed the entries up to `through`."""

    seq: int
    hash: str
    through: tuple[int, str]
    previous: tuple[int, str] | None


_ROW_SQL = (
    f"SELECT seq, {', '.join(INDEX_COLUMNS)}, record, prev_hash, hash FROM {LOG} "
    "WHERE seq > ? AND seq <= ? ORDER BY seq"
)
_EVENT_SQL = (
    f"SELECT seq, kind, time, record, prev_hash, hash FROM {EVENTS} "
    "WHERE seq > ? AND seq <= ? ORDER BY seq"
)


def _rules_sql(db: Database) -> str:
    """Each seq's matched rules in (lower, upto], as a JSON array of [policy, rule_id, effect]
    in the order they were written."""
    sql = db.sql
    order = sql.insertion_order
    rules = sql.json_group_array(sql.json_array("policy", "rule_id", "effect"), "o")
    return (
        f"SELECT seq, {rules} FROM "
        f"(SELECT seq, policy, rule_id, effect, {order} AS o FROM {RULES} "
        "WHERE seq > ? AND seq <= ? ORDER BY seq, o) AS r GROUP BY seq ORDER BY seq"
    )


_ALL = 2**62


def _rule_groups(
    db: Database, lower: int, upto: int
) -> Iterator[tuple[int, list[tuple[str, ...]]]]:
    with contextlib.closing(db.iterate(_rules_sql(db), (lower, upto))) as groups:
        for seq, text in groups:
            yield (
                int(seq),
                [tuple("" if v is None else v for v in item) for item in json.loads(text)],
            )


def _events(db: Database, lower: int, upto: int) -> list[tuple[Any, ...]]:
    """The non-decision entries in (lower, upto]: a handful (one per prune still in the log)."""
    if not db.table_exists(EVENTS):  # a log of schema 1, not yet migrated
        return []
    return [tuple(row) for row in db.execute(_EVENT_SQL, (lower, upto))]


def _predecessor_present(db: Database, prev_hash: str, start: tuple[int, str]) -> bool:
    """Whether the entry a row links to (by its prev_hash) is still in the log (or the start)."""
    if prev_hash in (GENESIS_HASH, start[1]):
        return True
    for table in (LOG, EVENTS):
        if table == EVENTS and not db.table_exists(EVENTS):
            continue
        if db.execute(f"SELECT 1 FROM {table} WHERE hash = ? LIMIT 1", (prev_hash,)).fetchone():
            return True
    return False


def _written_as(
    db: Database, seq: int, record_json: str, prev_hash: str, stored_hash: str
) -> int | None:
    """The seq this entry's hash was made for, if not `seq` (searching outward; failure path)."""
    (top,) = db.execute(f"SELECT seq FROM {HEAD} WHERE id = 1").fetchone() or (0,)
    upper = max(int(top or 0), seq) + 1
    for distance in range(1, upper):
        for candidate in (seq - distance, seq + distance):
            if 1 <= candidate <= upper and (
                chain_hash(prev_hash, candidate, record_json) == stored_hash
            ):
                return candidate
    return None


def _check_link(
    db: Database,
    seq: int,
    where: str,
    decision_id: str | None,
    entry: tuple[str, str, str],
    prev: str,
    start: tuple[int, str],
) -> _Finding | None:
    """Whether an entry (record JSON, prev_hash, hash) still has its hash and follows `prev`."""
    record_json, prev_hash, stored_hash = entry
    if chain_hash(prev_hash, seq, record_json) != stored_hash:
        original = _written_as(db, seq, record_json, prev_hash, stored_hash)
        if original is None:
            return _Finding(
                "edited",
                seq,
                decision_id,
                f"{where} was edited: its content no longer matches its hash",
            )
        if original > seq and not _predecessor_present(db, prev_hash, start):
            return _Finding(
                "deleted",
                seq,
                decision_id,
                f"entries before seq {seq} were deleted and the rest renumbered: {where} was "
                f"written as seq {original}",
            )
        return _Finding(
            "reordered", seq, decision_id, f"{where} was moved: it was written as seq {original}"
        )
    if prev_hash != prev:
        if not _predecessor_present(db, prev_hash, start):
            return _Finding(
                "edited",
                seq - 1,
                decision_id,
                f"entry seq {seq - 1} was rewritten or replaced: {where} links to an entry that "
                "is no longer in the log",
            )
        return _Finding(
            "reordered",
            seq,
            decision_id,
            f"{where} links to an entry elsewhere in the log, not to the one before it",
        )
    return None


class _PartCheck:
    """Checks the shared parts records name: present, content matching the hash, and their use
    recorded (so prune keeps them as long as a record needs them). Remembers recent answers:
    the records of one batch name the same parts."""

    _REMEMBER = 1024

    def __init__(self, db: Database) -> None:
        self._db = db
        self._present = db.table_exists(PARTS)
        self._known: collections.OrderedDict[str, int | str] = collections.OrderedDict()

    def problem(self, digest: str, seq: int) -> str | None:
        known = self._known.get(digest)
        if known is None:
            known = self._load(digest)
            self._known[digest] = known
            if len(self._known) > self._REMEMBER:
                self._known.popitem(last=False)
        else:
            self._known.move_to_end(digest)
        if isinstance(known, str):
            return known
        if known < seq:
            return f"recorded as last used at seq {known}, so a prune would delete it too early"
        return None

    def _load(self, digest: str) -> int | str:
        if not self._present:
            return f"missing (the log has no {PARTS} table)"
        row = self._db.execute(
            f"SELECT p.body, u.last_seq FROM {PARTS} p LEFT JOIN {PART_USE} u "
            "ON u.hash = p.hash WHERE p.hash = ?",
            (digest,),
        ).fetchone()
        if row is None:
            return "missing"
        if part_hash(str(row[0])) != digest:
            return "edited: its content no longer matches its hash"
        if row[1] is None:
            return f"missing from {PART_USE}, so a prune would delete it too early"
        return int(row[1])


def _check_record(
    db: Database,
    row: tuple[object, ...],
    prev: str,
    start: tuple[int, str],
    parts: _PartCheck,
) -> _Finding | tuple[RuleRow, ...]:
    """The first problem with one record row, or (when it is sound) its matched rules."""
    seq = int(row[0])  # type: ignore[call-overload]
    columns = row[1 : 1 + len(INDEX_COLUMNS)]
    record_json, prev_hash, stored_hash = (str(v) for v in row[1 + len(INDEX_COLUMNS) :])
    decision_id = str(columns[0])
    where = f"record seq {seq} (decision {decision_id})"
    entry = (record_json, prev_hash, stored_hash)
    broken = _check_link(db, seq, where, decision_id, entry, prev, start)
    if broken is not None:
        return broken
    try:
        record = json.loads(record_json)
        rules = matched_rules(record)
        expected = index_columns(record, rules)
        refs = part_refs(record)
    except (ValueError, AuditRecordInvalid) as exc:
        return _Finding("edited", seq, decision_id, f"record seq {seq} is unreadable: {exc}")
    for name, have, want in zip(INDEX_COLUMNS, columns, expected, strict=True):
        if have != db.sql.text(want):
            return _Finding(
                "edited",
                seq,
                decision_id,
                f"{where} was edited: column {name} says {have!r} but the record says {want!r}",
            )
    for path, digest in refs.items():
        problem = parts.problem(digest, seq)
        if problem is not None:
            return _Finding(
                "part",
                seq,
                decision_id,
                f"{where} names shared part {path} {digest[:16]}…, which is {problem}",
            )
    return rules


def _read_prune(row: tuple[Any, ...]) -> _Prune | str:
    """A prune entry row (seq, kind, time, record, prev_hash, hash) read, or what is wrong."""
    seq, kind, time, text = int(row[0]), row[1], row[2], str(row[3])
    try:
        entry = json.loads(text)
        through = entry["through"]
        previous = entry["previous"]
        prune = _Prune(
            seq,
            str(row[5]),
            (int(through["seq"]), str(through["hash"])),
            None if previous is None else (int(previous["seq"]), str(previous["hash"])),
        )
    except (ValueError, KeyError, TypeError) as exc:
        return f"is unreadable ({type(exc).__name__}: {exc})"
    if entry.get("event") != "prune" or kind != "prune" or time != entry.get("time"):
        return "was edited: its kind or time column does not match its content"
    if not 0 <= prune.through[0] < seq:
        return f"was edited: it claims to prune through seq {prune.through[0]}"
    return prune


@dataclass(slots=True)
class _Walk:
    finding: _Finding | None = None
    checked: int = 0
    first: int | None = None
    """The first and last decision record checked."""
    last_record: int | None = None
    last: int = 0
    """The last chain entry checked (a record or a prune entry)."""
    last_hash: str = GENESIS_HASH
    anchor: tuple[int, str] | None = None
    gaps: list[tuple[int, int]] = field(default_factory=list)
    after_gap: str | None = None
    """The decision id of the record right after the first gap."""
    prunes: list[_Prune] = field(default_factory=list)
    seen: dict[int, str] = field(default_factory=dict)
    """The hash of each entry whose seq was asked for (checkpoints)."""


def _anchor(db: Database) -> tuple[int, str] | None:
    row = db.execute(f"SELECT seq, hash FROM {ANCHORS} ORDER BY seq DESC LIMIT 1").fetchone()
    return None if row is None else (int(row[0]), str(row[1]))


def _walk(
    db: Database,
    upto: int,
    *,
    start: tuple[int, str] | None = None,
    watch: Iterable[int] = (),
) -> _Walk:
    """Check the chain entries with seq <= upto in order, stopping at the first problem other
    than a gap (gaps are collected and the walk goes on from the entry after each).

    start: the seq and hash to continue from (default: the prune anchor, or genesis; then an
    entry at or before the anchor is a finding too). watch: seqs whose hashes to note in `seen`.
    Run it inside db.snapshot() (or a write transaction): it streams the rows.
    """
    walk = _Walk(anchor=_anchor(db), seen=dict.fromkeys(watch, ""))
    begin = start or walk.anchor or (0, GENESIS_HASH)
    walk.last, walk.last_hash = begin
    lower = -1 if start is None else start[0]
    records = ((int(row[0]), False, row) for row in db.iterate(_ROW_SQL, (lower, upto)))
    events = ((int(row[0]), True, row) for row in _events(db, lower, upto))
    with (
        contextlib.closing(_rule_groups(db, lower, upto)) as rules,
        contextlib.closing(records) as rows,
    ):
        _walk_rows(db, walk, begin, rules, heapq.merge(rows, events, key=lambda e: e[0]))
    for seq in [seq for seq, digest in walk.seen.items() if not digest]:
        del walk.seen[seq]
    return walk


def _walk_rows(
    db: Database,
    walk: _Walk,
    start: tuple[int, str],
    rules: Iterator[tuple[int, list[tuple[str, ...]]]],
    entries: Iterator[tuple[int, bool, tuple[Any, ...]]],
) -> None:
    parts = _PartCheck(db)
    pending = next(rules, None)
    for seq, is_event, row in entries:
        decision_id = None if is_event else str(row[1])
        where = f"prune entry seq {seq}" if is_event else f"record seq {seq} (decision {row[1]})"
        expected = walk.last + 1
        if seq < expected:
            walk.finding = _Finding(
                "anchor",
                seq,
                decision_id,
                f"{where} lies before the prune anchor at seq {walk.last}: the entry or the "
                "anchor was tampered with",
            )
            return
        prev = walk.last_hash
        if seq > expected:
            # A gap: note it, then go on checking from this entry as it links.
            if not walk.gaps:
                walk.after_gap = decision_id
            walk.gaps.append((expected, seq - 1))
            prev = str(row[-2])
        if is_event:
            found = _check_event(db, walk, row, prev, start, where)
            if found is not None:
                walk.finding = found
                return
        else:
            checked = _check_record(db, row, prev, start, parts)
            if isinstance(checked, _Finding):
                walk.finding = checked
                return
            # The audit_rule rows of this record must be exactly its matched rules.
            if pending is not None and pending[0] < seq:
                walk.finding = _Finding(
                    "edited",
                    pending[0],
                    None,
                    f"audit_rule rows for seq {pending[0]} have no record",
                )
                return
            have: list[tuple[str, ...]] = []
            if pending is not None and pending[0] == seq:
                have = pending[1]
                pending = next(rules, None)
            if have != [tuple(db.sql.text(v) for v in rule) for rule in checked]:
                walk.finding = _Finding(
                    "edited",
                    seq,
                    decision_id,
                    f"the rule index (audit_rule) of {where} was edited",
                )
                return
            walk.first = seq if walk.first is None else walk.first
            walk.last_record = seq
            walk.checked += 1
        walk.last, walk.last_hash = seq, str(row[-1])
        if seq in walk.seen:
            walk.seen[seq] = walk.last_hash
    if pending is not None:
        walk.finding = _Finding(
            "edited", pending[0], None, f"audit_rule rows for seq {pending[0]} have no record"
        )


def _check_event(
    db: Database,
    walk: _Walk,
    row: tuple[Any, ...],
    prev: str,
    start: tuple[int, str],
    where: str,
) -> _Finding | None:
    seq = int(row[0])
    entry = (str(row[3]), str(row[4]), str(row[5]))
    broken = _check_link(db, seq, where, None, entry, prev, start)
    if broken is not None:
        return broken
    prune = _read_prune(row)
    if isinstance(prune, str):
        return _Finding("edited", seq, None, f"{where} {prune}")
    # Prunes form a chain of their own: each names the one before it.
    before = walk.prunes[-1] if walk.prunes else None
    named = prune.previous
    if before is not None:
        if named != (before.seq, before.hash) or prune.through[0] < before.through[0]:
            return _Finding(
                "anchor",
                seq,
                None,
                f"{where} does not follow the prune entry at seq {before.seq} (it must name it "
                "and prune at least as far)",
            )
    elif named is not None and named[0] > start[0]:
        return _Finding(
            "anchor",
            seq,
            None,
            f"{where} names a prune entry at seq {named[0]} that is not in the log",
        )
    walk.prunes.append(prune)
    return None


def _vouch(anchor: tuple[int, str] | None, latest: _Prune | None) -> _Finding | None:
    """Whether the log's start (its prune anchor) is accounted for by the latest prune entry."""
    if anchor is None:
        return None  # the log starts at seq 1; a missing start shows as a gap
    seq, digest = anchor
    if latest is None or latest.through[0] < seq:
        return _Finding(
            "anchor",
            seq,
            None,
            f"entries up to seq {seq} are gone and no prune entry in the chain accounts for "
            "it: a prefix was removed behind a forged anchor (or the log was pruned by an older "
            "authz and not yet migrated: `authz db migrate` records its anchor in the chain)",
        )
    if latest.through[0] == seq and latest.through[1] != digest:
        return _Finding(
            "anchor",
            seq,
            None,
            f"the prune anchor at seq {seq} does not match the prune entry at seq {latest.seq} "
            "(its hash differs): the anchor was forged",
        )
    return None


def _expected(
    walk: _Walk, head: tuple[int, str], checkpoints: Sequence[Checkpoint]
) -> _Finding | None:
    """Whether the log still holds each checkpoint: its entry, with its hash, or the prune
    entry that verified up to it before removing it."""
    for point in checkpoints:
        if point.seq == 0:
            if point.hash != GENESIS_HASH:
                return _Finding("rewritten", 0, None, f"checkpoint {point} is not a head")
            continue
        anchor_seq = walk.anchor[0] if walk.anchor else 0
        if point.seq <= anchor_seq:
            vouched = {p.through for p in walk.prunes}
            if walk.anchor is not None:
                vouched.add(walk.anchor)
            known = dict(vouched)
            if known.get(point.seq) == point.hash:
                continue
            if point.seq in known:
                return _Finding(
                    "rewritten",
                    point.seq,
                    None,
                    f"seq {point.seq} was pruned with hash {known[point.seq][:16]}…, not the "
                    f"checkpoint's {point.hash[:16]}…: the log was rewritten up to there",
                )
            return _Finding(
                "unconfirmed",
                point.seq,
                None,
                f"cannot confirm checkpoint seq {point.seq}: the log now starts after seq "
                f"{anchor_seq} (pruned); only a checkpoint taken after the last prune can be "
                "checked",
            )
        if point.seq > head[0]:
            return _Finding(
                "truncated",
                head[0] + 1,
                None,
                f"the log ends at seq {head[0]} but checkpoint seq {point.seq} was taken "
                f"earlier: entries seq {head[0] + 1}-{point.seq} (at least) were cut off the end "
                "and the chain head moved back",
            )
        have = walk.seen.get(point.seq)
        if have != point.hash:
            return _Finding(
                "rewritten",
                point.seq,
                None,
                f"entry seq {point.seq} has hash {str(have)[:16]}…, not the checkpoint's "
                f"{point.hash[:16]}…: the log was rewritten at or before seq {point.seq} (every "
                "later hash recomputed)",
            )
    return None


def _span(ranges: Sequence[tuple[int, int]]) -> str:
    return ", ".join(f"seq {a}" if a == b else f"seq {a}-{b}" for a, b in ranges)


def verify(target: Target, expect: Sequence[Checkpoint] = ()) -> VerifyReport:
    """Walk the whole chain (from the prune anchor, if any) and report the first problem.

    target: the SQLite file or the PostgreSQL URL of the log. expect: checkpoints (heads kept
    elsewhere, see `checkpoint`) the log must still hold. Sees one consistent snapshot while
    writers (every replica's) keep committing.
    """
    with open_audit(target) as db, db.snapshot():
        head_row = db.execute(f"SELECT seq, hash FROM {HEAD} WHERE id = 1").fetchone()
        walk = _walk(db, _ALL, watch=[point.seq for point in expect])
    head = (0, GENESIS_HASH) if head_row is None else (int(head_row[0]), str(head_row[1]))
    finding = walk.finding
    cut_off = False
    if finding is None and head_row is None:
        finding = _Finding("head", 0, None, "the chain head (audit_head) is missing")
    if finding is None and head != (walk.last, walk.last_hash):
        if head[0] > walk.last:
            walk.gaps.append((walk.last + 1, head[0]))
            cut_off = True
        else:
            finding = _Finding(
                "head",
                head[0],
                None,
                f"the chain head (seq {head[0]}) does not match the last entry (seq {walk.last})",
            )
    if finding is None and not walk.gaps:
        finding = _vouch(walk.anchor, walk.prunes[-1] if walk.prunes else None)
    if finding is None and not walk.gaps:
        finding = _expected(walk, head, expect)
    gaps = tuple(walk.gaps)
    if gaps and (finding is None or gaps[0][0] <= finding.seq):
        message = (
            f"entries are missing, seq must be gapless: {_span(gaps)}"
            + (f", cut off the end (the chain head is seq {head[0]})" if cut_off else "")
            + (f"; and then: {finding.message}" if finding is not None else "")
        )
        finding = _Finding("gap", gaps[0][0], walk.after_gap, message)
    anchor_seq = None if walk.anchor is None else walk.anchor[0]
    span = f"seq {walk.first}-{walk.last_record}" if walk.checked else "no records"
    after = f", continuing from the prune anchor at seq {anchor_seq}" if anchor_seq else ""
    if walk.prunes:
        after += f" (prune entry seq {walk.prunes[-1].seq})"
    held = ""
    if expect:
        points = ", ".join(str(point.seq) for point in expect)
        held = f"; it holds checkpoint seq {points}: nothing up to it was lost or changed"
    return VerifyReport(
        ok=finding is None,
        checked=walk.checked,
        first_seq=walk.first,
        last_seq=walk.last_record,
        anchor_seq=anchor_seq,
        head_seq=head[0],
        problem=None if finding is None else finding.problem,
        seq=None if finding is None else finding.seq,
        decision_id=None if finding is None else finding.decision_id,
        message=(
            f"audit log OK: {walk.checked} records verified ({span}){after}{held}"
            if finding is None
            else f"audit log UNCONFIRMED: {finding.message}"
            if finding.problem == "unconfirmed"
            else f"audit log TAMPERED: {finding.message}"
        ),
        head_hash=head[1],
        gaps=gaps,
        prunes=len(walk.prunes),
    )


def checkpoint(target: Target) -> Checkpoint:
    """The head of a log that verifies, to keep outside it (AuditTampered if it does not)."""
    report = verify(target)
    if not report.ok:
        raise AuditTampered(f"no checkpoint of a log that does not verify: {report.message}")
    return Checkpoint(report.head_seq, report.head_hash)


PRUNE_CHUNK = 2000
"""Entries deleted per write transaction, so a running service's writer is never held up long."""


PRUNE_LOCK = "authz:audit-prune"
"""PostgreSQL: serialises prunes (SQLite's BEGIN IMMEDIATE already does)."""


def _anchor_seq(db: Database) -> int:
    (seq,) = db.execute(f"SELECT max(seq) FROM {ANCHORS}").fetchone()
    return int(seq or 0)


def _anchor_hash(db: Database, end: int) -> str | None:
    """The hash the chain continues from after seq `end`: that entry's hash or, if it is gone
    (force), the prev_hash of the next entry or the head."""
    for table in (LOG, EVENTS):
        row = db.execute(f"SELECT hash FROM {table} WHERE seq = ?", (end,)).fetchone()
        if row is not None:
            return str(row[0])
    row = db.execute(
        f"SELECT prev_hash FROM (SELECT seq, prev_hash FROM {LOG} WHERE seq > ? UNION ALL "
        f"SELECT seq, prev_hash FROM {EVENTS} WHERE seq > ?) AS later ORDER BY seq LIMIT 1",
        (end, end),
    ).fetchone()
    if row is None:
        row = db.execute(f"SELECT hash FROM {HEAD} WHERE id = 1 AND seq = ?", (end,)).fetchone()
    return None if row is None else str(row[0])


def _latest_prune(db: Database) -> _Prune | None:
    """The newest prune entry, its own hash checked (AuditTampered when it does not hold)."""
    row = db.execute(
        f"SELECT seq, kind, time, record, prev_hash, hash FROM {EVENTS} ORDER BY seq DESC LIMIT 1"
    ).fetchone()
    if row is None:
        return None
    seq = int(row[0])
    prune = _read_prune(tuple(row))
    if chain_hash(str(row[4]), seq, str(row[3])) != str(row[5]):
        prune = "was edited: its content no longer matches its hash"
    if isinstance(prune, str):
        raise AuditTampered(f"not pruning: prune entry seq {seq} {prune}; run `authz audit verify`")
    return prune


class _Restart(Exception):
    """Another prune moved the anchor meanwhile: roll back and start over."""


def _refuse(finding: _Finding) -> AuditTampered:
    return AuditTampered(
        f"not pruning: {finding.message}; run `authz audit verify` and keep a copy of the "
        "database as evidence (or prune with force)"
    )


def prune(
    target: Target,
    older_than_seconds: float,
    clock: Clock = system_clock,
    *,
    force: bool = False,
    chunk: int = PRUNE_CHUNK,
) -> int:
    """Delete the records older than `older_than_seconds`; returns how many.

    Only a prefix of the chain is deleted: everything before the first record that is recent
    enough (a later record with an earlier time is kept). In three steps, none holding up a
    service writing to the same log for long:

    1. verify the prefix, chunk by chunk, each in a read snapshot (force=True skips this; a
       tampered chunk raises AuditTampered rather than erase the evidence);
    2. append a prune entry to the chain: through which seq (and its hash) entries go, and the
       prune entry before it; from then on verify accepts the log starting there;
    3. delete the prefix in chunks (records, their rules, older prune entries, shared parts no
       remaining record uses), moving audit_anchor, where verify starts, each time.

    A prune interrupted in step 3 is finished by the next one.
    """
    if older_than_seconds < 0:
        raise ValueError("older_than_seconds must not be negative")
    if chunk < 1:
        raise ValueError("chunk must be at least 1")
    now = clock()
    cutoff = now - older_than_seconds
    with open_audit(target) as db:
        if not db.table_exists(EVENTS):
            raise AuditTampered(
                "not pruning: this log predates chained prunes; run `authz db migrate` first"
            )
        # One statement, one snapshot: records committed meanwhile are recent, never pruned.
        first_kept, last = db.execute(
            f"SELECT (SELECT min(seq) FROM {LOG} WHERE time >= ?), (SELECT max(seq) FROM {LOG})",
            (cutoff,),
        ).fetchone()
        boundary = int(last or 0) if first_kept is None else int(first_kept) - 1
        deleted = [0]
        while True:
            try:
                _prune_through(db, boundary, now, cutoff, deleted, force=force, chunk=chunk)
            except _Restart:
                continue  # (rolled back) start over from the new anchor
            return deleted[0]


def _prune_through(
    db: Database,
    boundary: int,
    now: float,
    cutoff: float,
    deleted: list[int],
    *,
    force: bool,
    chunk: int,
) -> None:
    """One attempt at `prune`; adds the records it deletes to deleted[0]."""
    with db.snapshot():
        anchor = _anchor(db)
        latest = _latest_prune(db)
    start = anchor or (0, GENESIS_HASH)
    if not force and (finding := _vouch(anchor, latest)) is not None:
        raise _refuse(finding)
    if latest is not None and latest.through[0] > start[0]:  # an interrupted prune: finish it
        deleted[0] += _delete_through(db, latest.through[0], now, cutoff, chunk)
        anchor = start = latest.through
    if boundary <= start[0]:
        return
    # 1. Verify (start, boundary], a chunk per snapshot.
    position = start
    while not force and position[0] < boundary:
        end = min(position[0] + chunk, boundary)
        with db.snapshot():
            walk = _walk(db, end, start=position)
        finding = walk.finding
        if finding is None and (walk.gaps or walk.last != end):
            first = walk.gaps[0][0] if walk.gaps else walk.last + 1
            finding = _Finding("gap", first, None, f"entry seq {first} is missing")
        if finding is not None:
            raise _refuse(finding)
        position = (walk.last, walk.last_hash)
    # 2. The prune entry, if nothing moved in between.
    with db.transaction(lock=PRUNE_LOCK):
        if _anchor(db) != anchor or _latest_prune(db) != latest:
            raise _Restart
        through_hash = _anchor_hash(db, boundary)
        if through_hash is None or (not force and through_hash != position[1]):
            raise AuditTampered(f"not pruning: entry seq {boundary} changed while pruning")
        append_event(
            db,
            prune_entry(
                time=now,
                through=(boundary, through_hash),
                previous=None if latest is None else (latest.seq, latest.hash),
                cutoff=cutoff,
                verified=not force,
            ),
        )
    # 3. Delete.
    deleted[0] += _delete_through(db, boundary, now, cutoff, chunk)


def _delete_through(db: Database, through: int, now: float, cutoff: float, chunk: int) -> int:
    """Delete the entries up to `through` (a prune entry allows it), a chunk per transaction."""
    total = 0
    run_anchor: int | None = None  # the audit_anchor row this run moves forward
    while True:
        with db.transaction(lock=PRUNE_LOCK):
            start = _anchor_seq(db)
            if start >= through:
                return total
            end = min(start + chunk, through)
            anchor_hash = _anchor_hash(db, end)
            if anchor_hash is None:
                raise AuditTampered(f"not pruning: entry seq {end} is gone")
            deleted = int(db.execute(f"DELETE FROM {LOG} WHERE seq <= ?", (end,)).rowcount)
            db.execute(f"DELETE FROM {RULES} WHERE seq <= ?", (end,))
            db.execute(f"DELETE FROM {EVENTS} WHERE seq <= ?", (end,))
            db.execute(
                f"DELETE FROM {PARTS} WHERE hash IN "
                f"(SELECT hash FROM {PART_USE} WHERE last_seq <= ?)",
                (end,),
            )
            db.execute(f"DELETE FROM {PART_USE} WHERE last_seq <= ?", (end,))
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
        run_anchor = end
        total += deleted


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
