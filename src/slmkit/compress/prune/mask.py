"""Masks from importance scores: per output row, or per N:M group.

A mask is a bool tensor shaped like the weight (out_features, in_features);
``True`` marks a weight to remove. Scores are "keep" scores: the lowest go.
"""
from __future__ import annotations

import torch

from ...errors import SlmError


def parse_pattern(pattern: str | None) -> tuple[int, int] | None:
    """``"2:4"`` -> (2, 4): keep at most N nonzeros in every M consecutive inputs."""
    if pattern in (None, ""):
        return None
    try:
        n, m = (int(p) for p in str(pattern).split(":"))
    except ValueError:
        raise SlmError(f"pattern '{pattern}' is not N:M", "write it like 2:4") from None
    if not 0 < n < m:
        raise SlmError(f"pattern '{pattern}' needs 0 < N < M", "write it like 2:4 or 4:8")
    return n, m


def row_mask(score: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Remove the ``round(sparsity * in)`` lowest-scoring weights of every row."""
    k = int(round(sparsity * score.shape[1]))
    mask = torch.zeros_like(score, dtype=torch.bool)
    if k > 0:
        idx = torch.topk(score, k, dim=1, largest=False).indices
        mask.scatter_(1, idx, True)
    return mask


def nm_mask(score: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Remove the ``m - n`` lowest-scoring weights of every group of ``m`` inputs in a row."""
    rows, cols = score.shape
    if cols % m:
        raise SlmError(f"N:M pattern {n}:{m} does not divide a layer with {cols} inputs",
                       f"use an M that divides {cols}")
    groups = score.reshape(rows, cols // m, m)                 # (rows, groups, m)
    idx = torch.topk(groups, m - n, dim=2, largest=False).indices
    mask = torch.zeros_like(groups, dtype=torch.bool).scatter_(2, idx, True)
    return mask.reshape(rows, cols)


def make_mask(score: torch.Tensor, sparsity: float,
              pattern: tuple[int, int] | None) -> torch.Tensor:
    """The mask for ``score`` (out, in): N:M groups when ``pattern`` is set, else per row."""
    return nm_mask(score, *pattern) if pattern else row_mask(score, sparsity)


@torch.no_grad()
def apply_mask(linear: torch.nn.Linear, mask: torch.Tensor) -> None:
    """Zero the masked weights of ``linear`` in place."""
    linear.weight.data[mask.to(linear.weight.device)] = 0
