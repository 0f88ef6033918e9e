"""The command line: parsing, delegation to the library, exit codes and messages. What the library
does is tested in the module tests; here, that each command passes it the options it was given and
renders the outcome, and that every kind of mistake ends as one line and exit code 2."""

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import RunsCodeWhenUnpickled, full_disk
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from charlstm import api
from charlstm.cli.models import app
from charlstm.data.vocab import CharVocab
from charlstm.training import loop as training
from charlstm.training.events import Finished, TrainResult

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


def fake_result(run_dir: Path, stopped_by: str, signum: int | None = None) -> TrainResult:
    return TrainResult(
        run_dir, 7, 0.5, 3.0, 1.5, 1.6, 1.4, 1000.0, stopped_by, f"charlstm train --resume {run_dir}", signum
    )


def test_train_passes_exactly_the_given_options(monkeypatch, tmp_path):
    seen = {}

    def fake_train(**kwargs):
        seen.update(kwargs)
        return fake_result(tmp_path, "max_time")

    monkeypatch.setattr(api, "train", fake_train)
    result = invoke("train", "--corpus", "my.txt", "--hidden", "32", "--max-time", "5", "--dropout", "0.1")
    assert result.exit_code == 0, result.output
    options = {k: v for k, v in seen.items() if k not in ("on_event", "on_reading", "keep_freed_memory")}
    assert options == {"corpus": "my.txt", "hidden": 32, "max_time": 5.0, "dropout": 0.1, "overwrite": False}
    assert callable(seen["on_event"]) and callable(seen["on_reading"])
    assert seen["keep_freed_memory"] is True  # the command's process is there to train (device.py)
    seen.clear()
    invoke("train", "--resume", "runs/a", "--overwrite")
    assert seen["resume"] == "runs/a" and seen["overwrite"] is True and "corpus" not in seen


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_run_stopped_by_a_signal_prints_the_resume_command(monkeypatch, tmp_path, signum, code):
    def stopped(on_event, **kwargs):
        result = fake_result(tmp_path / "my run", "signal", signum)
        on_event(Finished(result))
        return result

    monkeypatch.setattr(api, "train", stopped)
    result = runner.invoke(app, ["train"], env={"COLUMNS": "40"})  # narrower than the command: never cut
    assert result.exit_code == code
    resume = f"stopped by signal; resume with:\n  charlstm train --resume {tmp_path / 'my run'}\n"
    before, table = result.stderr.split(resume)  # the command whole, then the summary table ends the output
    assert before == "" and "stopped by" in table and f"signal ({signum.name})" in " ".join(table.split())
    assert table.rstrip().endswith("┘")


def test_help_lists_every_option_with_its_default_and_flags_take_no_value():
    root = invoke("--help")
    assert root.exit_code == 0 and "<bool>" not in root.stdout and "--version" in root.stdout
    assert invoke("--version").stdout.startswith("charlstm ")
    for command in ("train", "sample", "eval", "info", "export", "plot", "runs"):
        page = runner.invoke(app, [command, "--help"], env={"COLUMNS": "200"})
        assert page.exit_code == 0 and "<bool>" not in page.stdout, command
    train = runner.invoke(app, ["train", "--help"], env={"COLUMNS": "300"}).stdout
    for option, default in [
        (
            "--hidden",
            "by --preset: 256 micro, 384 tiny, 512 small/stacked, 768 medium/large; the base's with --init-from",
        ),
        (
            "--weight-drop",
            "by --preset: 0.25 micro/tiny/small, 0.4 medium, 0.5 stacked/large; 0.5 with --init-from, as from scratch"
            " on a text far from the base's",
        ),
        ("--batch-size", "by --preset: 32 micro/tiny, 64 small/medium/stacked/large; 32 with --init-from"),
        ("--layers", "by --preset: 1 micro/tiny/small/medium, 2 stacked/large; the base's with --init-from"),
        ("--dropout", "by --preset: 0 micro/tiny/small/medium, 0.2 stacked/large"),
        ("--lr", "0.03; 0.01 with --init-from, as from scratch on a text far from the base's"),
        ("--preset", "auto"),
        ("--schedule", "cosine"),
        ("--seed", "1337"),
    ]:
        assert re.search(rf"{option} .*\[default: {re.escape(default)}\]", train), option
    assert re.search(r"--config .*TOML file", train)
    plot = runner.invoke(app, ["plot", "--help"], env={"COLUMNS": "200"}).stdout
    assert re.search(r"--out .*\[default: a chart in the terminal", plot) and re.search(
        r"--x .*\[default: step\]", plot
    )
    runs = runner.invoke(app, ["runs", "--help"], env={"COLUMNS": "200"}).stdout
    assert re.search(r"folder .*\[default: checkpoints\]", runs) and re.search(r"--sort .*\[default: best\]", runs)
    assert "--json" in runs
    assert re.search(r"--overwrite +--no-overwrite +Start afresh", train)  # a flag pair, no value placeholder


