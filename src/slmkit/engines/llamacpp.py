"""llama.cpp engine (llama-cpp-python) for ``.gguf`` files."""
from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from ..models.io import check_gguf
from . import chat_format
from .base import GenStats, token_logprobs, track
from .chat_format import end_of_turn_ids
from .llama_lib import llama_cpp
from .llamacpp_score import LlamaCppScorer


class LlamaCppEngine:
    name = "llama.cpp"

    def __init__(self, path: str | Path, n_ctx: int = 2048, n_threads: int | None = None,
                 logits_all: bool = False, lora_path: str | Path | None = None):
        Llama = llama_cpp().Llama
        stat = Path(path).stat() if Path(path).exists() else None
        _check_once(str(path), stat.st_size if stat else -1, stat.st_mtime_ns if stat else -1)
        self.path = Path(path)
        # Prompt batches get the same threads: llama-cpp-python's own default for them is
        # every core, which stalls prefill when the CPU is shared.
        threads = n_threads or os.cpu_count()
        if lora_path is not None:
            check_gguf(Path(lora_path))
        self.lora_path = lora_path
        self.llm = Llama(model_path=str(path), n_ctx=n_ctx, n_threads=threads,
                         n_threads_batch=threads, logits_all=logits_all, verbose=False,
                         lora_path=str(lora_path) if lora_path is not None else None)
        self.context_length = self.llm.n_ctx()
        self.eos_ids = {self.llm.token_eos()} | end_of_turn_ids(self._special_id)
        self._chat = None                     # chosen on first use (it may print a note)
        self._scorer = None                   # batched scoring context, made on first use

    def _special_id(self, text: str) -> int | None:
        ids = self.llm.tokenize(text.encode(), add_bos=False, special=True)
        return ids[0] if len(ids) == 1 else None

    def tokenize(self, text: str, special: bool = True) -> list[int]:
        return self.llm.tokenize(text.encode(), add_bos=special, special=True)

    def detokenize(self, ids: list[int]) -> str:
        return self.llm.detokenize(ids).decode("utf-8", errors="replace")

    def chat_prompt(self, messages: list[dict]) -> str:
        if self._chat is None:
            self._chat = chat_format.choose(
                self.llm.metadata.get("tokenizer.chat_template"),
                lambda t: self._special_id(t) is not None, self.path.name,
                bos=self.detokenize_special(self.llm.token_bos()))
        return self._chat.render(messages)

    def detokenize_special(self, tok: int) -> str:
        return self.llm.detokenize([tok], special=True).decode("utf-8", errors="replace")

    def logits(self, ids: list[int]) -> torch.Tensor:
        """(T, vocab) logits; needs the engine opened with ``logits_all=True``."""
        self.llm.reset()
        self.llm.eval(ids)
        return torch.from_numpy(np.array(self.llm.scores[: len(ids)], dtype=np.float32))

    def score_suffixes(self, prefix: list[int], suffixes: list[list[int]]) -> list[torch.Tensor]:
        """Log-probability of each suffix token after ``prefix`` (and the suffix before it).

        The prefix is evaluated once; each suffix continues from its KV cache (the
        cache past the prefix is dropped before the next one). Needs ``logits_all=True``.
        """
        p = len(prefix)
        self.llm.reset()
        self.llm.eval(prefix)
        last = torch.from_numpy(np.array(self.llm.scores[p - 1], dtype=np.float32))
        out = []
        for s in suffixes:
            self.llm.n_tokens = p
            self.llm.eval(s)
            rows = torch.from_numpy(np.array(self.llm.scores[p: p + len(s) - 1], dtype=np.float32))
            out.append(token_logprobs(torch.cat([last[None], rows]), s))
        return out

    def score_many(self, items: list[tuple[list[int], list[list[int]]]]) -> list[list[torch.Tensor]]:
        """:meth:`score_suffixes` for many ``(prefix, suffixes)`` items, several questions per
        llama.cpp decode call (:class:`~.llamacpp_score.LlamaCppScorer`, made on first use)."""
        if self._scorer is None:
            self._scorer = LlamaCppScorer(self)
        return self._scorer.score(items)

    def reset_cache(self) -> None:
        """Forget the previous prompt, so the next generation prefills every prompt token
        (llama-cpp-python otherwise reuses the KV cache of a shared prefix)."""
        self.llm.reset()

    def perf(self, reset: bool = False) -> dict:
        """llama.cpp's own counters for this context (``llama_perf_context``): prompt
        tokens and milliseconds, generated tokens and milliseconds; ``reset`` zeroes them
        after reading."""
        lib = llama_cpp()
        d = lib.llama_perf_context(self.llm._ctx.ctx)
        out = {"prompt_tokens": d.n_p_eval, "prompt_ms": d.t_p_eval_ms,
               "eval_tokens": d.n_eval, "eval_ms": d.t_eval_ms}
        if reset:
            lib.llama_perf_context_reset(self.llm._ctx.ctx)
        return out

    def token_ids(self, prompt_ids: list[int], max_tokens: int, temperature: float,
                  top_p: float, seed: int | None, stats: GenStats,
                  ignore_eos: bool = False) -> Iterator[int]:
        if seed is not None:
            self.llm.set_seed(seed)
        raw = self.llm.generate(prompt_ids, temp=temperature, top_p=top_p, top_k=0,
                                min_p=0.0, repeat_penalty=1.0, reset=True)
        return track(raw, stats, self.eos_ids, max_tokens, ignore_eos)


@functools.lru_cache(maxsize=64)
def _check_once(path: str, size: int, mtime_ns: int) -> None:
    """``check_gguf`` once per file version: parsing a large vocabulary takes seconds,
    and a server opens one instance per concurrent sequence."""
    check_gguf(Path(path))

