"""Lints: each finding fires on its case, with file:line and a hint, and not on the shipped set."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from textwrap import dedent

import pytest

from authz.cli.common import ExitCode
from authz.cli.main import main
from authz.policy.lint import lint, lint_report
from authz.policy.load import Problem
from tests.conftest import SHIPPED_POLICIES

PolicyDir = Callable[[dict[str, str]], Path]

CATALOGUE = """
name: catalogue
actions:
  doc.read: Read a document
  doc.write: Write a document
  doc.delete: Delete a document
  account.login_password: Log in with a password
resource_types:
  doc: A document
  addon: An add-on
"""


def codes(problems: list[Problem]) -> list[tuple[str, str, str]]:
    return [(getattr(p, "code", ""), p.severity, p.rule_id) for p in problems]


# Covers every catalogued action, so that unused-action stays quiet unless a test wants it.
BASE = """
- id: banned
  effect: deny
  actions: ["*"]
  when: principal.attributes.banned
  reason: banned users do nothing
"""


def rules(text: str, *, base: bool = True) -> dict[str, str]:
    """A catalogue and p.yaml holding these rules; the first rule starts at p.yaml:3."""
    body = dedent(text).strip() + "\n" + (BASE.lstrip() if base else "")
    return {"catalogue.yaml": CATALOGUE, "p.yaml": "name: p\nrules:\n" + body}


def test_shipped_policies_are_lint_clean() -> None:
    assert lint(SHIPPED_POLICIES) == []


def test_a_clean_set_has_no_findings(policy_dir: PolicyDir) -> None:
    text = """
      - id: readers
        effect: allow
        actions: ["doc.*", account.login_password]
        when: principal.attributes.role == "reader"
        reason: r
    """
    assert lint(policy_dir(rules(text))) == []


def test_unknown_exact_action_is_an_error_with_line_column_and_suggestion(
    policy_dir: PolicyDir,
) -> None:
    text = """
      - id: readers
        effect: allow
        actions: [doc.read, doc.raed]
        reason: r
    """
    problems = lint(policy_dir(rules(text)))
    assert codes(problems) == [("unknown-action", "error", "readers")]
    problem = problems[0]
    assert (problem.source.file, problem.source.line, problem.column) == ("p.yaml", 5, 23)
    assert "'doc.raed' is not in the action catalogue" in problem.message
    assert problem.hint == "did you mean 'doc.read'?"
    assert str(problem).startswith("p.yaml:5:23: error [readers]: ")


def test_glob_matching_no_catalogued_action_can_never_match(policy_dir: PolicyDir) -> None:
    text = """
      - id: billing
        effect: allow
        actions: ["billing.*", doc.read]
        reason: r
    """
    problems = lint(policy_dir(rules(text)))
    assert codes(problems) == [("glob-matches-nothing", "warning", "billing")]
    assert "can never match" in problems[0].message


@pytest.mark.parametrize(
    "condition",
    ["false", "1 == 2", 'principal.id == "x" && false', '"a" in ["b", "c"]', "size('ab') > 5"],
)
def test_constant_false_condition_can_never_match(policy_dir: PolicyDir, condition: str) -> None:
    text = f"""
      - id: never
        effect: allow
        actions: [doc.read]
        when: {json.dumps(condition)}
        reason: r
    """
    problems = lint(policy_dir(rules(text)))
    assert codes(problems) == [("constant-false", "warning", "never")]
    assert "can never match" in problems[0].message
    assert problems[0].source.line == 6


@pytest.mark.parametrize(
    "condition",
    [
        'principal.id == "x"',
        "now > timestamp('2020-01-01T00:00:00Z')",
        'access.roles.exists(r, r == "owner") && 1 == 1',
        "has(context.ticket) || principal.attributes.level == 3",
    ],
)
def test_conditions_that_read_the_input_are_not_constant(
    policy_dir: PolicyDir, condition: str
) -> None:
    text = f"""
      - id: depends
        effect: allow
        actions: [doc.read]
        when: {json.dumps(condition)}
        reason: r
    """
    assert lint(policy_dir(rules(text))) == []


def test_constant_true_and_always_erroring_conditions_are_flagged(policy_dir: PolicyDir) -> None:
    text = """
      - id: always
        effect: allow
        actions: [doc.read]
        when: 1 == 1 || principal.id == "x"
        reason: r
      - id: broken
        effect: allow
        actions: [doc.write]
        when: 1 / 0 == 1
        reason: r
    """
    problems = lint(policy_dir(rules(text)))
    assert codes(problems) == [
        ("constant-true", "warning", "always"),
        ("always-errors", "warning", "broken"),
    ]
    assert "never matches" in problems[1].message


def test_allow_shadowed_by_unconditional_deny(policy_dir: PolicyDir) -> None:
    text = """
      - id: readers
        effect: allow
        actions: [doc.read, "doc.*"]
        resource_types: [doc]
        when: principal.attributes.role == "reader"
        reason: r
      - id: nobody-touches-docs
        effect: deny
        actions: ["doc.*", account.login_password]
        reason: d
    """
    problems = lint(policy_dir(rules(text)))
    assert codes(problems) == [("shadowed-allow", "warning", "readers")]
    assert "'nobody-touches-docs' (p.yaml:9)" in problems[0].message
    assert problems[0].source.line == 3


@pytest.mark.parametrize(
    "deny",
    [
        # a condition: the deny does not always apply
        'actions: ["*"]\n        when: principal.attributes.banned',
        # narrower resource types than the allow (which applies to every type)
        'actions: ["*"]\n        resource_types: [addon]',
        # does not cover every action the allow covers
        "actions: [doc.read]",
        # a glob that is not a superset of the allow's glob
        'actions: ["doc.r*"]',
    ],
)
def test_allow_not_shadowed_when_the_deny_is_narrower(policy_dir: PolicyDir, deny: str) -> None:
    text = f"""
      - id: readers
        effect: allow
        actions: [doc.read, "doc.*"]
        reason: r
      - id: some-deny
        effect: deny
        {deny}
        reason: d
    """
    assert "shadowed-allow" not in [c for c, _, _ in codes(lint(policy_dir(rules(text))))]


def test_constant_true_deny_shadows_too(policy_dir: PolicyDir) -> None:
    text = """
      - id: readers
        effect: allow
        actions: [doc.read]
        reason: r
      - id: deny-all
        effect: deny
        actions: ["*"]
        when: "true"
        reason: d
    """
    found = codes(lint(policy_dir(rules(text))))
    assert ("shadowed-allow", "warning", "readers") in found


def test_unused_catalogue_entry_is_a_warning_at_its_line(policy_dir: PolicyDir) -> None:
    text = """
      - id: readers
        effect: allow
        actions: ["doc.*"]
        reason: r
    """
    problems = lint(policy_dir(rules(text, base=False)))
    assert codes(problems) == [("unused-action", "warning", "")]
    assert problems[0].source.file == "catalogue.yaml"
    assert problems[0].source.line == 6
    assert "'account.login_password'" in problems[0].message


def test_without_a_catalogue_actions_are_not_checked_but_that_is_said(
    policy_dir: PolicyDir,
) -> None:
    directory = policy_dir(
        {"p.yaml": "name: p\nrules:\n  - {id: r, effect: allow, actions: [x.y], reason: r}\n"}
    )
    assert codes(lint(directory)) == [("no-catalogue", "warning", "")]


def test_loader_and_compiler_errors_are_errors(policy_dir: PolicyDir) -> None:
    text = """
      - id: bad-cel
        effect: allow
        actions: [doc.read]
        when: principal.id ==
        reason: r
    """
    report = lint_report(policy_dir(rules(text)))
    assert report.policy_set is None
    assert [(p.severity, p.rule_id) for p in report.errors] == [("error", "bad-cel")]
    assert str(report.errors[0]).startswith("p.yaml:6:")
    broken = lint(policy_dir({"p.yaml": "name: p\nrules:\n  - id: [unclosed\n"}))
    assert broken[0].severity == "error" and "YAML syntax error" in broken[0].message


# -- fail-open hazards (issue 12, item 10) -----------------------------------------------------


@pytest.mark.parametrize(
    ("condition", "effect", "column", "fails_open"),
    [
        ("resource.attributes.locked == true", "deny", 0, True),
        ('resource.attributes["locked"] == true', "deny", 0, True),
        ("true == principal.attributes.admin", "allow", 0, False),
        ("context.approved != false", "allow", 0, True),
        ("principal.id != '' && context.flags.beta == false", "deny", 22, True),
        ("principal.id != '' && context.flags.beta != true", "deny", 22, False),
    ],
)
def test_bool_compared_with_a_caller_supplied_value_is_flagged(
    policy_dir: PolicyDir, condition: str, effect: str, column: int, fails_open: bool
) -> None:
    text = f"""
      - id: hazard
        effect: {effect}
        actions: [doc.delete]
        when: {condition}
        reason: r
    """
    [problem] = [p for p in lint(policy_dir(rules(text))) if p.rule_id == "hazard"]
    assert (problem.code, problem.severity) == ("bool-compare-on-dynamic", "warning")
    assert (problem.source.line, problem.column) == (6, 9 + column)  # where the comparison starts
    assert ("(fails open)" in problem.message) is fails_open
    assert "CEL answers" in problem.message and "type(" in problem.hint


@pytest.mark.parametrize(
    "condition",
    [
        "resource.attributes.locked",  # a non-bool errors, which fails closed
        "!context.approved",
        "type(principal.attributes.admin) == bool && principal.attributes.admin",
        "access.available == true",  # a fact authz builds itself, always a bool
        "principal.auth.method == 'heroku_sso'",
        "principal.attributes.role == 'admin'",
        "principal.attributes.tags.exists(t, t == 'beta')",
        "context == {'a': true}",
    ],
)
def test_typed_or_non_bool_comparisons_are_not_flagged(
    policy_dir: PolicyDir, condition: str
) -> None:
    text = f"""
      - id: fine
        effect: deny
        actions: [doc.delete]
        when: "{condition}"
        reason: r
    """
    assert codes(lint(policy_dir(rules(text)))) == []


def test_the_flagged_comparison_really_fails_open_and_the_suggestion_fails_closed(
    policy_dir: PolicyDir,
) -> None:
    """Why the lint exists: `locked == true` lets a document whose attribute is the string
    "true" be deleted; the suggested form denies it."""
    from authz.policy import compile_policies, evaluate, load_policy_dir
    from authz.policy.inputs import build_input

    def deleted(condition: str) -> bool:
        text = f"""
          - id: anyone-deletes
            effect: allow
            actions: [doc.delete]
            reason: r
          - id: locked-never-deleted
            effect: deny
            actions: [doc.delete]
            when: {condition}
            reason: locked
        """
        policy_set = compile_policies(load_policy_dir(policy_dir(rules(text, base=False))))
        resource = {"type": "doc", "id": "d", "attributes": {"locked": "true"}}
        inputs = build_input(action="doc.delete", resource=resource)
        return evaluate(policy_set, inputs).allowed

    assert deleted("resource.attributes.locked == true")
    assert not deleted("resource.attributes.locked")


def test_resource_type_not_in_the_catalogue_is_an_error_with_a_suggestion(
    policy_dir: PolicyDir,
) -> None:
    text = """
      - id: readers
        effect: allow
        actions: [doc.read]
        resource_types: [doc, docs, widget]
        reason: r
    """
    problems = lint(policy_dir(rules(text)))
    assert codes(problems) == [("unknown-resource-type", "error", "readers")] * 2
    assert [(p.source.line, p.column) for p in problems] == [(6, 25), (6, 31)]
    assert "'docs' is not in the resource type catalogue" in problems[0].message
    assert problems[0].hint == "did you mean 'doc'?"
    assert "resource_types:" in problems[1].hint


def test_without_resource_type_declarations_each_type_is_a_warning(
    policy_dir: PolicyDir,
) -> None:
    policy = """
      name: p
      rules:
        - {id: edit, effect: allow, actions: [x], resource_types: [document], reason: r}
        - {id: lock, effect: deny, actions: [x], resource_types: [documnet], reason: r}
    """
    problems = lint(policy_dir({"p.yaml": policy}))
    found = [(getattr(p, "code", ""), p.rule_id) for p in problems if p.rule_id]
    assert found == [("undeclared-resource-type", "edit"), ("undeclared-resource-type", "lock")]
    assert "deny rule silently never apply" in problems[-1].message
    assert problems[-1].hint.startswith("did you mean 'document'?")


@pytest.mark.parametrize(("when", "line"), [('""', 6), ("'   '", 6), ("|\n          \n", 7)])
def test_an_empty_when_is_an_error_on_allow_and_a_warning_on_deny(
    policy_dir: PolicyDir, when: str, line: int
) -> None:
    text = f"""
      - id: open-door
        effect: allow
        actions: [doc.read]
        when: {when}
        reason: r
      - id: closed-door
        effect: deny
        actions: [doc.write]
        when: {when}
        reason: r
    """
    problems = [p for p in lint(policy_dir(rules(text))) if getattr(p, "code", "") == "empty-when"]
    assert [(p.severity, p.rule_id) for p in problems] == [
        ("error", "open-door"),
        ("warning", "closed-door"),
    ]
    assert "allows every request it covers" in problems[0].message
    assert problems[0].source.line == line


def test_no_when_at_all_is_not_an_empty_when(policy_dir: PolicyDir) -> None:
    text = """
      - id: readers
        effect: allow
        actions: ["doc.*", account.login_password]
        reason: r
    """
    assert codes(lint(policy_dir(rules(text)))) == []


# -- the commands ------------------------------------------------------------------------------


def run(argv: list[str]) -> int:
    """`authz policy ARGV...` in process (argv starts after `policy`, or with it)."""
    return main(argv if argv[:1] == ["policy"] else ["policy", *argv])


WARNS = """
  - id: readers
    effect: allow
    actions: ["doc.*", account.login_password]
    when: "false"
    reason: r
