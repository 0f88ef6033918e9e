"""The command line end to end through typer's CliRunner, and every user-error path."""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from charlstm.cli import app

runner = CliRunner()
TINY = [
    "--layers",
    "2",
    "--hidden",
    "16",
    "--embedding",
    "8",
    "--seq-len",
    "16",
    "--batch-size",
    "4",
    "--lr",
    "0.02",
    "--warmup-steps",
    "2",
    "--eval-every",
    "10",
    "--log-every",
    "5",
    "--sample-chars",
    "30",
    "--precision",
    "fp32",
]


def invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def assert_user_error(result, *needles: str) -> None:
    """Exit 2, exactly one line on stderr starting with 'error:', no traceback."""
    assert result.exit_code == 2, (result.exit_code, result.stdout, result.stderr)
    lines = result.stderr.rstrip("\n").splitlines()  # a blank line before the error counts too
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


@pytest.fixture
def trained(corpus_file, tmp_path) -> Path:
    out = tmp_path / "run"
    result = invoke("train", "--corpus", corpus_file, "--out", out, "--max-steps", 40, *TINY)
    assert result.exit_code == 0, result.output
    return out


def test_train_sample_eval_info_end_to_end(trained, corpus_file):
    assert {p.name for p in trained.iterdir()} == {"best.pt", "last.pt", "metrics.jsonl"}

    sample = invoke("sample", trained, "--prompt", "KING:", "--length", 50, "--seed", 7)
    assert sample.exit_code == 0, sample.output
    assert sample.stdout.startswith("KING:") and len(sample.stdout.rstrip("\n")) >= 50
    again = invoke("sample", trained, "--prompt", "KING:", "--length", 50, "--seed", 7)
    assert again.stdout == sample.stdout
    two = invoke("sample", trained / "last.pt", "--length", 20, "--num-samples", 2, "--top-k", 5, "--top-p", 0.9)
    assert two.exit_code == 0 and two.stdout.count("-" * 40) == 1
    three = invoke("sample", trained, "--prompt", "KING:", "--length", 20, "--num-samples", 3, "--seed", 1)
    parts = three.stdout.split("\n" + "-" * 40 + "\n")  # drawn side by side, printed one after another
    assert len(parts) == 3 and all(p.startswith("KING:") and len(p) == 5 + 20 + 1 for p in parts)
    assert len(set(parts)) == 3
    for precision in ("fp32", "bf16"):
        exact = invoke("sample", trained, "--length", 30, "--seed", 2, "--precision", precision)
        assert exact.exit_code == 0 and len(exact.stdout) == 31
    assert_user_error(invoke("sample", trained, "--precision", "fp16"), "--precision")
    assert_user_error(invoke("sample", trained, "--num-samples", 100_001), "--num-samples")

    ev = invoke("eval", trained, "--corpus", corpus_file, "--json")
    assert ev.exit_code == 0, ev.output
    report = json.loads(ev.stdout)
    assert set(report) == {"loss", "bpc", "perplexity", "chars"}
    assert report["bpc"] == pytest.approx(report["loss"] / 0.6931471805599453)
    vocab_size = len(set(corpus_file.read_text()))
    assert report["chars"] > 19_000 and 0 < report["loss"] < math.log(vocab_size) - 0.3  # learned something
    val = json.loads(invoke("eval", trained, "--json").stdout)
    assert val["chars"] < 2_100  # default: the checkpoint's own validation tail

    info = invoke("info", trained, "--json")
    assert info.exit_code == 0, info.output
    data = json.loads(info.stdout)
    assert data["step"] == 40 and data["vocab_size"] == vocab_size
    assert data["params"] > 0 and data["val_loss"] > 0 and data["config"]["model"]["hidden"] == 16
    table = invoke("info", trained)
    assert table.exit_code == 0 and "val_loss" in table.stdout


def test_resume_continues_and_refuses_changes(trained):
    more = invoke("train", "--resume", trained, "--max-steps", 50)
    assert more.exit_code == 0, more.output
    assert json.loads(invoke("info", trained / "last.pt", "--json").stdout)["step"] == 50
    assert_user_error(invoke("train", "--resume", trained, "--hidden", 64), "--hidden 64", "16")


def test_version_and_help():
    result = invoke("--version")
    assert result.exit_code == 0 and result.stdout.startswith("charlstm ")
    assert invoke("train", "--help").exit_code == 0


