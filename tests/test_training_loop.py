import json
import signal
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from charlstm.choices import Cell
from charlstm.config import ModelConfig
from charlstm.errors import UserError
from charlstm.store.checkpoint import load_checkpoint
from charlstm.store.metrics import read as read_metrics
from charlstm.training import loop as training
from charlstm.training import words
from charlstm.training.distributed import Processes
from charlstm.training.events import Evaluated, Finished, Progress, Started
from charlstm.training.loop import StopFlag, train
from charlstm.training.resume import resume_run
from charlstm.training.run import new_run

CELLS = Cell.values()


def params_of(run_dir: Path, name: str = "last.pt") -> dict:
    return load_checkpoint(run_dir / name).model


def test_training_learns_and_writes_the_run(tiny_train, tiny_model):
    events = []
    tcfg = replace(tiny_train, max_steps=40, eval_every=20, lr=3e-2)
    result = train(new_run(tcfg, tiny_model), events.append)
    assert isinstance(events[0], Started) and isinstance(events[-1], Finished) and events[-1].result is result
    losses = [e.loss for e in events if isinstance(e, Progress)]
    assert losses[-1] < losses[0] - 0.5
    evals = [e for e in events if isinstance(e, Evaluated)]
    assert [e.step for e in evals] == [20, 40] and evals[-1].sample
    assert result.stopped_by == "max_steps" and result.step == 40 and result.failure is None
    run_dir = Path(tcfg.out)
    assert {p.name for p in run_dir.iterdir()} == {"best.pt", "last.pt", "metrics.jsonl", "config.toml"}
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines if m["type"] == "train"] == list(range(2, 41, 2))
    saved = load_checkpoint(run_dir)
    assert saved.progress.best_val_loss == pytest.approx(result.best_val_loss)
    assert saved.model_config.vocab_size == len(saved.vocab) and saved.progress.metrics_lines == len(lines) - 1
    end = {"type": "end", "step": 40, "stopped_by": "max_steps", "signal": None, "error": None}
    assert lines[-1] == {**end, "elapsed": round(result.elapsed, 3)}  # written after the last save


def test_same_seed_repeats_a_cpu_run(tiny_train, tmp_path):
    model_cfg = ModelConfig(embedding=8, hidden=16, layers=2, dropout=0.3)
    for name in ("a", "b"):
        train(new_run(replace(tiny_train, out=str(tmp_path / name)), model_cfg))
    for key, value in params_of(tmp_path / "a").items():
        assert torch.equal(value, params_of(tmp_path / "b")[key]), key


@pytest.mark.parametrize("cell", CELLS)
def test_resume_equals_uninterrupted_run_bitwise(tiny_train, tmp_path, cell):
    """N steps straight == N/2 steps, resume, N/2 steps: same parameters and loss at every step,
    with every kind of dropout drawing from the saved random state."""
    dropouts = {"dropout": 0.3, "weight_drop": 0.3, "embed_dropout": 0.1}
    model_cfg = ModelConfig(embedding=8, hidden=16, layers=2, cell=cell, **dropouts)
    base = replace(tiny_train, max_steps=20, log_every=1, eval_every=7, save_every=100)
    straight = []
    train(new_run(replace(base, out=str(tmp_path / "straight")), model_cfg), straight.append)
    halves, flag = [], StopFlag()

    def interrupt_at_10(event):  # what a Ctrl-C during step 10 does
        halves.append(event)
        if isinstance(event, Progress) and event.step == 10:
            flag.signum = signal.SIGINT

    first = train(new_run(replace(base, out=str(tmp_path / "halves")), model_cfg), interrupt_at_10, flag)
    assert first.stopped_by == "signal" and first.step == 10
    assert first.resume_command == f"charlstm train --resume {tmp_path / 'halves'}"
    train(resume_run(tmp_path / "halves", {}), halves.append)
    loss = lambda events: [(e.step, e.loss) for e in events if isinstance(e, Progress)]  # noqa: E731
    assert loss(halves) == loss(straight)
    for key, value in params_of(tmp_path / "straight").items():
        assert torch.equal(value, params_of(tmp_path / "halves")[key]), key
    lines = (tmp_path / "halves" / "metrics.jsonl").read_text().splitlines()
    steps = [json.loads(line)["step"] for line in lines if '"train"' in line]
    assert steps == list(range(1, 21))


def test_epoch_budget_stops_after_whole_passes(tiny_train, tiny_model):
    tcfg = replace(tiny_train, max_steps=None, epochs=2.0, eval_every=1000, save_every=1000)
    run = new_run(tcfg, tiny_model)
    result = train(run)
    assert result.stopped_by == "epochs" and result.step == 2 * len(run.data.batches)


