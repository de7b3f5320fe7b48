"""slm distill: a frozen teacher teaches a smaller student (KD, CE, hidden-state matching)."""
from __future__ import annotations

import json
from typing import Optional

import typer
from rich.table import Table

from ..data import with_text_field
from ..data.preflight import check_data
from ..errors import SlmError
from ..models.preflight import check_model
from ..outputs import check_output
from .app import DeviceOpt, TEXT_FIELD, app, console, print_json
from .validate import config_from_options


def _pairs(text: Optional[str]) -> Optional[list[tuple[int, int]]]:
    """'0:1,1:3' -> [(0, 1), (1, 3)]."""
    if not text:
        return None
    try:
        return [tuple(int(x) for x in p.split(":")) for p in text.split(",")]
    except ValueError as exc:
        raise SlmError(f"bad --layer-pairs '{text}'", "write student:teacher pairs, e.g. "
                       "0:1,1:3") from exc


def _overrides(items: list[str]) -> dict:
    """['num_hidden_layers=8'] -> {'num_hidden_layers': 8} (values parsed as JSON when they can)."""
    out = {}
    for item in items:
        if "=" not in item:
            raise SlmError(f"bad --set '{item}'", "write KEY=VALUE, e.g. num_hidden_layers=8")
        k, v = item.split("=", 1)
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:
            out[k] = v
    return out


@app.command("distill")
def distill_cmd(
    teacher: str = typer.Option(..., "--teacher", "-T", help="Teacher model: built-in name, HF directory or .gguf."),
    data: str = typer.Option(..., "--data", "-d", help="Training text: file, directory or corpus name."),
    out: str = typer.Option(..., "--out", "-o", help="Output directory (written complete or not at all)."),
    student: Optional[str] = typer.Option(None, "--student", "-S", help="Student model (e.g. the teacher after `slm prune`)."),
    student_config: Optional[str] = typer.Option(None, "--student-config", help="Initialise a random student from a catalog name or config JSON instead."),
    set_: list[str] = typer.Option([], "--set", help="Override a --student-config field, KEY=VALUE (repeatable)."),
    tokens: int = typer.Option(200_000, "--tokens", "-n", help="Training tokens."),
    seq_len: int = typer.Option(256, "--seq-len", help="Tokens per training block."),
    batch_size: int = typer.Option(4, "--batch-size", "-b", help="Blocks per micro-batch."),
    grad_accum: int = typer.Option(1, "--grad-accum", help="Micro-batches per optimizer step."),
    lr: float = typer.Option(2e-4, "--lr", help="Peak learning rate."),
    warmup_steps: int = typer.Option(10, "--warmup", help="Warm-up steps."),
    schedule: str = typer.Option("cosine", "--schedule", help="cosine, linear or constant."),
    kd: str = typer.Option("forward_kl", "--kd", help="forward_kl, reverse_kl or jsd."),
    temperature: float = typer.Option(1.0, "--temperature", help="Softmax temperature (loss scaled by T^2)."),
    jsd_beta: float = typer.Option(0.5, "--jsd-beta", help="Teacher weight in the JSD mixture."),
    w_kl: float = typer.Option(1.0, "--w-kl", help="Weight of the KD term."),
    w_ce: float = typer.Option(1.0, "--w-ce", help="Weight of cross-entropy on the data."),
    w_hidden: float = typer.Option(0.0, "--w-hidden", help="Weight of hidden-state matching."),
    layer_pairs: Optional[str] = typer.Option(None, "--layer-pairs", help="student:teacher layer pairs, e.g. 0:1,1:3 (default: evenly mapped)."),
    top_k: Optional[int] = typer.Option(None, "--top-k", help="Teacher logits kept per token (cache default 64; live default all)."),
    teacher_cache: Optional[str] = typer.Option(None, "--teacher-cache", help="Directory for cached teacher top-k logits (built on first use)."),
    cross_tokenizer: bool = typer.Option(False, "--cross-tokenizer", help="Teacher and student tokenizers differ: pair positions where both tokenizations end at the same character and match sorted probabilities (Universal Logit Distillation) instead of KL. Needs the live teacher."),
    grad_checkpointing: bool = typer.Option(False, "--grad-checkpointing", help="Recompute activations in backward to save memory."),
    compile_: Optional[bool] = typer.Option(None, "--compile/--no-compile", help="torch.compile the student's decoder layers (default: for models >= 50M params and runs >= 20 steps)."),
    no_bf16: bool = typer.Option(False, "--no-bf16", help="Train in fp32 instead of bf16 autocast."),
    fsdp: bool = typer.Option(False, "--fsdp", help="Under torchrun: shard the student's weights, gradients and optimizer state over the K ranks (FSDP), so each rank holds ~1/K of them instead of a full copy (DDP). For a student whose training state does not fit one process; the teacher stays whole on every rank. No effect in one process."),
    val_tokens: int = typer.Option(16_384, "--val-tokens", help="Held-out tokens for perplexity (0 skips)."),
    eval_every: int = typer.Option(0, "--eval-every", help="Steps between held-out evals (0: start and end)."),
    ckpt_every: int = typer.Option(50, "--ckpt-every", help="Steps between checkpoints."),
    seed: int = typer.Option(0, "--seed"),
    device: str = DeviceOpt,
    resume: bool = typer.Option(True, "--resume/--no-resume", help="Continue from the last checkpoint in --out's work directory if there is one (the default), or start afresh."),
    force: bool = typer.Option(False, "--force", help="Replace an existing --out directory."),
    text_field: Optional[str] = TEXT_FIELD,
    json_out: bool = typer.Option(False, "--json", help="Print the report as JSON."),
):
    """Distil a teacher into a smaller student: KL to the teacher, CE on data, hidden states.

    The teacher stays frozen (its weight hash is checked before and after).
    Checkpoints go to OUT.partial/checkpoints; re-running the command continues
    from the last one. Runs unchanged under `torchrun --nproc-per-node K slm ...`
    (data parallel; add --fsdp to shard the student over the ranks).

    Example: slm distill --teacher smollm2-135m --student runs/pruned --data python-docs --tokens 200000 --out runs/distilled
    """
    from ..compress.distill import DistillConfig, init_student, run_distill
    if (student is None) == (student_config is None):
        raise SlmError("give exactly one of --student and --student-config",
                       "e.g. --student runs/pruned")
    if set_ and not student_config:
        raise SlmError("--set needs --student-config", "drop --set or add --student-config")
    cfg = config_from_options(
        DistillConfig, teacher=teacher, data=with_text_field(data, text_field), tokens=tokens, seq_len=seq_len,
        batch_size=batch_size, grad_accum=grad_accum, lr=lr, warmup_steps=warmup_steps,
        schedule=schedule, kd=kd, temperature=temperature, jsd_beta=jsd_beta, w_kl=w_kl,
        w_ce=w_ce, w_hidden=w_hidden, layer_pairs=_pairs(layer_pairs), top_k=top_k,
        teacher_cache=teacher_cache, cross_tokenizer=cross_tokenizer,
        grad_checkpointing=grad_checkpointing, compile=compile_, bf16=not no_bf16, val_tokens=val_tokens,
        eval_every=eval_every, ckpt_every=ckpt_every, seed=seed, resume=resume, fsdp=fsdp,
        device=device, flags={"warmup_steps": "--warmup", "bf16": "--no-bf16", "compile": "--compile"})
    check_output(out, kind="dir", force=force, make_parents=True,
                 inputs={"--teacher": teacher, "--student": student, "--data": data})
    check_model(teacher, option="--teacher")
    if student:
        check_model(student, option="--student")
    overrides = _overrides(set_)
    if student_config:
        from ..compress.distill import student_config as check_student_config
        check_student_config(student_config, overrides)
    check_data(cfg.data, "--data")
    model = student if student else init_student(teacher, student_config, seed=seed,
                                                 **overrides)
    report = run_distill(model, out, cfg, overwrite=force, progress=not json_out)
    from ..tune.loop import is_main
    if not is_main():                      # under torchrun only rank 0 prints
        return
    if json_out:
        print_json(report)
        return
    console.print(summary_table(report))
    console.print(f"saved to {out}")


