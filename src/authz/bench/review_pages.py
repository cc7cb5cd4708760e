"""How fast the review pages' queries are on a large log, and the plans the databases choose.

    python -m authz.bench.review_pages --rows 1000000 --data-dir /tmp/review-1m
    python -m authz.bench.review_pages --rows 1000000 --database-url postgresql://...

Fills an audit log (created by the real schema, migrations included) with synthetic decisions,
generated inside the database (a recursive CTE on SQLite, generate_series on PostgreSQL): the
indexed columns, one audit_rule row each and a small record with reasons. The chain hashes are
not real (nothing here verifies them). Then times each list query of authz.audit.browse, first
page and a page deep in the log, plus the stats, and prints each query's plan. A log that already
holds that many rows is reused. Development tool: not part of the service.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from authz.audit import audit_target, browse, migrate_audit
from authz.audit.browse import LOG, RULES, open_audit

DENY_EVERY = 20
CALLERS = 5
PRINCIPALS = 5000
APPS = 200
START = 1_780_000_000.0
STEP = 0.05

_SQLITE_FILL = f"""
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?)
INSERT INTO {LOG} (seq, decision_id, time, kind, caller, request_id, principal_type,
    principal_id, action, resource_type, resource_id, app_id, effect, policy_revision, rule_ids,
    record, prev_hash, hash)
SELECT i, printf('d-%09d', i), {START} + i * {STEP}, 'check',
    CASE WHEN i % 100000 = 0 THEN 'rare' ELSE 'c' || (i % {CALLERS}) END,
    'r-' || i, 'user', CASE WHEN i % 2 = 0 THEN 'hot' ELSE 'u' || (i % {PRINCIPALS}) END,
    CASE WHEN i % {DENY_EVERY} = 0 THEN 'doc.delete' ELSE 'doc.read' END,
    'doc', 'doc-' || i, 'app-' || (i % {APPS}),
    CASE WHEN i % {DENY_EVERY} = 0 THEN 'DENY' ELSE 'ALLOW' END,
    CASE WHEN i < ? / 2 THEN 'rev-1' ELSE 'rev-2' END,
    CASE WHEN i % {DENY_EVERY} = 0 THEN '["nobody-deletes"]' ELSE '["users-read"]' END,
    '{{"reasons":["' || CASE WHEN i % {DENY_EVERY} = 0
        THEN 'Deleting documents is reserved to the records office'
        ELSE 'Users may read documents' END || '"]}}',
    '', ''
FROM n
"""

_PG_FILL = f"""
INSERT INTO {LOG} (seq, decision_id, time, kind, caller, request_id, principal_type,
    principal_id, action, resource_type, resource_id, app_id, effect, policy_revision, rule_ids,
    record, prev_hash, hash)
SELECT i, 'd-' || lpad(i::text, 9, '0'), {START} + i * {STEP}, 'check',
    CASE WHEN i %% 100000 = 0 THEN 'rare' ELSE 'c' || (i %% {CALLERS}) END,
    'r-' || i, 'user', CASE WHEN i %% 2 = 0 THEN 'hot' ELSE 'u' || (i %% {PRINCIPALS}) END,
    CASE WHEN i %% {DENY_EVERY} = 0 THEN 'doc.delete' ELSE 'doc.read' END,
    'doc', 'doc-' || i, 'app-' || (i %% {APPS}),
    CASE WHEN i %% {DENY_EVERY} = 0 THEN 'DENY' ELSE 'ALLOW' END,
    CASE WHEN i < %s / 2 THEN 'rev-1' ELSE 'rev-2' END,
    CASE WHEN i %% {DENY_EVERY} = 0 THEN '["nobody-deletes"]' ELSE '["users-read"]' END,
    '{{"reasons":["' || CASE WHEN i %% {DENY_EVERY} = 0
        THEN 'Deleting documents is reserved to the records office'
        ELSE 'Users may read documents' END || '"]}}',
    '', ''
FROM generate_series(1, %s) AS i
"""

_RULES_FILL = f"""
INSERT INTO {RULES} (seq, policy, rule_id, effect)
SELECT seq, 'docs', CASE WHEN seq % 100000 = 1 THEN 'rare-rule'
    WHEN effect = 'DENY' THEN 'nobody-deletes' ELSE 'users-read-' || (seq % 19) END, effect
