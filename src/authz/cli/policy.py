"""`authz policy ...`: validate (lint), test, eval, explain, replay, and `status` of a running
server. Each command parses its flags and makes one library call; every one that loads a set
goes through the one gate (authz.policy.gate), so they give the same verdict as the server.

Exit codes (ExitCode): 0 ok; 6 the set does not load; 7 a test failed; 8 rule coverage below
--min-coverage; 4 replay: decisions would flip; 2 usage; 1 a file or database cannot be read.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import yaml

from authz.cli.common import (
    ExitCode,
    UsageError,
    add_client_arguments,
    add_command,
    add_json_flag,
    connect,
    key_values,
    print_json,
    when,
)
from authz.client import as_json
from authz.policy.gate import Outcome, Verdict, judge
from authz.policy.lint import format_problem, problem_json

OUTCOME_EXIT = {
    Outcome.OK: ExitCode.OK,
    Outcome.REFUSED: ExitCode.POLICY_REFUSED,
    Outcome.TESTS_FAILED: ExitCode.TESTS_FAILED,
    Outcome.COVERAGE_LOW: ExitCode.COVERAGE_LOW,
}


def _settings(args: argparse.Namespace) -> Any:
    """Settings from the environment, with this command's flags over them."""
    from dataclasses import replace

    from authz.config import Settings

    settings = Settings.from_env()
    overrides: dict[str, Any] = {}
    if getattr(args, "data_dir", None):
        overrides["data_dir"] = Path(args.data_dir)
        overrides["database_url"] = None
    if getattr(args, "database_url", None):
        if getattr(args, "data_dir", None):
            raise UsageError("give --database-url or --data-dir, not both")
        overrides["database_url"] = args.database_url
    return replace(settings, **overrides) if overrides else settings


def _policy_dir(args: argparse.Namespace) -> Path:
    """DIR, else AUTHZ_POLICY_DIR as the server reads it (without requiring the rest of the
    server's settings, which offline commands do not need)."""
    from authz.config import Settings

    if getattr(args, "directory", None):
        return Path(args.directory)
    return Path(os.environ.get("AUTHZ_POLICY_DIR") or Settings.policy_dir)


def _strict(args: argparse.Namespace) -> bool:
    """--strict, or AUTHZ_POLICY_STRICT=on (the server's setting): one gate for all."""
    from authz.config import POLICY_STRICT_MODES, choice

    if getattr(args, "strict", False):
        return True
    return choice(os.environ, "AUTHZ_POLICY_STRICT", POLICY_STRICT_MODES, "off") == "on"


def _print_refusal(verdict: Verdict) -> None:
    for problem in verdict.problems:
        print(format_problem(problem, verdict.directory))
    print(f"{verdict.directory}: the policy set does not load; nothing was run", file=sys.stderr)


def _gated(args: argparse.Namespace, directory: Path) -> Any:
    verdict = judge(directory, strict=_strict(args))
    if verdict.policy_set is None:
        _print_refusal(verdict)
    return verdict.policy_set


# -- validate ------------------------------------------------------------------------------------


def cmd_validate(args: argparse.Namespace) -> int:
    """Print every problem as DIR/file:line[:col]: severity [rule]: message (hint: ...)."""
    directory = _policy_dir(args)
    verdict = judge(directory, strict=_strict(args))
    if args.json:
        print(json.dumps([problem_json(p) for p in verdict.problems], indent=2))
        return ExitCode.OK if verdict.ok else ExitCode.POLICY_REFUSED
    for problem in verdict.problems:
        print(format_problem(problem, directory))
    warnings = len(verdict.warnings)
    if verdict.ok and verdict.compiled is not None:
        policy_set = verdict.compiled
        catalogue = "closed" if policy_set.closed else "open"
        data = f", data: {', '.join(sorted(policy_set.data))}" if policy_set.data else ""
        print(
            f"ok: {len(policy_set.policies)} policies, {policy_set.rule_count} rules, "
            f"{len(policy_set.catalogue)} catalogued actions ({catalogue}){data}, "
            f"revision {policy_set.revision}" + (f" ({warnings} warning(s))" if warnings else "")
        )
        return ExitCode.OK
    hint = " (--strict: warnings count as errors)" if verdict.strict else ""
    print(
        f"{len(verdict.errors)} error(s), {warnings} warning(s){hint}; policy set refused",
        file=sys.stderr,
    )
    return ExitCode.POLICY_REFUSED


