"""A model's speed and size where it leaves Python: the exported one-file page in headless
Chromium (Debian's chromium and chromium-driver, driven by Selenium as the browser tests do), and
the ONNX export in onnxruntime.

For each preset (micro, tiny, small, medium by default) it trains a model on tiny Shakespeare for
two steps (speed does not depend on the weights' values), exports it as a page in fp32 and in bf16,
opens each from file:// and times ``window.charlstm.generate`` for ``--chars`` characters at
temperature 0.8 (after one warm-up call), ``--repeats`` times: the median chars/s is printed with
the file's size. The ONNX file is timed one token per call (batch 1, the state fed back), as
``docs/examples/sample_onnx.py`` draws, on onnxruntime's CPU provider. ``--model RUN`` measures a
trained model too (the default 120 s model, say), and
checks that its greedy text equals ``charlstm sample --temperature 0``'s for ``--greedy`` characters.

    python benchmarks/elsewhere.py
    python benchmarks/elsewhere.py --model /tmp/b120 --presets small --repeats 5
"""

from __future__ import annotations

import argparse
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from charlstm import api  # noqa: E402
from tests.browser import chrome  # noqa: E402

TIMED = """
const [options, repeats, done] = [arguments[0], arguments[1], arguments[arguments.length - 1]];
(async () => {
  await window.charlstm.ready;
  await window.charlstm.generate({ ...options, length: 200 });  // warm-up: the JIT, the first pages
  const rates = [];
  for (let i = 0; i < repeats; i++) {
    const started = performance.now();
    await window.charlstm.generate({ ...options, seed: i });
    rates.push(options.length / ((performance.now() - started) / 1000));
  }
  return rates;
})().then(done, (e) => done(String(e)));
"""


def cpu() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def rate(driver, page: Path, chars: int, repeats: int) -> float:
    driver.get(page.as_uri())
    rates = driver.execute_async_script(TIMED, {"length": chars, "temperature": 0.8}, repeats)
    if isinstance(rates, str):
        raise RuntimeError(rates)
    return statistics.median(rates)


def onnx_rate(onnx_file: Path, chars: int, repeats: int) -> float:
    import numpy as np
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()[1:]]
    layers, _, hidden = session.get_inputs()[1].shape
    rates = []
    for _ in range(repeats + 1):  # the first is a warm-up
        state = {n: np.zeros((layers, 1, hidden), np.float32) for n in names}
        token, started = np.zeros((1, 1), np.int64), time.perf_counter()
        for _ in range(chars):
            logits, *after = session.run(None, {"tokens": token, **state})
            state = dict(zip(names, after, strict=True))
            token[0, 0] = int(logits[0, -1].argmax())
        rates.append(chars / (time.perf_counter() - started))
    return statistics.median(rates[1:])


def measure(driver, run: Path, folder: Path, label: str, args: argparse.Namespace) -> None:
    cells = []
    for precision in ("fp32", "bf16"):
        page = api.export(run, folder / f"{label}-{precision}.html", precision=precision, overwrite=True).path
        cells.append(f"{page.stat().st_size / 2**20:10.1f} MiB {rate(driver, page, args.chars, args.repeats):8,.0f}")
    onnx_file = api.export(run, folder / f"{label}.onnx", overwrite=True).path
    cells.append(f"{onnx_file.stat().st_size / 2**20:10.1f} MiB {onnx_rate(onnx_file, args.chars, args.repeats):8,.0f}")
    cfg = api.load(run).checkpoint.model_config
    print(f"{label:<10} {f'{cfg.layers}x{cfg.hidden}':<8} {cfg.vocab_size:>5}   " + "   ".join(cells), flush=True)


def greedy(driver, run: Path, folder: Path, chars: int) -> None:
    for precision in ("fp32", "bf16"):
        page = api.export(run, folder / f"greedy-{precision}.html", precision=precision, overwrite=True).path
        driver.get(page.as_uri())
        options = {"prompt": "ROMEO:", "length": chars, "temperature": 0}
        text = driver.execute_async_script(
            "const d = arguments[arguments.length - 1];"
            "window.charlstm.generate(arguments[0]).then(d, (e) => d(String(e)));",
            options,
        )
        expected = api.load(run).generate("ROMEO:", length=chars, temperature=0, precision=precision)
        pairs = enumerate(zip(text, expected, strict=False))
        same = next((i for i, (a, b) in pairs if a != b), min(len(text), len(expected)))
        shown = len(options["prompt"])  # both texts start with the prompt
        print(f"greedy {precision}: the page's first {same - shown:,} of {chars:,} characters equal charlstm sample's")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", default="micro,tiny,small,medium")
    parser.add_argument("--model", type=Path, help="a trained run to measure too")
    parser.add_argument("--chars", type=int, default=5000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--greedy", type=int, default=1000)
    args = parser.parse_args()
    chromium = subprocess.run(["chromium", "--version"], capture_output=True, text=True).stdout.strip()
    print(f"CPU: {cpu()}; {chromium}; medians of {args.repeats} x {args.chars:,} chars (pages at temperature 0.8)")
    sizes = "   ".join(f"{name + ' size':>14} {'chars/s':>8}" for name in ("page fp32", "page bf16", "onnx"))
    print(f"{'model':<10} {'shape':<8} {'vocab':>5}   {sizes}")
    driver = chrome()
    driver.set_script_timeout(600)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            for preset in args.presets.split(","):
                run = folder / preset
                train = [sys.executable, "-m", "charlstm", "train", "--preset", preset, "--max-steps", "2"]
                subprocess.run([*train, "--out", str(run)], check=True, capture_output=True)
                measure(driver, run, folder, preset, args)
            if args.model:
                measure(driver, args.model, folder, args.model.name, args)
                greedy(driver, args.model, folder, args.greedy)
    finally:
        driver.quit()


if __name__ == "__main__":
    main()
