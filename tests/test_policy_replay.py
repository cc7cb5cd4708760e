"""Replay: recorded decisions re-decided with a candidate policy set; exactly the flips it causes.

The audit log is written by the real decision path (Decider.check / record_refusal, with stub fact
sources) into the real AuditLog, so the records have exactly the server's format.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from types import MappingProxyType, SimpleNamespace
from typing import Any

import pytest

from authz.audit import AuditLog
from authz.audit.query import iter_query
from authz.cli.common import ExitCode
from authz.cli.main import main
from authz.decide import Decider, Entity, FactSources, Item, Subject, direct_subject, sso_subject
from authz.facts.heroku import AccessList, AppMember
from authz.policy.gate import load_gated
from authz.policy.holder import PolicyHolder
from authz.policy.replay import format_report, replay, skip_reason
from tests.conftest import SHIPPED_POLICIES

T0 = 1_750_000_000.0


def read_records(target: Path | str, since: float | None) -> Iterator[dict[str, Any]]:
    """The records as the CLI hands them to replay: oldest first, from the audit package."""
    return iter_query(target, since=since, limit=None, oldest_first=True)


def replay_log(target: Path | str, candidate: Path | str, since: float | None = None) -> Any:
    return replay(read_records(target, since), load_gated(candidate), since=since)


DAY = 86400.0
ADDON_ID = "01234567-89ab-cdef-0123-456789ab0001"
APP_ID = "app-shop"
ALLOW_RULE = "app-ownership/app-members-use-addon"
NOT_MEMBER = "app-ownership/not-a-member-of-the-app"


class Registry:
    def get(self, resource_id: str) -> Any:
        if resource_id != ADDON_ID:
            return None
        return SimpleNamespace(
            state="provisioned", app_id=APP_ID, app_name="shop", plan="basic", region="us"
        )


class Access:
    """The app's access list, fetched 20 s before each decision."""

    def __init__(self, clock: list[float]) -> None:
        self.clock = clock

    async def get(self, app_id: str, resource_id: str, deadline: float) -> AccessList:
        members = {
            "user-owner": AppMember("user-owner", "o@example.com", ("owner",)),
            "user-tess": AppMember("user-tess", "t@example.com", ("team_admin",), (), "admin"),
            "user-vic": AppMember("user-vic", "v@example.com", ("viewer",)),
        }
        return AccessList(
            app_id, "shop", "team-1", "user-owner", self.clock[0] - 20, MappingProxyType(members)
        )


def sso(user: str) -> Subject:
    return sso_subject(
        user, ADDON_ID, f"session-{user}", T0 - 60, f"{user}@example.com", token_kind="sha256"
    )


@pytest.fixture
def audit_db(tmp_path: Path) -> Path:
    """An audit log holding the decisions below, all decided under the shipped policies."""
    path = tmp_path / "data" / "audit.db"
    path.parent.mkdir()
    return record_decisions(path)


