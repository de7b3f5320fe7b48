"""Wanda: prune by weight times input activation norm (Sun et al., 2023).

Score S_ij = |W_ij| * ||X_j||_2, where X_j is input channel j over all
calibration tokens; the lowest scores of each output row (or N:M group) go.
No weight update.
"""
from __future__ import annotations

import torch
from torch import nn

from .layerwise import InputStats
from .mask import apply_mask, make_mask


def score(weight: torch.Tensor, stats: InputStats) -> torch.Tensor:
    """Keep score |W_ij| * ||X_j||, shape (out, in)."""
    return weight.detach().abs().float() * stats.sq.sqrt().to(weight.device)[None, :]


@torch.no_grad()
def prune_linear(linear: nn.Linear, stats: InputStats, *, sparsity: float,
                 pattern: tuple[int, int] | None = None) -> None:
    """Zero the lowest-scoring weights of ``linear`` in place."""
    apply_mask(linear, make_mask(score(linear.weight, stats), sparsity, pattern))
