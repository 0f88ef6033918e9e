import copy

import numpy as np
import pytest
import torch

from charlstm.choices import Cell
from charlstm.config import ModelConfig
from charlstm.net.model import CharLSTM, state_size
from charlstm.sampling import kernels
from charlstm.sampling.draw import SamplingRule
from charlstm.sampling.slot_kernels import PARALLEL_MIN
from charlstm.sampling.slots import Slots
from charlstm.sampling.stepper import READ_LIMIT, Stepper, resolve_precision

CELLS = Cell.values()

V = 14


@pytest.fixture(params=CELLS)
def model(request):
    torch.manual_seed(0)
    return CharLSTM(ModelConfig(vocab_size=V, embedding=8, hidden=24, layers=3, dropout=0.2, cell=request.param)).eval()


def stepped_logits(stepper: Stepper, tokens: torch.Tensor, primed: int) -> np.ndarray:
    """Logits (1, T - primed + 1) after priming with the first ``primed`` tokens, then stepping."""
    logits, state = stepper.prime(tokens[:, :primed])
    got = [logits[0]] + [stepper.step(int(tokens[0, t]), state) for t in range(primed, tokens.shape[1])]
    return np.stack(got)[None]


def test_fast_step_matches_the_cells_forward_pass(model):
    tokens = torch.randint(0, V, (1, 12))
    expected, _ = model(tokens)  # (B, T, V) through nn.LSTM, nn.GRU or the peephole module
    got = stepped_logits(Stepper(model), tokens, 4)
    np.testing.assert_allclose(got, expected[:, 3:].detach().numpy(), rtol=1e-5, atol=1e-5)


def test_bf16_step_equals_the_forward_pass_on_bf16_rounded_weights(model):
    """bf16 rounds the matrices read per step; the arithmetic stays fp32 (a tight match)."""
    rounded = copy.deepcopy(model)
    with torch.no_grad():
        for name, p in rounded.named_parameters():
            if name == "head.weight" or "weight_hh" in name or ("weight_ih" in name and not name.endswith("l0")):
                p.copy_(p.bfloat16().float())
    tokens = torch.randint(0, V, (1, 12))
    expected, _ = rounded(tokens)
    got = stepped_logits(Stepper(model, "bf16"), tokens, 4)
    np.testing.assert_allclose(got, expected[:, 3:].detach().numpy(), rtol=1e-5, atol=1e-5)
    exact, _ = model(tokens)
    assert not np.allclose(got, exact[:, 3:].detach().numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_threaded_matrix_vector_path_matches_the_forward_pass(precision, cell):
    """Hidden 128: the matrices are big enough to be split between threads."""
    torch.manual_seed(1)
    model = CharLSTM(ModelConfig(vocab_size=V, embedding=8, hidden=128, layers=2, cell=cell)).eval()
    stepper = Stepper(model, precision)
    assert stepper.arrays[3][0].size * (2 if precision == "bf16" else 1) >= PARALLEL_MIN
    tokens = torch.randint(0, V, (1, 10))
    expected, _ = stepper.model(tokens)  # for bf16, the copy with rounded weights
    got = stepped_logits(stepper, tokens, 1)[0]
    np.testing.assert_allclose(got, expected[0].detach().numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("streams", [1, 3])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("rule", [SamplingRule(1.0), SamplingRule(0.7, top_k=4), SamplingRule(1.2, top_p=0.8)])
def test_drawing_chunks_equals_stepping_one_character_at_a_time(model, streams, precision, rule):
    """Slots draw a chunk per compiled call (a stream alone with its products split between
    threads, several in tiles); each stream's ids are those of drawing and stepping one character
    at a time with its own uniforms."""
    stepper, counts = Stepper(model, precision), (7, 17, 6)
    slots = Slots(stepper, streams)
    try:
        for i in range(streams):
            slots.add(stepper.read([1, 2, 3]), rule, np.random.default_rng(5 + i))
        fast = np.concatenate([slots.draw(n) for n in counts], 1)
    finally:
        slots.close()
    z, row, none = np.empty(V), np.array(rule.args()), np.zeros(V, np.int32)
    for i in range(streams):
        state, rng, slow = stepper.read([1, 2, 3]), np.random.default_rng(5 + i), []
        logits = state.logits[0, :V].copy()
        for u in 1.0 - rng.random(sum(counts)):
            slow.append(kernels.draw(logits, row, none.astype(np.float32), none, none, u, z))
            logits = stepper.step(slow[-1], state)
        assert fast[i].tolist() == slow


def test_a_long_prompt_is_read_in_one_forward_pass_and_a_short_one_by_the_step(model, monkeypatch):
    stepper, calls = Stepper(model), []
    monkeypatch.setattr(stepper, "prime", lambda *a: calls.append(a) or Stepper.prime(stepper, *a))
    ids = torch.randint(0, V, (READ_LIMIT + 1,)).tolist()
    short, long = stepper.start(ids[:-1]), stepper.start(ids)
    assert len(calls) == 1 and calls[0][0].shape == (1, READ_LIMIT + 1)
    assert np.array_equal(short.logits, stepper.read(ids[:-1]).logits)
    np.testing.assert_allclose(long.logits, stepper.read(ids).logits, atol=1e-4)  # either way, the model's state


def test_prime_from_a_given_state_matches_the_forward_pass(model):
    tokens = torch.randint(0, V, (3, 6))
    start = tuple(torch.randn(3, 1, 24) for _ in range(state_size(model.config)))  # (layers, 1, H) each
    expected, _ = model(tokens, tuple(t.expand(-1, 3, -1).contiguous() for t in start))
    logits, _ = Stepper(model).prime(tokens, start)
    np.testing.assert_allclose(logits, expected[:, -1].detach().numpy(), rtol=1e-5, atol=1e-5)


def test_prime_keeps_the_training_mode(model):
    model.train()
    Stepper(model).prime(torch.zeros(1, 3, dtype=torch.long))
    assert model.training


def test_auto_precision_follows_training():
    assert resolve_precision("auto", "bf16") == "bf16"
    assert resolve_precision("auto", "fp32") == "fp32"
    assert resolve_precision("auto", None) == "fp32"
    assert resolve_precision("fp32", "bf16") == "fp32"
