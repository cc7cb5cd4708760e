"""Policy test suites: YAML files the security team writes, evaluated without a server.

Suites live in ``<policy dir>/tests/*_test.yaml`` (the loader reads only top-level files, so they
never become policies). The format, in short (each shipped suite repeats it in its header)::

    name: app-ownership                  # required
    description: ...
    now: "2025-06-01T12:00:00Z"          # optional RFC 3339; default: when the suite runs
    principals:                          # named principals
      alice:
        type: heroku_user
        id: user-alice
        attributes: {}                   # optional
        session: {resource: dashboard}   # optional: auth = a Heroku SSO session for that add-on
        # (token_kind: sha256 unless the session says `token_kind: sha1` or `unknown`)
        # or `auth: none` (the default) or an explicit auth mapping
    resources:                           # named resources
      dashboard:
        type: addon
        id: res-1
        attributes: {}
        addon: {state: provisioned, app_id: app-1, app_name: shop, plan: basic, region: us}
    access:                              # named access facts (the user's roles on the app)
      owner: {roles: [owner], age_seconds: 12}
      gone: {available: false, error: "Heroku API timed out"}
    tests:
      - name: owner opens the dashboard
        principal: alice
        resource: dashboard
        access: owner                    # optional (a name or an inline mapping)
        context: {}                      # optional; also `caller: <id>` and `now: <RFC 3339>`
        expect:                          # action -> allow | deny | {effect, rule, reason, ...}
          dashboard.view: allow
          account.deactivate: {effect: deny, rule: sso-users-never-change-authentication}
          addon.delete_everything: {effect: deny, reason: ACTION_UNKNOWN}
    data:                                # optional: replaces these top-level keys of `data`
      plans: {basic: {seats: 1}}

Only the listed (test, action) pairs are checked. ``rule`` (or ``rules``) names rule ids that must
be among the rules that decided (the matched deny rules of a DENY, the matched allow rules of an
ALLOW); ``by_default: true`` expects a DENY that no rule matched (default deny, or an action
unknown to a closed catalogue); ``reason`` is text one of the decision's reasons must contain.

Rules read the policy directory's own ``data/`` files, as the server does; a suite's ``data``
replaces whole top-level keys of it for that suite (e.g. a smaller user directory).

Access facts: ``available`` defaults to true; ``age_seconds`` to 0 (or is derived from
``fetched_at``); ``role`` (the strongest known role), ``has_role`` and ``team_role`` (``admin``
for ``team_admin``) are derived from ``roles`` as the server does; ``app_id``
and ``user_id`` come from the resource and principal. The server only supplies access facts for a
heroku_user on a provisioned add-on, so a test naming access elsewhere gets a warning.

Coverage: a rule is exercised when it was a candidate for a checked request (its action and
resource type apply, so its condition was evaluated) or matched; a rule with a condition is fully
covered when its condition was seen both true and false.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

import yaml
from cel_expr_python import cel

from authz.clock import rfc3339
from authz.policy.compile import CompiledPolicySet
from authz.policy.engine import ACTION_UNKNOWN, evaluate
from authz.policy.gate import Outcome, judge
from authz.policy.inputs import (
    ADDON,
    HEROKU_SSO,
    HEROKU_USER,
    NO_ACCESS,
    NO_AUTH_INPUT,
    access_input,
    access_unavailable,
    addon_input,
    auth_input,
    build_input,
    principal_input,
    resource_input,
)
from authz.policy.lint import format_problem
from authz.policy.load import Problem
from authz.policy.model import Decision, Effect, Rule, Source

SUITE_DIR = "tests"
SUITE_GLOB = "*_test.yaml"
SUITE_KEYS = {"name", "description", "now", "principals", "resources", "access", "data", "tests"}
PRINCIPAL_KEYS = {"type", "id", "attributes", "session", "auth"}
SESSION_KEYS = {"resource", "session_id", "issued_at", "token_kind"}
RESOURCE_KEYS = {"type", "id", "attributes", "addon"}
ADDON_KEYS = {"state", "app_id", "app_name", "plan", "region"}
ACCESS_KEYS = set(NO_ACCESS)
CASE_KEYS = {"name", "description", "principal", "resource", "access", "context", "caller"}
CASE_KEYS |= {"now", "expect"}
EXPECT_KEYS = {"effect", "rule", "rules", "by_default", "reason"}
# -- results -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Expectation:
    effect: Effect
    rules: tuple[str, ...] = ()
    by_default: bool = False
    reason: str = ""  # text one of the decision's reasons must contain

    def __str__(self) -> str:
        text = self.effect.value
        if self.rules:
            text += f" (by rule {', '.join(self.rules)})"
        if self.by_default:
            text += " (by default: no rule matched)"
        if self.reason:
            text += f" (reason containing {self.reason!r})"
        return text


@dataclass(frozen=True, slots=True)
class CheckResult:
    """One (test case, action) pair: what was expected and what the policies decided."""

    suite: str
    file: str  # relative to the policy directory, e.g. tests/sso_only_test.yaml
    line: int
    test: str
    action: str
    principal: str
    resource: str
    access: str
    expected: Expectation
    decision: Decision
    failure: str = ""  # empty when it passed

    @property
    def passed(self) -> bool:
        return not self.failure

    @property
    def name(self) -> str:
        return f"{self.test} [{self.action}]"


@dataclass
class RuleCoverage:
    rule: Rule
    evaluations: int = 0
    matched: int = 0
    outcomes: set[str] = field(default_factory=set)  # "true", "false", "error"

    @property
    def exercised(self) -> bool:
        return self.evaluations > 0 or self.matched > 0

    @property
    def has_condition(self) -> bool:
        return bool(self.rule.when)

    @property
    def fully_covered(self) -> bool:
        if not self.has_condition:
            return self.exercised
        return {"true", "false"} <= self.outcomes

    def missing(self) -> list[str]:
        if not self.exercised:
            return ["never evaluated"]
        if not self.has_condition:
            return []
        return [f"never {o}" for o in ("true", "false") if o not in self.outcomes]


@dataclass(frozen=True, slots=True)
class SuiteInfo:
    name: str
    file: str
    tests: int
    checks: int


@dataclass
class SuiteReport:
    policy_dir: Path
    revision: str = ""
    suites: list[SuiteInfo] = field(default_factory=list)
    results: list[CheckResult] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    coverage: dict[str, RuleCoverage] = field(default_factory=dict)
    duration_s: float = 0.0
    # The policy gate refused the set (it does not load, type-check or pass the lints).
    refused: bool = False

    @property
    def failures(self) -> list[CheckResult]:
        return [r for r in self.results if not r.passed]

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def rule_coverage(self) -> float:
        """Percent of rules exercised by at least one check."""
        if not self.coverage:
            return 100.0
        exercised = sum(1 for c in self.coverage.values() if c.exercised)
        return 100.0 * exercised / len(self.coverage)

    @property
    def condition_coverage(self) -> float:
        """Percent of rules with a condition whose condition was seen both true and false."""
        conditional = [c for c in self.coverage.values() if c.has_condition]
        if not conditional:
            return 100.0
        return 100.0 * sum(1 for c in conditional if c.fully_covered) / len(conditional)

    @property
    def uncovered(self) -> list[RuleCoverage]:
        return [c for c in self.coverage.values() if not c.exercised]

    @property
    def partially_covered(self) -> list[RuleCoverage]:
        return [c for c in self.coverage.values() if c.exercised and not c.fully_covered]

    @property
    def passed(self) -> bool:
        return not self.failures and not self.errors and bool(self.results)

    def ok(self, min_coverage: float | None = None) -> bool:
        return self.outcome(min_coverage) is Outcome.OK

    def outcome(self, min_coverage: float | None = None) -> Outcome:
        if self.refused:
            return Outcome.REFUSED
        if not self.passed:
            return Outcome.TESTS_FAILED
        if min_coverage is not None and self.rule_coverage + 1e-9 < min_coverage:
            return Outcome.COVERAGE_LOW
        return Outcome.OK


# -- reading suites ----------------------------------------------------------------------------


class _Map(dict[str, Any]):
    """A YAML mapping that remembers its line and the line of each key."""

    line: int = 0
    key_lines: dict[str, int]


class _SuiteLoader(yaml.SafeLoader):
    duplicates: list[tuple[str, int]]


def _construct_map(loader: _SuiteLoader, node: yaml.MappingNode) -> _Map:
    loader.flatten_mapping(node)
    result = _Map()
    result.line = node.start_mark.line + 1
    result.key_lines = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        key = key if isinstance(key, str) else str(key)
        line = key_node.start_mark.line + 1
        if key in result:
            loader.duplicates.append((key, line))
        result[key] = loader.construct_object(value_node, deep=True)
        result.key_lines[key] = line
    return result


_SuiteLoader.add_constructor("tag:yaml.org,2002:map", _construct_map)


class _SuiteError(Exception):
    def __init__(self, line: int, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.line = line
        self.message = message
        self.hint = hint


def suite_files(policy_dir: Path | str) -> list[Path]:
    directory = Path(policy_dir) / SUITE_DIR
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.glob(SUITE_GLOB) if p.is_file())


def _line(value: Any, default: int) -> int:
    return value.line if isinstance(value, _Map) else default


def _key_line(mapping: Any, key: str, default: int) -> int:
    if isinstance(mapping, _Map):
        return mapping.key_lines.get(key, mapping.line)
    return default


def _require_map(value: Any, line: int, what: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise _SuiteError(line, f"{what} must be a mapping")
    return value


def _check_keys(value: Mapping[str, Any], allowed: set[str], line: int, what: str) -> None:
    for key in value:
        if key not in allowed:
            raise _SuiteError(
                _key_line(value, key, line),
                f"unknown {what} field {key!r}",
                hint=f"allowed fields: {', '.join(sorted(allowed))}",
            )


def _plain(value: Any) -> Any:
    """YAML data → what CEL accepts inside maps (datetimes become RFC 3339 strings)."""
    if isinstance(value, datetime):
        moment = value if value.tzinfo else value.replace(tzinfo=UTC)
        return rfc3339(moment.timestamp())
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _time(value: Any, line: int, what: str) -> datetime:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value.strip())
        except ValueError:
            raise _SuiteError(
                line, f"{what} {value!r} is not an RFC 3339 time", hint="e.g. 2025-06-01T12:00:00Z"
            ) from None
        return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    raise _SuiteError(line, f"{what} must be an RFC 3339 time", hint="e.g. 2025-06-01T12:00:00Z")


@dataclass
class _Case:
    test: str
    line: int
    principal: dict[str, Any]
    principal_name: str
    resource: dict[str, Any]
    resource_name: str
    access: dict[str, Any] | None
    access_name: str
    context: dict[str, Any]
    caller: dict[str, Any]
    now: datetime
    expect: list[tuple[str, Expectation, int]]


@dataclass
class _Suite:
    name: str
    file: str
    cases: list[_Case]
    tests: int
    data: dict[str, Any]  # what `data` reads for this suite: the set's, with the suite's keys


class _SuiteReader:
    """Turns one suite file into cases, collecting problems with file:line."""

    def __init__(
        self, file: str, policy_set: CompiledPolicySet, problems: list[Problem], now: datetime
    ) -> None:
        self.file = file
        self.policy_set = policy_set
        self.problems = problems
        self.default_now = now
        self.rule_ids = {r.rule.id for r in policy_set.rules}
        self.rule_ids |= {f"{r.rule.policy}/{r.rule.id}" for r in policy_set.rules}

    def problem(self, line: int, message: str, hint: str = "", severity: str = "error") -> None:
        self.problems.append(
            Problem(Source(self.file, line), message, hint=hint, severity=severity)
        )

    def read(self, text: str) -> _Suite | None:
        loader = _SuiteLoader(text)
        loader.duplicates = []
        try:
            data = loader.get_single_data()
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            problem = getattr(exc, "problem", None) or str(exc)
            self.problem(mark.line + 1 if mark else 1, f"YAML syntax error: {problem}")
            return None
        finally:
            loader.dispose()
        for key, line in loader.duplicates:
            self.problem(line, f"key {key!r} appears twice in one mapping", "keep one of them")
        if not isinstance(data, Mapping):
            self.problem(1, "a test suite must be a mapping with name and tests")
            return None
        try:
            _check_keys(data, SUITE_KEYS, 1, "suite")
            name = data.get("name")
            if not isinstance(name, str) or not name:
                raise _SuiteError(_key_line(data, "name", 1), "a suite needs a 'name' (string)")
            now = self.default_now
            if data.get("now") is not None:
                now = _time(data["now"], _key_line(data, "now", 1), "now")
            principals = _require_map(
                data.get("principals"), _key_line(data, "principals", 1), "principals"
            )
            resources = _require_map(
                data.get("resources"), _key_line(data, "resources", 1), "resources"
            )
            access = _require_map(data.get("access"), _key_line(data, "access", 1), "access")
            suite_data = self._data(data.get("data"), _key_line(data, "data", 1))
            tests = data.get("tests")
            if not isinstance(tests, list) or not tests:
                raise _SuiteError(_key_line(data, "tests", 1), "a suite needs a 'tests' list")
        except _SuiteError as exc:
            self.problem(exc.line, exc.message, exc.hint)
            return None
        cases: list[_Case] = []
        for item in tests:
            try:
                cases.append(self._case(item, now, principals, resources, access))
            except _SuiteError as exc:
                self.problem(exc.line, exc.message, exc.hint)
        return _Suite(name, self.file, cases, len(tests), suite_data)

    def _data(self, value: Any, line: int) -> dict[str, Any]:
        """The policy set's data with the suite's top-level keys replacing its own."""
        override = _plain(_require_map(value, line, "data"))
        for key in override:
            if not key.isidentifier():
                raise _SuiteError(
                    _key_line(value, key, line),
                    f"data key {key!r} is not a name",
                    hint="use the stem of a data file, e.g. users for data/users.yaml",
                )
        return {**self.policy_set.data, **override}

    # principals, resources and access facts are built per case (they depend on `now`)

    def _principal(
        self, name: str, spec: Any, line: int, resources: Mapping[str, Any], now: datetime
    ) -> dict[str, Any]:
        spec = _require_map(spec, line, f"principal {name!r}")
        line = _line(spec, line)
        _check_keys(spec, PRINCIPAL_KEYS, line, "principal")
        principal = principal_input(
            str(spec.get("type", "")),
            str(spec.get("id", "")),
            _plain(_require_map(spec.get("attributes"), line, "attributes")),
        )
        if "session" in spec and "auth" in spec:
            raise _SuiteError(line, f"principal {name!r} has both 'session' and 'auth'")
        if "session" in spec:
            session = _require_map(spec["session"], line, "session")
            _check_keys(session, SESSION_KEYS, line, "session")
            resource_name = session.get("resource")
            if resource_name not in resources:
                raise _SuiteError(
                    _key_line(spec, "session", line),
                    f"session of principal {name!r} names unknown resource {resource_name!r}",
                    hint=f"resources: {', '.join(sorted(resources)) or '(none)'}",
                )
            resource_spec = resources[resource_name]
            issued = session.get("issued_at")
            issued_at = now if issued is None else _time(issued, _line(session, line), "issued_at")
            principal["auth"] = auth_input(
                HEROKU_SSO,
                session_id=str(session.get("session_id", f"test-session-{name}")),
                resource_id=str(_require_map(resource_spec, line, "resource").get("id", "")),
                issued_at=rfc3339(issued_at.timestamp()),
                token_kind=str(session.get("token_kind", "sha256")),
            )
        elif "auth" in spec:
            auth = spec["auth"]
            if auth in (None, "none"):
                principal["auth"] = dict(NO_AUTH_INPUT)
            elif isinstance(auth, Mapping):
                principal["auth"] = {**NO_AUTH_INPUT, **_plain(auth)}
            else:
                raise _SuiteError(
                    _key_line(spec, "auth", line),
                    "auth must be 'none' or a mapping",
                    hint="use 'session: {resource: <name>}' for a Heroku SSO session",
                )
        return principal

    def _resource(self, name: str, spec: Any, line: int) -> dict[str, Any]:
        spec = _require_map(spec, line, f"resource {name!r}")
        line = _line(spec, line)
        _check_keys(spec, RESOURCE_KEYS, line, "resource")
        resource_type = str(spec.get("type", ""))
        facts = None
        if "addon" in spec or resource_type == ADDON:
            addon = _require_map(spec.get("addon"), line, "addon")
            _check_keys(addon, ADDON_KEYS, _line(addon, line), "addon")
            facts = addon_input(**{key: str(addon.get(key, "")) for key in ADDON_KEYS})
            if "state" not in addon:
                facts["state"] = "provisioned"
        return resource_input(
            resource_type,
            str(spec.get("id", "")),
            _plain(_require_map(spec.get("attributes"), line, "attributes")),
            facts,
        )

    def _access(
        self,
        spec: Any,
        line: int,
        principal: Mapping[str, Any],
        resource: Mapping[str, Any],
        now: datetime,
    ) -> dict[str, Any]:
        spec = _require_map(spec, line, "access")
        line = _line(spec, line)
        _check_keys(spec, ACCESS_KEYS, line, "access")
        available = bool(spec.get("available", True))
        roles = [str(r) for r in spec.get("roles") or []]
        app_id = str(spec.get("app_id", resource.get("addon", {}).get("app_id", "")))
        user_id = str(spec.get("user_id", principal.get("id", "")))
        # Derived with the server's own builder; a suite may still state a field outright.
        if available:
            fact = access_input(
                app_id=app_id,
                user_id=user_id,
                roles=roles,
                permissions=[str(p) for p in spec.get("permissions") or []],
                team_role=str(
                    spec.get("team_role", next((r[5:] for r in roles if r.startswith("team_")), ""))
                ),
                fetched_at="",
                age_seconds=0.0,
            )
        else:
            fact = access_unavailable(app_id=app_id, user_id=user_id)
            fact["roles"] = roles
            fact["permissions"] = [str(p) for p in spec.get("permissions") or []]
        for key in ("role", "team_role", "error"):
            if key in spec:
                fact[key] = str(spec[key])
        if "has_role" in spec or "role" in spec:
            fact["has_role"] = bool(spec.get("has_role", bool(fact["role"])))
        age = spec.get("age_seconds")
        fetched = spec.get("fetched_at")
        if fetched is not None:
            fetched_at = _time(fetched, _key_line(spec, "fetched_at", line), "fetched_at")
            if age is None:
                age = (now - fetched_at).total_seconds()
            fact["fetched_at"] = rfc3339(fetched_at.timestamp())
        elif available:
            age = 0.0 if age is None else age
            fact["fetched_at"] = rfc3339((now - timedelta(seconds=float(age))).timestamp())
        else:
            fact["fetched_at"] = ""
        try:
            fact["age_seconds"] = float(-1.0 if age is None else age)
        except (TypeError, ValueError):
            raise _SuiteError(line, f"age_seconds must be a number, not {age!r}") from None
        return fact

    def _expectation(self, value: Any, line: int) -> Expectation:
        if isinstance(value, str):
            return Expectation(self._effect(value, line))
        if not isinstance(value, Mapping):
            raise _SuiteError(
                line, "an expectation is allow, deny or {effect: ..., rule: ...}", hint=""
            )
        _check_keys(value, EXPECT_KEYS, line, "expectation")
        if "effect" not in value:
            raise _SuiteError(line, "an expectation mapping needs 'effect' (allow or deny)")
        effect = self._effect(value["effect"], line)
        rules: list[str] = []
        for key in ("rule", "rules"):
            raw = value.get(key)
            if raw is None:
                continue
            rules.extend(str(r) for r in (raw if isinstance(raw, list) else [raw]))
        for rule in rules:
            if rule not in self.rule_ids:
                raise _SuiteError(
                    line,
                    f"expectation names rule {rule!r}, which is not in the policy set",
                    hint="use a rule id (or policy/rule id) from the policy files",
                )
        by_default = bool(value.get("by_default", False))
        if by_default and (effect is Effect.ALLOW or rules):
            raise _SuiteError(line, "by_default expects a DENY that no rule matched; drop 'rule'")
        reason = value.get("reason", "")
        if not isinstance(reason, str):
            raise _SuiteError(line, "'reason' is text one of the decision's reasons contains")
        return Expectation(effect, tuple(rules), by_default, reason)

    @staticmethod
    def _effect(value: Any, line: int) -> Effect:
        try:
            return Effect(str(value).upper())
        except ValueError:
            raise _SuiteError(line, f"expected effect {value!r} is not allow or deny") from None

    def _case(
        self,
        item: Any,
        suite_now: datetime,
        principals: Mapping[str, Any],
        resources: Mapping[str, Any],
        access: Mapping[str, Any],
    ) -> _Case:
        if not isinstance(item, Mapping):
            raise _SuiteError(1, "each test must be a mapping with name, principal, resource")
        line = _line(item, 1)
        _check_keys(item, CASE_KEYS, line, "test")
        test = item.get("name")
        if not isinstance(test, str) or not test:
            raise _SuiteError(line, "a test needs a 'name'")
        now = suite_now
        if item.get("now") is not None:
            now = _time(item["now"], _key_line(item, "now", line), "now")

        def named(kind: str, table: Mapping[str, Any]) -> str:
            value = item.get(kind)
            if not isinstance(value, str) or value not in table:
                raise _SuiteError(
                    _key_line(item, kind, line),
                    f"test {test!r} names unknown {kind} {value!r}",
                    hint=f"declared: {', '.join(sorted(table)) or '(none)'}",
                )
            return value

        principal_name = named("principal", principals)
        resource_name = named("resource", resources)
        principal = self._principal(
            principal_name, principals[principal_name], line, resources, now
        )
        resource = self._resource(resource_name, resources[resource_name], line)
        access_fact: dict[str, Any] | None = None
        access_name = ""
        raw_access = item.get("access")
        if raw_access is not None:
            access_line = _key_line(item, "access", line)
            if isinstance(raw_access, str):
                if raw_access not in access:
                    raise _SuiteError(
                        access_line,
                        f"test {test!r} names unknown access {raw_access!r}",
                        hint=f"declared: {', '.join(sorted(access)) or '(none)'}",
                    )
                access_name, raw_access = raw_access, access[raw_access]
            else:
                access_name = "(inline)"
            access_fact = self._access(raw_access, access_line, principal, resource, now)
            addon = resource.get("addon", {})
            if principal["type"] != HEROKU_USER or addon.get("state") != "provisioned":
                self.problem(
                    access_line,
                    f"test {test!r}: the server supplies access facts only for a heroku_user "
                    "on a provisioned add-on, so this input cannot happen",
                    hint="drop 'access' from this test",
                    severity="warning",
                )
        context = _plain(_require_map(item.get("context"), line, "context"))
        caller = {"id": str(item.get("caller", ""))}
        expect_raw = item.get("expect")
        if not isinstance(expect_raw, Mapping) or not expect_raw:
            raise _SuiteError(
                _key_line(item, "expect", line),
                f"test {test!r} needs 'expect': a map of action -> allow | deny",
            )
        expect: list[tuple[str, Expectation, int]] = []
        catalogue = self.policy_set.catalogue
        for action, value in expect_raw.items():
            action_line = _key_line(expect_raw, action, line)
            expectation = self._expectation(value, action_line)
            expect.append((action, expectation, action_line))
            # A test meant for an unknown action says so by expecting ACTION_UNKNOWN; any other
            # uncatalogued name is probably a misspelling that would pass as a deny.
            if catalogue and action not in catalogue and ACTION_UNKNOWN not in expectation.reason:
                self.problem(
                    action_line,
                    f"test {test!r} checks action {action!r}, which is not catalogued",
                    hint="check the spelling against the action catalogue (to test that an "
                    f"unknown action is denied, expect {{effect: deny, reason: {ACTION_UNKNOWN}}})",
                    severity="warning",
                )
        return _Case(
            test,
            line,
            principal,
            principal_name,
            resource,
            resource_name,
            access_fact,
            access_name,
            context,
            caller,
            now,
            expect,
        )


# -- running -----------------------------------------------------------------------------------


def _matches_filter(text: str | None, *names: str) -> bool:
    if not text:
        return True
    needle = text.lower()
    return any(needle in name.lower() for name in names)


def run_suites(
    policy_dir: Path | str,
    filter: str | None = None,
    *,
    now: datetime | None = None,
    strict: bool = False,
) -> SuiteReport:
    """Run every suite in ``policy_dir/tests`` against the policies in ``policy_dir``.

    `filter` keeps the tests whose suite name, test name or file name contains it
    (case-insensitive). `now` is the default time of suites that name none.
    """
    started = time.perf_counter()
    policy_dir = Path(policy_dir)
    report = SuiteReport(policy_dir)
    verdict = judge(policy_dir, strict=strict)
    policy_set = verdict.policy_set
    if policy_set is None:
        # The gate refuses the set: nothing is tested, as the server would not serve it.
        report.problems.extend(verdict.errors)
        report.refused = True
        report.duration_s = time.perf_counter() - started
        return report
    report.revision = policy_set.revision
    report.coverage = {c.rule.id: RuleCoverage(c.rule) for c in policy_set.rules}
    default_now = now or datetime.now(tz=UTC)
    files = suite_files(policy_dir)
    if not files:
        report.problems.append(
            Problem(
                Source(str(policy_dir / SUITE_DIR), 0),
                f"no test suites ({SUITE_GLOB}) found",
                hint="write one; see the format in authz.policy.suites",
            )
        )
    for path in files:
        file = f"{SUITE_DIR}/{path.name}"
        reader = _SuiteReader(file, policy_set, report.problems, default_now)
        suite = reader.read(path.read_text(encoding="utf-8", errors="replace"))
        if suite is None:
            continue
        checks = 0
        tests = 0
        for case in suite.cases:
            if not _matches_filter(filter, suite.name, case.test, path.name):
                continue
            tests += 1
            for action, expectation, line in case.expect:
                report.results.append(
                    _run_check(policy_set, report.coverage, suite, case, action, expectation, line)
                )
                checks += 1
        if tests or not filter:
            report.suites.append(SuiteInfo(suite.name, file, tests, checks))
    if files and not report.results and not report.errors:
        report.problems.append(
            Problem(
                Source(str(policy_dir / SUITE_DIR), 0),
                f"no test matched the filter {filter!r}" if filter else "the suites hold no tests",
                hint="check the --filter text" if filter else "",
            )
        )
    report.duration_s = time.perf_counter() - started
    return report


def _run_check(
    policy_set: CompiledPolicySet,
    coverage: dict[str, RuleCoverage],
    suite: _Suite,
    case: _Case,
    action: str,
    expectation: Expectation,
    line: int,
) -> CheckResult:
    inputs = build_input(
        action=action,
        principal=case.principal,
        resource=case.resource,
        context=case.context,
        access=case.access,
        caller=case.caller,
        now=case.now,
        data=suite.data,
    )
    _record_coverage(policy_set, coverage, inputs)
    decision = evaluate(policy_set, inputs)
    for matched in decision.matched:
        if matched.rule_id in coverage:
            coverage[matched.rule_id].matched += 1
    return CheckResult(
        suite=suite.name,
        file=suite.file,
        line=line,
        test=case.test,
        action=action,
        principal=f"{case.principal_name} ({case.principal['type']}:{case.principal['id']})",
        resource=f"{case.resource_name} ({case.resource['type']}:{case.resource['id']})",
        access=case.access_name,
        expected=expectation,
        decision=decision,
        failure=_failure(expectation, decision),
    )


def _record_coverage(
    policy_set: CompiledPolicySet, coverage: dict[str, RuleCoverage], inputs: Mapping[str, Any]
) -> None:
    """Evaluate every candidate rule's condition as the engine does, noting each outcome."""
    if policy_set.closed and inputs["action"] not in policy_set.catalogue:
        return  # the engine consults no rule for an action its closed catalogue does not know
    resource_type = inputs["resource"].get("type", "")
    activation = None
    for compiled in policy_set.rules_for(inputs["action"]):
        if compiled.resource_types and resource_type not in compiled.resource_types:
            continue
        entry = coverage.get(compiled.rule.id)
        if entry is None:
            continue
        entry.evaluations += 1
        if compiled.program is None:
            entry.outcomes.add("true")
            continue
        if activation is None:
            activation = policy_set.env.Activation(inputs)
        result = compiled.program.eval(activation)
        if result.type() == cel.Type.BOOL:
            entry.outcomes.add("true" if result.value() else "false")
        else:
            entry.outcomes.add("error")


