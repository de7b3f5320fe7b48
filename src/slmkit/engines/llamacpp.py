"""llama.cpp engine (llama-cpp-python) for ``.gguf`` files."""
from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from .base import GenStats, track
from .llama_lib import llama_cpp


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
            from ..models.io import check_gguf
            check_gguf(Path(lora_path))
        self.lora_path = lora_path
        self.llm = Llama(model_path=str(path), n_ctx=n_ctx, n_threads=threads,
                         n_threads_batch=threads, logits_all=logits_all, verbose=False,
                         lora_path=str(lora_path) if lora_path is not None else None)
        self.context_length = self.llm.n_ctx()
        self.eos_ids = {self.llm.token_eos()}
        eot = self._special_id("<|im_end|>") or self._special_id("<end_of_turn>")
        if eot is not None:
            self.eos_ids.add(eot)
        self._template = self.llm.metadata.get("tokenizer.chat_template")

    def _special_id(self, text: str) -> int | None:
        ids = self.llm.tokenize(text.encode(), add_bos=False, special=True)
        return ids[0] if len(ids) == 1 else None

    def tokenize(self, text: str, special: bool = True) -> list[int]:
        return self.llm.tokenize(text.encode(), add_bos=special, special=True)

    def detokenize(self, ids: list[int]) -> str:
        return self.llm.detokenize(ids).decode("utf-8", errors="replace")

    def chat_prompt(self, messages: list[dict]) -> str:
        from jinja2.sandbox import ImmutableSandboxedEnvironment
        if not self._template:
            return "\n".join(f"{m['role']}: {m['content']}" for m in messages) + "\nassistant:"
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = _raise
        return env.from_string(self._template).render(
            messages=messages, add_generation_prompt=True,
            bos_token=self.detokenize_special(self.llm.token_bos()), eos_token="")

    def detokenize_special(self, tok: int) -> str:
        return self.llm.detokenize([tok], special=True).decode("utf-8", errors="replace")

    def logits(self, ids: list[int]) -> torch.Tensor:
        """(T, vocab) logits; needs the engine opened with ``logits_all=True``."""
        self.llm.reset()
        self.llm.eval(ids)
        return torch.from_numpy(np.array(self.llm.scores[: len(ids)], dtype=np.float32))

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
    from ..models.io import check_gguf
    check_gguf(Path(path))


def _raise(msg):
    raise ValueError(msg)
