"""PyTorch engine: any model ``slmkit.load`` accepts, run by transformers."""
from __future__ import annotations

from typing import Iterator

import torch

from ..device import model_device
from ..models.io import SLM
from .base import GenStats, sample, track


class HFEngine:
    name = "pytorch"

    def __init__(self, slm: SLM):
        self.slm = slm
        self.model = slm.model.eval()
        self.tok = slm.tokenizer
        self.device = model_device(self.model)
        cfg = self.model.config
        self.context_length = int(getattr(cfg, "max_position_embeddings", 2048))
        eos = cfg.eos_token_id if cfg.eos_token_id is not None else self.tok.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else [eos]) - {None}
        if self.tok.eos_token_id is not None:
            self.eos_ids.add(self.tok.eos_token_id)

    def tokenize(self, text: str, special: bool = True) -> list[int]:
        return self.tok(text, add_special_tokens=special)["input_ids"]

    def detokenize(self, ids: list[int]) -> str:
        return self.tok.decode(ids, skip_special_tokens=True)

    def chat_prompt(self, messages: list[dict]) -> str:
        from ..data import record_text
        if getattr(self.tok, "chat_template", None):
            return self.tok.apply_chat_template(messages, tokenize=False,
                                                add_generation_prompt=True)
        return record_text({"messages": messages}) + "\nassistant:"

    @torch.inference_mode()
    def logits(self, ids: list[int]) -> torch.Tensor:
        x = torch.tensor([ids], device=self.device)
        return self.model(x).logits[0].float().cpu()  # (T, vocab)

    def token_ids(self, prompt_ids: list[int], max_tokens: int, temperature: float,
                  top_p: float, seed: int | None, stats: GenStats,
                  ignore_eos: bool = False) -> Iterator[int]:
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        return track(self._raw(prompt_ids, temperature, top_p, gen), stats, self.eos_ids,
                     max_tokens, ignore_eos)

    @torch.inference_mode()
    def _raw(self, prompt_ids: list[int], temperature: float, top_p: float,
             gen: torch.Generator | None) -> Iterator[int]:
        """Endless sampled tokens, one forward pass each with a KV cache."""
        from transformers import DynamicCache
        cache = DynamicCache()
        x = torch.tensor([prompt_ids], device=self.device)
        while True:
            out = self.model(x, past_key_values=cache, use_cache=True)
            tok = sample(out.logits[0, -1], temperature, top_p, gen)
            yield tok
            x = torch.tensor([[tok]], device=self.device)
