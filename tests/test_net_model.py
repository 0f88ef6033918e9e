import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from charlstm.choices import Cell
from charlstm.config import ModelConfig
from charlstm.net.dropout import drop_connect, locked_dropout
from charlstm.net.model import CharLSTM, detach_state
from charlstm.net.peephole import PeepholeLayer, PeepholeLSTM

CELLS = Cell.values()


def test_output_shapes_and_state(tiny_model):
    model = CharLSTM(tiny_model)
    tokens = torch.randint(0, tiny_model.vocab_size, (3, 7))
    logits, (h, c) = model(tokens)
    assert logits.shape == (3, 7, tiny_model.vocab_size)
    assert h.shape == c.shape == (tiny_model.layers, 3, tiny_model.hidden)
    h0, c0 = model.init_state(3)
    assert h0.shape == (tiny_model.layers, 3, tiny_model.hidden) and not h0.any()


@pytest.mark.parametrize("cell", CELLS)
def test_state_carries_across_chunks(cell):
    torch.manual_seed(0)
    model = CharLSTM(ModelConfig(vocab_size=11, embedding=4, hidden=8, layers=2, dropout=0.0, cell=cell)).eval()
    tokens = torch.randint(0, 11, (2, 10))
    whole, _ = model(tokens)
    first, state = model(tokens[:, :6])
    second, _ = model(tokens[:, 6:], detach_state(state))
    torch.testing.assert_close(torch.cat([first, second], 1), whole)


@pytest.mark.parametrize("cell", CELLS)
def test_weight_drop_masks_the_recurrent_weights_once_per_chunk_and_only_in_training(cell):
    """In training, the output is that of the same model whose hidden-to-hidden weights carry one
    dropout mask for the whole chunk (DropConnect, not a new mask per step); in eval it is unchanged."""
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=11, embedding=4, hidden=8, layers=2, cell=cell)
    plain, dropped = CharLSTM(config), CharLSTM(replace(config, weight_drop=0.5))
    dropped.load_state_dict(plain.state_dict())
    tokens = torch.randint(0, 11, (3, 9))
    torch.manual_seed(7)
    trained, _ = dropped.train()(tokens)
    torch.manual_seed(7)
    with torch.no_grad():
        for name, weight in plain.rnn.named_parameters():
            if name.startswith("weight_hh"):
                weight.copy_(drop_connect(weight, 0.5))
    torch.testing.assert_close(trained, plain.eval()(tokens)[0])
    trained.sum().backward()
    assert all(getattr(dropped.rnn, f"weight_hh_l{k}").grad.abs().sum() > 0 for k in range(2))
    plain.load_state_dict(dropped.state_dict())
    torch.testing.assert_close(dropped.eval()(tokens)[0], plain(tokens)[0], rtol=0, atol=0)


def test_drop_connect_zeroes_a_share_p_of_the_weights_and_scales_the_rest():
    torch.manual_seed(0)
    weight = torch.rand(400, 300) + 1  # no zeros of its own
    dropped = drop_connect(weight, 0.25)
    kept = dropped != 0
    assert abs((~kept).float().mean().item() - 0.25) < 0.01  # 120,000 draws: the share is within 0.004
    torch.testing.assert_close(dropped[kept], weight[kept] / 0.75)
    assert not torch.equal(kept, drop_connect(weight, 0.25) != 0)  # a new mask each call


def test_locked_dropout_drops_the_same_units_of_a_stream_at_every_step():
    torch.manual_seed(0)
    x = torch.rand(50, 40, 30) + 1  # (T, B, H), no zeros of its own
    dropped = locked_dropout(x, 0.25)
    kept = dropped != 0
    assert torch.equal(kept, kept[:1].expand_as(kept))  # one mask per stream for the whole chunk
    assert not torch.equal(kept[0, 0], kept[0, 1])  # and each stream its own
    assert abs((~kept[0]).float().mean().item() - 0.25) < 0.03  # 1,200 draws
    torch.testing.assert_close(dropped[kept], x[kept] / 0.75)
    assert locked_dropout(x, 0.0) is x


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("weight_drop", [0.0, 0.5])
def test_dropout_is_locked_between_the_layers_and_before_the_head_in_training_only(cell, weight_drop, monkeypatch):
    """A stacked model in training runs its layers one at a time with locked dropout between them
    and before the head: with the masks replaced by the identity (and the same weight-drop masks),
    it computes exactly what the whole stack does in one call."""
    import charlstm.net.model as model_module
    import charlstm.net.peephole as peephole_module

    torch.manual_seed(0)
    config = ModelConfig(vocab_size=11, embedding=4, hidden=8, layers=3, cell=cell, weight_drop=weight_drop)
    plain, dropped = CharLSTM(config), CharLSTM(replace(config, dropout=0.3))
    dropped.load_state_dict(plain.state_dict())
    tokens = torch.randint(0, 11, (5, 9))
    state = tuple(torch.randn_like(t) for t in plain.init_state(5))
    seen = []

    def spy(x, p):
        seen.append((tuple(x.shape), p))
        return x

    for module in (model_module, peephole_module):
        monkeypatch.setattr(module, "locked_dropout", spy)
    for start in (None, state):
        seen.clear()
        torch.manual_seed(7)
        trained, trained_state = dropped.train()(tokens, start)
        assert seen == [((9, 5, 8), 0.3)] * 3  # after layers 1 and 2, and before the head
        torch.manual_seed(7)
        whole, whole_state = plain.train()(tokens, start)  # the same weight-drop masks, drawn alike
        torch.testing.assert_close(trained, whole)
        for a, b in zip(trained_state, whole_state, strict=True):
            torch.testing.assert_close(a, b)
    trained.sum().backward()
    assert all(getattr(dropped.rnn, f"weight_ih_l{k}").grad.abs().sum() > 0 for k in range(3))
    seen.clear()
    dropped.eval()(tokens)
    assert not seen
    monkeypatch.undo()
    torch.manual_seed(7)
    a = dropped.train()(tokens)[0]
    torch.manual_seed(8)
    assert not torch.equal(a, dropped(tokens)[0])  # the masks are real in training


