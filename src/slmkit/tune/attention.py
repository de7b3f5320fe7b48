"""Causal self-attention for training on a CPU, in query blocks that skip the keys after them.

PyTorch's CPU attention kernels (flash and math) compute the full T x T score matrix
whenever a mask is given, and packed training batches always give one (documents
restart inside a row, so attention is block-diagonal as well as causal). Cut into
query blocks of ``BLOCK`` rows, block i only needs keys ``0 .. end of block i``: at
T = 512 and 64-row blocks that is 56% of the score matrix, as plain matmuls and a
softmax that ``torch.compile`` fuses. Forward + backward of one SmolLM2 layer at
4 x 512 tokens: 22 ms against 57 ms for the flash kernel (``bench/attention.py``).

The mask reaches the blocks as an additive fp32 bias (0 where a query may attend, a
large negative number where not), made once per forward by the mask function registered
with the attention: a boolean mask read inside the softmax makes the fused kernel about
six times slower on this path than the same softmax with a bias added.

The cost is memory: the backward keeps the probabilities of each block (bf16), about
``B * heads * T^2`` bytes per layer, where the flash kernel keeps one number per row
(the backward itself is written out in ``_QueryBlock``: nothing is recomputed).
So the blocked form is used only while gradients are on and that stays under
``MAX_SCORE_BYTES`` per layer; otherwise, and for everything it does not cover
(dropout, attention sinks, a KV cache, non-causal layers), the call goes to PyTorch's
``scaled_dot_product_attention`` exactly as transformers' ``sdpa`` does.

    with blocked_attention_for(model):      # what the training loop does
        loss = loss_fn(model, batch)
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn

NAME = "slmkit_blocked"
BLOCK = 64
MAX_SCORE_BYTES = 64 * 2**20          # probabilities kept per layer for the backward


# masked scores: finite, and exact in bf16 too, so a row with no key left gets a uniform
# softmax (as transformers' eager attention) rather than NaN
NEG = torch.finfo(torch.bfloat16).min


def mask_bias(mask: torch.Tensor) -> torch.Tensor:
    """(..., T, T) fp32 additive bias from a boolean keep-mask: 0 where kept, ``NEG`` where not."""
    return torch.where(mask, torch.zeros((), dtype=torch.float32, device=mask.device),
                       torch.tensor(NEG, dtype=torch.float32, device=mask.device))


def _block_probs(qi, k, keep, scale, groups, dtype, softcap=None) -> torch.Tensor:
    """Probabilities of one block of queries, (B, Hkv, G*n, e), in ``dtype`` (the values').

    ``keep`` is the block's additive bias (B, 1, 1, n, e), or a boolean (n, e) causal
    keep-mask when the layer has no mask."""
    s = (qi @ k.transpose(-1, -2)).float() * scale                      # (B, Hkv, G*n, e)
    if softcap:
        s = softcap * torch.tanh(s / softcap)
    s = s.unflatten(2, (groups, -1))
    s = s.masked_fill(~keep, NEG) if keep.dtype == torch.bool else s + keep
    return s.flatten(2, 3).softmax(-1).to(dtype)


class _QueryBlock(torch.autograd.Function):
    """Attention of one block of queries: ``o = softmax(mask(q k^T * scale)) v``.

    The backward keeps only the probabilities in the inputs' dtype (bf16 in training)
    and uses ``rowsum(dP * P) = rowsum(dO * O)``, so no fp32 score matrix is stored
    and none is recomputed."""

    @staticmethod
    def forward(ctx, qi, k, v, keep, scale, groups):
        p = _block_probs(qi, k, keep, scale, groups, v.dtype)
        o = p @ v
        ctx.save_for_backward(qi, k, v, p, o)
        ctx.scale = scale
        return o

    @staticmethod
    def backward(ctx, do):
        qi, k, v, p, o = ctx.saved_tensors
        dv = p.transpose(-1, -2) @ do
        dp = do @ v.transpose(-1, -2)
        rowdot = (do.float() * o.float()).sum(-1, keepdim=True)
        ds = (p.float() * (dp.float() - rowdot) * ctx.scale).to(qi.dtype)
        return ds @ k, ds.transpose(-1, -2) @ qi, dv, None, None, None


def blocked_causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                             mask: torch.Tensor | None, scale: float, block: int = BLOCK,
                             softcap: float | None = None) -> torch.Tensor:
    """Causal attention, one block of queries at a time.

    Args:
        q: (B, Hq, T, D) queries.
        k, v: (B, Hkv, T, D) keys and values; Hq must be a multiple of Hkv (grouped
            queries share a key head without copying it).
        mask: (B, 1, T, T) where a query may attend (already causal, e.g.
            block-diagonal per packed document or with a sliding window): bool, True
            where kept, or an fp32 additive bias as ``mask_bias`` makes; or None for
            plain causal attention.
        scale: factor on the scores (usually D ** -0.5).
        block: query rows per block.
        softcap: Gemma-2 style cap on the scores, ``c * tanh(s / c)`` (then autograd
            differentiates the block as written instead of ``_QueryBlock``'s backward).

    Returns:
        (B, Hq, T, D) attention output, in q's dtype.
    """
    b, hq, t, d = q.shape
    hkv = k.shape[1]
    g = hq // hkv
    if mask is not None and mask.dtype == torch.bool:
        mask = mask_bias(mask)
    outs = []
    for i in range(0, t, block):
        e = min(i + block, t)
        n = e - i
        qi = q[:, :, i:e].unflatten(1, (hkv, g)).flatten(2, 3)          # (B, Hkv, G*n, D)
        if mask is None:
            keep = (torch.arange(e, device=q.device)[None, :]
                    <= torch.arange(i, e, device=q.device)[:, None])
        else:
            keep = mask[:, :, None, i:e, :e]                            # (B, 1, 1, n, e)
        if softcap:
            o = _block_probs(qi, k[:, :, :e], keep, scale, g, v.dtype, softcap) @ v[:, :, :e]
        else:
            o = _QueryBlock.apply(qi, k[:, :, :e], v[:, :, :e], keep, scale, g)
        outs.append(o.unflatten(2, (g, n)).flatten(1, 2))
    return torch.cat(outs, 2)


def _usable(module, query, key, attention_mask, dropout, kwargs) -> bool:
    b, hq, t, _ = query.shape
    if not torch.is_grad_enabled() or dropout or key.shape[2] != t or t < 2:
        return False
    if kwargs.get("s_aux") is not None or kwargs.get("position_bias") is not None:
        return False
    if hq % key.shape[1] or not getattr(module, "is_causal", True):
        return False
    if attention_mask is not None and (attention_mask.dtype not in (torch.bool, torch.float32)
                                       or attention_mask.shape[1] != 1
                                       or attention_mask.shape[-2:] != (t, t)):
        return False
    return b * hq * t * t * 2 <= MAX_SCORE_BYTES


def attention_forward(module: nn.Module, query: torch.Tensor, key: torch.Tensor,
                      value: torch.Tensor, attention_mask: torch.Tensor | None,
                      dropout: float = 0.0, scaling: float | None = None, **kwargs):
    """transformers' attention interface: (B, H, T, D) inputs -> ((B, T, H, D), None)."""
    if not _usable(module, query, key, attention_mask, dropout, kwargs):
        from transformers.integrations.sdpa_attention import sdpa_attention_forward
        if attention_mask is not None and attention_mask.is_floating_point():
            attention_mask = attention_mask.to(query.dtype)       # sdpa: bias in q's dtype
        return sdpa_attention_forward(module, query, key, value, attention_mask,
                                      dropout=dropout, scaling=scaling, **kwargs)
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    out = blocked_causal_attention(query, key, value, attention_mask, scale,
                                   softcap=kwargs.get("softcap"))
    return out.transpose(1, 2).contiguous(), None


def bias_mask(*args, **kwargs) -> torch.Tensor | None:
    """transformers' mask function for this attention: sdpa's boolean mask (None where
    plain causal attention needs none) as an fp32 additive bias, made once per forward."""
    from transformers.masking_utils import sdpa_mask
    kwargs.pop("dtype", None)
    mask = sdpa_mask(*args, **kwargs)
    return None if mask is None else mask_bias(mask)


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS
    AttentionInterface.register(NAME, attention_forward)
    ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, bias_mask)


@contextmanager
def blocked_attention_for(model: nn.Module, enabled: bool = True):
    """Within the block, every transformers model inside ``model`` that uses ``sdpa``
    attention uses the blocked form instead (which hands back to sdpa where it does not
    apply); yields how many models were switched."""
    from transformers import PreTrainedModel
    switched = []
    if enabled:
        _register()
        for m in model.modules():
            cfg = getattr(m, "config", None)
            if (isinstance(m, PreTrainedModel) and cfg is not None
                    and getattr(cfg, "_attn_implementation", None) == "sdpa"
                    and all(cfg is not c for c, _ in switched)):
                switched.append((cfg, cfg._attn_implementation))
                cfg._attn_implementation = NAME
    try:
        yield len(switched)
    finally:
        for cfg, old in switched:
            cfg._attn_implementation = old
