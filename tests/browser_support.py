"""Headless Chromium for the web console's tests, driven by Playwright over the DevTools protocol.

The browser is the system's (Debian's `chromium`; MESHBREAKER_CHROMIUM names another binary);
Playwright downloads none. Without one the browser tests skip and say why, except under CI=true,
where `.ci/run` installs Chromium and a missing browser is a failure.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from typing import TYPE_CHECKING, NoReturn

import pytest

if TYPE_CHECKING:
    from playwright.sync_api import Browser

BROWSER_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
# Without these, Chromium tries to reach Google's services at start (refused on a closed network).
CHROMIUM_ARGS = [
    "--no-sandbox",  # tests run as root in CI, where Chromium's sandbox cannot start
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--no-first-run",
    "--disable-quic",
]


def find_chromium() -> str | None:
    """The Chromium binary to drive, or None."""
    named = os.environ.get("MESHBREAKER_CHROMIUM")
    if named:
        return named
    for name in BROWSER_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


def _unavailable(reason: str) -> NoReturn:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI must run the browser tests: .ci/run installs chromium)")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """A headless Chromium (a playwright Browser) shared by one test module."""
    executable = find_chromium()
    if executable is None:
        _unavailable("no Chromium found (install Debian's chromium, or set MESHBREAKER_CHROMIUM)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("playwright is not installed (it comes with meshbreaker[dev])")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()