def test_train_sample_eval_info_export_end_to_end(corpus_file, tmp_path):
    out = tmp_path / "run"
    trained = invoke("train", "--corpus", corpus_file, "--out", out, "--max-steps", 20, *TINY)
    assert trained.exit_code == 0, trained.output
    assert "step 20: val loss" in trained.stderr and "stopped by" in trained.stderr
    sample = invoke("sample", out, "--prompt", "KING:", "--length", 50, "--seed", 7)
    assert sample.exit_code == 0 and sample.stdout.startswith("KING:") and len(sample.stdout) == 5 + 50 + 1
    three = invoke("sample", out, "--prompt", "KING:", "--length", 20, "--num-samples", 3)
    parts = three.stdout.split("\n" + "-" * 40 + "\n")  # drawn side by side, printed one after another
    assert len(parts) == 3 and all(p.startswith("KING:") and len(p) == 5 + 20 + 1 for p in parts)
    assert re.search(r"seed \d+ \(pass --seed \d+ to repeat this text\)", three.stderr)
    for greedy in (["--temperature", 0], ["--top-k", 1]):  # no seed changes the text: none is offered
        first, second = (invoke("sample", out, "--prompt", "KING:", "--length", 20, *greedy) for _ in range(2))
        assert first.exit_code == 0 and first.stdout == second.stdout and "seed" not in first.stderr
    report = json.loads(invoke("eval", out, "--corpus", corpus_file, "--json").stdout)
    assert set(report) == {"loss", "bpc", "perplexity", "chars"} and report["chars"] == 19_999
    table = invoke("eval", out)
    assert table.exit_code == 0 and "(val)" in table.stdout and "nats/char" in table.stdout
    info = json.loads(invoke("info", out, "--json").stdout)
    assert info["step"] == 20 and info["resume"] == f"charlstm train --resume {out}"
    assert "best val loss" in invoke("info", out).stdout
    exported = invoke("export", out, tmp_path / "m.safetensors")
    assert exported.exit_code == 0 and "sample, eval and info accept it" in exported.stderr
    again = invoke("sample", tmp_path / "m.safetensors", "--prompt", "KING:", "--length", 50, "--seed", 7)
    assert again.stdout == sample.stdout
    more = invoke("train", "--resume", out, "--max-steps", 25)
    assert more.exit_code == 0 and "resumed at step 20" in " ".join(more.stderr.split())


@pytest.mark.parametrize("cell", ["gru", "peephole"])
def test_each_cell_trains_resumes_samples_evaluates_and_exports(corpus_file, tmp_path, cell):
    out = tmp_path / cell
    trained = invoke("train", "--corpus", corpus_file, "--out", out, "--max-steps", 6, "--cell", cell, *TINY)
    assert trained.exit_code == 0, trained.output
    assert json.loads(invoke("info", out, "--json").stdout)["config"]["model"]["cell"] == cell
    sample = invoke("sample", out, "--prompt", "KING:", "--length", 30, "--seed", 3)
    assert sample.exit_code == 0 and len(sample.stdout) == 5 + 30 + 1
    assert invoke("export", out, tmp_path / "m.safetensors").exit_code == 0
    assert invoke("sample", tmp_path / "m.safetensors", "--prompt", "KING:", "--length", 30, "--seed", 3).stdout == (
        sample.stdout
    )
    assert json.loads(invoke("eval", out, "--corpus", corpus_file, "--json").stdout)["loss"] < 5
    more = invoke("train", "--resume", out, "--max-steps", 8)
    assert more.exit_code == 0 and "resumed at step 6" in " ".join(more.stderr.split())
    assert "--cell 'lstm'" in invoke("train", "--resume", out, "--max-steps", 9, "--cell", "lstm").stderr