def record_decisions(path: Any) -> Any:
    """Record the decisions below into the audit log at `path` (a SQLite file or a PostgreSQL
    URL), all decided under the shipped policies."""
    clock = [T0 - 10 * DAY]
    log = AuditLog(path).start()
    decider = Decider(
        PolicyHolder.load(SHIPPED_POLICIES),
        facts=FactSources(addons=Registry(), access=Access(clock)),
        audit=log,
        clock=lambda: clock[0],
    )

    async def decide(subject: Subject, action: str, kind: str = "check") -> str:
        [outcome] = await decider.check(
            subject, [Item(action, Entity("addon", ADDON_ID))], caller="web", kind=kind
        )
        return outcome.decision.effect.value

    async def record_all() -> list[str]:
        effects = [await decide(sso("user-tess"), "dashboard.view")]  # ten days ago: ALLOW
        clock[0] = T0
        effects += [
            await decide(sso("user-owner"), "dashboard.view"),  # ALLOW, unchanged
            await decide(sso("user-tess"), "dashboard.view"),  # ALLOW -> DENY
            await decide(sso("user-tess"), "session.login", kind="sso"),  # ALLOW -> DENY
            await decide(sso("user-tess"), "addon.read_data"),  # ALLOW -> DENY
            await decide(sso("user-vic"), "dashboard.view"),  # DENY -> ALLOW
            await decide(sso("user-owner"), "account.change_password"),  # DENY, unchanged
            await decide(direct_subject(Entity("service", "billing")), "addon.read_data"),
        ]
        # Refused before the policies were consulted: skipped.
        await decider.record_refusal(
            kind="sso",
            subject=direct_subject(Entity("heroku_user", "user-tess")),
            action="session.login",
            resource=Entity("addon", ADDON_ID),
            reason="SSO_REPLAYED: this SSO form was already used",
        )
        unknown = await decider.subject_from_session("no-such-token")
        effects.append(await decide(unknown, "dashboard.view"))
        return effects

    try:
        effects = asyncio.run(record_all())
        # A record of some other kind (not a policy decision): skipped.
        log.record_blocking(
            {"decision_id": "admin-1", "time": T0, "kind": "admin", "effect": "ALLOW"}
        )
    finally:
        log.close()
    assert effects == ["ALLOW", "ALLOW", "ALLOW", "ALLOW", "ALLOW", "DENY", "DENY", "DENY", "DENY"]
    return path


@pytest.fixture
def candidate(tmp_path: Path) -> Path:
    """Team admins lose the add-on; app viewers gain it."""
    directory = tmp_path / "candidate"
    shutil.copytree(SHIPPED_POLICIES, directory)
    path = directory / "app_ownership.yaml"
    text = path.read_text()
    assert '"team_admin", "team_owner"' in text
    path.write_text(text.replace('"team_admin", "team_owner"', '"viewer"'))
    return directory


def groups(items: list[Any]) -> dict[tuple[str, str], int]:
    return {(g.direction, g.key): g.count for g in items}


def test_replay_finds_exactly_the_flips_of_a_policy_change(audit_db: Path, candidate: Path) -> None:
    report = replay_log(audit_db, candidate, since=T0 - DAY)
    assert report.read == 10
    assert report.skipped == {
        "refused before policy evaluation": 2,
        "kind 'admin' is not a policy decision": 1,
    }
    assert report.replayed == 7
    assert report.unchanged == 3
    flips = {(f.principal, f.action, f.kind, f.direction) for f in report.flips}
    assert flips == {
        ("heroku_user:user-tess", "dashboard.view", "check", "ALLOW->DENY"),
        ("heroku_user:user-tess", "session.login", "sso", "ALLOW->DENY"),
        ("heroku_user:user-tess", "addon.read_data", "check", "ALLOW->DENY"),
        ("heroku_user:user-vic", "dashboard.view", "check", "DENY->ALLOW"),
    }
    assert groups(report.by_action()) == {
        ("ALLOW->DENY", "dashboard.view"): 1,
        ("ALLOW->DENY", "session.login"): 1,
        ("ALLOW->DENY", "addon.read_data"): 1,
        ("DENY->ALLOW", "dashboard.view"): 1,
    }
    assert groups(report.by_rule()) == {
        ("ALLOW->DENY", NOT_MEMBER): 3,
        ("DENY->ALLOW", ALLOW_RULE): 1,
    }
    tess = next(f for f in report.flips if f.action == "session.login")
    assert tess.before_rules == (ALLOW_RULE,)
    assert tess.after_rules == (NOT_MEMBER,)
    [deny_group] = [g for g in report.by_rule() if g.direction == "ALLOW->DENY"]
    assert len(deny_group.examples) == 3
    assert set(deny_group.examples) == {
        f.decision_id for f in report.flips if f.direction == "ALLOW->DENY"
    }
    text = format_report(report)
    assert "4 would flip, 3 unchanged, 3 skipped" in text
    assert f"1  {ALLOW_RULE}  e.g. " in text


