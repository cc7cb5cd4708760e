"""`make demo` runs `authz demo`: it must keep showing real decisions from a real server, and
end by itself."""

from __future__ import annotations

import re

from tests.binary import authz


def test_demo_shows_logins_refusals_decisions_and_a_verified_audit_log() -> None:
    result = authz("demo", timeout=120)
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
    # It ends with the audit review pages' address and how to log in (issue 15).
    assert re.search(r"http://127\.0\.0\.1:\d+/audit\n  log in: paste the token \S+ into", out)
