"""`authz audit query|show|verify|checkpoint|prune|stats`: each parses its flags and makes one
library call (authz.audit); they write the output and choose the exit code.

Which log: `Settings.from_env()` says (`audit_target`: the PostgreSQL database of
AUTHZ_DATABASE_URL / DATABASE_URL, which the replicas share, else AUTHZ_DATA_DIR/audit.db), as it
does for `authz serve`; ``--database-url`` or ``--data-dir`` override it for one command.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from authz.cli.common import ExitCode, UsageError, add_command, set_example

EXAMPLES = {
    "query": "authz audit query --since 1h --effect DENY",
    "show": "AUTHZ_DATA_DIR=data/dev authz audit show 01927f6e-8f1c-7b3a-9d2e-4c5b6a7d8e9f",
    "verify": 'authz audit verify --expect "$(tail -n 1 checkpoints.txt)"',
    "checkpoint": "authz audit checkpoint >> /secure/elsewhere/authz-checkpoints",
    "prune": "authz audit prune --older-than 90d",
    "stats": "authz audit stats --since 24h --json",
}
AUDIT_EXAMPLE = "authz audit query --since 1h"
TABLE_LIMIT = 100
"""Rows a table shows unless --limit says otherwise (exports have no default limit)."""


def target(args: argparse.Namespace) -> Path | str:
    """The log the command works on: the settings' audit_target, or the flag's."""
    from authz.config import Settings
    from authz.store import is_postgres_url

    url, data_dir = args.database_url, args.data_dir
    if url and data_dir:
        raise UsageError("give --database-url or --data-dir, not both")
    if url and not is_postgres_url(url):
        raise UsageError("--database-url must be a postgresql:// (or postgres://) URL")
    settings = Settings.from_env()  # ConfigError: main() says what to fix and exits USAGE
    if url:
        settings = replace(settings, database_url=url)
    elif data_dir:
        settings = replace(settings, data_dir=Path(data_dir), database_url=None)
    return settings.audit_target


def fail(args: argparse.Namespace, message: str, code: ExitCode) -> ExitCode:
    print(f"authz audit {args.audit_command}: {message}", file=sys.stderr)
    return code


def failure(args: argparse.Namespace, exc: Exception) -> ExitCode:
    """The exit code and message for what the library raised."""
    from authz.audit import AuditLogNotFound, AuditTampered, AuditUnavailable

    if isinstance(exc, AuditLogNotFound):
        return fail(args, str(exc), ExitCode.NOT_FOUND)
    if isinstance(exc, AuditTampered):
        return fail(args, str(exc), ExitCode.TAMPERED)
    if isinstance(exc, AuditUnavailable):
        return fail(args, str(exc), ExitCode.ERROR)
    if isinstance(exc, ValueError | UsageError):
        return fail(args, str(exc), ExitCode.USAGE)
    return fail(args, str(exc), ExitCode.ERROR)


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


# -- audit query ---------------------------------------------------------------------------


def cmd_query(args: argparse.Namespace) -> int:
    from authz.audit import AuditError, iter_query

    limit = args.limit if args.limit is not None else (TABLE_LIMIT if args.format == "table" else 0)
    try:
        records = iter_query(
            target(args),
            since=args.since,
            until=args.until,
            principal=args.principal,
            resource=args.resource,
            app=args.app,
            action=args.action,
            effect=args.effect,
            rule=args.rule,
            kind=args.kind,
            limit=limit or None,
        )
        first = next(records, None)  # opens the log: a missing one is an error, not no rows
    except (AuditError, ValueError, UsageError) as exc:
        return failure(args, exc)
    try:
        return print_records(args, itertools.chain([first] if first else [], records), limit)
    except AuditError as exc:
        return failure(args, exc)
    finally:
        records.close()


def print_records(args: argparse.Namespace, records: Iterator[dict[str, Any]], limit: int) -> int:
    """Write the records as they come (JSON lines, CSV or a table)."""
    from authz.audit.explain import email_of, ref, rules_of, when
    from authz.audit.export import write_csv, write_json_lines

    if args.format == "json":
        write_json_lines(records, sys.stdout)
        return ExitCode.OK
    if args.format == "csv":
        write_csv(records, sys.stdout)
        return ExitCode.OK
    first = next(records, None)
    if first is None:
        print("no decisions match", file=sys.stderr)
        return ExitCode.OK
    headers = ("TIME (UTC)", "EFFECT", "KIND", "PRINCIPAL", "ACTION", "RESOURCE", "RULES")
    rows = (
        (
            when(r.get("time")),
            str(r.get("effect", "")),
            str(r.get("kind", "")),
            email_of(r) or ref(r.get("principal")),
            str(r.get("action", "")),
            ref(r.get("resource")),
            rules_of(r) or "-",
            str(r.get("decision_id", "")),
        )
        for r in itertools.chain([first], records)
    )
    written = 0
    for line in _table((*headers, "DECISION ID"), rows, (19, 6, 5, 32, 28, 40, 40, 36)):
        sys.stdout.write(line + "\n")
        written += 1
    if limit and written - 2 == limit:  # (less the header and its underline)
        print(f"(showing the newest {limit}; use --limit to see more, 0 for all)", file=sys.stderr)
    return ExitCode.OK


# -- audit show, verify, checkpoint, prune, stats ----------------------------------------------


def cmd_show(args: argparse.Namespace) -> int:
    from authz.audit import AuditError, get_entry
    from authz.audit.explain import explain

    try:
        entry = get_entry(target(args), args.decision_id)
    except (AuditError, UsageError) as exc:
        return failure(args, exc)
    if entry is None:
        return fail(args, f"no decision {args.decision_id} in the audit log", ExitCode.NOT_FOUND)
    if args.json:
        print(json.dumps(entry.record, sort_keys=True, indent=2, ensure_ascii=False))
    else:
        print(explain(entry))
    return ExitCode.OK


def cmd_verify(args: argparse.Namespace) -> int:
    from authz.audit import AuditError, Checkpoint, verify

    try:
        expect = [Checkpoint.parse(text) for text in args.expect or ()]
        report = verify(target(args), expect)
    except (AuditError, ValueError, UsageError) as exc:
        return failure(args, exc)
    if not report.ok:
        print(report.message, file=sys.stderr)
        return ExitCode.TAMPERED
    print(report.message)
    if not expect:
        print(
            f"head: {Checkpoint(report.head_seq, report.head_hash)} (entries cut off the end, "
            "with the head moved back, are found only with --expect and a checkpoint kept "
            "elsewhere)"
        )
    return ExitCode.OK


def cmd_checkpoint(args: argparse.Namespace) -> int:
    from authz.audit import AuditError, checkpoint

    try:
        head = checkpoint(target(args))
    except (AuditError, UsageError) as exc:
        return failure(args, exc)
    print(head)
    print(
        f"keep this checkpoint outside the database; `authz audit verify --expect {head}` "
        "proves the log still holds every entry up to it, unchanged",
        file=sys.stderr,
    )
    return ExitCode.OK


def cmd_prune(args: argparse.Namespace) -> int:
    from authz.audit import AuditError, parse_duration, prune
    from authz.audit.chain import describe_anchor

    try:
        where = target(args)
        seconds = parse_duration(args.older_than)
        count = prune(where, seconds, force=args.force)
        anchor = describe_anchor(where)
    except (AuditError, ValueError, UsageError) as exc:
        return failure(args, exc)
    print(f"pruned {count} decision records older than {args.older_than}")
    if anchor:
        print(anchor)
    return ExitCode.OK


def cmd_stats(args: argparse.Namespace) -> int:
    from authz.audit import AuditError, stats
    from authz.clock import rfc3339

    try:
        result = stats(target(args), since=args.since, until=args.until)
    except (AuditError, ValueError, UsageError) as exc:
        return failure(args, exc)
    if args.json:
        print(json.dumps(result, sort_keys=True, indent=2))
        return ExitCode.OK
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
    return ExitCode.OK


# -- wiring --------------------------------------------------------------------------------


def register(commands: Any) -> None:
    audit = add_command(
        commands,
        "audit",
        help="review, verify and prune the decision audit log",
        description="Review, verify and prune the decision audit log: AUTHZ_DATA_DIR/audit.db, or "
        "the PostgreSQL database the replicas share (AUTHZ_DATABASE_URL or DATABASE_URL), as "
        "`authz serve` finds it; --database-url or --data-dir name another.",
        example=AUDIT_EXAMPLE,
    )
    group = audit.add_subparsers(dest="audit_command", metavar="COMMAND", required=True)

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

    q = group.add_parser(
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
    q.add_argument(
        "--limit",
        type=int,
        default=None,
        help=f"at most this many (0: all; default {TABLE_LIMIT} for the table, all for --json "
        "and --csv)",
    )
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

    s = group.add_parser(
        "show",
        parents=[common],
        help="explain one decision",
        description="Explain one decision: effect, the rules and reasons, errors, facts used.",
    )
    s.add_argument("decision_id", metavar="DECISION_ID")
    s.add_argument("--json", action="store_true", help="print the stored record as JSON")
    bind(s, cmd_show)

    v = group.add_parser(
        "verify",
        parents=[common],
        help="check the hash chain (exit 9 when tampered)",
        description="Walk the hash chain; exit 0 when intact, 6 naming the first bad entry "
        "(and every gap in seq). With --expect, also prove the log still holds a checkpoint.",
    )
    v.add_argument(
        "--expect",
        action="append",
        metavar="SEQ:HASH",
        help="a checkpoint (from `authz audit checkpoint`) the log must still hold; repeatable",
    )
    bind(v, cmd_verify)

    c = group.add_parser(
        "checkpoint",
        parents=[common],
        help="verify, then print the head (SEQ:HASH) to keep elsewhere",
        description="Verify the chain, then print its head as SEQ:HASH. Keep it outside the "
        "database; `verify --expect SEQ:HASH` later proves nothing up to it was lost or changed.",
    )
    bind(c, cmd_checkpoint)

    p = group.add_parser(
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

    st = group.add_parser(
        "stats",
        parents=[common, times],
        help="count decisions by effect, action, rule and principal",
        description="Count decisions by effect, kind, action, rule and principal type.",
    )
    st.add_argument("--since", default="24h", help="start time (default: 24h)")
    st.add_argument("--json", action="store_true", help="print the counts as JSON")
    bind(st, cmd_stats)


def bind(parser: argparse.ArgumentParser, handler: Any) -> None:
    parser.set_defaults(func=handler)
    set_example(parser, EXAMPLES[handler.__name__.removeprefix("cmd_")])
