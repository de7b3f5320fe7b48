"""SparseGPT: one-shot pruning with an OBS weight update (Frantar & Alistarh, 2023).

For a Linear with weight W (out, in) and calibration inputs X, the layer-wise
loss ||W X - W' X||^2 has Hessian H = 2 X X^T (in, in), shared by all rows.
Columns are visited left to right. Removing weight w_ij costs w_ij^2 / [H^-1]_jj
(the OBS saliency); the error it causes, err_i = w_ij / [H^-1]_jj, is spread
over the not-yet-visited columns of row i as - err_i * [H^-1]_{j, j+1:}.
Using the upper Cholesky factor U of H^-1 (H^-1 = U^T U) in place of H^-1
gives the same sequential updates without re-inverting after each column.
Updates are applied lazily: inside a block of columns immediately, to the
columns right of the block once per block. The mask is chosen block by block
from the updated weights (adaptive mask selection): the lowest saliencies of
the whole block (unstructured) or of each N:M group of each row.
"""
from __future__ import annotations

import torch
from torch import nn

from ...errors import SlmError
from .layerwise import InputStats
from .mask import nm_mask


def inverse_hessian_factor(hessian: torch.Tensor, damp: float) -> tuple[torch.Tensor,
                                                                        torch.Tensor]:
    """Upper Cholesky factor U of (H + damp * mean(diag H) * I)^-1, and the dead inputs.

    Inputs that were always zero (H_jj == 0) get H_jj = 1 so H stays invertible;
    their weights are irrelevant to the loss and are pruned first.
    """
    h = hessian.double().clone()                                # (in, in)
    dead = torch.diag(h) == 0
    h[dead, dead] = 1
    h += damp * torch.diag(h).mean() * torch.eye(h.shape[0], dtype=h.dtype, device=h.device)
    try:
        chol = torch.linalg.cholesky(h)
        hinv = torch.cholesky_inverse(chol)
        u = torch.linalg.cholesky(hinv, upper=True)
    except torch.linalg.LinAlgError as exc:
        raise SlmError("the calibration Hessian is not positive definite",
                       "raise damp (e.g. 0.1) or use more calibration data") from exc
    return u.float(), dead


def _block_mask(w: torch.Tensor, d: torch.Tensor, k: int) -> torch.Tensor:
    """Mask of the ``k`` lowest OBS saliencies w^2 / d^2 anywhere in a block (rows x cols).

    As in the paper, the threshold is shared by the block's rows, so rows may
    differ in sparsity while the layer as a whole hits it exactly.
    """
    mask = torch.zeros(w.numel(), dtype=torch.bool, device=w.device)
    if k > 0:
        sal = (w.pow(2) / d.pow(2)[None, :]).flatten()
        mask[torch.topk(sal, k, largest=False).indices] = True
    return mask.view_as(w)


@torch.no_grad()
def sparsify(weight: torch.Tensor, hessian: torch.Tensor, *, sparsity: float = 0.0,
             pattern: tuple[int, int] | None = None, blocksize: int = 128,
             damp: float = 0.01) -> torch.Tensor:
    """The pruned, error-compensated weight (out, in), in float32.

    Args:
        weight: (out, in) dense weight.
        hessian: (in, in) 2/n X X^T of the Linear's calibration inputs.
        sparsity: fraction of the weights to remove (unstructured).
        pattern: (N, M): keep N of every M consecutive inputs instead.
        blocksize: columns per lazy-update block (a multiple of M).
        damp: dampening, as a fraction of the mean diagonal of H.
    """
    w = weight.detach().float().clone()
    rows, cols = w.shape
    u, dead = inverse_hessian_factor(hessian.to(w.device), damp)
    w[:, dead] = 0
    if pattern:
        n, m = pattern
        if cols % m:
            raise SlmError(f"N:M pattern {n}:{m} does not divide a layer with {cols} inputs",
                           f"use an M that divides {cols}")
        blocksize = max(m, blocksize // m * m)
    total_k = int(round(sparsity * rows * cols))
    done_k = 0                                   # weights removed so far
    for c0 in range(0, cols, blocksize):
        c1 = min(c0 + blocksize, cols)
        w1, u1 = w[:, c0:c1].clone(), u[c0:c1, c0:c1]
        err = torch.zeros_like(w1)                               # (rows, block)
        if pattern:
            mask = torch.zeros_like(w1, dtype=torch.bool)   # filled group by group below
        else:
            # carry rounding so the layer loses exactly round(sparsity * out * in) weights
            k = int(round(sparsity * rows * c1)) - done_k if c1 < cols else total_k - done_k
            mask, done_k = _block_mask(w1, torch.diag(u1), k), done_k + k
        for j in range(c1 - c0):
            if pattern and j % pattern[1] == 0:             # choose this N:M group now
                g = slice(j, j + pattern[1])
                sal = w1[:, g].pow(2) / torch.diag(u1)[g].pow(2)[None, :]
                mask[:, g] = nm_mask(sal, *pattern)
            col, d = w1[:, j], u1[j, j]
            q = torch.where(mask[:, j], torch.zeros_like(col), col)
            e = (col - q) / d                                       # (rows,)
            w1[:, j:] -= e[:, None] * u1[j, j:][None, :]
            w1[:, j] = q
            err[:, j] = e
        w[:, c0:c1] = w1
        w[:, c1:] -= err @ u[c0:c1, c1:]                            # lazy update of the rest
    return w


@torch.no_grad()
def prune_linear(linear: nn.Linear, stats: InputStats, *, sparsity: float,
                 pattern: tuple[int, int] | None = None, blocksize: int = 128,
                 damp: float = 0.01) -> None:
    """Prune ``linear`` in place with SparseGPT from its input statistics."""
    new = sparsify(linear.weight, stats.hessian, sparsity=sparsity, pattern=pattern,
                   blocksize=blocksize, damp=damp)
    linear.weight.data.copy_(new.to(linear.weight.dtype))