@pytest.mark.parametrize(
    "args, needles",
    [
        (["train", "--cell", "rnn"], ["--cell 'rnn'", "lstm, gru, peephole"]),
        (["train", "--corpus", "no/such/file.txt"], ["does not exist", "tinyshakespeare"]),
        (["train", "--layers", "abc"], ["--layers"]),
        (["train", "--dropout", "1.5"], ["--dropout 1.5", "[0, 1)"]),
        (["train", "--lr", "-1"], ["--lr -1"]),
        (["train", "--schedule", "linear"], ["--schedule 'linear'", "cosine"]),
        (["train", "--device", "tpu"], ["--device 'tpu'"]),
        (["train", "--hidden", "0"], ["--hidden 0"]),
        (["train", "--grad-clip", "-1"], ["--grad-clip -1"]),
        (["train", "--bogus-option"], ["--bogus-option"]),
        (["sample", "nowhere.pt"], ["does not exist"]),
        (["eval", "nowhere.pt"], ["does not exist"]),
        (["eval", "nowhere.pt", "--split", "test"], ["--split 'test'", "all, train, val"]),
        (["eval", "nowhere.pt", "--seq-len", "0"], ["--seq-len 0"]),
        (["info", "nowhere.pt"], ["does not exist"]),
        (["export", "nowhere.pt", "x.safetensors"], ["does not exist"]),
        (["train", "--resume", "nothing-here"], ["does not exist"]),
    ],
)
def test_user_errors_are_one_line_exit_2(args, needles):
    assert_user_error(invoke(*args), *needles)


bad_values = st.one_of(
    st.tuples(st.just("--temperature"), st.floats(max_value=-1e-9) | st.just(math.nan)),
    st.tuples(st.just("--top-k"), st.integers(max_value=-1)),
    st.tuples(st.just("--top-p"), st.floats(max_value=0.0) | st.floats(min_value=1.0001, allow_infinity=False)),
    st.tuples(st.just("--length"), st.integers(max_value=-1)),
    st.tuples(st.just("--num-samples"), st.integers(max_value=0) | st.integers(min_value=100_001)),
    st.tuples(st.just("--precision"), st.sampled_from(["fp16", "int8"])),
)


@settings(max_examples=40, deadline=None)
@given(bad_values)
def test_any_invalid_sampling_value_is_refused(option_value):
    option, value = option_value
    result = runner.invoke(app, ["sample", "whatever.pt", option, str(value)])
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith(f"error: {option} ") and "Traceback" not in result.output


def test_corpus_errors(tmp_path):
    (tmp_path / "nothing").mkdir()
    assert_user_error(invoke("train", "--corpus", tmp_path / "nothing"), "holds no files")
    binary = tmp_path / "image.png"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00")
    assert_user_error(invoke("train", "--corpus", binary))
    short = tmp_path / "short.txt"
    short.write_text("to be or not to be\n" * 10)
    assert_user_error(invoke("train", "--corpus", short, "--out", tmp_path / "r"), "too short", "--seq-len")
    latin = tmp_path / "latin.txt"
    latin.write_bytes(("Café, garçon! Où est le thé?\n" * 400).encode("latin-1"))
    assert_user_error(invoke("train", "--corpus", latin, "--out", tmp_path / "r"), "not valid utf-8", "--encoding")
    long = tmp_path / "long.txt"
    long.write_text("to be or not to be\n" * 2000)
    tiny_val = invoke("train", "--corpus", long, "--val-fraction", "0.00001", "--out", tmp_path / "v")
    assert_user_error(tiny_val, "validation split", "--val-fraction")
    if not torch.cuda.is_available():
        no_gpu = invoke("train", "--corpus", long, "--device", "cuda", "--out", tmp_path / "c")
        assert_user_error(no_gpu, "--device cuda", "no CUDA GPU")


def test_other_encodings_train_and_sample(tmp_path):
    latin = tmp_path / "latin.txt"
    latin.write_bytes(("Café, garçon! Où est le thé?\n" * 400).encode("latin-1"))
    ok = invoke("train", "--corpus", latin, "--encoding", "latin-1", "--out", tmp_path / "r", "--max-steps", 4, *TINY)
    assert ok.exit_code == 0, ok.output
    text = invoke("sample", tmp_path / "r", "--prompt", "Café", "--length", 30, "--seed", 1)
    assert text.exit_code == 0 and text.stdout.startswith("Café")


