"""`make demo` runs `authz demo`: it must keep showing real decisions from a real server."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import ROOT


def test_demo_shows_logins_refusals_decisions_and_a_verified_audit_log() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "authz.cli", "demo"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.count("session issued for heroku_user:") == 3
    for reason in (
        "SSO_REPLAYED",
        "SSO_SHA256_REQUIRED",
        "LOGIN_DENIED",
        "SSO_STALE_TIMESTAMP",
        "SESSION_UNKNOWN",
    ):
        assert reason in out, reason
    assert "REFUSED PERMISSION_DENIED: AdminService is only for administrators" in out
    assert "matched allow app-ownership/app-members-use-addon" in out
    assert "matched deny  sso-only/sso-users-never-change-authentication" in out
    assert "chain: audit log OK" in out
    assert "caller:   dashboard" in out
