"""Learning-rate schedules: linear warm-up, then cosine, linear or constant decay."""
from __future__ import annotations

import math


def lr_factor(step: int, *, warmup_steps: int, max_steps: int, schedule: str,
              min_lr_ratio: float) -> float:
    """Multiplier on the peak learning rate for optimizer step ``step`` (0-based).

    Warm-up rises linearly from 1/(warmup+1) to 1; afterwards the factor decays
    from 1 to ``min_lr_ratio`` at ``max_steps``: cosine
    ``r + (1 - r) * (1 + cos(pi * p)) / 2`` or linear ``1 - (1 - r) * p``,
    with p the fraction of decay steps done.
    """
    if step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    if schedule == "constant":
        return 1.0
    decay = max(1, max_steps - warmup_steps)
    p = min(1.0, (step - warmup_steps) / decay)
    if schedule == "cosine":
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * p))
    if schedule == "linear":
        return 1 - (1 - min_lr_ratio) * p
    raise ValueError(f"unknown schedule '{schedule}'")
