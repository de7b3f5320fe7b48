"""CPU attention kernels at the fine-tuning step's shapes: forward + backward time per layer.

SmolLM2-135M's attention at batch 4 x 512 tokens (9 query heads, 3 K/V heads of 64), bf16,
causal: PyTorch's flash-attention kernel against its math kernel, a hand-written
matmul/softmax version, and that version under torch.compile. Two warm-up calls, then the
mean of five.

    .venv/bin/python bench/attention.py
"""
from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

B, H, KV, T, D = 4, 9, 3, 512, 64
MASK = torch.full((T, T), float("-inf")).triu(1)


def timed(fn, n: int = 5) -> float:
    """Mean seconds of forward + backward of ``fn(q, k, v)``."""
    q = torch.randn(B, H, T, D, dtype=torch.bfloat16, requires_grad=True)
    k = torch.randn(B, KV, T, D, dtype=torch.bfloat16, requires_grad=True)
    v = torch.randn(B, KV, T, D, dtype=torch.bfloat16, requires_grad=True)
    grad = torch.randn(B, H, T, D, dtype=torch.bfloat16)
    for _ in range(2):
        fn(q, k, v).backward(grad)
    t0 = time.perf_counter()
    for _ in range(n):
        fn(q, k, v).backward(grad)
    return (time.perf_counter() - t0) / n


def sdpa(backend):
    def fn(q, k, v):
        with sdpa_kernel(backend):
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    return fn


def manual(q, k, v):
    k, v = k.repeat_interleave(H // KV, 1), v.repeat_interleave(H // KV, 1)
    scores = q @ k.transpose(-1, -2) * D ** -0.5 + MASK
    return torch.softmax(scores.float(), -1).to(q.dtype) @ v


def main() -> None:
    torch.set_num_threads(2)
    for name, fn in (("flash", sdpa(SDPBackend.FLASH_ATTENTION)), ("math", sdpa(SDPBackend.MATH)),
                     ("manual", manual), ("manual, compiled", torch.compile(manual))):
        print(f"{name}: {timed(fn) * 1e3:.1f} ms per layer, forward + backward")


if __name__ == "__main__":
    main()
