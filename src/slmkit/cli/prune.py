"""slm prune: zero weights (magnitude, Wanda, SparseGPT) or remove layers/heads/channels."""
from __future__ import annotations

from typing import Optional

import typer

from .app import app, console, print_json


@app.command("prune")
def prune_cmd(
    model: str = typer.Argument(..., help="Model: built-in name, HF directory or .gguf file."),
    out: str = typer.Option(..., "--out", "-o", help="Output directory (written complete or not at all)."),
    method: str = typer.Option("sparsegpt", "--method", "-m", help="magnitude, wanda, sparsegpt (zero weights) or depth, width (remove structure)."),
    sparsity: Optional[float] = typer.Option(None, "--sparsity", "-s", help="Fraction of weights to zero in each Linear, in (0, 1)."),
    pattern: Optional[str] = typer.Option(None, "--pattern", help="N:M semi-structured sparsity, e.g. 2:4."),
    target: Optional[str] = typer.Option(None, "--target", "-t", help="depth/width: parameters to keep, a fraction (0.7) or a count (90M)."),
    calib: str = typer.Option("python-docs", "--calib", "-c", help="Calibration data: corpus name, file or directory (train split)."),
    nsamples: int = typer.Option(128, help="Calibration sequences."),
    seqlen: int = typer.Option(512, help="Tokens per calibration sequence."),
    batch_size: int = typer.Option(8, help="Calibration sequences per forward pass."),
    iterative: bool = typer.Option(False, "--iterative", help="depth: re-measure layer influence after each removal."),
    bf16_calib: bool = typer.Option(False, "--bf16-calib", help="wanda/sparsegpt: calibration forward passes in bf16 autocast (faster on CPU)."),
    eval_data: Optional[str] = typer.Option(None, "--eval-data", help="Held-out text for perplexity (val split); default: --calib."),
    eval_tokens: int = typer.Option(8192, help="Held-out tokens scored before and after (0 skips)."),
    force: bool = typer.Option(False, "--force", help="Replace an existing --out directory."),
    json_out: bool = typer.Option(False, "--json", help="Print the report as JSON instead of tables."),
):
    """Prune a model on calibration data and report what it gained and lost.

    Unstructured and N:M pruning zero weights (same size and speed without sparse
    kernels); depth and width pruning give a smaller, faster ordinary HF model.

    Example: slm prune smollm2-135m --method sparsegpt --sparsity 0.5 --calib python-docs --out runs/sgpt50
    """
    from ..compress.prune import PruneConfig, run_prune
    from ..compress.prune.report import print_report
    from ..pipeline_util import config_from_options
    from ..progress import progress_bar
    cfg = config_from_options(PruneConfig, method=method, sparsity=sparsity, pattern=pattern,
                              target=target, calib=calib, nsamples=nsamples, seqlen=seqlen,
                              batch_size=batch_size, iterative=iterative, calib_autocast=bf16_calib,
                              eval_data=eval_data,
                              eval_tokens=eval_tokens, overwrite=force)
    with progress_bar(f"{method} layers", total=None, enabled=not json_out) as bar:
        report = run_prune(model, out, cfg,
                           progress=lambda _stage, done, total: bar.update(completed=done,
                                                                           total=total))
    if json_out:
        print_json(report)
        return
    print_report(report, console)
    console.print(f"saved to {out}")

