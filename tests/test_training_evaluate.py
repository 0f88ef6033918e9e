import json
from dataclasses import replace

import numpy as np
import pytest

from charlstm.config import EvalConfig
from charlstm.data.batches import split_tokens
from charlstm.data.corpus import load_corpus
from charlstm.data.sources import resolve_corpus
from charlstm.errors import UserError
from charlstm.store.checkpoint import load_checkpoint
from charlstm.training.evaluate import evaluate, evaluate_checkpoint
from charlstm.training.loop import train
from charlstm.training.run import new_run


@pytest.fixture
def shared_model(shared_run):
    checkpoint = load_checkpoint(shared_run)
    tokens = load_corpus(resolve_corpus(checkpoint.train_config.corpus)).tokens
    return checkpoint, split_tokens(tokens, checkpoint.train_config.val_fraction)[1]


def test_validation_loss_equals_independent_evaluation(tiny_train, tiny_model):
    run = new_run(replace(tiny_train, max_steps=6), tiny_model)
    result = train(run)
    again = evaluate(run.learner.model, run.data.val_tokens, run.tcfg.seq_len)
    assert again.loss == pytest.approx(result.last_val_loss, rel=1e-6)
    assert again.chars > 0.95 * len(run.data.val_tokens)


def test_evaluation_scores_every_predictable_character(shared_model):
    checkpoint, val = shared_model
    model = checkpoint.build_model()
    for n in (2, 17, 1000, 1999):
        assert evaluate(model, val[:n], seq_len=16).chars == n - 1
    one = evaluate(model, val, seq_len=16, streams=1)
    many = evaluate(model, val, seq_len=16, streams=8)
    assert one.chars == many.chars and abs(one.loss - many.loss) < 0.05


def test_evaluation_hardly_depends_on_chunking(shared_model):
    checkpoint, val = shared_model
    model = checkpoint.build_model()
    losses = [evaluate(model, val, seq_len=n).loss for n in (8, 32, 128)]
    assert max(losses) - min(losses) < 0.02, losses


def test_result_figures():
    from charlstm.training.evaluate import EvalResult

    result = EvalResult(loss=np.log(4), chars=10)
    assert result.bpc == pytest.approx(2.0) and result.perplexity == pytest.approx(4.0)
    assert json.loads(json.dumps(result.to_dict())) == {"loss": np.log(4), "bpc": 2.0, "perplexity": 4.0, "chars": 10}


def test_checkpoint_on_its_own_split_or_another_text(shared_run, shared_model, tmp_path):
    checkpoint, val = shared_model
    default = evaluate_checkpoint(shared_run, EvalConfig())
    assert default.split == "val" and default.result.chars == len(val) - 1
    assert default.result.loss == pytest.approx(evaluate(checkpoint.build_model(), val).loss)
    whole = evaluate_checkpoint(shared_run, EvalConfig(split="all"))
    train_part = evaluate_checkpoint(shared_run, EvalConfig(split="train"))
    assert whole.result.chars == default.result.chars + train_part.result.chars + 1
    other = tmp_path / "other.txt"
    other.write_text("KING:\nThe king is my lord.\n" * 20, encoding="utf-8")
    report = evaluate_checkpoint(shared_run, EvalConfig(corpus=str(other)))
    assert report.split == "all" and report.corpus == str(other) and report.result.chars == other.stat().st_size - 1
    unseen = tmp_path / "unseen.txt"
    unseen.write_text("Ωmega text never seen\n" * 50, encoding="utf-8")
    with pytest.raises(UserError, match=r"corpus '.*unseen.txt' has characters the model never saw: 'x', 'Ω'"):
        evaluate_checkpoint(shared_run, EvalConfig(corpus=str(unseen)))
    one = tmp_path / "one.txt"
    one.write_text("K", encoding="utf-8")
    with pytest.raises(UserError, match="expected at least 2"):
        evaluate_checkpoint(shared_run, EvalConfig(corpus=str(one)))


def test_version_1_checkpoint_scores_as_the_code_that_wrote_it(v1_folder):
    report = evaluate_checkpoint("v1_run/last.pt", EvalConfig())
    assert report.result.chars == 1199  # the figure recorded in tests/fixtures/v1/README.md
    assert report.result.loss == pytest.approx(3.4587187015383916, abs=1e-5)


def test_encoding_applies_to_the_text_measured(tmp_path, corpus_file):
    latin = tmp_path / "latin.txt"
    latin.write_bytes(("Café au lait, garçon.\n" * 600).encode("latin-1"))
    tiny = dict(hidden=16, embedding=8, seq_len=16, batch_size=4, precision="fp32", sample_chars=0)
    from charlstm import api

    api.train(str(latin), encoding="latin-1", out=str(tmp_path / "run"), max_steps=2, **tiny)
    own = evaluate_checkpoint(tmp_path / "run", EvalConfig())  # the run's own encoding, by default
    assert own.split == "val" and own.result.chars > 1000
    utf8 = tmp_path / "utf8.txt"
    utf8.write_text("Café au lait.\n" * 20, encoding="utf-8")
    assert evaluate_checkpoint(tmp_path / "run", EvalConfig(corpus=str(utf8))).result.chars == 20 * 14 - 1
    with pytest.raises(UserError, match="not valid utf-8"):
        evaluate_checkpoint(tmp_path / "run", EvalConfig(corpus=str(latin)))
    again = evaluate_checkpoint(tmp_path / "run", EvalConfig(corpus=str(latin), encoding="latin-1", split="val"))
    assert again.result.loss == pytest.approx(own.result.loss)


def test_a_spread_of_max_chars_measures_close_to_the_whole(shared_model):
    checkpoint, val = shared_model
    model = checkpoint.build_model()
    whole = evaluate(model, val, seq_len=16)
    seen = []
    part = evaluate(model, val, seq_len=16, max_chars=640, on_progress=lambda done, total: seen.append((done, total)))
    assert 600 <= part.chars <= 640 and abs(part.loss - whole.loss) < 0.1
    assert seen[-1][0] == seen[-1][1] == len(seen)
    assert evaluate(model, val, seq_len=16, max_chars=10**9).chars == whole.chars  # more than there is: all of it


def test_a_stop_request_ends_an_evaluation(shared_model):
    from charlstm.training.evaluate import EvalInterrupted

    checkpoint, val = shared_model
    asked = []

    def stop_after_two_chunks() -> bool:
        asked.append(1)
        return len(asked) > 2

    with pytest.raises(EvalInterrupted):
        evaluate(checkpoint.build_model(), val, seq_len=4, should_stop=stop_after_two_chunks)  # 8 chunks
    assert len(asked) == 3


def test_byte_tokens_count_once_per_character():
    import torch

    from charlstm.config import ModelConfig
    from charlstm.data.vocab import CharVocab
    from charlstm.net.model import CharLSTM

    vocab = CharVocab("ab", byte_fallback=True)
    torch.manual_seed(0)
    model = CharLSTM(ModelConfig(vocab_size=len(vocab), embedding=4, hidden=8, layers=1)).eval()
    text = "ab日ab€ab"  # two characters of three bytes each
    tokens = np.array(vocab.encode(text))
    per_token = evaluate(model, tokens, seq_len=4)
    per_char = evaluate(model, tokens, seq_len=4, char_starts=vocab.char_starts())
    assert per_token.chars == len(tokens) - 1 == 11 and per_char.chars == len(text) - 1 == 7
    assert per_char.loss == pytest.approx(per_token.loss * 11 / 7)