FROM {LOG}
"""

CASES: dict[str, browse.Filters] = {
    "no filter": browse.Filters(),
    "effect=DENY": browse.Filters(effect="DENY"),
    "caller=c3": browse.Filters(caller="c3"),
    "caller=rare (10 rows)": browse.Filters(caller="rare"),
    "principal=user:u43": browse.Filters(principal="user:u43"),
    "principal=user:hot (half)": browse.Filters(principal="user:hot"),
    "action=doc.delete": browse.Filters(action="doc.delete"),
    "action=doc.* (glob)": browse.Filters(action="doc.*"),
    "resource=doc-500000": browse.Filters(resource="doc:doc-500000"),
    "app=app-7": browse.Filters(app="app-7"),
    "rule=docs/nobody-deletes": browse.Filters(rule="docs/nobody-deletes"),
    "rule=users-read-3": browse.Filters(rule="users-read-3"),
    "rule=rare-rule (10 rows)": browse.Filters(rule="rare-rule"),
    "effect=DENY caller=c1": browse.Filters(effect="DENY", caller="c1"),
    "text=records office": browse.Filters(text="records office"),
    "decision_id": browse.Filters(decision_id="d-000500000"),
    "1h window": browse.Filters(since=START + 20_000, until=START + 23_600),
}


def fill(target: Any, rows: int) -> None:
    migrate_audit(target)
    db = open_audit(target)
    try:
        (have,) = db.execute(f"SELECT count(*) FROM {RULES}").fetchone()
        if int(have) == rows:
            return
        started = time.perf_counter()
        with db.write():
            db.execute(f"DELETE FROM {RULES}")
            db.execute(f"DELETE FROM {LOG}")
            if db.dialect == "sqlite":
                db.execute(_SQLITE_FILL, (rows, rows))
            else:
                db.raw.execute(_PG_FILL, (rows, rows))
            db.execute(_RULES_FILL)
        # PostgreSQL: VACUUM too, as autovacuum soon would, so index-only scans need no heap.
        db.execute("ANALYZE" if db.dialect == "sqlite" else "VACUUM ANALYZE")
        print(f"filled {rows} rows in {time.perf_counter() - started:.1f} s")
    finally:
        db.close()


def timed(fn: Callable[[], Any], repeat: int = 3) -> tuple[float, Any]:
    best, result = float("inf"), None
    for _ in range(repeat):
        started = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - started)
    return best * 1000, result


def plan(target: Any, filters: browse.Filters) -> str:
    db = open_audit(target)
    try:
        after = browse.Cursor(START + 25_000, 500_000)
        shape = browse.shape_of(db, filters)
        sql, params = browse.page_query(filters, db.dialect, after, shape=shape)
        if db.dialect == "sqlite":
            rows = db.execute("EXPLAIN QUERY PLAN " + sql, params).fetchall()
            return "; ".join(str(row[-1]) for row in rows)
        rows = db.execute("EXPLAIN " + sql, params).fetchall()
        return " | ".join(str(row[0]).strip() for row in rows[:4])
    finally:
        db.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--data-dir", type=Path, default=Path("data/review-measure"))
    parser.add_argument("--database-url")
    args = parser.parse_args()
    args.data_dir.mkdir(parents=True, exist_ok=True)
    target = audit_target(args.data_dir, args.database_url)
    fill(target, args.rows)
    middle = browse.Cursor(START + args.rows * STEP / 2, args.rows // 2)
    print(f"{'query':28} {'first page':>11} {'deep page':>10} rows  plan")
    for name, filters in CASES.items():
        first_ms, page = timed(lambda f=filters: browse.list_page(target, f))
        deep_ms, _ = timed(lambda f=filters: browse.list_page(target, f, middle))
        print(f"{name:28} {first_ms:9.1f}ms {deep_ms:8.1f}ms {len(page.rows):4}  ")
        print(f"    {plan(target, filters)}")
    end = START + args.rows * STEP
    for bucket, span in (("minute", 3600), ("hour", 86400), ("day", 86400 * 30)):
        ms, _ = timed(lambda b=bucket, s=span: browse.stats(target, end - s, end, b), repeat=1)
        print(f"stats, last {span // 3600 or 1} h per {bucket}: {ms:.0f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