def test_sampling_errors_and_unknown_prompt_characters(shared_run):
    assert_user_error(invoke("sample", shared_run, "--prompt", "KING ☃"), "'☃'", "--unknown skip")
    skipped = invoke("sample", shared_run, "--prompt", "KING☃", "--unknown", "skip", "--length", 5, "--seed", 1)
    assert skipped.exit_code == 0 and skipped.stdout.startswith("KING") and "dropped" in skipped.stderr
    assert "☃" in skipped.stderr


def test_existing_run_and_checkpoint_errors(shared_run, tmp_path):
    corpus = json.loads(invoke("info", shared_run, "--json").stdout)["config"]["train"]["corpus"]
    assert_user_error(invoke("train", "--corpus", corpus, "--out", shared_run, *TINY), "--resume", "--overwrite")
    broken = tmp_path / "broken.pt"
    broken.write_bytes((shared_run / "best.pt").read_bytes()[:1000])
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(os.urandom(2048))
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(2)}, foreign)
    future = tmp_path / "future.pt"
    torch.save({**torch.load(shared_run / "best.pt", weights_only=True), "format_version": 99}, future)
    for command in ("sample", "eval", "info"):
        assert_user_error(invoke(command, broken), "not a readable charlstm checkpoint")
        assert_user_error(invoke(command, garbage), "not a readable charlstm checkpoint")
        assert_user_error(invoke(command, foreign), "not a charlstm checkpoint")
        assert_user_error(invoke(command, future), "format version 99")
    assert_user_error(invoke("train", "--resume", shared_run / "best.pt"), "cannot be resumed")
    assert_user_error(invoke("export", shared_run, tmp_path / "model.bin"), ".safetensors")
    other = tmp_path / "other.txt"
    other.write_text("Ωmega text never seen\n" * 50, encoding="utf-8")
    assert_user_error(invoke("eval", shared_run, "--corpus", other), "never saw")


def test_malicious_checkpoint_never_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run_dir = tmp_path / "evil_run"
    run_dir.mkdir()
    evil = {"format_version": 1, "model_config": {}, "vocab": "ab", "model": RunsCodeWhenUnpickled()}
    for name in ("last.pt", "best.pt"):
        torch.save(evil, run_dir / name)
    for args in (["sample", run_dir], ["eval", run_dir], ["info", run_dir], ["train", "--resume", run_dir]):
        assert_user_error(invoke(*args), "refused")
        assert not (tmp_path / "PWNED").exists()


def test_unwritable_output_and_unreadable_corpus(corpus_file, tmp_path, monkeypatch):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    result = invoke("train", "--corpus", corpus_file, "--out", blocker / "run", *TINY)
    assert_user_error(result, "cannot write to run directory")
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if str(p) == str(corpus_file) else real_access(p, mode))
    assert_user_error(invoke("train", "--corpus", corpus_file), "cannot be read")


def test_disk_full_during_checkpoint_keeps_the_previous_one(run_copy, monkeypatch):
    before = (run_copy / "last.pt").read_bytes()
    monkeypatch.setattr(torch, "save", full_disk)
    result = invoke("train", "--resume", run_copy, "--max-steps", 60)
    assert result.exit_code == 2 and "Traceback" not in result.stderr  # progress lines come first
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith("error: could not write") and "No space left on device" in last_line
    assert (run_copy / "last.pt").read_bytes() == before
    assert not [p for p in run_copy.iterdir() if p.name.endswith(".tmp")]


def test_nan_loss_shows_the_summary_then_one_error_line(run_copy, monkeypatch):
    real_step = training.train_step
    monkeypatch.setattr(training, "train_step", poisoned_step(real_step))
    result = invoke("train", "--resume", run_copy, "--max-steps", 60)
    assert result.exit_code == 2 and "Traceback" not in result.stderr and "stopped by" in result.stderr
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith("error: the training loss became NaN or infinite by step 44") and "--lr" in last_line


def test_internal_errors_exit_1_and_debug_shows_traceback(shared_run, monkeypatch):
    def broken(*a, **k):
        raise ZeroDivisionError("boom")

    monkeypatch.setattr(api, "sample", broken)
    result = invoke("sample", shared_run, "--length", 5)
    assert result.exit_code == 1 and "internal error" in result.stderr and "Traceback" not in result.stderr
    debug = invoke("--debug", "sample", shared_run, "--length", 5)
    assert debug.exit_code == 1 and "Traceback" in debug.stderr and "ZeroDivisionError" in debug.stderr


