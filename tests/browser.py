"""Headless Chromium for browser tests and the dashboard benchmark: Debian's ``chromium`` and
``chromium-driver`` (``dev/run test`` installs them), driven by selenium with the driver path
given, so selenium never downloads a browser or a driver.
"""

from __future__ import annotations

import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser")
CHROMEDRIVER = "/usr/bin/chromedriver"


class BrowserMissing(RuntimeError):
    """Chromium or its driver is not installed (``apt-get install chromium chromium-driver``)."""


def chromium_binary() -> str:
    """The path of Debian's Chromium (BrowserMissing when absent)."""
    for candidate in CHROMIUM_CANDIDATES:
        if Path(candidate).is_file():
            return candidate
    raise BrowserMissing("Chromium is not installed: apt-get install chromium chromium-driver (dev/run test does it)")


@contextmanager
def chromium(width: int = 1400, height: int = 1000) -> Iterator["object"]:
    """A headless Chromium WebDriver with a fresh profile, browser console logs kept; quit on exit."""
    binary = chromium_binary()
    if not Path(CHROMEDRIVER).is_file():
        raise BrowserMissing(f"{CHROMEDRIVER} is missing: apt-get install chromium-driver (dev/run test does it)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="agentstream-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in (
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-default-apps",
        f"--user-data-dir={profile}", f"--window-size={width},{height}",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def console_errors(driver: "object") -> list[str]:
    """The browser console's SEVERE entries since the last call (the log is drained)."""
    return [f"{e.get('source')}: {e.get('message')}" for e in driver.get_log("browser") if e.get("level") == "SEVERE"]  # type: ignore[attr-defined]
