"""Inference engines behind generate, chat, eval and serve.

``open_engine(spec)`` picks llama.cpp for ``.gguf`` files and PyTorch for
everything else; ``engine=`` overrides.
"""
from __future__ import annotations

from pathlib import Path

from ..device import resolve_device
from ..errors import SlmError
from ..models.catalog import CATALOG
from ..models.io import SLM, builtin_gguf, load
from .base import Engine, GenStats, generate_text, sample, stream_text
from .hf import HFEngine

ENGINES = ("auto", "pytorch", "llama.cpp")


def open_engine(spec, engine: str = "auto", *, n_ctx: int = 2048, logits_all: bool = False,
                n_threads: int | None = None, device: str = "auto", adapter=None,
                builtin_engine: str = "pytorch"):
    """An :class:`Engine` for a model spec (name, directory, ``.gguf``) or a loaded SLM.

    Args:
        spec: what ``slmkit.load`` accepts, or an ``SLM``.
        engine: ``auto`` (llama.cpp for .gguf, else pytorch), ``pytorch`` or ``llama.cpp``.
        n_ctx: llama.cpp context size.
        logits_all: llama.cpp keeps logits for every position (needed for perplexity).
        n_threads: llama.cpp CPU threads (default: all cores).
        device: where a PyTorch model runs (``slmkit.device``); a loaded SLM stays put.
        adapter: an adapter directory applied unmerged (PyTorch), or a LoRA ``.gguf``
            from ``slm export --format gguf-lora`` (llama.cpp, on the base ``.gguf``).
        builtin_engine: what ``auto`` runs a built-in name on (chat and generate ask
            for llama.cpp: the same weights, several times faster on a CPU).
    """
    if engine not in ENGINES:
        raise SlmError(f"unknown engine '{engine}'", f"use one of: {', '.join(ENGINES)}")
    if isinstance(spec, SLM):
        if engine == "llama.cpp":
            raise SlmError("a model in memory runs on the pytorch engine",
                           "export it to GGUF first (`slm export`)")
        return HFEngine(spec)
    s = str(spec)
    is_gguf = s.endswith(".gguf")
    gguf_lora = adapter is not None and str(adapter).endswith(".gguf")
    if engine == "auto":
        on_cpp = is_gguf or (s in CATALOG and builtin_engine == "llama.cpp"
                             and resolve_device(device).type == "cpu")
        engine = "llama.cpp" if (on_cpp and adapter is None) or gguf_lora else "pytorch"
    if engine == "pytorch":
        if gguf_lora:
            raise SlmError(f"--adapter {adapter} is a llama.cpp LoRA", "run it with "
                           "--engine llama.cpp on the base .gguf, or pass the adapter folder")
        return HFEngine(load(s, device=device, adapter=adapter))
    from .llamacpp import LlamaCppEngine
    if adapter is not None and not gguf_lora:
        raise SlmError(f"llama.cpp applies LoRA adapters as .gguf files, not {adapter}",
                       f"export it (`slm export {adapter} --format gguf-lora`) or use "
                       "--engine pytorch")
    kw = dict(n_ctx=n_ctx, n_threads=n_threads, logits_all=logits_all, lora_path=adapter)
    if is_gguf:
        return LlamaCppEngine(Path(s), **kw)
    if s in CATALOG:
        return LlamaCppEngine(builtin_gguf(s), **kw)
    raise SlmError(f"the llama.cpp engine needs a .gguf file, not '{s}'",
                   "export it first (`slm export MODEL --format gguf`) or use --engine pytorch")


__all__ = ["ENGINES", "Engine", "GenStats", "generate_text", "open_engine", "sample", "stream_text"]
