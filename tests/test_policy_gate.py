"""The policy gate: typed inputs refuse typos at load, attribute schemas hold at load and at the
request edges, and validate, test, reload and serve give one verdict on every set."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from textwrap import dedent
from typing import Any

import grpc
import httpx
import pytest
from google.protobuf import struct_pb2

from authz.cli.common import ExitCode
from authz.cli.main import main
from authz.config import ConfigError, Settings
from authz.policy import inputs
from authz.policy.compile import load_and_compile
from authz.policy.gate import judge
from authz.policy.holder import PolicyHolder
from authz.policy.model import PolicyError
from authz.server.app import start_service
from authz.v1 import authorization_pb2 as pb
from authz.v1 import authorization_pb2_grpc as pb_grpc
from tests.conftest import ROOT, SHIPPED_POLICIES, LoopThread, RunningService

CATALOGUE = """
name: catalogue
actions:
  doc.read: Read a document
principal_types:
  user:
    description: A person
    attributes:
      team: string
      clearance: {type: integer}
resource_types:
  doc:
    description: A document
    attributes:
      owner: string
      labels: {type: array, items: string}
"""

POLICY = """
name: docs
rules:
  - id: owners-read
    effect: allow
    actions: [doc.read]
    resource_types: [doc]
    when: resource.attributes.owner == principal.id
    reason: owners read their documents
"""

SUITE = """
name: docs-suite
principals:
  ada: {type: user, id: ada, attributes: {team: core}}
resources:
  mine: {type: doc, id: d1, attributes: {owner: ada}}
  theirs: {type: doc, id: d2, attributes: {owner: bob}}
tests:
  - name: the owner reads
    principal: ada
    resource: mine
    expect: {doc.read: allow}
  - name: others do not
    principal: ada
    resource: theirs
    expect: {doc.read: deny}
