"""Policy test suites: shipped suites pass at full coverage; failures explain themselves."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from textwrap import dedent
from xml.etree import ElementTree as ET

import pytest

from authz.cli.common import ExitCode
from authz.cli.main import main
from authz.policy.suites import format_report, junit_xml, run_suites
from tests.conftest import SHIPPED_POLICIES

PolicyDir = Callable[[dict[str, str]], Path]

POLICY = """
name: docs
actions:
  doc.read: read
  doc.write: write
  doc.delete: delete
  addon.read_data: read
rules:
  - id: readers-read
    effect: allow
    actions: [doc.read]
    when: principal.attributes.role == "reader"
    reason: readers read
  - id: nobody-deletes
    effect: deny
    actions: [doc.delete]
    reason: documents are never deleted
  - id: addon-sso-only
    effect: deny
    actions: ["addon.*"]
    resource_types: [addon]
    when: principal.auth.method != "heroku_sso"
    reason: add-ons need SSO
  - id: writers-write
    effect: allow
    actions: [doc.write]
    when: principal.attributes.role == "writer"
    reason: writers write
"""

SUITE = """
name: docs-suite
now: "2025-06-01T12:00:00Z"
principals:
  rita: {type: user, id: u-rita, attributes: {role: reader}}
resources:
  doc1: {type: doc, id: d1}
tests:
  - name: readers read
    principal: rita
    resource: doc1
    expect:
      doc.read: allow
      doc.delete: {effect: deny, rule: nobody-deletes}
