"""GPTQ (Frantar et al. 2023, "GPTQ: Accurate Post-Training Quantization for
Generative Pre-trained Transformers").

Layer by layer, on the calibration inputs each decoder layer really sees
(outputs of the already-quantized layers before it), every Linear ``W``
(out, in) is quantized one input column at a time; the rounding error of a
column is spread over the columns not yet quantized so that the layer output
``W X`` changes least:

    H = 2 X X^T (+ damping),     U = chol(H^-1)^T (upper)
    for column j:  q_j = quant(w_j);   e = (w_j - q_j) / U_jj;   w_{j+1:} -= e U_{j, j+1:}

Updates are applied lazily in blocks of 128 columns (Section 3 of the paper);
with ``act_order`` columns are visited by decreasing ``diag(H)``, with the
group scales fixed beforehand from the original weights ("static groups") so
groups stay contiguous in storage.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ...models.arch import arch_of, decoder_layers
from ...models.packed.formats import get_format, quantize_weight
from ...models.packed.qlinear import QuantLinear, set_module
from .rtn import check_targets


@dataclass
class GPTQStats:
    """Per-layer relative output error ``tr(D H D^T) / tr(W H W^T)``, D = W - Q."""

    gptq: dict[str, float] = field(default_factory=dict)
    rtn: dict[str, float] = field(default_factory=dict)


def output_error(w: torch.Tensor, wq: torch.Tensor, h: torch.Tensor) -> float:
    """Relative squared error of the layer output over the calibration inputs."""
    d = (w - wq).double()
    num = torch.einsum("oi,ij,oj->", d, h.double(), d)
    den = torch.einsum("oi,ij,oj->", w.double(), h.double(), w.double())
    return float(num / den.clamp_min(1e-30))


CLIP_GRID = torch.linspace(1.0, 0.7, 31).tolist()


def clipped_params(w: torch.Tensor, bits: int, sym: bool, importance: torch.Tensor | None):
    """Scale/zero (out, 1) of one group ``w`` (out, g) whose range is shrunk per row to the
    factor in ``CLIP_GRID`` that minimises ``sum(importance * (w - deq(q(w)))**2)``.

    Rounding a few outliers to the clipped edge costs less than a coarser grid for all the
    other weights; ``importance`` (g,) weighs each input column (GPTQ uses ``diag(H)``).
    """
    fmt = get_format(bits)
    w = w.float()
    imp = torch.ones(w.shape[1]) if importance is None else importance.float()
    best = torch.full((w.shape[0],), float("inf"))
    scale = zero = None
    for p in CLIP_GRID:
        s, z = fmt.params(w * p, sym)
        q, _, _ = fmt.quantize_blocks(w, s, z)
        err = ((fmt.dequantize_blocks(q, s, z) - w) ** 2 * imp).sum(1)
        better = err < best
        if scale is None:
            scale, zero = s.clone(), z.clone()
        scale[better], zero[better] = s[better], z[better]
        best = torch.minimum(best, err)
    return scale, zero


def group_params(w: torch.Tensor, bits: int, sym: bool, importance: torch.Tensor | None,
                 clip: bool):
    """Scale/zero (out, 1) of one group: by :func:`clipped_params`, or from its full range."""
    return (clipped_params(w, bits, sym, importance) if clip
            else get_format(bits).params(w, sym))


def _group_params(w: torch.Tensor, bits: int, g: int, sym: bool,
                  importance: torch.Tensor | None = None, clip: bool = False):
    """Scale/zero (out, n_groups) from contiguous groups of ``w`` (last one may be short)."""
    pairs = [group_params(w[:, c:c + g], bits, sym,
                          None if importance is None else importance[c:c + g], clip)
             for c in range(0, w.shape[1], g)]
    return torch.cat([p[0] for p in pairs], 1), torch.cat([p[1] for p in pairs], 1)


@torch.no_grad()
def gptq_weight(w: torch.Tensor, h: torch.Tensor, bits: int, group_size: int, sym: bool,
                act_order: bool = False, block: int = 128, damp: float = 0.01,
                clip: bool = False):
    """Quantize one (out, in) weight given the Hessian ``h = 2 X X^T`` (in, in).

    Args:
        w: the weight (any float dtype); not modified.
        h: (in, in) float32 Hessian of the layer-output squared error.
        bits, group_size, sym: the target grid (see ``formats``).
        act_order: visit columns by decreasing ``diag(h)``.
        block: lazy-batch width.
        damp: fraction of ``mean(diag(h))`` added to the diagonal.
        clip: choose each group's range by :func:`clipped_params`, weighted by ``diag(h)``.

    Returns:
        ``(q (out, in) uint8, scale (out, n_groups) fp16, zero (out, n_groups) uint8)``.
    """
    fmt = get_format(bits)
    W = w.detach().float().clone()
    n_out, n_in = W.shape
    g = n_in if group_size <= 0 else group_size
    H = h.clone().float()
    dead = torch.diag(H) == 0                       # inputs that never fire
    H[dead, dead] = 1
    W[:, dead] = 0
    perm = torch.argsort(torch.diag(H), descending=True) if act_order else torch.arange(n_in)
    static = act_order or g == n_in
    scale, zero = _group_params(W, bits, g, sym, torch.diag(H), clip) if static else (
        torch.empty(n_out, -(-n_in // g), dtype=torch.float16),
        torch.empty(n_out, -(-n_in // g), dtype=torch.uint8))
    W, H = W[:, perm], H[perm][:, perm]
    H += damp * torch.mean(torch.diag(H)) * torch.eye(n_in)
    U = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
    Q = torch.zeros(n_out, n_in, dtype=torch.uint8)
    for i1 in range(0, n_in, block):
        i2 = min(i1 + block, n_in)
        W1, U1 = W[:, i1:i2].clone(), U[i1:i2, i1:i2]
        E1 = torch.zeros_like(W1)
        for i in range(i2 - i1):
            col = int(perm[i1 + i])
            gi = col // g
            if not static and col % g == 0:         # group starts: scale from updated weights
                rest = torch.cat([W1[:, i:], W[:, i2:]], 1)[:, :g]
                s, z = group_params(rest, bits, sym, torch.diag(H)[col:col + g], clip)
                scale[:, gi], zero[:, gi] = s[:, 0], z[:, 0]
            s, z = scale[:, gi:gi + 1], zero[:, gi:gi + 1]
            q, _, _ = fmt.quantize_blocks(W1[:, i:i + 1], s, z)
            Q[:, col] = q[:, 0]
            err = (W1[:, i] - fmt.dequantize_blocks(q, s, z)[:, 0]) / U1[i, i]
            W1[:, i:] -= err[:, None] * U1[i, i:][None, :]
            E1[:, i] = err
        W[:, i2:] -= E1 @ U[i1:i2, i2:]
    return Q, scale, zero


# ---------------------------------------------------------------- capture and loop

class _Stop(Exception):
    pass


@torch.no_grad()
def capture_inputs(model: nn.Module, batches: torch.Tensor) -> tuple[list, list[list[dict]]]:
    """Inputs of the first decoder layer, and every layer's keyword arguments, per batch.

    Keyword arguments (rotary embeddings, attention masks) differ per layer in some
    families (Gemma 3 local/global layers), so they are recorded for each layer.

    Returns:
        ``(hidden, kwargs)``: hidden[b] (1, T, d); kwargs[b][layer] a dict.
    """
    layers = decoder_layers(model)
    hidden, kwargs = [], []

    def pre_hook(idx):
        def hook(mod, args, kw):
            kw = dict(kw)
            h = args[0] if args else kw.pop("hidden_states")
            if idx == 0:
                hidden.append(h.detach())
            kwargs[-1].append({k: v for k, v in kw.items() if k != "past_key_values"})
            if idx == len(layers) - 1:
                raise _Stop
        return hook

    handles = [layer.register_forward_pre_hook(pre_hook(i), with_kwargs=True)
               for i, layer in enumerate(layers)]
    try:
        for b in batches:
            kwargs.append([])
            try:
                model(b[None], use_cache=False)
            except _Stop:
                pass
    finally:
        for hd in handles:
            hd.remove()
    return hidden, kwargs


def _layer_out(out):
    return out[0] if isinstance(out, tuple) else out


@torch.no_grad()
def quantize(model: nn.Module, batches: torch.Tensor, bits: int, group_size: int, sym: bool,
             act_order: bool = False, block: int = 128, damp: float = 0.01,
             progress=None, clip: bool = False) -> GPTQStats:
    """GPTQ-quantize every decoder Linear of ``model`` in place.

    Args:
        model: an HF CausalLM (float weights).
        batches: (N, T) calibration token ids.
        bits, group_size, sym, act_order, block, damp, clip: see :func:`gptq_weight`.
        progress: optional callable ``(layer_index, n_layers)``.

    Returns:
        per-linear relative output error of GPTQ and, for comparison, of RTN.
    """
    targets = check_targets(model, bits, group_size)
    layers = decoder_layers(model)
    hidden, kwargs = capture_inputs(model, batches)
    stats = GPTQStats()
    prefix = arch_of(model).layers
    for li, layer in enumerate(layers):
        lins = {n: m for n, m in targets.items() if n.startswith(f"{prefix}.{li}.")}
        hess = _hessians(layer, lins, hidden, [kw[li] for kw in kwargs])
        for name, lin in lins.items():
            w, h = lin.weight.detach().float(), hess[name]
            q, s, z = gptq_weight(w, h, bits, group_size, sym, act_order, block, damp, clip)
            ql = QuantLinear.from_codes(q, s, z, bits, group_size, lin.bias)
            stats.gptq[name] = output_error(w, ql.dequantize(), h)
            rq, rs, rz = quantize_weight(w, bits, group_size, sym)
            rtn = QuantLinear.from_codes(rq, rs, rz, bits, group_size)
            stats.rtn[name] = output_error(w, rtn.dequantize(), h)
            set_module(model, name, ql.to(lin.weight.device))
        hidden = [_layer_out(layer(x, **kw[li])) for x, kw in zip(hidden, kwargs)]
        if progress:
            progress(li + 1, len(layers))
    return stats


def _hessians(layer: nn.Module, lins: dict[str, nn.Linear], hidden: list, kwargs: list) -> dict:
    """``H = 2 / n * sum_x x x^T`` over all calibration tokens for each Linear input."""
    hess = {n: torch.zeros(m.in_features, m.in_features) for n, m in lins.items()}
    count = {n: 0 for n in lins}

    def hook(name):
        def fn(mod, args, out):
            x = args[0].detach().reshape(-1, args[0].shape[-1]).float()   # (tokens, in)
            n_old, n_new = count[name], x.shape[0]
            hess[name].mul_(n_old / (n_old + n_new)).addmm_(x.t(), x, alpha=2 / (n_old + n_new))
            count[name] = n_old + n_new
        return fn

    handles = [m.register_forward_hook(hook(n)) for n, m in lins.items()]
    try:
        for x, kw in zip(hidden, kwargs):
            layer(x, **kw)
    finally:
        for hd in handles:
            hd.remove()
    return hess
