"""slm distill: a frozen teacher teaches a smaller student (KD, CE, hidden-state matching)."""
from __future__ import annotations

import json
from typing import Optional

import typer
from rich.table import Table

from ..compress.distill import DistillConfig, init_student, run_distill
from ..compress.distill import student_config as check_student_config
from ..data.preflight import check_data
from ..errors import SlmError
from ..models.preflight import check_model
from ..outputs import check_output
from .app import TEXT_FIELD, console, print_json
from .options import Flag, flag_names, param, step_command, with_text_fields
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


# How DistillConfig's fields show on the command line, where they differ from
# `--field-name` and the field's description; defaults come from the config.
FLAGS = {
    "teacher": Flag(("--teacher", "-T"), "Teacher model: built-in name, HF directory or .gguf."),
    "data": Flag(("--data", "-d"), "Training text: file, directory or corpus name."),
    "tokens": Flag(("--tokens", "-n"), "Training tokens."),
    "seq_len": Flag(help="Tokens per training block."),
    "batch_size": Flag(("--batch-size", "-b"), "Blocks per micro-batch."),
    "grad_accum": Flag(help="Micro-batches per optimizer step."),
    "lr": Flag(help="Peak learning rate."),
    "warmup_steps": Flag(("--warmup",), "Warm-up steps."),
    "schedule": Flag(help="cosine, linear or constant."),
    "kd": Flag(help="forward_kl, reverse_kl or jsd."),
    "temperature": Flag(help="Softmax temperature (loss scaled by T^2)."),
    "jsd_beta": Flag(help="Teacher weight in the JSD mixture."),
    "w_kl": Flag(help="Weight of the KD term."),
    "w_ce": Flag(help="Weight of cross-entropy on the data."),
    "w_hidden": Flag(help="Weight of hidden-state matching."),
    "layer_pairs": Flag(help="student:teacher layer pairs, e.g. 0:1,1:3 (default: evenly mapped).", parser=_pairs),
    "top_k": Flag(help="Teacher logits kept per token (cache default 64; live default all)."),
    "teacher_cache": Flag(help="Directory for cached teacher top-k logits (built on first use)."),
    "cross_tokenizer": Flag(help="Teacher and student tokenizers differ: pair positions where both tokenizations end at the same character and match sorted probabilities (Universal Logit Distillation) instead of KL. Needs the live teacher."),
    "grad_checkpointing": Flag(help="Recompute activations in backward to save memory."),
    "compile": Flag(help="torch.compile the student's decoder layers (default: for models >= 50M params and runs >= 20 steps)."),
    "bf16": Flag(("--no-bf16",), "Train in fp32 instead of bf16 autocast.", invert=True),
    "fsdp": Flag(help="Under torchrun: shard the student's weights, gradients and optimizer state over the K ranks (FSDP), so each rank holds ~1/K of them instead of a full copy (DDP). For a student whose training state does not fit one process; the teacher stays whole on every rank. No effect in one process."),
    "val_tokens": Flag(help="Held-out tokens for perplexity (0 skips)."),
    "eval_every": Flag(help="Steps between held-out evals (0: start and end)."),
    "ckpt_every": Flag(help="Steps between checkpoints."),
    "resume": Flag(help="Continue from the last checkpoint in --out's work directory if there is one (the default), or start afresh."),
}

HEAD = [param("out", str, typer.Option(..., "--out", "-o", help="Output directory (written complete or not at all).")),
        param("student", Optional[str], typer.Option(None, "--student", "-S", help="Student model (e.g. the teacher after `slm prune`).")),
        param("student_config", Optional[str], typer.Option(None, "--student-config", help="Initialise a random student from a catalog name or config JSON instead.")),
        param("set_", list[str], typer.Option([], "--set", help="Override a --student-config field, KEY=VALUE (repeatable)."))]
TAIL = [param("force", bool, typer.Option(False, "--force", help="Replace an existing --out directory.")),
        param("text_field", Optional[str], TEXT_FIELD),
        param("json_out", bool, typer.Option(False, "--json", help="Print the report as JSON."))]


@step_command("distill", DistillConfig, flags=FLAGS, head=HEAD, tail=TAIL)
def distill_cmd(values: dict, out: str, student: Optional[str], student_config: Optional[str],
                set_: list[str], force: bool, text_field: Optional[str], json_out: bool):
    """Distil a teacher into a smaller student: KL to the teacher, CE on data, hidden states.

    The teacher stays frozen (its weight hash is checked before and after).
    Checkpoints go to OUT.partial/checkpoints; re-running the command continues
    from the last one. Runs unchanged under `torchrun --nproc-per-node K slm ...`
    (data parallel; add --fsdp to shard the student over the ranks).

    Example: slm distill --teacher smollm2-135m --student runs/pruned --data python-docs --tokens 200000 --out runs/distilled
    """
    if (student is None) == (student_config is None):
        raise SlmError("give exactly one of --student and --student-config",
                       "e.g. --student runs/pruned")
    if set_ and not student_config:
        raise SlmError("--set needs --student-config", "drop --set or add --student-config")
    cfg = config_from_options(DistillConfig, flags=flag_names(FLAGS),
                              **with_text_fields("distill", values, text_field))
    teacher, data = values["teacher"], values["data"]
    check_output(out, kind="dir", force=force, make_parents=True,
                 inputs={"--teacher": teacher, "--student": student, "--data": data})
    check_model(teacher, option="--teacher")
    if student:
        check_model(student, option="--student")
    overrides = _overrides(set_)
    if student_config:
        check_student_config(student_config, overrides)
    check_data(cfg.data, "--data")
    model = student if student else init_student(teacher, student_config, seed=cfg.seed,
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
