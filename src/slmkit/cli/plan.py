"""slm plan: which model and quantization fit this machine, and how fast they will run."""
from __future__ import annotations

from typing import Optional

import psutil
import typer
from rich.table import Table

from .. import units
from ..errors import SlmError
from .app import app, console, print_json


def _nearest_miss(rows):
    """The best-scoring option that fits but is too slow, else the smallest that does not fit."""
    ok = [r for r in rows if r.fits and r.fast_enough]
    best = ok[0].score if ok else float("inf")
    slow = [r for r in rows if r.fits and not r.fast_enough and r.score > best]
    if slow:
        return max(slow, key=lambda r: r.score)
    big = [r for r in rows if not r.fits]
    return min(big, key=lambda r: r.total_bytes) if big else None


@app.command("plan")
def plan_cmd(
    memory: str = typer.Option(..., "--memory", "-m", help="Memory you can give the model, e.g. 4G, 512M."),
    tokens_per_second: Optional[float] = typer.Option(None, "--tokens-per-second", "-r", parser=units.positive, help="Decode speed you need."),
    context: int = typer.Option(2048, "--context", "-c", min=1, help="Context length in tokens (sizes the KV cache)."),
    top: int = typer.Option(10, "--top", min=1, help="Rows to show (the JSON has all)."),
    reprobe: bool = typer.Option(False, "--reprobe", help="Measure the machine again instead of using the cache."),
    json_out: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
):
    """Recommend a model and quantization for this machine, best first, with the reasoning.

    Probes memory bandwidth and matmul speed once (cached), then predicts each catalog
    model's memory (weights + KV cache + runtime) and decode tokens/s (roofline).

    Example: slm plan --memory 4G --tokens-per-second 20 --context 4096
    """
    from dataclasses import asdict
    from .. import plan
    mem = units.option(plan.parse_size, "--memory", memory)
    total = psutil.virtual_memory().total
    if mem > total:
        raise SlmError(f"--memory {memory} is {mem / 1e9:.1f} GB, more than this machine has "
                       f"({total / 1e9:.1f} GB)", f"give at most {total // 2**30}G: the speeds "
                       "predicted are this machine's")
    probe = plan.load_probe(reprobe=reprobe)
    rows = plan.recommend(mem, probe, tokens_per_second=tokens_per_second, context=context)
    if json_out:
        print_json({"probe": asdict(probe), "memory": mem, "tokens_per_second": tokens_per_second,
                    "context": context, "efficiency": plan.EFFICIENCY,
                    "kernel_rate": plan.KERNEL_RATE, "layer_overhead_s": plan.LAYER_OVERHEAD_S,
                    "recommendations": [asdict(r) for r in rows]})
        return
    console.print(f"machine: {probe.cores} cores, {probe.bandwidth_gbs:.1f} GB/s read, "
                  f"{probe.fp32_gflops:.0f} GFLOP/s fp32 ({probe.bf16_gflops:.0f} bf16), "
                  f"{probe.free_bytes / 1e9:.1f} GB free (probed {probe.measured_at}; "
                  "--reprobe to measure again)", highlight=False)
    if probe.busy:
        console.print(f"[yellow]warning[/]: the probe ran while the machine was busy (load "
                      f"{probe.load_avg:g} on {probe.cores} cores), so its speeds are too low: "
                      "run again with --reprobe when the machine is idle", highlight=False)
    ok = [r for r in rows if r.fits and r.fast_enough]
    t = Table(title=f"fits {mem / 1e9:.2f} GB" + (f", >= {tokens_per_second:g} tok/s"
                                                 if tokens_per_second else "")
              + f", context {context}: best first")
    for col in ("#", "model", "quant", "params", "memory GB", "tok/s", "bound", "here"):
        t.add_column(col, justify="right" if col not in ("model", "quant", "bound") else "left")
    for i, r in enumerate(ok[:top], 1):
        t.add_row(str(i), r.model, r.qtype, f"{r.params / 1e9:.2f}B", f"{r.total_bytes / 1e9:.2f}",
                  f"{r.tok_s:.0f}", r.bound, "yes" if r.available else "-")
    console.print(t)
    if not ok:
        console.print("[yellow]nothing fits[/]: give more memory, a shorter --context or a "
                      "lower --tokens-per-second", highlight=False)
    for r in ok[:3]:
        console.print(f"[bold]{r.model} {r.qtype}[/]: " + "; ".join(r.reasons), highlight=False)
    near = _nearest_miss(rows)
    if near is not None:
        console.print(f"next best, does not qualify: {near.model} {near.qtype}: "
                      + "; ".join(near.reasons), highlight=False)
    console.print(f"model: decode time per token = max(bytes/({plan.EFFICIENCY} x bandwidth), "
                  "FLOPs/(fp32 rate x the weight type's kernel rate)) + layers x "
                  f"{plan.LAYER_OVERHEAD_S * 1e3:.3f} ms; tok/s at half the context filled.",
                  highlight=False)
