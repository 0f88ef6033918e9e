"""Learning-rate schedules as pure functions of where the run stands.

``progress`` is the fraction of the run's budget already spent (0 at the start, 1 at the
end): the largest of steps/max_steps, epochs/target epochs and seconds/max_time, so a run
bounded by time anneals over its time budget.
"""

from __future__ import annotations

import math

STEP_MILESTONES = (0.5, 0.75)  # "step" divides the rate by 10 at these fractions of the run
STEP_FACTOR = 0.1
PLATEAU_FACTOR = 0.5  # "plateau" halves the rate whenever validation loss fails to improve


def warmup_factor(step: int, warmup_steps: int) -> float:
    """Linear ramp from 1/warmup to 1 over the first ``warmup_steps`` steps."""
    if warmup_steps <= 0 or step >= warmup_steps:
        return 1.0
    return (step + 1) / warmup_steps


def get_lr(
    schedule: str,
    base_lr: float,
    step: int,
    progress: float,
    warmup_steps: int = 0,
    min_lr_ratio: float = 0.0,
    plateau_scale: float = 1.0,
) -> float:
    """Learning rate for ``step`` (0-based) at ``progress`` in [0, 1] of the run."""
    progress = min(max(progress, 0.0), 1.0)
    min_lr = base_lr * min_lr_ratio
    if schedule == "cosine":
        lr = min_lr + 0.5 * (base_lr - min_lr) * (1 + math.cos(math.pi * progress))
    elif schedule == "step":
        lr = base_lr * STEP_FACTOR ** sum(progress >= m for m in STEP_MILESTONES)
    elif schedule == "plateau":
        lr = max(base_lr * plateau_scale, min_lr)
    elif schedule == "constant":
        lr = base_lr
    else:
        raise ValueError(f"unknown schedule {schedule!r}")
    return lr * warmup_factor(step, warmup_steps)


def plateau_update(scale: float, val_loss: float, best_before: float) -> float:
    """New plateau scale after an evaluation: halved when the loss did not improve."""
    return scale if val_loss < best_before else scale * PLATEAU_FACTOR
