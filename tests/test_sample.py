import copy

import numba
import numpy as np
import pytest
import torch

from charlstm import sample as sampling
from charlstm.config import ModelConfig
from charlstm.corpus import CharVocab
from charlstm.errors import UserError
from charlstm.model import CharLSTM
from charlstm.sample import (
    SamplingRule,
    Stepper,
    generate,
    next_tokens,
    prepare_prompt,
    resolve_precision,
    top_k_filter,
    top_p_filter,
)

VOCAB = CharVocab("\nabcdefgh:ABC ")


@pytest.fixture
def model():
    torch.manual_seed(0)
    return CharLSTM(ModelConfig(vocab_size=len(VOCAB), embedding=8, hidden=24, layers=3, dropout=0.2)).eval()


@pytest.mark.parametrize("streams", [1, 5])
def test_fast_step_matches_nn_lstm(model, streams):
    tokens = torch.randint(0, len(VOCAB), (streams, 12))
    expected, _ = model(tokens)  # (B, T, V) through nn.LSTM
    stepper = Stepper(model)
    logits, state = stepper.prime(tokens[:, :4])
    got = [logits]
    for t in range(4, 12):
        logits = stepper.step(tokens[:, t].numpy(), state)
        got.append(logits)
    np.testing.assert_allclose(np.stack(got, 1), expected[:, 3:].detach().numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("streams", [1, 5])
def test_bf16_step_equals_nn_lstm_on_bf16_rounded_weights(model, streams):
    """bf16 rounds the matrices read per step. One stream keeps fp32 arithmetic (tight match);
    many streams also round the products' inputs and outputs, as autocast does (close match)."""
    rounded = copy.deepcopy(model)
    with torch.no_grad():
        for name, p in rounded.named_parameters():
            if name == "head.weight" or "weight_hh" in name or ("weight_ih" in name and not name.endswith("l0")):
                p.copy_(p.bfloat16().float())
    tokens = torch.randint(0, len(VOCAB), (streams, 12))
    expected, _ = rounded(tokens)
    stepper = Stepper(model, "bf16")
    logits, state = stepper.prime(tokens[:, :4])
    got = [logits]
    for t in range(4, 12):
        got.append(stepper.step(tokens[:, t].numpy(), state))
    tolerance = 1e-5 if streams == 1 else 5e-3
    np.testing.assert_allclose(np.stack(got, 1), expected[:, 3:].detach().numpy(), rtol=tolerance, atol=tolerance)
    exact, _ = model(tokens)
    assert not np.allclose(np.stack(got, 1), exact[:, 3:].detach().numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("rule", [SamplingRule(1.0), SamplingRule(0.7, top_k=4), SamplingRule(1.2, top_p=0.8)])
def test_compiled_generation_equals_stepping_one_character_at_a_time(model, monkeypatch, precision, rule):
    monkeypatch.setattr(sampling, "CHUNK", 7)  # several chunks, and a short last one
    stepper, prime = Stepper(model, precision), torch.tensor([[1, 2, 3]])
    fast = np.concatenate(list(sampling.generate_ids(stepper, prime, 30, rule, np.random.default_rng(5))))
    logits, state = stepper.prime(prime)
    rng, slow = np.random.default_rng(5), []
    for _ in range(30):
        slow.append(int(next_tokens(logits, *rule.args(), rng=rng)[0]))
        logits = stepper.step(np.array(slow[-1:]), state)
    assert fast.tolist() == slow


def test_fast_tanh_is_accurate():
    x = np.linspace(-20, 20, 400_001).astype(np.float32)[::97]
    got = np.array([sampling._tanh(v) for v in x])  # float32 scalars: the kernels' own version
    assert any(sig == (numba.float32,) for sig in sampling._tanh.signatures)
    assert np.abs(got - np.tanh(x.astype(np.float64))).max() < 2e-7
    assert sampling._tanh(np.float32(0)) == 0.0 and sampling._tanh(np.float32(-1e-30)) <= 0.0


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_threaded_matrix_vector_path_matches_nn_lstm(precision):
    """Hidden 128: the matrices are big enough to be split between threads."""
    torch.manual_seed(1)
    model = CharLSTM(ModelConfig(vocab_size=len(VOCAB), embedding=8, hidden=128, layers=2)).eval()
    stepper = Stepper(model, precision)
    assert stepper.arrays[2][0].size * (2 if precision == "bf16" else 1) >= sampling.PARALLEL_MIN
    reference = stepper.model  # for bf16, the copy with rounded weights
    tokens = torch.randint(0, len(VOCAB), (1, 10))
    expected, _ = reference(tokens)
    logits, state = stepper.prime(tokens[:, :1])
    got = [logits] + [stepper.step(tokens[:, t].numpy(), state) for t in range(1, 10)]
    np.testing.assert_allclose(np.concatenate(got), expected[0].detach().numpy(), rtol=1e-5, atol=1e-5)


def test_auto_precision_follows_training():
    assert resolve_precision("auto", "bf16") == "bf16"
    assert resolve_precision("auto", "fp32") == "fp32"
    assert resolve_precision("auto", None) == "fp32"
    assert resolve_precision("fp32", "bf16") == "fp32"


def test_prime_keeps_the_training_mode(model):
    model.train()
    Stepper(model).prime(torch.zeros(1, 3, dtype=torch.long))
    assert model.training


def test_same_seed_same_text_and_different_seeds_differ(model):
    def draw(seed):
        return "".join(generate(model, VOCAB, "ab", 80, 1.0, rng=np.random.default_rng(seed)))

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
    logits = np.array([[0.1, 3.0, 2.0, -1.0, 2.5]], dtype=np.float32)
    kept = top_k_filter(logits, 2)
    assert np.isfinite(kept).tolist() == [[False, True, False, False, True]]
    assert np.array_equal(top_k_filter(logits, 0), logits)
    rng = np.random.default_rng(0)
    draws = {int(next_tokens(logits, 5.0, top_k=2, rng=rng)[0]) for _ in range(200)}
    assert draws == {1, 4}
    huge = next_tokens(logits, 1.0, top_k=10**20, rng=np.random.default_rng(3))  # past the vocabulary: off
    assert huge.tolist() == next_tokens(logits, 1.0, rng=np.random.default_rng(3)).tolist()


def test_top_p_keeps_smallest_nucleus():
    logits = np.log(np.array([[0.15, 0.5, 0.05, 0.3]], dtype=np.float32))
    assert np.isfinite(top_p_filter(logits, 0.7)).tolist() == [[False, True, False, True]]
    assert np.isfinite(top_p_filter(logits, 0.79)).tolist() == [[False, True, False, True]]
    assert np.isfinite(top_p_filter(logits, 0.81)).tolist() == [[True, True, False, True]]
    assert np.isfinite(top_p_filter(logits, 0.01)).tolist() == [[False, True, False, False]]
    assert np.array_equal(top_p_filter(logits, 1.0), logits)
    assert np.isfinite(top_p_filter(logits, 0.0)).tolist() == [[False, True, False, False]]  # the top stays
    rng = np.random.default_rng(0)
    assert {int(next_tokens(logits, 1.0, top_p=0.7, rng=rng)[0]) for _ in range(300)} == {1, 3}


def test_sampling_follows_the_distribution():
    logits = np.log(np.tile(np.array([[0.8, 0.2]], dtype=np.float32), (4000, 1)))
    draws = next_tokens(logits, 1.0, rng=np.random.default_rng(0))
    assert abs(draws.mean() - 0.2) < 0.03
    hot = next_tokens(logits, 1e6, rng=np.random.default_rng(1))  # very hot: nearly uniform
    assert abs(hot.mean() - 0.5) < 0.03


def test_prompt_with_unknown_characters():
    with pytest.raises(UserError, match="'é'.*--unknown skip"):
        prepare_prompt(VOCAB, "abé", "error")
    assert prepare_prompt(VOCAB, "abé", "skip") == ("ab", ["é"])


def test_empty_prompt_and_zero_length(model):
    assert "".join(generate(model, VOCAB, "", 0, 1.0)) == ""
    assert len("".join(generate(model, VOCAB, "", 7, 1.0))) == 7


def test_tiny_temperature_does_not_overflow():
    logits = np.array([[49.0, 50.0, -3.0]], dtype=np.float32)
    assert next_tokens(logits, 1e-40, rng=np.random.default_rng(0)).tolist() == [1]


def test_prime_from_a_given_state_matches_nn_lstm(model):
    tokens = torch.randint(0, len(VOCAB), (3, 6))
    h0, c0 = torch.randn(3, 1, 24), torch.randn(3, 1, 24)  # (layers, 1, H), shared by the streams
    expected, _ = model(tokens, (h0.expand(-1, 3, -1).contiguous(), c0.expand(-1, 3, -1).contiguous()))
    logits, state = Stepper(model).prime(tokens, (h0, c0))
    np.testing.assert_allclose(logits, expected[:, -1].detach().numpy(), rtol=1e-5, atol=1e-5)
    cold = "".join(generate(model, VOCAB, "ab", 30, 0.0))
    warm = "".join(generate(model, VOCAB, "ab", 30, 0.0, start=(h0 * 3, c0 * 3)))
    assert cold != warm


def test_compiling_ahead_leaves_the_random_state_alone():
    before = torch.get_rng_state()
    sampling.compile_kernels()
    assert torch.equal(before, torch.get_rng_state())
