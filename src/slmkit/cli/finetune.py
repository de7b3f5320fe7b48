"""slm finetune: LoRA, DoRA, QLoRA or full fine-tuning on domain data."""
from __future__ import annotations

from typing import Optional

import typer
from rich.table import Table

from ..data.preflight import check_data
from ..models.preflight import check_model
from ..outputs import check_output
from ..tune.finetune import FinetuneConfig, run_finetune
from .app import TEXT_FIELD, console, print_json
from .options import Flag, flag_names, param, step_command, with_text_fields
from .validate import config_from_options


# How FinetuneConfig's fields show on the command line, where they differ from
# `--field-name` and the field's description; defaults come from the config.
FLAGS = {
    "data": Flag(("--data", "-d"), "Training data: .txt/.md/.jsonl file, directory or corpus name."),
    "method": Flag(("--method", "-m"), "lora, qlora (4-bit frozen base), dora or full."),
    "rank": Flag(("--rank", "-r"), "LoRA rank."),
    "dropout": Flag(help="LoRA dropout (default off: on a CPU its random masks cost ~20% of a step)."),
    "targets": Flag(("--targets", "-t"), "Comma-separated decoder linear layers (default: all), e.g. q_proj,v_proj."),
    "quant_format": Flag(help="QLoRA base format: nf4 or int4."),
    "lr": Flag(help="Peak learning rate (default 2e-4 for adapters, 3e-5 for full)."),
    "max_tokens": Flag(help="Token budget; overrides --epochs."),
    "seq_len": Flag(help="Tokens per packed sequence."),
    "batch_size": Flag(("--batch-size", "-b"), "Sequences per micro-batch."),
    "grad_accum": Flag(help="Micro-batches per optimizer step."),
    "val_fraction": Flag(help="Share of records held out for validation."),
    "eval_every": Flag(help="Steps between validation evals (0: about 8 per run)."),
    "patience": Flag(help="Stop after this many evals without a better val loss (0: never)."),
    "merge": Flag(help="Also write the merged standalone model."),
    "fsdp": Flag(help="Under torchrun with --method full: shard the weights, gradients and optimizer state over the K ranks (FSDP), so each rank holds ~1/K of them instead of a full copy (DDP). For models whose training state does not fit one process. No effect in one process."),
    "compile": Flag(help="torch.compile the decoder layers (default: for models >= 50M params and runs >= 20 steps; ~40 s to compile, ~20% faster steps)."),
    "bf16_base": Flag(("--fp32-hidden",), "Keep the hidden states in fp32 between layers (matmuls still bf16): plain autocast's numbers, and a little slower (about 2% on SmolLM2-135M). By default the frozen weights are held in bf16 while training, as the model runs in the bf16 its checkpoint ships in.", invert=True),
    "resume": Flag(help="Continue from the last checkpoint in --out's work directory if there is one (the default), or start afresh."),
}

HEAD = [param("model", str, typer.Argument(..., help="Model: built-in name, HF directory or .gguf file.")),
        param("out", str, typer.Option(..., "--out", "-o", help="Output directory (written complete or not at all)."))]
TAIL = [param("force", bool, typer.Option(False, "--force", help="Replace an existing --out directory.")),
        param("text_field", Optional[str], TEXT_FIELD),
        param("json_out", bool, typer.Option(False, "--json", help="Print the report as JSON."))]


@step_command("finetune", FinetuneConfig, flags=FLAGS, head=HEAD, tail=TAIL)
def finetune_cmd(values: dict, model: str, out: str, force: bool, text_field: Optional[str],
                 json_out: bool):
    """Fine-tune a model on your data with LoRA, QLoRA, DoRA or all weights.

    Text trains on every token; JSONL prompt/response and chat messages train only
    on the response / assistant tokens. Writes the adapter (PEFT, safetensors),
    with --merge a standalone model, and report.json with the loss curve and
    validation perplexity before and after. Runs under `torchrun --nproc-per-node K slm
    ...` (data parallel; with --method full, --fsdp shards the model over the ranks).

    Example: slm finetune smollm2-135m --data python-docs --method lora --max-tokens 200000 --merge --out runs/ft
    """
    from ..tune.loop import is_main
    cfg = config_from_options(FinetuneConfig, flags=flag_names(FLAGS),
                              **with_text_fields("finetune", values, text_field))
    check_output(out, kind="dir", force=force, make_parents=True,
                 inputs={"MODEL": model, "--data": values["data"]})
    check_model(model)
    check_data(cfg.data, "--data")
    report = run_finetune(model, out, cfg, progress=not json_out, overwrite=force)
    if not is_main():                      # under torchrun only rank 0 prints
        return
    if json_out:
        print_json(report)
        return
    console.print(summary_table(report))
    console.print(f"saved to {out}")


def summary_table(r: dict) -> Table:
    """Key figures of a fine-tuning report."""
    t = Table(title=f"slm finetune ({r['method']})", show_header=False)
    t.add_column("what")
    t.add_column("value", justify="right")
    fmt = lambda v, f="{:.3f}": "-" if v is None else f.format(v)  # noqa: E731
    rows = [("trainable params", f"{r['trainable_params']:,} of {r['params']:,}"),
            ("steps", f"{r['steps']} of {r['planned_steps']}"
             + (" (stopped early)" if r["stopped_early"] else "")),
            ("tokens", f"{r['tokens']:,}"), ("tokens/s", fmt(r["tokens_per_s"], "{:.0f}")),
            ("val loss before -> after", f"{fmt(r['val_loss_before'])} -> {fmt(r['val_loss_after'])}"),
            ("val ppl before -> after", f"{fmt(r['val_ppl_before'], '{:.2f}')} -> "
                                        f"{fmt(r['val_ppl_after'], '{:.2f}')}"),
            ("peak RSS", f"{r['peak_rss_bytes'] / 2**20:.0f} MiB"),
            ("time", f"{r['time_s']:.0f} s")]
    for k, v in rows:
        t.add_row(k, v)
    return t
