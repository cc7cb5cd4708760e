"""Reference data for policies (issue 14): data/*.yaml|json → the read-only `data` variable."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from authz.policy import Effect, PolicyError, evaluate
from authz.policy.compile import load_and_compile
from authz.policy.data import MAX_DATA_BYTES, MAX_DATA_FILE_BYTES, MAX_DATA_VALUES
from authz.policy.inputs import build_input
from authz.policy.suites import run_suites

PolicyDir = Callable[[dict[str, str]], Path]

POLICY = """
name: docs
actions:
  doc.read: Read a document
  doc.publish: Publish a document
rules:
  - id: staff-read
    effect: allow
    actions: [doc.read]
    when: >-
      principal.id in data.users
      && data.users[principal.id].roles.exists(r, r in data.roles.readers)
    reason: staff may read
  - id: anyone-publishes
    effect: allow
    actions: [doc.publish]
    reason: publishing reads no data
"""

USERS = """
# the user directory
alice: {roles: [staff], email: alice@example.com}
bob:
  roles: [guest]
"""


def make(policy_dir: PolicyDir, **data: str) -> Path:
    """A policy directory holding POLICY and data/<name> files."""
    directory = policy_dir({"docs.yaml": POLICY})
    (directory / "data").mkdir()
    for name, text in data.items():
        (directory / "data" / name.replace("_", ".", 1)).write_text(text.lstrip())
    return directory


def decide(directory: Path, who: str, action: str = "doc.read") -> Effect:
    policy_set = load_and_compile(directory)
    return evaluate(
        policy_set, build_input(action=action, principal={"type": "u", "id": who})
    ).effect


def problems_of(directory: Path) -> list[str]:
    with pytest.raises(PolicyError) as info:
        load_and_compile(directory)
    return [str(p) for p in info.value.problems]


def test_rules_read_data_files_by_their_stem(policy_dir: PolicyDir) -> None:
    directory = make(policy_dir, users_yaml=USERS, roles_json='{"readers": ["staff"]}')
    policy_set = load_and_compile(directory)
    assert policy_set.data == {
        "users": {
            "alice": {"roles": ["staff"], "email": "alice@example.com"},
            "bob": {"roles": ["guest"]},
        },
        "roles": {"readers": ["staff"]},
    }
    assert decide(directory, "alice") is Effect.ALLOW
    assert decide(directory, "bob") is Effect.DENY
    assert decide(directory, "mallory") is Effect.DENY


def test_data_is_one_prebuilt_object_and_only_plans_that_read_it_get_it(
    policy_dir: PolicyDir,
) -> None:
    directory = make(policy_dir, users_yaml=USERS, roles_json='{"readers": ["staff"]}')
    policy_set = load_and_compile(directory)
    assert policy_set.plan("doc.read", "").reads_data
    assert not policy_set.plan("doc.publish", "").reads_data
    # The engine takes the set's own mapping: nothing per request, and never from the caller.
    first = policy_set.data
    inputs = build_input(action="doc.read", principal={"type": "u", "id": "alice"})
    assert "data" not in inputs
    assert evaluate(policy_set, inputs).allowed and policy_set.data is first


def test_without_a_data_folder_data_is_empty(policy_dir: PolicyDir) -> None:
    directory = policy_dir({"docs.yaml": POLICY})
    policy_set = load_and_compile(directory)
    assert policy_set.data == {}
    decision = evaluate(
        policy_set, build_input(action="doc.read", principal={"type": "u", "id": "alice"})
    )
    assert decision.effect is Effect.DENY  # `principal.id in data.users` errors: fails closed
    assert "staff-read" in decision.errors[0] and "allow rule skipped" in decision.errors[0]


def test_data_is_counted_in_the_revision(policy_dir: PolicyDir) -> None:
    directory = make(policy_dir, users_yaml=USERS, roles_json='{"readers": ["staff"]}')
    before = load_and_compile(directory).revision
    assert load_and_compile(directory).revision == before
    (directory / "data" / "roles.json").write_text('{"readers": ["staff", "guest"]}')
    after = load_and_compile(directory).revision
    assert after != before
    assert decide(directory, "bob") is Effect.ALLOW


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "a: {country: NO}",
            "data/users.yaml:1:14: error: a.country: YAML reads 'NO' as a boolean",
        ),
        ("a: yes", "data/users.yaml:1:4: error: a: YAML reads 'yes' as a boolean"),
        ("since: 2024-01-01", "data/users.yaml:1:8: error: since: YAML reads '2024-01-01' as a "),
        ("mode: 0777", "data/users.yaml:1:7: error: mode: YAML reads '0777' as a number in a"),
        ("t: 1:20", "data/users.yaml:1:4: error: t: YAML reads '1:20' as a number in a non-"),
        ("x: .inf", "data/users.yaml:1:4: error: x: '.inf' is not a finite decimal number"),
        # (reported at the anchor: the alias is the same node)
        ("a: &x [1]\nb: *x", "data/users.yaml:1:4: error: b: anchors and aliases"),
        ("1: one", "data/users.yaml:1:1: error: mapping key '1' is not a string"),
        ("a: 1\na: 2", "data/users.yaml:2:1: error: key 'a' appears twice"),
        # (libyaml refuses a lone surrogate escape itself)
        ('a: "\\uD800"', "data/users.yaml:1:7: error: YAML syntax error: found invalid Unicode"),
        ("a: !!binary aGk=", "data/users.yaml:1:4: error: a: YAML reads 'aGk=' as a binary"),
        ("a: !!set {x}", "data/users.yaml:1:4: error: a: YAML type 'tag:yaml.org,2002:set'"),
        ("a: [1, 2", "data/users.yaml:2:1: error: YAML syntax error"),
        ("", "data/users.yaml:1: error: the data file is empty"),
    ],
)
def test_yaml_values_that_are_not_plain_json_are_refused_at_their_line(
    policy_dir: PolicyDir, text: str, expected: str
) -> None:
    [problem] = problems_of(make(policy_dir, users_yaml=text + "\n"))
    assert problem.startswith(expected)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"a": 1,\n "b": }', "data/users.json:2:7: error: JSON syntax error: Expecting value"),
        ('{"a": NaN}', "data/users.json: error: JSON: NaN is not a JSON number"),
        ('{"a": 1e999}', "data/users.json: error: a: inf is not a finite number"),
        ('{"a": {"b": ["\\ud800"]}}', "data/users.json: error: a.b[0]: the text holds a lone"),
        ('{"a": 1, "a": 2}', "data/users.json: error: key 'a' appears twice in one object"),
    ],
)
def test_json_values_that_are_not_plain_are_refused_with_their_place(
    policy_dir: PolicyDir, text: str, expected: str
) -> None:
    [problem] = problems_of(make(policy_dir, users_json=text))
    assert problem.startswith(expected)


def test_data_file_names_and_entries_are_checked(policy_dir: PolicyDir) -> None:
    directory = make(policy_dir, users_yaml=USERS, users_json="{}")
    (directory / "data" / "my-users.yaml").write_text("{}\n")
    (directory / "data" / "gone.yaml").symlink_to(directory / "data" / "nowhere.yaml")
    (directory / "data" / "README.md").write_text("not data: ignored\n")
    assert problems_of(directory) == [
        "data/gone.yaml: error: cannot read: the file is a broken symbolic link (hint: restore "
        "the file it points to, or remove the link)",
        "data/my-users.yaml: error: data file name 'my-users' cannot be a key of 'data' (hint: "
        "name it like users.yaml: letters, digits and '_', not starting with a digit (it is read "
        "as data.users))",
        "data/users.yaml: error: data.users is also defined by data/users.json (hint: keep one "
        "file per key)",
    ]


def test_data_size_limits(policy_dir: PolicyDir) -> None:
    large = make(policy_dir, users_json=json.dumps({"pad": "x" * MAX_DATA_FILE_BYTES}))
    [problem] = problems_of(large)
    assert problem.startswith("data/users.json: error: file is larger than 1024 KiB")
    many = make(policy_dir, users_json=json.dumps(list(range(MAX_DATA_VALUES))))
    [problem] = problems_of(many)
    assert problem.startswith(
        f"data/users.json: error: the data files hold more than {MAX_DATA_VALUES}"
    )
    third = json.dumps({"pad": "x" * (MAX_DATA_BYTES // 3 + 1)})
    together = make(policy_dir, a_json=third, b_json=third, c_json=third)
    [problem] = problems_of(together)
    assert problem.startswith("data: error: the data files are larger than 2 MiB together")
    deep = make(policy_dir, users_json="[" * 40 + "]" * 40)
    [problem] = problems_of(deep)
    assert problem.startswith("data/users.json: error: ") and "nested deeper than 32" in problem


def test_a_data_entry_that_is_not_a_folder_is_refused(policy_dir: PolicyDir) -> None:
    directory = policy_dir({"docs.yaml": POLICY})
    (directory / "data").write_text("users: {}\n")
    assert problems_of(directory)[0].startswith(
        "data: error: 'data' beside the policy files must be a folder of data files"
    )


SUITE = """
name: staff
tests:
  - name: staff read, guests do not
    principal: alice
    resource: doc
    expect: {doc.read: allow}
  - name: guests do not
    principal: bob
    resource: doc
    expect: {doc.read: deny}
