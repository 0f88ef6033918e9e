"""Small hyperparameter sweep under a fixed time budget: which defaults reach the lowest
validation loss on tiny Shakespeare within --max-time seconds on this machine?

Each trial trains from scratch with ``charlstm.training.loop.train`` for the budget, then measures best.pt
on the validation tail in fp32 (as ``charlstm eval`` does) and prints one Markdown row.

    python benchmarks/sweep.py --budget 120                  # the built-in grid
    python benchmarks/sweep.py --budget 120 --only 0 3       # some rows of it
    python benchmarks/sweep.py --budget 120 --trial hidden=384 lr=4e-3
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from charlstm.config import TRAINING, training_configs
from charlstm.data.batches import split_tokens
from charlstm.options import declared
from charlstm.store.checkpoint import BEST, load_checkpoint
from charlstm.training.evaluate import evaluate
from charlstm.training.loop import train
from charlstm.training.run import new_run

# Each trial names only what differs from the current defaults.
GRID: list[dict] = [
    {},
    {"weight_decay": 0.1},
    {"weight_decay": 0.3},
    {"lr": 2e-2},
    {"lr": 4e-2},
    {"dropout": 0.1},
    {"hidden": 640},
    {"batch_size": 128, "seq_len": 64},
]


def parse_value(text: str):
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def run_trial(overrides: dict, budget: float, corpus: str, out: Path) -> dict:
    unknown = set(overrides) - {d.name for d in declared(*TRAINING)}
    if unknown:
        raise SystemExit(f"unknown option(s) in the trial: {', '.join(sorted(unknown))} (see charlstm train --help)")
    tcfg, mcfg = training_configs(
        {"corpus": corpus, "max_time": budget, "out": str(out), "sample_chars": 0, **overrides}
    )
    t0 = time.perf_counter()
    run = new_run(tcfg, mcfg, overwrite=True)
    result = train(run)
    wall = time.perf_counter() - t0
    model = load_checkpoint(out / BEST).build_model()
    _, val = split_tokens(run.data.corpus.tokens, tcfg.val_fraction)
    measured = evaluate(model, val, seq_len=256)
    return {
        "val": measured.loss,
        "steps": result.step,
        "epochs": result.epoch,
        "cps": result.chars_per_sec,
        "precision": run.state.precision,
        "wall": wall,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", type=float, default=120.0, help="seconds of training per trial")
    parser.add_argument("--corpus", default="tinyshakespeare")
    parser.add_argument("--only", type=int, nargs="*", help="indices of GRID rows to run")
    parser.add_argument("--trial", nargs="*", help="one custom trial as key=value pairs")
    args = parser.parse_args()
    trials = (
        [dict((kv.split("=", 1)[0], parse_value(kv.split("=", 1)[1])) for kv in args.trial)]
        if args.trial
        else [GRID[i] for i in (args.only if args.only else range(len(GRID)))]
    )
    print("| trial (changes from defaults) | val loss (fp32, best.pt) | steps | epochs | chars/s | precision |")
    print("|---|---|---|---|---|---|", flush=True)
    for overrides in trials:
        with tempfile.TemporaryDirectory() as tmp:
            r = run_trial(overrides, args.budget, args.corpus, Path(tmp) / "run")
        name = ", ".join(f"{k}={v}" for k, v in overrides.items()) or "defaults"
        print(
            f"| {name} | {r['val']:.4f} | {r['steps']} | {r['epochs']:.2f} | {r['cps']:,.0f} | {r['precision']} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
