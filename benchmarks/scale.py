"""Large corpora: how fast charlstm reads them, how much memory that takes, and how fast it trains
and evaluates on them beside tiny Shakespeare; and one process of 2 threads against 2 processes
of 1 thread (torchrun, gloo) on this CPU.

Corpora of the requested sizes are built in ``--workdir`` (never in the repository) from the
Python source files on this machine, repeated until the size is reached: thousands of distinct
characters, most of them rare, as in the corpus that issue 10 describes.

    python benchmarks/scale.py --workdir /tmp/charlstm-scale                  # 100 MB, 1 GB, 2 GB
    python benchmarks/scale.py --workdir /tmp/s --sizes 100 --skip-train      # reading only
    python benchmarks/scale.py --workdir /tmp/s --sizes 1000 --processes      # and 1 process x 2 threads vs 2 x 1

Each measurement runs in its own process (``charlstm`` through its command line or Python), so
that peak RSS (``ru_maxrss`` of that child, from ``wait4``) is the measured command's alone.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

MB = 1_000_000


def python_sources() -> list[Path]:
    """The .py files of this Python's standard library and installed packages, in path order."""
    roots = {Path(sysconfig.get_paths()[k]) for k in ("stdlib", "purelib", "platlib")}
    return sorted({p for root in roots if root.is_dir() for p in root.rglob("*.py") if p.is_file()})


def build_corpus(path: Path, size_mb: int) -> Path:
    """A text file of about ``size_mb`` MB: Python source files (valid UTF-8 only), repeated."""
    if path.exists() and path.stat().st_size >= size_mb * MB:
        return path
    files, written = python_sources(), 0
    with open(path, "wb") as out:
        while written < size_mb * MB:
            for source in files:
                data = source.read_bytes()
                try:
                    data.decode("utf-8")
                except UnicodeDecodeError:
                    continue
                out.write(data if data.endswith(b"\n") else data + b"\n")
                written += len(data)
                if written >= size_mb * MB:
                    break
    return path


def run_alone(command: list[str]) -> tuple[str, float]:
    """Run ``command`` and wait for it: its stdout and its own peak RSS in MB (``wait4``'s rusage
    is that one child's, where RUSAGE_CHILDREN would give the largest child so far)."""
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise subprocess.CalledProcessError(proc.returncode, command)
    return out, usage.ru_maxrss / 1024


def child(code: str) -> tuple[dict, float]:
    """Run Python ``code`` (which prints one JSON line) in a fresh process: its result and peak RSS in MB."""
    out, rss = run_alone([sys.executable, "-c", code])
    return json.loads(out.strip().splitlines()[-1]), rss


READ = """
import json, time
from charlstm.data.corpus import Reading, load_corpus
from charlstm.data.sources import resolve_corpus
t0 = time.perf_counter()
corpus = load_corpus(resolve_corpus({path!r}), Reading())
s = corpus.stats
print(json.dumps(dict(seconds=time.perf_counter() - t0, chars=s.chars, tokens=s.tokens, distinct=s.distinct,
                      own=len(corpus.vocab.chars), coverage=s.own_coverage, vocab=len(corpus.vocab))))
"""


def measure_reading(path: Path) -> dict:
    for cache in path.parent.glob(f".{path.name}.*"):  # time the first reading, not a cache hit
        cache.unlink()
    result, rss = child(READ.format(path=str(path)))
    size = path.stat().st_size
    return {**result, "mb_per_s": size / MB / result["seconds"], "rss_mb": rss, "size_mb": size / MB}


def train_command(corpus: str, out: Path, seconds: int, extra: list[str]) -> list[str]:
    return [
        sys.executable,
        "-m",
        "charlstm",
        "train",
        "--corpus",
        corpus,
        "--out",
        str(out),
        "--overwrite",
        "--max-time",
        str(seconds),
        "--sample-chars",
        "0",
        *extra,
    ]