principals:
  alice: {type: u, id: alice}
  bob: {type: u, id: bob}
resources:
  doc: {type: doc, id: d1}
"""


def test_suites_read_the_policy_data_and_may_replace_keys(policy_dir: PolicyDir) -> None:
    directory = make(policy_dir, users_yaml=USERS, roles_json='{"readers": ["staff"]}')
    (directory / "tests").mkdir()
    (directory / "tests" / "staff_test.yaml").write_text(SUITE)
    # The same expectations against a directory where guests are readers too: bob's check fails.
    (directory / "tests" / "guests_test.yaml").write_text(
        SUITE.replace("name: staff\n", "name: guests\ndata: {roles: {readers: [guest]}}\n")
    )
    report = run_suites(directory)
    assert not report.errors
    failures = [(r.suite, r.test) for r in report.failures]
    assert failures == [("guests", "staff read, guests do not"), ("guests", "guests do not")]
    assert [r.passed for r in report.results if r.suite == "staff"] == [True, True]


def test_without_libyaml_a_lone_surrogate_is_still_refused(
    policy_dir: PolicyDir, monkeypatch: pytest.MonkeyPatch
) -> None:
    import yaml

    from authz.policy import data

    monkeypatch.setattr(data, "_Loader", yaml.SafeLoader)  # it makes "\uD800" a lone surrogate
    [problem] = problems_of(make(policy_dir, users_yaml='a: "\\uD800"\n'))
    assert problem.startswith("data/users.yaml:1:4: error: a: the text holds a lone UTF-16")
