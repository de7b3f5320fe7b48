"""Inference engines behind generate, chat, eval and serve.

``open_engine(spec)`` picks llama.cpp for ``.gguf`` files and PyTorch for
everything else; ``engine=`` overrides.
"""
from __future__ import annotations

from pathlib import Path

from ..errors import SlmError
from .base import Engine, GenStats, generate_text, sample, stream_text

ENGINES = ("auto", "pytorch", "llama.cpp")


def open_engine(spec, engine: str = "auto", *, n_ctx: int = 2048, logits_all: bool = False,
                n_threads: int | None = None, device: str = "auto"):
    """An :class:`Engine` for a model spec (name, directory, ``.gguf``) or a loaded SLM.

    Args:
        spec: what ``slmkit.load`` accepts, or an ``SLM``.
        engine: ``auto`` (llama.cpp for .gguf, else pytorch), ``pytorch`` or ``llama.cpp``.
        n_ctx: llama.cpp context size.
        logits_all: llama.cpp keeps logits for every position (needed for perplexity).
        n_threads: llama.cpp CPU threads (default: all cores).
        device: where a PyTorch model runs (``slmkit.device``); a loaded SLM stays put.
    """
    from ..models.io import SLM, builtin_gguf, load
    from .hf import HFEngine
    if engine not in ENGINES:
        raise SlmError(f"unknown engine '{engine}'", f"use one of: {', '.join(ENGINES)}")
    if isinstance(spec, SLM):
        if engine == "llama.cpp":
            raise SlmError("a model in memory runs on the pytorch engine",
                           "export it to GGUF first (`slm export`)")
        return HFEngine(spec)
    s = str(spec)
    is_gguf = s.endswith(".gguf")
    if engine == "auto":
        engine = "llama.cpp" if is_gguf else "pytorch"
    if engine == "pytorch":
        return HFEngine(load(s, device=device))
    from .llamacpp import LlamaCppEngine
    if is_gguf:
        return LlamaCppEngine(Path(s), n_ctx=n_ctx, n_threads=n_threads, logits_all=logits_all)
    from ..models.catalog import CATALOG
    if s in CATALOG:
        return LlamaCppEngine(builtin_gguf(s), n_ctx=n_ctx, n_threads=n_threads,
                              logits_all=logits_all)
    raise SlmError(f"the llama.cpp engine needs a .gguf file, not '{s}'",
                   "export it first (`slm export MODEL --format gguf`) or use --engine pytorch")


__all__ = ["ENGINES", "Engine", "GenStats", "generate_text", "open_engine", "sample", "stream_text"]
