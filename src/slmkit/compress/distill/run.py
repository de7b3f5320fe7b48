"""``run_distill``: load, pick the blocks, set up the teacher, train on the one loop,
report and save."""
from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path

import torch
from torch import nn

from ...data import blocks as data_blocks
from ...data import load_split
from ...data.batches import Batches
from ...errors import SlmError
from ...evaluate.perplexity import engine_tokens, model_engine, perplexity, step_window
from ...outputs import refuse_existing
from ...models.io import SLM, count_params, dir_bytes, load, replace_dir, save
from ...tune.distributed import barrier, dist_setup, is_main
from ...tune.loop import train
from ...tune.speedups import frozen_weights_in_bf16
from .align import CrossBlocks, cross_blocks
from .config import DistillConfig
from .losses import make_loss_fn
from .student import build_module
from .teacher import Teacher, setup_teacher, weights_hash


# ---------------------------------------------------------------- data

def distill_batches(blocks: torch.Tensor, batch_size: int, cache=None,
                    cross: CrossBlocks | None = None) -> Batches:
    """Token blocks (N, T) as the loop's batches; with a cache (a ``CacheReader``) each
    batch also carries the teacher's top-k logits ``t_values`` (B, T, k) and
    ``t_indices`` (B, T, k) of its blocks, with ``cross`` the teacher's tokens
    ``t_input_ids`` (B, Tt) and the alignment ``t_align`` (B, T)."""
    columns = {"input_ids": blocks, **(cross.columns() if cross is not None else {})}
    lazy = None if cache is None else (
        lambda lo, hi: dict(zip(("t_values", "t_indices"), cache.blocks(lo, hi))))
    return Batches(columns, batch_size, lazy)


def train_blocks(cfg: DistillConfig, tokenizer, world: int = 1, teacher_tokenizer=None
                 ) -> tuple[torch.Tensor, int, CrossBlocks | None]:
    """(blocks (N, T) used for training, optimizer steps, the teacher's view or None).

    When the data holds more blocks than the budget needs, a seeded random subset
    is used (so a cache covers exactly what is trained on); fewer blocks repeat
    over epochs. With ``teacher_tokenizer`` (cross-tokenizer distillation) the
    teacher's tokens of each block and the alignment come too.
    """
    cross = None
    if teacher_tokenizer is None:
        blocks = data_blocks(cfg.data, tokenizer, cfg.seq_len, which="train")
    else:
        blocks, cross = cross_blocks(load_split(cfg.data, "train"), tokenizer,
                                     teacher_tokenizer, cfg.seq_len)
    per_step = cfg.batch_size * cfg.grad_accum * world
    steps = max(1, math.ceil(cfg.tokens / (per_step * cfg.seq_len)))
    if len(blocks) < cfg.batch_size:
        raise SlmError(f"data '{cfg.data}' gives {len(blocks)} blocks of {cfg.seq_len} tokens, "
                       f"fewer than one batch of {cfg.batch_size}",
                       "add data or lower seq_len / batch_size")
    need = steps * per_step
    if need < len(blocks):
        g = torch.Generator().manual_seed(cfg.seed)
        keep = torch.randperm(len(blocks), generator=g)[:need].sort().values
        blocks = blocks[keep]
        if cross is not None:
            cross = cross.select(keep)
    return blocks, steps, cross


def val_ids(cfg: DistillConfig, slm) -> list[int] | None:
    """The held-out ids the perplexities score: the first ``val_tokens`` of the val split
    of ``data``, as ``slm eval`` reads them (None when there are none)."""
    if cfg.val_tokens <= 0:
        return None
    ids = engine_tokens(model_engine(slm.model, slm.tokenizer), cfg.data, "val", cfg.val_tokens)
    return ids if len(ids) > 1 else None


def val_ppl(model: nn.Module, tokenizer, ids: list[int], cfg: DistillConfig) -> float:
    """Perplexity of ``model`` on ``ids`` (evaluate's, with the step's window)."""
    engine = model_engine(model, tokenizer)
    return perplexity(engine, ids, *step_window(cfg.seq_len), progress=False)["ppl"]


# ---------------------------------------------------------------- run

def _check_out(out: Path, overwrite: bool) -> None:
    refuse_existing(out, overwrite)


