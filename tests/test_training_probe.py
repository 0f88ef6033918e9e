import pytest
import torch

from charlstm.config import ModelConfig
from charlstm.device import bf16_supported
from charlstm.errors import UserError
from charlstm.net.model import CharLSTM
from charlstm.training.probe import choose_precision


def test_auto_precision_picks_a_supported_mode_without_moving_the_rng():
    torch.manual_seed(0)
    model = CharLSTM(ModelConfig(vocab_size=10, embedding=4, hidden=16, layers=2, dropout=0.5))
    batch = torch.randint(0, 10, (4, 20)), torch.randint(0, 10, (4, 20))
    before = torch.get_rng_state()
    chosen = choose_precision("auto", model, batch, torch.device("cpu"))
    assert chosen in ("fp32", "bf16") and torch.equal(before, torch.get_rng_state())
    assert choose_precision("fp32", model, batch, torch.device("cpu")) == "fp32"
    if not bf16_supported(torch.device("cpu")):
        assert chosen == "fp32"
        with pytest.raises(UserError, match="--precision bf16 is not supported"):
            choose_precision("bf16", model, batch, torch.device("cpu"))
