"""The budget-aware choice of model size and regularisation (presets.py), and how a new run applies it."""

from __future__ import annotations

import itertools
import os
import re
import signal
from pathlib import Path

import pytest
import torch

from charlstm import api
from charlstm.choices import PresetName
from charlstm.config import ModelConfig, TrainConfig, train_options
from charlstm.errors import UserError
from charlstm.training import presets, sizing, words
from charlstm.training.events import Progress
from charlstm.training.probe import SpeedReading
from charlstm.training.run import new_run

SIZED = frozenset(presets.SIZED)


def test_small_preset_is_the_configs_defaults():
    small = presets.PRESETS["small"].options()
    defaults = {**ModelConfig().to_dict(), **TrainConfig().to_dict()}
    assert small == {k: defaults[k] for k in presets.SIZED}


def test_config_accepts_exactly_the_presets_sizing_defines_and_its_help_names_them():
    assert PresetName.values() == ("auto", *presets.PRESETS)
    help_text = next(d.help for d in train_options() if d.name == "preset")
    assert set(presets.PRESETS) <= set(re.findall(r"\w+", help_text))
    with pytest.raises(UserError, match="--preset 'huge'"):
        TrainConfig(preset="huge")


@pytest.mark.parametrize(
    ("passes", "chars", "preset"),
    [
        (0.01, 1_999_999, "micro"),
        (0.01, 2_000_000, "tiny"),
        (0.01, 4_999_999, "tiny"),
        (0.01, 5_000_000, "small"),  # a big corpus: compute decides
        (5, 5_000_000, "small"),
        (39.9, 39_900_000, "small"),  # with weight drop the small model still wins at 30 passes
        (40, 40_000_000, "medium"),
        (500, 1_000_000, "medium"),  # a small text read many times: the data decides
        (139.9, 140_000_000, "medium"),
        (140, 140_000_000, "stacked"),  # an hour's compute on tiny Shakespeare on the AMD EPYC with AVX-512
        (5_000, 139_999_999, "medium"),  # a small text read very often, but not that much compute
        (179.9, 180_000_000, "stacked"),
        (180, 180_000_000, "large"),  # an hour's compute on tiny Shakespeare on the Xeon
        (5_000, 179_999_999, "stacked"),
    ],
)
def test_preset_follows_the_compute_and_the_passes_the_budget_buys(passes, chars, preset):
    assert presets.preset_for(passes, chars).name == preset


def test_presets_grow_in_size_and_chunk_from_micro_to_large_and_evaluate_as_often():
    names = ["micro", "tiny", "small", "medium", "stacked", "large"]
    order = [presets.PRESETS[n] for n in names]
    assert list(presets.PRESETS) == names
    for smaller, larger in itertools.pairwise(order):
        assert larger.layers * larger.hidden > smaller.layers * smaller.hidden
        assert larger.batch_size * larger.seq_len >= smaller.batch_size * smaller.seq_len
    chars_between_evaluations = {p.eval_every * p.batch_size * p.seq_len for p in order}
    assert chars_between_evaluations == {p.save_every * p.batch_size * p.seq_len for p in order} == {2_048_000}


def test_a_step_budget_keeps_the_chunk_under_auto_and_a_named_preset_sets_it():
    few_steps = TrainConfig(max_steps=100)  # 0.8 passes over a million tokens: micro
    chosen = presets.choose(few_steps, SIZED, 1_000_000, None)
    assert chosen.preset == "micro" and not set(presets.STEP_OPTIONS) & set(chosen.applied)
    t, _ = presets.apply(chosen, few_steps, ModelConfig())
    assert (t.batch_size, t.seq_len) == (TrainConfig().batch_size, TrainConfig().seq_len)
    timed = presets.choose(TrainConfig(max_time=60), SIZED, 1_000_000, 20_000.0)  # 1.2M characters: micro
    micro = presets.PRESETS["micro"]
    assert (timed.applied["batch_size"], timed.applied["seq_len"]) == (micro.batch_size, micro.seq_len)
    named = presets.choose(TrainConfig(max_steps=100, preset="micro"), SIZED, 1_000_000, None)
    assert named.applied == micro.options()
    only_chunk_left = presets.choose(few_steps, frozenset(presets.STEP_OPTIONS), 1_000_000, None)
    assert only_chunk_left.chosen_by == "user" and not only_chunk_left.applied


