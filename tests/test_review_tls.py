"""The review pages over HTTPS and with client certificates, in development mode, and on a log
whose chain was broken (issue 15). Each test starts its own server (the `start` fixture)."""

from __future__ import annotations

import html
import re
import sqlite3
import ssl
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import httpx

from authz.config import CallerToken, Settings
from tests.conftest import Pki, RunningService, write_policy_dir
from tests.test_review import POLICY, TOKENS, review_settings, write_decisions


def https(pki: Pki, directory: Path, client: tuple[bytes, bytes] | None = None) -> httpx.Client:
    context = ssl.create_default_context(cafile=str(pki.ca_path))
    if client is not None:
        key, cert = client
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "client.key").write_bytes(key)
        (directory / "client.crt").write_bytes(cert)
        context.load_cert_chain(directory / "client.crt", directory / "client.key")
    return httpx.Client(verify=context, timeout=30)


def url(running: RunningService, path: str) -> str:
    assert running.service.http is not None
    return running.service.http.url + path


def test_client_certificates_name_reviewers(
    start: Callable[..., RunningService], pki: Pki, tmp_path: Path
) -> None:
    cert, key = pki.server_files()
    settings = review_settings(
        tmp_path / "data",
        write_policy_dir(tmp_path / "policies", POLICY),
        tls_cert=cert,
        tls_key=key,
        client_ca=pki.ca_path,
    )
    running = start(settings)
    for name, status in (("compliance", 200), ("ops", 200), ("web", 403)):
        with https(pki, tmp_path / name, pki.issue(name)) as client:
            page = client.get(url(running, "/audit"))
            assert page.status_code == status, name
            if status == 200:
                assert f"Reviewer <strong>{name}</strong> (certificate)" in page.text
            # The login form has no token to take: certificates are how one logs in here.
            form = client.get(url(running, "/audit/login"))
            assert "client certificate" in form.text and 'name="token"' not in form.text


def test_over_https_the_login_cookie_is_secure(
    start: Callable[..., RunningService], pki: Pki, tmp_path: Path
) -> None:
    cert, key = pki.server_files()
    settings = review_settings(
        tmp_path / "data",
        write_policy_dir(tmp_path / "policies", POLICY),
        tls_cert=cert,
        tls_key=key,
    )
    running = start(settings)
    with https(pki, tmp_path / "browser") as browser:
        login = browser.post(url(running, "/audit/login"), data={"token": TOKENS["compliance"]})
        assert login.status_code == 303
        attributes = [part.strip().lower() for part in login.headers["set-cookie"].split(";")]
        assert "secure" in attributes and "httponly" in attributes
        assert browser.get(url(running, "/audit")).status_code == 200


def test_in_development_mode_the_pages_are_open_and_say_so(
    start: Callable[..., RunningService], tmp_path: Path
) -> None:
    settings = Settings(
        listen="127.0.0.1:0",
        http_listen="127.0.0.1:0",
        policy_dir=write_policy_dir(tmp_path / "policies", POLICY),
        data_dir=tmp_path / "data",
    )
    running = start(settings)
    write_decisions(running.address, 3)
    page = httpx.get(url(running, "/audit"), timeout=30)
    assert page.status_code == 200
    assert "Development mode: no caller credentials are configured" in page.text
    assert page.text.count('class="copyable"') == 3
    login = httpx.get(url(running, "/audit/login"), timeout=30)
    assert "no login is needed" in login.text and 'name="token"' not in login.text


def test_the_verify_page_shows_where_the_chain_breaks(
    start: Callable[..., RunningService], tmp_path: Path
) -> None:
    settings = review_settings(tmp_path / "data", write_policy_dir(tmp_path / "policies", POLICY))
    running = start(settings)
    ids = write_decisions(running.address, 6)
    target = running.service.audit.target
    with sqlite3.connect(target) as db:  # someone edits a record behind the log's back
        db.execute(
            "UPDATE audit_log SET record = replace(record, 'doc.delete', 'doc.read') "
            "WHERE decision_id = ?",
            (ids[3],),
        )
    headers = {"Authorization": f"Bearer {TOKENS['compliance']}"}
    page = httpx.get(url(running, "/audit/verify"), headers=headers, timeout=30)
    text = html.unescape(page.text)
    assert page.status_code == 200
    assert "Broken." in text and "audit log TAMPERED" in text
    assert "edited at seq" in text and ids[3] in text


def test_a_login_ends_when_its_caller_stops_being_a_reviewer_or_its_token_changes(
    start: Callable[..., RunningService], tmp_path: Path
) -> None:
    policies = write_policy_dir(tmp_path / "policies", POLICY)
    settings = review_settings(tmp_path / "a", policies, token_key="review-test-key-0123456789")
    first = start(settings)
    with httpx.Client(timeout=30) as browser:
        login = browser.post(url(first, "/audit/login"), data={"token": TOKENS["compliance"]})
        cookie = login.cookies["authz_review"]
    # Servers with the same key (AUTHZ_TOKEN_KEY), as replicas or after a restart.
    not_a_reviewer = start(replace(settings, data_dir=tmp_path / "b", reviewers=frozenset()))
    rotated = start(
        replace(
            settings,
            data_dir=tmp_path / "c",
            caller_tokens=(
                CallerToken.of("compliance", "a-new-token-0123456789"),
                CallerToken.of("web", TOKENS["web"]),
            ),
        )
    )
    for running, status in ((first, 200), (not_a_reviewer, 403), (rotated, 401)):
        with httpx.Client(timeout=30) as browser:
            browser.cookies.set("authz_review", cookie, path="/audit")
            assert browser.get(url(running, "/audit")).status_code == status


def test_a_rules_line_is_the_one_at_the_decisions_revision(
    start: Callable[..., RunningService], tmp_path: Path
) -> None:
    policies = write_policy_dir(tmp_path / "policies", POLICY)
    running = start(review_settings(tmp_path / "data", policies))
    [before] = [i for i in write_decisions(running.address, 1)]  # a delete: nobody-deletes
    headers = {"Authorization": f"Bearer {TOKENS['compliance']}"}
    line = re.compile(r"<code>docs\.yaml:(\d+)</code>")
    first = httpx.get(url(running, f"/audit/decisions/{before}"), headers=headers, timeout=30)
    (old_line,) = line.findall(first.text)
    # The policy changes: two comment lines at the top move every rule down by two.
    path = policies / "docs.yaml"
    path.write_text("# reviewed\n# twice\n" + path.read_text())
    assert running.service.policies.reload().reloaded
    [after] = write_decisions(running.address, 1, prefix="after-")
    for decision, expected in ((before, int(old_line)), (after, int(old_line) + 2)):
        page = httpx.get(url(running, f"/audit/decisions/{decision}"), headers=headers, timeout=30)
        assert [int(n) for n in line.findall(page.text)] == [expected], decision
