"""Sampling options shared by `slm generate` and `slm chat`."""
from __future__ import annotations

from typing import List, Optional

import typer

MaxTokens = typer.Option(256, "--max-tokens", "-n", min=1, help="Most tokens to generate.")
Temperature = typer.Option(0.7, "--temperature", "-t", min=0.0, help="0 = greedy; higher = more random.")
TopP = typer.Option(0.95, "--top-p", min=0.0, max=1.0, help="Nucleus sampling: keep the smallest set of tokens with this much probability.")
Seed = typer.Option(None, "--seed", help="Random seed, for repeatable sampling.")
Stop = typer.Option(None, "--stop", help="Stop at this string (repeatable).")
EngineOpt = typer.Option("auto", "--engine", "-e", help="auto (llama.cpp for .gguf, else pytorch), pytorch or llama.cpp.")
Ctx = typer.Option(2048, "--ctx", help="Context size for llama.cpp.")

__all__ = ["Ctx", "EngineOpt", "List", "MaxTokens", "Optional", "Seed", "Stop", "Temperature", "TopP"]
