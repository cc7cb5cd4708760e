"""Reviewing the audit log: find decisions, fetch one, count them; and reading times.

Readers see every record whole: the shared parts a record names are put back (record.assemble),
so a record reads the same whether it was written before shared parts existed or after.
`iter_query` and `aiter_query` stream, holding one chunk of rows and a few parts at a time.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import json
import os
import re
from collections.abc import AsyncGenerator, Generator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from authz.audit.errors import AuditTampered
from authz.audit.record import EFFECTS, DecisionRecord, assemble, part_refs
from authz.audit.schema import LOG, PARTS, RULES, Target, open_audit
from authz.clock import Clock, system_clock
from authz.store import Database
from authz.store.dialect import SQLITE, SqlDialect

if TYPE_CHECKING:
    from authz.config import Settings

_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 7 * 86400.0}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw])", re.IGNORECASE)

TimeSpec = float | int | str


def parse_duration(text: str) -> float:
    """ "30m", "1h", "7d", "90d", "2w", "45s" (or plain seconds) → seconds."""
    value = text.strip()
    match = _DURATION.fullmatch(value)
    if match:
        return float(match.group(1)) * _UNITS[match.group(2).lower()]
    try:
        seconds = float(value)
    except ValueError:
        raise ValueError(
            f"cannot read duration {text!r}: use a number and a unit, like 30m, 1h, 7d or 90d"
        ) from None
    if seconds < 0:
        raise ValueError(f"duration {text!r} is negative")
    return seconds


def parse_time(text: TimeSpec, *, now: float | None = None, clock: Clock = system_clock) -> float:
    """A point in time as Unix seconds.

    "30m", "1h", "7d", "90d" mean that long before now; "now" is now; an ISO-8601 date or time
    ("2024-05-01", "2024-05-01T12:00:00Z", "2024-05-01T14:00:00+02:00") is taken as UTC when it
    names no zone; a bare number is already Unix seconds.
    """
    if isinstance(text, int | float) and not isinstance(text, bool):
        return float(text)
    value = str(text).strip()
    current = clock() if now is None else now
    if value.lower() == "now":
        return current
    match = _DURATION.fullmatch(value)
    if match:
        return current - float(match.group(1)) * _UNITS[match.group(2).lower()]
    try:
        return float(value)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(
            f"cannot read time {text!r}: use 30m, 1h, 7d, 90d (ago) or ISO-8601 such as "
            "2024-05-01T12:00:00Z"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


@contextmanager
def opened_log(target: Target) -> Iterator[Database]:
    """The audit log at ``target``, open for reading (AuditLogNotFound when there is none)."""
    db = open_audit(target)
    try:
        yield db
    finally:
        db.close()


def _split_ref(value: str) -> tuple[str | None, str]:
    """ "type:id" → (type, id); "id" → (None, id)."""
    kind, sep, ident = value.partition(":")
    return (kind, ident) if sep and kind and ident else (None, value)


def _ref_clause(prefix: str, value: str, where: list[str], params: list[Any]) -> None:
    """principal/resource filters: "type:id", or an id alone (which may itself contain ':')."""
    kind, ident = _split_ref(value)
    if kind is None:
        where.append(f"{prefix}_id = ?")
        params.append(ident)
    else:
        where.append(f"(({prefix}_type = ? AND {prefix}_id = ?) OR {prefix}_id = ?)")
        params.extend([kind, ident, value])


def _where(
    *,
    since: TimeSpec | None,
    until: TimeSpec | None,
    principal: str | None,
    resource: str | None,
    app: str | None,
    action: str | None,
    effect: str | None,
    rule: str | None,
    kind: str | None,
    now: float | None,
    clock: Clock,
    sql: SqlDialect = SQLITE,
) -> tuple[str, list[Any]]:
    where: list[str] = []
    params: list[Any] = []
    if since is not None:
        where.append("time >= ?")
        params.append(parse_time(since, now=now, clock=clock))
    if until is not None:
        where.append("time < ?")
        params.append(parse_time(until, now=now, clock=clock))
    if principal:
        _ref_clause("principal", principal, where, params)
    if resource:
        _ref_clause("resource", resource, where, params)
    if app:
        where.append("app_id = ?")
        params.append(app)
    if action:
        # "account.*" is a glob (same syntax as policy action patterns); otherwise exact.
        if not any(c in action for c in "*?["):
            where.append("action = ?")
            params.append(action)
        else:
            condition, pattern = sql.glob("action", action)
            where.append(condition)
            params.append(pattern)
    if effect:
        wanted = effect.upper()
        if wanted not in EFFECTS:
            raise ValueError(f"effect {effect!r} must be ALLOW or DENY")
        where.append("effect = ?")
        params.append(wanted)
    if rule:
        # A rule id, or "policy/rule_id" as decision errors name rules.
        policy, sep, rule_id = rule.rpartition("/")
        if sep and policy and rule_id:
            where.append(
                f"seq IN (SELECT seq FROM {RULES} WHERE (rule_id = ? AND policy = ?) "
                "OR rule_id = ?)"
            )
            params.extend([rule_id, policy, rule])
        else:
            where.append(f"seq IN (SELECT seq FROM {RULES} WHERE rule_id = ?)")
            params.append(rule)
    if kind:
        where.append("kind = ?")
        params.append(kind)
    return (" WHERE " + " AND ".join(where) if where else ""), params


class PartReader:
    """Shared parts read on demand from one open log, the last few kept decoded (the records of
    a batch are read one after another and name the same parts)."""

    _KEEP = 4

    def __init__(self, db: Database) -> None:
        self._db = db
        self._present: bool | None = None
        self._decoded: collections.OrderedDict[str, Any] = collections.OrderedDict()
        self.read = 0
        """Bytes of part JSON handed out (each use counts: a reader may hold every copy)."""

    def __call__(self, digest: str) -> Any:
        if digest in self._decoded:
            self._decoded.move_to_end(digest)
            value, size = self._decoded[digest]
            self.read += size
            return value
        if self._present is None:
            self._present = self._db.table_exists(PARTS)
        row = (
            self._db.execute(f"SELECT body FROM {PARTS} WHERE hash = ?", (digest,)).fetchone()
            if self._present
            else None
        )
        if row is None:
            raise AuditTampered(
                f"shared part {digest[:16]}… of a record is missing from the audit log at "
                f"{self._db.location}; run `authz audit verify`"
            )
        value = json.loads(row[0])
        self._decoded[digest] = (value, len(row[0]))
        if len(self._decoded) > self._KEEP:
            self._decoded.popitem(last=False)
        self.read += len(row[0])
        return value


def sized_query(
    target: Target,
    *,
    since: TimeSpec | None = None,
    until: TimeSpec | None = None,
    principal: str | None = None,
    resource: str | None = None,
    app: str | None = None,
    action: str | None = None,
    effect: str | None = None,
    rule: str | None = None,
    kind: str | None = None,
    limit: int | None = 100,
    oldest_first: bool = False,
    now: float | None = None,
    clock: Clock = system_clock,
) -> Generator[tuple[dict[str, Any], int], None, None]:
    """Decision records matching every filter given, newest first (or oldest first), streamed
    from one consistent snapshot of the log, each with the bytes of JSON it was read from.
    Bad filters raise ValueError at once, before the log is opened; a missing log raises
    AuditLogNotFound on the first `next()`.

    target: the SQLite file or the PostgreSQL URL of the log (AuditLog.target).
    since/until: Unix seconds or anything parse_time reads ("1h", "7d", ISO-8601); since is
    inclusive, until exclusive. principal/resource: "type:id" or just the id. action: exact or a
    glob ("account.*"). effect: ALLOW or DENY (any case). rule: a matched rule id or
    "policy/rule_id". limit: at most this many (None for all).

    Close the iterator (or exhaust it) to release the database connection.
    """
    if limit is not None and limit < 1:
        raise ValueError("limit must be at least 1")
    filters: dict[str, Any] = {
        "since": since,
        "until": until,
        "principal": principal,
        "resource": resource,
        "app": app,
        "action": action,
        "effect": effect,
        "rule": rule,
        "kind": kind,
        "now": now,
        "clock": clock,
    }
    _where(**filters)  # refuse bad filters before connecting
    return _sized_records(target, filters, limit, oldest_first)


def _sized_records(
    target: Target, filters: dict[str, Any], limit: int | None, oldest_first: bool
) -> Generator[tuple[dict[str, Any], int], None, None]:
    """The records, each with the bytes of JSON it was put back together from."""
    order = "ASC" if oldest_first else "DESC"
    with opened_log(target) as db, db.snapshot():
        clause, params = _where(**filters, sql=db.sql)
        sql = f"SELECT record FROM {LOG}{clause} ORDER BY time {order}, seq {order}"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(int(limit))
        parts = PartReader(db)
        with contextlib.closing(db.iterate(sql, params)) as rows:
            for (text,) in rows:
                before = parts.read
                record = assemble(json.loads(text), parts)
                yield record, len(text) + parts.read - before


def iter_query(target: Target, **filters: Any) -> Generator[dict[str, Any], None, None]:
    """The records `sized_query` finds (same filters), streamed."""
    return (record for record, _ in sized_query(target, **filters))


def iter_records(target: Target, **filters: Any) -> Generator[DecisionRecord, None, None]:
    """The records `sized_query` finds (same filters), streamed as DecisionRecords."""
    return (DecisionRecord.from_dict(record) for record, _ in sized_query(target, **filters))


def read_for_replay(
    where: Settings | Target, since: TimeSpec | None = None, *, clock: Clock = system_clock
) -> Generator[DecisionRecord, None, None]:
    """Every decision record since `since` (None: all), oldest first, streamed, for replaying
    against a candidate policy set. `where` is the service's Settings (its `audit_target`: the
    SQLite file under AUTHZ_DATA_DIR, or the PostgreSQL database of DATABASE_URL), or a target.
    A missing log raises AuditLogNotFound on the first `next()`; an unreachable PostgreSQL
    server AuditUnavailable. Close the iterator (or exhaust it) to release the connection."""
    target = where if isinstance(where, str | os.PathLike) else where.audit_target
    return iter_records(target, since=since, limit=None, oldest_first=True, clock=clock)


def query(target: Target, **filters: Any) -> list[dict[str, Any]]:
    """The records `sized_query` finds (same filters) as a list: newest first, at most
    `limit` (100 unless given)."""
    return list(iter_query(target, **filters))


CHUNK_RECORDS = 100
CHUNK_BYTES = 1 << 20
"""`aiter_query` hands records over in chunks of at most this many, or of about this many bytes
of JSON (a record larger than that goes alone)."""


def _next_chunk(records: Iterator[tuple[dict[str, Any], int]]) -> list[dict[str, Any]]:
    chunk: list[dict[str, Any]] = []
    size = 0
    while len(chunk) < CHUNK_RECORDS and size < CHUNK_BYTES:
        item = next(records, None)
        if item is None:
            break
        chunk.append(item[0])
        size += item[1]
    return chunk


async def aiter_query(target: Target, **filters: Any) -> AsyncGenerator[dict[str, Any], None]:
    """`iter_query` for coroutines: rows are read in a thread of its own, a chunk at a time,
    so the event loop never waits for the database and memory holds one chunk."""
    records = sized_query(target, **filters)  # bad filters raise here
    loop = asyncio.get_running_loop()
    reader = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="authz-audit-query")
    try:
        while chunk := await loop.run_in_executor(reader, _next_chunk, records):
            for record in chunk:
                yield record
    finally:
        # After any read still running in that thread (the caller may have gone away).
        reader.submit(records.close)
        reader.shutdown(wait=False)


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """A stored record (put back together) with its place in the chain."""

    seq: int
    hash: str
    prev_hash: str
    record: dict[str, Any]
    parts: dict[str, str] = field(default_factory=dict)
    """The shared parts the stored record names: {"input.principal": sha256-hex}."""


def get_entry(target: Target, decision_id: str) -> AuditEntry | None:
    """One decision with its place in the chain, or None."""
    with opened_log(target) as db, db.snapshot():
        return read_entry(db, decision_id)


def read_entry(db: Database, decision_id: str) -> AuditEntry | None:
    """One decision with its place in the chain, read from an open log, or None."""
    row = db.execute(
        f"SELECT seq, hash, prev_hash, record FROM {LOG} WHERE decision_id = ?",
        [decision_id],
    ).fetchone()
    if row is None:
        return None
    stored = json.loads(row[3])
    record = assemble(stored, PartReader(db))
    return AuditEntry(int(row[0]), str(row[1]), str(row[2]), record, part_refs(stored))


def get(target: Target, decision_id: str) -> dict[str, Any] | None:
    """The record of one decision, or None."""
    entry = get_entry(target, decision_id)
    return None if entry is None else entry.record


def stats(
    target: Target,
    since: TimeSpec | None = None,
    *,
    until: TimeSpec | None = None,
    top: int = 10,
    now: float | None = None,
    clock: Clock = system_clock,
) -> dict[str, Any]:
    """Counts of the decisions in [since, until): by effect, kind, action, rule, principal type,
    and the principals denied most (with their e-mail when the record has one)."""
    start = None if since is None else parse_time(since, now=now, clock=clock)
    end = None if until is None else parse_time(until, now=now, clock=clock)
    clause, params = _where(
        since=start,
        until=end,
        principal=None,
        resource=None,
        app=None,
        action=None,
        effect=None,
        rule=None,
        kind=None,
        now=now,
        clock=clock,
    )

    def counts(db: Database, column: str) -> dict[str, int]:
        sql = (
            f"SELECT coalesce({column}, ''), count(*) AS n FROM {LOG}{clause} "
            f"GROUP BY 1 ORDER BY n DESC, 1"
        )
        return {str(key): int(n) for key, n in db.execute(sql, params)}

    with opened_log(target) as db, db.snapshot():  # one snapshot for all the counts
        (total,) = db.execute(f"SELECT count(*) FROM {LOG}{clause}", params).fetchone()
        by_effect = {effect: 0 for effect in EFFECTS} | counts(db, "effect")
        by_kind = counts(db, "kind")
        by_action = counts(db, "action")
        by_principal_type = counts(db, "principal_type")
        rule_sql = (
            f"SELECT r.policy, r.rule_id, count(*) AS n FROM {RULES} r "
            f"WHERE r.seq IN (SELECT seq FROM {LOG}{clause}) "
            "GROUP BY r.policy, r.rule_id ORDER BY n DESC, r.policy, r.rule_id"
        )
        by_rule = {
            (f"{policy}/{rule_id}" if policy else str(rule_id)): int(n)
            for policy, rule_id, n in db.execute(rule_sql, params)
        }
        denied_where = f"{clause} AND effect = 'DENY'" if clause else " WHERE effect = 'DENY'"
        denied_sql = (
            "SELECT principal_type, principal_id, count(*) AS n, "
            f"max({db.sql.json_text('record', 'principal', 'display', 'email')}) "
            f"FROM {LOG}{denied_where} GROUP BY principal_type, principal_id "
            "ORDER BY n DESC, principal_type, principal_id LIMIT ?"
        )
        top_denied = [
            {
                "principal": f"{ptype}:{pid}" if ptype else str(pid),
                "email": email,
                "count": int(n),
            }
            for ptype, pid, n, email in db.execute(denied_sql, [*params, int(top)])
        ]
    return {
        "since": start,
        "until": end,
        "total": int(total),
        "by_effect": by_effect,
        "by_kind": by_kind,
        "by_action": by_action,
        "by_rule": by_rule,
        "by_principal_type": by_principal_type,
        "top_denied_principals": top_denied,
    }