def deciding_rules(decision: Decision) -> list[str]:
    """The rules that decided: the matched deny rules of a DENY, the allow rules of an ALLOW."""
    wanted = Effect.DENY if decision.effect is Effect.DENY else Effect.ALLOW
    return [f"{m.policy}/{m.rule_id}" for m in decision.matched if m.effect is wanted]


def _failure(expected: Expectation, decision: Decision) -> str:
    if decision.effect is not expected.effect:
        return f"expected {expected.effect.value}, got {decision.effect.value}"
    deciding = deciding_rules(decision)
    short = {d.split("/", 1)[1] for d in deciding} | set(deciding)
    missing = [r for r in expected.rules if r not in short]
    if missing:
        by = ", ".join(deciding) or "default deny (no rule matched)"
        return (
            f"{decision.effect.value} as expected, but not by rule {', '.join(missing)} "
            f"(decided by {by})"
        )
    if expected.by_default and deciding:
        return f"expected a default deny, but rule {', '.join(deciding)} denied"
    if expected.reason and not any(expected.reason in reason for reason in decision.reasons):
        return f"{decision.effect.value} as expected, but no reason contains {expected.reason!r}"
    return ""


# -- output ------------------------------------------------------------------------------------


def _explain(result: CheckResult) -> list[str]:
    decision = result.decision
    lines = [
        f"principal {result.principal}, resource {result.resource}"
        + (f", access {result.access}" if result.access else ""),
        f"expected  {result.expected}",
        f"got       {decision.effect.value}",
    ]
    for m in decision.matched:
        lines.append(f"matched   {m.effect.value.lower():5} {m.policy}/{m.rule_id}: {m.reason}")
    if not decision.matched:
        lines.append("matched   (no rule)")
    lines.extend(f"reason    {reason}" for reason in decision.reasons)
    lines.extend(f"error     {error}" for error in decision.errors)
    return lines