def run_distill(student, out, cfg: DistillConfig, *, overwrite: bool = False,
                progress: bool = True) -> dict:
    """Distil ``cfg.teacher`` into ``student`` and save the student to ``out``.

    Args:
        student: model spec (a pruned teacher, typically) or an SLM (e.g. from
            :func:`init_student`).
        out: output directory, written atomically; checkpoints live in
            ``<out>.partial/checkpoints`` until the run finishes.
        cfg: the distillation settings.
        overwrite: replace an existing ``out``.
        progress: progress bars.

    Returns:
        The report (also written to ``out/report.json``).
    """
    t0 = time.time()
    out = Path(out)
    _check_out(out, overwrite)
    if cfg.w_kl + cfg.w_ce + cfg.w_hidden == 0:
        raise SlmError("all loss weights are 0", "set w_kl, w_ce or w_hidden above 0")
    rank, world = dist_setup()
    s_slm = student if isinstance(student, SLM) else load(student)
    t_pre = load(cfg.teacher, device=cfg.device) if cfg.cross_tokenizer else None
    blocks, steps, cross = train_blocks(cfg, s_slm.tokenizer, world,
                                        t_pre.tokenizer if t_pre else None)
    vids = val_ids(cfg, s_slm)
    t_slm, cache, info = setup_teacher(cfg, s_slm, blocks, rank, world, progress, t_pre)
    if cross is not None:
        info["cross_tokenizer"] = {"aligned_fraction": round(cross.aligned_fraction, 4),
                                   "teacher_vocab": len(t_pre.tokenizer),
                                   "student_vocab": len(s_slm.tokenizer)}
    if cache is not None and cfg.w_hidden == 0:
        t_slm = None                                    # train from the cache alone
    teacher = Teacher(t_slm.model if t_slm else None)
    if t_slm is not None:
        info.setdefault("teacher_sha256_before", weights_hash(t_slm.model))
        if vids is not None and is_main() and not cfg.cross_tokenizer:
            info["teacher_val_ppl"] = val_ppl(t_slm.model, t_slm.tokenizer, vids, cfg)
    module = build_module(cfg, s_slm.model, t_slm.model if t_slm else None)
    eval_fn = None if vids is None else (
        lambda: {"val_ppl": val_ppl(module.student, s_slm.tokenizer, vids, cfg)})
    partial = out.with_name(out.name + ".partial")
    train_cfg = cfg.train_config(steps, parallel="fsdp" if cfg.fsdp else "ddp")
    with frozen_weights_in_bf16(teacher.model, cfg.bf16 and teacher.model is not None,
                                whole_base=True):
        rep = train(module, distill_batches(blocks, cfg.batch_size, cache, cross),
                    make_loss_fn(cfg, teacher), train_cfg, partial, eval_fn=eval_fn,
                    resume=cfg.resume, progress=progress)
    if t_slm is not None:
        info["teacher_sha256_after"] = weights_hash(t_slm.model)
    report = _report(cfg, s_slm, t_slm, rep, info, world)
    if is_main():
        report["time_s"] = round(time.time() - t0, 2)
        tmp = save(s_slm, partial / "model", overwrite=True,
                   step={"step": "distill", "config": cfg.model_dump(mode="json"),
                         "report": _short(report)})
        report["bytes"] = dir_bytes(tmp)
        (tmp / "report.json").write_text(json.dumps(report, indent=1))
        replace_dir(tmp, out)
        shutil.rmtree(partial, ignore_errors=True)
    barrier(world)
    return report


def _short(report: dict) -> dict:
    return {k: v for k, v in report.items() if k not in ("loss_curve",)}


def _report(cfg, s_slm, t_slm, rep, info, world) -> dict:
    evals = rep.eval_curve
    r = {"step": "distill", "teacher": cfg.teacher, "params": count_params(s_slm.model),
         "teacher_params": count_params(t_slm.model) if t_slm else None,
         "steps": rep.steps, "tokens": rep.tokens, "tokens_per_s": round(rep.tokens_per_s, 1),
         "train_time_s": round(rep.time_s, 2), "world_size": world, "parallel": rep.parallel,
         "state_bytes_per_rank": rep.state_bytes,
         "val_ppl_before": evals[0]["val_ppl"] if evals and evals[0]["step"] == 0 else None,
         "val_ppl": evals[-1]["val_ppl"] if evals else None,
         "final_loss": rep.final_loss, "resumed_from": rep.resumed_from,
         "loss": {"kd": (("sorted_prob_l1" if cfg.cross_tokenizer else cfg.kd)
                         if cfg.w_kl else None), "temperature": cfg.temperature,
                  "w_kl": cfg.w_kl, "w_ce": cfg.w_ce, "w_hidden": cfg.w_hidden},
         "eval_curve": evals, "loss_curve": rep.loss_curve, **info}
    before, after = info.get("teacher_sha256_before"), info.get("teacher_sha256_after")
    r["teacher_unchanged"] = (before == after) if before and after else None
    return r