"""


def write_set(directory: Path, policy: str = POLICY) -> Path:
    if directory.exists():
        shutil.rmtree(directory)
    (directory / "tests").mkdir(parents=True)
    (directory / "catalogue.yaml").write_text(dedent(CATALOGUE).lstrip())
    (directory / "docs.yaml").write_text(dedent(policy).lstrip())
    (directory / "tests" / "docs_test.yaml").write_text(dedent(SUITE).lstrip())
    return directory


def with_when(when: str) -> str:
    return POLICY.replace("resource.attributes.owner == principal.id", when)


# -- typed inputs ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("when", "line_column", "message", "hint"),
    [
        ('principal.auth.methd == "x"', "7:25", "undefined field 'methd'", "did you mean 'method'"),
        ('principal.typ == "user"', "7:20", "undefined field 'typ'", "did you mean 'type'"),
        ("access.rolez.size() > 0", "7:17", "undefined field 'rolez'", "'role' or 'roles'"),
        ("principal.id == 1", "7:24", "no matching overload", "compare like with like"),
        ('resource.addon.stat == ""', "7:25", "undefined field 'stat'", "did you mean 'state'"),
        ('caller.idd == ""', "7:17", "undefined field 'idd'", "did you mean 'id'"),
        ('principl.type == ""', "7:19", "undeclared reference to 'principl.type'", "'principal'"),
        ("access.age_seconds > access.fetched_at", "7:30", "no matching overload", ""),
    ],
)
def test_typos_and_type_errors_are_refused_at_load_with_position_and_hint(
    tmp_path: Path, when: str, line_column: str, message: str, hint: str
) -> None:
    directory = write_set(tmp_path / "p", with_when(when))
    with pytest.raises(PolicyError) as raised:
        load_and_compile(directory)
    [problem] = raised.value.problems
    text = str(problem)
    assert text.startswith(f"docs.yaml:{line_column}: error [owners-read]"), text
    assert message in text and hint in text, text


def test_every_declared_field_type_checks_and_every_builder_fills_it(tmp_path: Path) -> None:
    """The contract, the type checker and the builders agree field by field."""
    samples = {"string": '""', "bool": "true", "double": "1.0"}
    conditions = []
    for variable in inputs.VARIABLES:
        for field in inputs.MESSAGES.get(variable.type, ()):
            path = f"{variable.name}.{field.name}"
            if field.type in samples:
                conditions.append(f"{path} == {samples[field.type]}")
            elif field.type == "list(string)":
                conditions.append(f'"x" in {path}')
            elif field.type == "map(string, dyn)":
                conditions.append(f"has({path}.anything) || {path}.size() == 0")
            else:
                conditions.append(f"has({path})")
    checker = inputs.checking_env()
    for condition in conditions:
        assert checker.compile(condition).return_type() is not None, condition
    built = inputs.build_input(action="a")
    for variable in inputs.VARIABLES:
        if variable.type in inputs.MESSAGES:
            assert set(built[variable.name]) == set(inputs.fields_of(variable.type)), variable
    for message, value in (
        ("Auth", inputs.auth_input()),
        ("Addon", inputs.addon_input()),
        ("Access", inputs.access_unavailable("x")),
        (
            "Access",
            inputs.access_input(
                app_id="a",
                user_id="u",
                roles=["admin"],
                permissions=[],
                team_role="",
                fetched_at="",
                age_seconds=1,
            ),
        ),
    ):
        assert set(value) == set(inputs.fields_of(message)), message


def test_the_shipped_and_example_sets_pass_the_gate() -> None:
    for directory in (SHIPPED_POLICIES, ROOT / "examples" / "authzen-todo"):
        verdict = judge(directory, strict=True)
        assert verdict.ok, [str(p) for p in verdict.problems]


# -- attribute schemas ---------------------------------------------------------------------------


def test_attribute_typos_are_refused_at_load(tmp_path: Path) -> None:
    directory = write_set(
        tmp_path / "p",
        with_when('resource.attributes.ownr == principal.id && principal.attributes["tem"] == ""'),
    )
    with pytest.raises(PolicyError) as raised:
        load_and_compile(directory)
    resource, principal = (str(p) for p in raised.value.problems)
    assert resource.startswith("docs.yaml:7:30: error [owners-read]: resource.attributes.ownr")
    assert "did you mean 'owner'" in resource, resource
    assert "principal.attributes.tem" in principal and "did you mean 'team'" in principal


def test_undeclared_attribute_types_are_not_guessed(tmp_path: Path) -> None:
    """A type without `attributes:` takes any attribute, so nothing about it is refused."""
    directory = write_set(tmp_path / "p")
    catalogue = directory / "catalogue.yaml"
    catalogue.write_text(
        catalogue.read_text().replace("  doc:\n    description", "  doc2:\n    description")
        + "  doc: A document without a schema\n"
    )
    assert load_and_compile(directory).rule_count == 1


def test_schema_declarations_are_checked(tmp_path: Path) -> None:
    directory = write_set(tmp_path / "p")
    catalogue = directory / "catalogue.yaml"
    catalogue.write_text(catalogue.read_text().replace("team: string", "team: strnig"))
    with pytest.raises(PolicyError, match="attribute 'team': unknown type 'strnig'"):
        load_and_compile(directory)


@pytest.fixture
def schema_set(tmp_path: Path) -> Path:
    return write_set(tmp_path / "schema-set")


@pytest.fixture
def served(loop_thread: LoopThread, base_settings: Settings, schema_set: Path) -> Any:
    service = loop_thread.run(
        start_service(replace(base_settings, policy_dir=schema_set, http_listen="127.0.0.1:0"))
    )
    yield service
    loop_thread.run(service.stop(grace=1))


def struct(**values: Any) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    s.update(values)
    return s


def test_wrongly_typed_attributes_are_refused_on_grpc_and_authzen(served: Any) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{served.port}") as channel:
        stub = pb_grpc.AuthorizationServiceStub(channel)

        def check(principal_attrs: dict[str, Any], resource_attrs: dict[str, Any]) -> Any:
            return stub.Check(
                pb.CheckRequest(
                    principal=pb.Principal(
                        type="user", id="ada", attributes=struct(**principal_attrs)
                    ),
                    action="doc.read",
                    resource=pb.Resource(type="doc", id="d1", attributes=struct(**resource_attrs)),
                ),
                timeout=10,
            )

        assert check({"team": "core"}, {"owner": "ada", "labels": ["x"]}).allowed
        for principal_attrs, resource_attrs, named in (
            ({"team": 7}, {"owner": "ada"}, "principal.attributes.team: must be a string"),
            ({"clearance": 2.5}, {}, "principal.attributes.clearance: must be an integer"),
            ({}, {"labels": ["x", 1]}, "resource.attributes.labels: item 1 must be a string"),
            ({}, {"ownr": "ada"}, "declares no attribute 'ownr' (did you mean 'owner'?)"),
        ):
            with pytest.raises(grpc.RpcError) as raised:
                check(principal_attrs, resource_attrs)
            assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT
            assert named in (raised.value.details() or ""), raised.value.details()

    assert served.http is not None
    url = served.http.url + "/access/v1/evaluation"

    def evaluate(subject_props: dict[str, Any]) -> httpx.Response:
        body = {
            "subject": {"type": "user", "id": "ada", "properties": subject_props},
            "action": {"name": "doc.read"},
            "resource": {"type": "doc", "id": "d1", "properties": {"owner": "ada"}},
        }
        return httpx.post(url, json=body, timeout=10)

    assert evaluate({"team": "core"}).json()["decision"] is True
    refused = evaluate({"team": ["core"]})
    assert refused.status_code == 400
    assert "principal.attributes.team: must be a string, not an array" in refused.text
    batch = httpx.post(
        served.http.url + "/access/v1/evaluations",
        json={
            "action": {"name": "doc.read"},
            "resource": {"type": "doc", "id": "d1", "properties": {"owner": "ada"}},
            "evaluations": [
                {"subject": {"type": "user", "id": "ada", "properties": {"team": "core"}}},
                {"subject": {"type": "user", "id": "ada", "properties": {"clearance": "x"}}},
            ],
        },
        timeout=10,
    ).json()["evaluations"]
    assert batch[0]["decision"] is True
    assert "evaluations[1]: principal.attributes.clearance" in json.dumps(batch[1])


# -- one verdict ---------------------------------------------------------------------------------

PROBLEMS: dict[str, tuple[str, bool, bool]] = {
    # class: (docs.yaml, accepted without strict, accepted with strict)
    "clean": (POLICY, True, True),
    "yaml": ("name: docs\nrules: [\n", False, False),
    "typo": (with_when("resource.attributes.owner == principal.idd"), False, False),
    "type": (with_when("resource.attributes.owner == 1 + principal.id"), False, False),
    "catalogue": (POLICY.replace("[doc.read]", "[doc.reed]"), False, False),
    "schema": (with_when("resource.attributes.ownr == principal.id"), False, False),
    "warning": (
        POLICY + "  - id: never\n    effect: deny\n    actions: [doc.read]\n    when: 1 == 2\n"
        "    reason: never\n",
        True,
        False,
    ),
}


@pytest.mark.parametrize("strict", [False, True], ids=["default", "strict"])
@pytest.mark.parametrize("problem", list(PROBLEMS))
def test_validate_test_reload_and_serve_give_one_verdict(
    problem: str,
    strict: bool,
    tmp_path: Path,
    base_settings: Settings,
    start: Callable[..., RunningService],
) -> None:
    text, accepted_default, accepted_strict = PROBLEMS[problem]
    accepted = accepted_strict if strict else accepted_default
    directory = write_set(tmp_path / "p", text)
    flag = ["--strict"] if strict else []

    validate = main(["policy", "validate", str(directory), *flag])
    test = main(["policy", "test", str(directory), *flag])
    clean = write_set(tmp_path / "serving")
    holder = PolicyHolder.load(clean, strict=strict)
    write_set(clean, text)
    reloaded = holder.reload().reloaded
    try:
        start(base_settings, policy_dir=directory, policy_strict=strict)
        served = True
    except PolicyError:
        served = False

    verdicts = {
        "validate": validate == ExitCode.OK,
        "test": test == ExitCode.OK,
        "reload": reloaded,
        "serve": served,
    }
    assert verdicts == dict.fromkeys(verdicts, accepted), verdicts
    if not accepted:
        assert validate == test == ExitCode.POLICY_REFUSED


def test_test_exit_codes_say_what_failed(tmp_path: Path) -> None:
    directory = write_set(tmp_path / "p")
    assert main(["policy", "test", str(directory), "--min-coverage", "100"]) == ExitCode.OK
    suite = directory / "tests" / "docs_test.yaml"
    suite.write_text(
        suite.read_text().replace("expect: {doc.read: deny}", "expect: {doc.read: allow}")
    )
    assert main(["policy", "test", str(directory)]) == ExitCode.TESTS_FAILED
    spare = "  - id: spare\n    effect: allow\n    actions: [doc.write]\n    reason: nobody tests\n"
    write_set(directory, POLICY + spare)
    catalogue = directory / "catalogue.yaml"
    catalogue.write_text(
        catalogue.read_text().replace("  doc.read:", "  doc.write: W\n  doc.read:")
    )
    suite.write_text(dedent(SUITE).lstrip().split("  - name: others")[0])
    assert main(["policy", "test", str(directory)]) == ExitCode.OK
    assert (
        main(["policy", "test", str(directory), "--min-coverage", "100"]) == ExitCode.COVERAGE_LOW
    )


def test_the_strict_setting_takes_documented_values_only() -> None:
    assert Settings.from_env({"AUTHZ_POLICY_STRICT": "on"}).policy_strict
    assert not Settings.from_env({}).policy_strict
    with pytest.raises(ConfigError, match="AUTHZ_POLICY_STRICT='yes' is not accepted"):
        Settings.from_env({"AUTHZ_POLICY_STRICT": "yes"})


# -- eval ----------------------------------------------------------------------------------------


def test_eval_decides_offline_and_shows_every_rule(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    request = tmp_path / "request.yaml"
    request.write_text(
        "action: dashboard.view\n"
        "sso_user: {id: U1, resource: R1}\n"
        "resource: {type: addon, id: R1, addon: {state: provisioned, app_id: A1}}\n"
        "access: {roles: [collaborator], permissions: [view]}\n"
    )
    argv = ["policy", "eval", str(SHIPPED_POLICIES), "--file", str(request)]
    assert main(argv) == ExitCode.DENY
    out = capsys.readouterr().out
    assert out.startswith("DENY  revision ")
    assert (
        "deny  app-ownership/app-permissions-exclude-addon (app_ownership.yaml:64): when -> true"
        in out
    )
    assert "allow app-ownership/app-members-use-addon (app_ownership.yaml:25): when -> false" in out
    assert main([*argv, "--permission", "deploy", "--json"]) == ExitCode.OK
    answer = json.loads(capsys.readouterr().out)
    assert answer["effect"] == "ALLOW" and answer["deciding_rules"] == ["app-members-use-addon"]
    tried = {t["rule_id"]: t["condition"] for t in answer["tried"]}
    assert tried["app-members-use-addon"] == "true" and tried["not-a-member-of-the-app"] == "false"
    assert (
        main(["policy", "eval", str(SHIPPED_POLICIES), "--action", "nope.nothing"]) == ExitCode.DENY
    )
    assert "ACTION_UNKNOWN" in capsys.readouterr().out
    request.write_text("action: dashboard.view\nprincipl: {}\n")
    assert main(argv) == ExitCode.USAGE
    assert "unknown key 'principl'" in capsys.readouterr().err


def test_eval_applies_the_attribute_schemas(
    schema_set: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["policy", "eval", str(schema_set), "--principal", "user:ada", "--action", "doc.read"]
    owned = [*base, "--resource", "doc:d1", "--resource-attr", "owner=ada"]
    assert main(owned) == ExitCode.OK
    assert main([*owned, "--principal-attr", "clearance=high"]) == ExitCode.USAGE
    assert "principal.attributes.clearance: must be an integer" in capsys.readouterr().err


# -- the README ----------------------------------------------------------------------------------


def test_the_readme_schema_reference_is_the_contract() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    match = re.search(
        r"<!-- policy-input-reference: begin -->\n(.*?)\n<!-- policy-input-reference: end -->",
        readme,
        re.DOTALL,
    )
    assert match, "README: the policy input reference markers are missing"
    assert match.group(1).strip() == inputs.schema_reference().strip(), (
        "the README's policy input reference is out of date; paste authz.policy.inputs."
        "schema_reference() between its markers"
    )


def test_declared_attributes_compared_with_the_wrong_kind_are_refused(tmp_path: Path) -> None:
    directory = write_set(
        tmp_path / "p",
        with_when(
            'resource.attributes.owner == principal.id && principal.attributes.clearance >= "3"'
        ),
    )
    with pytest.raises(PolicyError) as raised:
        load_and_compile(directory)
    [problem] = raised.value.problems
    assert str(problem).startswith("docs.yaml:7:"), problem
    assert (
        "principal.attributes.clearance is declared an integer but is compared with a string"
        in str(problem)
    )
    good = with_when(
        "resource.attributes.owner == principal.id && principal.attributes.clearance >= 3"
    )
    assert load_and_compile(write_set(tmp_path / "q", good)).rule_count == 1


def test_explain_names_a_missing_rule_and_a_missing_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.delenv("AUTHZ_DATABASE_URL", raising=False)
    policies = str(SHIPPED_POLICIES)
    assert main(["policy", "explain", "app-members-use-adon", policies]) == ExitCode.NOT_FOUND
    assert "did you mean 'app-members-use-addon'?" in capsys.readouterr().err
    empty = ["--data-dir", str(tmp_path / "no-data")]
    assert main(["policy", "explain", "addon-not-provisioned", policies, *empty]) == ExitCode.OK
    captured = capsys.readouterr()
    assert "decisions it decided in the last 7 days: 0 of 0 read" in captured.out
    assert "no audit log" in captured.err
    assert "policies/app_ownership.yaml" not in captured.out  # files are named within the set
    assert "addon-not-provisioned: deny at app_ownership.yaml:" in captured.out