def test_offline_download_is_one_line(tmp_path, monkeypatch):
    from charlstm.data import sources

    monkeypatch.chdir(tmp_path)
    entry = sources.KNOWN_CORPORA["tinyshakespeare"]
    monkeypatch.setitem(
        sources.KNOWN_CORPORA,
        "tinyshakespeare",
        sources.KnownCorpus("http://127.0.0.1:9/input.txt", entry.sha256, entry.filename),
    )
    assert_user_error(invoke("train"), "could not download", "corpora/tinyshakespeare.txt", "--corpus PATH")
    assert not (tmp_path / "corpora" / "tinyshakespeare.txt").exists()


def test_any_script_emoji_and_crlf_train_and_sample(tmp_path):
    corpus = tmp_path / "poly.txt"
    lines = ["Καλημέρα κόσμε 🌍\r\n", "こんにちは世界 🎭\r\n", "Привет, мир! ✨\r\n", "مرحبا بالعالم 🌙\r\n"]
    corpus.write_bytes(("".join(lines) * 300).encode("utf-8"))
    trained = invoke("train", "--corpus", corpus, "--out", tmp_path / "r", "--max-steps", 10, *TINY)
    assert trained.exit_code == 0, trained.output
    vocab = json.loads(invoke("info", tmp_path / "r", "--json").stdout)["vocab"]
    assert "\r" in vocab and "🎭" in vocab and "こ" in vocab
    result = invoke("sample", tmp_path / "r", "--prompt", "こんにちは", "--length", 60, "--seed", 2)
    assert result.exit_code == 0 and result.stdout.startswith("こんにちは")
    assert set(result.stdout) - {"\n"} <= set(vocab)


def run_cli(*args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "charlstm", *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kw,
    )


@pytest.mark.slow
def test_console_entry_point_and_module():
    proc = run_cli("--version")
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0 and out.startswith("charlstm ")


@pytest.mark.slow
@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_interrupt_saves_and_prints_the_resume_command(corpus_file, tmp_path, signum, code):
    out = tmp_path / "run"
    args = ["train", "--corpus", corpus_file, "--out", out, "--max-steps", 100000, *TINY]
    proc = run_cli(*args, env={**os.environ, "COLUMNS": "200"})
    deadline = time.time() + 60
    while not (out / "best.pt").exists() and time.time() < deadline:
        time.sleep(0.1)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    assert f"charlstm train --resume {out}" in err
    info = subprocess.run([sys.executable, "-m", "charlstm", "info", out / "last.pt", "--json"], capture_output=True)
    assert json.loads(info.stdout)["step"] >= 10


@pytest.mark.slow
def test_sigkill_at_random_moments_leaves_loadable_checkpoints(corpus_file, tmp_path):
    """Kill training with SIGKILL at several random moments; every time both files load and the
    run resumes from last.pt."""
    import random

    from charlstm.store.checkpoint import load_checkpoint

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
        last, best = load_checkpoint(out / "last.pt"), load_checkpoint(out / "best.pt")
        assert best.progress.step <= last.progress.step
        steps.append(last.progress.step)
    assert steps == sorted(steps) and steps[-1] > steps[0]


