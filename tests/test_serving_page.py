"""The playground page in headless Chromium (Debian's ``chromium`` and ``chromium-driver``, driven
by Selenium): type a prompt, press Generate, see the text stream in, press Stop."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from tests.browser import CHROMIUM, DRIVER, chrome, wait_for
from tests.serving import Server

if not (CHROMIUM and DRIVER):  # .ci/run installs both
    pytest.skip(
        "needs chromium and chromium-driver (apt-get install chromium chromium-driver)", allow_module_level=True
    )

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def browser():
    assert CHROMIUM and DRIVER, "the browser tests need chromium and chromium-driver (apt-get install both)"
    driver = chrome(phone_width=390)
    yield driver
    driver.quit()


def test_generate_streams_text_in_and_stop_ends_it(browser, wide_run):
    from selenium.webdriver.common.by import By

    server = Server(wide_run, "--quiet")
    try:
        browser.get(server.url + "/")
        assert "1x1024" in browser.find_element(By.ID, "facts").text
        prompt = browser.find_element(By.ID, "prompt")
        prompt.clear()
        prompt.send_keys("KING:")
        length = browser.find_element(By.ID, "max_tokens")
        length.clear()
        length.send_keys("4000")
        output = browser.find_element(By.ID, "output")
        browser.find_element(By.ID, "generate").click()
        first = wait_for(lambda: len(output.text) > len("KING:") + 20 and len(output.text))
        grown = wait_for(lambda: len(output.text) > first and len(output.text))
        assert output.text.startswith("KING:") and grown > first  # more text arrived while we watched
        assert browser.find_element(By.ID, "generate").get_attribute("disabled")
        browser.find_element(By.ID, "stop").click()
        wait_for(lambda: "stopped" in browser.find_element(By.ID, "status").text)
        stopped = len(output.text)
        time.sleep(0.5)
        assert len(output.text) == stopped < len("KING:") + 4000  # nothing after Stop
        assert not browser.find_element(By.ID, "generate").get_attribute("disabled")
        assert wait_for(lambda: server.health()["active"] == 0, 10)  # the server let the stream go
        width, screen = browser.execute_script("return [document.documentElement.scrollWidth, window.innerWidth]")
        assert screen == 390 and width <= screen  # a phone's width: nothing wider than the screen
        shot = os.environ.get("CHARLSTM_SCREENSHOT")
        if shot:  # docs/img/playground.png is made this way, with a trained model
            Path(shot).parent.mkdir(parents=True, exist_ok=True)
            browser.save_screenshot(shot)
    finally:
        server.stop()


def test_loading_the_page_asks_for_nothing_that_is_not_there(browser, shared_run):
    import httpx

    server = Server(shared_run)
    try:
        browser.get(server.url + "/")
        wait_for(lambda: browser.execute_script("return document.readyState") == "complete")
        time.sleep(1.0)  # a browser asks for /favicon.ico after the load
        metrics = httpx.get(server.url + "/metrics", timeout=30).text
        assert 'status="404"' not in metrics
        assert "favicon" not in server.output  # the access log: no request for it at all
    finally:
        server.stop()