def test_since_none_replays_everything(audit_db: Path, candidate: Path) -> None:
    report = replay_log(audit_db, candidate, since=None)
    assert report.read == 11
    assert len(report.allow_to_deny) == 4 and len(report.deny_to_allow) == 1


def test_the_same_policies_flip_nothing(audit_db: Path) -> None:
    report = replay_log(audit_db, SHIPPED_POLICIES)
    assert report.flips == []
    assert report.unchanged == report.replayed == 8
    assert report.with_errors == 0
    assert "no decision would change" in format_report(report)


def test_skip_reasons() -> None:
    base = {
        "kind": "check",
        "matched_rules": [],
        "reasons": ["no allow rule matched action 'x' (default deny)"],
        "input": {
            "principal": {},
            "resource": {},
            "action": "x",
            "access": {},
            "now": "2025-01-01T00:00:00.000000Z",
        },
    }
    assert skip_reason(base) is None
    assert skip_reason({**base, "reasons": ["ADDON_UNKNOWN: not here"]}) == (
        "refused before policy evaluation"
    )
    no_access = {**base, "input": {k: v for k, v in base["input"].items() if k != "access"}}
    assert skip_reason(no_access) == "refused before policy evaluation"
    assert skip_reason({**base, "input": None}) == "no recorded input"


def run(argv: list[str]) -> int:
    """`authz policy ARGV...` in process (argv starts after `policy`, or with it)."""
    return main(argv if argv[:1] == ["policy"] else ["policy", *argv])


def test_replay_command_exit_codes(
    audit_db: Path, candidate: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data_dir = str(audit_db.parent)
    since = datetime.fromtimestamp(T0 - DAY, tz=UTC).isoformat()
    argv = ["replay", "--candidate", str(candidate), "--data-dir", data_dir, "--since", since]
    assert run(argv) == 4
    assert "ALLOW -> DENY: 3" in capsys.readouterr().out
    assert run([*argv, "--json"]) == 4
    data = json.loads(capsys.readouterr().out)
    assert (data["flips"], data["allow_to_deny"], data["deny_to_allow"]) == (4, 3, 1)
    assert data["skipped"] == 3
    same = ["replay", "--candidate", str(SHIPPED_POLICIES), "--data-dir", data_dir]
    assert run(same) == 0
    missing = ["replay", "--candidate", str(candidate), "--data-dir", str(tmp_path / "nope")]
    assert run(missing) == 1
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "p.yaml").write_text("name: p\nrules: [\n")
    refused = ["replay", "--candidate", str(broken), "--data-dir", data_dir]
    assert run(refused) == ExitCode.POLICY_REFUSED
    assert run([*argv[:-2], "--since", "yesterday-ish"]) == ExitCode.USAGE


def test_replay_reads_records_whose_principal_and_context_are_stored_once(
    tmp_path: Path,
) -> None:
    """A batch's principal and context are stored once, as shared parts; replay puts them back,
    so a candidate rule on them sees what the recorded decision saw."""
    from authz.audit.testing import fetch_all

    path = tmp_path / "audit.db"
    log = AuditLog(path).start()
    decider = Decider(
        PolicyHolder.load(SHIPPED_POLICIES),
        facts=FactSources(addons=Registry()),
        audit=log,
        clock=lambda: T0,
    )
    subject = direct_subject(Entity("service", "billing", {"tier": "gold", "pad": "p" * 2000}))
    items = [Item("addon.read_data", Entity("addon", ADDON_ID)) for _ in range(3)]
    try:
        outcomes = asyncio.run(
            decider.check(subject, items, context={"channel": "api", "pad": "q" * 1000})
        )
    finally:
        log.close()
    assert {o.decision.effect.value for o in outcomes} == {"DENY"}
    assert fetch_all(path, "SELECT count(*) FROM audit_part") == [(2,)]

    candidate = tmp_path / "candidate"
    shutil.copytree(SHIPPED_POLICIES, candidate)
    (candidate / "gold.yaml").write_text(
        "name: gold\n"
        "rules:\n"
        "  - id: gold-services-read\n"
        "    effect: allow\n"
        "    actions: [addon.read_data]\n"
        "    resource_types: [addon]\n"
        '    when: principal.attributes.tier == "gold" && context.channel == "api"\n'
        "    reason: Gold services may read over the API\n"
    )
    report = replay_log(path, candidate)
    assert (report.read, report.replayed, len(report.deny_to_allow)) == (3, 3, 3)
    assert {f.decision_id for f in report.flips} == {o.decision_id for o in outcomes}