def test_the_cadence_follows_the_preset_only_with_its_chunk_and_processes_keep_a_chunk_they_cannot_share():
    timed = TrainConfig(max_time=60)  # 1.2M characters at 20,000 chars/s: micro
    own_batch = presets.choose(timed, SIZED - {"batch_size"}, 1_000_000, 20_000.0)
    assert own_batch.preset == "micro" and "seq_len" in own_batch.applied
    assert not set(presets.CADENCE_OPTIONS) & set(own_batch.applied)
    whole = presets.choose(timed, SIZED, 1_000_000, 20_000.0)
    assert whole.applied["eval_every"] == presets.PRESETS["micro"].eval_every
    assert set(presets.STEP_OPTIONS) <= set(presets.choose(timed, SIZED, 1_000_000, 20_000.0, world=32).applied)
    many = presets.choose(timed, SIZED, 1_000_000, 20_000.0, world=64)
    assert many.preset == "micro" and not set(presets.STEP_OPTIONS) & set(many.applied) and "hidden" in many.applied


def test_budget_passes_from_each_budget_and_the_least_of_several():
    tokens = 1_000_000
    steps = TrainConfig(max_steps=1000)  # 1000 x 64 x 128 characters
    assert presets.budget_passes(steps, tokens, None) == pytest.approx(8.192)
    assert presets.budget_passes(TrainConfig(epochs=3.5), tokens, None) == 3.5
    timed = TrainConfig(max_time=600)
    assert presets.budget_passes(timed, tokens, 40_000) == pytest.approx(24.0)
    both = TrainConfig(max_time=600, epochs=5)
    assert presets.budget_passes(both, tokens, 40_000) == 5
    assert presets.budget_passes(TrainConfig(), tokens, None) == 10


def test_choice_fills_only_what_the_user_left_unset():
    tcfg = TrainConfig(max_steps=10_000, lr=0.01)  # 82 passes over a million tokens: medium
    chosen = presets.choose(tcfg, SIZED - {"hidden", "lr"}, 1_000_000, None)
    assert chosen.preset == "medium" and chosen.chosen_by == "budget"
    assert set(chosen.applied) == {"layers", "dropout", "weight_drop", "weight_decay"}
    assert chosen.kept == ["hidden", "lr"]
    t, m = presets.apply(chosen, tcfg, ModelConfig(hidden=128))
    medium = presets.PRESETS["medium"]
    assert (m.layers, m.hidden, m.dropout) == (medium.layers, 128, medium.dropout)
    assert (t.weight_decay, t.lr) == (medium.weight_decay, 0.01)


def test_named_preset_ignores_the_budget():
    chosen = presets.choose(TrainConfig(max_steps=1, preset="medium"), SIZED, 1_000_000, None)  # 0.008 passes
    assert chosen.preset == "medium" and chosen.chosen_by == "preset" and chosen.passes is None
    assert chosen.applied == presets.PRESETS["medium"].options()


def test_sizing_leaves_the_weights_and_random_state_of_a_run_given_the_chosen_options(corpus_file, tmp_path):
    """A run sized under a time budget (probe timed, model maybe rebuilt) starts exactly where the
    same run given the chosen options explicitly starts: same weights, same random state next."""
    base = dict(seq_len=16, batch_size=4, device="cpu", precision="fp32", max_time=60)
    sized = new_run(
        TrainConfig(corpus=str(corpus_file), out=str(tmp_path / "a"), **base),
        ModelConfig(embedding=8, dropout=0.5),
        unset=SIZED - {"dropout", "batch_size", "seq_len"},
    )
    after_sized = torch.get_rng_state()
    explicit = new_run(TrainConfig.from_dict({**sized.tcfg.to_dict(), "out": str(tmp_path / "b")}), sized.mcfg)
    assert torch.equal(after_sized, torch.get_rng_state())
    assert sized.state.sizing["chars_per_s"] > 0 and explicit.state.sizing["chosen_by"] == "user"
    theirs = explicit.learner.model.state_dict()
    assert all(torch.equal(v, theirs[k]) for k, v in sized.learner.model.state_dict().items())


