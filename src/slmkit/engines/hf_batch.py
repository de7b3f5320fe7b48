"""Batched decoding on the PyTorch engine, for models that have no GGUF.

Each slot keeps its own keys and values per layer, ``(1, kv_heads, T, head_dim)``.
A step runs the generating sequences together: their caches are left-padded
to the longest and stacked into one ``DynamicCache``, a 2-D attention mask
hides the padding and explicit position ids keep each sequence's rotary
positions; the new key/value column of each row is appended to its slot.
Prompt chunks run one sequence at a time (no padding, nothing to mask).
"""
from __future__ import annotations

import torch
from transformers import DynamicCache

from .base import sample
from .batching import Feed, PrefixSlots
from .hf import HFEngine


class HFBatch(PrefixSlots):
    """``n_slots`` sequences of up to ``ctx`` tokens each on one PyTorch model.

    Args:
        engine: the loaded model.
        n_slots: sequences decoded together.
        ctx: tokens per sequence (prompt + completion).
    """

    def __init__(self, engine: HFEngine, n_slots: int, ctx: int):
        super().__init__(n_slots)
        self.engine = engine
        self.model = engine.model
        self.context_length = ctx
        self.kv: list[list[tuple[torch.Tensor, torch.Tensor]] | None] = [None] * n_slots
        self.samplers: list[tuple[float, float, torch.Generator | None]] = [(0.0, 1.0, None)] * n_slots

    def set_sampler(self, slot: int, temperature: float, top_p: float, seed: int | None) -> None:
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        self.samplers[slot] = (temperature, top_p, gen)

    def _truncate(self, slot: int, n: int) -> None:
        kv = self.kv[slot]
        self.kv[slot] = None if (kv is None or n == 0) else [(k[:, :, :n], v[:, :, :n]) for k, v in kv]

    def _copy_prefix(self, src: int, dst: int, n: int) -> None:
        self.kv[dst] = [(k[:, :, :n], v[:, :, :n]) for k, v in self.kv[src]]

    @torch.inference_mode()
    def decode(self, feeds: list[Feed]) -> dict[int, int]:
        """Append each feed's tokens to its slot; sample for the feeds that ask."""
        out: dict[int, int] = {}
        singles = [f for f in feeds if len(f.tokens) == 1 and self.kv[f.slot] is not None]
        together = singles if len(singles) > 1 else []
        if together:
            out.update(self._step_together(together))
        for f in feeds:
            if any(f is g for g in together):
                continue
            logits = self._step_alone(f)
            if f.sample:
                out[f.slot] = self._sample(f.slot, logits)
        for f in feeds:
            self.cached[f.slot].extend(f.tokens)
        return out

    def _step_alone(self, f: Feed) -> torch.Tensor:
        past = len(self.cached[f.slot])
        cache = DynamicCache(ddp_cache_data=self.kv[f.slot]) if self.kv[f.slot] else DynamicCache()
        dev = self.engine.device
        x = torch.tensor([f.tokens], device=dev)
        pos = torch.arange(past, past + len(f.tokens), device=dev).unsqueeze(0)
        logits = self.model(x, past_key_values=cache, position_ids=pos, use_cache=True,
                            logits_to_keep=1).logits[0, -1]
        self.kv[f.slot] = [(layer.keys, layer.values) for layer in cache.layers]
        return logits

    def _step_together(self, feeds: list[Feed]) -> dict[int, int]:
        lens = [len(self.cached[f.slot]) for f in feeds]
        longest = max(lens)
        layers = []
        for li in range(len(self.kv[feeds[0].slot])):
            ks, vs = [], []
            for f, n in zip(feeds, lens):
                k, v = self.kv[f.slot][li]
                ks.append(_left_pad(k, longest - n))
                vs.append(_left_pad(v, longest - n))
            layers.append((torch.cat(ks), torch.cat(vs)))    # (B, kv_heads, longest, head_dim)
        dev = self.engine.device
        mask = torch.zeros(len(feeds), longest + 1, dtype=torch.long, device=dev)
        for b, n in enumerate(lens):
            mask[b, longest - n:] = 1
        cache = DynamicCache(ddp_cache_data=layers)
        x = torch.tensor([f.tokens for f in feeds], device=dev)         # (B, 1)
        pos = torch.tensor(lens, device=dev).unsqueeze(1)               # (B, 1)
        logits = self.model(x, attention_mask=mask, past_key_values=cache, position_ids=pos,
                            use_cache=True, logits_to_keep=1).logits[:, -1]   # (B, vocab)
        out = {}
        for b, f in enumerate(feeds):
            self.kv[f.slot] = [(torch.cat([k, layer.keys[b:b + 1, :, -1:]], dim=2),
                                torch.cat([v, layer.values[b:b + 1, :, -1:]], dim=2))
                               for (k, v), layer in zip(self.kv[f.slot], cache.layers)]
            if f.sample:
                out[f.slot] = self._sample(f.slot, logits[b])
        return out

    def _sample(self, slot: int, logits: torch.Tensor) -> int:
        temperature, top_p, gen = self.samplers[slot]
        return sample(logits, temperature, top_p, gen)

    def close(self) -> None:
        self.kv = [None] * self.n_slots


def _left_pad(t: torch.Tensor, n: int) -> torch.Tensor:
    """``t`` (1, H, T, D) with ``n`` zero columns in front."""
    if n == 0:
        return t
    return torch.cat([t.new_zeros(t.shape[0], t.shape[1], n, t.shape[3]), t], dim=2)


def kv_bytes_per_token(engine: HFEngine) -> int:
    """Bytes of K and V cache one token takes in every layer, in the model's dtype."""
    cfg = engine.model.config.get_text_config()
    heads = cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    kv_heads = getattr(cfg, "num_key_value_heads", None) or heads
    size = next(engine.model.parameters()).element_size()
    return 2 * size * cfg.num_hidden_layers * kv_heads * head_dim
