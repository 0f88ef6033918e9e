"""Speed of dynamic evaluation: characters per second of ``read_streams`` on a checkpoint's
validation text, read in one stream, in several streams one after another, and in several
streams side by side (threads, one core each, as ``charlstm eval --dynamic`` reads them); with
the loss each reading gives, so that what splitting the text costs is seen beside what it buys.

The rates are the checkpoint's (``charlstm eval --dynamic`` keeps them in it), or fitted here on
its training split without writing them anywhere. Each reading is timed ``--runs`` times and the
median printed.

    python benchmarks/dynamic.py RUN/best.pt
    python benchmarks/dynamic.py RUN/best.pt --tokens 24000 --streams 2 --runs 3
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import numpy as np
import torch

from charlstm.data.batches import split_tokens
from charlstm.data.corpus import Reading, load_in_vocab
from charlstm.data.sources import resolve_corpus
from charlstm.store.checkpoint import load_checkpoint
from charlstm.training.dynamic import DynamicRates, mean_loss, rates_for, read_streams, stream_count
from charlstm.training.parallel import workers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint")
    parser.add_argument("--tokens", type=int, default=None, help="read the validation split's first N tokens (all)")
    parser.add_argument("--streams", type=int, default=None, help="streams to compare with one (as eval reads it)")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()

    ckpt = load_checkpoint(args.checkpoint)
    model, starts = ckpt.build_model(), ckpt.vocab.char_starts()
    own = load_in_vocab(resolve_corpus(ckpt.train_config.corpus), Reading.of(ckpt.train_config), ckpt.vocab)
    train, val = split_tokens(own.tokens, ckpt.train_config.val_fraction)
    text = val if args.tokens is None else val[: args.tokens + 1]
    ckpt.path = None  # rates fitted here are not written into its file
    rates, rms, _ = rates_for(ckpt, model, train, starts)
    streams = args.streams or max(2, stream_count(len(text) - 1))
    targets = np.asarray(text[1:], dtype=np.int64)
    print(f"{platform.processor() or platform.machine()}, torch {torch.__version__}, {workers()} threads")
    print(f"{len(targets):,} tokens of the validation split; rates lr {rates.lr:g}, decay {rates.decay:g}")
    print("| reading | streams | at once | static chars/s | static loss | dynamic chars/s | dynamic loss |")
    print("|---|---|---|---|---|---|---|")
    static = DynamicRates(0.0, 0.0, rates.segment)
    for count, at_once in ((1, 1), (streams, 1), (streams, workers())):
        row = []
        for how in (static, rates):
            seconds, loss = [], float("nan")
            for _ in range(args.runs):
                began = time.perf_counter()
                losses = read_streams(model, text, how, rms, count, at_once)
                seconds.append(time.perf_counter() - began)
                loss = mean_loss(losses, targets, starts)
            row += [f"{len(targets) / statistics.median(seconds):,.0f}", f"{loss:.4f}"]
        kind = "one stream" if count == 1 else ("one after another" if at_once == 1 else "side by side")
        print(f"| {kind} | {count} | {min(at_once, count)} | " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
