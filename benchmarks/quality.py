"""Quality at a time budget: ``charlstm train --max-time S`` with default options (or the ones
given after ``--``), run as a user would, then what the model reached:

- val loss of best.pt on the last 10% of the text, and train loss on the first 90% (500,000
  characters spread over it), in nats per character;
- steps, and passes over the training text;
- the share of real words in ``--samples`` samples of 2,000 characters at temperature 0.8 (seeds
  1, 2, ...), all their words counted together: words of letters and apostrophes, lower-cased,
  that occur in the training text; and the share in the first sample alone (seed 1), which is
  what this script measured before it took several (one sample holds some 350 words, so one
  word moves its share by 0.3%).

``--baseline`` also trains a plain loop for the same time: ``nn.LSTM`` 2x256, embedding 64,
AdamW at 3e-3, bf16 autocast where the CPU has bf16 instructions (fp32 otherwise, since emulated
bf16 runs hundreds of times slower), batches of 64 random 128-character windows from zero state, as
char-rnn-style scripts do, scored in nats per character on the same tail of the same text.

    python benchmarks/quality.py --max-time 120
    python benchmarks/quality.py --max-time 600 --corpus ../shared/corpora/fortunes/ --baseline
    python benchmarks/quality.py --max-time 120 --runs 2 -- --cell gru

A folder is joined into one temporary file first (sorted, one newline between files), so that
charlstm and the baseline read exactly the same characters.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from charlstm.data.sources import resolve_corpus
from charlstm.device import bf16_supported

WORD = re.compile(r"[^\W\d_](?:[^\W\d_]|')*")  # letters and apostrophes, starting with a letter
VAL_FRACTION = 0.1


def charlstm(*args: str, capture: bool = False) -> str:
    print("$ charlstm " + " ".join(args), file=sys.stderr, flush=True)
    cmd = [sys.executable, "-m", "charlstm", *args]
    result = subprocess.run(cmd, check=True, text=True, stdout=subprocess.PIPE if capture else None)
    return result.stdout if capture else ""


def corpus_file(spec: str, scratch: Path) -> Path:
    """The corpus as one file: a file as it is (a known name's, unpacked into corpora/ if need
    be), a folder's files joined."""
    path = Path(spec)
    if not path.is_dir():
        return resolve_corpus(spec).files[0]
    parts = [p.read_bytes().decode("utf-8", errors="replace") for p in sorted(path.rglob("*")) if p.is_file()]
    joined = scratch / f"{path.name}.txt"
    joined.write_text("\n".join(part.rstrip("\n") for part in parts) + "\n", encoding="utf-8")
    return joined


def real_word_share(samples: list[str], training_text: str) -> float:
    """The share of the samples' words, all counted together, that occur in the training text."""
    known = {w.lower() for w in WORD.findall(training_text)}
    words = [w.lower() for sample in samples for w in WORD.findall(sample)]
    return sum(w in known for w in words) / max(1, len(words))


def run_charlstm(corpus: Path, max_time: str, out: Path, extra: list[str], samples: int = 1) -> dict:
    """Train with charlstm, then measure what its best.pt reached."""
    charlstm("train", "--corpus", str(corpus), "--max-time", max_time, "--out", str(out), *extra)
    info = json.loads(charlstm("info", str(out / "best.pt"), "--json", capture=True))
    last = json.loads(charlstm("info", str(out / "last.pt"), "--json", capture=True))
    val = json.loads(charlstm("eval", str(out / "best.pt"), "--json", capture=True))
    train = json.loads(
        charlstm("eval", str(out / "best.pt"), "--split", "train", "--max-chars", "500000", "--json", capture=True)
    )
    drawn = [
        charlstm("sample", str(out), "--length", "2000", "--temperature", "0.8", "--seed", str(seed), capture=True)
        for seed in range(1, samples + 1)
    ]
    tcfg = info["config"]["train"]
    text = corpus.read_text(encoding="utf-8")
    train_chars = int(len(text) * (1 - tcfg["val_fraction"]))
    steps = last["step"]
    return {
        "val_loss": val["loss"],
        "train_loss": train["loss"],
        "steps": steps,
        "best_step": info["step"],
        "passes": steps * tcfg["batch_size"] * tcfg["seq_len"] / train_chars,
        "real_words": real_word_share(drawn, text[:train_chars]),
        "real_words_seed1": real_word_share(drawn[:1], text[:train_chars]),
        "params": info["params"],
        "model": info["config"]["model"],
        "sample": drawn[0][:400],
    }


class PlainLSTM(nn.Module):
    def __init__(self, vocab: int):
        super().__init__()
        self.embed, self.lstm = nn.Embedding(vocab, 64), nn.LSTM(64, 256, 2, batch_first=True)
        self.head = nn.Linear(256, vocab)

    def forward(self, x: torch.Tensor, state=None):  # noqa: ANN001, ANN201
        out, state = self.lstm(self.embed(x), state)
        return self.head(out), state


