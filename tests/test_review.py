"""The audit review pages over HTTP (issue 15): a real server, decisions written through gRPC,
pages read with httpx as a reviewer, a non-reviewer and an anonymous visitor would.

One server for the module (its log only grows, so tests compare with what the log holds).
"""

from __future__ import annotations

import csv
import html
import io
import json
import logging
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import pytest

from authz.audit import browse, migrate_audit, query
from authz.audit.schema import open_audit
from authz.config import CallerToken, ConfigError, Settings
from authz.v1 import authorization_pb2 as pb
from authz.v1 import authorization_pb2_grpc as pb_grpc
from tests.conftest import RunningService, write_policy_dir
from tests.pg import BACKENDS, use_backend

TOKENS = {
    "compliance": "tok-compliance-0123456789",
    "web": "tok-web-0123456789",
    "ops": "tok-ops-0123456789",
}
POLICY = {
    "docs.yaml": """
        name: docs
        description: Documents, for the review page tests.
        actions:
          doc.read: Read a document
          doc.delete: Delete a document
        rules:
          - id: users-read
            effect: allow
            actions: [doc.read]
            when: principal.type == "user"
            reason: Users may read documents

          - id: nobody-deletes
            effect: deny
            actions: [doc.delete]
            reason: Deleting documents is reserved to the records office
        """
}
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def review_settings(data_dir: Path, policy_dir: Path, **extra: object) -> Settings:
    return Settings(
        listen="127.0.0.1:0",
        http_listen="127.0.0.1:0",
        policy_dir=policy_dir,
        data_dir=data_dir,
        sso_salts=("test-sso-salt-for-fixtures",),
        caller_tokens=tuple(CallerToken.of(name, token) for name, token in TOKENS.items()),
        admins=frozenset({"ops"}),
        reviewers=frozenset({"compliance"}),
        **extra,  # type: ignore[arg-type]
    )


def write_decisions(address: str, count: int, *, prefix: str = "") -> list[str]:
    """`count` decisions through gRPC as caller "web": every third a delete (DENY)."""
    ids = []
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.AuthorizationServiceStub(channel)
        for i in range(count):
            answer = stub.Check(
                pb.CheckRequest(
                    principal=pb.Principal(type="user", id=f"{prefix}u{i % 4}"),
                    action="doc.delete" if i % 3 == 0 else "doc.read",
                    resource=pb.Resource(type="doc", id=f"{prefix}d{i}"),
                    request_id=f"{prefix}req-{i}",
                ),
                metadata=(("authorization", f"Bearer {TOKENS['web']}"),),
                timeout=10,
            )
            ids.append(answer.decision_id)
    return ids


