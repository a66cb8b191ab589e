"""Headless Chromium for the page tests: Debian's chromium + chromium-driver driven by selenium (the dev
extra). scripts/test.sh installs the browser where it is missing; without one the tests skip and say why."""

from __future__ import annotations

import os
import shutil

import pytest

#: The flags that work in this project's sandboxed machines (no GPU, no network, running as root).
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
         "--hide-scrollbars")


def executables() -> tuple[str, str] | str:
    """(browser, driver) paths, or why there are none."""
    browser = os.environ.get("L2PD_CHROMIUM") or next(
        (p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
    driver = os.environ.get("L2PD_CHROMEDRIVER") or shutil.which("chromedriver")
    if browser is None or driver is None:
        return ("no Chromium and ChromeDriver on PATH: `apt-get install -y chromium chromium-driver` "
                "(scripts/test.sh does this where it can)")
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "the selenium package is missing: `pip install -e .[dev]`"
    return browser, driver


def start(width: int = 1400, height: int = 1000):
    """A headless Chromium window of this size, or a skip with the reason."""
    found = executables()
    if isinstance(found, str):
        pytest.skip(found)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = found[0]
    for flag in (*FLAGS, f"--window-size={width},{height}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})  # every request the page makes
    driver = webdriver.Chrome(service=Service(found[1]), options=options)
    driver.set_window_size(width, height)
    return driver


def requested_urls(driver) -> list[str]:
    """Every URL the browser asked for since the last call (DevTools' Network.requestWillBeSent)."""
    import json

    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message.get("method") == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    return urls
