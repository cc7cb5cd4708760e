"""What the audit review pages read (authz.web.review): filtered decision lists with keyset
pagination, one decision with its place in the chain, counts for charts, and exports.

Every function opens the log (a SQLite file or the PostgreSQL URL, as `AuditLog.target`), reads
in one snapshot and closes it; they are blocking, for a thread (the pages run them with
`asyncio.to_thread`). This module is the review pages' only dependence on the audit log's tables.

Lists are newest first, ordered by (time, seq) and paged by a cursor holding the last row's
(time, seq): each page is one indexed range read, however deep, on both backends (no OFFSET).
Equality filters have an index each ((column, time) on audit_log, (rule_id, seq) on audit_rule).
An action glob and the free text (in each record's reasons) are checked row by row, so a page
with either examines at most `scan` candidate rows (those the indexed filters give, newest
first): when that many are looked at before the page is full, the page ends early with a cursor
to go on searching further back, and a page is never slower than that.
"""

from __future__ import annotations

import collections
import contextlib
import csv
import io
import json
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any

from authz.audit.chain import VerifyReport, verify
from authz.audit.errors import AuditError, AuditLogNotFound
from authz.audit.query import PartReader, opened_log, parse_time, read_entry
from authz.audit.record import EFFECTS, assemble, canonical_json
from authz.audit.schema import HEAD, LOG, RULES, Target, open_audit
from authz.clock import rfc3339
from authz.store import Database
from authz.store.dialect import dialect as sql_dialect

__all__ = [
    "LOG",
    "RULES",
    "AuditError",
    "AuditLogNotFound",
    "Cursor",
    "Filters",
    "Page",
    "Row",
    "Shape",
    "Stats",
    "VerifyReport",
    "canonical_json",
    "csv_line",
    "explain",
    "export_records",
    "export_rows",
    "list_page",
    "open_audit",
    "is_common_rule",
    "page_query",
    "shape_of",
    "stats",
    "verify_chain",
]

PAGE_SIZE = 50
SCAN_BUDGET = 20_000
"""Candidate rows a page with an action glob or free text examines at most."""
MAX_BUCKETS = 2_000
"""Time buckets a chart may have; a longer range needs a coarser bucket."""
BUCKETS = {"minute": 60, "hour": 3600, "day": 86400}
MAX_FILTER = 512
"""The longest value a filter takes (ids, names, patterns, text)."""

_LIST_COLUMNS = (
    "seq, decision_id, time, kind, caller, request_id, principal_type, principal_id, action, "
    "resource_type, resource_id, app_id, effect, policy_revision"
)


@dataclass(frozen=True)
class Shape:
    """How filters become SQL on a given log, decided by a probe of an index or two
    (`shape_of`): either shape finds the same rows; one reads far fewer."""

    common_rule: bool = False
    """The rule filter matches many decisions: a page is found soonest by reading the log
    newest first and checking each decision's rules (one index probe each); otherwise the
    rule's few decisions are looked up and sorted."""
    no_whole_ids: frozenset[str] = frozenset()
    """"principal" and "resource" filters given as "type:id" for which no decision has the
    whole text as its id: then one (id, time) index range answers, in order, instead of an OR
    of two that must be sorted."""


