import json
import signal
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from charlstm import checkpoint as ckpt
from charlstm.config import ModelConfig, TrainConfig
from charlstm.errors import UserError
from charlstm.train import Evaluated, Progress, Started, StopFlag, evaluate, new_run, resume_run, train


def params_of(run_dir: Path, name: str = "last.pt") -> dict:
    return ckpt.load_checkpoint(run_dir / name)["model"]


def test_training_learns_and_writes_the_run(tiny_train, tiny_model):
    events = []
    tcfg = replace(tiny_train, max_steps=40, eval_every=20, lr=3e-2)
    run = new_run(tcfg, tiny_model)
    result = train(run, events.append)
    assert isinstance(events[0], Started)
    losses = [e.loss for e in events if isinstance(e, Progress)]
    assert losses[-1] < losses[0] - 0.5
    evals = [e for e in events if isinstance(e, Evaluated)]
    assert [e.step for e in evals] == [20, 40] and evals[-1].sample
    assert result.stopped_by == "max_steps" and result.step == 40
    run_dir = Path(tcfg.out)
    assert {p.name for p in run_dir.iterdir()} == {"best.pt", "last.pt", "metrics.jsonl"}
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines if m["type"] == "train"] == list(range(2, 41, 2))
    payload = ckpt.load_checkpoint(run_dir)
    assert payload["progress"]["best_val_loss"] == pytest.approx(result.best_val_loss)
    assert payload["model_config"]["vocab_size"] == len(payload["vocab"])


def test_validation_loss_equals_independent_evaluation(tiny_train, tiny_model):
    run = new_run(replace(tiny_train, max_steps=6), tiny_model)
    result = train(run)
    again = evaluate(run.model, run.val_tokens, run.tcfg.seq_len)
    assert again.loss == pytest.approx(result.last_val_loss, rel=1e-6)
    assert again.chars > 0.95 * len(run.val_tokens)


def test_same_seed_repeats_a_cpu_run(tiny_train, tmp_path):
    model_cfg = ModelConfig(embedding=8, hidden=16, layers=2, dropout=0.3)
    for name in ("a", "b"):
        train(new_run(replace(tiny_train, out=str(tmp_path / name)), model_cfg))
    for key, value in params_of(tmp_path / "a").items():
        assert torch.equal(value, params_of(tmp_path / "b")[key]), key


def test_resume_equals_uninterrupted_run_bitwise(tiny_train, tmp_path):
    """N steps straight == N/2 steps, resume, N/2 steps: same parameters and loss at every step."""
    model_cfg = ModelConfig(embedding=8, hidden=16, layers=2, dropout=0.3)
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
    train(resume_run(tmp_path / "halves", {}, {}), halves.append)
    loss = lambda events: [(e.step, e.loss) for e in events if isinstance(e, Progress)]  # noqa: E731
    assert loss(halves) == loss(straight)
    for key, value in params_of(tmp_path / "straight").items():
        assert torch.equal(value, params_of(tmp_path / "halves")[key]), key
    lines = (tmp_path / "halves" / "metrics.jsonl").read_text().splitlines()
    steps = [json.loads(line)["step"] for line in lines if '"train"' in line]
    assert steps == list(range(1, 21))


def test_existing_run_is_not_overwritten(tiny_train, tiny_model):
    train(new_run(replace(tiny_train, max_steps=2), tiny_model))
    with pytest.raises(UserError, match="--resume.*--overwrite"):
        new_run(tiny_train, tiny_model)
    run = new_run(replace(tiny_train, max_steps=2), tiny_model, overwrite=True)
    assert run.state.step == 0 and not (Path(tiny_train.out) / "best.pt").exists()


def test_resume_refuses_architecture_changes(tiny_train, tiny_model):
    train(new_run(replace(tiny_train, max_steps=2), tiny_model))
    with pytest.raises(UserError, match="--hidden 64 differs from the run's 16"):
        resume_run(tiny_train.out, {}, {"hidden": 64})
    with pytest.raises(UserError, match="--lr"):
        resume_run(tiny_train.out, {"lr": 0.5}, {})
    assert resume_run(tiny_train.out, {"max_steps": 4, "hidden": 16}, {}).tcfg.max_steps == 4


