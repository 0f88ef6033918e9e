"""The exported one-file page in headless Chromium (Debian's chromium and chromium-driver): opened
from file://, it generates what charlstm sample generates, for every cell, with 1 and 2 layers, with
and without byte tokens; its Generate and Stop buttons work; it names no outside address and fits a
390-pixel screen."""

from __future__ import annotations

import functools
import re
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from charlstm import api
from tests.browser import CHROMIUM, DRIVER, chrome, wait_for
from tests.conftest import EXPORT_CELLS, export_id

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not (CHROMIUM and DRIVER), reason="needs Debian's chromium and chromium-driver"),
]

LENGTH = 300
GENERATE = """
const [options, done] = [arguments[0], arguments[arguments.length - 1]];
window.charlstm.ready.then(() => window.charlstm.generate(options)).then(
  (text) => done({ text }), (e) => done({ error: e.name + ": " + e.message }));
"""


@pytest.fixture(scope="module")
def browser():
    driver = chrome(phone_width=390)
    driver.set_script_timeout(60)
    yield driver
    driver.quit()


def exported_page(run: Path, folder: Path, precision: str = "fp32") -> Path:
    return api.export(run, folder / f"{run.name}-{precision}.html", precision=precision).path


def in_page(driver, page: Path, **options) -> dict:
    if driver.current_url != page.as_uri():
        driver.get(page.as_uri())
    return driver.execute_async_script(GENERATE, options)


OUTSIDE = re.compile(r"https?://|//[a-z0-9.-]+\.[a-z]{2,}/|@import|\burl\(|\bfetch\(|XMLHttpRequest|\bsrc=")
STOP_AFTER = """
const done = arguments[arguments.length - 1], output = document.getElementById("output");
document.getElementById("prompt").value = arguments[0];
document.getElementById("max_tokens").value = "1000000";
document.getElementById("generate").click();
const seen = setInterval(() => {
  if (output.textContent.length < 300) return;
  clearInterval(seen);
  document.getElementById("stop").click();
  const stopped = setInterval(() => {
    const status = document.getElementById("status").textContent;
    if (!status.startsWith("stopped after")) return;
    clearInterval(stopped);
    done({ status, shown: output.textContent.length, coloured: output.querySelectorAll(".c").length,
           width: document.documentElement.scrollWidth, enabled: !document.getElementById("generate").disabled });
  }, 20);
}, 20);
"""


def generate_then_stop(driver, prompt: str) -> dict:
    """Generate from the page's own controls and stop after some text (script clicks: Selenium's
    round trips would let a small model write far past the point)."""
    return driver.execute_async_script(STOP_AFTER, prompt)


@pytest.mark.parametrize("case", EXPORT_CELLS, ids=export_id)
def test_the_pages_greedy_text_is_charlstm_samples(export_models, browser, tmp_path, case):
    run = export_models[case]
    prompt = "KING:\nThé lørd…" if case[2] else "KING:\nThe lord"
    page = exported_page(run, tmp_path)
    model = api.load(run)
    result = in_page(browser, page, prompt=prompt, length=LENGTH, temperature=0)
    assert result == {"text": model.generate(prompt, length=LENGTH, temperature=0, precision="fp32")}
    # The penalties move greedy text off the few characters a tiny model repeats: more states compared.
    penalties = dict(presence_penalty=0.3, frequency_penalty=0.2, repetition_penalty=1.3, repetition_window=16)
    result = in_page(browser, page, prompt=prompt, length=LENGTH, temperature=0, **penalties)
    expected = model.generate(prompt, length=LENGTH, temperature=0, precision="fp32", **penalties)
    assert result == {"text": expected}
    assert len(set(expected[len(prompt) :])) > 8
    assert not OUTSIDE.search(page.read_text("utf-8"))  # it names no outside address
    ui = generate_then_stop(browser, prompt)  # and its buttons work, within a phone's 390 pixels
    assert ui["shown"] >= 300 and ui["coloured"] and ui["enabled"] and ui["width"] <= 390, ui


@pytest.mark.parametrize("case", [("lstm", 2, True), ("peephole", 1, False)], ids=export_id)
def test_a_bf16_page_writes_what_sample_writes_in_bf16_at_half_the_size(export_models, browser, tmp_path, case):
    run = export_models[case]
    full, half = exported_page(run, tmp_path), exported_page(run, tmp_path, "bf16")
    result = in_page(browser, half, prompt="QUEEN:", length=LENGTH, temperature=0)
    assert result == {"text": api.load(run).generate("QUEEN:", length=LENGTH, temperature=0, precision="bf16")}
    assert half.stat().st_size < full.stat().st_size