@dataclass(frozen=True)
class Filters:
    """What a reviewer narrows the log to; every field optional ("" or None: any)."""

    since: float | None = None
    """Inclusive, Unix seconds."""
    until: float | None = None
    """Exclusive, Unix seconds."""
    effect: str = ""
    principal: str = ""
    """"type:id" or an id alone."""
    action: str = ""
    """Exact, or a glob ("account.*")."""
    resource: str = ""
    """"type:id" or an id alone."""
    app: str = ""
    caller: str = ""
    rule: str = ""
    """A matched rule: its id, or "policy/rule_id"."""
    text: str = ""
    """Words in the decision's reasons (case-insensitive for ASCII)."""
    decision_id: str = ""

    NAMES = (
        "since",
        "until",
        "effect",
        "principal",
        "action",
        "resource",
        "app",
        "caller",
        "rule",
        "text",
        "decision_id",
    )

    @classmethod
    def parse(cls, params: Mapping[str, str], now: float) -> Filters:
        """From a page's query parameters; ValueError saying which one to fix. Times take what
        `authz audit query` takes: "1h" (ago), "now", ISO-8601 (UTC unless a zone is given)."""
        values: dict[str, Any] = {}
        for name in cls.NAMES:
            raw = params.get(name, "").strip()
            if not raw:
                continue
            if len(raw) > MAX_FILTER:
                raise ValueError(f"the {name} filter is longer than {MAX_FILTER} characters")
            if name in ("since", "until"):
                try:
                    values[name] = parse_time(raw, now=now)
                except ValueError as exc:
                    raise ValueError(f"{name}: {exc}") from None
            elif name == "effect":
                if raw.upper() not in EFFECTS:
                    raise ValueError(f"effect {raw!r} must be ALLOW or DENY")
                values[name] = raw.upper()
            else:
                values[name] = raw
        return cls(**values)

    def params(self) -> dict[str, str]:
        """The query parameters that give these filters back (times as RFC 3339)."""
        out: dict[str, str] = {}
        for item in fields(self):
            value = getattr(self, item.name)
            if value is None or value == "":
                continue
            out[item.name] = rfc3339(value) if item.name in ("since", "until") else str(value)
        return out

    def where(self, dialect: str, shape: Shape | None = None) -> tuple[list[str], list[Any]]:
        """SQL conditions (``?`` placeholders) on audit_log, and their parameters, in the
        shape that reads least (see Shape; the default is right for any log)."""
        shape = shape or Shape()
        where: list[str] = []
        params: list[Any] = []
        if self.since is not None:
            where.append("time >= ?")
            params.append(self.since)
        if self.until is not None:
            where.append("time < ?")
            params.append(self.until)
        if self.effect:
            where.append("effect = ?")
            params.append(self.effect)
        for prefix, value in (("principal", self.principal), ("resource", self.resource)):
            if value:
                kind, sep, ident = value.partition(":")
                if sep and kind and ident and prefix in shape.no_whole_ids:
                    where.append(f"{prefix}_id = ? AND {prefix}_type = ?")
                    params.extend([ident, kind])
                elif sep and kind and ident:
                    where.append(f"(({prefix}_type = ? AND {prefix}_id = ?) OR {prefix}_id = ?)")
                    params.extend([kind, ident, value])
                else:
                    where.append(f"{prefix}_id = ?")
                    params.append(value)
        if self.action and not self.action_glob:
            where.append("action = ?")
            params.append(self.action)
        if self.app:
            where.append("app_id = ?")
            params.append(self.app)
        if self.caller:
            where.append("caller = ?")
            params.append(self.caller)
        if self.decision_id:
            where.append("decision_id = ?")
            params.append(self.decision_id)
        if self.rule:
            rules, rule_params = self.rule_condition()
            if shape.common_rule:
                where.append(
                    f"EXISTS (SELECT 1 FROM {RULES} WHERE {RULES}.seq = {LOG}.seq AND {rules})"
                )
            else:
                where.append(f"seq IN (SELECT seq FROM {RULES} WHERE {rules})")
            params.extend(rule_params)
        return where, params

    def rule_condition(self) -> tuple[str, list[Any]]:
        """The rule filter on audit_rule: a rule id, or "policy/rule_id" (or a rule id that
        itself holds a "/"). rule_id IN (…) comes first so the (rule_id, seq) index is used."""
        policy, sep, rule_id = self.rule.rpartition("/")
        if sep and policy and rule_id:
            return "rule_id IN (?, ?) AND (policy = ? OR rule_id = ?)", [
                rule_id,
                self.rule,
                policy,
                self.rule,
            ]
        return "rule_id = ?", [self.rule]

    @property
    def action_glob(self) -> bool:
        return any(c in self.action for c in "*?[")

    def scan_conditions(self, dialect: str) -> tuple[list[str], list[Any]]:
        """The conditions no index answers, checked on each candidate row: an action glob
        and the free text in the decision's reasons."""
        where: list[str] = []
        params: list[Any] = []
        if self.action and self.action_glob:
            condition, pattern = sql_dialect(dialect).glob("action", self.action)
            where.append(condition)
            params.append(pattern)
        if self.text:
            pattern = "%" + _like_escape(self.text) + "%"
            if dialect == "sqlite":
                where.append(
                    "EXISTS (SELECT 1 FROM json_each(record, '$.reasons') "
                    "WHERE value LIKE ? ESCAPE '\\')"
                )
            else:
                # PostgreSQL's json cannot read \u0000: such a (rare) record is not found.
                where.append(
                    "(strpos(record, '\\u0000') = 0 AND EXISTS (SELECT 1 FROM "
                    "json_array_elements_text(record::json -> 'reasons') AS reason(value) "
                    "WHERE reason.value ILIKE ? ESCAPE '\\'))"
                )
            params.append(pattern)
        return where, params


