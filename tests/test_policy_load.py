"""Loader: every problem refused with file:line (and CEL column); nothing half-loaded."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from authz.policy import PolicyError, load_policy_dir
from authz.policy.compile import load_and_compile
from tests.conftest import SHIPPED_POLICIES

PolicyDir = Callable[[dict[str, str]], Path]

GOOD = """
name: good
rules:
  - id: ok
    effect: allow
    actions: [a]
    reason: fine
"""


def problems_of(directory: Path) -> list[str]:
    with pytest.raises(PolicyError) as info:
        load_and_compile(directory)
    return [str(p) for p in info.value.problems]


def test_shipped_policies_load() -> None:
    policy_set = load_and_compile(SHIPPED_POLICIES)
    assert policy_set.rule_count >= 8
    assert "session.login" in policy_set.catalogue


def test_yaml_syntax_error_has_file_and_line(policy_dir: PolicyDir) -> None:
    directory = policy_dir(
        {"good.yaml": GOOD, "bad.yaml": "name: bad\nrules:\n  - id: [unclosed\n"}
    )
    problems = problems_of(directory)
    assert len(problems) == 1
    assert problems[0].startswith("bad.yaml:")
    assert "YAML syntax error" in problems[0]


def test_unknown_field_is_refused_with_its_line(policy_dir: PolicyDir) -> None:
    text = GOOD + "    efect: deny\n"
    problems = problems_of(policy_dir({"p.yaml": text}))
    assert any(p.startswith("p.yaml:7:") and "unknown rule field 'efect'" in p for p in problems)


def test_duplicate_rule_id_across_files(policy_dir: PolicyDir) -> None:
    other = GOOD.replace("name: good", "name: other")
    problems = problems_of(policy_dir({"a.yaml": GOOD, "b.yaml": other}))
    assert any(p.startswith("b.yaml:3:") and "duplicate rule id 'ok'" in p for p in problems)
    assert any("first defined at a.yaml:3" in p for p in problems)


def test_cel_syntax_error_maps_to_file_line_and_column(policy_dir: PolicyDir) -> None:
    text = """
    name: cel
    rules:
      - id: broken
        effect: allow
        actions: [a]
        when: |
          principal.id == "x" &&
            (resource.id ==
        reason: r
    """
    problems = problems_of(policy_dir({"cel.yaml": text}))
    assert len(problems) == 1
    # Line 8 of the file is the third line of the condition.
    assert problems[0].startswith("cel.yaml:8:"), problems[0]
    assert problems[0].startswith("cel.yaml:8:24:"), problems[0]
    assert "[broken]" in problems[0] and "Syntax error" in problems[0]


def test_cel_type_error_and_undeclared_variable(policy_dir: PolicyDir) -> None:
    text = """
    name: types
    rules:
      - id: wrong-type
        effect: allow
        actions: [a]
        when: action == 1
        reason: r
      - id: typo
        effect: allow
        actions: [a]
        when: principle.id == "x"
        reason: r
    """
    problems = problems_of(policy_dir({"t.yaml": text}))
    assert any(p.startswith("t.yaml:6:18:") and "no matching overload" in p for p in problems)
    assert any(p.startswith("t.yaml:11:20:") and "undeclared reference" in p for p in problems)


def test_condition_must_be_boolean(policy_dir: PolicyDir) -> None:
    text = GOOD.replace("    reason: fine", '    when: action + "x"\n    reason: fine')
    problems = problems_of(policy_dir({"p.yaml": text}))
    assert any("not a bool" in p for p in problems)


def test_missing_fields_and_bad_effect(policy_dir: PolicyDir) -> None:
    text = """
    name: m
    rules:
      - id: no-reason
        effect: allow
        actions: [a]
      - id: bad-effect
        effect: permit
        actions: [a]
        reason: r
    """
    problems = problems_of(policy_dir({"m.yaml": text}))
    assert any("[no-reason]" in p and "missing required field 'reason'" in p for p in problems)
    assert any("m.yaml:7:" in p and "unknown effect 'permit'" in p for p in problems)


def test_one_bad_file_refuses_the_whole_set(policy_dir: PolicyDir) -> None:
    directory = policy_dir({"good.yaml": GOOD, "bad.yaml": "name: bad\nrules: nope\n"})
    with pytest.raises(PolicyError):
        load_policy_dir(directory)


def test_revision_is_a_content_hash(policy_dir: PolicyDir) -> None:
    first = load_policy_dir(policy_dir({"p.yaml": GOOD})).revision
    same = load_policy_dir(policy_dir({"p.yaml": GOOD})).revision
    changed = load_policy_dir(policy_dir({"p.yaml": GOOD.replace("fine", "ok")})).revision
    assert first == same != changed
