"""Fine-tuning against training from scratch: ``charlstm train --init-from BASE`` beside a plain
``charlstm train`` on the same target text, for the same seconds and with the same seed.

The base is ``charlstm train --max-time 600`` on tiny Shakespeare (``--base RUN_DIR`` reuses one
already trained). The targets are three English texts of 150-250 KB from the fortunes folder
(``songs-poems``, ``people``, ``definitions``) and one with many characters the base lacks:
``python``, some 200,000 characters of the running interpreter's standard library sources. For
each target, on the whole text at 30, 60 and 120 s and on its first 30,000 characters at 20 and
60 s, both arms train and ``charlstm info RUN --json`` gives their best validation loss on the
text's tail (the last 10%), in nats per character. Where the arms are less than 0.05 apart, both
run again with the next seeds, and the medians of ``--runs`` (2) are compared.

The feature's targets: init-from never worse than scratch by more than 0.02 (every row), and
ahead by at least 0.15 on the prefix rows of the English targets (all but ``python``).

    python benchmarks/transfer.py                                   # trains the base first
    python benchmarks/transfer.py --base /tmp/transfer/base --json transfer.json
    python benchmarks/transfer.py --only-prefix --base B --seed 3 -- --preset small
    python benchmarks/transfer.py --base B --targets people,python --init-args="--lr 0.003"
    python benchmarks/transfer.py --base B --dry-run                # prints the commands only

Options after ``--`` go to both arms, ``--init-args`` to the init-from arm only. The runs are
sequential and budgeted in seconds, so the figures are only as good as the CPU is idle: run it
with nothing else busy (the defaults take some 45 minutes, more with repeats, and 10 for a base).
Run directories and built corpora go to ``--scratch`` (default: a new temporary folder).
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import statistics
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CLOSE = 0.05  # arms closer than this run again with the next seeds
WORST_GAIN = -0.02  # init-from may trail scratch by this much at most, on every row
PREFIX_GAIN = 0.15  # and must lead by this much on the English targets' prefixes
TARGETS = "songs-poems,people,definitions,python"


def charlstm(*args: str, dry: bool, capture: bool = False) -> str:
    """Run ``python -m charlstm ARGS`` (its own output to stderr, so stdout keeps the table)."""
    print("$ charlstm " + shlex.join(args), file=sys.stderr, flush=True)
    if dry:
        return "{}"
    cmd = [sys.executable, "-m", "charlstm", *args]
    result = subprocess.run(cmd, check=True, text=True, stdout=subprocess.PIPE if capture else sys.stderr)
    return result.stdout if capture else ""


def info(run: Path, dry: bool) -> dict:
    return json.loads(charlstm("info", str(run), "--json", dry=dry, capture=True))


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def read_text(path: Path) -> str:
    return path.read_bytes().decode("utf-8", errors="replace")


def python_corpus(path: Path, limit: int) -> Path:
    """The standard library's top-level sources, sorted and joined, cut at the last line end
    within ``limit`` characters (the file that passes it can be 230,000 characters long alone)."""
    parts: list[str] = []
    for source in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py")):
        parts.append(read_text(source) + "\n")
        if sum(map(len, parts)) > limit:
            break
    text = "".join(parts)
    path.write_text(text[: text.rfind("\n", 0, limit) + 1 or limit], encoding="utf-8")
    return path


def label(name: str, fortunes: Path) -> str:
    """The target's name in the table and run directories: a path's is its file name's stem."""
    return name if name == "python" or (fortunes / name).is_file() else Path(name).stem


def target_file(name: str, fortunes: Path, scratch: Path, python_chars: int) -> Path:
    """``python``, a file of the fortunes folder, or a path."""
    if name == "python":
        return python_corpus(scratch / "python.txt", python_chars)
    if (fortunes / name).is_file():
        return fortunes / name
    if not Path(name).is_file():
        raise SystemExit(f"transfer.py: no target {name!r}: neither in {fortunes} nor a file")
    return Path(name)


def prefix_file(source: Path, label: str, chars: int, scratch: Path) -> tuple[Path, int]:
    text = read_text(source)[:chars]
    path = scratch / f"{label}-{chars}.txt"
    path.write_text(text, encoding="utf-8")
    return path, len(text)


def train_base(args: argparse.Namespace) -> Path:
    base = args.scratch / "base"
    seconds, seed = str(args.base_time), str(args.seed)
    charlstm("train", "--max-time", seconds, "--seed", seed, "--out", str(base), "--overwrite", dry=args.dry_run)
    return base


def train(args: argparse.Namespace, corpus: Path, budget: int, seed: int, out: Path, more: list[str]) -> float:
    """One run; its best validation loss in nats per character (nan in a dry run)."""
    charlstm(
        *("train", "--corpus", str(corpus), "--max-time", str(budget), "--seed", str(seed)),
        *("--out", str(out), "--overwrite", *more),
        dry=args.dry_run,
    )
    return float(info(out, args.dry_run).get("val_loss", "nan"))


