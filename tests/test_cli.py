"""The `authz` command as a user runs it: the installed script, real servers, real exit codes."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Iterator
from dataclasses import replace
from importlib.metadata import version
from pathlib import Path
from urllib.parse import urlencode

import pytest

import authz
from authz.cli import ExitCode, build_parser
from authz.config import CallerToken, Settings
from authz.devtools.dev_world import dev_salt
from authz.devtools.heroku_sim import HerokuSimulator, load_fixture
from authz.devtools.provisioning import provisioning_fields
from authz.devtools.sso_forms import heroku_sso_form
from tests.binary import authz as run
from tests.binary import clean_env
from tests.conftest import RunningService
from tests.heroku_world import world_settings

ACME = "authz-curved-12345"
ADMIN_TOKEN = "cli-test-admin-token"
SERVICE_TOKEN = "cli-test-service-token"


# -- the parser ----------------------------------------------------------------------------------


def _commands(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _commands(sub, (*path, name))


def test_every_command_has_an_example_in_its_help() -> None:
    commands = list(_commands(build_parser()))
    assert len(commands) > 25
    missing = [" ".join(path) for path, p in commands if not (p.epilog or "").startswith("example")]
    assert not missing, f"--help without an example: {missing}"
    shown = run("session", "exchange", "--help")
    assert shown.returncode == 0
    assert "example:\n  authz session exchange --form" in shown.stdout


def test_version_is_the_installed_one() -> None:
    result = run("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"authz {version('authz')}"
    assert version("authz") == authz.__version__  # pyproject.toml and the package agree


def test_usage_errors_exit_2_with_what_to_fix() -> None:
    result = run("check", "--action", "a", "--resource", "x:y")
    assert result.returncode == ExitCode.USAGE
    assert "authz check: name the subject with --principal TYPE:ID or --session TOKEN" in (
        result.stderr
    )
    wrong = run("check", "--principal", "nocolon", "--action", "a", "--resource", "x:y")
    assert wrong.returncode == ExitCode.USAGE and "--principal: expected TYPE:ID" in wrong.stderr
    remote = run("policy", "status", "--server", "10.20.30.40:50051")
    assert remote.returncode == ExitCode.USAGE
    assert "not on this machine" in remote.stderr and "--plaintext" not in remote.stdout


# -- policy --------------------------------------------------------------------------------------


def test_validate_accepts_shipped_policies() -> None:
    result = run("policy", "validate", "policies")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("ok:")


def test_validate_rejects_a_broken_policy_with_file_and_line(
    policy_dir: Callable[[dict[str, str]], Path],
) -> None:
    directory = policy_dir(
        {
            "broken.yaml": """
            name: broken
            rules:
              - id: bad-cel
                effect: allow
                actions: [a]
                when: principal.id ==
                reason: r
            """
        }
    )
    result = run("policy", "validate", str(directory))
    assert result.returncode == ExitCode.POLICY_REFUSED
    assert f"{directory}/broken.yaml:6:" in result.stdout
    assert "[bad-cel]" in result.stdout


def test_policy_status(start: Callable[..., RunningService], base_settings: Settings) -> None:
    svc = start(base_settings)
    result = run("policy", "status", "--server", svc.address)
    assert result.returncode == 0, result.stderr
    assert f"serving revision {svc.service.policies.current.revision}" in result.stdout
    assert "no change refused since start" in result.stdout
    as_json = json.loads(run("policy", "status", "--server", svc.address, "--json").stdout)
    assert as_json["policy_revision"] == svc.service.policies.current.revision
    assert as_json["last_refused_at"] is None


# -- check ---------------------------------------------------------------------------------------


def test_check_exit_codes(start: Callable[..., RunningService], base_settings: Settings) -> None:
    svc = start(base_settings)
    ask = ("--principal", "svc:billing", "--action", "account.login_password", "--resource")
    denied = run("check", "--server", svc.address, *ask, "account:1")
    assert denied.returncode == ExitCode.DENY, denied.stderr
    assert denied.stdout.startswith("DENY")
    assert "no-password-login" in denied.stdout
    as_json = run("check", "--server", svc.address, *ask, "account:1", "--json")
    decision = json.loads(as_json.stdout)
    assert as_json.returncode == ExitCode.DENY
    assert decision["effect"] == "DENY" and decision["allowed"] is False
    assert decision["matched_rules"][0]["rule_id"] == "no-password-login"
    unreachable = run("check", "--server", "127.0.0.1:1", *ask, "c:d", "--timeout", "1")
    assert unreachable.returncode == ExitCode.ERROR
    assert "UNAVAILABLE" in unreachable.stderr


def test_check_sends_the_caller_token(
    start: Callable[..., RunningService], base_settings: Settings
) -> None:
    svc = start(replace(base_settings, caller_tokens=(CallerToken.of("web", "s3cret-token"),)))
    args = (
        "check",
        "--server",
        svc.address,
        "--principal",
        "svc:web",
        "--action",
        "account.login_password",
        "--resource",
        "account:1",
    )
    refused = run(*args)
    assert refused.returncode == ExitCode.ERROR and "UNAUTHENTICATED" in refused.stderr
    accepted = run(*args, "--token", "s3cret-token")
    assert accepted.returncode == ExitCode.DENY, accepted.stderr
    assert accepted.stdout.startswith("DENY")
    from_env = run(*args, env=clean_env(AUTHZ_CALLER_TOKEN="s3cret-token"))
    assert from_env.returncode == ExitCode.DENY, from_env.stderr


# -- a Heroku world: addons and sessions ----------------------------------------------------------


@pytest.fixture
def heroku(
    start: Callable[..., RunningService], base_settings: Settings
) -> Iterator[tuple[HerokuSimulator, RunningService]]:
    """The simulator and a server wired to it, with the development salt (so `authz dev
    sso-form` signs forms it accepts), an admin caller and a plain one."""
    with HerokuSimulator(load_fixture()) as sim:
        settings = world_settings(
            base_settings,
            sim,
            sso_salts=(dev_salt(),),
            caller_tokens=(
                CallerToken.of("web-tier", ADMIN_TOKEN),
                CallerToken.of("dashboard", SERVICE_TOKEN),
            ),
            admins=frozenset({"web-tier"}),
        )
        yield sim, start(settings)


def _admin(svc: RunningService, *args: str, token: str = ADMIN_TOKEN) -> list[str]:
    return [*args, "--server", svc.address, "--token", token]


def test_addon_register_show_deprovision(heroku: tuple[HerokuSimulator, RunningService]) -> None:
    sim, svc = heroku
    fields = provisioning_fields(sim, ACME)
    resource_id = fields["resource_id"]
    # What Heroku's provisioning call carries: no app id (the grant tells the server).
    register = _admin(
        svc,
        "addon",
        "register",
        resource_id,
        "--plan",
        fields["plan"],
        "--region",
        fields["region"],
        "--name",
        fields["name"],
        "--grant-code",
        fields["oauth_grant_code"],
    )
    first = run(*register, "--json")
    assert first.returncode == 0, first.stderr
    registered = json.loads(first.stdout)
    assert registered["changed"] is True
    assert registered["addon"]["has_oauth_tokens"] is True
    assert registered["addon"]["state"] == "provisioned"

    again = run(*register)  # Heroku redelivers the same call: the grant is not spent twice
    assert again.returncode == 0, again.stderr
    assert "nothing changed" in again.stdout and "acme-billing" in again.stdout

    not_admin = run(*_admin(svc, "addon", "deprovision", resource_id, token=SERVICE_TOKEN))
    assert not_admin.returncode == ExitCode.DENY
    assert "CALLER_NOT_ADMIN" in not_admin.stderr

    data_dir = str(svc.service.settings.data_dir)
    shown = run("addon", "show", resource_id, "--data-dir", data_dir, "--json")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["app_name"] == "acme-billing"
    from_env = run("addon", "show", resource_id, env=clean_env(AUTHZ_DATA_DIR=data_dir))
    assert from_env.returncode == 0 and "OAuth tokens: stored, encrypted" in from_env.stdout

    unknown = run("addon", "show", "00000000-0000-4000-8000-000000000000", "--data-dir", data_dir)
    assert unknown.returncode == ExitCode.NOT_FOUND
    assert "no add-on 00000000-0000-4000-8000-000000000000 in the registry" in unknown.stderr

    ended = run(*_admin(svc, "addon", "deprovision", resource_id, "--json"))
    assert ended.returncode == 0, ended.stderr
    assert json.loads(ended.stdout)["addon"]["state"] == "deprovisioned"
    shown = run("addon", "show", resource_id, "--data-dir", data_dir)
    assert "deprovisioned" in shown.stdout and "none stored" in shown.stdout


def test_addon_show_without_a_store_says_where_it_looked(tmp_path: Path) -> None:
    result = run(
        "addon", "show", "ce9b8461-8f28-4524-bffc-bd6d349c4ef0", "--data-dir", str(tmp_path)
    )
    assert result.returncode == ExitCode.ERROR
    assert f"no state store at {tmp_path}/state.db" in result.stderr
    assert not (tmp_path / "state.db").exists()  # a read never creates the store


def test_session_exchange_from_files_fields_and_stdin(
    heroku: tuple[HerokuSimulator, RunningService], tmp_path: Path
) -> None:
    sim, svc = heroku
    resource_id = run(
        *_admin(svc, "addon", "register", *_register_args(sim, ACME), "--json")
    ).stdout
    resource_id = json.loads(resource_id)["addon"]["resource_id"]
    as_web_tier = ("--server", svc.address, "--token", ADMIN_TOKEN)
    carol = sim.user("carol")

    # A urlencoded body, as the web tier receives Heroku's POST.
    posted = tmp_path / "posted.txt"
    form = heroku_sso_form(resource_id, carol["id"], carol["email"], dev_salt(), token="both")
    posted.write_text(urlencode(form))
    exchanged = run("session", "exchange", "--form", str(posted), *as_web_tier)
    assert exchanged.returncode == 0, exchanged.stderr
    token = exchanged.stdout.splitlines()[0]
    assert token.startswith("azs_")
    assert f"heroku_user:{carol['id']} on addon:{resource_id}" in exchanged.stdout
    check = (
        "check",
        "--server",
        svc.address,
        "--token",
        SERVICE_TOKEN,
        "--session",
        token,
        "--resource",
        f"addon:{resource_id}",
    )
    allowed = run(*check, "--action", "dashboard.view")
    assert allowed.returncode == ExitCode.OK and allowed.stdout.startswith("ALLOW"), allowed.stderr
    denied = run(*check, "--action", "account.change_password")
    assert denied.returncode == ExitCode.DENY and denied.stdout.startswith("DENY")

    # The same form again: refused as a replay, exit 3, with the decision that recorded it.
    replayed = run("session", "exchange", "--form", str(posted), *as_web_tier)
    assert replayed.returncode == ExitCode.DENY
    assert "PERMISSION_DENIED SSO_REPLAYED" in replayed.stderr
    decision_id = replayed.stderr.rsplit("(decision ", 1)[1].split(")")[0]
    data_dir = str(svc.service.settings.data_dir)
    explained = run("audit", "show", decision_id, "--data-dir", data_dir)
    assert explained.returncode == 0, explained.stderr
    assert "SSO_REPLAYED" in explained.stdout

    # A JSON object of fields, one of them changed with --field: the signature no longer holds.
    as_json = tmp_path / "form.json"
    fresh = heroku_sso_form(resource_id, carol["id"], carol["email"], dev_salt())
    as_json.write_text(json.dumps({**fresh, "timestamp": int(fresh["timestamp"])}))
    forged = run(
        "session", "exchange", "--form", str(as_json), "--field", "email=x@y.example", *as_web_tier
    )
    assert forged.returncode == ExitCode.DENY and "SSO_BAD_TOKEN" in forged.stderr
    taken = run("session", "exchange", "--form", str(as_json), "--json", *as_web_tier)
    assert taken.returncode == 0, taken.stderr
    assert json.loads(taken.stdout)["principal_id"] == carol["id"]

    # `authz dev sso-form` piped in, as the README's first hour does.
    signed = run("dev", "sso-form", "--addon", ACME, "--user", "alice")
    assert signed.returncode == 0, signed.stderr
    piped = run(
        "session", "exchange", "--form", "-", "--token-only", *as_web_tier, input=signed.stdout
    )
    assert piped.returncode == 0, piped.stderr
    assert piped.stdout.strip().startswith("azs_") and len(piped.stdout.split()) == 1
    revoked = run("session", "revoke", piped.stdout.strip(), *as_web_tier)
    assert revoked.returncode == 0 and revoked.stdout.strip() == "session revoked"

    bad = tmp_path / "bad.json"
    bad.write_text('{"resource_id": ["not", "a", "string"]}')
    refused = run("session", "exchange", "--form", str(bad), *as_web_tier)
    assert refused.returncode == ExitCode.USAGE
    assert "resource_id is not" in refused.stderr
    empty = run("session", "exchange", *as_web_tier)
    assert empty.returncode == ExitCode.USAGE and "no form" in empty.stderr


def _register_args(sim: HerokuSimulator, addon: str) -> list[str]:
    fields = provisioning_fields(sim, addon)
    return [
        fields["resource_id"],
        "--plan",
        fields["plan"],
        "--grant-code",
        fields["oauth_grant_code"],
    ]


def test_dev_sso_form_refuses_a_configured_salt_unless_told_it_is_a_test(
    start: Callable[..., RunningService], base_settings: Settings
) -> None:
    salt = "a-deployment-salt-0123456789"
    env = clean_env(AUTHZ_SSO_SALT=salt)
    refused = run("dev", "sso-form", "--addon", ACME, "--user", "carol", env=env)
    assert refused.returncode == ExitCode.USAGE
    assert "AUTHZ_SSO_SALT is set" in refused.stderr and "--for-testing" in refused.stderr
    assert salt not in refused.stderr + refused.stdout
    assert refused.stdout == ""

    signed = run("dev", "sso-form", "--addon", ACME, "--user", "carol", "--for-testing", "--json")
    assert signed.returncode == 0  # (no salt configured here: the development salt)
    with_salt = run(
        "dev", "sso-form", "--addon", ACME, "--user", "carol", "--for-testing", "--json", env=env
    )
    assert with_salt.returncode == 0, with_salt.stderr
    dev_form, deployment_form = json.loads(signed.stdout), json.loads(with_salt.stdout)
    assert dev_form["user_id"] == deployment_form["user_id"] == load_fixture()["users"][2]["id"]
    expected = heroku_sso_form(
        deployment_form["resource_id"],
        deployment_form["user_id"],
        deployment_form["email"],
        salt,
        timestamp=int(deployment_form["timestamp"]),
        app="acme-billing",
        token="both",
    )
    assert deployment_form == expected  # signed with the configured salt, as Heroku would

    stranger = run("dev", "sso-form", "--addon", ACME, "--user", "nobody")
    assert stranger.returncode == ExitCode.USAGE and "--email" in stranger.stderr


# -- db migrate and where data lives --------------------------------------------------------------


def test_db_migrate_is_idempotent(tmp_path: Path) -> None:
    env = clean_env(AUTHZ_DATA_DIR=str(tmp_path / "data"))
    first, second = run("db", "migrate", env=env), run("db", "migrate", env=env)
    assert first.returncode == 0 and "applied schema versions [1" in first.stdout, first.stderr
    assert second.returncode == 0 and "up to date" in second.stdout
    assert (tmp_path / "data" / "state.db").is_file() and (tmp_path / "data" / "audit.db").is_file()


def test_db_migrate_exits_2_on_bad_settings(tmp_path: Path) -> None:
    short_salt = run("db", "migrate", env=clean_env(AUTHZ_SSO_SALT="short"))
    assert short_salt.returncode == ExitCode.USAGE  # as `serve` does (it exited 1 before)
    assert "AUTHZ_SSO_SALT" in short_salt.stderr
    not_a_url = run("db", "migrate", "--database-url", str(tmp_path / "x.db"))
    assert not_a_url.returncode == ExitCode.USAGE
    assert "postgresql://" in not_a_url.stderr
    assert not (tmp_path / "x.db").exists()


def test_settings_say_where_data_lives_and_the_server_agrees(
    start: Callable[..., RunningService], base_settings: Settings
) -> None:
    assert base_settings.state_target == base_settings.data_dir / "state.db"
    assert base_settings.audit_target == base_settings.data_dir / "audit.db"
    shared = replace(base_settings, database_url="postgres://u:p@db.example/authz")
    assert shared.state_target == shared.audit_target == "postgresql://u:p@db.example/authz"
    from_env = Settings.from_env({"AUTHZ_DATA_DIR": "/srv/authz"})
    assert from_env.audit_target == Path("/srv/authz/audit.db")

    svc = start(base_settings)
    assert Path(svc.service.audit.path) == base_settings.audit_target
    assert base_settings.state_target.is_file()  # type: ignore[union-attr]
