"""`authz audit …`: query, show, verify, checkpoint, prune and stats, a thin shell over
authz.audit.

The `authz` CLI wires these in with::

    add_audit_commands(subparsers, default_data_dir_getter, default_database_url_getter)
    args = parser.parse_args()
    sys.exit(args.func(args))

Which log: ``--database-url`` (PostgreSQL), else ``--data-dir`` (SQLite ``DIR/audit.db``), else
``AUTHZ_DATABASE_URL`` / ``DATABASE_URL`` when set (the log the replicas share), else
``AUTHZ_DATA_DIR/audit.db`` (default ``./data``). A flag beats an environment variable.
"""

from __future__ import annotations

import argparse
import csv
import functools
import itertools
import json
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from authz.audit.backend import is_postgres_target, normalise_target
from authz.audit.chain import Checkpoint, checkpoint, describe_anchor, prune, verify
from authz.audit.errors import AuditError
from authz.audit.query import AuditEntry, get_entry, iter_query, parse_duration, stats
from authz.audit.schema import audit_db_path
from authz.clock import rfc3339
from authz.store.base import StoreError
from authz.store.connect import database_url_from_env

DataDirGetter = Callable[[], "str | os.PathLike[str]"]
DatabaseUrlGetter = Callable[[], "str | None"]
Handler = Callable[[argparse.Namespace], int]

EXIT_OK = 0
EXIT_TAMPERED = 1
EXIT_NOT_FOUND = 1
EXIT_USAGE = 2

CSV_COLUMNS = (
    "decision_id",
    "time",
    "kind",
    "effect",
    "principal_type",
    "principal_id",
    "principal_email",
    "action",
    "resource_type",
    "resource_id",
    "app_id",
    "matched_rules",
    "policy_revision",
    "errors",
    "duration_ms",
    "caller",
    "request_id",
)


def default_data_dir() -> Path:
    """AUTHZ_DATA_DIR, or ./data."""
    return Path(os.environ.get("AUTHZ_DATA_DIR") or "data")


def default_database_url() -> str | None:
    """AUTHZ_DATABASE_URL or DATABASE_URL when it names PostgreSQL (see database_url_from_env)."""
    return database_url_from_env()


# -- helpers -------------------------------------------------------------------------------


class _UsageError(Exception):
    pass


def _target(
    args: argparse.Namespace, getter: DataDirGetter, url_getter: DatabaseUrlGetter
) -> Path | str:
    """The log the command works on: a SQLite path or a PostgreSQL URL (see the module doc)."""
    url = getattr(args, "database_url", None)
    if url and args.data_dir:
        raise _UsageError("give --database-url or --data-dir, not both")
    if url:
        if not is_postgres_target(url):
            raise _UsageError("--database-url must be a postgresql:// (or postgres://) URL")
        return normalise_target(url)
    if args.data_dir:
        return audit_db_path(Path(args.data_dir))
    try:
        url = url_getter()
    except StoreError as exc:
        raise _UsageError(str(exc)) from None
    if url:
        return normalise_target(url)
    return audit_db_path(Path(getter()))


def _fail(args: argparse.Namespace, message: str, status: int = EXIT_USAGE) -> int:
    print(f"authz audit {args.audit_command}: {message}", file=sys.stderr)
    return status


def _when(ts: Any) -> str:
    if isinstance(ts, int | float) and not isinstance(ts, bool):
        return datetime.fromtimestamp(ts, tz=UTC).strftime("%Y-%m-%d %H:%M:%S")
    return "" if ts is None else str(ts)


def _ref(value: Any) -> str:
    """{"type": "user", "id": "u1"} → "user:u1"."""
    if not isinstance(value, dict):
        return "" if value is None else str(value)
    kind, ident = value.get("type"), value.get("id")
    if kind and ident:
        return f"{kind}:{ident}"
    return str(ident or kind or "")


def _email(record: dict[str, Any]) -> str:
    principal = record.get("principal")
    display = principal.get("display") if isinstance(principal, dict) else None
    email = display.get("email") if isinstance(display, dict) else None
    return str(email) if email else ""


def _rules(record: dict[str, Any]) -> str:
    names = []
    for rule in record.get("matched_rules") or []:
        if isinstance(rule, dict):
            policy, rule_id = rule.get("policy"), rule.get("rule_id")
            names.append(f"{policy}/{rule_id}" if policy else str(rule_id))
    return " ".join(names)


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


TABLE_SAMPLE = 200
"""Rows a table's column widths are measured on; later rows are clipped to them."""


