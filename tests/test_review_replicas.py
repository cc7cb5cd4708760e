"""The audit review pages on the PostgreSQL audit log that several replicas share (issue 15).

Two servers (replicas A and B) with the same AUTHZ_DATABASE_URL, a fresh schema of the test
run's throwaway database (tests/pg.py), each with its own audit writer appending to the one
chain. Decisions are written through gRPC to both; the pages of either show all of them, in
chain order, and a login cookie made by one replica works on the other (AUTHZ_TOKEN_KEY is
shared). The browser test runs the reviewer's walk through on PostgreSQL.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from authz.audit import query, verify
from tests.browser import browser, page  # noqa: F401 (fixtures)
from tests.conftest import RunningService, write_policy_dir
from tests.heroku_world import TOKEN_KEY
from tests.pg import use_backend
from tests.test_review import POLICY, TOKENS, review_settings, rows, write_decisions


@dataclass
class Replicas:
    a: RunningService
    b: RunningService
    target: str

    def url(self, replica: RunningService) -> str:
        assert replica.service.http is not None
        return replica.service.http.url


@pytest.fixture(scope="module")
def replicas(
    start_shared: Callable[..., RunningService], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Replicas]:
    root = tmp_path_factory.mktemp("review-pg")
    policies = write_policy_dir(root / "policies", POLICY)
    with use_backend("postgresql", root) as backend:
        a, b = (
            start_shared(
                review_settings(
                    root / name, policies, database_url=backend.target, token_key=TOKEN_KEY
                )
            )
            for name in ("a", "b")
        )
        write_decisions(a.address, 30, prefix="a-")
        write_decisions(b.address, 30, prefix="b-")
        write_decisions(a.address, 9, prefix="a2-")
        yield Replicas(a, b, backend.target)
        a.stop()
        b.stop()


def test_each_replica_shows_every_replicas_decisions_in_chain_order(replicas: Replicas) -> None:
    everything = [r["decision_id"] for r in query(replicas.target, limit=None)]
    denies = [r["decision_id"] for r in query(replicas.target, effect="DENY", limit=None)]
    assert len(everything) == 69
    for replica in (replicas.a, replicas.b):
        seen: list[str] = []
        headers = {"Authorization": f"Bearer {TOKENS['compliance']}"}
        with httpx.Client(base_url=replicas.url(replica), headers=headers, timeout=30) as client:
            page = client.get("/audit")
            while True:
                assert page.status_code == 200, page.text
                seen.extend(rows(page))
                older = re.search(r'<a rel="next" href="([^"]+)"', page.text)
                if older is None:
                    break
                page = client.get(older.group(1).replace("&amp;", "&"))
            assert seen == everything
            assert rows(client.get("/audit", params={"text": "records office"})) == denies
            assert rows(client.get("/audit", params={"principal": "b-u1"})) == [
                r["decision_id"] for r in query(replicas.target, principal="b-u1", limit=None)
            ]
            table = client.get("/audit/export.csv", params={"rule": "nobody-deletes"}).text
            exported = [row["decision_id"] for row in csv.DictReader(io.StringIO(table))]
            assert exported == denies
            stats = client.get("/audit/stats", params={"since": "1h", "bucket": "minute"})
            assert f"{len(everything)} decisions, {len(denies)} denied" in stats.text
            chain = client.get("/audit/verify")
            assert "Intact." in chain.text
            assert f"seq {verify(replicas.target).head_seq}, hash" in chain.text


def test_a_login_on_one_replica_holds_on_the_other(replicas: Replicas) -> None:
    with httpx.Client(base_url=replicas.url(replicas.a), timeout=30) as browser_a:
        login = browser_a.post("/audit/login", data={"token": TOKENS["compliance"]})
        assert login.status_code == 303
        cookie = login.cookies["authz_review"]
    with httpx.Client(base_url=replicas.url(replicas.b), timeout=30) as browser_b:
        browser_b.cookies.set("authz_review", cookie, path="/audit")
        assert browser_b.get("/audit").status_code == 200


def test_a_reviewer_walks_from_a_deny_to_its_rule_and_the_chart_on_postgresql(
    replicas: Replicas,
    page: Any,  # noqa: F811
) -> None:
    newest_deny = query(replicas.target, effect="DENY", limit=1)[0]
    url = replicas.url(replicas.b)
    page.goto(url + "/audit")
    page.get_by_label("Caller token").fill(TOKENS["compliance"])
    page.get_by_role("button", name="Log in").click()
    page.get_by_label("Effect").select_option("DENY")
    page.get_by_role("button", name="Search").click()
    page.wait_for_url("**/audit?effect=DENY")
    page.locator("table.decisions tbody tr").first.get_by_role("link").first.click()
    page.wait_for_url(f"**/audit/decisions/{newest_deny['decision_id']}")
    rules = page.get_by_role("table", name="Matched rules").inner_text()
    assert "docs/nobody-deletes" in rules and "reserved to the records office" in rules
    page.get_by_role("link", name="Stats").click()
    assert page.get_by_role("img", name="Decisions and denies per hour").locator("rect").count()
