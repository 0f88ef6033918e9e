"""Averaged weights (--average): the average itself, what a run evaluates and keeps, and resume."""

from __future__ import annotations

import json
import signal
from dataclasses import replace

import pytest
import torch

from charlstm.cli import render
from charlstm.config import ModelConfig, TrainConfig
from charlstm.errors import UserError
from charlstm.net.model import CharLSTM
from charlstm.store.checkpoint import load_checkpoint
from charlstm.training import loop, words
from charlstm.training.average import Averager, decay
from charlstm.training.evaluate import evaluate
from charlstm.training.events import Evaluated, Progress
from charlstm.training.loop import StopFlag, train
from charlstm.training.run import new_run, resume_run


def test_the_average_is_the_plain_mean_until_its_horizon_then_exponential():
    # a run of 1,000 steps, averaged over 10% of it: the mean of every step up to step 100, then 0.99
    assert [decay(t, t / 1000, 0.1) for t in (1, 2, 50)] == [0.0, 0.5, 1 - 1 / 50]
    assert decay(100, 0.1, 0.1) == pytest.approx(0.99) and decay(900, 0.9, 0.1) == pytest.approx(0.99)
    assert decay(10, 0.5, 0.1) == 0.5  # 20 steps in all: a horizon of 2


def test_the_averager_moves_its_fp32_copy_towards_the_model():
    torch.manual_seed(0)
    model = CharLSTM(ModelConfig(vocab_size=11, embedding=4, hidden=8))
    averager = Averager(model)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    averager.update(model, 0.75)
    for key, value in averager.state_dict().items():
        torch.testing.assert_close(value, start[key] + 0.25)
    assert not averager.model.training and all(not p.requires_grad for p in averager.model.parameters())
    again = Averager(model, averager.state_dict())
    assert all(torch.equal(v, averager.state_dict()[k]) for k, v in again.state_dict().items())


def test_average_is_a_share_of_the_run():
    with pytest.raises(UserError, match=r"--average 1.5 is not valid, expected a share of the run in \[0, 1\]"):
        TrainConfig(average=1.5)


def _averaged(tiny_train: TrainConfig, out, **changes) -> TrainConfig:
    return replace(tiny_train, out=str(out), average=0.2, max_steps=40, eval_every=10, save_every=10, **changes)


def test_a_run_evaluates_the_averaged_weights_from_half_its_budget_and_keeps_the_better(tiny_train, tmp_path):
    events = []
    model_cfg = ModelConfig(embedding=8, hidden=16, layers=2, dropout=0.2)
    result = train(new_run(_averaged(tiny_train, tmp_path / "run"), model_cfg), events.append)
    evals = [e for e in events if isinstance(e, Evaluated)]
    assert [(e.step, e.averaged_loss is None) for e in evals] == [(10, True), (20, False), (30, False), (40, False)]
    assert loop.AVERAGED_FROM == 0.5
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    logged = [r.get("averaged_val_loss") for r in records if r["type"] == "eval"]
    assert logged == [None] + [e.averaged_loss for e in evals[1:]]
    every = [e.val_loss for e in evals] + [e.averaged_loss for e in evals[1:]]
    assert result.best_val_loss == min(every)
    best, last = load_checkpoint(tmp_path / "run" / "best.pt"), load_checkpoint(tmp_path / "run" / "last.pt")
    assert last.averaged is not None and best.progress.best_val_loss == min(every)
    averaged_won = best.progress.best_averaged
    assert averaged_won == (min(every) in [e.averaged_loss for e in evals[1:]])
    winner = best.averaged if averaged_won else None
    if winner is not None:  # best.pt's model is the average it had then
        assert all(torch.equal(best.model[k], winner[k]) for k in winner)
    # whichever won, best.pt evaluates to the loss it records
    tcfg = last.train_config
    val = new_run(replace(tcfg, out=str(tmp_path / "check")), model_cfg).data.val_tokens
    loss = evaluate(best.build_model(), val, tcfg.seq_len, max_chars=tcfg.eval_chars, char_starts=None).loss
    assert loss == pytest.approx(best.progress.best_val_loss, abs=1e-5)


def test_best_pt_holds_the_averaged_weights_when_they_evaluate_better(tiny_train, tmp_path, monkeypatch):
    real = loop._evaluate

    def averaged_better(run, model, stop):  # the averaged copy is the model that is not the learner's
        result = real(run, model, stop)
        return replace(result, loss=result.loss - 1.0) if model is not run.learner.model else result

    monkeypatch.setattr(loop, "_evaluate", averaged_better)
    events = []
    train(new_run(_averaged(tiny_train, tmp_path / "run"), ModelConfig(embedding=8, hidden=16)), events.append)
    best, last = load_checkpoint(tmp_path / "run" / "best.pt"), load_checkpoint(tmp_path / "run" / "last.pt")
    assert best.progress.best_averaged and best.progress.step == 40
    assert all(torch.equal(best.model[k], last.averaged[k]) for k in last.averaged)
    assert not all(torch.equal(last.model[k], last.averaged[k]) for k in last.averaged)  # last.pt trains on
    shown = [e for e in events if isinstance(e, Evaluated)][-1]
    assert shown.best_averaged and shown.is_best
    line = f"step 40: val loss {shown.val_loss:.4f}, averaged {shown.averaged_loss:.4f} (best), "
    assert words.evaluated(shown).startswith(line)  # the best is the averaged weights', and said so
    report = best.describe()
    assert report["best_averaged"] is True and report["averaged_val_loss"] == shown.averaged_loss
    rows = {row: cells for row, cells in _rows(render.info_table(report))}
    assert rows["best_averaged"] == "True" and rows["averaged_val_loss"].startswith(f"{shown.averaged_loss:.4f}")
    plain = load_checkpoint(tmp_path / "run" / "best.pt").describe() | {"averaged_val_loss": None}
    assert "best_averaged" not in dict(_rows(render.info_table(plain)))  # a run without the average shows neither


def _rows(table) -> list[tuple[str, str]]:
    keys, values = (list(column.cells) for column in table.columns)
    return list(zip(keys, values, strict=True))


@pytest.mark.parametrize("cell", ["lstm", "gru", "peephole"])
def test_an_averaged_run_resumes_bitwise(tiny_train, tmp_path, cell):
    model_cfg = ModelConfig(embedding=8, hidden=16, layers=2, cell=cell, dropout=0.3, weight_drop=0.3)
    base = _averaged(tiny_train, tmp_path / "straight", log_every=1)
    train(new_run(base, model_cfg))
    flag = StopFlag()

    def interrupt_at_25(event):
        if isinstance(event, Progress) and event.step == 25:
            flag.signum = signal.SIGINT

    halves = replace(base, out=str(tmp_path / "halves"))
    assert train(new_run(halves, model_cfg), interrupt_at_25, flag).step == 25
    train(resume_run(tmp_path / "halves", {}))
    for name in ("last.pt", "best.pt"):
        whole, split = load_checkpoint(tmp_path / "straight" / name), load_checkpoint(tmp_path / "halves" / name)
        for part in ("model", "averaged"):
            assert all(torch.equal(getattr(whole, part)[k], getattr(split, part)[k]) for k in whole.model), (name, part)
        assert whole.progress.best_val_loss == split.progress.best_val_loss