def _like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


@dataclass(frozen=True, order=True)
class Cursor:
    """Where a page ends: the (time, seq) of its last row; the next page starts below it."""

    time: float
    seq: int

    def __str__(self) -> str:
        return f"{self.time!r}:{self.seq}"

    @classmethod
    def parse(cls, text: str) -> Cursor:
        moment, sep, seq = text.partition(":")
        try:
            cursor = cls(float(moment), int(seq))
        except ValueError:
            cursor = None
        if not sep or cursor is None or not math.isfinite(cursor.time) or cursor.seq < 0:
            raise ValueError(
                f"the page cursor {text!r} is not one this server made; start from the first page"
            )
        return cursor


@dataclass(frozen=True)
class Rule:
    policy: str
    rule_id: str
    effect: str

    @property
    def name(self) -> str:
        return f"{self.policy}/{self.rule_id}" if self.policy else self.rule_id


@dataclass(frozen=True)
class Row:
    """One decision as the list shows it (the indexed columns; no record JSON is read)."""

    seq: int
    decision_id: str
    time: float
    kind: str
    caller: str
    request_id: str
    principal: str
    action: str
    resource: str
    app_id: str
    effect: str
    policy_revision: str
    rules: tuple[Rule, ...] = ()

    @property
    def deciding(self) -> tuple[Rule, ...]:
        """The rules that decided: the matched rules of the decision's effect."""
        return tuple(rule for rule in self.rules if rule.effect == self.effect)

    def csv_values(self) -> list[str]:
        return [
            rfc3339(self.time),
            self.decision_id,
            self.effect,
            self.principal,
            self.action,
            self.resource,
            self.app_id,
            self.caller,
            " ".join(rule.name for rule in self.deciding),
            " ".join(rule.name for rule in self.rules),
            self.policy_revision,
            self.request_id,
            self.kind,
            str(self.seq),
        ]


CSV_HEADER = (
    "time",
    "decision_id",
    "effect",
    "principal",
    "action",
    "resource",
    "app",
    "caller",
    "deciding_rules",
    "matched_rules",
    "policy_revision",
    "request_id",
    "kind",
    "seq",
)


def _ref(kind: Any, ident: Any) -> str:
    return f"{kind}:{ident}" if kind else str(ident or "")


def _row(values: Sequence[Any]) -> Row:
    (seq, decision_id, moment, kind, caller, request_id, ptype, pid, action, rtype, rid, app,
     effect, revision) = values  # fmt: skip
    return Row(
        int(seq),
        str(decision_id),
        float(moment),
        str(kind or ""),
        str(caller or ""),
        str(request_id or ""),
        _ref(ptype, pid),
        str(action or ""),
        _ref(rtype, rid),
        str(app or ""),
        str(effect),
        str(revision or ""),
    )


def _with_rules(db: Database, rows: list[Row]) -> list[Row]:
    if not rows:
        return rows
    marks = ", ".join("?" for _ in rows)
    order = db.sql.insertion_order  # the rules of one record in their order
    found: dict[int, list[Rule]] = collections.defaultdict(list)
    for seq, policy, rule_id, effect in db.execute(
        f"SELECT seq, policy, rule_id, effect FROM {RULES} WHERE seq IN ({marks}) ORDER BY {order}",
        [row.seq for row in rows],
    ):
        found[int(seq)].append(Rule(str(policy or ""), str(rule_id), str(effect or "")))
    return [replace(row, rules=tuple(found.get(row.seq, ()))) for row in rows]


