"""Listing run directories: what each summary says, how a run's state is told, the orders."""

import json
import os
import shutil
import time

import pytest

from charlstm.errors import UserError
from charlstm.insight.runs import RECENT, list_runs
from charlstm.store import metrics
from charlstm.store.checkpoint import load_checkpoint


def log_run(folder, losses, end=None, changed=None):
    """A run directory with a log only: a training line, evaluations of the given losses, then ``end``."""
    folder.mkdir(parents=True)
    metrics.append(folder, {"type": "train", "step": 5, "loss": 3.0, "lr": 0.01, "elapsed": 1.0})
    for i, loss in enumerate(losses, 1):
        metrics.append(folder, {"type": "eval", "step": 10 * i, "val_loss": loss, "elapsed": 2.0 * i})
    if end is not None:
        metrics.append(folder, end)
    if changed is not None:
        os.utime(folder / "metrics.jsonl", (changed, changed))
    return folder


def test_a_finished_run_is_summed_up_from_its_log_and_checkpoint(run_copy):
    records = metrics.read(run_copy)
    [run] = list_runs(run_copy.parent)
    saved = load_checkpoint(run_copy / "last.pt")
    evals = [r["val_loss"] for r in records if r["type"] == "eval"]
    assert (run.name, run.corpus, run.cell, run.layers, run.hidden) == ("run", saved.train_config.corpus, "lstm", 2, 16)
    assert run.params == sum(t.numel() for t in saved.model.values()) and run.steps == 40
    assert run.elapsed == records[-1]["elapsed"] and run.best_val_loss == min(evals) and run.last_val_loss == evals[-1]
    assert (run.state, run.stopped_by, run.detail) == ("finished", "max_steps", None)
    assert run.last_change == pytest.approx((run_copy / "metrics.jsonl").stat().st_mtime)
    assert json.loads(json.dumps(run.to_dict()))["last_change"][:4] == time.strftime("%Y")


def test_states_come_from_the_end_record_or_from_how_recently_the_run_changed(tmp_path):
    now = time.time()
    stopped = metrics.end_record(20, 4.0, "signal", 15)
    failed = metrics.end_record(20, 4.0, "error", error="RuntimeError: boom")
    log_run(tmp_path / "stopped", [2.0, 1.9], stopped, changed=now - 7200)
    log_run(tmp_path / "failed", [2.0, 1.8], failed, changed=now - 7200)
    log_run(tmp_path / "running", [2.0, 1.7], changed=now - RECENT / 2)
    log_run(tmp_path / "killed", [2.0, 1.6], changed=now - 2 * RECENT)
    states = {r.name: (r.state, r.stopped_by, r.detail) for r in list_runs(tmp_path, now=now)}
    assert states == {
        "stopped": ("signal", "signal", "SIGTERM"),
        "failed": ("error", "error", "RuntimeError: boom"),
        "running": ("running", None, None),
        "killed": ("unknown", None, None),
    }


def test_runs_sort_by_best_loss_or_by_latest_change_and_are_found_at_any_depth(tmp_path):
    now = time.time()
    log_run(tmp_path / "a", [2.0, 1.5], changed=now - 300)
    log_run(tmp_path / "group" / "b", [1.2, 1.4], changed=now - 100)
    log_run(tmp_path / "c", [], changed=now - 200)  # never evaluated: last by loss
    assert [r.name for r in list_runs(tmp_path, "best", now)] == ["group/b", "a", "c"]
    assert [r.name for r in list_runs(tmp_path, "time", now)] == ["group/b", "c", "a"]
    [b] = [r for r in list_runs(tmp_path, now=now) if r.name == "group/b"]
    assert (b.best_val_loss, b.last_val_loss, b.steps, b.elapsed, b.params, b.corpus) == (1.2, 1.4, 20, 4.0, None, None)
    assert [r.name for r in list_runs(tmp_path / "a", now=now)] == ["a"]  # a run directory itself


def test_an_unreadable_checkpoint_still_lists_the_run(run_copy):
    (run_copy / "last.pt").write_bytes(b"torn")
    shutil.copy(run_copy / "last.pt", run_copy / "best.pt")
    [run] = list_runs(run_copy.parent)
    assert run.state == "finished" and run.steps == 40 and run.params is None and run.cell is None


def test_a_missing_folder_or_an_unknown_order_is_one_error(tmp_path):
    with pytest.raises(UserError, match="does not exist, expected a folder of run directories"):
        list_runs(tmp_path / "nowhere")
    with pytest.raises(UserError, match="--sort 'loss' is not valid, expected one of best, time"):
        list_runs(tmp_path, "loss")
    assert list_runs(tmp_path) == []
