"""Headless Chromium (Debian's `chromium`, driven by Playwright) for the tests of pages: the Dagster UI, the chat page."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from playwright.sync_api import Page, expect, sync_playwright

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# No network, no first-run or background work: the browser only talks to the local server under test.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TIMEOUT_MS = 60_000  # a busy 2-core machine with other tests in parallel
NEEDS_CHROMIUM = pytest.mark.skipif(
    not os.access(CHROMIUM, os.X_OK), reason="Chromium is not installed (apt-get install chromium); .ci/run installs it"
)

expect.set_options(timeout=TIMEOUT_MS)


@contextmanager
def chromium_page(width: int, height: int, init_script: str | None = None) -> Iterator[Page]:
    """A page of a fresh headless browser, `init_script` run before every document's own scripts."""
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            context = browser.new_context(viewport={"width": width, "height": height})
            if init_script:
                context.add_init_script(init_script)
            page = context.new_page()
            page.set_default_timeout(TIMEOUT_MS)
            yield page
        finally:
            browser.close()