@dataclass(frozen=True)
class Page:
    rows: list[Row]
    next: Cursor | None
    """Where the next (older) page starts; None at the end of the log."""
    searched_to: float | None = None
    """With an action glob or free text, when the scan budget ran out before the page was full:
    the time the search got back to (the next page goes on from there)."""


def _page_sql(
    filters: Filters, dialect: str, after: Cursor | None, limit: int, shape: Shape | None = None
) -> tuple[str, list[Any]]:
    where, params = filters.where(dialect, shape)
    if after is not None:
        # time <= ? narrows an index range read on any (…, time) index; the rest breaks ties.
        where.append("time <= ? AND (time < ? OR seq < ?)")
        params.extend([after.time, after.time, after.seq])
    clause = (" WHERE " + " AND ".join(where)) if where else ""
    sql = f"SELECT {{columns}} FROM {LOG}{clause} ORDER BY time DESC, seq DESC LIMIT ?"
    params.append(limit)
    return sql, params


def page_query(
    filters: Filters,
    dialect: str,
    after: Cursor | None = None,
    *,
    size: int = PAGE_SIZE,
    scan: int = SCAN_BUDGET,
    shape: Shape | None = None,
) -> tuple[str, list[Any]]:
    """The query of one list page (size + 1 rows, to know whether there is another page):
    an index range read newest first; with free text, over at most `scan` candidates."""
    checks, check_params = filters.scan_conditions(dialect)
    if not checks:
        sql, params = _page_sql(filters, dialect, after, size + 1, shape)
        return sql.format(columns=_LIST_COLUMNS), params
    inner, params = _page_sql(filters, dialect, after, scan, shape)
    candidates = inner.format(columns=f"{_LIST_COLUMNS}, record")
    sql = (
        f"SELECT {_LIST_COLUMNS} FROM ({candidates}) AS candidate WHERE {' AND '.join(checks)} "
        "ORDER BY time DESC, seq DESC LIMIT ?"
    )
    return sql, [*params, *check_params, size + 1]


def list_page(
    target: Target,
    filters: Filters,
    after: Cursor | None = None,
    *,
    size: int = PAGE_SIZE,
    scan: int = SCAN_BUDGET,
    shape: Shape | None = None,
) -> Page:
    """One page of decisions matching `filters`, newest first, below `after` when given.
    shape: how to query (see Shape); None: the one `shape_of` finds best for this log. Every
    shape gives the same page."""
    with opened_log(target) as db, db.snapshot():
        shape = shape or shape_of(db, filters)
        sql, params = page_query(filters, db.dialect, after, size=size, scan=scan, shape=shape)
        found = [_row(r) for r in db.execute(sql, params)]
        if len(found) > size:
            rows = _with_rules(db, found[:size])
            return Page(rows, Cursor(rows[-1].time, rows[-1].seq))
        if not filters.scan_conditions(db.dialect)[0]:
            return Page(_with_rules(db, found), None)
        # Fewer than a page: either the candidates ran out (the end) or the budget did.
        last_sql, last_params = _page_sql(filters, db.dialect, after, 1, shape)
        last = db.execute(
            last_sql.format(columns="time, seq") + " OFFSET ?", [*last_params, scan - 1]
        ).fetchone()
        rows = _with_rules(db, found)
        if last is None:
            return Page(rows, None)
        stop = Cursor(float(last[0]), int(last[1]))
        return Page(rows, stop, searched_to=stop.time)


COMMON_RULE = 5_000
"""A rule that matched at least this many decisions is "common" (see Filters.where)."""


def shape_of(db: Database, filters: Filters) -> Shape:
    """The shape of query that reads least for `filters` on this log."""
    no_whole_ids = frozenset(
        prefix
        for prefix, value in (("principal", filters.principal), ("resource", filters.resource))
        if ":" in value
        and db.execute(f"SELECT 1 FROM {LOG} WHERE {prefix}_id = ? LIMIT 1", [value]).fetchone()
        is None
    )
    return Shape(bool(filters.rule) and is_common_rule(db, filters), no_whole_ids)


