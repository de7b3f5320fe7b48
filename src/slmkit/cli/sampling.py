"""Sampling options shared by `slm generate` and `slm chat`."""
from __future__ import annotations

from typing import List, Optional

import typer

from .. import units

MaxTokens = typer.Option(256, "--max-tokens", "-n", min=1, help="Most tokens to generate.")
Temperature = typer.Option(0.7, "--temperature", "-t", parser=units.non_negative, help="0 = greedy; higher = more random.")
TopP = typer.Option(0.95, "--top-p", parser=units.probability, help="Nucleus sampling: keep the smallest set of tokens with this much probability.")
Seed = typer.Option(None, "--seed", help="Random seed, for repeatable sampling.")
Stop = typer.Option(None, "--stop", help="Stop at this string (repeatable).")


def engine_choice(value: str) -> str:
    """One of the engines (auto, pytorch, llama.cpp)."""
    from ..engines import ENGINES
    if value not in ENGINES:
        raise ValueError(f"'{value}' is not an engine; use one of {', '.join(ENGINES)}")
    return value


EngineOpt = typer.Option("auto", "--engine", "-e", parser=engine_choice, help="auto (llama.cpp for .gguf, else pytorch), pytorch or llama.cpp.")
Ctx = typer.Option(2048, "--ctx", min=16, help="Context size for llama.cpp.")

__all__ = ["Ctx", "EngineOpt", "List", "MaxTokens", "Optional", "Seed", "Stop", "Temperature", "TopP"]
