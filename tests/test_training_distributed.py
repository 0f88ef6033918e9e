"""Several processes on the CPU with gloo, started by torchrun as a user would: on one machine
(--standalone) and as two "machines" of one process each that meet on 127.0.0.1."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from charlstm.errors import UserError
from charlstm.store.checkpoint import load_checkpoint
from charlstm.training.distributed import SINGLE, Processes, launched, main_first, on_main

TINY = "--layers 2 --hidden 16 --embedding 8 --seq-len 16 --batch-size 4 --precision fp32 --sample-chars 20".split()
TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(*args, nproc: int = 2, check: bool = True, **kw) -> subprocess.CompletedProcess:
    command = [*TORCHRUN, "--standalone", f"--nproc-per-node={nproc}", "-m", "charlstm", *map(str, args)]
    env = {**os.environ, "PYTHONFAULTHANDLER": "1"}  # a worker that crashes shows every thread's stack
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env, **kw)
    if check:
        assert result.returncode == 0, result.stderr  # whole: a worker's own words come before torchrun's
    return result


def children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (from /proc: torchrun's workers)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone meanwhile
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return sorted(found)


def train_losses(run_dir: Path) -> list[float]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["loss"] for line in lines if '"train"' in line]


def test_one_process_needs_no_process_group(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert launched() == SINGLE and not SINGLE.many and SINGLE.main
    assert on_main(SINGLE, lambda: 7) == 7 and main_first(SINGLE, lambda: 8) == 8
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert launched() == Processes(rank=3, world=4, local_rank=1, local_world=2)


def test_each_process_owns_a_contiguous_share_of_the_streams():
    assert [Processes(rank=r, world=4).shard(64) for r in range(4)] == [
        slice(0, 16),
        slice(16, 32),
        slice(32, 48),
        slice(48, 64),
    ]
    with pytest.raises(UserError, match="--batch-size 6 cannot be split evenly between 4 processes"):
        Processes(rank=0, world=4).shard(6)


@pytest.mark.slow
@pytest.mark.distributed
def test_two_processes_train_as_one_step_by_step(corpus_file, tmp_path):
    """No dropout, fp32: the training loss of every step within 1e-4 of one process's."""
    common = ["train", "--corpus", corpus_file, *TINY, "--weight-drop", 0, "--max-steps", 20]
    common += ["--log-every", 1, "--eval-every", 10]
    subprocess.run([sys.executable, "-m", "charlstm", *map(str, common), "--out", tmp_path / "one"], check=True)
    two = torchrun(*common, "--out", tmp_path / "two")
    assert "2 processes train together" in two.stderr and two.stderr.count("step 10: val loss") == 1  # main only
    one_losses, two_losses = train_losses(tmp_path / "one"), train_losses(tmp_path / "two")
    assert len(one_losses) == len(two_losses) == 20
    assert max(abs(a - b) / b for a, b in zip(two_losses, one_losses, strict=True)) < 1e-4

    def evals(run: str) -> list[dict]:
        lines = (tmp_path / run / "metrics.jsonl").read_text().splitlines()
        return [m for m in map(json.loads, lines) if m["type"] == "eval"]

    assert [m["step"] for m in evals("two")] == [10, 20]  # each process scored a share of the pieces
    assert [m["eval_chars"] for m in evals("two")] == [m["eval_chars"] for m in evals("one")]
    for two_eval, one_eval in zip(evals("two"), evals("one"), strict=True):
        assert abs(two_eval["val_loss"] - one_eval["val_loss"]) < 1e-5
    saved = load_checkpoint(tmp_path / "two" / "last.pt")
    assert len(saved.rng["ranks"]) == 2 and saved.hidden[0].shape[1] == 4  # every stream's state


