"""Headless Chromium for the pages' browser tests (mosaic page, jobs page)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

__all__ = ["REQUIRE_BROWSER", "chromium", "headless_chrome"]

#: Set (to 1) by .ci/run when it installed chromium and its driver: the browser tests must run.
REQUIRE_BROWSER = "IMAGE3_REQUIRE_BROWSER"


def chromium() -> tuple[str, str]:
    """Chromium and chromedriver; skip without them, unless :data:`REQUIRE_BROWSER` says fail."""
    required = os.environ.get(REQUIRE_BROWSER, "") not in ("", "0")
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not browser or not driver:
        missing = " and ".join(n for n, p in (("chromium", browser), ("chromedriver", driver))
                               if not p)
        msg = (f"{missing} not found: Debian's chromium and chromium-driver are not installed "
               "(.ci/run installs them: apt-get install chromium chromium-driver)")
        if required:
            pytest.fail(f"{REQUIRE_BROWSER}=1 but {msg}", pytrace=False)
        pytest.skip(msg)
    try:
        import selenium  # noqa: F401
    except ImportError:
        msg = "selenium (the [test] extra) is not installed"
        if required:
            pytest.fail(f"{REQUIRE_BROWSER}=1 but {msg}", pytrace=False)
        pytest.skip(msg)
    return browser, driver


def headless_chrome(profile: Path, window: str = "1200,900"):
    """A selenium Chrome driver of headless Chromium (skips as :func:`chromium`); quit it."""
    browser, driver_path = chromium()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = browser
    for a in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
              "--disable-background-networking", "--disable-component-update",
              "--disable-sync", "--no-first-run", f"--window-size={window}",
              f"--user-data-dir={profile}"):
        opts.add_argument(a)
    return webdriver.Chrome(service=Service(driver_path), options=opts)