def test_replay_decides_with_the_candidates_data(audit_db: Path, tmp_path: Path) -> None:
    """Records never carry the reference data (the revision names it); a candidate is replayed
    with its own data/ files."""
    assert all("data" not in record.get("input", {}) for record in read_records(audit_db, None))
    directory = tmp_path / "with-data"
    shutil.copytree(SHIPPED_POLICIES, directory)
    (directory / "data").mkdir()
    (directory / "data" / "blocked.yaml").write_text("users: [user-owner]\n")
    (directory / "blocked.yaml").write_text(
        "name: blocked\nrules:\n  - id: blocked-users\n    effect: deny\n"
        '    actions: ["*"]\n    when: principal.id in data.blocked.users\n'
        "    reason: blocked\n"
    )
    report = replay_log(audit_db, directory, since=T0 - DAY)
    assert {(f.principal, f.action, f.direction) for f in report.flips} == {
        ("heroku_user:user-owner", "dashboard.view", "ALLOW->DENY")
    }
    assert report.flips[0].after_rules == ("blocked/blocked-users",)


@pytest.fixture
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    from tests.pg import use_backend

    with use_backend(request.param, tmp_path) as chosen:
        yield chosen


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"], indirect=True)
def test_replay_reads_the_audit_log_where_settings_put_it(
    backend: Any,
    candidate: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The replicas' shared PostgreSQL log, through the same settings as `serve`
    (DATABASE_URL), or --database-url; SQLite through AUTHZ_DATA_DIR."""
    if backend.name == "sqlite":
        (tmp_path / "data").mkdir()
        record_decisions(tmp_path / "data" / "audit.db")
        monkeypatch.setenv("AUTHZ_DATA_DIR", str(tmp_path / "data"))
        monkeypatch.delenv("DATABASE_URL", raising=False)
        monkeypatch.delenv("AUTHZ_DATABASE_URL", raising=False)
    else:
        record_decisions(backend.target)
        monkeypatch.setenv("AUTHZ_DATABASE_URL", backend.target)
        monkeypatch.setenv("AUTHZ_DATA_DIR", str(tmp_path / "nothing-here"))
    monkeypatch.chdir(tmp_path)  # no ./data/audit.db to fall back on
    argv = ["replay", "--candidate", str(candidate), "--json"]
    assert run(argv) == ExitCode.FLIPS
    data = json.loads(capsys.readouterr().out)
    # every record, Tess's of ten days ago too
    assert (data["flips"], data["allow_to_deny"], data["deny_to_allow"]) == (5, 4, 1)
    if backend.name == "postgresql":
        assert data["audit_db"].startswith("postgresql://")
        monkeypatch.delenv("AUTHZ_DATABASE_URL")
        assert run([*argv, "--database-url", backend.target]) == ExitCode.FLIPS
        assert json.loads(capsys.readouterr().out)["flips"] == 5
    # explain reads the same log: the rule that allowed Tess's dashboard decided these.
    explain = ["explain", "app-members-use-addon", str(SHIPPED_POLICIES), "--days", "100000"]
    if backend.name == "postgresql":
        explain += ["--database-url", backend.target]
    assert run([*explain, "--json"]) == ExitCode.OK
    report = json.loads(capsys.readouterr().out)
    assert (report["decided"], report["records_read"]) == (5, 11), report
    assert report["tests"], "the shipped suites match this rule"
