"""Issue 16, day two: deployment files (app.json, Procfile, Dockerfile) and Heroku safety.

Docker cannot build on this machine, so the Dockerfile is checked as text, and its health check
command is run as is against a real `authz serve`.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

from authz.config import ConfigError, Settings
from tests.conftest import ROOT
from tests.served import clean_env, refused_start, served

SETTING = re.compile(r"\bAUTHZ_[A-Z0-9_]+\b")
SECRET_NAME = re.compile(r"SALT|SECRET|TOKEN|KEY|PASSWORD|DATABASE_URL", re.I)


def documented_settings() -> set[str]:
    """The AUTHZ_* variables the README's configuration table lists."""
    readme = (ROOT / "README.md").read_text()
    table = readme.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in table.splitlines() if line.startswith("| `")]
    return {name for row in rows for name in SETTING.findall(row.split("|")[1])}


def app_json() -> dict[str, Any]:
    return json.loads((ROOT / "app.json").read_text())


def test_every_setting_authz_reads_is_in_the_readme_table() -> None:
    read = set(SETTING.findall((ROOT / "src/authz/config.py").read_text()))
    assert read - documented_settings() == set()


def test_app_json_deploys_a_web_process_with_postgres_and_documented_config_vars() -> None:
    app = app_json()
    assert app["formation"] == {"web": {"quantity": 1}}
    assert "heroku-postgresql" in app["addons"]
    assert app["buildpacks"] == [{"url": "heroku/python"}]
    env: dict[str, dict[str, Any]] = app["env"]
    assert set(env) - documented_settings() <= {"OTEL_EXPORTER_OTLP_ENDPOINT"}
    for name, var in env.items():
        assert len(var["description"]) > 20, name
        assert set(var) <= {"description", "required", "value", "generator"}, name
        if SECRET_NAME.search(name) and name != "AUTHZ_CALLER_TOKENS":
            assert "value" not in var, f"{name}: a secret has no default in app.json"
    assert env["AUTHZ_TOKEN_KEY"]["generator"] == "secret"
    for name in ("AUTHZ_SSO_SALT", "AUTHZ_HEROKU_CLIENT_SECRET", "AUTHZ_CALLER_TOKENS"):
        assert env[name]["required"] is True, name
    # Every default app.json fills in is one authz accepts.
    defaults = {name: var["value"] for name, var in env.items() if "value" in var}
    settings = Settings.from_env(defaults)
    assert settings.log_format == "logfmt" and settings.audit_mode == "durable"


def test_the_procfile_and_the_python_build_files_agree() -> None:
    assert (ROOT / "Procfile").read_text() == "web: authz serve\n"
    requirements = [
        line
        for line in (ROOT / "requirements.txt").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    assert requirements == [".[otel]"]  # Heroku's build installs the project itself
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert "otel" in project["optional-dependencies"]
    version = (ROOT / ".python-version").read_text().strip()
    assert project["requires-python"] == f">={version}"


def dockerfile() -> list[tuple[str, str]]:
    """(instruction, arguments) of each Dockerfile instruction, continuation lines joined."""
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines()]
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1])
        for line in lines
        if line and not line.startswith("#")
    ]


def test_the_dockerfile_is_small_non_root_and_keeps_no_secret() -> None:
    steps = dockerfile()
    assert steps[0] == ("FROM", "python:3.11-slim")
    users = [args for op, args in steps if op == "USER"]
    assert users and users[-1] not in ("root", "0")
    last_user = max(i for i, (op, _) in enumerate(steps) if op == "USER")
    assert not [op for op, _ in steps[last_user:] if op == "RUN"]  # nothing runs as root after
    for op, args in steps:
        if op in ("ENV", "ARG"):
            names = re.findall(r"([A-Za-z_][A-Za-z0-9_]*)=", args) or [args.split()[0]]
            assert not [n for n in names if SECRET_NAME.search(n)], args
    assert ("CMD", '["authz", "serve"]') in steps
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".git", ".venv", "data", "tests"} <= set(ignored)


def healthcheck_command() -> list[str]:
    [args] = [args for op, args in dockerfile() if op == "HEALTHCHECK"]
    options, _, command = args.partition(" CMD ")
    assert "--interval=" in options and "--timeout=" in options
    return json.loads(command)


def test_the_image_health_check_probes_healthz(tmp_path: Path) -> None:
    command = healthcheck_command()
    assert command[0] == "python" and "/healthz" in command[-1]
    command[0] = sys.executable
    with served(tmp_path / "data", clean_env()) as server:
        listen = server.url.removeprefix("http://")
        env = clean_env(AUTHZ_HTTP_LISTEN=listen)
        assert subprocess.run(command, env=env, timeout=30).returncode == 0
        server.stop()
    closed = subprocess.run(command, env=env, capture_output=True, timeout=30)
    assert closed.returncode != 0  # nothing listens there any more


# -- Heroku: a dyno without DATABASE_URL (issue 16) ---------------------------------------------


def test_a_dyno_without_a_database_refuses_to_start(tmp_path: Path) -> None:
    data = tmp_path / "data"
    result = refused_start(data, clean_env(DYNO="web.1"))
    assert result.returncode == 2, result.stderr
    message = result.stderr
    assert "refusing to start: running on the Heroku dyno 'web.1' without DATABASE_URL" in message
    assert "ephemeral filesystem" in message and "AUTHZ_ALLOW_EPHEMERAL=1" in message
    assert "heroku addons:create heroku-postgresql" in message
    assert "Traceback" not in message
    assert not data.exists()  # refused before anything was written


def test_a_dyno_may_run_ephemeral_when_told_and_says_so_loudly(tmp_path: Path) -> None:
    env = clean_env(DYNO="web.1", AUTHZ_ALLOW_EPHEMERAL="1", AUTHZ_LOG_FORMAT="json")
    with served(tmp_path / "data", env) as server:
        log = server.stop()
    [warning] = [
        line
        for line in map(json.loads, log.splitlines())
        if "AUTHZ_ALLOW_EPHEMERAL=1" in line["message"]
    ]
    assert warning["level"] == "warning"
    assert "without DATABASE_URL" in warning["message"]
    assert "Set DATABASE_URL to keep them" in warning["message"]


@pytest.mark.parametrize("value", ["true", "yes", "on", " 1", "0 "])
def test_allow_ephemeral_takes_exact_values(value: str) -> None:
    with pytest.raises(ConfigError, match="AUTHZ_ALLOW_EPHEMERAL"):
        Settings.from_env({"AUTHZ_ALLOW_EPHEMERAL": value})


def test_the_storage_check_only_applies_to_dynos_without_a_database() -> None:
    assert Settings().check_storage() == ""  # not on Heroku
    assert (
        Settings(dyno="web.1", database_url="postgresql://db.internal/authz").check_storage() == ""
    )
    assert (
        Settings(dyno="run.4242", allow_ephemeral=True)
        .check_storage()
        .startswith("AUTHZ_ALLOW_EPHEMERAL=1: running on the Heroku dyno 'run.4242'")
    )
    assert Settings.from_env({"DYNO": "web.2"}).dyno == "web.2"


def test_heroku_ready_env_starts_with_the_procfile_command(tmp_path: Path) -> None:
    """The Procfile's command with what app.json sets (less the add-on) refuses only for the
    reasons it names: here, the callers file the fork must commit."""
    env = clean_env(DYNO="web.1", PORT="0", AUTHZ_ALLOW_EPHEMERAL="1")
    result = subprocess.run(
        [sys.executable, "-m", "authz.cli", "serve"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    assert "refusing to listen on 0.0.0.0:0 without caller authentication" in result.stderr
