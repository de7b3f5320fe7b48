"""Default slot count and context per slot, sized from the machine's memory.

The KV cache of ``slots`` sequences of ``ctx`` tokens takes
``slots * ctx * kv_bytes_per_token`` bytes (K and V, every layer). The
defaults give it at most a quarter of the memory available now
(``MemAvailable``), so the weights, the compute buffers and the rest of the
machine keep the other three quarters:

- context per slot (``--ctx`` not given): 2048 tokens, capped at the model's
  training context, halved (not below 256) until one slot fits;
- slots: as many as fit, at most 16 (on a CPU, decoding more sequences
  at once adds little throughput but slows every stream) and at least 1.
"""
from __future__ import annotations

import os

DEFAULT_CTX = 2048
MAX_AUTO_SLOTS = 16
MIN_AUTO_CTX = 256
KV_SHARE = 0.25


def available_memory() -> int:
    """Bytes of memory available to new allocations (``MemAvailable``; total RAM as a fallback)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def size_slots(kv_bytes_per_token: int, ctx: int | None, train_ctx: int, slots: int | None,
               memory: int | None = None) -> tuple[int, int]:
    """(slots, context per slot) for a model whose cache takes ``kv_bytes_per_token``.

    Args:
        kv_bytes_per_token: K and V bytes of one token across all layers.
        ctx: tokens per slot asked for, or None to size it from memory.
        train_ctx: the model's training context (0: unknown).
        slots: slots asked for, or None to size them from memory.
        memory: bytes available (default: :func:`available_memory`).
    """
    budget = KV_SHARE * (memory if memory is not None else available_memory())
    if ctx is None:
        ctx = min(DEFAULT_CTX, train_ctx) if train_ctx > 0 else DEFAULT_CTX
        while ctx > MIN_AUTO_CTX and ctx * kv_bytes_per_token > budget:
            ctx //= 2
    elif train_ctx > 0:
        ctx = min(ctx, train_ctx)
    if slots is not None:
        return slots, ctx
    fit = int(budget // max(1, ctx * kv_bytes_per_token))
    return max(1, min(MAX_AUTO_SLOTS, fit)), ctx