class SteppedClock:
    """The loop's ``time`` module, with a clock that moves only when a test moves it: budgets and
    durations come out exact, whatever else the machine is doing."""

    def __init__(self) -> None:
        self.now = 1000.0

    def perf_counter(self) -> float:
        return self.now

    def __getattr__(self, name: str) -> object:  # the rest of the time module
        return getattr(time, name)


@pytest.fixture
def clock(monkeypatch) -> SteppedClock:
    stepped = SteppedClock()
    monkeypatch.setattr(training, "time", stepped)
    return stepped


def test_time_budget_stops_at_the_first_step_past_it_and_anneals(tiny_train, tiny_model, clock, monkeypatch):
    step_seconds, real_step = 0.125, training.train_step  # a power of two: the sums are exact

    def timed(*args):
        clock.now += step_seconds
        return real_step(*args)

    monkeypatch.setattr(training, "train_step", timed)
    tcfg = replace(tiny_train, max_steps=None, max_time=1.5, eval_every=1000, save_every=1000, log_every=1)
    events = []
    result = train(new_run(tcfg, tiny_model), events.append)
    assert result.stopped_by == "max_time" and result.elapsed == 1.5 and result.step == 1.5 / step_seconds
    lrs = [e.lr for e in events if isinstance(e, Progress)]
    assert len(lrs) == result.step and lrs[-1] < 0.2 * max(lrs)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoints(tiny_train, tiny_model, monkeypatch):
    run = new_run(replace(tiny_train, max_steps=40, save_every=4, eval_every=8), tiny_model)
    real_step = training.train_step

    def poisoned(learner, x, y, state, lr, *frozen):
        loss, state = real_step(learner, x, y, state, lr, *frozen)
        if run.state.step >= 13:  # counted before the increment: the 14th step goes bad
            with torch.no_grad():
                for p in learner.model.parameters():
                    p.fill_(float("nan"))
            return loss * float("nan"), state
        return loss, state

    monkeypatch.setattr(training, "train_step", poisoned)
    result = train(run)
    assert result.stopped_by == "nan" and result.step == 14
    assert "NaN or infinite by step 14" in result.failure and "--lr" in result.failure
    end = read_metrics(tiny_train.out)[-1]
    assert end["type"] == "end" and end["stopped_by"] == "nan" and end["error"] == result.failure
    last = load_checkpoint(Path(tiny_train.out) / "last.pt")
    assert last.progress.step == 12
    assert all(torch.isfinite(t).all() for t in last.model.values())
    assert load_checkpoint(Path(tiny_train.out) / "best.pt").progress.step == 8


def test_previews_repeat_and_leave_the_random_state_alone(tiny_train, tiny_model):
    run = new_run(replace(tiny_train, sample_chars=40), tiny_model)
    before = torch.get_rng_state()
    first, again = training.preview(run), training.preview(run)
    assert len(first) == 40 and first == again and torch.equal(before, torch.get_rng_state())


def test_the_largest_seed_still_previews(tiny_train, tiny_model):
    run = new_run(replace(tiny_train, seed=2**63 - 1, max_steps=6, eval_every=3), tiny_model)
    events = []
    train(run, events.append)
    assert all(len(e.sample) == 20 for e in events if isinstance(e, Evaluated))


def test_evaluations_record_what_they_read_and_how_long(tiny_train, tiny_model, clock, monkeypatch):
    eval_seconds, real_evaluate = 0.25, training.evaluate

    def timed(*args, **kwargs):
        clock.now += eval_seconds
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(training, "evaluate", timed)
    train(new_run(replace(tiny_train, max_steps=6, eval_every=6, eval_chars=500), tiny_model))
    lines = [json.loads(line) for line in (Path(tiny_train.out) / "metrics.jsonl").read_text().splitlines()]
    evals = [m for m in lines if m["type"] == "eval"]
    assert len(evals) == 1 and 450 <= evals[0]["eval_chars"] <= 500 and evals[0]["eval_seconds"] == eval_seconds


def test_a_stop_during_an_evaluation_saves_the_last_step_and_stops(tiny_train, tiny_model):
    flag, events = StopFlag(), []

    def stop_at_step_12(event):  # the signal arrives as step 12 is logged, just before its evaluation
        events.append(event)
        if isinstance(event, Progress) and event.step == 12:
            flag.signum = signal.SIGTERM

    run = new_run(replace(tiny_train, max_steps=100, eval_every=6, log_every=6), tiny_model)
    result = train(run, stop_at_step_12, flag)
    assert result.stopped_by == "signal" and result.step == 12
    assert read_metrics(tiny_train.out)[-1] | {"elapsed": 0} == {
        "type": "end",
        "step": 12,
        "elapsed": 0,
        "stopped_by": "signal",
        "signal": "SIGTERM",
        "error": None,
    }
    assert [e.step for e in events if isinstance(e, Evaluated)] == [6]
    assert load_checkpoint(Path(tiny_train.out) / "last.pt").progress.step == 12
    assert load_checkpoint(Path(tiny_train.out) / "best.pt").progress.step == 6


