"""The audit review pages in a real headless chromium (issue 15): a reviewer logs in with the
form, filters to a DENY, opens it and reads the rule and its reason, then finds the stats
chart; a non-reviewer and an anonymous visitor are refused. No page breaks its own
Content-Security-Policy (chromium reports every violation on the console)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from authz.audit import query
from tests.browser import browser, page  # noqa: F401 (fixtures)
from tests.test_review import TOKENS, Site, site  # noqa: F401 (fixture)


@pytest.fixture
def console(page: Any) -> Iterator[list[str]]:  # noqa: F811
    messages: list[str] = []
    page.on("console", lambda message: messages.append(message.text))
    yield messages
    assert not [m for m in messages if "Content Security Policy" in m], messages


def log_in(page: Any, site: Site, token: str, path: str = "/audit") -> None:  # noqa: F811
    page.goto(site.url + path)
    page.get_by_label("Caller token").fill(token)
    page.get_by_role("button", name="Log in").click()


def test_a_reviewer_finds_a_deny_its_rule_and_reason_and_the_chart(
    site: Site,  # noqa: F811
    page: Any,  # noqa: F811
    console: list[str],
) -> None:
    denies = query(site.target, effect="DENY", limit=50)
    newest_deny = denies[0]
    anonymous = page.goto(site.url + "/audit")
    assert anonymous.status == 401
    assert page.get_by_role("heading", name="Log in to review the audit log").is_visible()

    log_in(page, site, TOKENS["compliance"])
    page.get_by_role("heading", name="Decisions").wait_for()
    page.get_by_label("Effect").select_option("DENY")
    page.get_by_role("button", name="Search").click()
    page.wait_for_url("**/audit?*effect=DENY*")
    rows = page.locator("table.decisions tbody tr")
    assert rows.count() == len(denies)
    assert rows.locator(".effect.allow").count() == 0
    first = rows.first
    assert first.locator("code.copyable").inner_text() == newest_deny["decision_id"]

    first.get_by_role("link").first.click()
    page.wait_for_url(f"**/audit/decisions/{newest_deny['decision_id']}")
    rules = page.get_by_role("table", name="Matched rules")
    assert "docs/nobody-deletes" in rules.inner_text()
    assert "Deleting documents is reserved to the records office" in rules.inner_text()
    assert "docs.yaml:" in rules.inner_text()
    # The id is one click to select whole (user-select: all), and the copy button is shown.
    assert page.locator("#decision-id").evaluate("e => getComputedStyle(e).userSelect") == "all"
    assert page.get_by_role("button", name="Copy").is_visible()

    page.get_by_role("link", name="Stats").click()
    chart = page.get_by_role("img", name="Decisions and denies per hour")
    chart.wait_for()
    assert chart.locator("rect.deny").count() >= 1
    assert chart.bounding_box()["height"] > 100
    assert page.get_by_role("img", name="Most denied actions").is_visible()


def test_a_caller_who_is_not_a_reviewer_cannot_log_in(
    site: Site,  # noqa: F811
    page: Any,  # noqa: F811
    console: list[str],
) -> None:
    log_in(page, site, TOKENS["web"])
    alert = page.get_by_role("alert")
    assert "'web' is not a reviewer" in alert.inner_text()
    assert page.context.cookies() == []
    assert page.goto(site.url + "/audit/stats").status == 401
