"""The acceptance measurement: ``charlstm train --max-time 120`` with default hyperparameters on
tiny Shakespeare, then ``charlstm eval`` of best.pt on the validation tail (last 10%), then a
500-character sample at temperature 0.8. Runs the real command line, as a user would.

    python benchmarks/quality.py                    # 120 s, a fresh run directory
    python benchmarks/quality.py --max-time 60 --out /tmp/q60
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def charlstm(*args: str, capture: bool = False) -> str:
    cmd = [sys.executable, "-m", "charlstm", *args]
    print("$ charlstm " + " ".join(args), file=sys.stderr, flush=True)
    result = subprocess.run(cmd, check=True, text=True, stdout=subprocess.PIPE if capture else None)
    return result.stdout if capture else ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-time", default="120")
    parser.add_argument("--out", help="run directory (default: a new temporary one)")
    parser.add_argument("extra", nargs="*", help="more options for charlstm train, after --")
    args = parser.parse_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="charlstm-quality-")) / "run"
    t0 = time.perf_counter()
    charlstm("train", "--max-time", args.max_time, "--out", str(out), *args.extra)
    wall = time.perf_counter() - t0
    report = json.loads(charlstm("eval", str(out / "best.pt"), "--json", capture=True))
    info = json.loads(charlstm("info", str(out / "best.pt"), "--json", capture=True))
    text = charlstm("sample", str(out), "--length", "500", "--temperature", "0.8", "--seed", "1", capture=True)
    print(
        f"val loss of best.pt on the last 10%: {report['loss']:.4f} nats/char ({report['bpc']:.4f} bpc, "
        f"perplexity {report['perplexity']:.3f}, {report['chars']:,} chars)"
    )
    print(
        f"steps {info['step']}, trained {info['elapsed']:.1f} s, whole command {wall:.1f} s, "
        f"precision {info['precision']}, {info['params']:,} parameters"
    )
    print("sample (temperature 0.8, seed 1):")
    print(text)


if __name__ == "__main__":
    main()