@pytest.mark.parametrize(
    "args, needles",
    [
        (["train", "--corpus", "no/such/file.txt"], ["does not exist", "tinyshakespeare"]),
        (["train", "--layers", "abc"], ["--layers"]),
        (["train", "--dropout", "1.5"], ["--dropout 1.5", "[0, 1)"]),
        (["train", "--lr", "-1"], ["--lr -1"]),
        (["train", "--schedule", "linear"], ["--schedule 'linear'", "cosine"]),
        (["train", "--device", "tpu"], ["--device 'tpu'"]),
        (["train", "--hidden", "0"], ["--hidden 0"]),
        (["train", "--grad-clip", "-1"], ["--grad-clip -1"]),
        (["sample", "nowhere.pt"], ["does not exist"]),
        (["eval", "nowhere.pt"], ["does not exist"]),
        (["info", "nowhere.pt"], ["does not exist"]),
        (["train", "--bogus-option"], ["--bogus-option"]),
    ],
)
def test_user_errors_are_one_line_exit_2(args, needles):
    assert_user_error(invoke(*args), *needles)


def test_corpus_errors(tmp_path):
    assert_user_error(invoke("train", "--corpus", tmp_path), "is a directory")
    empty = tmp_path / "empty.txt"
    empty.write_text("   \n")
    assert_user_error(invoke("train", "--corpus", empty), "empty")
    binary = tmp_path / "image.png"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00")
    assert_user_error(invoke("train", "--corpus", binary))
    short = tmp_path / "short.txt"
    short.write_text("to be or not to be\n" * 10)
    assert_user_error(invoke("train", "--corpus", short, "--out", tmp_path / "r"), "too short", "--seq-len")


def test_sampling_errors(trained):
    assert_user_error(invoke("sample", trained, "--temperature", "-1"), "--temperature -1")
    assert_user_error(invoke("sample", trained, "--temperature", "warm"), "--temperature")
    assert_user_error(invoke("sample", trained, "--top-k", "-2"), "--top-k -2")
    assert_user_error(invoke("sample", trained, "--top-p", "0"), "--top-p 0")
    assert_user_error(invoke("sample", trained, "--length", "-5"), "--length -5")
    assert_user_error(invoke("sample", trained, "--prompt", "KING ☃"), "'☃'", "--unknown skip")
    skipped = invoke("sample", trained, "--prompt", "KING☃", "--unknown", "skip", "--length", 5, "--seed", 1)
    assert skipped.exit_code == 0 and skipped.stdout.startswith("KING") and "☃" in skipped.stderr


def test_existing_run_and_checkpoint_errors(trained, corpus_file, tmp_path):
    assert_user_error(invoke("train", "--corpus", corpus_file, "--out", trained, *TINY), "--resume", "--overwrite")
    broken = tmp_path / "broken.pt"
    broken.write_bytes((trained / "best.pt").read_bytes()[:1000])
    for command in ("sample", "eval", "info"):
        assert_user_error(invoke(command, broken), "not a readable charlstm checkpoint")
    other = tmp_path / "other.txt"
    other.write_text("Ωmega text never seen\n" * 50, encoding="utf-8")
    assert_user_error(invoke("eval", trained, "--corpus", other), "never saw")


def run_cli(*args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "charlstm", *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kw,
    )