def format_report(
    report: SuiteReport,
    *,
    verbose: bool = False,
    min_coverage: float | None = None,
) -> str:
    """Readable text: each failure explained, then a summary with coverage."""
    directory = report.policy_dir
    out: list[str] = []
    for problem in report.problems:
        out.append(format_problem(problem, directory))
    for result in report.results:
        if result.passed and not verbose:
            continue
        status = "ok  " if result.passed else "FAIL"
        out.append(
            f"{status} {result.suite} / {result.test} [{result.action}]"
            f"  ({directory}/{result.file}:{result.line})"
        )
        if not result.passed:
            out.append(f"    {result.failure}")
            out.extend(f"    {line}" for line in _explain(result))
    failed = len(report.failures)
    tests = sum(s.tests for s in report.suites)
    out.append(
        f"{len(report.suites)} suites, {tests} tests, {len(report.results)} checks: "
        f"{len(report.results) - failed} passed, {failed} failed"
        + (f", {len(report.errors)} error(s)" if report.errors else "")
        + f" ({report.duration_s * 1000:.0f} ms, policy revision {report.revision or '-'})"
    )
    if report.coverage:
        exercised = sum(1 for c in report.coverage.values() if c.exercised)
        conditional = [c for c in report.coverage.values() if c.has_condition]
        both = sum(1 for c in conditional if c.fully_covered)
        out.append(
            f"rule coverage {report.rule_coverage:.1f} % ({exercised}/{len(report.coverage)} "
            f"rules exercised); conditions seen true and false: {both}/{len(conditional)}"
        )
        for entry in report.uncovered:
            rule = entry.rule
            out.append(f"  not exercised: {rule.policy}/{rule.id} ({directory}/{rule.source})")
        for entry in report.partially_covered:
            rule = entry.rule
            out.append(
                f"  condition {', '.join(entry.missing())}: {rule.policy}/{rule.id} "
                f"({directory}/{rule.source})"
            )
    if min_coverage is not None and report.rule_coverage + 1e-9 < min_coverage:
        out.append(f"FAIL rule coverage {report.rule_coverage:.1f} % is below {min_coverage:g} %")
    return "\n".join(out)


