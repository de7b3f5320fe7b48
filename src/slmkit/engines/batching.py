"""What a batched engine offers the server's scheduler, and the prompt-prefix reuse they share.

A batched engine holds ``n_slots`` sequences, each with its own KV cache (a
sequence id in llama.cpp's pool, a list of tensors in PyTorch). The scheduler
calls ``decode`` once per step with a :class:`Feed` per sequence it advances:
a prefill chunk of a prompt, or the token sampled last. The engine appends
those tokens to the slot's cache and samples a token for each feed that asks.

A slot keeps its cache after its request ends: a later prompt that starts
with the same tokens (a system prompt, the earlier turns of a chat) reads
only what differs, starting from the longest prefix cached in any slot.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(eq=False)
class Feed:
    """Tokens to append to one slot's cache in this step; ``sample``: return the next token."""

    slot: int
    tokens: list[int]
    sample: bool


class PrefixSlots:
    """Slot bookkeeping with prefix reuse; subclasses edit their own caches.

    Subclasses implement ``_truncate(slot, n)`` (keep the first ``n`` positions)
    and ``_copy_prefix(src, dst, n)`` (make ``dst`` hold ``src``'s first ``n``).
    """

    def __init__(self, n_slots: int):
        self.n_slots = n_slots
        self.cached: list[list[int]] = [[] for _ in range(n_slots)]   # tokens in each cache
        self.last_used = [0] * n_slots
        self.clock = 0
        self.reused_tokens = 0          # prompt tokens served from the cache (metrics)

    def start(self, free: list[int], prompt: list[int]) -> tuple[int, int]:
        """Pick a free slot for ``prompt`` and fill its cache with the longest cached prefix.

        Returns (slot, tokens of ``prompt`` already cached). At least the last
        prompt token is always left to decode, since its logits give the first
        sampled token.
        """
        limit = len(prompt) - 1
        common = [_common_prefix(c, prompt, limit) for c in self.cached]
        slot = max(free, key=lambda s: (common[s], -self.last_used[s]))
        src = max(range(self.n_slots), key=lambda s: common[s])
        n = common[slot]
        if common[src] > n:
            n = common[src]
            self._copy_prefix(src, slot, n)
        else:
            self._truncate(slot, n)
        self.cached[slot] = list(prompt[:n])
        self.clock += 1
        self.last_used[slot] = self.clock
        self.reused_tokens += n
        return slot, n

    def release(self, slot: int) -> None:
        """The slot's request ended; its cache stays for prefix reuse."""

    def _truncate(self, slot: int, n: int) -> None:
        raise NotImplementedError

    def _copy_prefix(self, src: int, dst: int, n: int) -> None:
        raise NotImplementedError


def _common_prefix(a: list[int], b: list[int], limit: int) -> int:
    n = min(len(a), len(b), limit)
    for i in range(n):
        if a[i] != b[i]:
            return i
    return max(n, 0)