"""


def suite_dir(policy_dir: PolicyDir, suites: dict[str, str], policy: str = POLICY) -> Path:
    directory = policy_dir({"docs.yaml": policy})
    (directory / "tests").mkdir()
    for name, text in suites.items():
        (directory / "tests" / name).write_text(dedent(text).lstrip())
    return directory


def test_shipped_suites_pass_with_full_coverage() -> None:
    report = run_suites(SHIPPED_POLICIES)
    assert report.problems == []
    assert report.failures == [], format_report(report)
    assert report.rule_coverage == 100.0
    assert report.condition_coverage == 100.0
    assert report.ok(min_coverage=100)
    assert {s.name for s in report.suites} == {"sso-only", "app-ownership", "sso-token-kind"}
    # Every mission rule is the deciding rule of at least one check.
    deciding = {rule for r in report.results for rule in r.expected.rules}
    assert deciding >= {
        "app-members-use-addon",
        "access-list-unavailable",
        "access-list-stale",
        "addon-not-provisioned",
        "heroku-user-requires-sso",
        "session-bound-to-its-addon",
        "no-password-login",
        "sso-users-never-change-authentication",
        "sensitive-actions-need-a-sha256-login",
    }


def test_coverage_counts_candidates_and_condition_outcomes(policy_dir: PolicyDir) -> None:
    report = run_suites(suite_dir(policy_dir, {"docs_test.yaml": SUITE}))
    assert report.failures == [] and report.problems == []
    coverage = report.coverage
    # readers-read: a candidate, condition only ever true.
    assert coverage["readers-read"].exercised
    assert coverage["readers-read"].outcomes == {"true"}
    assert coverage["readers-read"].missing() == ["never false"]
    # nobody-deletes: no condition, matched once.
    assert coverage["nobody-deletes"].fully_covered
    assert coverage["nobody-deletes"].matched == 1
    # addon-sso-only and writers-write were never candidates.
    assert not coverage["addon-sso-only"].exercised
    assert not coverage["writers-write"].exercised
    assert report.rule_coverage == 50.0
    assert report.condition_coverage == 0.0  # of the three rules with conditions, none both ways
    assert report.ok(min_coverage=50)
    assert not report.ok(min_coverage=60)
    text = format_report(report, min_coverage=60)
    assert "rule coverage 50.0 % (2/4 rules exercised)" in text
    assert "not exercised: docs/addon-sso-only" in text
    assert "condition never false: docs/readers-read" in text
    assert "FAIL rule coverage 50.0 % is below 60 %" in text


def test_a_rule_filtered_out_by_resource_type_is_not_exercised(policy_dir: PolicyDir) -> None:
    suite = SUITE.replace(
        "      doc.read: allow\n", "      doc.read: allow\n      addon.read_data: deny\n"
    )
    report = run_suites(suite_dir(policy_dir, {"docs_test.yaml": suite}))
    assert report.failures == []
    assert not report.coverage["addon-sso-only"].exercised  # resource doc1 is not an addon
    addon_suite = suite.replace("doc1: {type: doc, id: d1}", "doc1: {type: addon, id: a1}")
    report = run_suites(suite_dir(policy_dir, {"docs_test.yaml": addon_suite}))
    assert report.coverage["addon-sso-only"].outcomes == {"true"}


def test_a_failing_suite_explains_expected_got_rules_and_reasons(policy_dir: PolicyDir) -> None:
    suite = SUITE + (
        "  - name: readers write too (wrong)\n"
        "    principal: rita\n"
        "    resource: doc1\n"
        "    expect:\n"
        "      doc.write: allow\n"
        "      doc.read: {effect: allow, rule: writers-write}\n"
    )
    directory = suite_dir(policy_dir, {"docs_test.yaml": suite})
    report = run_suites(directory)
    assert [(r.test, r.action) for r in report.failures] == [
        ("readers write too (wrong)", "doc.write"),
        ("readers write too (wrong)", "doc.read"),
    ]
    text = format_report(report)
    assert (
        f"FAIL docs-suite / readers write too (wrong) [doc.write]  "
        f"({directory}/tests/docs_test.yaml:18)"
    ) in text
    assert "    expected ALLOW, got DENY\n" in text
    assert "    principal rita (user:u-rita), resource doc1 (doc:d1)\n" in text
    assert "    expected  ALLOW\n    got       DENY\n    matched   (no rule)\n" in text
    assert "    reason    no allow rule matched action 'doc.write' (default deny)" in text
    assert (
        "    ALLOW as expected, but not by rule writers-write (decided by docs/readers-read)"
    ) in text
    assert "    matched   allow docs/readers-read: readers read" in text
    assert "4 checks: 2 passed, 2 failed" in text
    assert not report.ok()


def test_cel_errors_are_shown_in_a_failure(policy_dir: PolicyDir) -> None:
    policy = POLICY.replace(
        'principal.attributes.role == "reader"', "principal.attributes.level > 3"
    )
    report = run_suites(suite_dir(policy_dir, {"docs_test.yaml": SUITE}, policy))
    [failure] = report.failures
    assert "docs/readers-read:" in failure.decision.errors[0]
    assert "    error     docs/readers-read: " in format_report(report)
    assert report.coverage["readers-read"].outcomes == {"error"}


def test_default_deny_expectation(policy_dir: PolicyDir) -> None:
    suite = SUITE.replace(
        "doc.read: allow", "doc.read: allow\n      doc.write: {effect: deny, by_default: true}"
    )
    suite = suite.replace(
        "doc.delete: {effect: deny, rule: nobody-deletes}",
        "doc.delete: {effect: deny, by_default: true}",
    )
    report = run_suites(suite_dir(policy_dir, {"docs_test.yaml": suite}))
    assert [(r.action, r.failure) for r in report.failures] == [
        ("doc.delete", "expected a default deny, but rule docs/nobody-deletes denied")
    ]


def test_sessions_and_access_facts_are_built_like_the_server_does(
    policy_dir: PolicyDir,
) -> None:
    policy = """
    name: facts
    actions: {dashboard.view: view}
    rules:
      - id: exact-facts
        effect: allow
        actions: [dashboard.view]
        when: >-
          principal.auth.method == "heroku_sso" && principal.auth.resource_id == resource.id
          && timestamp(principal.auth.issued_at) == now
          && access.available && access.app_id == "app-1" && access.user_id == principal.id
          && access.role == "owner" && access.has_role && access.team_role == "admin"
          && access.age_seconds == 360.0
          && timestamp(access.fetched_at) == now - duration("360s")
          && resource.addon.state == "provisioned" && context.ticket == "T-1"
          && caller.id == "web"
        reason: facts as the server builds them
    """
    suite = """
    name: facts
    now: 2025-06-01T12:00:00Z
    principals:
      u: {type: heroku_user, id: user-1, session: {resource: a}}
    resources:
      a: {type: addon, id: res-1, addon: {app_id: app-1}}
    access:
      owner: {roles: [owner, team_admin], fetched_at: "2025-06-01T11:54:00Z"}
    tests:
      - name: all facts
        principal: u
        resource: a
        access: owner
        context: {ticket: T-1}
        caller: web
        expect: {dashboard.view: allow}
    """
    report = run_suites(suite_dir(policy_dir, {"facts_test.yaml": suite}, dedent(policy)))
    assert report.problems == [] and report.failures == [], format_report(report)


def test_suite_mistakes_are_reported_with_file_and_line(policy_dir: PolicyDir) -> None:
    broken = SUITE + (
        "  - name: unknown names\n"
        "    principal: nobody\n"
        "    resource: doc1\n"
        "    expect: {doc.read: allow}\n"
        "  - name: unknown rule\n"
        "    principal: rita\n"
        "    resource: doc1\n"
        "    expect: {doc.read: {effect: allow, rule: no-such-rule}}\n"
        "  - name: bad effect\n"
        "    principal: rita\n"
        "    resource: doc1\n"
        "    expect: {doc.read: maybe}\n"
    )
    report = run_suites(suite_dir(policy_dir, {"docs_test.yaml": broken}))
    problems = [str(p) for p in report.problems]
    assert problems[0].startswith("tests/docs_test.yaml:15: error: test 'unknown names' names ")
    assert "unknown principal 'nobody' (hint: declared: rita)" in problems[0]
    assert problems[1].startswith("tests/docs_test.yaml:21: error: expectation names rule ")
    assert problems[2].startswith("tests/docs_test.yaml:25: error: expected effect 'maybe'")
    # The good test still ran, but the run fails.
    assert len(report.results) == 2 and not report.failures
    assert not report.ok()


def test_duplicate_keys_and_yaml_errors(policy_dir: PolicyDir) -> None:
    duplicate = SUITE.replace(
        "      doc.read: allow\n", "      doc.read: allow\n      doc.read: deny\n"
    )
    report = run_suites(
        suite_dir(policy_dir, {"dup_test.yaml": duplicate, "bad_test.yaml": "name: [unclosed\n"})
    )
    problems = [str(p) for p in report.problems]
    assert any(p.startswith("tests/bad_test.yaml:2: error: YAML syntax error") for p in problems)
    assert "tests/dup_test.yaml:13: error: key 'doc.read' appears twice" in problems[-1]


def test_filter_and_no_match(policy_dir: PolicyDir) -> None:
    directory = suite_dir(policy_dir, {"docs_test.yaml": SUITE})
    assert len(run_suites(directory, filter="READERS").results) == 2
    report = run_suites(directory, filter="nothing-like-this")
    assert report.results == []
    assert "no test matched the filter" in report.problems[0].message
    assert not report.ok()


def test_shipped_filter_runs_one_suite() -> None:
    report = run_suites(SHIPPED_POLICIES, filter="stale")
    assert {r.test for r in report.results} == {
        "stale access facts (301 s) authorize nobody, not even the owner",
        "access facts fetched six minutes before now are stale",
    }
    assert report.ok()


def test_junit_xml(policy_dir: PolicyDir) -> None:
    suite = SUITE.replace("doc.read: allow", "doc.read: deny")
    report = run_suites(suite_dir(policy_dir, {"docs_test.yaml": suite}))
    root = ET.fromstring(junit_xml(report))
    assert (root.get("tests"), root.get("failures"), root.get("errors")) == ("2", "1", "0")
    [testsuite] = root.findall("testsuite")
    assert testsuite.get("name") == "docs-suite"
    cases = testsuite.findall("testcase")
    assert [c.get("name") for c in cases] == [
        "readers read [doc.read]",
        "readers read [doc.delete]",
    ]
    failure = cases[0].find("failure")
    assert failure is not None
    assert failure.get("message") == "expected DENY, got ALLOW"
    assert "matched   allow docs/readers-read: readers read" in (failure.text or "")
    assert cases[1].find("failure") is None


def run(argv: list[str]) -> int:
    """`authz policy ARGV...` in process (argv starts after `policy`, or with it)."""
    return main(argv if argv[:1] == ["policy"] else ["policy", *argv])


def test_test_command(
    policy_dir: PolicyDir, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    junit = tmp_path / "junit.xml"
    assert run(["test", str(SHIPPED_POLICIES), "--min-coverage", "100", "--junit", str(junit)]) == 0
    out = capsys.readouterr().out
    assert "0 failed" in out
    assert re.search(r"rule coverage 100.0 % \((\d+)/\1 rules exercised\)", out)
    assert ET.parse(junit).getroot().get("failures") == "0"
    directory = suite_dir(policy_dir, {"docs_test.yaml": SUITE})
    assert run(["test", str(directory)]) == 0
    assert run(["test", str(directory), "--min-coverage", "75"]) == ExitCode.COVERAGE_LOW
    capsys.readouterr()
    assert run(["test", str(directory), "--json", "--min-coverage", "50"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["ok"] is True
    assert data["coverage"]["rule_percent"] == 50.0
    assert [r["action"] for r in data["results"]] == ["doc.read", "doc.delete"]
    failing = suite_dir(policy_dir, {"docs_test.yaml": SUITE.replace("allow", "deny")})
    assert run(["test", str(failing)]) == ExitCode.TESTS_FAILED


def test_role_order_matches_the_access_facts() -> None:
    from authz.facts.heroku import ROLE_ORDER as FACTS_ROLE_ORDER
    from authz.policy.inputs import ROLE_ORDER

    assert ROLE_ORDER == FACTS_ROLE_ORDER


def test_access_facts_the_server_never_supplies_are_warned_about(policy_dir: PolicyDir) -> None:
    suite = SUITE.replace("tests:\n", "access:\n  owner: {roles: [owner]}\ntests:\n").replace(
        "    resource: doc1\n", "    resource: doc1\n    access: owner\n"
    )
    report = run_suites(suite_dir(policy_dir, {"docs_test.yaml": suite}))
    [problem] = report.problems
    assert problem.severity == "warning"
    assert "the server supplies access facts only for a heroku_user" in problem.message
    assert report.ok()
