"""slm prune: zero weights (magnitude, Wanda, SparseGPT) or remove layers/heads/channels."""
from __future__ import annotations

from typing import Optional

import typer

from .. import units
from ..compress.prune import PruneConfig, run_prune
from ..compress.prune.report import print_report
from ..data.preflight import check_data
from ..errors import SlmError
from ..models.preflight import check_model
from ..outputs import check_output
from ..progress import progress_bar
from .app import TEXT_FIELD, console, print_json
from .options import Flag, flag_names, param, step_command, with_text_fields
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


# How PruneConfig's fields show on the command line, where they differ from
# `--field-name` and the field's description; defaults come from the config.
FLAGS = {
    "method": Flag(("--method", "-m"), "magnitude, wanda, sparsegpt (zero weights), depth, width (remove structure) or vocab (drop tokens the domain does not use)."),
    "sparsity": Flag(("--sparsity", "-s"), "Fraction of weights to zero in each Linear, in (0, 1).", parser=units.fraction),
    "pattern": Flag(help="N:M semi-structured sparsity, e.g. 2:4."),
    "target": Flag(("--target", "-t"), "depth/width: parameters to keep: a fraction of the decoder layers' parameters (0.7: the layers keep 70%, embedding and head untouched) or a count of the whole model's (90M).", parser=units.fraction_or_count),
    "calib": Flag(("--calib", "-c"), "Calibration data: corpus name, file or directory (train split)."),
    "nsamples": Flag(help="Calibration sequences.", min=1),
    "seqlen": Flag(help="Tokens per calibration sequence.", min=2),
    "batch_size": Flag(help="Calibration sequences per forward pass.", min=1),
    "iterative": Flag(help="depth: re-measure layer influence after each removal."),
    "sequential": Flag(help="wanda/sparsegpt: inside each layer too, prune Linears in the order they run, each calibrated on inputs through the already-pruned ones (slower: one calibration pass per group of Linears)."),
    "vocab_size": Flag(help="vocab: tokens to keep at most (byte alphabet and special tokens, then the domain's by frequency, then the most general); default: every domain token.", min=2),
    "min_count": Flag(help="vocab: times a token must occur in --calib to count as a domain token.", min=1),
    "calib_autocast": Flag(("--bf16-calib",), "wanda/sparsegpt: calibration forward passes in bf16 autocast (faster on CPU)."),
    "eval_data": Flag(help="Held-out text for perplexity (val split); default: --calib."),
    "eval_tokens": Flag(help="Held-out tokens scored before and after (0 skips).", min=0),
    "overwrite": Flag(("--force",), "Replace an existing --out directory."),
}

HEAD = [param("model", str, typer.Argument(..., help="Model: built-in name, HF directory or .gguf file.")),
        param("out", str, typer.Option(..., "--out", "-o", help="Output directory (written complete or not at all)."))]
TAIL = [param("text_field", Optional[str], TEXT_FIELD),
        param("json_out", bool, typer.Option(False, "--json", help="Print the report as JSON instead of tables."))]


@step_command("prune", PruneConfig, flags=FLAGS, head=HEAD, tail=TAIL)
def prune_cmd(values: dict, model: str, out: str, text_field: Optional[str], json_out: bool):
    """Prune a model on calibration data and report what it gained and lost.

    Unstructured and N:M pruning zero weights (same size and speed without sparse
    kernels); depth and width pruning give a smaller, faster ordinary HF model.
    Vocab trimming keeps the tokens --calib uses (plus the byte alphabet and special
    tokens) and drops the other embedding rows; perplexity is then reported per token
    of the original tokenizer, so before and after compare.

    Example: slm prune smollm2-135m --method sparsegpt --sparsity 0.5 --calib python-docs --out runs/sgpt50

    Example: slm prune smollm2-135m --method vocab --vocab-size 8192 --calib python-docs --out runs/vocab8k
    """
    cfg = config_from_options(PruneConfig, flags=flag_names(FLAGS),
                              **with_text_fields("prune", values, text_field))
    check_output(out, kind="dir", force=cfg.overwrite, make_parents=True,
                 inputs={"MODEL": model, "--calib": values["calib"],
                         "--eval-data": values["eval_data"]})
    _preflight(model, cfg)
    with progress_bar(f"{cfg.method} layers", total=None, enabled=not json_out) as bar:
        report = run_prune(model, out, cfg,
                           progress=lambda _stage, done, total: bar.update(completed=done,
                                                                           total=total))
    if json_out:
        print_json(report)
        return
    print_report(report, console)
    console.print(f"saved to {out}")