def report_json(report: SuiteReport, *, min_coverage: float | None = None) -> dict[str, Any]:
    return {
        "ok": report.ok(min_coverage),
        "policy_dir": str(report.policy_dir),
        "policy_revision": report.revision,
        "suites": [
            {"name": s.name, "file": s.file, "tests": s.tests, "checks": s.checks}
            for s in report.suites
        ],
        "checks": len(report.results),
        "failed": len(report.failures),
        "results": [
            {
                "suite": r.suite,
                "file": r.file,
                "line": r.line,
                "test": r.test,
                "action": r.action,
                "passed": r.passed,
                "failure": r.failure,
                "expected": {
                    "effect": r.expected.effect.value,
                    "rules": list(r.expected.rules),
                    "by_default": r.expected.by_default,
                    "reason": r.expected.reason,
                },
                "got": r.decision.effect.value,
                "matched": [
                    {"policy": m.policy, "rule_id": m.rule_id, "effect": m.effect.value}
                    for m in r.decision.matched
                ],
                "reasons": list(r.decision.reasons),
                "errors": list(r.decision.errors),
            }
            for r in report.results
        ],
        "problems": [
            {
                "file": p.source.file,
                "line": p.source.line,
                "severity": p.severity,
                "message": p.message,
                "hint": p.hint,
            }
            for p in report.problems
        ],
        "coverage": {
            "rule_percent": round(report.rule_coverage, 2),
            "condition_percent": round(report.condition_coverage, 2),
            "min_rule_percent": min_coverage,
            "rules": [
                {
                    "policy": c.rule.policy,
                    "rule_id": c.rule.id,
                    "file": c.rule.source.file,
                    "line": c.rule.source.line,
                    "evaluations": c.evaluations,
                    "matched": c.matched,
                    "outcomes": sorted(c.outcomes),
                    "exercised": c.exercised,
                    "fully_covered": c.fully_covered,
                }
                for c in report.coverage.values()
            ],
        },
    }


