"""Magnitude pruning: remove the smallest |W| in each output row (or N:M group).

The baseline of the Wanda and SparseGPT papers; needs no calibration data.
"""
from __future__ import annotations

import torch
from torch import nn

from .mask import apply_mask, make_mask


def score(weight: torch.Tensor) -> torch.Tensor:
    """Keep score |W_ij|, shape (out, in)."""
    return weight.detach().abs().float()


@torch.no_grad()
def prune_linear(linear: nn.Linear, stats=None, *, sparsity: float,
                 pattern: tuple[int, int] | None = None) -> None:
    """Zero the lowest-|W| weights of ``linear`` in place (``stats`` is unused)."""
    apply_mask(linear, make_mask(score(linear.weight), sparsity, pattern))