def test_a_corpus_past_max_vocab_trains_on_byte_tokens(tmp_path, tiny_model):
    from conftest import play_text, tiny_train_config

    corpus = tmp_path / "mixed.txt"
    rare = "éüñ日本語☃Ω"
    corpus.write_text(play_text(20_000) + "".join(c * 3 for c in rare) + "\n", encoding="utf-8")
    tcfg = tiny_train_config(corpus, tmp_path / "run", max_vocab=20, max_steps=8, eval_every=8)
    events = []
    result = train(new_run(tcfg, tiny_model), events.append)
    started = events[0]
    vocab = words.vocab(started.vocab)
    assert "20 characters with their own token" in vocab and " byte tokens for the rest" in vocab
    saved = load_checkpoint(tmp_path / "run" / "last.pt")
    byte_tokens = 128 + sum(chr(b) not in saved.vocab.index for b in range(128))  # high bytes, ASCII without a token
    assert saved.vocab.byte_fallback and len(saved.vocab) == saved.model_config.vocab_size == 20 + byte_tokens
    assert 0 < saved.corpus["own_coverage"] < 1 and saved.corpus["distinct"] > 20
    assert result.step == 8 and 0 < result.last_val_loss < 10


@pytest.mark.parametrize(
    "raised, stopped_by, signal_name, error",
    [
        (RuntimeError("boom"), "error", None, "RuntimeError: boom"),
        (UserError("could not write last.pt"), "error", None, "could not write last.pt"),
        (KeyboardInterrupt(), "signal", "SIGINT", None),  # a second Ctrl-C stops at once
    ],
)
def test_a_session_that_raises_still_records_how_it_ended(
    tiny_train, tiny_model, monkeypatch, raised, stopped_by, signal_name, error
):
    run = new_run(replace(tiny_train, max_steps=40), tiny_model)
    real_step = training.train_step

    def fails_at_step_5(learner, x, y, state, lr, *frozen):
        if run.state.step == 5:
            raise raised
        return real_step(learner, x, y, state, lr, *frozen)

    monkeypatch.setattr(training, "train_step", fails_at_step_5)
    with pytest.raises(type(raised)):
        train(run)
    end = read_metrics(tiny_train.out)[-1]
    assert (end["type"], end["step"], end["stopped_by"], end["signal"], end["error"]) == (
        "end",
        5,
        stopped_by,
        signal_name,
        error,
    )


def test_processes_stop_on_the_signal_they_exchanged_not_on_one_landing_after(tiny_train, tiny_model, monkeypatch):
    """A signal that lands just after the processes compared flags waits for the next comparison:
    stopping on it at once would end this process a step before the others, which then wait in
    another collective than its own (gloo aborts on the mismatch)."""
    run = new_run(tiny_train, tiny_model)
    run.procs = Processes(rank=0, world=2, local_rank=0, local_world=2)  # as torchrun starts it
    flag = StopFlag()

    def exchange_then_signal(procs, values):
        flag.signum = signal.SIGTERM  # too late for what this process sent: 0, no stop
        return [0.0, values[1]]

    monkeypatch.setattr(training, "max_all", exchange_then_signal)
    assert training.stop_reason(run, flag) is None
    monkeypatch.setattr(training, "max_all", lambda procs, values: values)
    assert training.stop_reason(run, flag) == "signal" and flag.signum == signal.SIGTERM  # at the next one


def test_a_first_compile_is_announced_before_training_and_not_counted_in_its_time(
    tiny_train, tiny_model, clock, monkeypatch
):
    def slow_compile(on_slow=None):
        on_slow()
        clock.now += 12.5  # the only time that passes in this run
        return 12.5

    monkeypatch.setattr(training, "compile_kernels", slow_compile)
    seen = []
    train(new_run(replace(tiny_train, max_steps=4), tiny_model), seen.append)
    kinds = [type(e).__name__ for e in seen]
    assert kinds[:3] == ["Started", "Compiling", "Compiling"] and "Progress" in kinds[3:]
    assert seen[1].done is False and (seen[2].done, seen[2].seconds) == (True, 12.5)
    assert seen[-1].result.elapsed == 0