@pytest.mark.slow
def test_sample_into_a_closed_pipe_is_quiet(shared_run):
    proc = subprocess.Popen(
        [sys.executable, "-m", "charlstm", "sample", str(shared_run), "--length", "100000", "--seed", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    proc.stdout.read(10)
    proc.stdout.close()
    err = proc.stderr.read().decode()
    # typer's convention for a reader that went away (`... | head`): exit 1 without a word
    assert proc.wait(timeout=60) == 1 and err == ""


def test_a_folder_with_a_bad_file_and_rare_characters(tmp_path):
    from conftest import play_text

    folder = tmp_path / "texts"
    folder.mkdir()
    (folder / "a.txt").write_text(play_text(12_000, seed=1), encoding="utf-8")
    (folder / "b.txt").write_text(play_text(12_000, seed=2) + "été ☃ 日本\n", encoding="utf-8")
    (folder / "c.bin").write_bytes(b"\x00\x01\x02binary")
    assert_user_error(invoke("train", "--corpus", folder, "--out", tmp_path / "r"), "c.bin", "--skip-bad-files")
    options = ["--corpus", folder, "--skip-bad-files", "--max-vocab", "25", "--max-steps", 4, *TINY]
    trained = invoke("train", *options, "--out", tmp_path / "r")
    assert trained.exit_code == 0, trained.output
    err = " ".join(trained.stderr.split())
    assert "left out 1 files that are not text" in err and "c.bin" in err and " byte tokens for the rest" in err
    info = json.loads(invoke("info", tmp_path / "r", "--json").stdout)
    assert info["own_tokens"] == 25 and info["byte_fallback"] and 0.5 < info["own_coverage"] < 1
    byte_tokens = len(CharVocab(info["vocab"], byte_fallback=True).byte_values)
    assert info["corpus"]["files"] == 2 and info["vocab_size"] == 25 + byte_tokens and byte_tokens > 128
    sample = invoke("sample", tmp_path / "r", "--prompt", "Ωmega ☃", "--length", 40, "--seed", 1)
    assert sample.exit_code == 0 and sample.stdout.startswith("Ωmega ☃")
    part = json.loads(invoke("eval", tmp_path / "r", "--corpus", folder / "a.txt", "--max-chars", 500, "--json").stdout)
    assert 400 <= part["chars"] <= 500


def test_eval_of_unseen_characters_can_skip_them(shared_run, tmp_path):
    other = tmp_path / "other.txt"
    other.write_text("KING: the lord ☃\n" * 40, encoding="utf-8")
    assert_user_error(invoke("eval", shared_run, "--corpus", other), "'☃'", "--unknown skip")
    skipped = invoke("eval", shared_run, "--corpus", other, "--unknown", "skip", "--json")
    assert skipped.exit_code == 0 and "left out 40 characters" in skipped.stderr
    assert json.loads(skipped.stdout)["chars"] == 40 * 16 - 1


def test_explain_passes_its_options_and_renders_what_it_found(monkeypatch, tmp_path):
    from charlstm.config import ExplainConfig
    from charlstm.insight.explain import ExplainReport, Found

    seen = {}

    def fake_explain(checkpoint, config):
        seen.update(checkpoint=checkpoint, config=config)
        found = [Found("line of capitals", 309, 0.9), Found("after a newline", 98, -0.69)]
        return ExplainReport(tmp_path / "p.html", 500, "hidden", found, ["inside quotes"], [309, 98], 1234, 0.5)

    monkeypatch.setattr(api, "explain", fake_explain)
    args = ("explain", "ck.pt", "--text", "t.txt", "--out", "p.html", "--chars", 500, "--cell-ids", "309,98")
    result = invoke(*args, "--value", "hidden")
    assert result.exit_code == 0, result.output
    assert seen == {"checkpoint": "ck.pt", "config": ExplainConfig("t.txt", "p.html", 500, None, (309, 98), "hidden")}
    assert re.search(r"line of capitals\s+.\s+309\s+.\s+\+0\.90", result.stdout)
    assert re.search(r"inside quotes\s+.\s+not in this text", result.stdout)
    said = " ".join(result.stderr.split())  # the line wraps where the temporary path's length puts it
    assert "wrote" in said and "1,234 bytes" in said
    defaults = invoke("explain", "ck.pt", "--text", "t.txt", "--out", "p.html")
    assert defaults.exit_code == 0 and seen["config"] == ExplainConfig("t.txt", "p.html")


def test_explain_help_lists_every_option_with_its_default():
    page = runner.invoke(app, ["explain", "--help"], env={"COLUMNS": "200"}).stdout
    for option, default in [
        ("--text", "required"),
        ("--out", "required"),
        ("--chars", "default: 10000"),
        ("--cells", "default: 6"),
        ("--cell-ids", "default: found automatically"),
        ("--value", "default: cell; hidden for a GRU"),
        ("--encoding", "default: utf-8"),
    ]:
        assert re.search(rf"{option} .*\[{re.escape(default)}\]", page), option


def test_explain_end_to_end(shared_run, tmp_path):
    from conftest import play_text

    text = tmp_path / "text.txt"
    text.write_text(play_text(2000, seed=2), encoding="utf-8")
    result = invoke("explain", shared_run, "--text", text, "--out", tmp_path / "page.html", "--cells", 3)
    assert result.exit_code == 0, result.output
    assert "after a newline" in result.stdout and "not in this text" in result.stdout
    assert (tmp_path / "page.html").stat().st_size > 2000 * 3 * 20


def test_explain_mistakes_are_one_line(shared_run, tmp_path):
    text, out = tmp_path / "text.txt", tmp_path / "page.html"
    text.write_text("KING: my lord ☃\n", encoding="utf-8")
    assert_user_error(invoke("explain", shared_run, "--text", text, "--out", out), "never saw: '☃'", str(text))
    common = ("explain", shared_run, "--out", out, "--text")
    assert_user_error(invoke(*common, tmp_path / "none.txt"), "does not exist", "none.txt")
    assert_user_error(invoke(*common, tmp_path), "is a folder")
    text.write_text("KING: my lord\n", encoding="utf-8")
    assert_user_error(invoke(*common, text, "--cells", 2, "--cell-ids", "1,2"), "--cells and --cell-ids")
    assert_user_error(invoke(*common, text, "--cell-ids", "1,x"), "--cell-ids '1,x'", "3,17,200")
    assert_user_error(invoke(*common, text, "--cell-ids", "1,9999"), "--cell-ids 9999", "from 0 to 31")
    assert_user_error(invoke(*common, text, "--value", "gate"), "--value 'gate'", "cell, hidden")
    assert_user_error(invoke(*common, text, "--chars", 0), "--chars 0")
    (tmp_path / "blocker").write_text("a file, not a folder")
    blocked = invoke("explain", shared_run, "--text", text, "--out", tmp_path / "blocker" / "p.html")
    assert_user_error(blocked, "cannot write to", "expected a writable folder")
    assert_user_error(invoke("explain", shared_run, "--text", text, "--out", tmp_path), "is a folder, expected")
    assert_user_error(invoke("explain", tmp_path / "nothing", "--text", text, "--out", out), "does not exist")
    assert_user_error(invoke("explain", shared_run, "--text", text), "--out")
    assert not out.exists()


def test_config_file_options_and_the_command_line_wins(monkeypatch, tmp_path):
    seen = {}

    def fake_train(**kwargs):
        seen.update(kwargs)
        return fake_result(tmp_path, "max_time")

    monkeypatch.setattr(api, "train", fake_train)
    settings = tmp_path / "my settings.toml"
    settings.write_text('max-time = 60\nhidden = 32\nlr = 0.01\noverwrite = true\ncell = "gru"\ncorpus = "a.txt"\n')
    result = invoke("train", "--config", settings, "--hidden", "64", "--no-overwrite")
    assert result.exit_code == 0, result.output
    options = {k: v for k, v in seen.items() if k not in ("on_event", "on_reading", "keep_freed_memory")}
    assert options == {"max_time": 60.0, "hidden": 64, "lr": 0.01, "overwrite": False, "cell": "gru", "corpus": "a.txt"}
    seen.clear()
    invoke("train", "--max-steps", 3, "--config", settings)  # wherever --config stands
    assert seen["overwrite"] is True and seen["max_steps"] == 3 and seen["hidden"] == 32


@pytest.mark.parametrize(
    "text, needles",
    [
        ("max-time = 60\nhiden = 32\n", ["unknown option 'hiden'", "did you mean 'hidden'?"]),
        ('hidden = "big"\n', ['hidden = "big" is not valid', "a whole number", "--hidden"]),
        ("max-time = [1]\n", ["max-time = [1]", "a number"]),
        ("hidden = = 3\n", ["not valid TOML"]),
    ],
)
def test_a_bad_config_file_is_one_line_exit_2(tmp_path, text, needles):
    settings = tmp_path / "run.toml"
    settings.write_text(text)
    assert_user_error(invoke("train", "--config", settings), "run.toml", *needles)


def test_a_run_repeats_from_its_config_toml(corpus_file, tmp_path):
    first, again = tmp_path / "first", tmp_path / "again"
    trained = invoke("train", "--corpus", corpus_file, "--out", first, "--max-steps", 12, *TINY, "--dropout", "0.2")
    assert trained.exit_code == 0, trained.output
    repeated = invoke("train", "--config", first / "config.toml", "--out", again)
    assert repeated.exit_code == 0, repeated.output
    settings = {run: (run / "config.toml").read_text().split("\n", 3)[3] for run in (first, again)}
    assert settings[first].replace(str(first), str(again)) == settings[again]  # only the run directory differs
    weights = [torch.load(run / "last.pt", weights_only=True)["model"] for run in (first, again)]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert_user_error(invoke("train", "--config", first / "config.toml"), "already holds a run", "--out DIR")


def test_runs_and_plot_as_a_new_user_tries_them(corpus_file, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name, hidden in (("small", 8), ("large", 24)):
        options = [
            "--corpus",
            corpus_file,
            "--out",
            f"checkpoints/{name}",
            "--max-steps",
            20,
            *TINY,
            "--hidden",
            hidden,
        ]
        assert invoke("train", *options).exit_code == 0
    table = runner.invoke(app, ["runs"], env={"COLUMNS": "100"})
    assert table.exit_code == 0, table.output
    rows = {line.split()[0]: line for line in table.stdout.splitlines() if line.startswith(("small", "large"))}
    assert set(rows) == {"small", "large"} and "lstm 2x8" in rows["small"] and "finished" in rows["large"]
    listed = json.loads(invoke("runs", "checkpoints", "--sort", "time", "--json").stdout)
    assert [r["name"] for r in listed] == ["large", "small"]  # the latest change first
    assert {r["state"] for r in listed} == {"finished"} and all(r["steps"] == 20 for r in listed)
    by_loss = json.loads(invoke("runs", "--json").stdout)
    assert [r["best_val_loss"] for r in by_loss] == sorted(r["best_val_loss"] for r in listed)
    chart = runner.invoke(app, ["plot", "checkpoints/small", "checkpoints/large"], env={"COLUMNS": "100"})
    assert chart.exit_code == 0 and "small: best val" in chart.stdout and "large: best val" in chart.stdout
    assert "\x1b" not in chart.stdout  # not a terminal: no colour codes
    for out in ("chart.png", "chart.svg"):
        wrote = invoke("plot", "checkpoints/small", "checkpoints/large", "--out", out, "--x", "epoch")
        assert wrote.exit_code == 0 and f"wrote {out}" in wrote.stderr
    assert (tmp_path / "chart.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and "small val" in Path(
        "chart.svg"
    ).read_text()


def test_plot_and_runs_errors_are_one_line_exit_2(shared_run, tmp_path, monkeypatch):
    (tmp_path / "empty").mkdir()
    assert_user_error(invoke("plot", tmp_path / "empty"), "holds no metrics.jsonl", "charlstm train")
    assert_user_error(invoke("plot", shared_run, "--x", "chars"), "--x 'chars'", "step, time, epoch")
    assert_user_error(invoke("plot", shared_run, "--out", tmp_path / "c.gif"), ".png, .svg, .pdf")
    assert_user_error(invoke("plot"), "RUN_DIR")
    assert_user_error(invoke("runs", tmp_path / "nowhere"), "does not exist")
    assert_user_error(invoke("runs", tmp_path, "--sort", "loss"), "--sort 'loss'", "best, time")
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if the plot extra were not installed
    assert_user_error(invoke("plot", shared_run, "--out", tmp_path / "c.png"), "pip install 'charlstm[plot]'")
    monkeypatch.setitem(sys.modules, "plotext", None)
    assert_user_error(invoke("plot", shared_run), "needs plotext", "pip install 'charlstm[plot]'")
    empty = invoke("runs", tmp_path / "empty")
    assert empty.exit_code == 0 and "no run directories in" in empty.stderr


def poisoned_step(real_step):
    """A training step whose loss comes out NaN."""

    def step(learner, x, y, state, lr, *frozen):
        loss, state = real_step(learner, x, y, state, lr, *frozen)
        return loss * float("nan"), state

    return step


def test_sampling_controls_that_cannot_apply_are_one_line_and_exit_2(shared_run):
    assert_user_error(invoke("sample", shared_run, "--ban", "\u20ac"), "--ban", "not a character of this model")
    assert_user_error(invoke("sample", shared_run, "--bias", "e=200"), "--bias", "from -100 to 100")
    assert_user_error(invoke("sample", shared_run, "--logit-bias", "9999=1"), "--logit-bias 9999", "ids go from 0")
    assert_user_error(invoke("sample", shared_run, "--presence-penalty", "3"), "--presence-penalty", "-2 to 2")
    assert_user_error(invoke("sample", shared_run, "--repetition-penalty", "0"), "--repetition-penalty", "> 0")


def test_banning_every_token_names_what_was_given(shared_run):
    from charlstm.api import load

    every = "".join(load(shared_run / "best.pt").vocab.chars)
    result = invoke("sample", shared_run, "--ban", every)
    assert_user_error(result, "--ban leave no token to write")
    assert "--logit-bias" not in result.stderr