def is_common_rule(db: Database, filters: Filters) -> bool:
    """Whether the rule filter matches at least COMMON_RULE decisions (an index range count,
    stopped there)."""
    rules, params = filters.rule_condition()
    (found,) = db.execute(
        f"SELECT count(*) FROM (SELECT 1 FROM {RULES} WHERE {rules} LIMIT ?) AS matched",
        [*params, COMMON_RULE],
    ).fetchone()
    return int(found) >= COMMON_RULE


# -- one decision -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Explained:
    """One decision record (put back together) and where it sits in the hash chain."""

    seq: int
    hash: str
    prev_hash: str
    record: dict[str, Any]
    parts: dict[str, str]
    head_seq: int
    """The chain's head when read: entries after this one = head_seq - seq."""
    previous_id: str | None
    """The decision right before it in the chain (None when that entry is not a decision or
    was pruned)."""
    next_id: str | None


def explain(target: Target, decision_id: str) -> Explained | None:
    with opened_log(target) as db, db.snapshot():
        entry = read_entry(db, decision_id)
        if entry is None:
            return None
        seq = entry.seq
        head = db.execute(f"SELECT seq FROM {HEAD} WHERE id = 1").fetchone()
        neighbours = {
            int(s): str(d)
            for s, d in db.execute(
                f"SELECT seq, decision_id FROM {LOG} WHERE seq IN (?, ?)", [seq - 1, seq + 1]
            )
        }
    return Explained(
        seq,
        entry.hash,
        entry.prev_hash,
        entry.record,
        entry.parts,
        int(head[0]) if head else seq,
        neighbours.get(seq - 1),
        neighbours.get(seq + 1),
    )


# -- exports ----------------------------------------------------------------------------------

EXPORT_CHUNK = 1000


def _every_match(filters: Filters, dialect: str, columns: str) -> tuple[str, list[Any]]:
    """All the rows `filters` match, newest first: an export reads them all (no page, no scan
    budget), so the conditions no index answers go in the same WHERE."""
    where, params = filters.where(dialect)
    checks, check_params = filters.scan_conditions(dialect)
    clause = " WHERE " + " AND ".join(where + checks) if where or checks else ""
    sql = f"SELECT {columns} FROM {LOG}{clause} ORDER BY time DESC, seq DESC"
    return sql, [*params, *check_params]


def export_records(target: Target, filters: Filters) -> Iterator[dict[str, Any]]:
    """Every record matching `filters` (whole, put back together), newest first, from one
    snapshot (exactly the set that matched when the export began), streamed. Close the
    iterator to release the connection."""
    with opened_log(target) as db, db.snapshot():
        sql, params = _every_match(filters, db.dialect, "record")
        parts = PartReader(db)
        with contextlib.closing(db.iterate(sql, params)) as rows:
            for (text_json,) in rows:
                yield assemble(json.loads(text_json), parts)


def export_rows(target: Target, filters: Filters) -> Iterator[Row]:
    """Every list row matching `filters`, newest first, from one snapshot, streamed."""
    with opened_log(target) as db, db.snapshot():
        sql, params = _every_match(filters, db.dialect, _LIST_COLUMNS)
        with contextlib.closing(db.iterate(sql, params)) as cursor:
            chunk: list[Row] = []
            for values in cursor:
                chunk.append(_row(values))
                if len(chunk) == EXPORT_CHUNK:
                    yield from _with_rules(db, chunk)  # same transaction: the same snapshot
                    chunk = []
            yield from _with_rules(db, chunk)


_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_line(values: Sequence[str]) -> str:
    """One CSV line. A cell a spreadsheet would run as a formula (=, +, -, @ first) is prefixed
    with ' (OWASP's advice): ids come from callers, and a reviewer opens the file."""
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerow(
        ["'" + v if v.startswith(_FORMULA_START) else v for v in values]
    )
    return out.getvalue()


