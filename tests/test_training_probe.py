"""The speed probe: whole training steps in the steady state, on a copy, read as training logs its speed."""

from __future__ import annotations

import statistics

import numpy as np
import pytest
import torch

from charlstm import api
from charlstm.config import ModelConfig
from charlstm.data.batches import StreamBatches
from charlstm.net.model import CharLSTM
from charlstm.training import loop, probe, sizing


def _model_and_batches() -> tuple[CharLSTM, StreamBatches]:
    torch.manual_seed(0)
    model = CharLSTM(ModelConfig(vocab_size=65, embedding=8, hidden=32, weight_drop=0.25)).train()
    return model, StreamBatches(np.random.default_rng(0).integers(0, 65, 20_000), 8, 32)


def test_the_probe_times_whole_steps_on_a_copy_and_leaves_the_run_as_it_was(monkeypatch):
    model, batches = _model_and_batches()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    steps = []
    real_step = probe.train_step

    def counted(learner, x, y, state, lr, *frozen):
        steps.append((learner.model is model, tuple(x.shape), state is None))
        return real_step(learner, x, y, state, lr, *frozen)

    monkeypatch.setattr(probe, "train_step", counted)
    reading = probe.training_speed(model, batches, torch.device("cpu"), "fp32")
    assert len(reading.passes) == probe.TIMED_PASSES and reading.chars_per_s == statistics.median(reading.passes)
    assert 1 <= reading.steps_per_pass <= probe.MAX_PASS_STEPS
    assert len(steps) == probe.WARMUP_STEPS + probe.TIMED_PASSES * reading.steps_per_pass
    assert not any(original for original, _, _ in steps)  # a copy trains, never the model itself
    assert {shape for _, shape, _ in steps} == {(8, 32)}
    assert [fresh for _, _, fresh in steps] == [True] + [False] * (len(steps) - 1)  # the state is carried
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert torch.equal(torch.get_rng_state(), rng)


def test_the_probe_times_the_model_and_chunk_that_then_train(corpus_file, tmp_path, monkeypatch):
    """Every sized option set but what the preset fills with the defaults' own values: the model the
    probe times is the model that trains (same config, same starting weights), on the same chunk and
    in the same precision, and its figure is the one the sizing keeps. How close that figure comes
    to the speed training then logs is a measurement, not a test (a busy machine skews either one):
    ``benchmarks/probe.py`` reports it."""
    probed, trained, readings = [], [], []
    real_speed, real_step = sizing.training_speed, loop.train_step

    def timed(model, batches, device, precision, grad_clip):
        probed.append((model.config, _weights(model), tuple(batches.batch(0)[0].shape), precision))
        readings.append(real_speed(model, batches, device, precision, grad_clip))
        return readings[-1]

    def first_step(learner, x, y, state, lr, *frozen):
        if not trained:
            trained.append((learner.model.config, _weights(learner.model), tuple(x.shape), learner.precision))
        return real_step(learner, x, y, state, lr, *frozen)

    monkeypatch.setattr(sizing, "training_speed", timed)
    monkeypatch.setattr(loop, "train_step", first_step)
    out = tmp_path / "run"
    api.train(
        str(corpus_file), out=str(out), max_time=1, device="cpu", precision="fp32", embedding=8, hidden=32,
        layers=1, dropout=0.0, weight_decay=0.2, seq_len=16, batch_size=4, eval_every=10_000, sample_chars=0,
    )  # fmt: skip
    assert len(probed) == len(trained) == 1
    (probed_cfg, probed_weights, *probed_rest), (trained_cfg, trained_weights, *trained_rest) = probed[0], trained[0]
    assert probed_cfg == trained_cfg and probed_rest == trained_rest == [(4, 16), "fp32"]
    assert probed_weights.keys() == trained_weights.keys()
    assert all(torch.equal(v, trained_weights[k]) for k, v in probed_weights.items())
    kept = torch.load(out / "last.pt", weights_only=True)["progress"]["sizing"]
    assert kept["chars_per_s"] == pytest.approx(readings[0].chars_per_s)
    assert kept["speed_passes"] == [round(p, 1) for p in readings[0].passes]


def _weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}
