"""slm finetune: LoRA, DoRA, QLoRA or full fine-tuning on domain data."""
from __future__ import annotations

from typing import Optional

import typer
from rich.table import Table

from ..data import with_text_field
from ..data.preflight import check_data
from ..models.preflight import check_model
from ..outputs import check_output
from .app import DeviceOpt, TEXT_FIELD, app, console, print_json
from .validate import config_from_options


@app.command("finetune")
def finetune_cmd(
    model: str = typer.Argument(..., help="Model: built-in name, HF directory or .gguf file."),
    data: str = typer.Option(..., "--data", "-d", help="Training data: .txt/.md/.jsonl file, directory or corpus name."),
    out: str = typer.Option(..., "--out", "-o", help="Output directory (written complete or not at all)."),
    method: str = typer.Option("lora", "--method", "-m", help="lora, qlora (4-bit frozen base), dora or full."),
    rank: int = typer.Option(16, "--rank", "-r", help="LoRA rank."),
    alpha: float = typer.Option(32.0, "--alpha", help="LoRA alpha (scaling = alpha / rank)."),
    dropout: float = typer.Option(0.0, "--dropout", help="LoRA dropout (default off: on a CPU its random masks cost ~20% of a step)."),
    targets: Optional[str] = typer.Option(None, "--targets", "-t", help="Comma-separated decoder linear layers (default: all), e.g. q_proj,v_proj."),
    quant_format: str = typer.Option("nf4", "--quant-format", help="QLoRA base format: nf4 or int4."),
    lr: Optional[float] = typer.Option(None, "--lr", help="Peak learning rate (default 2e-4 for adapters, 3e-5 for full)."),
    epochs: float = typer.Option(1.0, "--epochs", help="Passes over the training data."),
    max_tokens: Optional[int] = typer.Option(None, "--max-tokens", help="Token budget; overrides --epochs."),
    seq_len: int = typer.Option(512, "--seq-len", help="Tokens per packed sequence."),
    batch_size: int = typer.Option(4, "--batch-size", "-b", help="Sequences per micro-batch."),
    grad_accum: int = typer.Option(1, "--grad-accum", help="Micro-batches per optimizer step."),
    val_fraction: float = typer.Option(0.1, "--val-fraction", help="Share of records held out for validation."),
    eval_every: int = typer.Option(0, "--eval-every", help="Steps between validation evals (0: about 8 per run)."),
    patience: int = typer.Option(3, "--patience", help="Stop after this many evals without a better val loss (0: never)."),
    merge: bool = typer.Option(False, "--merge", help="Also write the merged standalone model."),
    fsdp: bool = typer.Option(False, "--fsdp", help="Under torchrun with --method full: shard the weights, gradients and optimizer state over the K ranks (FSDP), so each rank holds ~1/K of them instead of a full copy (DDP). For models whose training state does not fit one process. No effect in one process."),
    compile_: Optional[bool] = typer.Option(None, "--compile/--no-compile", help="torch.compile the decoder layers (default: for models >= 50M params and runs >= 20 steps; ~40 s to compile, ~20% faster steps)."),
    fp32_hidden: bool = typer.Option(False, "--fp32-hidden", help="Keep the hidden states in fp32 between layers (matmuls still bf16): plain autocast's numbers, and a little slower (about 2% on SmolLM2-135M). By default the frozen weights are held in bf16 while training, as the model runs in the bf16 its checkpoint ships in."),
    seed: int = typer.Option(0, "--seed"),
    device: str = DeviceOpt,
    resume: bool = typer.Option(True, "--resume/--no-resume", help="Continue from the last checkpoint in --out's work directory if there is one (the default), or start afresh."),
    force: bool = typer.Option(False, "--force", help="Replace an existing --out directory."),
    text_field: Optional[str] = TEXT_FIELD,
    json_out: bool = typer.Option(False, "--json", help="Print the report as JSON."),
):
    """Fine-tune a model on your data with LoRA, QLoRA, DoRA or all weights.

    Text trains on every token; JSONL prompt/response and chat messages train only
    on the response / assistant tokens. Writes the adapter (PEFT, safetensors),
    with --merge a standalone model, and report.json with the loss curve and
    validation perplexity before and after. Runs under `torchrun --nproc-per-node K slm
    ...` (data parallel; with --method full, --fsdp shards the model over the ranks).

    Example: slm finetune smollm2-135m --data python-docs --method lora --max-tokens 200000 --merge --out runs/ft
    """
    from ..tune.finetune import FinetuneConfig, run_finetune
    tlist = [t.strip() for t in targets.split(",")] if targets else None
    cfg = config_from_options(
        FinetuneConfig, data=with_text_field(data, text_field), method=method, rank=rank, alpha=alpha, dropout=dropout,
        targets=tlist, quant_format=quant_format, lr=lr, epochs=epochs, max_tokens=max_tokens,
        seq_len=seq_len, batch_size=batch_size, grad_accum=grad_accum, val_fraction=val_fraction,
        eval_every=eval_every, patience=patience, merge=merge, seed=seed, resume=resume,
        compile=compile_, fsdp=fsdp, bf16_base=not fp32_hidden, device=device,
        flags={"bf16_base": "--fp32-hidden"})
    check_output(out, kind="dir", force=force, make_parents=True,
                 inputs={"MODEL": model, "--data": data})
    check_model(model)
    check_data(cfg.data, "--data")
    report = run_finetune(model, out, cfg, progress=not json_out, overwrite=force)
    from ..tune.loop import is_main
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