def measure(args: argparse.Namespace, target: str, corpus: Path, chars: int, budget: int, prefix: bool) -> dict:
    """Both arms at one budget: once, or ``--runs`` times each where they are within CLOSE."""
    arms = {"scratch": args.extra, "init_from": [*args.extra, "--init-from", str(args.base), *args.init_args]}
    losses: dict[str, list[float]] = {arm: [] for arm in arms}
    seeds = []
    for seed in range(args.seed, args.seed + args.runs):
        seeds.append(seed)
        for arm, more in arms.items():
            out = args.scratch / "runs" / f"{target}-{chars}-{budget}s-{arm}-seed{seed}"
            losses[arm].append(train(args, corpus, budget, seed, out, more))
            print(f"{target} {chars:,} chars {budget} s seed {seed} {arm}: {losses[arm][-1]:.4f}", file=sys.stderr)
        if args.dry_run or abs(losses["init_from"][0] - losses["scratch"][0]) >= CLOSE:
            break
    scratch, init = statistics.median(losses["scratch"]), statistics.median(losses["init_from"])
    return {
        **{"target": target, "corpus": str(corpus), "chars": chars, "budget": budget, "prefix": prefix},
        **{"english": target != "python", "scratch": scratch, "init_from": init, "gain": scratch - init},
        **{"runs": len(seeds), "seeds": seeds, "scratch_losses": losses["scratch"], "init_losses": losses["init_from"]},
    }


def measure_target(args: argparse.Namespace, target: str, source: Path) -> list[dict]:
    rows = []
    if not args.only_prefix:
        chars = len(read_text(source))
        rows += [measure(args, target, source, chars, budget, False) for budget in args.budgets]
    if not args.only_full:
        prefix, chars = prefix_file(source, target, args.prefix_chars, args.scratch)
        rows += [measure(args, target, prefix, chars, budget, True) for budget in args.prefix_budgets]
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| target | chars | budget | scratch | init-from | gain | runs |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        cells = (r["target"], f"{r['chars']:,}", f"{r['budget']} s", f"{r['scratch']:.3f}", f"{r['init_from']:.3f}")
        lines.append("| " + " | ".join(cells) + f" | {r['gain']:+.3f} | {r['runs']} |")
    return "\n".join(lines)


def verdict(what: str, gain: float, floor: float) -> str:
    return f"{what}: {gain:+.3f} (must be >= {floor:+.2f}): {'ok' if gain >= floor else 'MISSED'}"


def verdicts(rows: list[dict]) -> list[str]:
    prefix = [r["gain"] for r in rows if r["prefix"] and r["english"]]
    worst = verdict(f"worst gain, all {len(rows)} rows", min(r["gain"] for r in rows), WORST_GAIN)
    if not prefix:
        return [worst, "smallest gain, English prefix rows: none measured"]
    return [worst, verdict(f"smallest gain, {len(prefix)} English prefix rows", min(prefix), PREFIX_GAIN)]


def numbers(text: str) -> list[int]:
    return [int(n) for n in text.split(",") if n.strip()]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", type=Path, help="a trained base run (default: train one on tinyshakespeare first)")
    parser.add_argument("--base-time", type=int, default=600, help="seconds for the base, without --base")
    parser.add_argument("--targets", default=TARGETS, help="comma-separated: fortunes names, python, paths")
    parser.add_argument("--fortunes", type=Path, default=REPO.parent / "shared/corpora/fortunes", help="its folder")
    parser.add_argument("--python-chars", type=int, default=200_000, help="size of the python target, about")
    parser.add_argument("--budgets", type=numbers, default="30,60,120", help="seconds on the whole targets")
    parser.add_argument("--prefix-chars", type=int, default=30_000, help="characters of the prefix targets")
    parser.add_argument("--prefix-budgets", type=numbers, default="20,60", help="seconds on the prefixes")
    parser.add_argument("--runs", type=int, default=2, help="runs per arm where the arms are within 0.05 (medians)")
    parser.add_argument("--seed", type=int, default=1, help="seed of both arms' first run (then SEED+1, ...)")
    parser.add_argument("--init-args", type=shlex.split, default="", help='init-from arm only, e.g. "--lr 0.003"')
    only = parser.add_mutually_exclusive_group()
    only.add_argument("--only-prefix", action="store_true", help="just the prefix rows")
    only.add_argument("--only-full", action="store_true", help="just the whole-text rows")
    parser.add_argument("--scratch", type=Path, help="folder for runs and corpora (default: a new temporary one)")
    parser.add_argument("--json", type=Path, help="write the rows, each run's losses included, to this file")
    parser.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    parser.add_argument("extra", nargs="*", help="more options for charlstm train, both arms, after --")
    args = parser.parse_args()
    if any(a in ("--seed", "--init-from") or a.startswith(("--seed=", "--init-from=")) for a in args.extra):
        parser.error("--seed and --init-from are this script's to set: use --seed before --")
    if args.base is not None and not args.base.exists() and not args.dry_run:
        parser.error(f"--base {args.base}: no such run")
    args.scratch = (args.scratch or Path(tempfile.mkdtemp(prefix="charlstm-transfer-"))).resolve()
    if args.scratch.is_relative_to(REPO):
        parser.error(f"--scratch {args.scratch} is inside the repository")
    args.targets = [t for t in args.targets.split(",") if t]
    return args


def main() -> None:
    args = parse_args()
    (args.scratch / "runs").mkdir(parents=True, exist_ok=True)
    targets = {
        label(t, args.fortunes): target_file(t, args.fortunes, args.scratch, args.python_chars) for t in args.targets
    }
    args.base = (args.base or train_base(args)).resolve()
    base = info(args.base, args.dry_run)
    print(f"cpu: {cpu_model()}")
    print(f"base: {args.base}, {base.get('step', '?')} steps, val loss {base.get('val_loss', float('nan')):.4f}")
    print(f"seed {args.seed}, runs {args.runs}; both arms: {shlex.join(args.extra) or '-'}; init-from arm: ", end="")
    print(shlex.join(["--init-from", "BASE", *args.init_args]) + f"; scratch: {args.scratch}\n", flush=True)
    rows = [row for target, source in targets.items() for row in measure_target(args, target, source)]
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n", encoding="utf-8")
    if rows and not args.dry_run:
        print("\n" + "\n".join(verdicts(rows)))


if __name__ == "__main__":
    main()