def _table(
    headers: Sequence[str], rows: Iterable[Sequence[str]], widths: Sequence[int]
) -> Iterator[str]:
    """The lines of a table, streamed: column widths fit the first TABLE_SAMPLE rows."""
    rows = iter(rows)
    sample = [
        [_clip(c, w) for c, w in zip(row, widths, strict=True)]
        for row in itertools.islice(rows, TABLE_SAMPLE)
    ]
    sizes = [max([len(h), *(len(r[i]) for r in sample)]) for i, h in enumerate(headers)]
    yield "  ".join(h.ljust(s) for h, s in zip(headers, sizes, strict=True)).rstrip()
    yield "  ".join("-" * s for s in sizes)
    later = ([_clip(c, w) for c, w in zip(row, sizes, strict=True)] for row in rows)
    for row in itertools.chain(sample, later):
        yield "  ".join(c.ljust(s) for c, s in zip(row, sizes, strict=True)).rstrip()


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _jsonish(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


# -- audit query ---------------------------------------------------------------------------


def cmd_query(
    args: argparse.Namespace,
    getter: DataDirGetter = default_data_dir,
    url_getter: DatabaseUrlGetter = default_database_url,
) -> int:
    try:
        records = iter_query(
            _target(args, getter, url_getter),
            since=args.since,
            until=args.until,
            principal=args.principal,
            resource=args.resource,
            app=args.app,
            action=args.action,
            effect=args.effect,
            rule=args.rule,
            kind=args.kind,
            limit=args.limit or None,
        )
        first = next(records, None)  # opens the log: a missing one is an error, not no rows
    except AuditError as exc:
        return _fail(args, str(exc), EXIT_NOT_FOUND)
    except (ValueError, _UsageError) as exc:
        return _fail(args, str(exc))
    try:
        return _print_records(args, itertools.chain([first] if first else [], records))
    except AuditError as exc:
        return _fail(args, str(exc), EXIT_NOT_FOUND)
    finally:
        records.close()


def _print_records(args: argparse.Namespace, records: Iterator[dict[str, Any]]) -> int:
    """Write the records as they come (JSON lines, CSV or a table)."""
    out = sys.stdout
    if args.format == "json":
        for record in records:
            out.write(json.dumps(record, sort_keys=True, ensure_ascii=False) + "\n")
    elif args.format == "csv":
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(CSV_COLUMNS)
        for r in records:
            principal = r.get("principal") if isinstance(r.get("principal"), dict) else {}
            resource = r.get("resource") if isinstance(r.get("resource"), dict) else {}
            time = r.get("time")
            writer.writerow(
                [
                    r.get("decision_id", ""),
                    rfc3339(time) if isinstance(time, int | float) else "",
                    r.get("kind", ""),
                    r.get("effect", ""),
                    principal.get("type", ""),
                    principal.get("id", ""),
                    _email(r),
                    r.get("action", ""),
                    resource.get("type", ""),
                    resource.get("id", ""),
                    r.get("app_id", ""),
                    _rules(r),
                    r.get("policy_revision", ""),
                    " | ".join(str(e) for e in r.get("errors") or []),
                    r.get("duration_ms", ""),
                    r.get("caller", ""),
                    r.get("request_id", ""),
                ]
            )
    else:
        first = next(records, None)
        if first is None:
            print("no decisions match", file=sys.stderr)
            return EXIT_OK
        headers = ("TIME (UTC)", "EFFECT", "KIND", "PRINCIPAL", "ACTION", "RESOURCE", "RULES")
        rows = (
            (
                _when(r.get("time")),
                str(r.get("effect", "")),
                str(r.get("kind", "")),
                _email(r) or _ref(r.get("principal")),
                str(r.get("action", "")),
                _ref(r.get("resource")),
                _rules(r) or "-",
                str(r.get("decision_id", "")),
            )
            for r in itertools.chain([first], records)
        )
        lines = _table((*headers, "DECISION ID"), rows, (19, 6, 5, 32, 28, 40, 40, 36))
        written = 0
        for line in lines:
            out.write(line + "\n")
            written += 1
        if args.limit and written - 2 == args.limit:  # (less the header and its underline)
            print(f"(showing the newest {args.limit}; use --limit to see more)", file=sys.stderr)
    return EXIT_OK


# -- audit show ----------------------------------------------------------------------------


def explain(entry: AuditEntry) -> str:
    """A decision record in words: what was decided, why, on which facts."""
    r = entry.record
    effect = str(r.get("effect", "?"))
    lines = [f"Decision {r.get('decision_id')}: {effect}"]
    time = r.get("time")
    when = rfc3339(time) if isinstance(time, int | float) else str(time)
    lines.append(f"  when:     {when} ({r.get('kind', '?')} decision, audit seq {entry.seq})")
    principal = _ref(r.get("principal")) or "(unknown)"
    email = _email(r)
    lines.append(f"  who:      {principal}" + (f" ({email})" if email else ""))
    target = _ref(r.get("resource")) or "(no resource)"
    app = f" of app {r['app_id']}" if r.get("app_id") else ""
    lines.append(f"  asked:    {r.get('action', '?')} on {target}{app}")
    asked_by = f"  caller:   {r.get('caller') or '(unknown)'}"
    if r.get("request_id"):
        asked_by += f", request id {r['request_id']}"
    lines.append(asked_by)
    lines.append(f"  policy:   revision {r.get('policy_revision') or '(unknown)'}")
    if isinstance(r.get("duration_ms"), int | float):
        lines.append(f"  took:     {r['duration_ms']:.3f} ms")

    lines.append("")
    lines.append("Why:")
    matched = [m for m in r.get("matched_rules") or [] if isinstance(m, dict)]
    denies = [m for m in matched if m.get("effect") == "DENY"]
    allows = [m for m in matched if m.get("effect") == "ALLOW"]

    def rule_line(m: dict[str, Any]) -> str:
        reason = m.get("reason") or "(no reason given)"
        return f"  - {m.get('effect')} rule {m.get('policy')}/{m.get('rule_id')}: {reason}"

    if effect == "ALLOW":
        lines.append(f"  ALLOWED: {len(allows)} allow rule(s) matched and no deny rule matched.")
        lines.extend(rule_line(m) for m in allows)
    elif denies:
        lines.append(f"  DENIED by {len(denies)} deny rule(s) (a deny overrides any allow):")
        lines.extend(rule_line(m) for m in denies)
        if allows:
            lines.append("  Allow rules that matched but were overridden:")
            lines.extend(rule_line(m) for m in allows)
    else:
        lines.append("  DENIED by default: no allow rule matched.")
    reasons = [str(x) for x in r.get("reasons") or []]
    if reasons:
        lines.append("  Reasons given to the caller:")
        lines.extend(f"  - {x}" for x in reasons)
    errors = [str(x) for x in r.get("errors") or []]
    if errors:
        lines.append("")
        lines.append(
            "Errors (an erroring deny rule counts as matched, an erroring allow rule not):"
        )
        lines.extend(f"  - {x}" for x in errors)

    lines.append("")
    lines.append("Facts used:")
    facts = r.get("input") if isinstance(r.get("input"), dict) else {}
    access = facts.get("access")
    if isinstance(access, dict):
        role = access.get("role", access.get("roles"))
        text = f"  access:    role {role!r}" if role is not None else "  access:    no role"
        age = access.get("age_seconds")
        fetched = access.get("fetched_at")
        if isinstance(age, int | float):
            text += f", fact {_age(float(age))} old"
        if isinstance(fetched, int | float):
            text += f", fetched from Heroku at {rfc3339(fetched)}"
        elif fetched:
            text += f", fetched from Heroku at {fetched}"
        lines.append(text)
        others = {k: v for k, v in access.items() if k not in ("role", "age_seconds", "fetched_at")}
        if others:
            lines.append(f"             {_jsonish(others)}")
    elif access is not None:
        lines.append(f"  access:    {_jsonish(access)}")
    else:
        lines.append("  access:    (no access fact was used)")
    for key in sorted(facts):
        if key != "access":
            lines.append(f"  {key + ':':<10} {_jsonish(facts[key])}")

    lines.append("")
    lines.append(f"Chain: seq {entry.seq}, hash {entry.hash}, previous {entry.prev_hash}")
    for path, digest in sorted(entry.parts.items()):
        lines.append(f"       {path} is stored once for its batch: shared part {digest}")
    return "\n".join(lines)


def cmd_show(
    args: argparse.Namespace,
    getter: DataDirGetter = default_data_dir,
    url_getter: DatabaseUrlGetter = default_database_url,
) -> int:
    try:
        entry = get_entry(_target(args, getter, url_getter), args.decision_id)
    except AuditError as exc:
        return _fail(args, str(exc), EXIT_NOT_FOUND)
    except _UsageError as exc:
        return _fail(args, str(exc))
    if entry is None:
        return _fail(args, f"no decision {args.decision_id} in the audit log", EXIT_NOT_FOUND)
    if args.json:
        print(json.dumps(entry.record, sort_keys=True, indent=2, ensure_ascii=False))
    else:
        print(explain(entry))
    return EXIT_OK


# -- audit verify --------------------------------------------------------------------------


def cmd_verify(
    args: argparse.Namespace,
    getter: DataDirGetter = default_data_dir,
    url_getter: DatabaseUrlGetter = default_database_url,
) -> int:
    try:
        expect = [Checkpoint.parse(text) for text in args.expect or ()]
        report = verify(_target(args, getter, url_getter), expect)
    except (AuditError, ValueError, _UsageError) as exc:
        return _fail(args, str(exc), EXIT_USAGE)
    if not report.ok:
        print(report.message, file=sys.stderr)
        return EXIT_TAMPERED
    print(report.message)
    if not expect:
        print(
            f"head: {Checkpoint(report.head_seq, report.head_hash)} (entries cut off the end, "
            "with the head moved back, are found only with --expect and a checkpoint kept "
            "elsewhere)"
        )
    return EXIT_OK


# -- audit checkpoint ----------------------------------------------------------------------


def cmd_checkpoint(
    args: argparse.Namespace,
    getter: DataDirGetter = default_data_dir,
    url_getter: DatabaseUrlGetter = default_database_url,
) -> int:
    try:
        head = checkpoint(_target(args, getter, url_getter))
    except _UsageError as exc:
        return _fail(args, str(exc))
    except AuditError as exc:
        return _fail(args, str(exc), EXIT_TAMPERED)
    print(head)
    print(
        f"keep this checkpoint outside the database; `authz audit verify --expect {head}` "
        "proves the log still holds every entry up to it, unchanged",
        file=sys.stderr,
    )
    return EXIT_OK


# -- audit prune ---------------------------------------------------------------------------


def cmd_prune(
    args: argparse.Namespace,
    getter: DataDirGetter = default_data_dir,
    url_getter: DatabaseUrlGetter = default_database_url,
) -> int:
    try:
        target = _target(args, getter, url_getter)
        seconds = parse_duration(args.older_than)
    except (ValueError, _UsageError) as exc:
        return _fail(args, str(exc))
    try:
        count = prune(target, seconds, force=args.force)
        anchor = describe_anchor(target)
    except AuditError as exc:
        return _fail(args, str(exc), EXIT_TAMPERED)
    print(f"pruned {count} decision records older than {args.older_than}")
    if anchor:
        print(anchor)
    return EXIT_OK


# -- audit stats ---------------------------------------------------------------------------


def cmd_stats(
    args: argparse.Namespace,
    getter: DataDirGetter = default_data_dir,
    url_getter: DatabaseUrlGetter = default_database_url,
) -> int:
    try:
        result = stats(_target(args, getter, url_getter), since=args.since, until=args.until)
    except AuditError as exc:
        return _fail(args, str(exc), EXIT_NOT_FOUND)
    except (ValueError, _UsageError) as exc:
        return _fail(args, str(exc))
    if args.json:
        print(json.dumps(result, sort_keys=True, indent=2))
        return EXIT_OK
    span = f"since {rfc3339(result['since'])}" if result["since"] is not None else "all time"
    if result["until"] is not None:
        span += f" until {rfc3339(result['until'])}"
    total = result["total"]
    print(f"{total} decisions ({span})")
    effects = result["by_effect"]
    print("  " + ", ".join(f"{k} {v}" for k, v in effects.items()))

    def section(title: str, counts: dict[str, int]) -> None:
        if counts:
            print(f"\n{title}:")
            width = max(len(k) for k in counts)
            for key, n in counts.items():
                print(f"  {(key or '(none)').ljust(width)}  {n}")

    section("By kind", result["by_kind"])
    section("By action", result["by_action"])
    section("By rule", result["by_rule"])
    section("By principal type", result["by_principal_type"])
    top = result["top_denied_principals"]
    if top:
        print("\nMost denied principals:")
        for row in top:
            email = f" ({row['email']})" if row["email"] else ""
            print(f"  {row['principal']}{email}  {row['count']}")
    return EXIT_OK


# -- wiring --------------------------------------------------------------------------------


def add_audit_commands(
    subparsers: argparse._SubParsersAction,  # type: ignore[type-arg]
    default_data_dir_getter: DataDirGetter = default_data_dir,
    default_database_url_getter: DatabaseUrlGetter = default_database_url,
) -> argparse.ArgumentParser:
    """Add `audit query|show|verify|checkpoint|prune|stats`; each sets func=handler(args) -> exit
    status."""
    getter = default_data_dir_getter
    url_getter = default_database_url_getter
    audit = subparsers.add_parser(
        "audit",
        help="review, verify and prune the decision audit log",
        description="Review, verify and prune the decision audit log: DATA_DIR/audit.db, or the "
        "PostgreSQL database the replicas share (--database-url, AUTHZ_DATABASE_URL or "
        "DATABASE_URL).",
    )
    commands = audit.add_subparsers(dest="audit_command", metavar="COMMAND", required=True)

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--data-dir",
        default=None,
        help="directory holding audit.db (default: $AUTHZ_DATA_DIR or ./data, unless a "
        "database URL is set)",
    )
    common.add_argument(
        "--database-url",
        default=None,
        metavar="URL",
        help="the PostgreSQL database holding the log (default: $AUTHZ_DATABASE_URL or "
        "$DATABASE_URL when set; prefer them, a URL on the command line shows its password)",
    )
    times = argparse.ArgumentParser(add_help=False)
    times.add_argument("--until", help="only decisions before this time")

    def bind(parser: argparse.ArgumentParser, handler: Callable[..., int]) -> None:
        handler_for_args: Handler = functools.partial(handler, getter=getter, url_getter=url_getter)
        parser.set_defaults(func=handler_for_args)

    q = commands.add_parser(
        "query",
        parents=[common, times],
        help="list decisions, newest first",
        description="List decisions, newest first. Times are 30m, 1h, 7d (ago) or ISO-8601.",
    )
    q.add_argument("--since", help="only decisions at or after this time (e.g. 1h, 7d)")
    q.add_argument("--principal", help="TYPE:ID or ID of the principal")
    q.add_argument("--resource", help="TYPE:ID or ID of the resource")
    q.add_argument("--app", help="Heroku app id")
    q.add_argument("--action", help="action, or a glob such as 'account.*'")
    q.add_argument("--effect", type=str.upper, choices=("ALLOW", "DENY"))
    q.add_argument("--rule", help="a matched rule: RULE_ID or POLICY/RULE_ID")
    q.add_argument("--kind", choices=("check", "sso"))
    q.add_argument("--limit", type=int, default=100, help="at most this many (0: all)")
    fmt = q.add_mutually_exclusive_group()
    fmt.add_argument(
        "--json",
        dest="format",
        action="store_const",
        const="json",
        help="JSON lines, one whole record per line",
    )
    fmt.add_argument("--csv", dest="format", action="store_const", const="csv", help="CSV")
    q.set_defaults(format="table")
    bind(q, cmd_query)

    s = commands.add_parser(
        "show",
        parents=[common],
        help="explain one decision",
        description="Explain one decision: effect, the rules and reasons, errors, facts used.",
    )
    s.add_argument("decision_id", metavar="DECISION_ID")
    s.add_argument("--json", action="store_true", help="print the stored record as JSON")
    bind(s, cmd_show)

    v = commands.add_parser(
        "verify",
        parents=[common],
        help="check the hash chain (exit 1 when tampered)",
        description="Walk the hash chain; exit 0 when intact, 1 naming the first bad entry "
        "(and every gap in seq). With --expect, also prove the log still holds a checkpoint.",
    )
    v.add_argument(
        "--expect",
        action="append",
        metavar="SEQ:HASH",
        help="a checkpoint (from `authz audit checkpoint`) the log must still hold; repeatable",
    )
    bind(v, cmd_verify)

    c = commands.add_parser(
        "checkpoint",
        parents=[common],
        help="verify, then print the head (SEQ:HASH) to keep elsewhere",
        description="Verify the chain, then print its head as SEQ:HASH. Keep it outside the "
        "database; `verify --expect SEQ:HASH` later proves nothing up to it was lost or changed.",
    )
    bind(c, cmd_checkpoint)

    p = commands.add_parser(
        "prune",
        parents=[common],
        help="delete old decisions, keeping the chain verifiable",
        description="Delete decisions older than a duration; an anchor keeps the rest verifiable.",
    )
    p.add_argument("--older-than", required=True, metavar="DURATION", help="e.g. 90d")
    p.add_argument(
        "--force", action="store_true", help="prune even if the part to delete does not verify"
    )
    bind(p, cmd_prune)

    st = commands.add_parser(
        "stats",
        parents=[common, times],
        help="count decisions by effect, action, rule and principal",
        description="Count decisions by effect, kind, action, rule and principal type.",
    )
    st.add_argument("--since", default="24h", help="start time (default: 24h)")
    st.add_argument("--json", action="store_true", help="print the counts as JSON")
    bind(st, cmd_stats)
    return audit


def main(argv: Sequence[str] | None = None) -> int:
    """Run `audit …` on its own (python -m authz.audit.commands query --since 1h)."""
    parser = argparse.ArgumentParser(prog="authz")
    add_audit_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["audit", *(sys.argv[1:] if argv is None else argv)])
    status: int = args.func(args)
    return status


if __name__ == "__main__":
    sys.exit(main())
