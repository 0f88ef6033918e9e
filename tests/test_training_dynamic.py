"""Dynamic evaluation: each character is scored before the model learns from it; with no steps it
is the static loss; on a text that repeats what the model never saw, it learns; the rates are
fitted on the training split."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from charlstm.choices import RatesFrom
from charlstm.store.checkpoint import load_checkpoint
from charlstm.training.dynamic import DynamicRates, DynamicReader, fit_rates, gradient_rms
from charlstm.training.evaluate import read_dynamically
from tests.test_cli import invoke

RATES = DynamicRates(lr=2e-3, decay=0.01, segment=8)


def model_and_tokens(run, text: str):
    ckpt = load_checkpoint(run / "best.pt")
    return ckpt.build_model(), np.asarray(ckpt.vocab.encode(text), dtype=np.int64), ckpt


def test_no_score_depends_on_an_update_made_with_its_own_character(shared_run):
    model, tokens, _ = model_and_tokens(shared_run, "KING:\nMy lord the night is long and the king is my lord.\n" * 4)
    reader = DynamicReader(model, gradient_rms(model, tokens, 8, streams=2, segments=4))
    changed = tokens.copy()
    i = 101  # inside a segment: tokens up to i are the same, the rest differ
    changed[i + 1 :] = np.roll(tokens[i + 1 :], 7)
    a, b = reader.scores(tokens, RATES), reader.scores(changed, RATES)
    assert np.array_equal(a[:i], b[:i])  # the scores of tokens 1..i: bit for bit
    assert not np.array_equal(a[i:], b[i:])


def test_without_steps_it_is_the_static_loss(shared_run):
    model, tokens, _ = model_and_tokens(shared_run, "QUEEN:\nThe sword is my love.\n" * 8)
    reader = DynamicReader(model, gradient_rms(model, tokens, 8, streams=2, segments=4))
    scores = reader.scores(tokens, DynamicRates(0.0, 0.0, 8))
    with torch.no_grad():
        logits, _ = model(torch.from_numpy(tokens[None, :-1]))
    static = F.cross_entropy(logits[0], torch.from_numpy(tokens[1:]), reduction="none").numpy()
    assert np.allclose(scores, static, atol=1e-5)
    for p, q in zip(reader.model.parameters(), model.parameters(), strict=True):
        assert torch.equal(p, q)  # at rates 0 the weights stay the trained ones


def test_reading_a_repeated_text_it_learns_it(shared_run):
    text = "FOOL:\nQuoth the raven nevermore quoth the raven.\n" * 12  # words the play never had
    model, tokens, _ = model_and_tokens(shared_run, text)
    trained = [p.detach().clone() for p in model.parameters()]
    reader = DynamicReader(model, gradient_rms(model, tokens, 8, streams=2, segments=4))
    static = reader.scores(tokens, DynamicRates(0.0, 0.0, 8))
    dynamic = reader.scores(tokens, RATES)
    half = len(static) // 2
    assert dynamic[half:].mean() < static[half:].mean() - 0.1
    assert not all(torch.equal(p, q) for p, q in zip(reader.model.parameters(), trained, strict=True))  # it learned
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), trained, strict=True))  # in its own copy
    with torch.no_grad():  # a caller's no_grad does not stop it from learning
        assert np.array_equal(reader.scores(tokens, RATES), dynamic)


def test_the_rates_are_fitted_on_the_training_split_alone(shared_run):
    model, _, ckpt = model_and_tokens(shared_run, "K")
    text = (shared_run.parent / "play.txt").read_text("utf-8")
    tokens = np.asarray(ckpt.vocab.encode(text), dtype=np.int64)
    train = tokens[: int(len(tokens) * 0.9)]
    rates, rms = fit_rates(model, train, fit_chars=400, lr_grid=(1e-4, 1e-3), decay_grid=(0.0, 0.01), segment=8)
    again, _ = fit_rates(model, train.copy(), fit_chars=400, lr_grid=(1e-4, 1e-3), decay_grid=(0.0, 0.01), segment=8)
    assert rates == again and rates.fitted_chars == 400 and rates.dynamic_loss <= rates.static_loss
    assert set(rms) == {name for name, _ in model.named_parameters()}


def test_eval_dynamic_fits_the_rates_once_and_keeps_them_in_the_checkpoint(run_copy):
    first = invoke("eval", run_copy, "--dynamic", "--json", "--max-chars", "300")
    assert first.exit_code == 0, first.output
    dynamic = json.loads(first.stdout)["dynamic"]
    assert dynamic["rates_from"] == "fitted" and dynamic["chars"] == 300 and math.isfinite(dynamic["dynamic_loss"])
    assert json.loads(invoke("info", run_copy, "--json").stdout)["dynamic"] == dynamic["rates"]
    again = json.loads(invoke("eval", run_copy, "--dynamic", "--json", "--max-chars", "300").stdout)["dynamic"]
    assert again["rates_from"] == "checkpoint" and again["rates"] == dynamic["rates"]
    assert again["dynamic_loss"] == dynamic["dynamic_loss"]  # the same statistics, gathered again
    table = invoke("eval", run_copy, "--dynamic", "--max-chars", "300").stdout
    assert "dynamic evaluation" in table and "the checkpoint's" in table
    assert "dynamic evaluation" in invoke("info", run_copy).stdout


def test_the_fitted_rates_do_not_read_the_validation_tail(tiny_train, tiny_model, tmp_path):
    from charlstm.training.loop import train
    from charlstm.training.run import new_run

    train(new_run(tiny_train, tiny_model))
    corpus = Path(tiny_train.corpus)
    text = corpus.read_text("utf-8")
    fitted = []
    for tail in (text[int(len(text) * 0.9) :], "FOOL:\nNo.\n" * (len(text) // 10 + 1)):  # its own tail, then another
        corpus.write_text(text[: int(len(text) * 0.9)] + tail[: len(text) - int(len(text) * 0.9)], encoding="utf-8")
        ckpt = load_checkpoint(Path(tiny_train.out) / "best.pt")
        ckpt.dynamic, ckpt.path = None, None  # as never fitted, and nowhere to keep them
        fitted.append(read_dynamically(ckpt, np.asarray(ckpt.vocab.encode(text[:200]), dtype=np.int64)).rates)
    assert fitted[0] == fitted[1]


def test_rates_are_kept_only_where_the_file_can_take_them(run_copy, tmp_path):
    from charlstm.data.batches import split_tokens
    from charlstm.store.checkpoint import export_safetensors
    from charlstm.training.dynamic import rates_for

    ckpt = load_checkpoint(run_copy / "best.pt")
    text = Path(ckpt.train_config.corpus)
    train = split_tokens(np.asarray(ckpt.vocab.encode(text.read_text("utf-8")), dtype=np.int64), 0.1)[0]
    newer = load_checkpoint(run_copy / "best.pt")  # a run writes new weights while the rates are fitted
    newer.model = {k: v + 1 for k, v in newer.model.items()}
    newer.save(run_copy / "best.pt")
    written = (run_copy / "best.pt").read_bytes()
    assert rates_for(ckpt, ckpt.build_model(), train, None)[2] == RatesFrom.FITTED_NOT_KEPT
    assert (run_copy / "best.pt").read_bytes() == written  # the newer weights stand
    exported = load_checkpoint(export_safetensors(load_checkpoint(run_copy / "last.pt"), tmp_path / "m.safetensors"))
    assert rates_for(exported, exported.build_model(), train, None)[2] == RatesFrom.FITTED_NOT_KEPT
