"""Averaged weights (--average): the average itself, what a run evaluates and keeps, and resume."""

from __future__ import annotations

import json
import signal
from dataclasses import replace

import pytest
import torch
from typer.testing import CliRunner

import charlstm
from charlstm.cli import render
from charlstm.cli.app import app
from charlstm.config import ModelConfig, TrainConfig
from charlstm.errors import UserError
from charlstm.net.model import CharLSTM, first_stream
from charlstm.store.checkpoint import load_checkpoint
from charlstm.training import evaluate as evaluate_module
from charlstm.training import loop, words
from charlstm.training.average import Averager, decay
from charlstm.training.evaluate import evaluate
from charlstm.training.events import Evaluated, Progress
from charlstm.training.loop import StopFlag, train
from charlstm.training.resume import resume_run
from charlstm.training.run import new_run


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
    settings = {"out": str(out), "average": 0.2, "max_steps": 40, "eval_every": 10, "save_every": 10}
    return replace(tiny_train, **{**settings, **changes})


def test_a_run_evaluates_the_averaged_weights_from_a_share_of_its_budget_and_keeps_the_better(
    tiny_train, tmp_path, monkeypatch
):
    monkeypatch.setattr(loop, "AVERAGED_FROM", 0.6)  # of 40 steps: evaluations at 30 and 40, not at 10 and 20
    events = []
    model_cfg = ModelConfig(embedding=8, hidden=16, layers=2, dropout=0.2)
    result = train(new_run(_averaged(tiny_train, tmp_path / "run"), model_cfg), events.append)
    evals = [e for e in events if isinstance(e, Evaluated)]
    assert [(e.step, e.averaged_loss is None) for e in evals] == [(10, True), (20, True), (30, False), (40, False)]
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    logged = [r.get("averaged_val_loss") for r in records if r["type"] == "eval"]
    assert logged == [e.averaged_loss for e in evals]
    every = [e.val_loss for e in evals] + [e.averaged_loss for e in evals[2:]]
    assert result.best_val_loss == min(every)
    best, last = load_checkpoint(tmp_path / "run" / "best.pt"), load_checkpoint(tmp_path / "run" / "last.pt")
    assert last.averaged is not None and best.progress.best_val_loss == min(every)
    averaged_won = min(every) in [e.averaged_loss for e in evals[2:]]
    assert best.progress.best_averaged == averaged_won
    # best.pt's model is the average it kept beside it exactly when the average won
    assert all(torch.equal(best.model[k], best.averaged[k]) for k in best.averaged) == averaged_won
    # whichever won, best.pt evaluates to the loss it records
    tcfg = last.train_config
    val = new_run(replace(tcfg, out=str(tmp_path / "check")), model_cfg).data.val_tokens
    loss = evaluate(best.build_model(), val, tcfg.seq_len, max_chars=tcfg.eval_chars, char_starts=None).loss
    assert loss == pytest.approx(best.progress.best_val_loss, abs=1e-5)


def _favouring(monkeypatch, averaged: bool) -> None:
    """Make every evaluation of the averaged weights (``averaged``) or of the trained ones win by
    far: the other's loss reads 1 nat higher than measured."""
    real = loop._evaluate

    def rigged(run, model, stop):  # the averaged copy is the model that is not the learner's
        result = real(run, model, stop)
        loses = (model is run.learner.model) == averaged
        return replace(result, loss=result.loss + 1.0) if loses else result

    monkeypatch.setattr(loop, "_evaluate", rigged)


def _first_piece_state(model: CharLSTM, run_cfg: TrainConfig, model_cfg: ModelConfig, scratch) -> tuple:
    """The state ``model`` reaches reading the first piece of the run's evaluation, from zero: the
    validation split's first ``stream_len`` tokens, as ``evaluate`` cuts it."""
    val = new_run(replace(run_cfg, out=str(scratch)), model_cfg).data.val_tokens
    pieces = evaluate_module._pieces(val, evaluate_module.EVAL_STREAMS, run_cfg.seq_len, run_cfg.eval_chars)
    x = torch.from_numpy(val[: pieces.stream_len].astype("int64"))[None]  # (1, stream_len)
    with torch.no_grad():
        _, state = model(x)
    return first_stream(state)


def test_best_pt_holds_the_averaged_weights_when_they_evaluate_better(tiny_train, tmp_path, monkeypatch):
    _favouring(monkeypatch, averaged=True)
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
    assert rows["best_averaged"] == "True" and rows["averaged val loss"].startswith(f"{shown.averaged_loss:.4f}")
    plain = load_checkpoint(tmp_path / "run" / "best.pt").describe() | {"averaged_val_loss": None}
    assert "best_averaged" not in dict(_rows(render.info_table(plain)))  # a run without the average shows neither


def test_best_pt_of_averaged_weights_samples_from_their_own_state(tiny_train, tmp_path, monkeypatch):
    """The averaged weights never read the training text: best.pt keeps, as their warm start, the
    state they reached in the evaluation that chose them, not the state the trained weights carried."""
    _favouring(monkeypatch, averaged=True)
    model_cfg = ModelConfig(embedding=8, hidden=16, layers=2)
    run_cfg = _averaged(tiny_train, tmp_path / "run")
    train(new_run(run_cfg, model_cfg))
    best, last = load_checkpoint(tmp_path / "run" / "best.pt"), load_checkpoint(tmp_path / "run" / "last.pt")
    assert best.progress.best_averaged and last.hidden[0].shape[1] == run_cfg.batch_size
    warm = best.warm_state()
    assert [tuple(t.shape) for t in warm] == [(2, 1, 16)] * 2 and all(t.dtype == torch.float32 for t in warm)
    expected = _first_piece_state(best.build_model(), run_cfg, model_cfg, tmp_path / "c")
    torch.testing.assert_close(warm, expected, atol=1e-4, rtol=0)  # read in chunks there, at once here
    assert not torch.allclose(warm[0], last.warm_state()[0], atol=1e-3)  # not the trained weights' state
    model = charlstm.load(tmp_path / "run")  # the run directory means best.pt
    assert all(torch.equal(a, b) for a, b in zip(model.checkpoint.warm_state(), warm, strict=True))
    text = model.generate("KING:", length=40, seed=3)
    assert text.startswith("KING:") and len(text) == len("KING:") + 40
    assert set(text) <= set(best.vocab.chars)
    printed = CliRunner().invoke(
        app, ["sample", str(tmp_path / "run"), "--length", "40", "--seed", "3", "--prompt", "KING:"]
    )
    assert printed.exit_code == 0 and printed.stdout == text + "\n"


def test_best_pt_of_trained_weights_keeps_the_state_training_carried(tiny_train, tmp_path, monkeypatch):
    _favouring(monkeypatch, averaged=False)
    run_cfg = _averaged(tiny_train, tmp_path / "run", eval_every=40)  # one evaluation, at the end
    train(new_run(run_cfg, ModelConfig(embedding=8, hidden=16, layers=2)))
    best, last = load_checkpoint(tmp_path / "run" / "best.pt"), load_checkpoint(tmp_path / "run" / "last.pt")
    assert not best.progress.best_averaged and best.progress.step == last.progress.step == 40
    assert all(torch.equal(best.model[k], v) for k, v in last.model.items())
    assert all(torch.equal(a, b) for a, b in zip(best.hidden, last.hidden, strict=True))  # every stream's


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
        assert all(torch.equal(a, b) for a, b in zip(whole.hidden, split.hidden, strict=True)), name
