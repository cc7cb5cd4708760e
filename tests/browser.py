"""A real headless browser for page tests: Debian's chromium driven by Playwright (PyPI).

Playwright's own browser downloads are never used: the client drives the system's
/usr/bin/chromium (installed by `make test` as root, see the Makefile). Where chromium is absent
and cannot be installed, the page tests are skipped and pytest says why.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser")

# Quiet, reproducible headless runs: no sandbox (tests run as root in CI), no GPU, and none of
# the background fetches a desktop browser makes (the machine has no internet).
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def chromium_path() -> str | None:
    explicit = os.environ.get("AUTHZ_TEST_CHROMIUM")
    if explicit:
        return explicit
    for candidate in CHROMIUM_CANDIDATES:
        if Path(candidate).is_file():
            return candidate
    return shutil.which("chromium")


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    """One headless chromium per test module (starting one costs about a second)."""
    executable = chromium_path()
    if executable is None:
        pytest.skip("Debian's chromium is not installed (make test installs it when run as root)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=executable, headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def page(browser: object) -> Iterator[object]:
    """A fresh browser context (own cookies) and page per test; 10 s default waits."""
    context = browser.new_context()  # type: ignore[attr-defined]
    context.set_default_timeout(10_000)
    try:
        yield context.new_page()
    finally:
        context.close()
