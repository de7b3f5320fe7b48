"""Sampling options shared by `slm generate` and `slm chat`."""
from __future__ import annotations

from typing import List, Optional

import typer

from .. import units
from ..engines import ENGINES

MaxTokens = typer.Option(256, "--max-tokens", "-n", min=1, help="Most tokens to generate.")
Temperature = typer.Option(0.7, "--temperature", "-t", parser=units.non_negative, help="0 = greedy; higher = more random.")
TopP = typer.Option(0.95, "--top-p", parser=units.probability, help="Nucleus sampling: keep the smallest set of tokens with this much probability.")
Seed = typer.Option(None, "--seed", help="Random seed, for repeatable sampling.")
Stop = typer.Option(None, "--stop", help="Stop at this string (repeatable).")


def engine_choice(value: str) -> str:
    """One of the engines (auto, pytorch, llama.cpp)."""
    if value not in ENGINES:
        raise ValueError(f"'{value}' is not an engine; use one of {', '.join(ENGINES)}")
    return value


EngineOpt = typer.Option("auto", "--engine", "-e", parser=engine_choice, help="auto (llama.cpp for .gguf, else pytorch), pytorch or llama.cpp.")
Ctx = typer.Option(2048, "--ctx", min=16, help="Context size for llama.cpp.")
AdapterOpt = typer.Option(None, "--adapter", help="A LoRA/DoRA adapter directory (`slm finetune` without --merge) applied to MODEL, its base; runs on PyTorch.")


def cut_note(stats, max_tokens: int, n_prompt: int, context: int) -> str | None:
    """What to tell the user when a reply ended on a limit rather than by itself."""
    if stats.finish_reason != "length":
        return None
    if n_prompt + stats.completion_tokens >= context:
        return f"(reply cut: the {context}-token context is full; raise --ctx)"
    return f"(reply cut at --max-tokens {max_tokens})"

__all__ = ["AdapterOpt", "Ctx", "cut_note", "EngineOpt", "List", "MaxTokens", "Optional", "Seed", "Stop", "Temperature", "TopP"]