@pytest.mark.parametrize("cell", CELLS)
def test_the_head_reads_the_same_units_dropped_at_every_step_of_a_stream(cell):
    model = CharLSTM(ModelConfig(vocab_size=11, embedding=4, hidden=32, layers=2, cell=cell, dropout=0.5)).train()
    seen = []
    model.head.register_forward_pre_hook(lambda _, inputs: seen.append(inputs[0].detach()))
    model(torch.randint(0, 11, (6, 20)))
    dropped = seen[0] == 0  # (T, B, H): a unit is dropped at every step of its stream, or at none
    assert torch.equal(dropped, dropped[:1].expand_as(dropped)) and 0 < dropped[0].float().mean() < 1


def test_embed_dropout_drops_whole_characters_in_training_only():
    model = CharLSTM(ModelConfig(vocab_size=200, embedding=6, hidden=8, embed_dropout=0.5)).train()
    weight, table = model.embed.weight, model._embedding_weight()
    kept = table.abs().sum(1) > 0  # each row is all zero, or the whole row scaled by 1 / (1 - p)
    assert 0 < kept.sum() < 200
    torch.testing.assert_close(table[kept], weight[kept] * 2)
    assert model.eval()._embedding_weight() is weight


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


def test_gru_state_is_h_alone_and_lstm_weights_keep_their_names():
    gru = CharLSTM(ModelConfig(vocab_size=11, embedding=4, hidden=8, layers=2, cell="gru"))
    _, state = gru(torch.zeros(2, 3, dtype=torch.long))
    assert len(state) == 1 and state[0].shape == (2, 2, 8) and isinstance(gru.rnn, torch.nn.GRU)
    lstm = CharLSTM(ModelConfig(vocab_size=11, embedding=4, hidden=8, layers=2))
    assert "lstm.weight_hh_l1" in lstm.state_dict()


def test_peephole_cell_follows_the_gate_equations():
    """One step of one layer against the equations written out: i and f read c(t-1), o reads c(t)."""
    torch.manual_seed(0)
    cell = PeepholeLSTM(input_size=3, hidden=4, layers=1, dropout=0.0)
    x, h0, c0 = torch.randn(1, 2, 3), torch.randn(1, 2, 4), torch.randn(1, 2, 4)
    out, (h1, c1) = cell(x, (h0, c0))
    z = x[0] @ cell.weight_ih_l0.T + h0[0] @ cell.weight_hh_l0.T + cell.bias_ih_l0 + cell.bias_hh_l0
    zi, zf, zg, zo = z.chunk(4, 1)
    p_i, p_f, p_o = cell.peep_l0
    c = torch.sigmoid(zf + p_f * c0[0]) * c0[0] + torch.sigmoid(zi + p_i * c0[0]) * torch.tanh(zg)
    h = torch.sigmoid(zo + p_o * c) * torch.tanh(c)
    torch.testing.assert_close(c1[0], c)
    torch.testing.assert_close(h1[0], h)
    torch.testing.assert_close(out[0], h)


def test_peephole_backward_through_time_matches_numerical_gradients():
    torch.manual_seed(0)
    steps, batch, hidden = 5, 2, 3
    inputs = [torch.randn(steps, batch, 4 * hidden), torch.randn(4 * hidden, hidden), torch.randn(3, hidden)]
    inputs += [torch.randn(batch, hidden), torch.randn(batch, hidden)]
    inputs = [t.double().requires_grad_() for t in inputs]
    assert torch.autograd.gradcheck(PeepholeLayer.apply, inputs)
