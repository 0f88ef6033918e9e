import math

import torch
import torch.nn.functional as F

from charlstm.config import ModelConfig
from charlstm.model import CharLSTM, detach_state


def test_output_shapes_and_state(tiny_model):
    model = CharLSTM(tiny_model)
    tokens = torch.randint(0, tiny_model.vocab_size, (3, 7))
    logits, (h, c) = model(tokens)
    assert logits.shape == (3, 7, tiny_model.vocab_size)
    assert h.shape == c.shape == (tiny_model.layers, 3, tiny_model.hidden)
    h0, c0 = model.init_state(3)
    assert h0.shape == (tiny_model.layers, 3, tiny_model.hidden) and not h0.any()


def test_state_carries_across_chunks():
    torch.manual_seed(0)
    model = CharLSTM(ModelConfig(vocab_size=11, embedding=4, hidden=8, layers=2, dropout=0.0)).eval()
    tokens = torch.randint(0, 11, (2, 10))
    whole, _ = model(tokens)
    first, state = model(tokens[:, :6])
    second, _ = model(tokens[:, 6:], detach_state(state))
    torch.testing.assert_close(torch.cat([first, second], 1), whole)


def test_forget_gate_bias_starts_at_one(tiny_model):
    model = CharLSTM(tiny_model)
    h = tiny_model.hidden
    for layer in range(tiny_model.layers):
        total = getattr(model.lstm, f"bias_ih_l{layer}") + getattr(model.lstm, f"bias_hh_l{layer}")
        assert torch.allclose(total[h : 2 * h], torch.ones(h))


def test_initial_loss_is_near_log_vocab():
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=65, embedding=16, hidden=64, layers=2, dropout=0.0)
    model = CharLSTM(cfg)
    tokens = torch.randint(0, 65, (8, 64))
    logits, _ = model(tokens)
    loss = F.cross_entropy(logits.flatten(0, 1), torch.randint(0, 65, (8 * 64,)))
    assert abs(loss.item() - math.log(65)) < 0.1


def test_overfits_one_tiny_batch():
    torch.manual_seed(0)
    model = CharLSTM(ModelConfig(vocab_size=12, embedding=8, hidden=32, layers=2, dropout=0.0))
    x = torch.randint(0, 12, (2, 20))
    y = torch.roll(x, -1, 1)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(150):
        logits, _ = model(x)
        loss = F.cross_entropy(logits.flatten(0, 1), y.flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.05