def summary_table(r: dict) -> Table:
    """Key figures of a distillation report."""
    fmt = lambda v, f="{:.2f}": "-" if v is None else f.format(v)  # noqa: E731
    t = Table(title="slm distill", show_header=False)
    t.add_column("what")
    t.add_column("value", justify="right")
    tp = r.get("teacher_params")
    rows = [("student params", f"{r['params']:,}" + (f" ({r['params'] / tp:.0%} of teacher)"
                                                     if tp else "")),
            ("steps / tokens", f"{r['steps']} / {r['tokens']:,}"),
            ("tokens/s", fmt(r["tokens_per_s"], "{:.0f}")),
            ("held-out ppl before -> after", f"{fmt(r['val_ppl_before'])} -> {fmt(r['val_ppl'])}"),
            ("teacher held-out ppl", fmt(r.get("teacher_val_ppl"))),
            ("teacher unchanged", {True: "yes (sha256 equal)", False: "NO", None: "-"}[
                r["teacher_unchanged"]]),
            ("teacher cache", f"{r['cache']['bytes'] / 2**20:.1f} MiB, top-{r['cache']['top_k']}"
             if r.get("cache") else "-"),
            ("time", f"{r.get('time_s', 0):.0f} s")]
    if r.get("world_size", 1) > 1:
        rows.insert(2, ("ranks", f"{r['world_size']} ({r.get('parallel', 'ddp')})"))
    for k, v in rows:
        t.add_row(k, v)
    return t
