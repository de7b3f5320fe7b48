"""PyTorch engine: any model ``slmkit.load`` accepts, run by transformers."""
from __future__ import annotations

from typing import Iterator

import torch

from ..device import model_device
from ..models.io import SLM
from . import chat_format
from .base import GenStats, sample, token_logprobs, track
from .chat_format import end_of_turn_ids


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
        self.eos_ids |= end_of_turn_ids(self._special_id)
        self._chat = None                     # chosen on first use (it may print a note)

    def _special_id(self, text: str) -> int | None:
        i = self.tok.convert_tokens_to_ids(text)
        return i if isinstance(i, int) and i != self.tok.unk_token_id else None

    def tokenize(self, text: str, special: bool = True) -> list[int]:
        return self.tok(text, add_special_tokens=special)["input_ids"]

    def detokenize(self, ids: list[int]) -> str:
        return self.tok.decode(ids, skip_special_tokens=True)

    def chat_prompt(self, messages: list[dict]) -> str:
        if getattr(self.tok, "chat_template", None):
            return self.tok.apply_chat_template(messages, tokenize=False,
                                                add_generation_prompt=True)
        if self._chat is None:
            self._chat = chat_format.choose(None, lambda t: self._special_id(t) is not None,
                                            str(self.slm.spec))
        return self._chat.render(messages)

    @torch.inference_mode()
    def logits(self, ids: list[int]) -> torch.Tensor:
        x = torch.tensor([ids], device=self.device)
        return self.model(x).logits[0].float().cpu()  # (T, vocab)

    @torch.inference_mode()
    def score_suffixes(self, prefix: list[int], suffixes: list[list[int]]) -> list[torch.Tensor]:
        """Log-probability of each suffix token after ``prefix`` (and the suffix before it).

        One pass over the prefix fills a KV cache; the cache is repeated once per suffix
        and all suffixes run as one right-padded batch (causal attention keeps the
        padding out of the real positions).
        """
        from transformers import DynamicCache
        cache = DynamicCache()
        last = self.model(torch.tensor([prefix], device=self.device), past_key_values=cache,
                          use_cache=True).logits[0, -1].float().cpu()   # (vocab,)
        width = max(len(s) for s in suffixes)
        batch = torch.tensor([s + [s[-1]] * (width - len(s)) for s in suffixes], device=self.device)
        cache.batch_repeat_interleave(len(suffixes))
        logits = self.model(batch, past_key_values=cache,
                            use_cache=True).logits.float().cpu()        # (k, width, vocab)
        return [token_logprobs(torch.cat([last[None], logits[i, :len(s) - 1]]), s)
                for i, s in enumerate(suffixes)]

    def reset_cache(self) -> None:
        """Nothing to forget: every generation starts a fresh KV cache."""

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