# -- test ----------------------------------------------------------------------------------------


def cmd_test(args: argparse.Namespace) -> int:
    from authz.policy.suites import dumps_json, format_report, junit_xml, run_suites

    report = run_suites(_policy_dir(args), args.filter, strict=_strict(args))
    if args.junit:
        try:
            Path(args.junit).write_text(junit_xml(report), encoding="utf-8")
        except OSError as exc:
            print(f"authz: cannot write {args.junit}: {exc}", file=sys.stderr)
            return ExitCode.ERROR
    if args.json:
        print(dumps_json(report, min_coverage=args.min_coverage))
    else:
        print(format_report(report, verbose=args.verbose, min_coverage=args.min_coverage))
    return OUTCOME_EXIT[report.outcome(args.min_coverage)]


# -- eval ----------------------------------------------------------------------------------------


def _type_id(text: str, flag: str) -> tuple[str, str]:
    kind, sep, ident = text.partition(":")
    if not sep or not kind or not ident:
        raise UsageError(f"{flag} takes TYPE:ID, e.g. addon:0f8e2a8c, got {text!r}")
    return kind, ident


def _request_from_args(args: argparse.Namespace) -> dict[str, Any]:
    spec: dict[str, Any] = {}
    if args.file:
        try:
            text = Path(args.file).read_text(encoding="utf-8")
            loaded = yaml.safe_load(text) if text.strip() else {}
        except OSError as exc:
            raise UsageError(f"cannot read {args.file}: {exc.strerror or exc}") from None
        except yaml.YAMLError as exc:
            raise UsageError(f"{args.file} is not JSON or YAML: {exc}") from None
        if not isinstance(loaded, dict):
            raise UsageError(f"{args.file} must hold a mapping (action, principal, ...)")
        spec.update(loaded)
    if args.action:
        spec["action"] = args.action
    if args.principal:
        kind, ident = _type_id(args.principal, "--principal")
        spec["principal"] = {"type": kind, "id": ident, **spec.get("principal", {})}
    if args.sso_user:
        spec["sso_user"] = {"id": args.sso_user}
    if args.principal_attr:
        principal = spec.setdefault("principal", {})
        principal["attributes"] = {
            **principal.get("attributes", {}),
            **key_values(args.principal_attr, "--principal-attr"),
        }
    if args.resource:
        kind, ident = _type_id(args.resource, "--resource")
        spec["resource"] = {**spec.get("resource", {}), "type": kind, "id": ident}
    if args.resource_attr:
        resource = spec.setdefault("resource", {})
        resource["attributes"] = {
            **resource.get("attributes", {}),
            **key_values(args.resource_attr, "--resource-attr"),
        }
    if args.addon_state:
        resource = spec.setdefault("resource", {})
        resource["addon"] = {**resource.get("addon", {}), "state": args.addon_state}
    if args.role or args.permission or args.no_access:
        access = spec.setdefault("access", {})
        if args.role:
            access["roles"] = args.role
        if args.permission:
            access["permissions"] = args.permission
        if args.no_access:
            access["available"] = False
    if args.context:
        spec["context"] = {**spec.get("context", {}), **key_values(args.context, "--context")}
    if args.caller:
        spec["caller"] = args.caller
    if args.now:
        spec["now"] = args.now
    return spec


def cmd_eval(args: argparse.Namespace) -> int:
    from authz.policy.evaluation import (
        RequestError,
        format_trace,
        request_input,
        trace,
        trace_json,
    )

    policy_set = _gated(args, _policy_dir(args))
    if policy_set is None:
        return ExitCode.POLICY_REFUSED
    try:
        result = trace(policy_set, request_input(_request_from_args(args)))
    except RequestError as exc:
        raise UsageError(str(exc)) from None
    if args.json:
        print_json(trace_json(result))
    else:
        print(format_trace(result))
    return ExitCode.OK if result.decision.allowed else ExitCode.DENY


# -- explain -------------------------------------------------------------------------------------