def test_console_entry_point_and_module():
    proc = run_cli("--version")
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0 and out.startswith("charlstm ")


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_interrupt_saves_and_prints_the_resume_command(corpus_file, tmp_path, signum, code):
    out = tmp_path / "run"
    proc = run_cli(
        "train",
        "--corpus",
        corpus_file,
        "--out",
        out,
        "--max-steps",
        100000,
        *TINY,
        env={**os.environ, "COLUMNS": "200"},
    )
    deadline = time.time() + 60
    while not (out / "best.pt").exists() and time.time() < deadline:
        time.sleep(0.1)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    assert f"charlstm train --resume {out}" in err
    info = json.loads(
        subprocess.run(
            [sys.executable, "-m", "charlstm", "info", out / "last.pt", "--json"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    assert info["step"] >= 10


def test_export_safetensors_is_accepted_everywhere(trained, tmp_path):
    out = tmp_path / "model.safetensors"
    result = invoke("export", trained, out)
    assert result.exit_code == 0, result.output
    from safetensors import safe_open

    with safe_open(str(out), "pt") as f:
        assert f.metadata()["format"] == "charlstm"
    a = invoke("sample", trained, "--length", 40, "--seed", 3, "--prompt", "KING")
    b = invoke("sample", out, "--length", 40, "--seed", 3, "--prompt", "KING")
    assert b.exit_code == 0 and a.stdout == b.stdout
    assert json.loads(invoke("eval", out, "--json").stdout) == json.loads(invoke("eval", trained, "--json").stdout)
    info = json.loads(invoke("info", out, "--json").stdout)
    assert info["step"] == 40 and info["resume"] is None
    assert_user_error(invoke("export", trained, tmp_path / "model.bin"), ".safetensors")


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def test_malicious_checkpoint_never_runs(tmp_path, monkeypatch, corpus_file):
    import torch

    monkeypatch.chdir(tmp_path)
    run_dir = tmp_path / "evil_run"
    run_dir.mkdir()
    torch.save({"format_version": 1, "model_config": {}, "vocab": "ab", "model": _Evil()}, run_dir / "last.pt")
    torch.save({"format_version": 1, "model_config": {}, "vocab": "ab", "model": _Evil()}, run_dir / "best.pt")
    for args in (["sample", run_dir], ["eval", run_dir], ["info", run_dir], ["train", "--resume", run_dir]):
        assert_user_error(invoke(*args), "refused")
        assert not (tmp_path / "PWNED").exists()


def test_sigkill_at_random_moments_leaves_loadable_checkpoints(corpus_file, tmp_path):
    """Kill training with SIGKILL at several random moments; every time both files load and the
    run resumes from last.pt."""
    import random

    from charlstm import checkpoint as ckpt

    out, rng = tmp_path / "run", random.Random(0)
    args = ["train", "--corpus", corpus_file, "--out", out, "--max-steps", 100000, *TINY, "--save-every", "1"]
    steps = []
    for attempt in range(3):
        before = (out / "last.pt").stat().st_mtime_ns if attempt else None
        proc = run_cli(*args) if attempt == 0 else run_cli("train", "--resume", out, "--save-every", "1")
        deadline = time.time() + 60
        while time.time() < deadline and not (
            (out / "best.pt").exists() and (out / "last.pt").stat().st_mtime_ns != before
        ):
            time.sleep(0.02)  # until this process has written a checkpoint of its own
        time.sleep(rng.uniform(0.05, 1.0))  # then somewhere in the middle of steps and writes
        proc.kill()
        proc.communicate(timeout=60)
        assert proc.returncode == -signal.SIGKILL
        last, best = ckpt.load_checkpoint(out / "last.pt"), ckpt.load_checkpoint(out / "best.pt")
        assert best["progress"]["step"] <= last["progress"]["step"]
        steps.append(last["progress"]["step"])
    assert steps == sorted(steps) and steps[-1] > steps[0]


def test_unwritable_output_directory(corpus_file, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    result = invoke("train", "--corpus", corpus_file, "--out", blocker / "run", *TINY)
    assert_user_error(result, "cannot write to run directory")


def test_unreadable_corpus(corpus_file, monkeypatch):
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if str(p) == str(corpus_file) else real_access(p, mode))
    assert_user_error(invoke("train", "--corpus", corpus_file), "cannot be read")


def test_disk_full_during_checkpoint_keeps_the_previous_one(trained, monkeypatch):
    import torch

    before = (trained / "last.pt").read_bytes()

    def full_disk(obj, f, *a, **k):
        with open(f, "wb") as fh:
            fh.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    result = invoke("train", "--resume", trained, "--max-steps", 60)
    assert result.exit_code == 2 and "Traceback" not in result.stderr  # progress lines come first
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith("error: could not write") and "No space left on device" in last_line
    assert (trained / "last.pt").read_bytes() == before
    assert not [p for p in trained.iterdir() if p.name.endswith(".tmp")]


def test_internal_errors_exit_1_and_debug_shows_traceback(trained, monkeypatch):
    from charlstm import sample as sampling

    def broken(*a, **k):
        raise ZeroDivisionError("boom")

    monkeypatch.setattr(sampling, "generate_texts", broken)
    result = invoke("sample", trained, "--length", 5)
    assert result.exit_code == 1 and "internal error" in result.stderr and "Traceback" not in result.stderr
    debug = invoke("--debug", "sample", trained, "--length", 5)
    assert debug.exit_code == 1 and "Traceback" in debug.stderr and "ZeroDivisionError" in debug.stderr


def test_more_error_paths_through_the_cli(trained, corpus_file, tmp_path):
    import torch

    assert_user_error(
        invoke("train", "--corpus", corpus_file, "--val-fraction", "0.00001", "--out", tmp_path / "v"),
        "validation split",
        "--val-fraction",
    )
    if not torch.cuda.is_available():
        assert_user_error(
            invoke("train", "--corpus", corpus_file, "--device", "cuda", "--out", tmp_path / "c"),
            "--device cuda",
            "no CUDA GPU",
        )
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(os.urandom(2048))
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(2)}, foreign)
    future = tmp_path / "future.pt"
    payload = torch.load(trained / "best.pt", weights_only=True)
    torch.save({**payload, "format_version": 99}, future)
    for command in ("sample", "eval", "info"):
        assert_user_error(invoke(command, garbage), "not a readable charlstm checkpoint")
        assert_user_error(invoke(command, foreign), "not a charlstm checkpoint")
        assert_user_error(invoke(command, future), "format version 99")
    assert_user_error(invoke("train", "--resume", tmp_path / "nothing-here"), "does not exist")


def test_nan_loss_through_the_cli(trained, monkeypatch):
    from charlstm import train as training

    real_step = training.train_step
    best_before = (trained / "best.pt").read_bytes()

    def poisoned(run, x, y, lr):
        return real_step(run, x, y, lr) * float("nan")

    monkeypatch.setattr(training, "train_step", poisoned)
    result = invoke("train", "--resume", trained, "--max-steps", 60)
    assert result.exit_code == 2 and "Traceback" not in result.stderr
    last_line = result.stderr.strip().splitlines()[-1]
    assert "NaN or infinite by step 45" in last_line and "--lr" in last_line
    assert (trained / "best.pt").read_bytes() == best_before
    assert json.loads(invoke("info", trained / "last.pt", "--json").stdout)["step"] == 40


def test_sample_into_a_closed_pipe_is_quiet(trained):
    proc = subprocess.Popen(
        [sys.executable, "-m", "charlstm", "sample", str(trained), "--length", "100000", "--seed", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    proc.stdout.read(10)
    proc.stdout.close()
    err = proc.stderr.read().decode()
    # typer's convention for a reader that went away (`... | head`): exit 1 without a word
    assert proc.wait(timeout=60) == 1 and err == ""


def test_other_encodings_through_the_cli(tmp_path):
    latin = tmp_path / "latin.txt"
    latin.write_bytes(("Café, garçon! Où est le thé?\n" * 400).encode("latin-1"))
    assert_user_error(invoke("train", "--corpus", latin, "--out", tmp_path / "r"), "not valid utf-8", "--encoding")
    ok = invoke("train", "--corpus", latin, "--encoding", "latin-1", "--out", tmp_path / "r", "--max-steps", 4, *TINY)
    assert ok.exit_code == 0, ok.output
    text = invoke("sample", tmp_path / "r", "--prompt", "Café", "--length", 30, "--seed", 1)
    assert text.exit_code == 0 and text.stdout.startswith("Café")


def test_any_script_emoji_and_crlf_train_and_sample(tmp_path):
    corpus = tmp_path / "poly.txt"
    lines = ["Καλημέρα κόσμε 🌍\r\n", "こんにちは世界 🎭\r\n", "Привет, мир! ✨\r\n", "مرحبا بالعالم 🌙\r\n"]
    corpus.write_bytes(("".join(lines) * 300).encode("utf-8"))
    trained = invoke("train", "--corpus", corpus, "--out", tmp_path / "r", "--max-steps", 30, *TINY)
    assert trained.exit_code == 0, trained.output
    info = json.loads(invoke("info", tmp_path / "r", "--json").stdout)
    assert "\r" in info["vocab"] and "🎭" in info["vocab"] and "こ" in info["vocab"]
    result = invoke("sample", tmp_path / "r", "--prompt", "こんにちは", "--length", 60, "--seed", 2)
    assert result.exit_code == 0 and result.stdout.startswith("こんにちは")
    assert set(result.stdout) - {"\n"} <= set(info["vocab"])


def test_offline_download_through_the_cli_is_one_line(tmp_path, monkeypatch):
    from charlstm import corpus

    monkeypatch.chdir(tmp_path)
    entry = corpus.KNOWN_CORPORA["tinyshakespeare"]
    monkeypatch.setitem(
        corpus.KNOWN_CORPORA,
        "tinyshakespeare",
        corpus.KnownCorpus("http://127.0.0.1:9/input.txt", entry.sha256, entry.filename),
    )
    assert_user_error(invoke("train"), "could not download", "corpora/tinyshakespeare.txt", "--corpus PATH")
    assert not (tmp_path / "corpora" / "tinyshakespeare.txt").exists()