# -- stats ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Stats:
    since: float
    until: float
    bucket: str
    series: list[tuple[float, int, int]]
    """(bucket start, decisions, denies) for every bucket of [since, until), empty ones too."""
    total: int
    denied: int
    top_actions: list[tuple[str, int]]
    top_principals: list[tuple[str, int]]
    top_callers: list[tuple[str, int]]
    revisions: list[tuple[str, float, int, int]] = field(default_factory=list)
    """(policy revision, first seen, decisions, denies), oldest first."""


def stats(target: Target, since: float, until: float, bucket: str, top: int = 10) -> Stats:
    """Decisions and denies per bucket (minute, hour or day) in [since, until), the most denied
    actions, principals and callers, and the deny rate of each policy revision."""
    if bucket not in BUCKETS:
        raise ValueError(f"bucket {bucket!r} must be one of: {', '.join(BUCKETS)}")
    width = BUCKETS[bucket]
    if until <= since:
        raise ValueError("the range is empty: since must be before until")
    start = math.floor(since / width) * width
    count = math.ceil((until - start) / width)
    if count > MAX_BUCKETS:
        raise ValueError(
            f"{count} {bucket}s is more than a chart shows ({MAX_BUCKETS}); choose a shorter "
            "range or a coarser bucket"
        )
    span = [since, until]
    # One count per bucket, each an index range read (covering on SQLite: no table row is
    # read), the buckets made by a recursive CTE (both backends). Grouping a computed bucket
    # instead would sort every row of the range.
    per_bucket = (
        "WITH RECURSIVE bucket(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM bucket WHERE i < ?) "
        f"SELECT i, (SELECT count(*) FROM {LOG} WHERE {{only}}time >= ? + i * ? "
        "AND time < ? + (i + 1) * ? AND time >= ? AND time < ?) FROM bucket"
    )
    bucket_params = [count - 1, start, width, start, width, *span]
    # Keys are grouped as expressions (coalesce), which no index orders: SQLite then reads the
    # denies by (effect, time) instead of walking a whole (key, time) index.
    deny_in_range = "WHERE effect = 'DENY' AND time >= ? AND time < ?"
    with opened_log(target) as db, db.snapshot():
        totals = dict(db.execute(per_bucket.format(only=""), bucket_params).fetchall())
        denies = dict(
            db.execute(per_bucket.format(only="effect = 'DENY' AND "), bucket_params).fetchall()
        )
        by_slot = {int(i): (int(n), int(denies.get(i, 0))) for i, n in totals.items()}

        def top_denied(column: str) -> list[tuple[str, int]]:
            sql = (
                f"SELECT coalesce({column}, '') AS key, count(*) AS n FROM {LOG} "
                f"{deny_in_range} GROUP BY 1 ORDER BY n DESC, key LIMIT ?"
            )
            return [(str(k), int(n)) for k, n in db.execute(sql, [*span, top])]

        actions = top_denied("action")
        callers = top_denied("caller")
        principals = top_denied(
            "CASE WHEN principal_type <> '' THEN principal_type || ':' ELSE '' END "
            "|| coalesce(principal_id, '')"
        )
        denied_by_revision = dict(
            db.execute(
                f"SELECT coalesce(policy_revision, ''), count(*) FROM {LOG} {deny_in_range} "
                "GROUP BY 1",
                span,
            ).fetchall()
        )
        # Grouped by the column itself: SQLite reads only the (policy_revision, time) index.
        revisions = [
            (str(r or ""), float(first), int(n), int(denied_by_revision.get(r or "", 0)))
            for r, first, n in db.execute(
                f"SELECT policy_revision, min(time), count(*) FROM {LOG} "
                "WHERE time >= ? AND time < ? GROUP BY policy_revision ORDER BY 2",
                span,
            )
        ]
    series = [(start + i * width, *by_slot.get(i, (0, 0))) for i in range(count)]
    return Stats(
        since,
        until,
        bucket,
        series,
        sum(n for _, n, _ in series),
        sum(d for _, _, d in series),
        actions,
        principals,
        callers,
        revisions,
    )


# -- the chain --------------------------------------------------------------------------------


def verify_chain(target: Target) -> VerifyReport:
    """Walk the whole chain (authz.audit.chain.verify): slow on a large log, for a thread."""
    return verify(target)