def cmd_explain(args: argparse.Namespace) -> int:
    from authz.policy.evaluation import explain_rule, format_rule_report, rule_report_json
    from authz.policy.suites import run_suites

    directory = _policy_dir(args)
    policy_set = _gated(args, directory)
    if policy_set is None:
        return ExitCode.POLICY_REFUSED
    if not any(c.rule.id == args.rule_id for c in policy_set.rules):
        ids = sorted(c.rule.id for c in policy_set.rules)
        import difflib

        close = difflib.get_close_matches(args.rule_id, ids, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        print(
            f"authz policy explain: no rule {args.rule_id!r} in {directory}{hint}", file=sys.stderr
        )
        return ExitCode.NOT_FOUND
    suite_report = run_suites(directory)
    records = _records(args, since=f"{args.days:g}d") if args.days else iter(())
    report = explain_rule(policy_set, args.rule_id, suite_report=suite_report, records=records)
    if args.json:
        print_json(rule_report_json(report))
    else:
        print(format_rule_report(report, args.days))
    return ExitCode.OK


def _records(args: argparse.Namespace, since: str | None) -> Any:
    """The recorded decisions since then, oldest first, from where Settings says the audit log
    is (SQLite or PostgreSQL); a log that does not exist yet holds none."""
    from authz.audit.errors import AuditLogNotFound
    from authz.audit.query import iter_query, parse_time

    try:
        start = parse_time(since) if since else None
    except ValueError as exc:
        raise UsageError(f"--since: {exc}") from None
    target = _settings(args).audit_target
    records = iter_query(target, since=start, limit=None, oldest_first=True)

    def guarded() -> Any:
        try:
            yield from records
        except AuditLogNotFound as exc:
            print(f"note: {exc}; no recorded decisions to count", file=sys.stderr)

    return guarded()


# -- replay --------------------------------------------------------------------------------------


def cmd_replay(args: argparse.Namespace) -> int:
    from authz.audit import describe_target
    from authz.audit.errors import AuditError
    from authz.audit.query import iter_query, parse_time
    from authz.policy.replay import format_report, replay, report_json

    try:
        since = parse_time(args.since) if args.since else None
    except ValueError as exc:
        raise UsageError(f"--since: {exc}") from None
    candidate = _gated(args, Path(args.candidate))
    if candidate is None:
        print("the candidate policy set does not load; nothing replayed", file=sys.stderr)
        return ExitCode.POLICY_REFUSED
    target = _settings(args).audit_target
    try:
        records = iter_query(target, since=since, limit=None, oldest_first=True)
        report = replay(records, candidate, source=describe_target(target), since=since)
    except (AuditError, OSError) as exc:
        print(f"authz: {exc}", file=sys.stderr)
        return ExitCode.ERROR
    if args.json:
        print(json.dumps(report_json(report), indent=2))
    else:
        print(format_report(report))
    return ExitCode.FLIPS if report.flips else ExitCode.OK


# -- status --------------------------------------------------------------------------------------


def cmd_status(args: argparse.Namespace) -> int:
    with connect(args) as authz:
        status = authz.policy_status()
    if args.json:
        print_json(as_json(status))
        return ExitCode.OK
    print(
        f"serving revision {status.policy_revision} from {status.policy_dir} "
        f"({status.policy_count} policies, {status.rule_count} rules), "
        f"loaded {when(status.loaded_at)}"
    )
    if status.last_refused_at is not None:
        print(f"last refused change at {when(status.last_refused_at)}:")
        for error in status.last_refused_errors:
            print(f"  {error}")
    else:
        print("no change refused since start")
    return ExitCode.OK


# -- the parser ----------------------------------------------------------------------------------


def _percent(text: str) -> float:
    try:
        value = float(text.rstrip("%"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a percentage") from None
    if not 0 <= value <= 100:
        raise argparse.ArgumentTypeError("a percentage is between 0 and 100")
    return value


def _directory_and_strict(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "directory", nargs="?", help="policy directory (default AUTHZ_POLICY_DIR or ./policies)"
    )
    parser.add_argument(
        "--strict",
        action="store_true",
        help="warnings refuse the set too (as AUTHZ_POLICY_STRICT=on does for the server)",
    )


def _audit_location(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-dir", help="read the SQLite audit.db here (default: where Settings say)"
    )
    parser.add_argument(
        "--database-url", help="read the PostgreSQL audit log here (default: where Settings say)"
    )


def register(commands: Any) -> None:
    policy = add_command(
        commands,
        "policy",
        help="work on policy files",
        example="authz policy test policies",
    )
    group = policy.add_subparsers(dest="policy_command", metavar="COMMAND", required=True)

    for name, text in (
        ("validate", "load, type-check and lint a policy directory"),
        ("lint", "the same as validate"),
    ):
        parser = add_command(
            group,
            name,
            help=text,
            example=f"authz policy {name} policies --strict",
            func=cmd_validate,
        )
        _directory_and_strict(parser)
        parser.add_argument("--json", action="store_true", help="print problems as JSON")

    test = add_command(
        group,
        "test",
        help="run the policy test suites in DIR/tests/*_test.yaml",
        example="authz policy test policies --min-coverage 100 --junit policy-tests.xml",
        func=cmd_test,
    )
    _directory_and_strict(test)
    test.add_argument("--filter", help="only tests whose suite, test or file name contains this")
    test.add_argument("--junit", metavar="FILE", help="also write JUnit XML to FILE")
    test.add_argument(
        "--min-coverage",
        type=_percent,
        metavar="N",
        help="exit 8 when fewer than N %% of the rules were exercised",
    )
    test.add_argument("--json", action="store_true", help="print the report as JSON")
    test.add_argument("-v", "--verbose", action="store_true", help="list passing checks too")

    evaluate = add_command(
        group,
        "eval",
        help="decide one request offline and show every rule tried",
        example="""
            authz policy eval --sso-user U1 --resource addon:R1 --role owner \\
                --action dashboard.view
            authz policy eval --file request.yaml --json""",
        func=cmd_eval,
    )
    evaluate.add_argument("directory", nargs="?", help="policy directory")
    evaluate.add_argument("--file", help="the request as JSON or YAML (flags override it)")
    evaluate.add_argument("--action", help="the action")
    evaluate.add_argument("--principal", metavar="TYPE:ID", help="a principal named directly")
    evaluate.add_argument("--sso-user", metavar="USER_ID", help="a Heroku user after SSO")
    evaluate.add_argument("--principal-attr", action="append", metavar="KEY=VALUE")
    evaluate.add_argument("--resource", metavar="TYPE:ID", help="the resource")
    evaluate.add_argument("--resource-attr", action="append", metavar="KEY=VALUE")
    evaluate.add_argument("--addon-state", help="the add-on's state (default provisioned)")
    evaluate.add_argument("--role", action="append", help="a role on the app (repeat)")
    evaluate.add_argument("--permission", action="append", help="an app permission (repeat)")
    evaluate.add_argument("--no-access", action="store_true", help="the access list is unavailable")
    evaluate.add_argument("--context", action="append", metavar="KEY=VALUE")
    evaluate.add_argument("--caller", help="the calling service's id")
    evaluate.add_argument("--now", help="the decision's time, RFC 3339 (default now)")
    evaluate.add_argument("--strict", action="store_true", help="warnings refuse the set too")
    add_json_flag(evaluate, "the decision and every rule tried")

    explain = add_command(
        group,
        "explain",
        help="where a rule is, what it covers, its tests and the decisions it made",
        example="authz policy explain app-members-use-addon --days 7",
        func=cmd_explain,
    )
    explain.add_argument("rule_id", help="the rule's id")
    explain.add_argument("directory", nargs="?", help="policy directory")
    explain.add_argument(
        "--days",
        type=float,
        default=7.0,
        help="recorded decisions of the last N days (default 7; 0: none)",
    )
    explain.add_argument("--strict", action="store_true", help="warnings refuse the set too")
    _audit_location(explain)
    add_json_flag(explain, "the report")

    replay = add_command(
        group,
        "replay",
        help="re-decide recorded decisions with a candidate policy set",
        example="authz policy replay --candidate ./policies-next --since 7d",
        func=cmd_replay,
    )
    replay.add_argument("--candidate", required=True, help="the candidate policy directory")
    replay.add_argument(
        "--since", help="only decisions since then: 30m, 24h, 7d or an ISO-8601 time (default: all)"
    )
    replay.add_argument("--strict", action="store_true", help="warnings refuse the candidate too")
    _audit_location(replay)
    replay.add_argument("--json", action="store_true", help="print the report as JSON")

    status = add_command(
        group,
        "status",
        help="ask a running server which policy revision serves",
        example="authz policy status --server 127.0.0.1:50051",
        func=cmd_status,
    )
    add_client_arguments(status)
    add_json_flag(status, "the status")