"""


def test_lint_command_prints_dir_file_line_and_exit_codes(
    policy_dir: PolicyDir, capsys: pytest.CaptureFixture[str]
) -> None:
    directory = policy_dir(rules(WARNS))
    assert run(["policy", "lint", str(directory)]) == 0
    out = capsys.readouterr().out
    assert (
        f"{directory}/p.yaml:6:10: warning [readers]: condition is always false, so this rule "
        "can never match (hint: fix the condition, or remove the rule)"
    ) in out
    assert "ok: 2 policies, 2 rules, 4 catalogued actions" in out
    assert run(["policy", "lint", "--strict", str(directory)]) == ExitCode.POLICY_REFUSED
    assert run(["policy", "validate", "--strict", str(directory)]) == ExitCode.POLICY_REFUSED
    capsys.readouterr()
    assert run(["policy", "lint", "--json", str(directory)]) == 0
    [finding] = json.loads(capsys.readouterr().out)
    assert finding == {
        "file": "p.yaml",
        "line": 6,
        "column": 10,
        "severity": "warning",
        "code": "constant-false",
        "rule_id": "readers",
        "message": "condition is always false, so this rule can never match",
        "hint": "fix the condition, or remove the rule",
    }


def test_validate_fails_on_errors_and_names_them(
    policy_dir: PolicyDir, capsys: pytest.CaptureFixture[str]
) -> None:
    directory = policy_dir(rules(WARNS.replace("account.login_password", "account.login")))
    assert run(["policy", "validate", str(directory)]) == ExitCode.POLICY_REFUSED
    captured = capsys.readouterr()
    assert f"{directory}/p.yaml:5:22: error [readers]: action 'account.login'" in captured.out
    assert "1 error(s), 1 warning(s); policy set refused" in captured.err
    assert run(["policy", "validate", str(SHIPPED_POLICIES)]) == 0
    assert re.match(r"ok: 4 policies, \d+ rules, \d+ catalogued actions", capsys.readouterr().out)


def test_fail_open_warnings_fail_validate_under_strict(
    policy_dir: PolicyDir, capsys: pytest.CaptureFixture[str]
) -> None:
    text = """
      - id: hazard
        effect: deny
        actions: [doc.delete]
        when: resource.attributes.locked == true
        reason: r
    """
    directory = policy_dir(rules(text))
    assert run(["policy", "validate", str(directory)]) == 0
    assert run(["policy", "validate", "--strict", str(directory)]) == ExitCode.POLICY_REFUSED
    out = capsys.readouterr().out
    assert f"{directory}/p.yaml:6:9: warning [hazard]: 'resource.attributes.locked == true'" in out
