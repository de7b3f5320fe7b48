"""slm prune: zero weights (magnitude, Wanda, SparseGPT) or remove layers/heads/channels."""
from __future__ import annotations

from typing import Optional

import typer

from .. import units
from ..data import with_text_field
from ..data.preflight import check_data
from ..errors import SlmError
from ..models.preflight import check_model
from ..outputs import check_output
from ..progress import progress_bar
from .app import DeviceOpt, TEXT_FIELD, app, console, print_json
from .validate import config_from_options


def _preflight(model: str, cfg) -> None:
    """Model, sizes and data checked from headers and files, before the model loads."""
    from ..compress.prune.api import parse_target
    facts = check_model(model)
    if cfg.target is not None and facts.params:
        units.option(lambda t: parse_target(t, facts.params), "--target", cfg.target)
    if cfg.method == "vocab" and cfg.vocab_size and facts.vocab_size \
            and cfg.vocab_size >= facts.vocab_size:
        raise SlmError(f"--vocab-size {cfg.vocab_size} is not smaller than the model's "
                       f"vocabulary ({facts.vocab_size})", "give a smaller --vocab-size")
    if cfg.method != "magnitude":
        check_data(cfg.calib, "--calib")
    if cfg.eval_data is not None:
        check_data(cfg.eval_data, "--eval-data")


@app.command("prune")
def prune_cmd(
    model: str = typer.Argument(..., help="Model: built-in name, HF directory or .gguf file."),
    out: str = typer.Option(..., "--out", "-o", help="Output directory (written complete or not at all)."),
    method: str = typer.Option("sparsegpt", "--method", "-m", help="magnitude, wanda, sparsegpt (zero weights), depth, width (remove structure) or vocab (drop tokens the domain does not use)."),
    sparsity: Optional[float] = typer.Option(None, "--sparsity", "-s", parser=units.fraction, help="Fraction of weights to zero in each Linear, in (0, 1)."),
    pattern: Optional[str] = typer.Option(None, "--pattern", help="N:M semi-structured sparsity, e.g. 2:4."),
    target: Optional[str] = typer.Option(None, "--target", "-t", parser=units.fraction_or_count, help="depth/width: parameters to keep: a fraction of the decoder layers' parameters (0.7: the layers keep 70%, embedding and head untouched) or a count of the whole model's (90M)."),
    calib: str = typer.Option("python-docs", "--calib", "-c", help="Calibration data: corpus name, file or directory (train split)."),
    nsamples: int = typer.Option(128, min=1, help="Calibration sequences."),
    seqlen: int = typer.Option(512, min=2, help="Tokens per calibration sequence."),
    batch_size: int = typer.Option(8, min=1, help="Calibration sequences per forward pass."),
    iterative: bool = typer.Option(False, "--iterative", help="depth: re-measure layer influence after each removal."),
    sequential: bool = typer.Option(False, "--sequential", help="wanda/sparsegpt: inside each layer too, prune Linears in the order they run, each calibrated on inputs through the already-pruned ones (slower: one calibration pass per group of Linears)."),
    vocab_size: Optional[int] = typer.Option(None, "--vocab-size", min=2, help="vocab: tokens to keep at most (byte alphabet and special tokens, then the domain's by frequency, then the most general); default: every domain token."),
    min_count: int = typer.Option(1, "--min-count", min=1, help="vocab: times a token must occur in --calib to count as a domain token."),
    bf16_calib: bool = typer.Option(False, "--bf16-calib", help="wanda/sparsegpt: calibration forward passes in bf16 autocast (faster on CPU)."),
    eval_data: Optional[str] = typer.Option(None, "--eval-data", help="Held-out text for perplexity (val split); default: --calib."),
    eval_tokens: int = typer.Option(8192, min=0, help="Held-out tokens scored before and after (0 skips)."),
    device: str = DeviceOpt,
    force: bool = typer.Option(False, "--force", help="Replace an existing --out directory."),
    text_field: Optional[str] = TEXT_FIELD,
    json_out: bool = typer.Option(False, "--json", help="Print the report as JSON instead of tables."),
):
    """Prune a model on calibration data and report what it gained and lost.

    Unstructured and N:M pruning zero weights (same size and speed without sparse
    kernels); depth and width pruning give a smaller, faster ordinary HF model.
    Vocab trimming keeps the tokens --calib uses (plus the byte alphabet and special
    tokens) and drops the other embedding rows; perplexity is then reported per token
    of the original tokenizer, so before and after compare.

    Example: slm prune smollm2-135m --method sparsegpt --sparsity 0.5 --calib python-docs --out runs/sgpt50

    Example: slm prune smollm2-135m --method vocab --vocab-size 8192 --calib python-docs --out runs/vocab8k
    """
    from ..compress.prune import PruneConfig, run_prune
    from ..compress.prune.report import print_report
    cfg = config_from_options(PruneConfig, flags={"calib_autocast": "--bf16-calib",
                                                  "overwrite": "--force"},
                              method=method, sparsity=sparsity, pattern=pattern, target=target,
                              calib=with_text_field(calib, text_field), nsamples=nsamples,
                              seqlen=seqlen,
                              batch_size=batch_size, iterative=iterative, sequential=sequential,
                              calib_autocast=bf16_calib,
                              vocab_size=vocab_size, min_count=min_count,
                              eval_data=with_text_field(eval_data, text_field),
                              eval_tokens=eval_tokens, overwrite=force, device=device)
    check_output(out, kind="dir", force=force, make_parents=True,
                 inputs={"MODEL": model, "--calib": calib, "--eval-data": eval_data})
    _preflight(model, cfg)
    with progress_bar(f"{method} layers", total=None, enabled=not json_out) as bar:
        report = run_prune(model, out, cfg,
                           progress=lambda _stage, done, total: bar.update(completed=done,
                                                                           total=total))
    if json_out:
        print_json(report)
        return
    print_report(report, console)
    console.print(f"saved to {out}")

