"""The playground's colours by probability in headless Chromium (Debian's ``chromium`` and
``chromium-driver``, driven by Selenium): the page asks for logprobs, shows exactly the text that
the same request gets over HTTP, one coloured element per generated character, and on hover that
character's probability and the likeliest alternatives; it asks nothing of any other host."""

from __future__ import annotations

import json
import math
import re

import httpx
import pytest

from tests import browser as browser_tools
from tests.browser import CHROMIUM, DRIVER, chrome
from tests.serving import Server

pytestmark = pytest.mark.browser

PROMPT, SEED, LENGTH = "KING:", 7, 300
LEVELS = 21  # the page's colour steps


@pytest.fixture(scope="module")
def browser():
    if not (CHROMIUM and DRIVER):  # .ci/run installs both
        pytest.fail("this test needs chromium and chromium-driver: apt-get install -y chromium chromium-driver")
    driver = chrome("--window-size=1200,900")
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def server(shared_run):
    s = Server(shared_run, "--quiet")
    yield s
    s.stop()


def wait_for(condition, seconds: float = 30.0):
    return browser_tools.wait_for(condition, seconds)


def streamed(url: str, body: dict) -> tuple[str, dict[int, dict]]:
    """The text of a streamed completion and, by character offset, its tokens' logprobs summed and
    the first token's top_logprobs (the byte tokens of one character share its offset)."""
    text, scores = "", {}
    with httpx.stream("POST", url + "/v1/completions", json=body, timeout=60) as r:
        assert r.status_code == 200, r.read()
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            choice = json.loads(line[6:])["choices"][0]
            text += choice["text"]
            lp = choice["logprobs"]
            for offset, logprob, top in zip(lp["text_offset"], lp["token_logprobs"], lp["top_logprobs"], strict=True):
                score = scores.setdefault(offset, {"logprob": 0.0, "top": top})
                score["logprob"] += logprob
    return text, scores


def percents(text: str) -> list[float]:
    return [float(v) for v in re.findall(r"(\d+(?:\.\d+)?(?:e[-+]?\d+)?)%", text)]


def test_each_character_is_coloured_by_its_probability_and_hover_shows_the_alternatives(browser, server):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    browser.get(server.url + "/")
    prompt = browser.find_element(By.ID, "prompt")
    prompt.clear()
    prompt.send_keys(PROMPT)
    for field, value in (("max_tokens", LENGTH), ("seed", SEED)):
        box = browser.find_element(By.ID, field)
        box.clear()
        box.send_keys(str(value))
    assert "how likely the model found each character" in browser.find_element(By.ID, "legend").text
    browser.find_element(By.ID, "generate").click()
    wait_for(lambda: browser.find_element(By.ID, "status").text.startswith("done:"))

    # the body the page's request() builds, mirrored: its defaults are temperature 0.8, top-k 0 (left
    # out), top-p 1 (left out); logprobs 5 always
    model = httpx.get(server.url + "/v1/models", timeout=10).json()["data"][0]["id"]
    temperature = float(browser.find_element(By.ID, "temperature").get_attribute("value"))
    body = {"model": model, "prompt": PROMPT, "stream": True, "logprobs": 5, "max_tokens": LENGTH,
            "temperature": temperature, "seed": SEED}  # fmt: skip
    assert browser.execute_script("return request()") == body
    text, scores = streamed(server.url, body)
    assert len(text) == LENGTH and sorted(scores) == list(range(LENGTH))  # one character per token here

    output = browser.find_element(By.ID, "output")
    shown = browser.execute_script(
        """const out = document.getElementById("output");
        return {all: out.textContent, prompt: out.querySelector(".prompt").textContent,
                whiteSpace: getComputedStyle(out).whiteSpace,
                chars: Array.from(out.querySelectorAll(".c"), (s) => [s.textContent, s.className,
                                                                     getComputedStyle(s).backgroundColor])};"""
    )
    assert shown["all"] == PROMPT + text and shown["prompt"] == PROMPT
    assert "".join(c for c, _, _ in shown["chars"]) == text and len(shown["chars"]) == len(text)  # one each
    for i, (_, classes, background) in enumerate(shown["chars"]):
        p = math.exp(scores[i]["logprob"])
        level = min(LEVELS - 1, max(0, math.floor((1 - p) * (LEVELS - 1) + 0.5)))
        assert background not in ("", "transparent", "rgba(0, 0, 0, 0)"), (i, background)
        assert f"p{level}" in classes.split(), (i, p, classes)  # likely: light; unlikely: strong red
    assert len({background for _, _, background in shown["chars"]}) > 1, "every character has the same colour"
    assert shown["whiteSpace"] == "pre-wrap"
    if "\n" in text.strip():
        assert "\n" in output.text  # a newline still breaks the line

    tip = browser.find_element(By.ID, "tip")
    assert not tip.is_displayed()
    index = next(i for i in range(10, LENGTH) if text[i] not in " \n")
    span = output.find_elements(By.CSS_SELECTOR, ".c")[index]
    ActionChains(browser).move_to_element(span).perform()
    wait_for(tip.is_displayed, 10)
    shown_tip = tip.text
    first_line, *rest = shown_tip.splitlines()
    p = 100 * math.exp(scores[index]["logprob"])
    assert first_line.startswith(f"'{text[index]}'") and percents(first_line) == [pytest.approx(p, abs=0.051)]
    top = sorted(scores[index]["top"].items(), key=lambda kv: -kv[1])
    alternatives = [line for line in rest if line.startswith("  ")]
    assert len(alternatives) == len(top) >= 1, shown_tip
    for line, (name, logprob) in zip(alternatives, top, strict=True):  # likeliest first
        label = {" ": "\u2423", "\n": "\u21b5"}.get(name, name)
        assert line.split()[0] == label, shown_tip
        assert percents(line) == [pytest.approx(100 * math.exp(logprob), rel=0.01, abs=0.051)], shown_tip

    ActionChains(browser).move_to_element(browser.find_element(By.ID, "facts")).perform()
    wait_for(lambda: not tip.is_displayed(), 10)  # leaving the text hides it

    resources = browser.execute_script(
        "return performance.getEntriesByType('navigation').concat(performance.getEntriesByType('resource'))"
        ".map((e) => e.name)"
    )
    assert server.url + "/v1/completions" in resources
    assert all(name.startswith(server.url + "/") for name in resources), resources

    # the controls: penalties, min-p and a ban (as logit_bias by the characters' token ids)
    commonest = max(set(text) - {" ", "\n"}, key=text.count)
    tokens = httpx.get(server.url + "/v1/models", timeout=10).json()["data"][0]["charlstm"]["tokens"]
    for field, value in (("presence_penalty", "0.5"), ("min_p", "0.05"), ("repetition_penalty", "1.3"),
                         ("repeat_last_n", "16"), ("ban", commonest)):  # fmt: skip
        box = browser.find_element(By.ID, field)
        box.clear()
        box.send_keys(value)
    controlled = {**body, "presence_penalty": 0.5, "min_p": 0.05, "repetition_penalty": 1.3, "repeat_last_n": 16,
                  "logit_bias": {str(tokens.index(commonest)): -100}}  # fmt: skip
    assert browser.execute_script("return request()") == controlled
    browser.find_element(By.ID, "generate").click()
    wait_for(lambda: browser.find_element(By.ID, "status").text.startswith("done:"))
    banned_text, _ = streamed(server.url, controlled)
    assert commonest not in banned_text and banned_text != text
    assert browser.execute_script("return document.getElementById('output').textContent") == PROMPT + banned_text
