"""CPU attention kernels at the fine-tuning step's shapes: forward + backward time per layer.

SmolLM2-135M's attention at batch 4 x 512 tokens (9 query heads, 3 K/V heads of 64), bf16.
Two masks: plain causal, and "packed": causal within each of several documents packed
into a row (rows of 2-4 documents, as `slm finetune` packs python-docs; transformers
then hands sdpa a (B, 1, T, T) boolean mask). Kernels: PyTorch's flash-attention kernel
(what transformers' ``sdpa`` runs on CPU), its math kernel, a hand-written
matmul/softmax version, that version under torch.compile, and slmkit's query-block
attention (``slmkit.tune.attention``, what the training loop runs) eager and compiled.
Two warm-up calls, then the mean of five.

    .venv/bin/python bench/attention.py
"""
from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from slmkit.tune.attention import blocked_causal_attention, mask_bias

B, H, KV, T, D = 4, 9, 3, 512, 64
DOCS = [[200, 312], [97, 150, 265], [120, 80, 180, 132], [300, 212]]    # lengths per row


def packed_mask() -> torch.Tensor:
    """(B, 1, T, T) bool: causal inside each document of ``DOCS``."""
    doc = torch.tensor([[i for i, n in enumerate(row) for _ in range(n)] for row in DOCS])
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    return ((doc[:, :, None] == doc[:, None, :]) & causal)[:, None]


def best_mean(call, n: int = 5, repeat: int = 1) -> float:
    """Seconds per ``call()``: two warm-up calls, then the best of ``repeat`` means of ``n``."""
    for _ in range(2):
        call()
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        for _ in range(n):
            call()
        best = min(best, (time.perf_counter() - t0) / n)
    return best


def timed(fn, n: int = 5, dtype: torch.dtype = torch.bfloat16, repeat: int = 1) -> float:
    """Seconds of forward + backward of ``fn(q, k, v)`` (``best_mean``)."""
    q = torch.randn(B, H, T, D, dtype=dtype, requires_grad=True)
    k = torch.randn(B, KV, T, D, dtype=dtype, requires_grad=True)
    v = torch.randn(B, KV, T, D, dtype=dtype, requires_grad=True)
    grad = torch.randn(B, H, T, D, dtype=dtype)
    return best_mean(lambda: fn(q, k, v).backward(grad), n, repeat)


def sdpa(backend, mask):
    def fn(q, k, v):
        with sdpa_kernel(backend):
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None,
                                                  enable_gqa=True)
    return fn


def manual(mask):
    keep = torch.ones(T, T, dtype=torch.bool).tril() if mask is None else mask

    def fn(q, k, v):
        k, v = k.repeat_interleave(H // KV, 1), v.repeat_interleave(H // KV, 1)
        scores = (q @ k.transpose(-1, -2)).float() * D ** -0.5
        return torch.softmax(scores.masked_fill(~keep, float("-inf")), -1).to(q.dtype) @ v
    return fn


def blocked(mask):
    # as in training: the model's mask function hands the layers an additive bias, made
    # once per forward
    bias = None if mask is None else mask_bias(mask)
    return lambda q, k, v: blocked_causal_attention(q, k, v, bias, D ** -0.5)


def main() -> None:
    torch.set_num_threads(2)
    for label, mask in (("causal", None), ("packed", packed_mask())):
        for name, fn in (("flash (sdpa)", sdpa(SDPBackend.FLASH_ATTENTION, mask)),
                         ("math (sdpa)", sdpa(SDPBackend.MATH, mask)),
                         ("manual", manual(mask)),
                         ("manual, compiled", torch.compile(manual(mask))),
                         ("slmkit blocked", blocked(mask)),
                         ("slmkit blocked, compiled", torch.compile(blocked(mask)))):
            print(f"{label:6s} {name:25s} {timed(fn) * 1e3:6.1f} ms per layer, forward + backward",
                  flush=True)


if __name__ == "__main__":
    main()
