"""Dynamic evaluation: each character is scored before the model learns from it; with no steps it
is the static loss; on a text that repeats what the model never saw, it learns; the rates are
fitted on the training split."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from charlstm.choices import RatesFrom
from charlstm.data.sources import resolve_corpus
from charlstm.errors import UserError
from charlstm.store.checkpoint import load_checkpoint
from charlstm.training import dynamic
from charlstm.training.dynamic import (
    DynamicRates,
    DynamicReader,
    fit_rates,
    gradient_rms,
    read_streams,
    stream_bounds,
    stream_count,
)
from charlstm.training.evaluate import read_dynamically
from charlstm.training.parallel import Stopped, Tally, in_parallel
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
    learning = reader.scores(tokens, DynamicRates(0.0, 1e-30, 8))  # through the gradient steps, which move nothing
    assert np.allclose(learning, static, atol=1e-5)
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


def test_streams_tile_the_text_and_their_number_follows_its_length_alone():
    assert stream_count(10) == stream_count(dynamic.STREAM_TOKENS * 2 - 1) == 1
    assert stream_count(dynamic.STREAM_TOKENS * 2) == 2 and stream_count(dynamic.STREAM_TOKENS * 7 + 5) == 7
    for targets, streams in ((10, 3), (1000, 7), (5, 9), (50_001, 1)):
        bounds = stream_bounds(targets, streams)
        assert bounds[0][0] == 0 and bounds[-1][1] == targets and len(bounds) == min(streams, targets)
        assert all(a < b == c for (a, b), (c, _) in zip(bounds, bounds[1:] + [(bounds[-1][1], 0)], strict=True))


def test_each_stream_reads_its_piece_with_its_own_weights_from_the_trained_ones(shared_run, monkeypatch):
    model, tokens, _ = model_and_tokens(shared_run, "KING:\nMy lord the night is long and the king is my lord.\n" * 12)
    rms = gradient_rms(model, tokens, 8, streams=2, segments=4)
    rates = DynamicRates(lr=2e-3, decay=0.01, segment=8)
    monkeypatch.setattr(dynamic, "WARM", 40)
    together = read_streams(model, tokens, rates, rms, streams=3, at_once=1)
    assert together.shape == (len(tokens) - 1,)
    for begin, end in stream_bounds(len(tokens) - 1, 3):  # each piece as a reader alone reads it
        reader = DynamicReader(model, rms)
        start = reader.warm_state(tokens[max(0, begin - 40) : begin])
        assert np.array_equal(together[begin:end], reader.scores(tokens[begin : end + 1], rates, start))
    first_end = stream_bounds(len(tokens) - 1, 3)[0][1]
    assert np.array_equal(together[:first_end], DynamicReader(model, rms).scores(tokens[: first_end + 1], rates))
    changed = tokens.copy()
    i = first_end + 30  # in the second stream: every score up to i, in any stream, stays as it was
    changed[i + 1 :] = np.roll(tokens[i + 1 :], 5)
    other = read_streams(model, changed, rates, rms, streams=3, at_once=1)
    assert np.array_equal(together[:i], other[:i]) and not np.array_equal(together[i:], other[i:])
    threads = torch.get_num_threads()
    threaded = read_streams(model, tokens, rates, rms, streams=3, at_once=2)  # in threads, one core each
    np.testing.assert_allclose(threaded, together, rtol=0, atol=1e-5)
    assert torch.get_num_threads() == threads  # torch's own threads as they were
    monkeypatch.setattr(dynamic, "WARM", len(tokens))  # each stream warmed on all the text before it:
    static = DynamicRates(0.0, 0.0, 8)  # without steps, three streams read as one does
    one = DynamicReader(model, rms).scores(tokens, static)
    np.testing.assert_allclose(read_streams(model, tokens, static, rms, streams=3, at_once=1), one, rtol=0, atol=1e-5)


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
    tails = (text[int(len(text) * 0.9) :], "FOOL:\nNo.\n" * (len(text) // 10 + 1))  # its own tail, then another
    for other, tail in enumerate(tails):
        corpus.write_text(text[: int(len(text) * 0.9)] + tail[: len(text) - int(len(text) * 0.9)], encoding="utf-8")
        ckpt = load_checkpoint(Path(tiny_train.out) / "best.pt")
        ckpt.dynamic, ckpt.path = None, None  # as never fitted, and nowhere to keep them
        if other:
            with pytest.raises(UserError, match="has changed since the model trained on it"):
                read_dynamically(ckpt, np.asarray(ckpt.vocab.encode(text[:200]), dtype=np.int64))
        ckpt.corpus = {**ckpt.corpus, "sha256": resolve_corpus(str(corpus)).sha256}  # as if trained on this one
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


def test_progress_counts_the_fit_and_both_readings_once_each(run_copy):
    from charlstm.data.batches import split_tokens
    from charlstm.training.dynamic import fit_work

    ckpt = load_checkpoint(run_copy / "best.pt")
    text = Path(ckpt.train_config.corpus).read_text("utf-8")
    train = split_tokens(np.asarray(ckpt.vocab.encode(text), dtype=np.int64), 0.1)[0]
    tokens = np.asarray(ckpt.vocab.encode(text[:300]), dtype=np.int64)
    for total in (2 * 299 + fit_work(len(train)), 2 * 299):  # fitted first, then the checkpoint's rates
        heard: list[tuple[int, int]] = []
        read_dynamically(load_checkpoint(run_copy / "best.pt"), tokens, lambda *call, into=heard: into.append(call))
        assert max(heard) == (total, total) and {of for _, of in heard} == {total}
        assert len(heard) == len({done for done, _ in heard})  # every call a new count


def test_when_one_stream_fails_the_others_stop_at_their_next_segment(shared_run):
    model, tokens, _ = model_and_tokens(shared_run, "KING:\nMy lord the night is long.\n" * 40)
    rms = gradient_rms(model, tokens, 8, streams=2, segments=4)
    tally = Tally()

    def fails() -> None:
        while tally.done < 16:  # once the other has read two segments
            time.sleep(0.001)
        raise RuntimeError("a stream failed")

    def reads() -> np.ndarray:
        return DynamicReader(model, rms).scores(tokens, RATES, tally=tally)

    for jobs in ([fails, reads], [reads, fails]):  # whichever fails, the wait hears it at once
        tally.done = 0
        tally.stop.clear()
        with pytest.raises(RuntimeError, match="a stream failed"):
            in_parallel(jobs, 2, tally)
        assert tally.stop.is_set() and 16 <= tally.done < len(tokens) - 1  # it stopped long before the end
        with pytest.raises(Stopped):
            tally.add(1)