def test_epoch_budget_stops_after_whole_passes(tiny_train, tiny_model):
    tcfg = replace(tiny_train, max_steps=None, epochs=2.0, eval_every=1000, save_every=1000)
    run = new_run(tcfg, tiny_model)
    result = train(run)
    assert result.stopped_by == "epochs" and result.step == 2 * len(run.batches)


def test_time_budget_stops_and_anneals(tiny_train, tiny_model):
    tcfg = replace(tiny_train, max_steps=None, max_time=1.5, eval_every=1000, save_every=1000)
    events = []
    result = train(new_run(tcfg, tiny_model), events.append)
    assert result.stopped_by == "max_time" and 1.5 <= result.elapsed < 10
    lrs = [e.lr for e in events if isinstance(e, Progress)]
    assert lrs[-1] < 0.2 * max(lrs)


def test_auto_precision_picks_a_supported_mode(tiny_train, tiny_model):
    run = new_run(replace(tiny_train, precision="auto"), tiny_model)
    assert run.state.precision in ("fp32", "bf16")


def test_cuda_refused_without_a_gpu(tiny_train, tiny_model):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(UserError, match="no CUDA GPU"):
        new_run(replace(tiny_train, device="cuda"), tiny_model)


def test_too_short_corpus_is_explained(tmp_path, tiny_model):
    path = tmp_path / "short.txt"
    path.write_text("hello world\n" * 20, encoding="utf-8")
    with pytest.raises(UserError, match="too short for one batch"):
        new_run(TrainConfig(corpus=str(path), out=str(tmp_path / "r")), tiny_model)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoints(tiny_train, tiny_model, monkeypatch):
    from charlstm import train as training

    run = new_run(replace(tiny_train, max_steps=40, save_every=4, eval_every=8), tiny_model)
    real_step = training.train_step

    def poisoned(run_, x, y, lr):
        loss = real_step(run_, x, y, lr)
        if run_.state.step >= 13:  # counted before the increment: the 14th step goes bad
            with torch.no_grad():
                for p in run_.model.parameters():
                    p.fill_(float("nan"))
            return loss * float("nan")
        return loss

    monkeypatch.setattr(training, "train_step", poisoned)
    result = train(run)
    assert result.stopped_by == "nan" and result.step == 14
    last = ckpt.load_checkpoint(Path(tiny_train.out) / "last.pt")
    assert last["progress"]["step"] == 12
    assert all(torch.isfinite(t).all() for t in last["model"].values())
    assert ckpt.load_checkpoint(Path(tiny_train.out) / "best.pt")["progress"]["step"] == 8


def test_evaluation_scores_every_predictable_character(tiny_train, tiny_model):
    run = new_run(replace(tiny_train, max_steps=2), tiny_model)
    for n in (2, 17, 1000, 1999):
        assert evaluate(run.model, run.val_tokens[:n], seq_len=16).chars == n - 1
    one = evaluate(run.model, run.val_tokens, seq_len=16, streams=1)
    many = evaluate(run.model, run.val_tokens, seq_len=16, streams=8)
    assert one.chars == many.chars and abs(one.loss - many.loss) < 0.05


def test_finished_run_and_non_resumable_files_are_refused(tiny_train, tiny_model):
    train(new_run(replace(tiny_train, max_steps=6), tiny_model))
    with pytest.raises(UserError, match="already finished at step 6.*--max-steps"):
        train(resume_run(tiny_train.out, {}, {}))
    with pytest.raises(UserError, match="cannot be resumed"):
        resume_run(Path(tiny_train.out) / "best.pt", {}, {})


def test_evaluation_hardly_depends_on_chunking(tiny_train, tiny_model):
    run = new_run(replace(tiny_train, max_steps=60, lr=3e-2), tiny_model)
    train(run)
    losses = [evaluate(run.model, run.val_tokens, seq_len=n).loss for n in (8, 32, 128)]
    assert max(losses) - min(losses) < 0.02, losses
