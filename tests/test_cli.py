"""The `authz` command as a user runs it: a real process, real exit codes."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from authz.config import Settings
from tests.conftest import ROOT, RunningService


def authz(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "authz.cli", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )


def test_validate_accepts_shipped_policies() -> None:
    result = authz("policy", "validate", "policies")
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
    result = authz("policy", "validate", str(directory))
    assert result.returncode == 1
    assert f"{directory}/broken.yaml:6:" in result.stdout
    assert "[bad-cel]" in result.stdout


def test_check_exit_codes(start: Callable[..., RunningService], base_settings: Settings) -> None:
    svc = start(base_settings)
    denied = authz(
        "check",
        "--server",
        svc.address,
        "--principal",
        "svc:billing",
        "--action",
        "account.login_password",
        "--resource",
        "account:1",
    )
    assert denied.returncode == 3, denied.stderr
    assert denied.stdout.startswith("DENY")
    assert "no-password-login" in denied.stdout
    unreachable = authz(
        "check",
        "--server",
        "127.0.0.1:1",
        "--principal",
        "a:b",
        "--action",
        "x",
        "--resource",
        "c:d",
        "--timeout",
        "1",
    )
    assert unreachable.returncode == 1
    assert "UNAVAILABLE" in unreachable.stderr


def test_policy_status(start: Callable[..., RunningService], base_settings: Settings) -> None:
    svc = start(base_settings)
    result = authz("policy", "status", "--server", svc.address)
    assert result.returncode == 0, result.stderr
    assert f"serving revision {svc.service.policies.current.revision}" in result.stdout
    assert "no change refused since start" in result.stdout


def test_db_migrate_is_idempotent(tmp_path: Path) -> None:
    import os

    env = {**os.environ, "AUTHZ_DATA_DIR": str(tmp_path / "data")}
    env.pop("DATABASE_URL", None)
    env.pop("AUTHZ_DATABASE_URL", None)

    def run() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "authz.cli", "db", "migrate"],
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=60,
            env=env,
        )

    first, second = run(), run()
    assert first.returncode == 0 and "applied schema versions [1" in first.stdout, first.stderr
    assert second.returncode == 0 and "up to date" in second.stdout


def test_check_sends_the_caller_token(
    start: Callable[..., RunningService], base_settings: Settings
) -> None:
    from dataclasses import replace

    from authz.config import CallerToken

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
    refused = authz(*args)
    assert refused.returncode == 1 and "UNAUTHENTICATED" in refused.stderr
    accepted = authz(*args, "--token", "s3cret-token")
    assert accepted.returncode == 3, accepted.stderr
    assert accepted.stdout.startswith("DENY")
