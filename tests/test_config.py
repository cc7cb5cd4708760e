"""Settings from the environment: enumerated switches and SSO salts accept only what is documented
(issue 12, items 3 and 9). Refusals name the variable and what is accepted, never a secret."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from authz.config import ConfigError, Settings
from tests.conftest import ROOT, RecordingHandler, RunningService

SALT = "salt-0123456789abcdef"
OTHER_SALT = "other-salt-0123456789"


def refused(env: dict[str, str]) -> str:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env(env)
    return str(caught.value)


# --- enumerated and boolean switches (item 3) ---------------------------------------------------

SWITCHES = {
    # variable: (accepted values, the default)
    "AUTHZ_SSO_ALLOW_SHA1": (("never", "legacy-addons"), "never"),
    "AUTHZ_AUDIT_MODE": (("durable", "async", "off"), "durable"),
    "AUTHZ_LOG_LEVEL": (("DEBUG", "INFO", "WARNING", "ERROR"), "INFO"),
    "AUTHZ_RECALL": (("on", "off"), "on"),
}
FIELDS = {
    "AUTHZ_SSO_ALLOW_SHA1": "sso_allow_sha1",
    "AUTHZ_AUDIT_MODE": "audit_mode",
    "AUTHZ_LOG_LEVEL": "log_level",
    "AUTHZ_RECALL": "recall",
}


@pytest.mark.parametrize("name", SWITCHES)
def test_switches_take_their_documented_values_and_default_when_unset(name: str) -> None:
    accepted, default = SWITCHES[name]
    field = FIELDS[name]
    assert getattr(Settings.from_env({}), field) == default
    assert getattr(Settings.from_env({name: ""}), field) == default
    for value in accepted:
        assert getattr(Settings.from_env({name: value}), field) == value


@pytest.mark.parametrize(
    ("name", "value"),
    [
        # The review's fail-open values: each left SHA-1 on.
        ("AUTHZ_SSO_ALLOW_SHA1", "off"),
        ("AUTHZ_SSO_ALLOW_SHA1", "disabled"),
        ("AUTHZ_SSO_ALLOW_SHA1", "n"),
        ("AUTHZ_SSO_ALLOW_SHA1", "false "),
        # The old boolean spellings mean nothing now; a near miss is not guessed at.
        ("AUTHZ_SSO_ALLOW_SHA1", "false"),
        ("AUTHZ_SSO_ALLOW_SHA1", "true"),
        ("AUTHZ_SSO_ALLOW_SHA1", "0"),
        ("AUTHZ_SSO_ALLOW_SHA1", "NEVER"),
        ("AUTHZ_SSO_ALLOW_SHA1", " never"),
        ("AUTHZ_SSO_ALLOW_SHA1", "legacy"),
        ("AUTHZ_AUDIT_MODE", "Durable"),
        ("AUTHZ_AUDIT_MODE", "durable "),
        ("AUTHZ_AUDIT_MODE", "sync"),
        ("AUTHZ_AUDIT_MODE", "none"),
        ("AUTHZ_LOG_LEVEL", "debug"),
        ("AUTHZ_LOG_LEVEL", "verbose"),
        ("AUTHZ_LOG_LEVEL", "10"),
        ("AUTHZ_RECALL", "true"),
        ("AUTHZ_RECALL", "OFF"),
        ("AUTHZ_RECALL", "0"),
    ],
)
def test_anything_else_refuses_to_start_naming_the_variable_and_the_accepted_values(
    name: str, value: str
) -> None:
    message = refused({name: value})
    assert message.startswith(f"{name}={value!r} is not accepted")
    assert ", ".join(SWITCHES[name][0]) in message


@pytest.mark.parametrize(
    ("field", "value", "name"),
    [
        ("sso_allow_sha1", "off", "AUTHZ_SSO_ALLOW_SHA1"),
        ("sso_allow_sha1", True, "AUTHZ_SSO_ALLOW_SHA1"),
        ("audit_mode", "sync", "AUTHZ_AUDIT_MODE"),
        ("log_level", "loud", "AUTHZ_LOG_LEVEL"),
        ("recall", "no", "AUTHZ_RECALL"),
        ("max_connection_age", 0.5, "AUTHZ_MAX_CONNECTION_AGE"),
    ],
)
def test_settings_built_in_code_obey_the_same_rules(field: str, value: object, name: str) -> None:
    with pytest.raises(ConfigError, match=name):
        Settings(**{field: value})  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=name):
        replace(Settings(), **{field: value})


@pytest.mark.parametrize(
    ("name", "value"), [("AUTHZ_SSO_ALLOW_SHA1", "off"), ("AUTHZ_LOG_LEVEL", "verbose")]
)
def test_authz_serve_refuses_to_start(name: str, value: str, tmp_path: Path) -> None:
    env = {**os.environ, name: value, "AUTHZ_DATA_DIR": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-m", "authz.cli", "serve", "--listen", "127.0.0.1:0"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    assert f"authz serve: {name}={value!r} is not accepted; use one of:" in result.stderr
    assert "Traceback" not in result.stderr


# --- AUTHZ_MAX_CONNECTION_AGE -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "age"), [(None, 60.0), ("", 60.0), ("0", 0.0), ("1", 1.0), ("300", 300.0)]
)
def test_connection_age_takes_zero_or_one_second_to_a_day(value: str | None, age: float) -> None:
    env = {} if value is None else {"AUTHZ_MAX_CONNECTION_AGE": value}
    assert Settings.from_env(env).max_connection_age == age


@pytest.mark.parametrize("value", ["0.5", "-1", "86401", "nan", "inf", "1m", "off"])
def test_any_other_connection_age_refuses_to_start_saying_what_to_set(value: str) -> None:
    message = refused({"AUTHZ_MAX_CONNECTION_AGE": value})
    assert message.startswith("AUTHZ_MAX_CONNECTION_AGE=") and "seconds" in message, message


# --- SSO salts (item 9) ---------------------------------------------------------------------------


def test_a_salt_containing_a_comma_is_one_salt() -> None:
    salt = "abc,def,ghi,jkl,mno,pqr"
    assert Settings.from_env({"AUTHZ_SSO_SALT": salt}).sso_salts == (salt,)


def test_salts_are_separated_by_whitespace(tmp_path: Path) -> None:
    both = (SALT, OTHER_SALT)
    assert Settings.from_env({"AUTHZ_SSO_SALT": f"{SALT} {OTHER_SALT}"}).sso_salts == both
    assert Settings.from_env({"AUTHZ_SSO_SALT": f" {SALT}\n\t{OTHER_SALT} "}).sso_salts == both
    salts_file = tmp_path / "salts"
    salts_file.write_text(f"{SALT}\n{OTHER_SALT}\n")  # one per line, as an editor leaves it
    assert Settings.from_env({"AUTHZ_SSO_SALT_FILE": str(salts_file)}).sso_salts == both
    assert Settings.from_env({}).sso_salts == ()  # no salt: every SSO login is refused


@pytest.mark.parametrize(
    ("value", "which"),
    [
        ("short-salt", "salt 1 of 1"),
        ("0123456789abcde", "salt 1 of 1"),  # 15 characters
        (f"{SALT},x", None),  # the old comma list: one long salt, accepted (start-up warning)
        (f"{SALT} x", "salt 2 of 2"),  # a 1-character piece
        (f"a,b {SALT}", "salt 1 of 2"),
    ],
)
def test_a_salt_shorter_than_16_characters_is_refused(value: str, which: str | None) -> None:
    if which is None:
        assert Settings.from_env({"AUTHZ_SSO_SALT": value}).sso_salts == (value,)
        return
    message = refused({"AUTHZ_SSO_SALT": value})
    assert message.startswith(f"AUTHZ_SSO_SALT: {which} is shorter than 16 characters")
    for piece in value.split():
        assert piece not in message


def test_salts_set_in_code_obey_the_same_rule() -> None:
    Settings(sso_salts=("0123456789abcdef",))
    for salts in (("test-salt",), (SALT, ""), (f"{SALT} {OTHER_SALT}",)):
        with pytest.raises(ConfigError, match="AUTHZ_SSO_SALT: salt") as caught:
            Settings(sso_salts=salts)
        assert not any(s and s in str(caught.value) for s in salts)


def test_a_salt_with_a_comma_is_warned_about_at_start(
    start: Callable[..., RunningService], base_settings: Settings, root_log: RecordingHandler
) -> None:
    start(replace(base_settings, sso_salts=(f"{SALT},{OTHER_SALT}",)))
    warnings = root_log.at_least(logging.WARNING)
    comma = [w for w in warnings if "AUTHZ_SSO_SALT" in w]
    assert comma and "not commas" in comma[0]
    assert not any(SALT in w or OTHER_SALT in w for w in warnings)
