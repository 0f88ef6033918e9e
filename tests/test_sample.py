import math

import pytest
import torch

from charlstm.config import ModelConfig
from charlstm.corpus import CharVocab
from charlstm.errors import UserError
from charlstm.model import CharLSTM
from charlstm.sample import Stepper, generate, next_tokens, prepare_prompt, top_k_filter, top_p_filter

VOCAB = CharVocab("\nabcdefgh:ABC ")


@pytest.fixture
def model():
    torch.manual_seed(0)
    return CharLSTM(ModelConfig(vocab_size=len(VOCAB), embedding=8, hidden=24, layers=3, dropout=0.2)).eval()


def test_fast_step_matches_nn_lstm(model):
    tokens = torch.randint(0, len(VOCAB), (5, 12))
    expected, _ = model(tokens)  # (B, T, V) through nn.LSTM
    stepper = Stepper(model)
    logits, state = stepper.prime(tokens[:, :4])
    got = [logits]
    for t in range(4, 12):
        logits, state = stepper.step(tokens[:, t], state)
        got.append(logits)
    torch.testing.assert_close(torch.stack(got, 1), expected[:, 3:], rtol=1e-5, atol=1e-5)


def test_same_seed_same_text_and_different_seeds_differ(model):
    def draw(seed):
        gen = torch.Generator().manual_seed(seed)
        return "".join(generate(model, VOCAB, "ab", 80, 1.0, generator=gen))

    assert draw(3) == draw(3)
    assert draw(3) != draw(4)
    assert len(draw(5)) == 80


def test_temperature_zero_is_greedy(model):
    text = "".join(generate(model, VOCAB, "abc", 20, 0.0))
    ids = VOCAB.encode("abc")
    expected = ""
    for _ in range(20):
        logits, _ = model(torch.tensor([ids]))
        nxt = int(logits[0, -1].argmax())
        expected += VOCAB.chars[nxt]
        ids.append(nxt)
    assert text == expected


def test_top_k_keeps_k_largest():
    logits = torch.tensor([[0.1, 3.0, 2.0, -1.0, 2.5]])
    kept = top_k_filter(logits, 2)
    assert torch.isfinite(kept).tolist() == [[False, True, False, False, True]]
    assert torch.equal(top_k_filter(logits, 0), logits)
    gen = torch.Generator().manual_seed(0)
    draws = {int(next_tokens(logits, 5.0, top_k=2, generator=gen)) for _ in range(200)}
    assert draws == {1, 4}


def test_top_p_keeps_smallest_nucleus():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    logits = probs.log()
    assert torch.isfinite(top_p_filter(logits, 0.7)).tolist() == [[True, True, False, False]]
    assert torch.isfinite(top_p_filter(logits, 0.8)).tolist() == [[True, True, False, False]]
    assert torch.isfinite(top_p_filter(logits, 0.81)).tolist() == [[True, True, True, False]]
    assert torch.isfinite(top_p_filter(logits, 0.01)).tolist() == [[True, False, False, False]]
    assert torch.equal(top_p_filter(logits, 1.0), logits)


def test_sampling_follows_the_distribution():
    logits = torch.tensor([[math.log(0.8), math.log(0.2)]])
    gen = torch.Generator().manual_seed(0)
    draws = next_tokens(logits.expand(4000, 2), 1.0, generator=gen)
    assert abs(draws.float().mean().item() - 0.2) < 0.03


def test_prompt_with_unknown_characters():
    with pytest.raises(UserError, match="'é'.*--unknown skip"):
        prepare_prompt(VOCAB, "abé", "error")
    assert prepare_prompt(VOCAB, "abé", "skip") == ("ab", ["é"])


def test_empty_prompt_and_zero_length(model):
    assert "".join(generate(model, VOCAB, "", 0, 1.0)) == ""
    assert len("".join(generate(model, VOCAB, "", 7, 1.0))) == 7


def test_tiny_temperature_does_not_overflow():
    logits = torch.tensor([[50.0, 49.0, -3.0]])
    gen = torch.Generator().manual_seed(0)
    assert int(next_tokens(logits, 1e-40, generator=gen)) == 0