def junit_xml(report: SuiteReport) -> str:
    """JUnit XML: one <testsuite> per suite file, one <testcase> per (test, action) check."""
    root = ET.Element("testsuites", name=f"authz policy tests ({report.policy_dir})")
    by_file: dict[str, list[CheckResult]] = {}
    for result in report.results:
        by_file.setdefault(result.file, []).append(result)
    problems_by_file: dict[str, list[Problem]] = {}
    for problem in report.errors:
        problems_by_file.setdefault(problem.source.file, []).append(problem)
    names = {s.file: s.name for s in report.suites}
    total = failures = errors = 0
    for file in sorted(set(by_file) | set(problems_by_file)):
        results = by_file.get(file, [])
        problems = problems_by_file.get(file, [])
        suite_failures = sum(1 for r in results if not r.passed)
        suite = ET.SubElement(
            root,
            "testsuite",
            name=names.get(file, file),
            file=file,
            tests=str(len(results) + len(problems)),
            failures=str(suite_failures),
            errors=str(len(problems)),
            skipped="0",
        )
        properties = ET.SubElement(suite, "properties")
        for key, value in (
            ("policy_revision", report.revision),
            ("rule_coverage", f"{report.rule_coverage:.1f}"),
            ("condition_coverage", f"{report.condition_coverage:.1f}"),
        ):
            ET.SubElement(properties, "property", name=key, value=value)
        for result in results:
            case = ET.SubElement(
                suite,
                "testcase",
                classname=result.suite,
                name=result.name,
                file=file,
                line=str(result.line),
                time="0",
            )
            if not result.passed:
                failure = ET.SubElement(case, "failure", message=result.failure, type="mismatch")
                failure.text = "\n".join(_explain(result))
        for problem in problems:
            case = ET.SubElement(
                suite,
                "testcase",
                classname=names.get(file, file),
                name=f"{file}:{problem.source.line}",
                file=file,
                line=str(problem.source.line),
            )
            ET.SubElement(case, "error", message=problem.message, type="suite").text = str(problem)
        total += len(results) + len(problems)
        failures += suite_failures
        errors += len(problems)
    root.set("tests", str(total))
    root.set("failures", str(failures))
    root.set("errors", str(errors))
    root.set("time", f"{report.duration_s:.3f}")
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode")


def dumps_json(report: SuiteReport, *, min_coverage: float | None = None) -> str:
    return json.dumps(report_json(report, min_coverage=min_coverage), indent=2)
