"""Loader: every problem refused with file:line (and CEL column); nothing half-loaded."""

from __future__ import annotations

import os
import subprocess
import sys
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


# -- anything that goes wrong while loading is a refused set with file:line (issue 12, item 4) --

SURROGATE_WHEN = r"""
name: bad
rules:
  - id: odd
    effect: allow
    actions: [a]
    when: "principal.id == \"\uD800\""
    reason: r
"""


def test_lone_surrogate_escape_is_refused_at_its_line(policy_dir: PolicyDir) -> None:
    # YAML's "\uD800" escape makes a lone surrogate, which CEL's compiler does not accept.
    directory = policy_dir({"good.yaml": GOOD, "bad.yaml": SURROGATE_WHEN})
    [problem] = problems_of(directory)
    assert problem.startswith("bad.yaml:6: error [odd]: 'when': the text holds a lone UTF-16")


def test_lone_surrogate_anywhere_in_a_policy_is_refused(policy_dir: PolicyDir) -> None:
    # A reason or catalogue description would fail later, in every response or reload status.
    text = GOOD.replace("reason: fine", 'reason: "fine \\uDC00"') + 'actions:\n  b: "x\\uD83D"\n'
    problems = problems_of(policy_dir({"p.yaml": text}))
    assert sorted(p.split(":")[1] for p in problems) == ["6", "8"]  # reason, description
    assert all("lone UTF-16 surrogate" in p for p in problems)


def test_invalid_utf8_is_refused_at_its_line(policy_dir: PolicyDir) -> None:
    directory = policy_dir({"good.yaml": GOOD})
    (directory / "latin1.yaml").write_bytes(b"name: latin\n# caf\xe9\nrules: []\n")
    [problem] = problems_of(directory)
    assert problem.startswith("latin1.yaml:2: error: not valid UTF-8")


@pytest.mark.parametrize("kind", ["broken symlink", "directory", "fifo"])
def test_a_policy_file_that_cannot_be_read_refuses_the_set(
    policy_dir: PolicyDir, kind: str
) -> None:
    """Tests may run as root, where chmod 000 does not stop a read; a broken symbolic link, a
    directory or a FIFO named *.yaml cannot be read by anyone. Skipping one silently could drop
    a deny rule, so each refuses the whole set with the file's name."""
    directory = policy_dir({"good.yaml": GOOD})
    entry = directory / "deny-rules.yaml"
    if kind == "broken symlink":
        entry.symlink_to(directory / "deleted-by-a-deploy.yaml")
        expected = "deny-rules.yaml: error: cannot read: the file is a broken symbolic link"
    elif kind == "directory":
        entry.mkdir()
        expected = "deny-rules.yaml: error: cannot read: it is a directory"
    else:
        os.mkfifo(entry)  # opening a FIFO for reading would block forever
        expected = "deny-rules.yaml: error: cannot read: it is not a regular file"
    [problem] = problems_of(directory)
    assert problem.startswith(expected)


def test_a_policy_file_linked_to_a_readable_file_loads(policy_dir: PolicyDir) -> None:
    directory = policy_dir({"good.yaml": GOOD})
    target = directory.parent / "elsewhere.yaml"
    target.write_text(GOOD.replace("name: good", "name: linked").replace("id: ok", "id: ok2"))
    (directory / "linked.yaml").symlink_to(target)
    assert load_and_compile(directory).rule_count == 2


def test_an_unexpected_loader_failure_is_a_refusal_not_an_exception(
    policy_dir: PolicyDir, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever a file makes the loader raise (here a bug stands in for it) refuses the set with
    the file's name instead of escaping to the caller (the watcher, validate, ReloadPolicies)."""
    from authz.policy import load

    def broken(file: str, text: str, problems: list) -> None:
        raise KeyError("a loader bug")

    monkeypatch.setattr(load, "parse_policy", broken)
    [problem] = problems_of(policy_dir({"p.yaml": GOOD}))
    assert problem.startswith("p.yaml: error: could not be loaded (KeyError: 'a loader bug')")


def test_validate_prints_the_problem_not_a_traceback(policy_dir: PolicyDir) -> None:
    directory = policy_dir({"good.yaml": GOOD, "bad.yaml": SURROGATE_WHEN})
    (directory / "gone.yaml").symlink_to(directory / "missing.yaml")
    result = subprocess.run(
        [sys.executable, "-m", "authz.cli", "policy", "validate", str(directory)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 6, result.stderr  # ExitCode.POLICY_REFUSED
    assert "Traceback" not in result.stdout + result.stderr
    assert f"{directory}/bad.yaml:6: error [odd]: 'when': the text holds a lone" in result.stdout
    assert f"{directory}/gone.yaml: error: cannot read: the file is a broken symbolic link" in (
        result.stdout
    )
    assert "2 error(s), 0 warning(s); policy set refused" in result.stderr