def test_speed_is_needed_only_for_a_time_budget_with_something_to_choose():
    assert presets.needs_speed(TrainConfig(max_time=60), SIZED)
    assert not presets.needs_speed(TrainConfig(max_steps=60), SIZED)
    assert not presets.needs_speed(TrainConfig(max_time=60), frozenset())
    assert not presets.needs_speed(TrainConfig(max_time=60, preset="small"), SIZED)


def test_describe_names_the_values_the_reason_and_what_the_user_kept():
    chosen = presets.choose(TrainConfig(max_time=600), SIZED - {"hidden"}, 1_000_000, 80_000.0)
    line = words.sizing(chosen)
    assert line.startswith("sized medium: --layers 1 --dropout 0 --weight-drop 0.4 --seq-len 128 --batch-size 64")
    assert "--lr 0.03 --weight-decay 0.2" in line
    assert "the budget buys about 48 passes" in line and "80k chars/s" in line and "--hidden as you set" in line
    unbudgeted = words.sizing(presets.choose(TrainConfig(), SIZED, 1_000_000, None))
    assert "the default 10 epochs buys about 10 passes" in unbudgeted
    assert (
        words.sizing(presets.Sizing.from_dict({"preset": "", "chosen_by": "user", "passes": None, "chars_per_s": None}))
        == ""
    )
    everything_set = presets.choose(TrainConfig(max_time=60), frozenset(), 1, None)
    assert everything_set.chosen_by == "user" and everything_set.passes is None
    assert words.sizing(everything_set) == ""


def _train(corpus: Path, out: Path, **options) -> api.TrainResult:
    settings = dict(seq_len=16, batch_size=4, warmup_steps=2, eval_every=50, sample_chars=0, device="cpu")
    return api.train(str(corpus), out=str(out), precision="fp32", embedding=8, **{**settings, **options})


def test_a_time_budget_long_for_the_text_trains_the_larger_regularised_model(corpus_file, tmp_path, monkeypatch):
    # at 300,000 chars/s, 3 s pass over the 18,000 training characters 50 times: medium
    monkeypatch.setattr(
        sizing, "training_speed", lambda *args: SpeedReading(300_000.0, (290_000.0, 300_000.0, 310_000.0), 4)
    )
    _train(corpus_file, tmp_path / "run", max_time=3, hidden=16)
    ckpt = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    saved = ckpt["progress"]["sizing"]
    assert saved["preset"] == "medium" and saved["chars_per_s"] == 300_000.0
    assert saved["speed_passes"] == [290_000.0, 300_000.0, 310_000.0]
    assert saved["kept"] == ["hidden", "seq_len", "batch_size", "eval_every"]
    assert saved["passes"] == pytest.approx(3 * 300_000 / 18_000)
    mcfg = ModelConfig.from_dict(ckpt["model_config"])
    medium = presets.PRESETS["medium"]
    assert (mcfg.layers, mcfg.dropout, mcfg.hidden) == (medium.layers, medium.dropout, 16)