@pytest.mark.slow
@pytest.mark.distributed
def test_resume_with_the_same_processes_is_bitwise_and_with_others_says_so(corpus_file, tmp_path):
    common = ["train", "--corpus", corpus_file, *TINY, "--dropout", "0.3", "--weight-drop", "0.3"]
    common += ["--schedule", "constant", "--log-every", 1, "--eval-every", 5]
    torchrun(*common, "--out", tmp_path / "straight", "--max-steps", 16)
    torchrun(*common, "--out", tmp_path / "halves", "--max-steps", 8)
    shutil.copytree(tmp_path / "halves", tmp_path / "other")
    resumed = torchrun("train", "--resume", tmp_path / "halves", "--max-steps", 16)
    assert "resumed at step 8" in " ".join(resumed.stderr.split())
    assert train_losses(tmp_path / "halves") == train_losses(tmp_path / "straight")
    straight, halves = (
        load_checkpoint(tmp_path / "straight" / "last.pt"),
        load_checkpoint(tmp_path / "halves" / "last.pt"),
    )
    assert all(torch.equal(straight.model[k], halves.model[k]) for k in straight.model)
    alone = subprocess.run(
        [sys.executable, "-m", "charlstm", "train", "--resume", str(tmp_path / "other"), "--max-steps", "12"],
        capture_output=True,
        text=True,
        check=True,
    )
    said = " ".join(alone.stderr.split())
    assert "resumed with 1 processes from a run saved by 2: the same global data position" in said
    assert load_checkpoint(tmp_path / "other" / "last.pt").progress.step == 12


@pytest.mark.slow
@pytest.mark.distributed
def test_two_machines_meet_on_localhost(corpus_file, tmp_path):
    port, out = free_port(), tmp_path / "run"
    node = [*TORCHRUN, "--nnodes=2", "--nproc-per-node=1", "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}"]
    node += ["--rdzv-id=charlstm-test", "-m", "charlstm", "train", "--corpus", str(corpus_file), "--out", str(out)]
    node += [*TINY, "--max-steps", "10", "--eval-every", "10"]
    machines = [subprocess.Popen(node, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [m.communicate(timeout=300) for m in machines]
    assert [m.returncode for m in machines] == [0, 0], outputs[0][1][-2000:] + outputs[1][1][-2000:]
    assert sum("2 processes train together" in err for _, err in outputs) == 1  # only the main process prints
    assert load_checkpoint(out / "last.pt").progress.step == 10


@pytest.mark.slow
@pytest.mark.distributed
def test_an_uneven_split_is_one_error(corpus_file, tmp_path):
    result = torchrun("train", "--corpus", corpus_file, *TINY[:-6], "--batch-size", "3", "--out", tmp_path, check=False)
    assert result.returncode != 0
    said = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert said == ["error: --batch-size 3 cannot be split evenly between 2 processes, expected a multiple of 2"]


def long_job(corpus_file: Path, out: Path, *options: str, **popen) -> subprocess.Popen:
    """A 2-process run with no end in sight, once it has written best.pt and half a second more."""
    args = [*TORCHRUN, "--standalone", "--nproc-per-node=2", "-m", "charlstm", "train", "--corpus", str(corpus_file)]
    job = subprocess.Popen([*args, *TINY, "--out", str(out), "--max-steps", "1000000", *options], **popen)
    deadline = time.time() + 120
    while not (out / "best.pt").exists() and time.time() < deadline:
        time.sleep(0.1)
    time.sleep(0.5)  # in the middle of steps and writes
    return job


@pytest.mark.slow
@pytest.mark.distributed
def test_sigterm_to_torchrun_saves_last_pt(corpus_file, tmp_path):
    out = tmp_path / "run"
    pipes = dict(stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    job = long_job(corpus_file, out, "--eval-every", "20", "--save-every", "1000", **pipes)
    job.send_signal(signal.SIGTERM)
    _, err = job.communicate(timeout=120)
    assert f"charlstm train --resume {out}" in err, err  # the whole of torchrun's stderr when it fails
    last = load_checkpoint(out / "last.pt")
    assert last.progress.step > 20 and os.path.getsize(out / "last.pt") > 0  # saved after the last evaluation


@pytest.mark.slow
@pytest.mark.distributed
def test_a_worker_killed_ends_the_job_and_last_pt_still_loads(corpus_file, tmp_path):
    out = tmp_path / "run"
    quiet = dict(stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    job = long_job(corpus_file, out, "--eval-every", "10", "--save-every", "1", **quiet)
    os.kill(children(job.pid)[-1], signal.SIGKILL)
    assert job.wait(timeout=120) != 0  # torchrun ends the job
    assert load_checkpoint(out / "last.pt").progress.step >= 10 and load_checkpoint(out / "best.pt").progress.step
