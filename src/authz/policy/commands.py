"""`authz policy test | lint | replay` (and `validate`): thin shells over testing, lint, replay.

    from authz.policy.commands import add_policy_commands, cmd_validate
    add_policy_commands(policy_subparsers)   # adds test, lint and replay; each sets func

Exit codes: 0 ok; 1 failures, errors or coverage below --min-coverage; 4 when replay finds
decisions that would flip.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

EXIT_OK, EXIT_FAIL, EXIT_FLIPS = 0, 1, 4


def _policy_dir(value: str | None) -> Path:
    return Path(value or os.environ.get("AUTHZ_POLICY_DIR") or "policies")


def _percent(text: str) -> float:
    try:
        value = float(text.rstrip("%"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a percentage") from None
    if not 0 <= value <= 100:
        raise argparse.ArgumentTypeError("a percentage is between 0 and 100")
    return value


def add_policy_commands(policy_subparsers: Any) -> None:
    """Add `test`, `lint` and `replay` to the `authz policy` subparser group."""
    test = policy_subparsers.add_parser(
        "test", help="run the policy test suites in DIR/tests/*_test.yaml"
    )
    test.add_argument("directory", nargs="?", help="policy directory (default ./policies)")
    test.add_argument("--filter", help="only tests whose suite, test or file name contains this")
    test.add_argument("--junit", metavar="FILE", help="also write JUnit XML to FILE")
    test.add_argument(
        "--min-coverage",
        type=_percent,
        metavar="N",
        help="fail when fewer than N %% of the rules were exercised",
    )
    test.add_argument("--json", action="store_true", help="print the report as JSON")
    test.add_argument("-v", "--verbose", action="store_true", help="list passing checks too")
    test.set_defaults(func=cmd_test)

    lint = policy_subparsers.add_parser("lint", help="load, type-check and lint a policy directory")
    add_validate_arguments(lint)
    lint.set_defaults(func=cmd_validate)

    replay = policy_subparsers.add_parser(
        "replay", help="re-decide recorded decisions with a candidate policy set"
    )
    replay.add_argument("--candidate", required=True, help="the candidate policy directory")
    replay.add_argument(
        "--since", help="only decisions since then: 30m, 24h, 7d or an ISO-8601 time (default: all)"
    )
    replay.add_argument(
        "--data-dir", help="data directory holding audit.db (default AUTHZ_DATA_DIR)"
    )
    replay.add_argument("--json", action="store_true", help="print the report as JSON")
    replay.set_defaults(func=cmd_replay)


def add_validate_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments `lint` and `validate` share: [DIR] [--strict] [--json]."""
    parser.add_argument("directory", nargs="?", help="policy directory (default ./policies)")
    parser.add_argument("--strict", action="store_true", help="warnings fail too")
    parser.add_argument("--json", action="store_true", help="print problems as JSON")


def cmd_validate(args: argparse.Namespace) -> int:
    """Print every problem as DIR/file:line[:col]: severity [rule]: message (hint: ...)."""
    from authz.policy.lint import format_problem, lint_report, problem_json

    directory = _policy_dir(getattr(args, "directory", None))
    strict = bool(getattr(args, "strict", False))
    try:
        report = lint_report(directory)
    except Exception as exc:  # never a traceback: say what failed, and that nothing loaded
        print(f"authz: {directory}: could not be validated ({type(exc).__name__}: {exc})")
        print("policy set refused", file=sys.stderr)
        return EXIT_FAIL
    ok = report.ok(strict=strict)
    if getattr(args, "json", False):
        print(json.dumps([problem_json(p) for p in report.problems], indent=2))
        return EXIT_OK if ok else EXIT_FAIL
    for problem in report.problems:
        print(format_problem(problem, directory))
    errors, warnings = len(report.errors), len(report.warnings)
    if ok and report.policy_set is not None:
        policy_set = report.policy_set
        catalogue = "closed" if policy_set.closed else "open"
        data = f", data: {', '.join(sorted(policy_set.data))}" if policy_set.data else ""
        print(
            f"ok: {len(policy_set.policies)} policies, {policy_set.rule_count} rules, "
            f"{len(policy_set.catalogue)} catalogued actions ({catalogue}){data}, "
            f"revision {policy_set.revision}" + (f" ({warnings} warning(s))" if warnings else "")
        )
        return EXIT_OK
    if errors:
        print(f"{errors} error(s), {warnings} warning(s); policy set refused", file=sys.stderr)
    else:
        print(f"{warnings} warning(s); --strict makes warnings fail", file=sys.stderr)
    return EXIT_FAIL


def cmd_test(args: argparse.Namespace) -> int:
    from authz.policy.suites import dumps_json, format_report, junit_xml, run_suites

    directory = _policy_dir(getattr(args, "directory", None))
    report = run_suites(directory, getattr(args, "filter", None))
    min_coverage = getattr(args, "min_coverage", None)
    junit = getattr(args, "junit", None)
    if junit:
        try:
            Path(junit).write_text(junit_xml(report), encoding="utf-8")
        except OSError as exc:
            print(f"authz: cannot write {junit}: {exc}", file=sys.stderr)
            return EXIT_FAIL
    if getattr(args, "json", False):
        print(dumps_json(report, min_coverage=min_coverage))
    else:
        print(
            format_report(
                report, verbose=bool(getattr(args, "verbose", False)), min_coverage=min_coverage
            )
        )
    return EXIT_OK if report.ok(min_coverage) else EXIT_FAIL


def cmd_replay(args: argparse.Namespace) -> int:
    from authz.audit.errors import AuditError
    from authz.audit.query import parse_time
    from authz.audit.schema import audit_db_path
    from authz.policy.lint import format_problem
    from authz.policy.load import PolicyError
    from authz.policy.replay import format_report, replay, report_json

    data_dir = Path(getattr(args, "data_dir", None) or os.environ.get("AUTHZ_DATA_DIR") or "data")
    candidate = Path(args.candidate)
    since_text = getattr(args, "since", None)
    try:
        since = parse_time(since_text) if since_text else None
    except ValueError as exc:
        print(f"authz: --since: {exc}", file=sys.stderr)
        return EXIT_FAIL
    try:
        report = replay(audit_db_path(data_dir), candidate, since)
    except PolicyError as exc:
        for problem in exc.problems:
            print(format_problem(problem, candidate))
        print("the candidate policy set does not load; nothing replayed", file=sys.stderr)
        return EXIT_FAIL
    except (AuditError, OSError) as exc:
        print(f"authz: {exc}", file=sys.stderr)
        return EXIT_FAIL
    if getattr(args, "json", False):
        print(json.dumps(report_json(report), indent=2))
    else:
        print(format_report(report))
    return EXIT_FLIPS if report.flips else EXIT_OK
