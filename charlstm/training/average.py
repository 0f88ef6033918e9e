"""Averaged weights for evaluation, as AWD-LSTM's averaged SGD uses them (Merity et al., 2017):
an exponential moving average of the model's weights, updated after every optimizer step and
kept in fp32 beside the model.

Its horizon follows the budget: ``--average S`` averages over about a share S of the run's
steps, the run's length read from the share of the budget spent so far (so a time budget works
as a step budget does). Until as many steps as the horizon have passed, it is the plain mean of
every step's weights so far (the decay at step t is at most 1 - 1/t), so the starting weights do
not linger in it. The average is part of the run: ``last.pt`` keeps it, and a resumed run goes on
from it exactly.

The averaged weights never read the training text, so the state training carries is another
model's. When ``best.pt`` holds them, it keeps their own warm start for sampling instead: the
state they reached in the evaluation that chose them, reading the validation split from its start.
"""

from __future__ import annotations

import copy

import torch

from charlstm.net.model import CharLSTM, State


def decay(step: int, fraction: float, share: float) -> float:
    """The weight of the old average at optimizer step ``step`` (1, 2, ...), with ``fraction`` of
    the budget spent, over about ``share`` of the run's steps."""
    horizon = share * step / max(fraction, 1e-12)  # steps in the horizon: a share of the run's estimated length
    return min(1.0 - 1.0 / max(horizon, 1.0), 1.0 - 1.0 / max(step, 1))


class Averager:
    """The averaged weights of a model: a copy in eval mode, in fp32, on the model's device."""

    def __init__(self, model: CharLSTM, weights: dict[str, torch.Tensor] | None = None):
        self.model = copy.deepcopy(model).eval().float()
        self.warm: State | None = None  # the state of their last evaluation's first piece, on the CPU
        for p in self.model.parameters():
            p.requires_grad_(False)
        if weights is not None:
            self.model.load_state_dict(weights)

    def update(self, source: CharLSTM, weight_of_old: float) -> None:
        """Move the average towards ``source``'s weights: avg = d * avg + (1 - d) * weights."""
        with torch.no_grad():  # a deep copy lists its parameters in the model's order
            for mine, new in zip(self.model.parameters(), source.parameters(), strict=True):
                mine.lerp_(new, 1.0 - weight_of_old)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The averaged weights, on the CPU, as a checkpoint keeps them."""
        return {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}