def test_a_short_time_budget_trains_on_the_presets_chunk_as_if_given(corpus_file, tmp_path, monkeypatch):
    # at 1,000 chars/s, 60 s buy the small model 60,000 characters: micro, on chunks of 32 x 64
    monkeypatch.setattr(sizing, "training_speed", lambda *args: SpeedReading(1_000.0, (1_000.0,) * 3, 1))
    probed = []

    def precision_on(name, model, batch, device):
        probed.append(tuple(batch[0].shape))
        return "fp32"

    monkeypatch.setattr(sizing, "choose_precision", precision_on)
    options = dict(device="cpu", max_time=60)
    sized = new_run(
        TrainConfig(corpus=str(corpus_file), out=str(tmp_path / "a"), **options), ModelConfig(embedding=8), unset=SIZED
    )
    micro = presets.PRESETS["micro"]
    assert sized.state.sizing["preset"] == "micro" and sized.mcfg.hidden == micro.hidden
    assert (sized.tcfg.batch_size, sized.tcfg.seq_len) == (micro.batch_size, micro.seq_len)
    assert (sized.tcfg.eval_every, sized.tcfg.save_every) == (micro.eval_every, micro.save_every)
    assert (sized.data.batches.streams, sized.data.batches.seq_len) == (micro.batch_size, micro.seq_len)
    assert probed[-1] == (micro.batch_size, micro.seq_len)  # the precision is chosen on the chunk it trains on
    monkeypatch.undo()
    explicit = new_run(TrainConfig.from_dict({**sized.tcfg.to_dict(), "out": str(tmp_path / "b")}), sized.mcfg)
    assert (explicit.data.batches.starts == sized.data.batches.starts).all()
    theirs = explicit.learner.model.state_dict()
    assert all(torch.equal(v, theirs[k]) for k, v in sized.learner.model.state_dict().items())


def test_the_speed_is_measured_on_this_machine_for_a_time_budget(corpus_file, tmp_path):
    _train(corpus_file, tmp_path / "run", max_time=1, hidden=16, layers=1, dropout=0.0, weight_decay=0.2)
    saved = torch.load(tmp_path / "run" / "last.pt", weights_only=True)["progress"]["sizing"]
    assert saved["chars_per_s"] > 1000 and saved["passes"] == pytest.approx(saved["chars_per_s"] / 18_000, rel=0.1)
    assert set(saved["applied"]) == {"weight_drop", "lr"}  # the cadence stays: the user set the chunk


def test_options_the_user_sets_win_over_a_named_preset(corpus_file, tmp_path):
    _train(corpus_file, tmp_path / "run", layers=3, hidden=16, max_steps=3, preset="medium")
    saved = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    mcfg = ModelConfig.from_dict(saved["model_config"])
    assert (mcfg.layers, mcfg.dropout) == (3, presets.PRESETS["medium"].dropout)
    assert saved["progress"]["sizing"]["kept"] == ["layers", "hidden", "seq_len", "batch_size", "eval_every"]


@pytest.mark.parametrize("preset", ["medium", "stacked", "large"])
def test_a_sized_run_resumes_bitwise(corpus_file, tmp_path, preset):
    """A run sized by --preset, stopped by Ctrl-C at step 4 and resumed, ends where an uninterrupted one does
    (stacked and large: two layers, with locked dropout between them)."""

    def interrupt_at_4(event):
        if isinstance(event, Progress) and event.step == 4:
            os.kill(os.getpid(), signal.SIGINT)

    _train(corpus_file, tmp_path / "whole", max_steps=8, hidden=16, preset=preset, log_every=1)
    stopped = _train(
        corpus_file, tmp_path / "split", max_steps=8, hidden=16, preset=preset, log_every=1, on_event=interrupt_at_4
    )
    assert stopped.stopped_by == "signal" and stopped.step == 4
    api.train(resume=tmp_path / "split")
    whole = torch.load(tmp_path / "whole" / "last.pt", weights_only=True)
    split = torch.load(tmp_path / "split" / "last.pt", weights_only=True)
    assert split["progress"]["sizing"] == whole["progress"]["sizing"]
    assert ModelConfig.from_dict(split["model_config"]).dropout == presets.PRESETS[preset].dropout
    assert all(torch.equal(whole["model"][k], split["model"][k]) for k in whole["model"])
