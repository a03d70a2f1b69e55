"""Headless Chromium for tests that check pages in a real browser (report, web page).

In: nothing (finds the system chromium, or $PRODUCTLENS_CHROMIUM). Out: `chromium_page()`, a context manager
yielding a Playwright page; the browser is closed on exit. No network: tests load files or loopback URLs.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
LAUNCH_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def find_chromium() -> str | None:
    """$PRODUCTLENS_CHROMIUM if set, else the first Chromium/Chrome on PATH, else None."""
    explicit = os.environ.get("PRODUCTLENS_CHROMIUM")
    if explicit:
        return explicit
    return next((path for name in CANDIDATES if (path := shutil.which(name))), None)


@contextmanager
def chromium_page(width: int = 1280, height: int = 900) -> Iterator:
    """A fresh headless Chromium page (Playwright sync API); fails the test with an install hint if no browser is installed."""
    executable = find_chromium()
    if executable is None:
        pytest.fail(
            "no Chromium found: run `python3 dev.py test` (it installs Debian's chromium) or set PRODUCTLENS_CHROMIUM"
        )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=executable, args=LAUNCH_ARGS)
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            yield page
        finally:
            browser.close()