def run_baseline(corpus: Path, seconds: float) -> dict:
    """The plain loop, trained for ``seconds`` of wall-clock time, scored on the val tail."""
    torch.manual_seed(0)
    text = corpus.read_text(encoding="utf-8")
    chars = sorted(set(text))
    index = {c: i for i, c in enumerate(chars)}
    ids = torch.tensor([index[c] for c in text])
    split = int(len(ids) * (1 - VAL_FRACTION))
    train, val = ids[:split], ids[split:]
    model = PlainLSTM(len(chars))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    precision = torch.bfloat16 if bf16_supported(torch.device("cpu")) else torch.float32
    start, steps, losses = time.perf_counter(), 0, []
    while time.perf_counter() - start < seconds:
        at = torch.randint(0, len(train) - 129, (64,))
        batch = torch.stack([train[i : i + 129] for i in at.tolist()])
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == torch.bfloat16):
            logits, _ = model(batch[:, :-1])
        loss = nn.functional.cross_entropy(logits.float().flatten(0, 1), batch[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
        steps, losses = steps + 1, [*losses[-99:], loss.item()]
    return {
        "val_loss": plain_loss(model, val),
        "train_loss": statistics.mean(losses),
        "steps": steps,
        "passes": steps * 64 * 128 / len(train),
        "precision": str(precision).removeprefix("torch."),
    }


@torch.no_grad()
def plain_loss(model: PlainLSTM, ids: torch.Tensor) -> float:
    """Nats per character over ids, state carried across chunks of 256, fp32."""
    model.eval()
    total, state = 0.0, None
    for i in range(0, len(ids) - 1, 256):
        x, y = ids[i : i + 256][None], ids[i + 1 : i + 257][None]
        x = x[:, : y.shape[1]]
        logits, state = model(x, state)
        total += nn.functional.cross_entropy(logits[0], y[0], reduction="sum").item()
    return total / (len(ids) - 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-time", default="120")
    parser.add_argument("--corpus", default="tinyshakespeare", help="a text file, a folder or a known corpus name")
    parser.add_argument("--runs", type=int, default=1, help="runs of charlstm (the median is printed)")
    parser.add_argument("--baseline", action="store_true", help="also train the plain nn.LSTM loop")
    parser.add_argument("--out", help="folder for the run directories (default: a new temporary one)")
    parser.add_argument("--samples", type=int, default=5, help="samples of 2,000 characters the words are counted in")
    parser.add_argument("extra", nargs="*", help="more options for charlstm train, after --")
    args = parser.parse_args()
    scratch = Path(args.out or tempfile.mkdtemp(prefix="charlstm-quality-"))
    scratch.mkdir(parents=True, exist_ok=True)
    corpus = corpus_file(args.corpus, scratch)
    results = [
        run_charlstm(corpus, args.max_time, scratch / f"run{i}", args.extra, args.samples) for i in range(args.runs)
    ]
    for r in results:
        print(json.dumps({k: v for k, v in r.items() if k != "sample"}))
    print(f"charlstm --max-time {args.max_time} on {args.corpus}, {args.runs} run(s), median:")
    for key in ("val_loss", "train_loss", "steps", "passes", "real_words", "real_words_seed1"):
        print(f"  {key}: {statistics.median(r[key] for r in results):.4f}")
    print("sample (temperature 0.8, seed 1), first 400 characters:\n" + results[0]["sample"])
    if args.baseline:
        compare_with_baseline(corpus, float(args.max_time), [scratch / f"run{i}" for i in range(args.runs)], scratch)


def compare_with_baseline(corpus: Path, seconds: float, runs: list[Path], scratch: Path) -> None:
    """The plain loop's val loss beside charlstm's on the very same characters (the last 10% of
    the text's characters: with byte tokens, charlstm's own val split counts tokens instead)."""
    plain = run_baseline(corpus, seconds)
    print("plain nn.LSTM loop: " + json.dumps(plain))
    text = corpus.read_text(encoding="utf-8")
    tail = scratch / "tail.txt"
    tail.write_text(text[int(len(text) * (1 - VAL_FRACTION)) :], encoding="utf-8")
    ours = [charlstm("eval", str(run / "best.pt"), "--corpus", str(tail), "--json", capture=True) for run in runs]
    median, theirs = statistics.median(json.loads(r)["loss"] for r in ours), plain["val_loss"]
    print(f"on the same tail: charlstm {median:.4f}, plain {theirs:.4f}, difference {median - theirs:+.4f}")


if __name__ == "__main__":
    main()