def measure_training(corpus: str, workdir: Path, seconds: int, extra: list[str]) -> dict:
    """``charlstm train`` for ``seconds``: training chars/s (from metrics.jsonl) and evaluation times."""
    out = workdir / "run"
    t0 = time.perf_counter()
    _, rss = run_alone(train_command(corpus, out, seconds, extra))
    wall = time.perf_counter() - t0
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    speeds = [m["chars_per_sec"] for m in lines if m["type"] == "train"][2:]  # after warm-up
    evals = [m for m in lines if m["type"] == "eval"]
    return {
        "chars_per_s": sorted(speeds)[len(speeds) // 2] if speeds else float("nan"),
        "eval_seconds": [m["eval_seconds"] for m in evals],
        "eval_chars": [m["eval_chars"] for m in evals],
        "val_loss": evals[-1]["val_loss"] if evals else float("nan"),
        "wall_s": wall,
        "rss_mb": rss,
    }


def measure_stop_during_eval(corpus: str, workdir: Path) -> dict:
    """SIGTERM while an evaluation runs: how long until the process has saved and exited."""
    out = workdir / "stop"
    shutil.rmtree(out, ignore_errors=True)  # an earlier run's metrics.jsonl would be read as this one's
    command = train_command(corpus, out, 3600, ["--eval-every", "20", "--log-every", "20", "--eval-chars", "5000000"])
    job = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    metrics = out / "metrics.jsonl"
    while job.poll() is None and '"step": 20' not in (metrics.read_text() if metrics.exists() else ""):
        time.sleep(0.05)  # step 20 is logged just before its evaluation starts
    time.sleep(1.0)
    t0 = time.perf_counter()
    job.send_signal(signal.SIGTERM)
    code = job.wait()
    seconds = time.perf_counter() - t0
    evals = [line for line in metrics.read_text().splitlines() if '"eval"' in line]
    saved = subprocess.run(
        [sys.executable, "-m", "charlstm", "info", str(out / "last.pt"), "--json"], capture_output=True
    )
    return {"seconds": seconds, "exit": code, "evals": len(evals), "last_step": json.loads(saved.stdout)["step"]}


def measure_processes(corpus: str, workdir: Path, seconds: int) -> dict:
    """Training chars/s of one process (all cores) and of 2 processes of torchrun (a core each)."""
    one = measure_training(corpus, workdir, seconds, [])
    out = workdir / "two"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m", "charlstm"]
    subprocess.run([*torchrun, *train_command(corpus, out, seconds, [])[3:]], check=True, capture_output=True)
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    speeds = sorted([m["chars_per_sec"] for m in lines if m["type"] == "train"][2:])  # after warm-up
    return {"one": one["chars_per_s"], "two": speeds[len(speeds) // 2] if speeds else float("nan")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "charlstm-scale")
    parser.add_argument("--sizes", type=int, nargs="*", default=[100, 1000, 2000], help="corpus sizes in MB")
    parser.add_argument("--train-seconds", type=int, default=60)
    parser.add_argument("--skip-train", action="store_true")
    parser.add_argument("--tiny", default="tinyshakespeare", help="the small corpus to compare with")
    parser.add_argument("--processes", action="store_true", help="also 1 process against 2 (torchrun)")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    print(f"# {os.cpu_count()} CPUs, workdir {args.workdir}", flush=True)
    print("| corpus | size | read MB/s | read s | peak RSS | chars | distinct | own tokens (coverage) |")
    print("|---|---|---|---|---|---|---|---|", flush=True)
    corpora = {}
    for size in args.sizes:
        path = build_corpus(args.workdir / f"python-{size}mb.txt", size)
        r = measure_reading(path)
        corpora[size] = path
        size_cols = f"{r['size_mb']:,.0f} MB | {r['mb_per_s']:.0f} | {r['seconds']:.1f} | {r['rss_mb']:,.0f} MB"
        text_cols = f"{r['chars']:,} | {r['distinct']:,} | {r['own']} ({r['coverage']:.4%})"
        print(f"| python source | {size_cols} | {text_cols} |", flush=True)
    if args.skip_train:
        return
    print("\n| corpus | training chars/s | evaluation s (chars) | peak RSS of the run |")
    print("|---|---|---|---|", flush=True)
    for name, spec in [(args.tiny, args.tiny), *((f"{s} MB", str(p)) for s, p in corpora.items())]:
        t = measure_training(spec, args.workdir, args.train_seconds, [])
        evals = ", ".join(f"{s:.1f} ({c:,})" for s, c in zip(t["eval_seconds"], t["eval_chars"], strict=True))
        print(f"| {name} | {t['chars_per_s']:,.0f} | {evals} | {t['rss_mb']:,.0f} MB |", flush=True)
    largest = str(corpora[max(corpora)])
    stop = measure_stop_during_eval(largest, args.workdir)
    print(
        f"\nSIGTERM 1 s into an evaluation (of 5M characters) of the {max(corpora)} MB corpus: exited {stop['exit']} "
        f"after {stop['seconds']:.1f} s, last.pt at step {stop['last_step']}, {stop['evals']} evaluations logged",
        flush=True,
    )
    if args.processes:
        procs = measure_processes(args.tiny, args.workdir, args.train_seconds)
        print(
            f"\n{args.tiny}, training chars/s: 1 process x all cores {procs['one']:,.0f}, "
            f"2 processes (torchrun) x 1 core {procs['two']:,.0f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