@dataclass
class Site:
    running: RunningService
    url: str
    target: Path | str

    def client(self, caller: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {TOKENS[caller]}"} if caller else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30)


@pytest.fixture(scope="module")
def site(
    start_shared: Callable[..., RunningService], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Site]:
    root = tmp_path_factory.mktemp("review")
    policies = write_policy_dir(root / "policies", POLICY)
    running = start_shared(review_settings(root / "data", policies))
    assert running.service.http is not None
    write_decisions(running.address, 120)
    yield Site(running, running.service.http.url, running.service.audit.target)


def assert_strict_csp(response: httpx.Response) -> None:
    policy = response.headers["content-security-policy"]
    assert "default-src 'none'" in policy and "frame-ancestors 'none'" in policy
    assert "unsafe-inline" not in policy and "unsafe-eval" not in policy
    assert response.headers["x-content-type-options"] == "nosniff"


# -- who may read -----------------------------------------------------------------------------


def test_anonymous_visitors_get_the_login_form_and_nothing_of_the_log(site: Site) -> None:
    with site.client() as anonymous:
        for path in ("/audit", "/audit/stats", "/audit/verify", "/audit/export.csv"):
            page = anonymous.get(path)
            assert page.status_code == 401, path
            assert page.headers["www-authenticate"].startswith("Bearer")
            assert 'name="token"' in page.text
            shown = page.text.split("<footer>")[0]  # (the footer names the request id)
            assert "doc.delete" not in shown and not UUID.search(shown)
            assert_strict_csp(page)


def test_a_caller_who_is_not_a_reviewer_is_refused(site: Site) -> None:
    with site.client("web") as web:
        page = web.get("/audit")
    assert page.status_code == 403
    assert "'web' is not a reviewer" in html.unescape(page.text)
    assert not UUID.search(page.text.split("<footer>")[0])
    assert_strict_csp(page)
    with site.client() as browser:
        login = browser.post("/audit/login", data={"token": TOKENS["web"], "next": "/audit"})
    assert login.status_code == 403 and "set-cookie" not in login.headers
    with httpx.Client(base_url=site.url, headers={"Authorization": "Bearer wrong-token"}) as bad:
        assert bad.get("/audit").status_code == 401


def test_reviewers_and_admins_read_with_their_token(site: Site) -> None:
    for caller in ("compliance", "ops"):
        with site.client(caller) as reviewer:
            page = reviewer.get("/audit")
        assert page.status_code == 200, page.text
        assert f"Reviewer <strong>{caller}</strong>" in page.text
        assert_strict_csp(page)


def test_the_login_form_gives_a_short_lived_strict_cookie(site: Site) -> None:
    with site.client() as browser:
        refused = browser.post("/audit/login", data={"token": "not-a-token", "next": "/audit"})
        assert refused.status_code == 401 and "matches no caller" in refused.text
        login = browser.post(
            "/audit/login", data={"token": TOKENS["compliance"], "next": "/audit/stats"}
        )
        assert login.status_code == 303 and login.headers["location"] == "/audit/stats"
        cookie = login.headers["set-cookie"]
        attributes = {part.strip().split("=")[0].lower() for part in cookie.split(";")}
        assert {"httponly", "samesite", "path", "max-age"} <= attributes
        assert "samesite=strict" in cookie.lower() and "path=/audit" in cookie.lower()
        assert "secure" not in attributes  # plain HTTP here; HTTPS adds Secure
        assert TOKENS["compliance"] not in cookie
        assert browser.get("/audit/stats").status_code == 200
        # Logging out from another site's page is refused; from ours, the cookie goes.
        other = browser.post("/audit/logout", headers={"Origin": "https://evil.example"})
        assert other.status_code == 403
        assert browser.get("/audit").status_code == 200
        out = browser.post("/audit/logout", headers={"Origin": site.url})
        assert out.status_code == 303
        assert browser.get("/audit").status_code == 401
        # A cookie changed by hand is no cookie.
        forged = login.cookies["authz_review"].replace(".", ".9", 1)
        browser.cookies.set("authz_review", forged, path="/audit")
        assert browser.get("/audit").status_code == 401
        # And a login may only send the reviewer back to a review page.
        away = browser.post(
            "/audit/login", data={"token": TOKENS["compliance"], "next": "https://evil.example/"}
        )
        assert away.headers["location"] == "/audit"


def test_every_view_by_a_reviewer_is_logged(site: Site) -> None:
    seen: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record)

    logger = logging.getLogger("authz.audit.review")
    handler, level = Keep(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        with site.client("compliance") as reviewer:
            reviewer.get("/audit", params={"effect": "DENY"})
        with site.client("web") as web:
            web.get("/audit/stats")
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    views = [r.fields for r in seen if r.getMessage() == "audit review page viewed"]  # type: ignore[attr-defined]
    assert {
        "reviewer": "compliance",
        "authenticated_by": "token",
        "page": "decisions",
        "path": "/audit",
        "query": "effect=DENY",
        "status": 200,
    }.items() <= views[0].items()
    assert views[1]["reviewer"] == "web" and views[1]["status"] == 403


# -- the pages --------------------------------------------------------------------------------


def rows(page: httpx.Response) -> list[str]:
    """The decision ids of a list page, in order."""
    body = page.text.split("<tbody>")[1].split("</tbody>")[0]
    return re.findall(r'<code class="copyable">([^<]+)</code>', body)


def test_the_list_is_newest_first_and_pages_reach_every_decision_once(site: Site) -> None:
    everything = [r["decision_id"] for r in query(site.target, limit=None)]
    seen: list[str] = []
    with site.client("compliance") as reviewer:
        page = reviewer.get("/audit")
        while True:
            assert page.status_code == 200, page.text
            seen.extend(rows(page))
            older = re.search(r'<a rel="next" href="([^"]+)"', page.text)
            if older is None:
                break
            page = reviewer.get(older.group(1).replace("&amp;", "&"))
    assert seen == everything and len(seen) >= 120


def test_filters_narrow_the_list_to_exactly_the_matching_decisions(site: Site) -> None:
    denies = [r["decision_id"] for r in query(site.target, effect="DENY", limit=None)]
    one = query(site.target, principal="user:u1", action="doc.read", limit=None)
    with site.client("compliance") as reviewer:
        listed = reviewer.get("/audit", params={"effect": "DENY"})
        assert rows(listed)[:50] == denies[:50]
        assert "nobody-deletes" in listed.text and 'class="effect allow"' not in listed.text
        combined = reviewer.get(
            "/audit",
            params={"principal": "user:u1", "action": "doc.*", "effect": "ALLOW", "caller": "web"},
        )
        assert rows(combined) == [r["decision_id"] for r in one][:50]
        by_rule = reviewer.get("/audit", params={"rule": "docs/nobody-deletes"})
        assert rows(by_rule)[:50] == denies[:50]
        by_text = reviewer.get("/audit", params={"text": "RECORDS office"})
        assert rows(by_text)[:50] == denies[:50]
        by_id = reviewer.get("/audit", params={"decision_id": denies[3]})
        assert rows(by_id) == [denies[3]]
        none = reviewer.get("/audit", params={"caller": "nobody"})
        assert rows(none) == [] and "No decision matches" in none.text
        bad = reviewer.get("/audit", params={"since": "yesterday-ish"})
        assert bad.status_code == 400 and "cannot read time" in bad.text
        bad_cursor = reviewer.get("/audit", params={"after": "x"})
        assert bad_cursor.status_code == 400 and "start from the first page" in bad_cursor.text


def test_a_free_text_search_stops_at_its_budget_and_goes_on_from_there(site: Site) -> None:
    denies = [r["decision_id"] for r in query(site.target, effect="DENY", limit=None)]
    filters = browse.Filters(text="records office")
    found: list[str] = []
    page = browse.list_page(site.target, filters, size=5, scan=7)
    stops = 0
    while True:
        found.extend(row.decision_id for row in page.rows)
        stops += page.searched_to is not None
        if page.next is None:
            break
        page = browse.list_page(site.target, filters, page.next, size=5, scan=7)
    assert found == denies and stops > 0


def every_page(site: Site, filters: browse.Filters, **options: object) -> list[str]:
    found: list[str] = []
    page = browse.list_page(site.target, filters, **options)  # type: ignore[arg-type]
    while True:
        found.extend(row.decision_id for row in page.rows)
        if page.next is None:
            return found
        page = browse.list_page(site.target, filters, page.next, **options)  # type: ignore[arg-type]


def test_both_ways_of_finding_a_rules_decisions_give_the_same_pages(site: Site) -> None:
    denies = [r["decision_id"] for r in query(site.target, effect="DENY", limit=None)]
    for rule in ("nobody-deletes", "docs/nobody-deletes"):
        for common in (True, False):
            filters = browse.Filters(rule=rule)
            shape = browse.Shape(common_rule=common)
            assert every_page(site, filters, size=7, shape=shape) == denies
    assert every_page(site, browse.Filters(rule="other/nobody-deletes"), size=7) == []
    # An action glob is checked row by row, within the scan budget, like free text.
    globbed = every_page(site, browse.Filters(action="doc.del*"), size=5, scan=6)
    assert globbed == denies


def test_an_id_that_holds_a_colon_is_found_as_a_whole_or_as_type_and_id(site: Site) -> None:
    with grpc.insecure_channel(site.running.address) as channel:
        answer = pb_grpc.AuthorizationServiceStub(channel).Check(
            pb.CheckRequest(
                principal=pb.Principal(type="user", id="team:7"),
                action="doc.read",
                resource=pb.Resource(type="doc", id="colon"),
            ),
            metadata=(("authorization", f"Bearer {TOKENS['web']}"),),
            timeout=10,
        )
    for value in ("team:7", "user:team:7"):
        page = browse.list_page(site.target, browse.Filters(principal=value))
        assert [row.decision_id for row in page.rows] == [answer.decision_id], value
    db = open_audit(site.target)
    try:
        shapes = {
            value: browse.shape_of(db, browse.Filters(principal=value))
            for value in ("team:7", "user:u1")
        }
    finally:
        db.close()
    assert "principal" not in shapes["team:7"].no_whole_ids  # "team:7" is a whole id
    assert "principal" in shapes["user:u1"].no_whole_ids


def test_a_decision_page_explains_the_rule_its_reason_and_its_place(site: Site) -> None:
    deny = query(site.target, effect="DENY", limit=1)[0]
    with site.client("compliance") as reviewer:
        page = reviewer.get(f"/audit/decisions/{deny['decision_id']}")
        missing = reviewer.get("/audit/decisions/no-such-decision")
    assert page.status_code == 200
    text = page.text
    assert deny["decision_id"] in text and "docs/nobody-deletes" in text
    assert "Deleting documents is reserved to the records office" in text
    assert re.search(r"<code>docs\.yaml:\d+</code>", text)  # where the rule is written
    assert f"req-{deny['request_id'].split('-')[-1]}" in text and "web" in text
    assert re.search(r"seq \d+ of \d+", text) and "Previous hash" in text
    assert "No condition failed" in text
    assert missing.status_code == 404
    assert "no decision 'no-such-decision'" in html.unescape(missing.text)
    assert_strict_csp(missing)


def test_stats_draw_the_charts_from_the_log(site: Site) -> None:
    total = len(query(site.target, limit=None))
    denied = len(query(site.target, effect="DENY", limit=None))
    with site.client("compliance") as reviewer:
        page = reviewer.get("/audit/stats", params={"since": "1h", "bucket": "minute"})
        bad = reviewer.get("/audit/stats", params={"since": "400d", "bucket": "minute"})
    assert page.status_code == 200
    for chart in ("chart-over-time", "chart-actions", "chart-principals", "chart-callers"):
        assert f'id="{chart}"' in page.text
    assert f"{total} decisions, {denied} denied" in page.text
    assert f"doc.delete: {denied}" in page.text
    assert bad.status_code == 400 and "coarser bucket" in bad.text


def test_verify_shows_the_chain_head_and_exports_stream_exactly_the_filtered_set(
    site: Site,
) -> None:
    denies = query(site.target, effect="DENY", limit=None)
    with site.client("compliance") as reviewer:
        chain = reviewer.get("/audit/verify")
        assert chain.status_code == 200
        assert "Intact." in chain.text and "Last verified head" in chain.text
        exported = reviewer.get("/audit/export.csv", params={"effect": "DENY"})
        lines = reviewer.get("/audit/export.jsonl", params={"effect": "DENY"})
    assert exported.status_code == 200 and exported.headers["content-type"].startswith("text/csv")
    assert "attachment" in exported.headers["content-disposition"]
    table = list(csv.DictReader(io.StringIO(exported.text)))
    assert [row["decision_id"] for row in table] == [r["decision_id"] for r in denies]
    assert {row["deciding_rules"] for row in table} == {"docs/nobody-deletes"}
    records = [json.loads(line) for line in lines.text.splitlines()]
    assert records == denies


def test_static_files_and_errors_carry_the_same_policy(site: Site) -> None:
    with site.client() as anonymous:
        css = anonymous.get("/audit/static/review.css")
        missing = anonymous.get("/audit/static/nothing.js")
        form = anonymous.get("/audit/login")
        changed = anonymous.post("/audit", content=b"x")  # no page changes anything
        huge = anonymous.get("/audit", headers={"X-Padding": "x" * 20_000})
    assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")
    assert missing.status_code == 404
    assert form.status_code == 200
    assert changed.status_code == 405 and huge.status_code == 431
    for response in (css, missing, form, changed, huge):
        assert_strict_csp(response)


# -- the setting ------------------------------------------------------------------------------


def test_reviewers_must_be_callers_who_can_authenticate(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not a caller name"):
        Settings.from_env({"AUTHZ_REVIEWERS": "compliance,,ops"})
    with pytest.raises(ConfigError, match="callers are not authenticated"):
        Settings.from_env({"AUTHZ_REVIEWERS": "compliance"})
    tokens = tmp_path / "tokens"
    tokens.write_text("web " + "ab" * 32 + "\n")
    env = {"AUTHZ_CALLER_TOKENS": str(tokens)}
    with pytest.raises(ConfigError, match="'compliance', which no entry of AUTHZ_CALLER_TOKENS"):
        Settings.from_env({**env, "AUTHZ_REVIEWERS": "compliance"})
    assert Settings.from_env({**env, "AUTHZ_REVIEWERS": " web "}).reviewers == {"web"}


# -- the index migration ----------------------------------------------------------------------

REVIEW_INDEXES = {"caller", "effect"}


@pytest.mark.parametrize("backend_name", BACKENDS)
def test_a_log_from_before_the_review_pages_gets_their_indexes(
    backend_name: str, tmp_path: Path
) -> None:
    with use_backend(backend_name, tmp_path) as backend:
        target = tmp_path / "audit.db" if backend_name == "sqlite" else backend.target
        assert migrate_audit(target) == [1, 2, 3]
        db = open_audit(target)
        try:
            # Back to version 2: without the indexes version 3 adds.
            for column in REVIEW_INDEXES:
                db.execute(f"DROP INDEX audit_log_{column}_time")
            db.execute(
                "DELETE FROM schema_migrations WHERE migration_set = 'audit' AND version = 3"
            )
        finally:
            db.close()
        assert migrate_audit(target) == [3]
        assert migrate_audit(target) == []
        db = open_audit(target)
        try:
            plan_sql = "SELECT seq FROM audit_log WHERE caller = ? ORDER BY time DESC LIMIT 5"
            if backend_name == "sqlite":
                plan = " ".join(
                    str(row[-1]) for row in db.execute("EXPLAIN QUERY PLAN " + plan_sql, ["x"])
                )
                assert "audit_log_caller_time" in plan
            else:
                names = {
                    str(row[0])
                    for row in db.execute(
                        "SELECT indexname FROM pg_indexes WHERE tablename = 'audit_log' "
                        "AND schemaname = current_schema()"
                    )
                }
                assert {"audit_log_caller_time", "audit_log_effect_time"} <= names
        finally:
            db.close()
