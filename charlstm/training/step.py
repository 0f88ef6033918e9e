"""One optimizer step of truncated backpropagation through time: what it updates (the learner)
and the step itself, which takes the carried state and returns the new one."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from charlstm.device import autocast
from charlstm.net.model import CharLSTM, State, detach_state
from charlstm.training.distributed import SINGLE, Processes

BETAS = (0.9, 0.99)  # a shorter second-moment memory than the usual 0.999: 1.488 vs 1.491 in the 120 s sweep


@dataclass
class Learner:
    """What a training step updates, and how: the model, the module a step calls (the model, or
    DistributedDataParallel around it, which averages every process's gradients), the optimizer,
    and where, in which precision and with which clipping the step runs."""

    model: CharLSTM
    net: torch.nn.Module
    optimizer: torch.optim.Optimizer
    device: torch.device
    precision: str
    grad_clip: float  # 0: off
    char_starts: torch.Tensor | None = None  # (V,) bool: ids that begin a character; None without byte tokens

    @classmethod
    def of(
        cls,
        model: CharLSTM,
        optimizer: torch.optim.Optimizer,
        precision: str,
        grad_clip: float,
        char_starts: torch.Tensor | None = None,
        procs: Processes = SINGLE,
    ) -> Learner:
        device = model.head.weight.device
        return cls(model, _wrapped(model, procs, device), optimizer, device, precision, grad_clip, char_starts)


def make_optimizer(model: CharLSTM, lr: float, weight_decay: float, device: torch.device) -> torch.optim.Optimizer:
    """AdamW with weight decay on matrices only; fused where this torch offers it."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    try:
        return torch.optim.AdamW(groups, lr=lr, betas=BETAS, fused=device.type in ("cpu", "cuda"))
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(groups, lr=lr, betas=BETAS, foreach=True)


def _wrapped(model: CharLSTM, procs: Processes, device: torch.device) -> torch.nn.Module:
    """The model as a training step calls it: itself, or in DistributedDataParallel."""
    if not procs.many:
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def train_step(
    learner: Learner, x: torch.Tensor, y: torch.Tensor, state: State | None, lr: float, freeze_embedding: bool = False
) -> tuple[torch.Tensor, State]:
    """One optimizer step on chunk (x, y), each (B, T), from the carried ``state``, minimising the
    mean loss per token. Returns (2,): the loss summed over the chunk in nats and the characters
    predicted (the tokens, less the byte tokens that continue a character), so that logs are per
    character; and the new state, detached. ``freeze_embedding``: the embedding gets no gradient,
    so the optimizer leaves it as it is (no update, no weight decay, no moment change)."""
    for group in learner.optimizer.param_groups:
        group["lr"] = lr
    state = detach_state(state) if state is not None else None
    with autocast(learner.device, learner.precision):
        logits, new_state = learner.net(x, state)  # (B, T, V)
    loss = F.cross_entropy(logits.flatten(0, 1).float(), y.flatten())
    learner.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if freeze_embedding:
        learner.model.embed.weight.grad = None
    if learner.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(learner.model.parameters(), learner.grad_clip, foreach=True)
    learner.optimizer.step()
    chars = y.numel() if learner.char_starts is None else learner.char_starts[y].sum()
    summed = torch.stack([loss.detach() * y.numel(), torch.as_tensor(chars, dtype=loss.dtype, device=loss.device)])
    return summed, detach_state(new_state)
