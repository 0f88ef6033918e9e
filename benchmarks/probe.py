"""The speed probe against the speed training then logs, for several models: ``charlstm train
--max-time S`` under ``--preset auto`` with every sized option set but ``--lr`` (3e-2 in every
preset), so that the model the probe times is the model that trains; then the probe's figure
from ``last.pt`` against the median of the run's logged speeds after the first two lines.

    python benchmarks/probe.py
    python benchmarks/probe.py --max-time 40 --shapes 1x512:64x128 2x512:64x128
    python benchmarks/probe.py --max-time 3 --shapes 1x32:4x16 --corpus FILE   # a model as tiny as the tests'

The ratio is measured here, not asserted in the tests: on a busy machine the probe's passes and
the run's steps meet different loads. On a 2-core Intel Xeon shared with other jobs, the tiny
command above read 0.05 and then 0.80, a minute apart.
``tests/test_training_probe.py`` checks what makes the ratio meaningful: that the probe times
the model, chunk and precision that then train.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

# layers x hidden : batch x seq, the presets' shapes and a stacked one
SHAPES = ("1x256:32x64", "1x384:32x64", "1x512:64x128", "1x768:64x128", "2x512:64x128")


def measure(shape: str, max_time: float, corpus: str, out: Path) -> tuple[float, float, list[float]]:
    model, chunk = shape.split(":")
    layers, hidden = model.split("x")
    batch, seq = chunk.split("x")
    cmd = [sys.executable, "-m", "charlstm", "train", "--corpus", corpus, "--max-time", str(max_time)]
    cmd += ["--layers", layers, "--hidden", hidden, "--batch-size", batch, "--seq-len", seq, "--dropout", "0"]
    cmd += ["--weight-drop", "0.25", "--weight-decay", "0.2", "--eval-every", "100000"]  # --lr left to the preset
    cmd += ["--save-every", "100000", "--sample-chars", "0", "--out", str(out), "--overwrite"]
    print("$ " + " ".join(cmd[1:]), file=sys.stderr, flush=True)
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    sizing = torch.load(out / "last.pt", weights_only=True)["progress"]["sizing"]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    speeds = [r["chars_per_sec"] for r in rows if r["type"] == "train"][2:]
    return sizing["chars_per_s"], statistics.median(speeds), sizing["speed_passes"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-time", type=float, default=30.0)
    parser.add_argument("--corpus", default="tinyshakespeare")
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES))
    args = parser.parse_args()
    print("| model : chunk | probe chars/s | its timed passes | logged chars/s | probe / logged |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as scratch:
        for shape in args.shapes:
            probed, logged, passes = measure(shape, args.max_time, args.corpus, Path(scratch) / "run")
            shown = ", ".join(f"{p:,.0f}" for p in passes)
            print(f"| {shape} | {probed:,.0f} | {shown} | {logged:,.0f} | {probed / logged:.2f} |", flush=True)


if __name__ == "__main__":
    main()
