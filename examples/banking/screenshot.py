"""A picture of the web console, taken by headless Chromium's own --screenshot (no driver)."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
# Without these, Chromium tries to reach Google's services at start (refused on a closed network).
FLAGS = (
    "--headless",
    "--no-sandbox",  # the demo may run as root, where Chromium's sandbox cannot start
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--hide-scrollbars",
)
# Chromium's start and the page's first feed take seconds; on a machine shared by many, minutes.
TIMEOUT = 120.0


def capture(link: str, path: Path, *, width: int = 1400, height: int = 1000) -> str:
    """Save the page at `link` as a PNG at `path`; returns what happened, in one line."""
    browser = next((found for name in BROWSERS if (found := shutil.which(name))), None)
    if browser is None:
        return "no screenshot: no Chromium found (Debian: apt-get install chromium)"
    with tempfile.TemporaryDirectory(prefix="meshbreaker-shot-") as profile:
        command = [
            browser,
            *FLAGS,
            f"--user-data-dir={profile}",
            f"--window-size={width},{height}",
            # Virtual time lets the page's feed bring the mesh before the picture is taken.
            "--virtual-time-budget=4000",
            f"--screenshot={path}",
            link,
        ]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            return f"no screenshot: Chromium did not finish within {TIMEOUT:.0f} s"
    if done.returncode != 0 or not path.exists():
        return f"no screenshot: Chromium exited with {done.returncode}"
    return f"console screenshot saved to {path}"
