"""Headless Chromium for the page tests (Debian's ``chromium`` and ``chromium-driver``, which
``.ci/run`` installs, driven by Selenium), and waiting on what a page does."""

from __future__ import annotations

import shutil
import time
from typing import Any

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")


def chrome(*flags: str, phone_width: int | None = None) -> Any:
    """A headless Chromium driven by Selenium (``flags`` added; with ``phone_width``, a phone's
    screen of that width emulated). The caller quits it."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", *flags):
        options.add_argument(flag)
    if phone_width is not None:
        options.add_experimental_option(
            "mobileEmulation", {"deviceMetrics": {"width": phone_width, "height": 844, "pixelRatio": 2}}
        )
    return webdriver.Chrome(service=Service(DRIVER), options=options)


def wait_for(condition: Any, seconds: float = 20.0) -> Any:
    """``condition()``'s first true value, asked every 50 ms; AssertionError after ``seconds``."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("timed out")