def test_the_page_checks_its_options_and_repeats_a_seed(export_models, browser, tmp_path):
    page = exported_page(export_models[("gru", 1, False)], tmp_path)
    assert "top_p must be a number in (0, 1], not 2" in in_page(browser, page, top_p=2)["error"]
    assert "never saw" in in_page(browser, page, prompt="K€")["error"]
    assert "unknown option" in in_page(browser, page, temprature=1)["error"]
    one, two = (in_page(browser, page, length=200, seed=5, top_k=10, min_p=0.01) for _ in range(2))
    assert one == two and len(one["text"]) == 200
    assert in_page(browser, page, length=200, seed=6)["text"] != one["text"]
    banned = in_page(browser, page, length=500, seed=5, ban="e ")["text"]
    assert "e" not in banned and " " not in banned
    assert rejected(browser, "{ min_p: NaN }") == "RangeError: min_p must be a number in [0, 1], not NaN"
    assert "leave no token to write" in in_page(browser, page, ban="".join(MODEL_CHARS(browser)))["error"]
    assert "keyed by token ids" in in_page(browser, page, logit_bias={"": 100})["error"]
    assert in_page(browser, page, seed=2**32 + 1, length=100) != in_page(browser, page, seed=1, length=100)
    assert rejected(browser, "{ temperature: '0' }") == 'TypeError: temperature must be a number, not "0"'
    assert rejected(browser, "{ logprobs: 5 }").startswith('TypeError: unknown option "logprobs"')
    assert rejected(browser, "{ ban: ['a'] }") == 'TypeError: ban must be a string of characters, not ["a"]'
    for bad in ("null", "42", "'ROMEO'"):
        assert rejected(browser, bad).startswith("TypeError: generate takes an object of options")
    info = browser.execute_script("const i = window.charlstm.info; try { i.tokens[1] = 'Z'; } catch (e) {} return i")
    assert info["cell"] == "gru" and info["layers"] == 1 and info["tokens"][0] == "\n" and info["tokens"][1] == " "


def rejected(browser, options: str) -> str:
    """How ``window.charlstm.generate(options)`` (JavaScript source) fails: "TypeError: ...", say."""
    done = "const done = arguments[arguments.length - 1];"
    told = "(e) => done(`${e.name}: ${e.message}`)"
    return browser.execute_async_script(f"{done} window.charlstm.generate({options}).then(done, {told})")


def MODEL_CHARS(browser) -> list[str]:  # noqa: N802 - reads the page's MODEL
    return browser.execute_script("return MODEL.chars")


def test_a_call_stopped_while_it_waits_for_another_ends_at_once(wide_run, browser, tmp_path):
    page = exported_page(wide_run, tmp_path)
    browser.get(page.as_uri())
    order = browser.execute_async_script("""
      const done = arguments[arguments.length - 1], order = [];
      const first = window.charlstm.generate({ prompt: "KING:", length: 3000 }).then(() => order.push("first done"));
      const stop = new AbortController();
      const second = window.charlstm.generate({ prompt: "KING:", length: 10, signal: stop.signal })
        .then(() => order.push("second done"), (e) => order.push("second " + e.name));
      setTimeout(() => stop.abort(), 20);
      Promise.all([first, second]).then(() => done(order));
    """)
    assert order == ["second AbortError", "first done"]


def test_generate_and_stop_from_file_on_a_phone_screen(wide_run, browser, tmp_path):
    page = exported_page(wide_run, tmp_path)
    html = page.read_text("utf-8")
    assert not OUTSIDE.search(html)
    browser.get(page.as_uri())
    wait_for(lambda: browser.execute_script("return document.getElementById('facts').textContent"))
    browser.find_element("id", "prompt").clear()
    browser.find_element("id", "prompt").send_keys("KING:")
    browser.find_element("id", "max_tokens").clear()
    browser.find_element("id", "max_tokens").send_keys("100000")
    browser.find_element("id", "generate").click()
    output = browser.find_element("id", "output")
    wait_for(lambda: len(output.text) > 300)
    browser.find_element("id", "stop").click()
    status = browser.find_element("id", "status")
    wait_for(lambda: status.text.startswith("stopped after"))
    shown = len(output.text)
    assert shown < 100000 and len(output.text) == shown
    assert browser.find_element("id", "generate").is_enabled()
    assert browser.execute_script("return document.documentElement.scrollWidth") <= 390
    browser.find_element("id", "top_p").clear()
    browser.find_element("id", "top_p").send_keys("2")  # the controls send what is typed: the API says what is wrong
    browser.find_element("id", "generate").click()
    wait_for(lambda: "top_p must be a number in (0, 1], not 2" in status.text)
    assert output.find_elements("css selector", ".c") and len(output.text) == shown  # the refused request kept the text


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # the test's output is not a web log
        pass


def test_the_page_works_from_a_static_host(export_models, browser, tmp_path):
    run = export_models[("peephole", 2, True)]
    page = exported_page(run, tmp_path)
    handler = functools.partial(QuietHandler, directory=str(tmp_path))
    with ThreadingHTTPServer(("127.0.0.1", 0), handler) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            browser.get(f"http://127.0.0.1:{server.server_address[1]}/{page.name}")
            text = browser.execute_async_script(GENERATE, {"prompt": "FOOL:", "length": LENGTH, "temperature": 0})
        finally:
            server.shutdown()
    assert text == {"text": api.load(run).generate("FOOL:", length=LENGTH, temperature=0, precision="fp32")}
